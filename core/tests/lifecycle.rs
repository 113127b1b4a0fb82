//! A receiver's lifecycle: activation, the factory's answers, become, stop, idle deactivation,
//! messages arriving during deactivation, stale handles, bounded mailboxes and panics.

mod common;

use common::*;
use hermes_core::{
    Command, CommandError, Config, Deactivation, DeadLetterReason, Recipient, SendError,
};

fn activated(id: Id, instance: u32) -> Event {
    Event::Activated { id, instance }
}

fn got(id: Id, instance: u32, msg: Msg) -> Event {
    Event::Received {
        id,
        instance,
        handler: "initial",
        msg,
    }
}

fn deactivated(id: Id, instance: u32, why: Deactivation) -> Event {
    Event::Deactivated { id, instance, why }
}

#[test]
fn first_message_activates_and_messages_queue_while_activating() {
    let mut h = Harness::new(Config::default());
    h.put(7, note(1));
    let s = h.stats();
    assert_eq!((s.live, s.activating, s.messages_routed), (1, 1, 1));
    let addr = h.expect_activate();
    assert_eq!(h.router.id(addr), Some(&7));
    assert_eq!(h.router.addr(&7), Some(addr));
    assert_eq!(
        h.rec.factory_calls(),
        0,
        "the router never calls the factory itself"
    );

    // More messages queue; no second Activate.
    h.put(7, note(2));
    assert_eq!(h.poll(), None);

    let activation = h.rec.create(7);
    h.router.activate(addr, activation).unwrap();
    assert_eq!(h.poll(), Some(Command::Run(addr)));
    h.router.run(addr, h.now).unwrap();
    assert_eq!(h.poll(), None);
    assert_eq!(
        h.events(),
        vec![activated(7, 1), got(7, 1, note(1)), got(7, 1, note(2))]
    );
    let s = h.stats();
    assert_eq!(
        (s.live, s.idle, s.activations, s.messages_delivered),
        (1, 1, 1, 2)
    );

    // A live receiver is not activated again.
    h.put(7, note(3));
    assert_eq!(h.poll(), Some(Command::Run(addr)));
    h.router.run(addr, h.now).unwrap();
    assert_eq!(h.rec.factory_calls(), 1);
}

#[test]
fn factory_refusing_dead_letters_every_queued_message() {
    let mut h = Harness::new(Config::default());
    h.rec.plan(5, Plan::Refuse);
    h.put(5, note(1));
    h.put(5, note(2));
    h.settle();
    let expected = |n| Dead {
        to: Recipient::Id(5),
        msg: Some(note(n)),
        reason: DeadLetterReason::NoReceiver,
    };
    assert_eq!(h.dead(), vec![expected(1), expected(2)]);
    let s = h.stats();
    assert_eq!((s.live, s.activations, s.dead_letters), (0, 0, 2));
    assert!(h.events().is_empty());

    // The ID is asked about again on its next message.
    h.rec.plan(5, Plan::Ready);
    h.put(5, note(3));
    h.settle();
    assert_eq!(h.received(), vec![(5, note(3))]);
    assert_eq!(h.rec.factory_calls(), 2);
}

#[test]
fn factory_failing_dead_letters_with_its_error() {
    let mut h = Harness::new(Config::default());
    h.rec.plan(5, Plan::Fail);
    h.put(5, note(1));
    h.put(5, note(2));
    h.settle();
    let dead = h.dead();
    assert_eq!(dead.len(), 2);
    for (d, n) in dead.iter().zip(1..) {
        assert_eq!(d.to, Recipient::Id(5));
        assert_eq!(d.msg, Some(note(n)));
        let DeadLetterReason::FactoryFailed(e) = &d.reason else {
            panic!("expected FactoryFailed, got {:?}", d.reason)
        };
        assert_eq!(e.to_string(), "could not load the state of 5");
        assert!(e.get().downcast_ref::<LoadError>().is_some());
    }
    assert_eq!(
        dead[0].reason, dead[1].reason,
        "one error shared by the activation's letters"
    );
    assert_eq!(
        dead[0].reason.to_string(),
        "activation failed: could not load the state of 5"
    );
    assert_eq!((h.stats().dead_letters, h.stats().live), (2, 0));

    h.rec.plan(5, Plan::Ready);
    h.put(5, note(3));
    h.settle();
    assert_eq!(h.received(), vec![(5, note(3))]);
}

