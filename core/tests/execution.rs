//! Ways of running receivers: inline and check-out / check-in give the same results; routers
//! placed as shards exchange messages; the inline driver; the receiver test kit.
//!
//! That inline and checked-out runs agree on arbitrary workloads is hermes-check's to show: it
//! compares every router output, whichever way each command was handled, with one reference
//! model (`check/tests/seeds.rs`).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hermes_core::testkit::{Probe, Scheduled};
use hermes_core::{
    Activation, Command, Config, Context, Deactivation, Driver, Location, Outbound, Receiver,
    Recipient, Router, Sharded,
};

#[test]
fn inline_run_and_manual_check_out_produce_the_same_log_step_by_step() {
    // One receiver, the same script: Router::run vs check_out/execute/check_in.
    let script = vec![
        note(1),
        Msg::Become("b"),
        schedule(ms(3), note(2)),
        send(2, note(3)),
        Msg::Panic,
        note(4),
        Msg::Stop,
        note(5),
    ];
    let logs: Vec<_> = [false, true]
        .into_iter()
        .map(|checked_out| {
            let mut h = Harness::new(Config::default().batch_size(2));
            for m in script.clone() {
                h.put(1, m);
            }
            let mut later = Vec::new();
            loop {
                while let Some(c) = h.poll() {
                    match c {
                        Command::Activate(a) => {
                            let id = *h.router.id(a).unwrap();
                            h.router.activate(a, h.rec.create(id)).unwrap();
                        }
                        Command::Run(a) | Command::Deactivate(a) if checked_out => {
                            later.push(h.router.check_out(a).unwrap());
                        }
                        Command::Run(a) | Command::Deactivate(a) => h.router.run(a, h.now).unwrap(),
                    }
                }
                if later.is_empty() {
                    break;
                }
                for job in later.drain(..).rev() {
                    let done = job.execute(h.now);
                    h.router.check_in(done, h.now).unwrap();
                }
            }
            h.advance_to(ms(3));
            h.close();
            (h.events(), h.dead(), h.stats())
        })
        .collect();
    assert_eq!(logs[0], logs[1]);
    assert_eq!(
        logs[0].2.activations, 4,
        "1 three times (after the panic, after the stop), 2 once"
    );
}

#[test]
fn placed_routers_exchange_messages_through_outbound_and_forward() {
    let shards = 2;
    let t0 = Instant::now();
    let rec = Recorder::default();
    let factory = rec.factory();
    let placement = Sharded::new(shards);
    let mut routers: Vec<Router<Id, Msg>> = (0..shards)
        .map(|i| Router::placed(Config::default(), i, Arc::new(placement)))
        .collect();
    let owner = |id: &Id| placement.shard_of(id) as usize;
    let (a, b) = {
        // Two IDs on different shards.
        let a: Id = 1;
        let b = (2..).find(|id| owner(id) != owner(&a)).unwrap();
        (a, b)
    };
    // Sent to the wrong shard: it goes out, not in.
    routers[owner(&b)].send(a, send(b, note(2))).unwrap();
    assert_eq!(routers[owner(&b)].stats().live, 0);
    assert_eq!(routers[owner(&b)].stats().messages_forwarded, 1);

    // A tiny executor: drive each router, then move outbound messages to their owners.
    let pump = |routers: &mut Vec<Router<Id, Msg>>| {
        loop {
            let mut moved = 0;
            for i in 0..routers.len() {
                while let Some(c) = routers[i].poll_command() {
                    routers[i].handle(c, &factory, t0).unwrap();
                }
                while let Some((location, outbound)) = routers[i].poll_outbound() {
                    let Location::Shard(dest) = location else {
                        unreachable!("routers here are placed on shards")
                    };
                    let dest = dest as usize;
                    let Outbound::Message(to, msg) = outbound else {
                        unreachable!("no timers here")
                    };
                    let expected = match &to {
                        Recipient::Id(id) => owner(id),
                        Recipient::Addr(addr) => addr.router() as usize,
                    };
                    assert_eq!(dest, expected, "placed where the placement says");
                    assert_ne!(dest, i, "a router forwards only what it does not own");
                    routers[dest].forward(to, msg);
                    moved += 1;
                }
            }
            if moved == 0 {
                break;
            }
        }
    };
    pump(&mut routers);
    assert_eq!(
        received(&rec.take()),
        vec![(a, send(b, note(2))), (b, note(2))]
    );
    assert!(routers[owner(&a)].addr(&a).is_some());
    assert!(routers[owner(&a)].addr(&b).is_none());

    // Handles carry their router: a handle to b sent from a's shard crosses over.
    let hb = routers[owner(&b)].addr(&b).unwrap();
    assert_eq!(hb.router() as usize, owner(&b));
    routers[owner(&a)]
        .send(a, Msg::SendTo(hb, Box::new(note(3))))
        .unwrap();
    pump(&mut routers);
    assert_eq!(received(&rec.take())[1], (b, note(3)));

    // Refusals after forwarding become dead letters on the receiving router.
    routers[owner(&b)].close();
    routers[owner(&a)].send(a, send(b, note(4))).unwrap();
    pump(&mut routers);
    let dead: Vec<_> = std::iter::from_fn(|| routers[owner(&b)].poll_dead_letter())
        .map(Dead::from)
        .collect();
    assert_eq!(
        dead,
        vec![Dead {
            to: Recipient::Id(b),
            msg: Some(note(4)),
            reason: hermes_core::DeadLetterReason::Closed,
        }]
    );
    let mut total = routers[0].stats();
    total += routers[1].stats();
    assert_eq!(total.messages_delivered, 5);
}

