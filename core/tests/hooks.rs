//! Lifecycle hooks that panic leave no effects, like handlers: an `activated` hook that
//! panics fails the activation (its sends and timers never happen, the instance is never
//! deactivated), and a `deactivated` hook that panics completes the deactivation without its
//! sends.

use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Config, Context, Deactivation, DeadLetterReason, Driver, Receiver, Recipient,
};

/// ID 1's `activated` and ID 3's `deactivated` send, schedule, then panic; ID 3's handler
/// panics on 0.
struct Hooks;

impl Receiver<u32, u32> for Hooks {
    fn receive(&mut self, _: &mut Context<'_, u32, u32>, msg: u32) {
        assert_ne!(msg, 0, "a deliberate panic in a test");
    }

    fn activated(&mut self, ctx: &mut Context<'_, u32, u32>) {
        if *ctx.id() == 1 {
            ctx.send(2, 100);
            ctx.schedule(Duration::from_millis(1), 101);
            panic!("activated fails (a deliberate panic in a test)");
        }
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, u32, u32>, _: Deactivation) {
        if *ctx.id() == 3 {
            ctx.send(4, 300);
            ctx.schedule(Duration::from_millis(1), 301);
            panic!("deactivated fails (a deliberate panic in a test)");
        }
    }
}

#[test]
fn panicking_hooks_leave_no_effects() {
    let mut driver = Driver::new(Config::default(), |_: &u32| Activation::ready(Hooks));
    let now = Instant::now();
    driver.send(1, 7).unwrap();
    driver.send(3, 0).unwrap();
    driver.run(now);
    driver.run(now + Duration::from_secs(1));
    let mut letters = Vec::new();
    while let Some(l) = driver.poll_dead_letter() {
        letters.push((l.recipient, l.message, l.reason));
    }
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].0, Recipient::Id(1));
    assert_eq!(letters[0].1, Some(7));
    assert!(matches!(&letters[0].2, DeadLetterReason::FactoryFailed(e)
        if e.to_string().contains("activated hook panicked")));
    assert_eq!(letters[1].0, Recipient::Id(3));
    assert!(matches!(letters[1].2, DeadLetterReason::Panicked(_)));
    let stats = driver.router().stats();
    // IDs 1 and 3 were created; 2 and 4 never got a message; nothing is pending.
    assert_eq!((stats.activations, stats.deactivations), (2, 1));
    assert_eq!((stats.timers_pending, stats.live, stats.panics), (0, 0, 3));
}
