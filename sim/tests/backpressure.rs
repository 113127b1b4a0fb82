//! Backpressure under the simulator: the same bounds and rules as on the executors, with the
//! simulation's thread unable to wait (its `send` answers `Full` where an executor would wait).

use std::sync::{Arc, Mutex};

use hermes_core::{Activation, Config, Context, DeadLetterReason, SendError};
use hermes_sim::Sim;

enum Msg {
    /// Send `n` numbered messages to receiver 2 in one handler.
    Burst(u64),
    /// Counted by receiver 2.
    Item(u64),
}

fn counting(seen: Arc<Mutex<Vec<u64>>>) -> impl Fn(&u32) -> Activation<u32, Msg> {
    move |_: &u32| {
        let seen = seen.clone();
        Activation::ready(move |ctx: &mut Context<'_, u32, Msg>, msg| match msg {
            Msg::Burst(n) => {
                for i in 0..n {
                    ctx.send(2, Msg::Item(i));
                }
            }
            Msg::Item(i) => seen.lock().unwrap().push(i),
        })
    }
}

/// Between receivers nothing waits: a burst past the receiver's mailbox capacity loses the
/// overflow as `Full` dead letters, never silently. On one shard the burst lands at once, so
/// exactly the capacity is kept; across shards the receiving shard's inbox buffers mail and
/// how much overflows depends on the interleaving, but every message is either delivered, in
/// order, or a dead letter.
#[test]
fn a_burst_past_a_mailbox_is_full_dead_letters_under_every_seed() {
    for seed in 0..50 {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let config = Config::default().mailbox_capacity(10);
        let shards = 1 + seed as u32 % 3;
        let mut sim = Sim::new(seed, config, counting(seen.clone())).with_shards(shards);
        sim.send(1, Msg::Burst(25)).unwrap();
        sim.run_until_quiet();
        let full = sim
            .dead_letters()
            .iter()
            .filter(|l| l.reason == DeadLetterReason::Full)
            .count();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(full + seen.len(), 25, "seed {seed}");
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: in order"
        );
        let same_shard = shards == 1;
        if same_shard {
            assert_eq!(full, 15, "seed {seed}");
            assert_eq!(seen, (0..10).collect::<Vec<_>>(), "seed {seed}");
        }
    }
}

/// From outside, a full shard inbox refuses at once with `Full` (the simulation cannot wait);
/// after the shards take their turns there is room again, and everything admitted arrives.
#[test]
fn a_full_inbox_refuses_from_outside_until_the_shard_takes_its_mail() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let options_inbox = 8;
    let mut sim =
        Sim::new(3, Config::default(), counting(seen.clone())).with_inbox_capacity(options_inbox);
    let mut admitted = 0;
    let refused = loop {
        match sim.handle().try_send(2, Msg::Item(admitted)) {
            Ok(()) => admitted += 1,
            Err(e) => break e,
        }
    };
    assert!(matches!(refused, SendError::Full(Msg::Item(8))));
    assert_eq!(admitted, options_inbox as u64);
    // `send` cannot wait on the simulation's own thread: it says `Full` too.
    assert!(matches!(
        sim.send(2, Msg::Item(99)),
        Err(SendError::Full(_))
    ));
    sim.run_until_quiet();
    sim.send(2, Msg::Item(8)).unwrap();
    sim.run_until_quiet();
    assert_eq!(*seen.lock().unwrap(), (0..=8).collect::<Vec<_>>());
}