#[test]
fn driver_handles_commands_one_step_at_a_time() {
    let rec = Recorder::default();
    let mut driver = Driver::new(Config::default().idle_timeout(ms(5)), rec.factory());
    let t0 = Instant::now();
    driver.send(1, schedule(ms(2), note(2))).unwrap();
    assert!(matches!(driver.step(t0), Some(Command::Activate(_))));
    assert!(matches!(driver.step(t0), Some(Command::Run(_))));
    assert_eq!(driver.step(t0), None);
    assert_eq!(driver.poll_timeout(), Some(t0 + ms(2)));
    driver.run(t0 + ms(2));
    driver.run(t0 + ms(5));
    assert_eq!(driver.router().stats().live, 1, "idle since 2 ms, not 0 ms");
    driver.router_mut().send(1, note(3)).unwrap();
    driver.run(t0 + ms(7));
    assert_eq!(driver.router().stats().live, 1);
    driver.run(t0 + ms(12));
    assert_eq!(driver.router().stats().live, 0);
    let notes: Vec<_> = received(&rec.take()).into_iter().map(|(_, m)| m).collect();
    assert_eq!(notes[1..], [note(2), note(3)]);
}

/// A receiver as an app would write one: a counter that reports to a peer every third message
/// and sleeps after `Tick`.
struct Counter {
    count: u32,
    peer: Id,
}

impl Receiver<Id, Msg> for Counter {
    fn receive(&mut self, ctx: &mut Context<'_, Id, Msg>, msg: Msg) {
        match msg {
            Msg::Note(n) => {
                self.count += n;
                if self.count.is_multiple_of(3) {
                    ctx.send(self.peer, note(self.count));
                }
                if self.count > 10 {
                    ctx.set_idle_timeout(Duration::from_secs(1));
                    ctx.become_(|ctx: &mut Context<'_, Id, Msg>, _msg: Msg| ctx.stop());
                }
            }
            Msg::Stop => {
                let t = ctx.schedule_to(self.peer, Duration::from_secs(2), note(0));
                ctx.cancel(t);
                ctx.stop();
            }
            _ => {}
        }
    }

    fn activated(&mut self, ctx: &mut Context<'_, Id, Msg>) {
        ctx.schedule(Duration::from_secs(60), Msg::Stop);
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, Id, Msg>, why: Deactivation) {
        if why != Deactivation::Panicked {
            ctx.send(self.peer, note(self.count));
        }
    }
}

#[test]
fn probe_runs_one_receiver_alone_and_shows_its_effects() {
    let t0 = Instant::now();
    let mut probe = Probe::new(7, Counter { count: 0, peer: 9 }, t0);

    let out = probe.activate();
    assert_eq!(out.scheduled.len(), 1);
    let Scheduled { to, after, msg, .. } = &out.scheduled[0];
    assert_eq!((to, after, msg), (&7, &Duration::from_secs(60), &Msg::Stop));

    assert!(probe.deliver(note(1)).sent.is_empty());
    let out = probe.deliver(note(2));
    assert_eq!(out.sent, vec![(Recipient::Id(9), note(3))]);
    assert!(!out.became && !out.stopped && out.idle_timeout.is_none());

    probe.advance(Duration::from_secs(5));
    let out = probe.deliver(Msg::Stop);
    assert!(out.stopped);
    assert_eq!(
        out.scheduled[0].after,
        Duration::from_secs(2),
        "relative to the probe's clock"
    );
    assert_eq!(out.cancelled, vec![out.scheduled[0].id]);

    let out = probe.deliver(note(9)); // 12: over 10
    assert!(out.became);
    assert_eq!(out.sent, vec![(Recipient::Id(9), note(12))]);
    assert_eq!(out.idle_timeout, Some(Duration::from_secs(1)));
    assert!(probe.deliver(note(1)).stopped, "the new handler runs");

    // The new handler is a closure: it has no deactivated hook.
    assert!(probe.deactivate(Deactivation::IdleTimeout).sent.is_empty());

    let mut probe = Probe::new(7, Counter { count: 5, peer: 9 }, t0);
    let out = probe.deactivate(Deactivation::IdleTimeout);
    assert_eq!(out.sent, vec![(Recipient::Id(9), note(5))]);
    assert!(probe.deactivate(Deactivation::Panicked).sent.is_empty());
}

/// Any step is a valid one: `advance(Duration::MAX)` moves the probe's clock as far as an
/// `Instant` goes (it used to overflow), and timers then count from there.
#[test]
fn probe_advance_saturates() {
    let t0 = Instant::now();
    let timer = |ctx: &mut Context<'_, Id, Duration>, after: Duration| {
        let _ = ctx.now(); // the clock a receiver sees
        ctx.schedule(after, Duration::ZERO);
    };
    let mut probe = Probe::new(7, timer, t0);
    probe.advance(Duration::MAX);
    probe.advance(Duration::MAX);
    let out = probe.deliver(Duration::from_secs(1));
    assert!(
        [Duration::from_secs(1), Duration::MAX].contains(&out.scheduled[0].after),
        "a second later, or never if that is past what an Instant holds: {:?}",
        out.scheduled[0].after
    );
    let out = probe.deliver(Duration::MAX);
    assert_eq!(out.scheduled[0].after, Duration::MAX, "never");
}

