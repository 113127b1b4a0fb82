//! Close: refuse outside messages, drain, deactivate every live receiver exactly once.

mod common;

use std::collections::HashMap;

use common::*;
use hermes_core::{Config, Deactivation, DeadLetterReason, Driver, Recipient, SendError};

/// How many times each (id, instance) was deactivated, and why.
fn deactivations(events: &[Event]) -> HashMap<(Id, u32), Vec<Deactivation>> {
    let mut map: HashMap<_, Vec<_>> = HashMap::new();
    for e in events {
        if let Event::Deactivated { id, instance, why } = e {
            map.entry((*id, *instance)).or_default().push(*why);
        }
    }
    map
}

fn activations(events: &[Event]) -> Vec<(Id, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Activated { id, instance } => Some((*id, *instance)),
            _ => None,
        })
        .collect()
}

#[test]
fn close_drains_queued_messages_then_deactivates_each_receiver_once() {
    for mode in [
        Mode::Inline,
        Mode::Delayed(Order::Fifo),
        Mode::Delayed(Order::Lifo),
    ] {
        let mut h = Harness::with_mode(Config::default().batch_size(2), mode);
        // Idle receivers.
        for id in 0..5 {
            h.put(id, note(id));
        }
        h.settle();
        // Receivers with queued work, one still activating, one that sends to others while
        // draining (a live one gets it; a dead one is refused).
        for n in 0..5 {
            h.put(10, note(100 + n));
        }
        h.put(11, note(200));
        h.put(12, Msg::All(vec![send(0, note(300)), send(99, note(301))]));
        h.router.close();
        assert!(h.router.is_closing() && !h.router.is_closed());
        h.settle();
        assert!(h.router.is_closed(), "{mode:?}");

        let events = h.events();
        let got: Vec<_> = received(&events);
        for n in 0..5 {
            assert!(got.contains(&(10, note(100 + n))), "drained ({mode:?})");
        }
        assert!(got.contains(&(11, note(200))));
        let live_reached = got.contains(&(0, note(300)));
        let dead = h.dead();
        // 0 may already be deactivating when 12 runs (then the message is refused).
        let refused_to_0 = dead.iter().any(|d| d.msg == Some(note(300)));
        assert!(live_reached ^ refused_to_0, "{mode:?}");
        assert!(dead.contains(&Dead {
            to: Recipient::Id(99),
            msg: Some(note(301)),
            reason: DeadLetterReason::Closed,
        }));

        // Every instance that was activated was deactivated exactly once, with Closing.
        let deact = deactivations(&events);
        let acts = activations(&events);
        assert_eq!(deact.len(), acts.len(), "{mode:?}");
        for key in acts {
            assert_eq!(deact[&key], vec![Deactivation::Closing], "{key:?} {mode:?}");
        }
        let s = h.stats();
        assert_eq!(
            (s.live, s.activations, s.deactivations),
            (0, 8, 8),
            "{mode:?}"
        );
    }
}

#[test]
fn sends_after_close_are_refused_with_the_message() {
    let mut h = Harness::new(Config::default());
    h.put(1, note(1));
    h.settle();
    h.router.close();
    match h.send(1, note(2)) {
        Err(SendError::Closed(m)) => assert_eq!(m, note(2)),
        other => panic!("expected Closed, got {other:?}"),
    }
    let addr = h.router.addr(&1).unwrap();
    assert!(matches!(
        h.router.send_to(addr, note(3)),
        Err(SendError::Closed(_))
    ));
    assert!(matches!(
        h.router.schedule(1, h.at(ms(1)), note(4)),
        Err(SendError::Closed(_))
    ));
    h.settle();
    assert!(h.router.is_closed());
    assert!(matches!(h.send(2, note(5)), Err(SendError::Closed(_))));
    assert_eq!(
        SendError::Closed(()).to_string(),
        "hermes is closed: it accepts no new messages"
    );
    assert_eq!(
        h.stats().dead_letters,
        0,
        "refused sends are errors, not dead letters"
    );
}

#[test]
fn timers_pending_at_close_become_dead_letters() {
    let mut h = Harness::new(Config::default());
    h.put(1, schedule(ms(10), note(1)));
    h.router.schedule(2, h.at(ms(5)), note(2)).unwrap();
    h.settle();
    assert_eq!(h.stats().timers_pending, 2);
    h.close();
    let dead = h.dead();
    assert_eq!(dead.len(), 2);
    for d in &dead {
        assert_eq!(d.reason, DeadLetterReason::Closed);
    }
    // Deadline order.
    assert_eq!(dead[0].msg, Some(note(2)));
    assert_eq!(dead[1].msg, Some(note(1)));
    assert_eq!(h.stats().timers_pending, 0);
    h.advance_to(ms(100));
    assert!(h.events().iter().all(|e| !matches!(
        e,
        Event::Received {
            msg: Msg::Note(_),
            ..
        }
    )));
}

#[test]
fn timers_scheduled_while_closing_become_dead_letters() {
    let mut h = Harness::new(Config::default());
    h.put(1, note(0));
    h.settle();
    h.put(1, schedule(ms(10), note(1)));
    h.router.close();
    h.settle();
    assert_eq!(
        h.dead(),
        vec![Dead {
            to: Recipient::Id(1),
            msg: Some(note(1)),
            reason: DeadLetterReason::Closed,
        }]
    );
}

#[test]
fn close_is_idempotent_and_close_with_nothing_live_is_closed_at_once() {
    let mut h = Harness::new(Config::default());
    h.router.close();
    h.router.close();
    assert!(h.router.is_closed());
    assert_eq!(h.router.poll_command(), None);
}

#[test]
fn a_receiver_deactivating_for_idleness_at_close_is_deactivated_once() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(10)));
    h.put(1, note(1));
    h.settle();
    h.now = h.at(ms(10));
    h.router.handle_timeout(h.now); // Deactivate(IdleTimeout) is out
    h.close();
    let events = h.events();
    assert_eq!(
        deactivations(&events)[&(1, 1)],
        vec![Deactivation::IdleTimeout]
    );
    assert!(h.router.is_closed());
    assert_eq!(h.stats().deactivations, 1);
}

#[test]
fn driver_close_runs_until_closed() {
    let rec = Recorder::default();
    let mut driver = Driver::new(Config::default(), rec.factory());
    let t0 = std::time::Instant::now();
    for id in 0..3 {
        driver.send(id, note(id)).unwrap();
    }
    assert_eq!(driver.run(t0), 6, "three activations and three runs");
    driver.close(t0);
    assert!(driver.router().is_closed());
    assert_eq!(driver.router().stats().deactivations, 3);
    assert!(driver.poll_dead_letter().is_none());
    assert_eq!(driver.poll_timeout(), None);
    assert!(matches!(driver.send(0, note(9)), Err(SendError::Closed(_))));
}
