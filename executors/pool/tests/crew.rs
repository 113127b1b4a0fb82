//! The pool's crew: a thread whose home shard has nothing left turns the shards it sent mail to.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_core::{Activation, Config, Context, Sharded};
use hermes_executor::{Options, Reply};

enum Msg {
    /// Bounce to `to`, `left` more times; each of the last two receivers arms a timer that
    /// answers one of `dones`.
    Ping {
        to: u64,
        left: u64,
        dones: Vec<Reply<()>>,
    },
    Fire(Reply<()>),
}

/// Two IDs on different shards of two (the default placement).
fn ids_on_two_shards() -> (u64, u64) {
    let placement = Sharded::new(2);
    let b = (1..)
        .find(|id| placement.shard_of(id) != placement.shard_of(&0))
        .expect("some ID lands on the other shard");
    (0, b)
}

/// A conversation between two shards runs (at least partly) away from home: some receiver ran
/// on the other shard's thread. And timers armed in the last two hops (one of them, on a
/// conversation that stayed on one thread, a guest's turn) fire on time, though a shard's own
/// thread was asleep with no deadline of its own that soon: the guest rings it.
#[test]
fn a_conversation_across_shards_moves_to_one_thread_and_its_timers_still_fire() {
    const HOPS: u64 = 2_000;
    let name = "crew-conv";
    let placement = Sharded::new(2);
    // (shard of the receiver, thread it ran on), per hop.
    let ran: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    let log = Arc::clone(&ran);
    // Idle receivers stay for an hour: no shard has a deadline of its own within the test.
    let config = Config::default().idle_timeout(Duration::from_secs(3600));
    let options = Options::new(config).shards(2).name(name);
    let hermes = hermes_pool::start_with(options, move |id: &u64| {
        let log = Arc::clone(&log);
        let shard = placement.shard_of(id);
        Activation::ready(move |ctx: &mut Context<'_, u64, Msg>, msg| match msg {
            Msg::Ping {
                to,
                left,
                mut dones,
            } => {
                let thread = std::thread::current().name().unwrap_or("").to_owned();
                log.lock().unwrap().push((shard, thread));
                if left <= 1
                    && let Some(done) = dones.pop()
                {
                    ctx.schedule(Duration::from_millis(20), Msg::Fire(done));
                }
                if left > 0 {
                    let me = *ctx.id();
                    let left = left - 1;
                    ctx.send(
                        to,
                        Msg::Ping {
                            to: me,
                            left,
                            dones,
                        },
                    );
                }
            }
            Msg::Fire(done) => {
                let _ = done.send(());
            }
        })
    })
    .expect("the pool starts");
    let (a, b) = ids_on_two_shards();
    let (first, first_fired) = Reply::new();
    let (second, second_fired) = Reply::new();
    let dones = vec![first, second];
    hermes
        .send(
            a,
            Msg::Ping {
                to: b,
                left: HOPS,
                dones,
            },
        )
        .unwrap();
    for fired in [first_fired, second_fired] {
        assert_eq!(fired.wait_timeout(Duration::from_secs(10)), Ok(()));
    }
    let ran = std::mem::take(&mut *ran.lock().unwrap());
    assert_eq!(ran.len() as u64, HOPS + 1);
    let away = ran
        .iter()
        .filter(|(shard, thread)| *thread != format!("{name}-{shard}"))
        .count();
    assert!(
        away > 0,
        "every hop ran on its own shard's thread: {:?}",
        &ran[..4]
    );
    assert!(
        ran.iter().all(|(_, thread)| thread.starts_with(name)),
        "receivers ran off the pool's threads"
    );
    hermes.shutdown().unwrap();
}
