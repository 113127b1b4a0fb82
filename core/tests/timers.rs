//! Timers: deadline order, ties in scheduling order, cancel, re-activation, outside scheduling.

mod common;

use std::time::Duration;

use common::*;
use hermes_core::{Config, Deactivation, Recipient};

/// The notes received, in order.
fn notes(h: &Harness) -> Vec<(Id, u32)> {
    h.received()
        .into_iter()
        .filter_map(|(id, m)| match m {
            Msg::Note(n) => Some((id, n)),
            _ => None,
        })
        .collect()
}

#[test]
fn timers_fire_in_deadline_order_and_ties_in_scheduling_order() {
    let mut h = Harness::new(Config::default());
    h.put(
        1,
        Msg::All(vec![
            schedule(ms(30), note(30)),
            schedule(ms(10), note(11)),
            Msg::ScheduleTo(1, ms(20), Box::new(note(20))),
            Msg::ScheduleTo(2, ms(20), Box::new(note(21))),
            schedule(ms(10), note(12)),
            schedule(ms(10), note(13)),
        ]),
    );
    h.settle();
    assert_eq!(h.stats().timers_pending, 6);
    assert_eq!(h.router.poll_timeout(), Some(h.at(ms(10))));
    // Jump past every deadline at once: still deadline order, ties in scheduling order.
    h.advance_to(ms(100));
    let got = notes(&h);
    let to_1: Vec<_> = got.iter().filter(|(id, _)| *id == 1).collect();
    assert_eq!(to_1, [&(1, 11), &(1, 12), &(1, 13), &(1, 20), &(1, 30)]);
    assert!(got.contains(&(2, 21)));
    assert_eq!(h.stats().timers_pending, 0);
}

#[test]
fn a_timer_never_fires_before_its_deadline_and_fires_once() {
    let mut h = Harness::new(Config::default());
    h.put(1, schedule(ms(10), note(1)));
    h.settle();
    h.events();
    h.advance_to(ms(10) - Duration::from_nanos(1));
    assert!(notes(&h).is_empty());
    h.advance_to(ms(10));
    assert_eq!(notes(&h), vec![(1, 1)]);
    h.advance_to(ms(20));
    assert!(notes(&h).is_empty(), "fired once");
}

#[test]
fn cancelled_timers_never_fire() {
    let mut h = Harness::new(Config::default());
    h.put(1, schedule(ms(10), note(1)));
    h.put(1, schedule(ms(10), note(2)));
    h.put(1, schedule(ms(10), note(3)));
    h.settle();
    let timers = timers_scheduled(&h.events());
    assert_unique(&timers);
    // Cancel one from inside the receiver, one from outside.
    h.put(1, Msg::Cancel(timers[0]));
    h.settle();
    assert!(h.router.cancel(timers[2]));
    assert!(!h.router.cancel(timers[2]), "already cancelled");
    assert_eq!(h.stats().timers_pending, 1);
    h.advance_to(ms(50));
    assert_eq!(notes(&h), vec![(1, 2)]);
    assert!(
        !h.router.cancel(timers[1]),
        "a fired timer cannot be cancelled"
    );
}

#[test]
fn many_cancellations_keep_the_rest_in_order() {
    // Enough cancellations to make the heap compact itself.
    let mut h = Harness::new(Config::default());
    let steps = (0..200)
        .map(|i| schedule(ms(1 + i % 7), note(i as u32)))
        .collect();
    h.put(1, Msg::All(steps));
    h.settle();
    let timers: Vec<_> = h
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Scheduled { timer, msg, .. } => Some((timer, msg)),
            _ => None,
        })
        .collect();
    for (timer, msg) in &timers {
        if matches!(msg, Msg::Note(n) if n % 3 != 0) {
            assert!(h.router.cancel(*timer));
        }
    }
    h.advance_to(ms(100));
    let mut expected: Vec<(u64, u32)> = (0..200u32)
        .filter(|n| n % 3 == 0)
        .map(|n| (1 + u64::from(n) % 7, n))
        .collect();
    expected.sort(); // by deadline, then scheduling order (= n)
    let expected: Vec<_> = expected.into_iter().map(|(_, n)| (1, n)).collect();
    assert_eq!(notes(&h), expected);
}

#[test]
fn a_timer_reactivates_a_deactivated_receiver() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(5)));
    h.put(1, schedule(ms(20), note(1)));
    h.settle();
    h.advance_to(ms(5));
    assert_eq!(h.stats().live, 0, "deactivated while its timer is pending");
    assert_eq!(h.stats().timers_pending, 1);
    assert_eq!(h.router.poll_timeout(), Some(h.at(ms(20))));
    h.advance_to(ms(20));
    assert_eq!(
        h.events()[3..], // Activated, Scheduled, Received
        [
            Event::Deactivated {
                id: 1,
                instance: 1,
                why: Deactivation::IdleTimeout
            },
            Event::Activated { id: 1, instance: 2 },
            Event::Received {
                id: 1,
                instance: 2,
                handler: "initial",
                msg: note(1)
            },
        ]
    );
}

#[test]
fn timers_scheduled_from_outside() {
    let mut h = Harness::new(Config::default());
    let a = h.router.schedule(1, h.at(ms(10)), note(1)).unwrap();
    let b = h.router.schedule(2, h.at(ms(5)), note(2)).unwrap();
    let c = h.router.schedule(1, h.at(ms(5)), note(3)).unwrap();
    assert_unique([a, b, c]);
    assert_eq!(
        h.stats().live,
        0,
        "nothing is activated before the timer fires"
    );
    assert!(h.router.cancel(c));
    h.advance_to(ms(10));
    assert_eq!(notes(&h), vec![(2, 2), (1, 1)]);
}

#[test]
fn a_timer_to_an_id_with_no_receiver_is_a_dead_letter() {
    let mut h = Harness::new(Config::default());
    h.rec.plan(9, Plan::Refuse);
    h.router.schedule(9, h.at(ms(1)), note(1)).unwrap();
    h.advance_to(ms(1));
    assert_eq!(
        h.dead(),
        vec![Dead {
            to: Recipient::Id(9),
            msg: Some(note(1)),
            reason: hermes_core::DeadLetterReason::NoReceiver,
        }]
    );
}

#[test]
fn poll_timeout_covers_user_timers_and_idle_checks() {
    let mut h = Harness::new(Config::default().idle_timeout(ms(50)));
    assert_eq!(h.router.poll_timeout(), None);
    h.put(1, schedule(ms(80), note(1)));
    h.settle();
    assert_eq!(
        h.router.poll_timeout(),
        Some(h.at(ms(50))),
        "idle check first"
    );
    h.advance_to(ms(50));
    assert_eq!(h.router.poll_timeout(), Some(h.at(ms(80))));
}
