//! The eight invariants of hermes-core's crate docs, one targeted test each.
//!
//! The same invariants on arbitrary operation sequences (one or two routers, commands handled
//! inline or checked out and checked in late and out of order, against a reference model) are
//! hermes-check's: `check/tests/seeds.rs` and the `router` fuzz target.

mod common;

use common::*;
use hermes_core::{Command, CommandError, Config, Deactivation, DeadLetterReason};

#[test]
fn invariant_1_each_message_delivered_or_reported_exactly_once() {
    let mut h = Harness::new(Config::default().mailbox_capacity(1));
    h.rec.plan(3, Plan::Refuse);
    let to_5 = Msg::All(vec![send(5, note(4)), send(5, note(5))]);
    h.put(1, note(1)); // delivered
    h.put(2, Msg::Panic); // consumed by a panic: one dead letter without its message
    h.put(3, note(3)); // refused: one dead letter
    h.put(4, to_5.clone()); // 5 holds one message while activating: the second is Full
    h.settle();
    assert_eq!(h.received(), vec![(1, note(1)), (4, to_5), (5, note(4))]);
    let reasons: Vec<_> = h.dead().into_iter().map(|d| (d.msg, d.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (Some(note(3)), DeadLetterReason::NoReceiver),
            (None, DeadLetterReason::Panicked("told to panic".into())),
            (Some(note(5)), DeadLetterReason::Full),
        ]
    );
    let s = h.stats();
    assert_eq!((s.messages_delivered, s.dead_letters), (3, 3));
}

#[test]
fn invariant_2_messages_from_one_sender_arrive_in_send_order() {
    let mut h = Harness::with_mode(Config::default().batch_size(3), Mode::Delayed(Order::Lifo));
    // The outside and receiver 2 both send 1..=50 to 1, across many small batches, a stop
    // and a panic in the middle.
    for n in 1..=50 {
        h.put(1, note(n));
        h.put(2, send(1, note(1000 + n)));
        if n == 20 {
            h.put(1, Msg::Stop);
        }
        if n == 35 {
            h.put(1, Msg::Panic);
        }
        if n % 7 == 0 {
            h.settle();
        }
    }
    h.settle();
    let to1: Vec<u32> = h
        .received()
        .into_iter()
        .filter_map(|(id, m)| match (id, m) {
            (1, Msg::Note(n)) => Some(n),
            _ => None,
        })
        .collect();
    let outside: Vec<u32> = to1.iter().copied().filter(|n| *n < 1000).collect();
    let from2: Vec<u32> = to1.iter().copied().filter(|n| *n > 1000).collect();
    assert_eq!(outside, (1..=50).collect::<Vec<_>>());
    assert_eq!(from2, (1001..=1050).collect::<Vec<_>>());
}

#[test]
fn invariant_3_a_receiver_runs_one_batch_at_a_time() {
    let mut h = Harness::new(Config::default().batch_size(2));
    h.put(1, note(1));
    h.put(1, note(2));
    h.put(1, note(3));
    let a = h.activate_next();
    assert_eq!(h.poll(), Some(Command::Run(a)));
    let job = h.router.check_out(a).unwrap();
    assert_eq!(job.len(), 2, "a batch");
    assert_eq!(h.stats().running, 1);
    // While it runs: more messages queue, but no second Run and no second check-out.
    h.put(1, note(4));
    assert_eq!(h.poll(), None);
    assert_eq!(
        h.router.check_out(a).err(),
        Some(CommandError::WrongState(a))
    );
    assert_eq!(h.router.run(a, h.now), Err(CommandError::WrongState(a)));
    h.finish(job);
    assert_eq!(h.poll(), Some(Command::Run(a)), "the rest runs next");
    let job = h.router.check_out(a).unwrap();
    assert_eq!(job.len(), 2);
    h.finish(job);
    assert_eq!(h.received().len(), 4);
    assert_eq!((h.stats().running, h.stats().idle), (0, 1));
}

#[test]
fn invariant_3_check_in_of_the_wrong_job_is_refused() {
    let mut h = Harness::new(Config::default());
    h.put(1, note(1));
    h.put(2, note(2));
    h.settle();
    h.put(1, note(3));
    let a = h.expect_run();
    let job = h.router.check_out(a).unwrap();
    h.finish(job);
    // The same job checked in twice cannot be: Done is consumed. A job from another router:
    let mut other = Harness::new(Config::default());
    other.put(1, note(9));
    other.settle();
    other.put(1, note(10));
    let b = other.expect_run();
    let foreign = other.router.check_out(b).unwrap().execute(other.now);
    assert_eq!(
        h.router.check_in(foreign, h.now),
        Err(CommandError::NotCheckedOut(b)),
        "the slot exists here but is not checked out"
    );
}

