//! The simulator itself: replay by seed, interleavings across seeds, virtual time, shards, ask
//! and wait, close, dead letters, and livelock detection.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_core::{Activation, Config, Context, Deactivation, DeadLetterReason, Receiver};
use hermes_sim::{AskError, Reply, Sim, SimClock};

type Log = Arc<Mutex<Vec<(u32, u32)>>>;

/// Receivers that log (receiver, message) for every message they handle.
fn logging_sim(seed: u64, log: &Log) -> Sim<u32, u32> {
    let log = log.clone();
    Sim::new(seed, Config::default(), move |&id: &u32| {
        let log = log.clone();
        Activation::ready(move |_: &mut Context<'_, u32, u32>, msg: u32| {
            log.lock().unwrap().push((id, msg));
        })
    })
}

/// Ten receivers on four shards, each sent three messages; the order they were handled in.
fn trace(seed: u64) -> Vec<(u32, u32)> {
    let log = Log::default();
    let mut sim = logging_sim(seed, &log).with_shards(4);
    for msg in 0..3 {
        for id in 0..10 {
            sim.send(id, msg).unwrap();
        }
    }
    sim.run_until_quiet();
    let trace = log.lock().unwrap().clone();
    assert_eq!(trace.len(), 30);
    trace
}

#[test]
fn the_same_seed_replays_the_same_interleaving() {
    assert_eq!(trace(7), trace(7));
}

#[test]
fn different_seeds_explore_different_interleavings() {
    let first = trace(0);
    let differ = (1..20).filter(|&seed| trace(seed) != first).count();
    assert!(
        differ >= 10,
        "only {differ} of 19 seeds changed the interleaving"
    );
    // Whatever the interleaving, each receiver gets its own messages in order.
    for seed in 0..20 {
        for id in 0..10 {
            let mine: Vec<u32> = trace(seed)
                .into_iter()
                .filter(|&(r, _)| r == id)
                .map(|(_, m)| m)
                .collect();
            assert_eq!(mine, [0, 1, 2], "seed {seed}, receiver {id}");
        }
    }
}

#[test]
fn time_stands_still_while_there_is_work_and_jumps_to_timers() {
    let fired = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let f = fired.clone();
    let mut sim = Sim::new(1, Config::default(), move |_: &u32| {
        let f = f.clone();
        Activation::ready(move |ctx: &mut Context<'_, u32, ()>, ()| {
            f.lock().unwrap().push(ctx.now());
        })
    });
    let start = sim.now();
    sim.schedule(1, Duration::from_secs(5), ()).unwrap();
    let cancelled = sim.schedule(1, Duration::from_secs(6), ()).unwrap();
    sim.cancel(cancelled);
    sim.cancel(cancelled); // a second cancel is ignored
    let never = sim.schedule(1, Duration::MAX, ()).unwrap();

    sim.run_until_quiet();
    assert!(fired.lock().unwrap().is_empty(), "nothing is due yet");
    assert_eq!(sim.elapsed(), Duration::ZERO);

    sim.run_for(Duration::from_secs(10));
    assert_eq!(*fired.lock().unwrap(), [start + Duration::from_secs(5)]);
    assert_eq!(sim.elapsed(), Duration::from_secs(10));
    assert_eq!(sim.now(), start + Duration::from_secs(10));
    // A timer too far off to represent never fires: time does not jump to it.
    sim.run_for(Duration::from_secs(3600));
    assert_eq!(fired.lock().unwrap().len(), 1);
    sim.cancel(never);
    sim.run_until_quiet();
    assert_eq!(sim.stats().timers_pending, 0);
}

#[test]
fn idle_receivers_are_deactivated_as_simulated_time_passes() {
    let config = Config::default().idle_timeout(Duration::from_secs(60));
    let mut sim = Sim::new(2, config, |_: &u32| {
        Activation::ready(|_: &mut Context<'_, u32, ()>, ()| {})
    });
    sim.send(1, ()).unwrap();
    sim.run_for(Duration::from_secs(59));
    assert_eq!(sim.stats().live, 1);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        sim.stats().live,
        0,
        "deactivated at exactly its idle timeout"
    );
    assert_eq!(sim.stats().deactivations, 1);
}

