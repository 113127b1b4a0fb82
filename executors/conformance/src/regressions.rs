//! Regression tests for defects found by trying Hermes as a new user would; each failed before
//! its fix, on the executors it names.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Config, Context, Deactivation, DeadLetterReason, Receiver, Sharded, TimerId,
};
use hermes_executor::{Hermes, Options, WouldDeadlock};

use crate::{HANG_GUARD, Harness, eventually};

/// Two IDs that the default placement puts on different shards of two.
pub(crate) fn ids_on_two_shards() -> (u64, u64) {
    let placement = Sharded::new(2);
    let a = 0;
    let b = (1..)
        .find(|id| placement.shard_of(id) != placement.shard_of(&a))
        .expect("some ID lands on the other shard");
    (a, b)
}

// ---- time is read when it is used -------------------------------------------------------------

enum Slow {
    /// Sleep this long in the handler.
    Sleep(Duration),
    /// Schedule a `Fired` to self after this long, noting when it was asked.
    Arm(Duration),
    Fired,
}

/// Defect: a shard read the clock once per turn, so a timer armed by a handler that ran after
/// a slow neighbour in the same turn counted from the turn's start and fired early.
pub fn timer_counts_from_when_the_handler_asks<H: Harness>(h: &H) {
    const DELAY: Duration = Duration::from_millis(200);
    let armed_at = Arc::new(Mutex::new(None::<Instant>));
    let fired_at = Arc::new(Mutex::new(None::<Instant>));
    let (armed, fired) = (armed_at.clone(), fired_at.clone());
    // One shard: the sleeper and the armer run in the same turn.
    let options = Options::new(Config::default()).shards(1);
    let hermes = h.start(options, move |_: &u64| {
        let (armed, fired) = (armed.clone(), fired.clone());
        Activation::ready(move |ctx: &mut Context<'_, u64, Slow>, msg| match msg {
            Slow::Sleep(d) => std::thread::sleep(d),
            Slow::Arm(d) => {
                *armed.lock().unwrap() = Some(Instant::now());
                ctx.schedule(d, Slow::Fired);
            }
            Slow::Fired => *fired.lock().unwrap() = Some(Instant::now()),
        })
    });
    hermes
        .send_all([
            (1, Slow::Sleep(Duration::from_millis(300))),
            (2, Slow::Arm(DELAY)),
        ])
        .unwrap();
    eventually("the timer", || fired_at.lock().unwrap().is_some());
    let armed = armed_at.lock().unwrap().expect("armed");
    let fired = fired_at.lock().unwrap().expect("fired");
    assert!(
        fired.duration_since(armed) >= DELAY,
        "a {DELAY:?} timer fired {:?} after the handler asked for it",
        fired.duration_since(armed)
    );
    hermes.shutdown().unwrap();
}

/// Defect: idle time counted from the start of the turn, so a receiver whose handler took
/// longer than its idle timeout was deactivated as idle the moment it returned.
pub fn idle_time_counts_from_when_the_receiver_went_idle<H: Harness>(h: &H) {
    const IDLE: Duration = Duration::from_millis(200);
    let returned_at = Arc::new(Mutex::new(None::<Instant>));
    let idled_at = Arc::new(Mutex::new(None::<Instant>));
    struct Sleeper(Arc<Mutex<Option<Instant>>>, Arc<Mutex<Option<Instant>>>);
    impl Receiver<u64, Duration> for Sleeper {
        fn receive(&mut self, _: &mut Context<'_, u64, Duration>, nap: Duration) {
            std::thread::sleep(nap);
            *self.0.lock().unwrap() = Some(Instant::now());
        }
        fn deactivated(&mut self, _: &mut Context<'_, u64, Duration>, why: Deactivation) {
            if why == Deactivation::IdleTimeout {
                *self.1.lock().unwrap() = Some(Instant::now());
            }
        }
    }
    let (returned, idled) = (returned_at.clone(), idled_at.clone());
    let options = Options::new(Config::default().idle_timeout(IDLE)).shards(1);
    let hermes = h.start(options, move |_: &u64| {
        Activation::ready(Sleeper(returned.clone(), idled.clone()))
    });
    hermes.send(1, Duration::from_millis(300)).unwrap();
    eventually("the idle deactivation", || {
        idled_at.lock().unwrap().is_some()
    });
    let returned = returned_at.lock().unwrap().expect("returned");
    let idled = idled_at.lock().unwrap().expect("idled");
    assert!(
        idled.duration_since(returned) >= IDLE,
        "deactivated as idle {:?} after its handler returned (idle timeout {IDLE:?})",
        idled.duration_since(returned)
    );
    hermes.shutdown().unwrap();
}

