//! Regression tests for defects of the sans-IO core; each failed before its fix.

use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Config, Context, Deactivation, DeadLetterReason, Driver, Receiver, Router,
};

fn noop(_: &u32) -> Activation<u32, u32> {
    Activation::ready(|_: &mut Context<'_, u32, u32>, _: u32| {})
}

/// Handles every command inline, as a driver does.
fn settle(
    router: &mut Router<u32, u32>,
    factory: &impl hermes_core::Factory<u32, u32>,
    now: Instant,
) {
    while let Some(command) = router.poll_command() {
        router.handle(command, factory, now).unwrap();
    }
}

/// Defect: `Config::idle_timeout(Duration::MAX)` panicked at the first idle receiver, and
/// `poll_timeout` with it (unchecked `Instant` addition). Every duration is valid: past the
/// end of representable time means never.
#[test]
fn duration_max_idle_timeout_means_never() {
    let t0 = Instant::now();
    let mut router = Router::new(Config::default().idle_timeout(Duration::MAX));
    router.send(1, 0).unwrap();
    settle(&mut router, &noop, t0);
    assert_eq!(router.stats().idle, 1);
    assert_eq!(router.poll_timeout(), None, "nothing is ever due");
    router.handle_timeout(t0 + Duration::from_secs(1_000_000_000));
    assert_eq!(router.stats().live, 1, "never deactivated for idleness");
}

/// Defect: `Context::schedule(Duration::MAX, ..)` panicked. Such a timer never fires, can be
/// cancelled, and is a dead letter at close like any pending timer.
#[test]
fn duration_max_delay_never_fires() {
    let t0 = Instant::now();
    let factory = |_: &u32| {
        Activation::ready(|ctx: &mut Context<'_, u32, u32>, n: u32| {
            if n == 0 {
                ctx.schedule(Duration::MAX, 1);
                ctx.set_idle_timeout(Duration::MAX);
            }
        })
    };
    let mut router = Router::new(Config::default());
    router.send(7, 0).unwrap();
    router.schedule(7, None, 2).unwrap(); // from outside: None is never
    settle(&mut router, &factory, t0);
    assert_eq!(router.stats().timers_pending, 2);
    assert_eq!(router.poll_timeout(), None);
    router.handle_timeout(t0 + Duration::from_secs(1_000_000_000));
    assert_eq!(router.stats().messages_delivered, 1, "neither timer fired");
    router.close();
    settle(&mut router, &factory, t0);
    let reasons: Vec<_> = std::iter::from_fn(|| router.poll_dead_letter())
        .map(|l| (l.message, l.reason))
        .collect();
    assert_eq!(
        reasons,
        // In scheduling order: the outside timer was scheduled first.
        [
            (Some(2), DeadLetterReason::Closed),
            (Some(1), DeadLetterReason::Closed)
        ]
    );
}

/// Defect: `Driver::run` never drained dead letters, so a loop that never polled grew without
/// bound. The router keeps at most `dead_letter_capacity` and counts the rest.
#[test]
fn unpolled_dead_letters_are_bounded_and_counted() {
    let mut driver = Driver::new(Config::default().dead_letter_capacity(100), |_: &u32| {
        Activation::<u32, u32>::Refused
    });
    for id in 0..10_000 {
        driver.send(id, id).unwrap();
    }
    driver.run(Instant::now());
    let stats = driver.router().stats();
    assert_eq!(stats.dead_letters, 10_000);
    assert_eq!(stats.dead_letters_dropped, 9_900);
    let kept = std::iter::from_fn(|| driver.poll_dead_letter()).count();
    assert_eq!(kept, 100, "the oldest are kept");
}

/// Defect: a factory that panicked unwound out of `Driver` (and was a panic under the
/// simulator) while the executors made it a dead letter. `Router::handle` catches it for
/// every driver.
#[test]
fn a_panicking_factory_fails_the_activation_in_every_driver() {
    let mut driver = Driver::new(Config::default(), |id: &u32| {
        if *id == 13 {
            panic!("no receiver for unlucky {id}");
        }
        noop(id)
    });
    driver.send(13, 1).unwrap();
    driver.send(13, 2).unwrap();
    driver.send(14, 3).unwrap();
    driver.run(Instant::now());
    let letters: Vec<_> = std::iter::from_fn(|| driver.poll_dead_letter()).collect();
    assert_eq!(letters.len(), 2);
    for letter in &letters {
        let DeadLetterReason::FactoryFailed(e) = &letter.reason else {
            panic!("{letter:?}");
        };
        assert!(
            e.to_string()
                .contains("the factory panicked: no receiver for unlucky 13")
        );
    }
    let stats = driver.router().stats();
    assert_eq!((stats.panics, stats.messages_delivered), (1, 1));
}

/// Defect: a receiver that kept sending itself a continuation made close never finish. After
/// `drain_limit` deliveries, closing stops draining.
#[test]
fn close_finishes_despite_a_receiver_that_never_stops() {
    struct Looper;
    impl Receiver<u32, u32> for Looper {
        fn receive(&mut self, ctx: &mut Context<'_, u32, u32>, n: u32) {
            ctx.send(*ctx.id(), n + 1);
        }
        fn deactivated(&mut self, _: &mut Context<'_, u32, u32>, why: Deactivation) {
            assert_eq!(why, Deactivation::Closing);
        }
    }
    let mut driver = Driver::new(Config::default().drain_limit(1000), |_: &u32| {
        Activation::ready(Looper)
    });
    driver.send(1, 0).unwrap();
    // Runs while open: a step at a time, since it would never settle.
    for _ in 0..10 {
        let _ = driver.step(Instant::now());
    }
    driver.close(Instant::now());
    let stats = driver.router().stats();
    assert!(driver.router().is_closed());
    assert_eq!(stats.deactivations, 1);
    let letters: Vec<_> = std::iter::from_fn(|| driver.poll_dead_letter()).collect();
    assert_eq!(
        letters.len(),
        1,
        "the one continuation in flight at the limit"
    );
    assert_eq!(letters[0].reason, DeadLetterReason::DrainLimit);
}

/// Closing with a drain limit of zero delivers nothing more: queued messages are dead letters
/// at once, and every receiver is still deactivated exactly once.
#[test]
fn a_zero_drain_limit_stops_draining_at_close() {
    let mut router = Router::new(Config::default().drain_limit(0));
    let t0 = Instant::now();
    router.send(1, 0).unwrap();
    settle(&mut router, &noop, t0);
    router.send(1, 1).unwrap(); // a Run is out for 1
    router.send(2, 2).unwrap(); // an Activate is out for 2, its message queued
    router.close();
    settle(&mut router, &noop, t0);
    assert!(router.is_closed());
    let reasons: Vec<_> = std::iter::from_fn(|| router.poll_dead_letter())
        .map(|l| (l.message, l.reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (Some(1), DeadLetterReason::DrainLimit),
            (Some(2), DeadLetterReason::DrainLimit)
        ]
    );
    assert_eq!(router.stats().deactivations, 2);
}