#[test]
fn each_step_is_one_turn_of_one_shard() {
    let log = Log::default();
    let mut sim = logging_sim(11, &log).with_shards(2);
    for id in 0..20 {
        sim.send(id, 0).unwrap();
    }
    let mut steps = 0;
    while sim.step() {
        steps += 1;
        // A shard runs its receivers inline: none is left running between turns.
        assert_eq!(sim.stats().running, 0);
    }
    assert!(steps >= 2, "both shards took turns");
    assert_eq!(log.lock().unwrap().len(), 20);
    assert!(!sim.step(), "nothing left to do");
}

/// Receiver 0 sends a burst of numbered messages to receiver 1 (on another shard, with four
/// shards), which records them.
struct Relay {
    seen: Arc<Mutex<Vec<u32>>>,
}

impl Receiver<u32, u32> for Relay {
    fn receive(&mut self, ctx: &mut Context<'_, u32, u32>, msg: u32) {
        if *ctx.id() == 0 {
            // The sender: a burst of numbered messages to receiver 1.
            for n in 0..msg {
                ctx.send(1, n);
            }
        } else {
            self.seen.lock().unwrap().push(msg);
        }
    }
}

#[test]
fn messages_between_shards_keep_their_order() {
    for seed in 0..20 {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let mut sim = Sim::new(seed, Config::default(), move |_: &u32| {
            Activation::ready(Relay { seen: s.clone() })
        })
        .with_shards(4);
        sim.send(0, 50).unwrap();
        sim.send(0, 50).unwrap();
        sim.run_until_quiet();
        let seen = seen.lock().unwrap().clone();
        let expected: Vec<u32> = (0..50).chain(0..50).collect();
        assert_eq!(seen, expected, "seed {seed}");
    }
}

#[derive(Debug)]
enum Req {
    Echo(u32, Reply<u32>),
    Forget(Reply<u32>),
    Later(Reply<u32>),
    Answer(Reply<u32>),
}

fn server(_: &&str) -> Activation<&'static str, Req> {
    Activation::ready(|ctx: &mut Context<'_, &'static str, Req>, req| match req {
        Req::Echo(n, reply) => {
            let _ = reply.send(n);
        }
        Req::Forget(reply) => drop(reply),
        Req::Later(reply) => {
            ctx.schedule(Duration::from_secs(30), Req::Answer(reply));
        }
        Req::Answer(reply) => {
            let _ = reply.send(30);
        }
    })
}

#[test]
fn ask_returns_the_answer_or_says_why_not() {
    let mut sim = Sim::new(3, Config::default(), |id: &&'static str| {
        if *id == "nobody" {
            Activation::Refused
        } else {
            server(id)
        }
    });
    assert_eq!(sim.ask("server", |r| Req::Echo(5, r)), Ok(5));
    assert_eq!(sim.ask("server", Req::Forget), Err(AskError::Dropped));
    // The answer comes from a timer: not without letting time pass, then within 30 s.
    assert_eq!(sim.ask("server", Req::Later), Err(AskError::Timeout));
    assert_eq!(
        sim.ask_within("server", Duration::from_secs(30), Req::Later),
        Ok(30)
    );
    // A request to a receiver the factory refuses is a dead letter, Reply and all: no answer.
    assert_eq!(
        sim.ask("nobody", |r| Req::Echo(1, r)),
        Err(AskError::Timeout)
    );
    let letters = sim.take_dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, DeadLetterReason::NoReceiver);
    assert!(sim.dead_letters().is_empty());

    sim.close();
    assert!(sim.is_closed());
    assert_eq!(
        sim.ask("server", |r| Req::Echo(1, r)),
        Err(AskError::Closed)
    );
}