// ---- cancelling a timer held by another shard ---------------------------------------------

enum Tm {
    Cancel(TimerId),
    Fire,
    Fired(hermes_executor::Reply<u64>),
}

/// Defect: `Context::cancel` of a timer held by another shard was dropped, and the timer fired.
pub fn cancel_works_across_shards<H: Harness>(h: &H) {
    let (target, canceller) = ids_on_two_shards();
    let hermes = h.start(Options::new(Config::default()).shards(2), |_: &u64| {
        let mut fired = 0;
        Activation::ready(move |ctx: &mut Context<'_, u64, Tm>, msg| match msg {
            Tm::Cancel(timer) => ctx.cancel(timer),
            Tm::Fire => fired += 1,
            Tm::Fired(reply) => {
                let _ = reply.send(fired);
            }
        })
    });
    // The timer is held by the target's shard; a receiver on the other shard cancels it.
    let timer = hermes
        .schedule(target, Duration::from_millis(300), Tm::Fire)
        .unwrap();
    hermes.send(canceller, Tm::Cancel(timer)).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let fired = hermes.ask_blocking(target, Tm::Fired, HANG_GUARD).unwrap();
    assert_eq!(fired, 0, "a cancelled timer fired");
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.timers_pending, 0);
}

// ---- every duration is valid ------------------------------------------------------------------

enum Forever {
    ArmNever,
    Ping(hermes_executor::Reply<()>),
    Tick,
}