/// A handler that panics (the test catching the panic) leaves nothing behind: the next
/// outcome shows only what the next message did, as a router drops a panicking handler's
/// effects. (It used to report the panicked handler's sends, timers and stop too.)
#[test]
fn probe_drops_what_a_panicking_handler_recorded() {
    let handler = |ctx: &mut Context<'_, Id, u32>, n: u32| {
        ctx.send(9, n);
        ctx.schedule(Duration::from_secs(1), n);
        if n == 0 {
            ctx.stop();
            panic!("zero");
        }
    };
    let mut probe = Probe::new(7, handler, Instant::now());
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| probe.deliver(0)));
    assert!(caught.is_err(), "the panic reaches the test");
    let out = probe.deliver(1);
    assert_eq!(out.sent, vec![(Recipient::Id(9), 1)]);
    assert_eq!(out.scheduled.len(), 1);
    assert_eq!(out.scheduled[0].msg, 1);
    assert!(!out.stopped);
}

#[test]
fn the_same_receiver_behaves_the_same_in_a_router() {
    let factory = |id: &Id| {
        if *id == 7 {
            Activation::ready(Counter { count: 0, peer: 9 })
        } else {
            Activation::ready(|_: &mut Context<'_, Id, Msg>, _: Msg| {})
        }
    };
    let mut driver = Driver::new(Config::default(), factory);
    let t0 = Instant::now();
    for n in [1, 2, 9, 1] {
        driver.send(7, note(n)).unwrap();
    }
    driver.run(t0);
    // 7 reported 3 and 12 to 9; its new handler (a closure, with no hooks) stopped it.
    let s = driver.router().stats();
    assert_eq!(
        (s.activations, s.deactivations, s.messages_delivered),
        (2, 1, 6)
    );
    assert_eq!(s.timers_pending, 1, "7's one-minute Stop timer is pending");
}

/// The handles of receivers `ids`, activated and idle.
fn idle_receivers(h: &mut Harness, ids: &[Id]) -> Vec<hermes_core::Addr> {
    for &id in ids {
        h.put(id, note(0));
    }
    h.settle();
    ids.iter().map(|id| h.router.addr(id).unwrap()).collect()
}

#[test]
fn a_receiver_woken_by_a_run_runs_next() {
    let mut h = Harness::new(Config::default());
    let a = idle_receivers(&mut h, &[1, 2, 3, 4]);
    // 1 wakes 2, then 3; 4 was queued before either.
    h.put(1, Msg::All(vec![send(2, note(1)), send(3, note(2))]));
    h.put(4, note(3));
    let mut order = Vec::new();
    while let Some(command) = h.poll() {
        order.push(command);
        h.router.run(command.addr(), h.now).unwrap();
    }
    // The first receiver a run wakes goes ahead of what was queued; the others queue.
    assert_eq!(
        order,
        [a[0], a[1], a[3], a[2]].map(Command::Run),
        "1, then 2 (woken by 1), then 4 (queued before), then 3 (woken by 1 too)"
    );
    assert_eq!(h.received().len(), 4 + 4);
}

#[test]
fn runs_next_at_most_next_runs_times_in_a_row_while_others_wait() {
    let mut h = Harness::new(Config::default());
    let a = idle_receivers(&mut h, &[1, 2, 3]);
    // Ping-pong between 1 and 2, ten hops; 3 queued behind its start.
    let mut ping = note(99);
    for hop in 0..10 {
        ping = send(if hop % 2 == 0 { 1 } else { 2 }, ping);
    }
    h.put(1, ping);
    h.put(3, note(1));
    let mut order = Vec::new();
    while let Some(command) = h.poll() {
        order.push(command.addr());
        h.router.run(command.addr(), h.now).unwrap();
    }
    let next = Router::<Id, Msg>::NEXT_RUNS as usize;
    let three = order.iter().position(|&x| x == a[2]).unwrap();
    assert_eq!(
        three,
        1 + next,
        "3 waited for the pair's first run and {next} runs next"
    );
    assert!(order[..three].iter().all(|&x| x == a[0] || x == a[1]));
    assert_eq!(order.len(), 12, "eleven runs of the pair, one of 3");
}
