//! The pool's crew: a thread whose home shard has nothing left turns the shards it sent mail to.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_core::{Activation, Config, Context, Deactivation, Receiver, Sharded};
use hermes_executor::{Crew, Options, Reply, Runtime, Spawned, Wake};

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

/// Counts the messages it took and its deactivations.
struct Counted(Arc<(AtomicU64, AtomicU64)>);

impl Receiver<u64, u64> for Counted {
    fn receive(&mut self, _: &mut Context<'_, u64, u64>, _: u64) {
        self.0.0.fetch_add(1, Ordering::SeqCst);
    }

    fn deactivated(&mut self, _: &mut Context<'_, u64, u64>, _: Deactivation) {
        self.0.1.fetch_add(1, Ordering::SeqCst);
    }
}

struct NoTasks;

impl Runtime for NoTasks {
    fn spawn(&self, _: Spawned) {
        unreachable!("no receiver here starts work");
    }
}

/// A shard whose thread never started (`Crew::abandon`, as the pool does when a spawn fails)
/// closes on the abandoning thread: its queued message becomes a dead letter (mail for a
/// receiver not live while closing), later sends to it are refused, and shutdown finishes
/// though no thread ever ran that shard.
#[test]
fn an_abandoned_shard_closes_and_shutdown_finishes() {
    let counts: Arc<(AtomicU64, AtomicU64)> = Arc::default();
    let factory = {
        let counts = Arc::clone(&counts);
        move |_: &u64| Activation::ready(Counted(Arc::clone(&counts)))
    };
    let options = Options::new(Config::default()).shards(2);
    let (hermes, crew, mut bells) = Crew::launch(options, factory, NoTasks, || {
        let (tx, rx) = crossbeam_channel::bounded::<()>(1);
        (Bell(tx), rx)
    });
    let (a, b) = ids_on_two_shards();
    let placement = Sharded::new(2);
    let home = placement.shard_of(&a) as usize;
    let homeless = placement.shard_of(&b) as usize;
    let bell = bells.swap_remove(home);
    let thread = std::thread::spawn({
        let crew = crew.clone();
        move || {
            crew.run(
                home,
                |deadline| {
                    let _ = match deadline {
                        Some(deadline) => bell.recv_deadline(deadline).map_err(drop),
                        None => bell.recv().map_err(drop),
                    };
                },
                || bell.try_recv().is_ok(),
            )
        }
    });
    hermes.send(a, 1).unwrap();
    hermes.send(b, 2).unwrap();
    crew.abandon(homeless);
    assert!(
        hermes.send(b, 3).is_err(),
        "the abandoned shard still takes mail"
    );
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(hermes.shutdown());
    });
    let stats = finished
        .recv_timeout(Duration::from_secs(10))
        .expect("shutdown finished")
        .expect("shutdown from a plain thread");
    assert_eq!(stats.deactivations, 1);
    assert_eq!(stats.dead_letters, 1);
    assert_eq!(counts.0.load(Ordering::SeqCst), 1);
    assert_eq!(counts.1.load(Ordering::SeqCst), 1);
    thread.join().unwrap();
}

/// The pool's bell, for the crew started by hand above.
struct Bell(crossbeam_channel::Sender<()>);

impl Wake for Bell {
    fn wake(&self) {
        let _ = self.0.try_send(());
    }
}