#[test]
fn wait_resolves_a_reply_future_and_the_handle_works_under_simulation() {
    let mut sim = Sim::new(4, Config::default(), |_: &u8| {
        Activation::ready(|_: &mut Context<'_, u8, Reply<u32>>, reply: Reply<u32>| {
            let _ = reply.send(7);
        })
    });
    let (reply, asked) = Reply::new();
    sim.send(1, reply).unwrap();
    assert_eq!(sim.wait(Duration::ZERO, asked), Some(Ok(7)));

    // Production code holding a `Hermes` handle runs unchanged; blocking forms refuse.
    let asked = sim.handle().ask(2, |reply| reply);
    assert_eq!(sim.wait(Duration::ZERO, asked), Some(Ok(7)));
    assert_eq!(
        sim.handle()
            .ask_blocking(2, |reply| reply, Duration::from_secs(1)),
        Err(AskError::WouldDeadlock)
    );

    let (reply, asked) = Reply::<u32>::new();
    sim.schedule(1, Duration::from_secs(5), reply).unwrap();
    let mut asked = std::pin::pin!(asked);
    assert_eq!(sim.wait(Duration::from_secs(1), asked.as_mut()), None);
    assert_eq!(sim.wait(Duration::from_secs(10), asked), Some(Ok(7)));
}

#[test]
fn close_deactivates_every_receiver_once() {
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let h = hooks.clone();
    struct Tracked(u32, Arc<Mutex<Vec<(u32, Deactivation)>>>);
    impl Receiver<u32, ()> for Tracked {
        fn receive(&mut self, _: &mut Context<'_, u32, ()>, (): ()) {}
        fn deactivated(&mut self, _: &mut Context<'_, u32, ()>, why: Deactivation) {
            self.1.lock().unwrap().push((self.0, why));
        }
    }
    let mut sim = Sim::new(5, Config::default(), move |&id: &u32| {
        Activation::ready(Tracked(id, h.clone()))
    })
    .with_shards(3);
    for id in 0..12 {
        sim.send(id, ()).unwrap();
    }
    sim.close();
    assert!(sim.is_closed());
    let mut hooks = hooks.lock().unwrap().clone();
    hooks.sort_by_key(|&(id, _)| id);
    let expected: Vec<(u32, Deactivation)> =
        (0..12).map(|id| (id, Deactivation::Closing)).collect();
    assert_eq!(hooks, expected);
    assert!(sim.send(1, ()).is_err());
}

#[test]
#[should_panic(expected = "hermes-sim (seed 6): no quiet moment")]
fn a_livelock_is_reported_with_its_seed() {
    let mut sim = Sim::new(6, Config::default(), |_: &u32| {
        Activation::ready(|ctx: &mut Context<'_, u32, ()>, ()| {
            let other = 1 - *ctx.id();
            ctx.send(other, ());
        })
    })
    .with_max_steps(10_000);
    sim.send(0, ()).unwrap();
    sim.run_until_quiet();
}

/// Any duration is a valid one: `run_for(Duration::MAX)` (and waits that long) saturate at
/// the clock's reach instead of overflowing. Timers due before it fire, idle receivers are
/// deactivated, a timer past it never fires (and does not keep the run going), and the
/// simulation still closes.
#[test]
fn run_for_duration_max_runs_to_the_clocks_reach() {
    let log = Log::default();
    let mut sim = logging_sim(3, &log);
    sim.schedule(1, Duration::from_secs(3600), 7).unwrap();
    let past_reach = SimClock::MAX + Duration::from_secs(3600 * 24 * 365);
    sim.schedule(2, past_reach, 8).unwrap();
    sim.run_for(Duration::MAX);
    assert_eq!(sim.elapsed(), SimClock::MAX);
    assert_eq!(*log.lock().unwrap(), [(1, 7)], "the hour's timer only");
    assert_eq!(sim.stats().live, 0, "idled out");
    // At the end of time, more time changes nothing and overflows nothing.
    sim.run_for(Duration::MAX);
    sim.run_for(Duration::from_secs(1));
    assert_eq!(sim.elapsed(), SimClock::MAX);
    let never = std::future::pending::<()>();
    assert_eq!(sim.wait(Duration::MAX, never), None);
    let clock = SimClock::new();
    assert_eq!(clock.at(Duration::MAX), clock.at(SimClock::MAX));
    sim.close();
    assert!(sim.is_closed());
}