#[test]
fn invariant_4_never_deactivated_while_running_or_with_messages() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(0)).batch_size(1));
    h.put(1, note(1));
    h.put(1, note(2));
    let a = h.activate_next();
    assert_eq!(h.expect_run(), a);
    let job = h.router.check_out(a).unwrap();
    h.put(1, note(3)); // arrives while running
    h.finish(job);
    // Zero idle timeout, yet messages are queued: run, not deactivate.
    assert_eq!(h.poll(), Some(Command::Run(a)));
    h.router.run(a, h.now).unwrap();
    assert_eq!(h.poll(), Some(Command::Run(a)));
    h.router.run(a, h.now).unwrap();
    assert_eq!(h.poll(), Some(Command::Deactivate(a)), "only when drained");
    h.router.run(a, h.now).unwrap();
    assert_eq!(h.poll(), None, "once");
    let events = h.events();
    assert_eq!(received(&events).len(), 3);
    assert_eq!(
        events.last(),
        Some(&Event::Deactivated {
            id: 1,
            instance: 1,
            why: Deactivation::IdleTimeout
        })
    );
    assert_eq!(h.stats().deactivations, 1);
}

#[test]
fn invariant_5_timers_fire_once_at_or_after_deadline_and_never_when_cancelled() {
    let mut h = Harness::new(Config::default());
    h.put(1, schedule(ms(5), note(1)));
    h.put(1, schedule(ms(5), note(2)));
    h.settle();
    let timers = timers_scheduled(&h.events());
    h.router.cancel(timers[1]);
    for step in 0..10 {
        h.advance_to(ms(step));
        let got = h.received();
        if step < 5 {
            assert!(got.is_empty());
        } else if step == 5 {
            assert_eq!(got, vec![(1, note(1))]);
        } else {
            assert!(got.is_empty(), "fired once; the cancelled one never");
        }
    }
}

#[test]
fn invariant_6_after_close_every_receiver_was_deactivated_once_and_nothing_is_accepted() {
    let mut h = Harness::with_mode(Config::default(), Mode::Delayed(Order::Lifo));
    for id in 0..50 {
        h.put(id, note(id));
        if id % 3 == 0 {
            h.settle();
        }
    }
    h.close();
    let mut instances: Vec<_> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Deactivated {
                id,
                instance,
                why: Deactivation::Closing,
            } => Some((id, instance)),
            _ => None,
        })
        .collect();
    instances.sort();
    assert_eq!(instances, (0..50).map(|id| (id, 1)).collect::<Vec<_>>());
    assert!(h.router.is_closed());
    assert!(h.send(0, note(0)).is_err());
    assert_eq!(h.stats().live, 0);
}

#[test]
fn invariant_7_stale_handles_never_reach_a_newer_receiver() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(0)));
    // Churn one slot through many receivers, keeping every handle it ever had.
    let mut handles = Vec::new();
    for id in 0..20 {
        h.put(id, note(id));
        handles.push((id, h.router.addr(&id).unwrap()));
        h.settle();
    }
    assert!(
        handles
            .iter()
            .all(|(_, a)| a.index() == handles[0].1.index())
    );
    h.put(100, Msg::SetIdle(ms(1000))); // the slot's current owner
    h.settle();
    h.events();
    for (id, a) in &handles {
        assert!(h.router.send_to(*a, note(*id)).is_err());
        h.put(200, Msg::SendTo(*a, Box::new(note(*id))));
    }
    h.settle();
    assert!(
        h.received()
            .iter()
            .all(|(id, m)| *id == 200 || !matches!(m, Msg::Note(_))),
        "only 200 got messages"
    );
    assert_eq!(h.dead().len(), 20);
}

#[test]
fn invariant_8_only_receivers_with_messages_have_work_scheduled() {
    let mut h = Harness::new(Config::default());
    for id in 0..1000 {
        h.put(id, note(id));
    }
    h.settle();
    let s = h.stats();
    assert_eq!((s.idle, s.scheduled, s.running), (1000, 0, 0));
    assert_eq!(h.poll(), None, "idle receivers cost no commands");
    h.advance(ms(1000));
    assert_eq!(h.poll(), None);
    for id in [3, 500, 999] {
        h.put(id, note(0));
        h.put(id, note(1));
    }
    let s = h.stats();
    assert_eq!((s.idle, s.scheduled, s.running), (997, 3, 0));
    let a = h.expect_run();
    let job = h.router.check_out(a).unwrap();
    let s = h.stats();
    assert_eq!((s.scheduled, s.running), (2, 1));
    h.finish(job);
    h.settle();
    let s = h.stats();
    assert_eq!((s.idle, s.scheduled, s.running), (1000, 0, 0));
}