#[test]
fn become_swaps_the_handler_from_the_next_message_until_deactivation() {
    let mut h = Harness::new(Config::default());
    for m in [note(1), Msg::Become("second"), note(2), Msg::Stop, note(3)] {
        h.put(1, m);
    }
    h.settle();
    let handlers: Vec<_> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Received {
                handler, instance, ..
            } => Some((instance, handler)),
            _ => None,
        })
        .collect();
    assert_eq!(
        handlers,
        vec![
            (1, "initial"),
            (1, "initial"), // the Become message itself
            (1, "second"),
            (1, "second"),  // Stop
            (2, "initial"), // a fresh instance starts with the factory's handler
        ]
    );
}

#[test]
fn stop_deactivates_after_the_message_and_keeps_the_rest_for_a_fresh_instance() {
    let mut h = Harness::new(Config::default());
    for m in [note(1), Msg::Stop, note(2), note(3)] {
        h.put(1, m);
    }
    h.settle();
    assert_eq!(
        h.events(),
        vec![
            activated(1, 1),
            got(1, 1, note(1)),
            got(1, 1, Msg::Stop),
            deactivated(1, 1, Deactivation::Stopped),
            activated(1, 2),
            got(1, 2, note(2)),
            got(1, 2, note(3)),
        ]
    );
    let s = h.stats();
    assert_eq!(
        (s.activations, s.deactivations, s.live, s.idle),
        (2, 1, 1, 1)
    );
    assert!(h.dead().is_empty());

    // Stop on the last message frees the slot.
    h.put(1, Msg::Stop);
    h.settle();
    assert_eq!(h.stats().live, 0);
    assert_eq!(h.router.addr(&1), None);
}

#[test]
fn idle_receiver_is_deactivated_after_idle_timeout_not_before() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(10)));
    h.put(1, note(1));
    h.settle();
    assert_eq!(h.router.poll_timeout(), Some(h.at(ms(10))));

    // Activity restarts the idle clock.
    h.advance_to(ms(5));
    h.put(1, note(2));
    h.settle();
    h.advance_to(ms(10));
    assert_eq!(h.stats().live, 1, "active at 5 ms: not idle for 10 ms yet");
    h.advance_to(ms(15) - std::time::Duration::from_nanos(1));
    assert_eq!(h.stats().live, 1);
    h.events();
    h.advance_to(ms(15));
    assert_eq!(
        h.events(),
        vec![deactivated(1, 1, Deactivation::IdleTimeout)]
    );
    let s = h.stats();
    assert_eq!((s.live, s.deactivations), (0, 1));
    assert_eq!(h.router.poll_timeout(), None, "nothing left to wake for");
}

#[test]
fn default_idle_timeout_is_five_minutes() {
    assert_eq!(Config::default().idle_timeout, ms(300_000));
    let mut h = Harness::new(Config::default());
    h.put(1, note(1));
    h.settle();
    h.advance_to(ms(299_999));
    assert_eq!(h.stats().live, 1);
    h.advance_to(ms(300_000));
    assert_eq!(h.stats().live, 0);
}

#[test]
fn zero_idle_timeout_deactivates_as_soon_as_the_mailbox_is_empty() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(0)));
    h.put(1, note(1));
    h.put(1, note(2));
    h.settle();
    assert_eq!(
        h.events(),
        vec![
            activated(1, 1),
            got(1, 1, note(1)),
            got(1, 1, note(2)),
            deactivated(1, 1, Deactivation::IdleTimeout),
        ]
    );
    assert_eq!(h.stats().live, 0);
}

#[test]
fn receiver_overrides_its_idle_timeout_on_first_message() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(10)));
    h.put(1, Msg::SetIdle(ms(1)));
    h.put(2, note(1));
    h.settle();
    h.advance_to(ms(1));
    assert_eq!(h.router.addr(&1), None, "1 ms override applies");
    assert!(
        h.router.addr(&2).is_some(),
        "others keep the router's 10 ms"
    );
    h.advance_to(ms(10));
    assert_eq!(h.stats().live, 0);
}

