//! Router bugs the checker found, each pinned down as a small deterministic scenario.

use std::time::{Duration, Instant};

use hermes_core::{Activation, Command, Config, Context, Router};

#[derive(Debug)]
enum Msg {
    Nop,
    Stop,
    /// Sets a long idle timeout for this instance.
    Linger,
}

fn factory(_id: &u8) -> Activation<u8, Msg> {
    Activation::ready(|ctx: &mut Context<'_, u8, Msg>, msg| match msg {
        Msg::Nop => {}
        Msg::Stop => ctx.stop(),
        Msg::Linger => ctx.set_idle_timeout(Duration::from_secs(7)),
    })
}

/// Handles every command inline at `now`; returns them.
fn drive(router: &mut Router<u8, Msg>, now: Instant) -> Vec<Command> {
    let mut seen = Vec::new();
    while let Some(command) = router.poll_command() {
        router
            .handle(command, &factory, now)
            .expect("commands are handled once each");
        seen.push(command);
    }
    seen
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An idle check that comes due in the same `handle_timeout` call as a timer message for its
/// receiver is judged as of its own deadline. Before the fix it was judged as of the call's
/// `now`, so a receiver that was idle for only 90 ms of its 100 ms timeout when the timer
/// message arrived was deactivated anyway, and activated again for the message.
#[test]
fn an_idle_check_is_judged_at_its_own_deadline() {
    let t0 = Instant::now();
    let mut router = Router::new(Config::default().idle_timeout(ms(100)));
    router.send(1, Msg::Nop).unwrap();
    drive(&mut router, t0); // idle from 0 ms: an idle check is armed for 100 ms
    router.send(1, Msg::Nop).unwrap();
    drive(&mut router, t0 + ms(60)); // idle again from 60 ms: deadline 160 ms
    router.schedule(1, t0 + ms(150), Msg::Nop).unwrap();

    // One late call covers the old check (100 ms), the timer (150 ms) and the deadline (160 ms).
    router.handle_timeout(t0 + ms(200));
    let addr = router.addr(&1).unwrap();
    assert_eq!(router.poll_command(), Some(Command::Run(addr)));
    assert_eq!(
        router.poll_command(),
        None,
        "not deactivated: the timer came first"
    );
    assert_eq!(router.stats().deactivations, 0);
}

/// An instance's idle check does not outlive it. Before the fix, an instance that set a long
/// idle timeout and then stopped with a message queued left its (late) idle check armed, and the
/// next instance in the same slot never armed its own: it stayed live for 7 s instead of 40 ms.
#[test]
fn the_next_instance_in_a_slot_arms_its_own_idle_check() {
    let t0 = Instant::now();
    let mut router = Router::new(Config::default().idle_timeout(ms(40)));
    router.send(1, Msg::Linger).unwrap();
    drive(&mut router, t0); // idle from 0 ms with a 7 s timeout: checked at 7 s
    router.send(1, Msg::Stop).unwrap();
    router.send(1, Msg::Nop).unwrap();
    let commands = drive(&mut router, t0 + ms(10)); // stops; the Nop activates a new instance
    assert!(matches!(commands.last(), Some(Command::Run(_))));
    assert_eq!(router.stats().activations, 2);

    router.handle_timeout(t0 + ms(100)); // the new instance has been idle 90 ms of 40 ms
    let addr = router.addr(&1).unwrap();
    assert_eq!(router.poll_command(), Some(Command::Deactivate(addr)));
}