/// Defect: `Duration::MAX` as an idle timeout panicked the shard at its first idle receiver,
/// and as a delay panicked `Hermes::schedule` and `Context::schedule`.
pub fn duration_max_means_never<H: Harness>(h: &H) {
    let hooks = Arc::new(AtomicU64::new(0));
    let ticks = Arc::new(AtomicU64::new(0));
    let (hooked, ticked) = (hooks.clone(), ticks.clone());
    struct Patient(Arc<AtomicU64>, Arc<AtomicU64>);
    impl Receiver<u64, Forever> for Patient {
        fn receive(&mut self, ctx: &mut Context<'_, u64, Forever>, msg: Forever) {
            match msg {
                Forever::ArmNever => {
                    ctx.schedule(Duration::MAX, Forever::Tick);
                    ctx.set_idle_timeout(Duration::MAX);
                }
                Forever::Ping(reply) => {
                    let _ = reply.send(());
                }
                Forever::Tick => {
                    self.1.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        fn deactivated(&mut self, _: &mut Context<'_, u64, Forever>, _: Deactivation) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
    let config = Config::default().idle_timeout(Duration::MAX);
    let hermes = h.start(Options::new(config).shards(2), move |_: &u64| {
        Activation::ready(Patient(hooked.clone(), ticked.clone()))
    });
    for id in 0..4 {
        hermes.send(id, Forever::ArmNever).unwrap();
        hermes.schedule(id, Duration::MAX, Forever::Tick).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    for id in 0..4 {
        // Still live and answering: no shard died.
        hermes
            .ask_blocking(id, Forever::Ping, HANG_GUARD)
            .expect("the receiver answers");
    }
    let stats = hermes.shutdown().unwrap();
    assert_eq!(
        ticks.load(Ordering::Relaxed),
        0,
        "a timer set for never fired"
    );
    assert_eq!(
        hooks.load(Ordering::Relaxed),
        4,
        "every hook ran at shutdown"
    );
    assert_eq!(stats.deactivations, 4);
    assert_eq!(stats.dead_letters, 8, "the never-timers, reported at close");
}

// ---- shutdown drops what Hermes owned ---------------------------------------------------------

/// Sets its flag when dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Defect: on tokio and smol, `shutdown()` returned while the shards still held the factory
/// and what it owns (a database, a socket).
pub fn shutdown_returns_after_everything_is_dropped<H: Harness>(h: &H) {
    let factory_dropped = Arc::new(AtomicBool::new(false));
    let receivers_dropped = Arc::new(AtomicBool::new(false));
    let sink_dropped = Arc::new(AtomicBool::new(false));
    let owned = DropFlag(factory_dropped.clone());
    let in_receivers = receivers_dropped.clone();
    let in_sink = DropFlag(sink_dropped.clone());
    let options = Options::new(Config::default())
        .shards(2)
        .on_dead_letter(move |_| {
            let _ = &in_sink;
        });
    let hermes = h.start(options, move |_: &u64| {
        let _ = &owned;
        // The last receiver dropped sets the flag: every receiver holds a clone of one guard.
        let guard = Arc::new(DropFlag(in_receivers.clone()));
        Activation::ready(move |_: &mut Context<'_, u64, ()>, ()| {
            let _ = &guard;
        })
    });
    for id in 0..8 {
        hermes.send(id, ()).unwrap();
    }
    hermes.shutdown().unwrap();
    assert!(
        receivers_dropped.load(Ordering::SeqCst),
        "a receiver outlived shutdown"
    );
    assert!(
        factory_dropped.load(Ordering::SeqCst),
        "the factory outlived shutdown"
    );
    assert!(
        sink_dropped.load(Ordering::SeqCst),
        "the dead-letter sink outlived shutdown"
    );
}

// ---- close always finishes --------------------------------------------------------------------

/// Defect: a receiver that keeps sending itself a continuation made `shutdown()` hang forever.
/// Closing stops draining after `Config::drain_limit` deliveries.
pub fn shutdown_finishes_despite_endless_continuations<H: Harness>(h: &H) {
    let drained = Arc::new(AtomicU64::new(0));
    let counted = drained.clone();
    let options = Options::new(Config::default().drain_limit(10_000))
        .shards(2)
        .on_dead_letter(move |letter| {
            if letter.reason == DeadLetterReason::DrainLimit {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        });
    let hermes = h.start(options, |_: &u64| {
        Activation::ready(|ctx: &mut Context<'_, u64, u64>, n: u64| {
            // Forever: a continuation to itself, so it is never idle when close comes.
            let me = *ctx.id();
            ctx.send(me, n + 1);
        })
    });
    hermes.send(0, 0).unwrap();
    hermes.send(3, 0).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let start = Instant::now();
    let stats = hermes.shutdown().unwrap();
    assert!(start.elapsed() < HANG_GUARD);
    assert_eq!(stats.live, 0);
    assert!(
        drained.load(Ordering::Relaxed) > 0,
        "the continuations past the drain limit are dead letters"
    );
}

// ---- shutdown from inside a receiver ----------------------------------------------------------

/// Defect: `Hermes::shutdown()` called from inside a receiver panicked that receiver, so its
/// state was not saved. It starts the shutdown and says it cannot wait.
pub fn shutdown_from_a_receiver_starts_it_and_returns<H: Harness>(h: &H) {
    let handle: Arc<OnceLock<Hermes<u64, ()>>> = Arc::new(OnceLock::new());
    let result = Arc::new(Mutex::new(None::<Result<(), WouldDeadlock>>));
    let saved = Arc::new(AtomicBool::new(false));
    struct Quitter {
        hermes: Arc<OnceLock<Hermes<u64, ()>>>,
        result: Arc<Mutex<Option<Result<(), WouldDeadlock>>>>,
        saved: Arc<AtomicBool>,
    }
    impl Receiver<u64, ()> for Quitter {
        fn receive(&mut self, _: &mut Context<'_, u64, ()>, (): ()) {
            let hermes = self
                .hermes
                .get()
                .expect("the handle is set before any message");
            *self.result.lock().unwrap() = Some(hermes.shutdown().map(drop));
        }
        fn deactivated(&mut self, _: &mut Context<'_, u64, ()>, _: Deactivation) {
            self.saved.store(true, Ordering::SeqCst);
        }
    }
    let (inner, res, sv) = (handle.clone(), result.clone(), saved.clone());
    let hermes = h.start(Options::new(Config::default()).shards(2), move |_: &u64| {
        Activation::ready(Quitter {
            hermes: inner.clone(),
            result: res.clone(),
            saved: sv.clone(),
        })
    });
    let _ = handle.set(hermes.clone());
    hermes.send(1, ()).unwrap();
    eventually("the shutdown to begin", || !hermes.is_accepting());
    let stats = hermes.shutdown().unwrap();
    assert_eq!(*result.lock().unwrap(), Some(Err(WouldDeadlock)));
    assert!(saved.load(Ordering::SeqCst), "the receiver's hook ran");
    assert_eq!(stats.panics, 0);
    assert_eq!(stats.deactivations, 1);
}