#[test]
fn receiver_shortens_its_idle_timeout_while_an_idle_check_is_armed() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(100)));
    h.put(1, note(1));
    h.settle(); // idle from 0 ms, check armed for 100 ms
    h.advance_to(ms(2));
    h.put(1, Msg::SetIdle(ms(1)));
    h.settle();
    h.advance_to(ms(3));
    assert_eq!(
        h.router.addr(&1),
        None,
        "deactivated 1 ms after becoming idle"
    );
}

#[test]
fn receiver_lengthens_its_idle_timeout() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(10)));
    h.put(1, Msg::SetIdle(ms(50)));
    h.settle();
    h.advance_to(ms(49));
    assert_eq!(h.stats().live, 1);
    h.advance_to(ms(50));
    assert_eq!(h.stats().live, 0);
}

#[test]
fn idle_override_ends_with_the_instance() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(10)));
    // The override and a stop in one batch, and a message queued behind them: the same slot
    // activates a fresh instance, which gets the router's default again.
    h.put(1, Msg::All(vec![Msg::SetIdle(ms(1000)), Msg::Stop]));
    h.put(1, note(2));
    h.settle();
    assert_eq!(h.stats().activations, 2);
    h.advance_to(ms(10));
    assert_eq!(
        h.stats().live,
        0,
        "the fresh instance uses the router's 10 ms"
    );
}

#[test]
fn message_arriving_during_deactivation_activates_a_fresh_instance() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(10)));
    h.put(1, note(1));
    h.settle();
    h.events();
    h.now = h.at(ms(10));
    h.router.handle_timeout(h.now);
    let addr = h.expect_deactivate();

    // Arrives after Deactivate was emitted, before the hook ran.
    h.put(1, note(2));
    assert_eq!(h.poll(), None, "no Run while deactivating");
    // And one while the hook runs elsewhere (checked out).
    let job = h.router.check_out(addr).unwrap();
    h.put(1, note(3));
    h.finish(job);

    h.settle();
    assert_eq!(
        h.events(),
        vec![
            deactivated(1, 1, Deactivation::IdleTimeout),
            activated(1, 2),
            got(1, 2, note(2)),
            got(1, 2, note(3)),
        ]
    );
    assert!(h.dead().is_empty());
    let s = h.stats();
    assert_eq!((s.activations, s.deactivations, s.live), (2, 1, 1));
}

#[test]
fn stale_handles_are_refused_after_the_slot_is_reused() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(0)));
    h.put(1, note(1));
    let old = h.router.addr(&1).unwrap();
    h.settle(); // 1 deactivated at once: its slot is freed
    assert_eq!(h.router.id(old), None);

    // Keep 2 live so its slot is the reused one.
    h.put(2, Msg::SetIdle(ms(1000)));
    let new = h.router.addr(&2).unwrap();
    h.settle();
    assert_eq!(new.index(), old.index(), "the slot is reused");
    assert_ne!(new.generation(), old.generation());

    match h.router.send_to(old, note(9)) {
        Err(SendError::Stale(m)) => assert_eq!(m, note(9), "the message comes back"),
        other => panic!("expected Stale, got {other:?}"),
    }
    // From inside, a stale handle is a dead letter.
    h.put(3, Msg::SendTo(old, Box::new(note(10))));
    h.settle();
    assert_eq!(
        h.dead(),
        vec![Dead {
            to: Recipient::Addr(old),
            msg: Some(note(10)),
            reason: DeadLetterReason::Stale,
        }]
    );
    // The fresh handle works.
    h.router.send_to(new, note(11)).unwrap();
    h.settle();
    let got2: Vec<_> = h
        .received()
        .into_iter()
        .filter(|(id, _)| *id == 2)
        .collect();
    assert_eq!(got2, vec![(2, Msg::SetIdle(ms(1000))), (2, note(11))]);
    assert_eq!(h.stats().dead_letters, 1);
}

#[test]
fn full_mailbox_refuses_outside_sends_and_dead_letters_inside_sends() {
    let mut h = Harness::new(Config::default().mailbox_capacity(2));
    h.put(9, send(1, note(100)));
    h.put(1, note(1));
    h.put(1, note(2));
    match h.send(1, note(3)) {
        Err(SendError::Full(m)) => assert_eq!(m, note(3)),
        other => panic!("expected Full, got {other:?}"),
    }
    assert_eq!(
        SendError::Full(()).to_string(),
        "the receiver's mailbox is full: retry later or raise mailbox_capacity"
    );
    // 9 runs while 1 still holds two messages: its send becomes a dead letter.
    h.settle();
    assert_eq!(
        h.dead(),
        vec![Dead {
            to: Recipient::Id(1),
            msg: Some(note(100)),
            reason: DeadLetterReason::Full,
        }]
    );
    let to1: Vec<_> = h
        .received()
        .into_iter()
        .filter(|(id, _)| *id == 1)
        .collect();
    assert_eq!(to1, vec![(1, note(1)), (1, note(2))]);
    // Drained: room again.
    h.put(1, note(4));
    h.put(1, note(5));
    assert!(matches!(h.send(1, note(6)), Err(SendError::Full(_))));
}

#[test]
fn inline_panic_deactivates_the_instance_and_keeps_the_rest_of_the_mailbox() {
    let mut h = Harness::new(Config::default());
    h.put(1, note(1));
    // The panicking message's effects are rolled back: 2 never hears of it.
    h.put(1, Msg::All(vec![send(2, note(99)), Msg::Panic]));
    h.put(1, note(2));
    h.put(1, note(3));
    h.settle();
    assert_eq!(
        h.events(),
        vec![
            activated(1, 1),
            got(1, 1, note(1)),
            deactivated(1, 1, Deactivation::Panicked),
            activated(1, 2),
            got(1, 2, note(2)),
            got(1, 2, note(3)),
        ]
    );
    let dead = h.dead();
    assert_eq!(
        dead,
        vec![Dead {
            to: Recipient::Id(1),
            msg: None,
            reason: DeadLetterReason::Panicked("told to panic".into()),
        }]
    );
    assert_eq!(
        dead[0].reason.to_string(),
        "the handler panicked: told to panic"
    );
    let s = h.stats();
    assert_eq!(
        (
            s.panics,
            s.dead_letters,
            s.messages_delivered,
            s.activations,
            s.deactivations
        ),
        (1, 1, 3, 2, 1)
    );
    assert_eq!(h.router.addr(&2), None);
}

#[test]
fn panic_on_the_last_message_frees_the_slot_and_the_next_message_reactivates() {
    let mut h = Harness::new(Config::default());
    h.put(1, Msg::Panic);
    h.settle();
    assert_eq!(h.stats().live, 0);
    h.put(1, note(2));
    h.settle();
    assert_eq!(h.rec.factory_calls(), 2);
    assert_eq!(h.received(), vec![(1, note(2))]);
}

#[test]
fn activated_hook_panic_fails_the_activation() {
    let mut h = Harness::new(Config::default());
    h.rec.plan(1, Plan::PanicOnActivate);
    h.put(1, note(1));
    h.put(1, note(2));
    h.settle();
    let dead = h.dead();
    assert_eq!(
        dead.iter().map(|d| d.msg.clone()).collect::<Vec<_>>(),
        vec![Some(note(1)), Some(note(2))]
    );
    for d in &dead {
        let DeadLetterReason::FactoryFailed(e) = &d.reason else {
            panic!("expected FactoryFailed, got {:?}", d.reason)
        };
        assert_eq!(
            e.to_string(),
            "the activated hook panicked: activated hook told to panic"
        );
    }
    let s = h.stats();
    assert_eq!(
        (s.live, s.panics, s.dead_letters, s.messages_delivered),
        (0, 1, 2, 0)
    );
    assert!(h.events().is_empty(), "the instance never ran");

    h.rec.plan(1, Plan::Ready);
    h.put(1, note(3));
    h.settle();
    assert_eq!(h.received(), vec![(1, note(3))]);
}

#[test]
fn deactivated_hook_panic_still_completes_the_deactivation() {
    let mut h = Harness::new(Config::default());
    h.rec.plan(1, Plan::PanicOnDeactivate);
    h.put(1, Msg::Stop);
    h.settle();
    let s = h.stats();
    assert_eq!((s.live, s.deactivations), (0, 1));
    assert!(h.dead().is_empty());
}

#[test]
fn commands_are_handled_once_and_wrong_calls_are_typed_errors() {
    let mut h = Harness::new(Config::default());
    h.put(1, note(1));
    let addr = h.expect_activate();
    assert_eq!(
        h.router.run(addr, h.now),
        Err(CommandError::WrongState(addr))
    );
    h.router.activate(addr, h.rec.create(1)).unwrap();
    assert_eq!(
        h.router.activate(addr, h.rec.create(1)),
        Err(CommandError::WrongState(addr))
    );
    let job = h.router.check_out(addr).unwrap();
    assert_eq!(job.id(), &1);
    assert_eq!((job.len(), job.is_empty()), (1, false));
    assert_eq!(
        h.router.check_out(addr).err(),
        Some(CommandError::WrongState(addr))
    );
    let done = job.execute(h.now);
    assert_eq!(done.addr(), addr);
    h.router.check_in(done, h.now).unwrap();
    assert!(
        CommandError::WrongState(addr)
            .to_string()
            .contains("act only on the router's commands")
    );
}

#[test]
fn deferred_idle_time_starts_at_the_stamp_not_sooner() {
    // Receiver 1 on the router's 10 ms, receiver 2 on its own 20 ms (an armed idle check).
    let mut h = Harness::new(Config::default().idle_timeout(ms(10)));
    h.router.defer_idle_time();
    h.put(1, note(1));
    h.put(2, Msg::SetIdle(ms(20)));
    h.settle();
    assert_eq!(h.stats().idle, 2);
    assert!(h.router.has_unstamped());
    assert_eq!(
        h.router.poll_timeout(),
        None,
        "no idle time before the stamp"
    );
    h.advance_to(ms(30));
    assert_eq!(h.stats().live, 2, "never deactivated while unstamped");
    h.router.stamp_idle(h.at(ms(30)));
    assert!(!h.router.has_unstamped());
    assert_eq!(h.router.poll_timeout(), Some(h.at(ms(40))));
    h.advance_to(ms(40) - std::time::Duration::from_nanos(1));
    assert_eq!(h.stats().live, 2);
    h.advance_to(ms(40));
    assert_eq!(h.router.addr(&1), None, "the router's 10 ms from the stamp");
    assert!(h.router.addr(&2).is_some());
    h.advance_to(ms(50) - std::time::Duration::from_nanos(1));
    assert!(h.router.addr(&2).is_some());
    h.advance_to(ms(50));
    assert_eq!(h.stats().live, 0, "its own 20 ms from the stamp");
    assert_eq!(h.stats().deactivations, 2);
}

#[test]
fn deferred_idle_time_of_a_receiver_woken_before_the_stamp_is_stamped_once() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(10)));
    h.router.defer_idle_time();
    for n in 0..3 {
        h.put(1, note(n));
        h.settle();
    }
    // Idle three times, stamped once: one idle deadline.
    h.router.stamp_idle(h.now);
    assert_eq!(h.router.poll_timeout(), Some(h.at(ms(10))));
    // Woken and left running at the stamp: no idle time until it is idle again.
    h.put(1, note(3));
    let a = h.expect_run();
    h.router.stamp_idle(h.now);
    assert_eq!(h.router.poll_timeout(), None);
    h.advance_to(ms(5));
    h.router.run(a, h.now).unwrap();
    h.router.stamp_idle(h.at(ms(6)));
    assert_eq!(h.router.poll_timeout(), Some(h.at(ms(16))));
    h.events();
    h.advance_to(ms(16));
    assert_eq!(
        h.events(),
        vec![deactivated(1, 1, Deactivation::IdleTimeout)]
    );
    // Closing deactivates an unstamped receiver; its stamp comes to nothing.
    h.put(2, note(1));
    h.settle();
    h.close();
    h.router.stamp_idle(h.now);
    assert!(h.router.is_closed());
    assert_eq!(h.stats().deactivations, 2);
}
