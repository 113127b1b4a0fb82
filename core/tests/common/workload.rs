//! A scripted pseudo-random workload, its invariant checks, and a comparison of two runs.
//!
//! Every message is `All([Note(n), action])` with a unique `n`, so each message can be followed
//! from its send to its delivery or dead letter. Outside messages may carry any action;
//! messages sent by receivers only send or schedule further notes, so receivers' lifecycles
//! (stop, panic, become, idle overrides) depend only on outside input and time.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use hermes_core::{Addr, Config, Deactivation, DeadLetterReason, SendError, Stats};

use super::{Dead, Event, Harness, Id, Mode, Msg, Plan, Rng, ms};

/// Ready receivers; 17 is refused, 18 fails to load, 19 panics in its `activated` hook.
const READY: u64 = 17;
const REFUSED: Id = 17;
const FAILING: Id = 18;
const PANICS_ON_ACTIVATE: Id = 19;

/// What to run.
#[derive(Clone, Debug)]
pub struct Workload {
    pub seed: u64,
    pub steps: usize,
    /// Include sends by handle. Handles name slots, and slot numbers depend on the order of
    /// activations, so runs in different modes are comparable only without them.
    pub handles: bool,
    pub config: Config,
}

impl Workload {
    pub fn new(seed: u64) -> Self {
        Workload {
            seed,
            steps: 400,
            handles: false,
            config: Config::default().idle_timeout(ms(4)).batch_size(3),
        }
    }
}

/// Who sent a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Sender {
    Outside,
    Receiver(Id),
}

/// What a run produced.
pub struct Outcome {
    pub events: Vec<(Instant, Event)>,
    pub dead: Vec<Dead>,
    pub stats: Stats,
    /// Outside messages the router accepted, in send order.
    pub accepted: Vec<(Id, Msg)>,
    /// Notes of messages sent by handle, and the ID the handle was issued for.
    pub handle_targets: HashMap<u32, Id>,
    pub config: Config,
    pub t0: Instant,
    /// After close completed, sends were refused with `Closed`.
    pub refused_after_close: bool,
}

/// The unique note that names a workload message.
pub fn name(msg: &Msg) -> u32 {
    match msg {
        Msg::All(steps) => match steps.first() {
            Some(Msg::Note(n)) => *n,
            _ => panic!("not a workload message: {msg:?}"),
        },
        _ => panic!("not a workload message: {msg:?}"),
    }
}

/// Where a message a receiver sent goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    Id(Id),
    Handle(Addr),
}

/// A message a receiver sent or scheduled while handling `parent`.
pub struct Child {
    pub to: To,
    /// For timers: the delay.
    pub after: Option<Duration>,
    pub msg: Msg,
}

/// The messages `parent`, handled by `me`, sends or schedules.
pub fn children(me: Id, parent: &Msg) -> Vec<Child> {
    let Msg::All(steps) = parent else {
        return Vec::new();
    };
    steps
        .iter()
        .filter_map(|step| {
            let (to, after, msg) = match step {
                Msg::Send(to, m) => (To::Id(*to), None, m),
                Msg::SendTo(a, m) => (To::Handle(*a), None, m),
                Msg::Schedule(d, m) => (To::Id(me), Some(*d), m),
                Msg::ScheduleTo(to, d, m) => (To::Id(*to), Some(*d), m),
                _ => return None,
            };
            Some(Child {
                to,
                after,
                msg: (**msg).clone(),
            })
        })
        .collect()
}

struct Generator {
    rng: Rng,
    next_note: u32,
}

impl Generator {
    fn note(&mut self) -> u32 {
        self.next_note += 1;
        self.next_note
    }

    fn delay(&mut self) -> Duration {
        ms(self.rng.below(8))
    }

    /// A target for a receiver's send: any ready, refused or failing ID.
    fn inner_target(&mut self) -> Id {
        self.rng.below(READY + 2) as Id
    }

    /// A message a receiver sends: a note that may send or schedule one more note.
    fn inner(&mut self, depth: u32) -> Msg {
        let n = self.note();
        let action = if depth == 0 {
            None
        } else {
            match self.rng.below(4) {
                0 => Some(Msg::Send(
                    self.inner_target(),
                    Box::new(self.inner(depth - 1)),
                )),
                1 => Some(Msg::Schedule(self.delay(), Box::new(self.inner(depth - 1)))),
                _ => None,
            }
        };
        Msg::All(std::iter::once(Msg::Note(n)).chain(action).collect())
    }

    fn outside(&mut self, handle: Option<Addr>) -> Msg {
        let n = self.note();
        let action = match self.rng.below(40) {
            0..=7 => Msg::Send(self.inner_target(), Box::new(self.inner(1))),
            8..=11 => Msg::Schedule(self.delay(), Box::new(self.inner(1))),
            12..=14 => Msg::ScheduleTo(self.inner_target(), self.delay(), Box::new(self.inner(1))),
            15..=16 => Msg::Become(if self.rng.below(2) == 0 { "a" } else { "b" }),
            17..=19 => Msg::Stop,
            20 => Msg::Panic,
            21 => Msg::SetIdle(ms(1 + self.rng.below(8))),
            22..=25 => match handle {
                Some(a) => Msg::SendTo(a, Box::new(self.inner(0))),
                None => Msg::Note(0),
            },
            _ => Msg::Note(0),
        };
        Msg::All(vec![Msg::Note(n), action])
    }
}

/// Runs `w` in `mode`.
pub fn run(w: &Workload, mode: Mode) -> Outcome {
    let mut h = Harness::with_mode(w.config.clone(), mode);
    h.rec.plan(REFUSED, Plan::Refuse);
    h.rec.plan(FAILING, Plan::Fail);
    h.rec.plan(PANICS_ON_ACTIVATE, Plan::PanicOnActivate);
    let mut g = Generator {
        rng: Rng::new(w.seed),
        next_note: 0,
    };
    let mut accepted = Vec::new();
    let mut handles: HashMap<Id, Addr> = HashMap::new();
    let mut handle_targets = HashMap::new();
    let mut events = Vec::new();
    for _ in 0..w.steps {
        match g.rng.below(12) {
            0..=7 => {
                let to = match g.rng.below(40) {
                    0 => PANICS_ON_ACTIVATE,
                    n => (n % (READY + 2)) as Id,
                };
                let handle = if w.handles {
                    let target = g.rng.below(READY) as Id;
                    if let Some(a) = h.router.addr(&target) {
                        handles.insert(target, a);
                    }
                    // Maybe stale by the time it is used: that is the point.
                    handles.get(&target).map(|a| (target, *a))
                } else {
                    None
                };
                let msg = g.outside(handle.map(|(_, a)| a));
                if let (Some((target, _)), Some(Msg::SendTo(_, inner))) = (handle, msg_action(&msg))
                {
                    handle_targets.insert(name(inner), target);
                }
                match h.send(to, msg.clone()) {
                    Ok(()) => accepted.push((to, msg)),
                    Err(SendError::Full(_)) => {}
                    Err(e) => panic!("unexpected {e:?}"),
                }
            }
            8..=9 => h.settle(),
            _ => {
                let by = ms(g.rng.below(4));
                h.advance(by);
            }
        }
        events.extend(h.rec.take_timed());
    }
    h.settle();
    h.advance(ms(1));
    h.close();
    h.advance(ms(100)); // nothing may fire after close
    events.extend(h.rec.take_timed());
    let refused_after_close = matches!(h.send(0, Msg::Note(0)), Err(SendError::Closed(_)));
    Outcome {
        events,
        dead: h.dead(),
        stats: h.stats(),
        accepted,
        handle_targets,
        config: w.config.clone(),
        t0: h.t0,
        refused_after_close,
    }
}

fn msg_action(msg: &Msg) -> Option<&Msg> {
    match msg {
        Msg::All(steps) => steps.get(1),
        _ => None,
    }
}

fn has_panic(msg: &Msg) -> bool {
    matches!(msg_action(msg), Some(Msg::Panic))
}

/// Checks the eight invariants of DESIGN.md (those a run can show) on `o`.
pub fn check_invariants(o: &Outcome) {
    let received: Vec<(Instant, Id, u32, &Msg)> = o
        .events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::Received {
                id, instance, msg, ..
            } => Some((*t, *id, *instance, msg)),
            _ => None,
        })
        .collect();

    // What was emitted: outside messages accepted, and the children of every message handled
    // (a handled message's effects were applied; a panicking one's were rolled back).
    struct Emitted {
        from: Sender,
        to: To,
        deadline: Option<Instant>,
        panics: bool,
    }
    let mut emitted: BTreeMap<u32, Emitted> = BTreeMap::new();
    // Per (sender, receiver): the notes in send order.
    let mut sent_order: HashMap<(Sender, Id), Vec<u32>> = HashMap::new();
    for (to, msg) in &o.accepted {
        let n = name(msg);
        emitted.insert(
            n,
            Emitted {
                from: Sender::Outside,
                to: To::Id(*to),
                deadline: None,
                panics: has_panic(msg),
            },
        );
        sent_order
            .entry((Sender::Outside, *to))
            .or_default()
            .push(n);
    }
    for (t, id, _, msg) in &received {
        for child in children(*id, msg) {
            let n = name(&child.msg);
            let previous = emitted.insert(
                n,
                Emitted {
                    from: Sender::Receiver(*id),
                    to: child.to,
                    deadline: child.after.map(|d| *t + d),
                    panics: false,
                },
            );
            assert!(previous.is_none(), "note {n} emitted twice");
            if let (None, To::Id(to)) = (child.after, child.to) {
                sent_order
                    .entry((Sender::Receiver(*id), to))
                    .or_default()
                    .push(n);
            }
        }
    }

    // 1. Every accepted message is delivered exactly once or reported exactly once.
    let mut fates: HashMap<u32, u32> = HashMap::new();
    for (_, _, _, msg) in &received {
        *fates.entry(name(msg)).or_default() += 1;
    }
    for d in &o.dead {
        if let Some(msg) = &d.msg {
            *fates.entry(name(msg)).or_default() += 1;
        }
    }
    let panicked = o
        .dead
        .iter()
        .filter(|d| matches!(d.reason, DeadLetterReason::Panicked(_)))
        .count();
    assert!(
        o.dead
            .iter()
            .all(|d| d.msg.is_some() || matches!(d.reason, DeadLetterReason::Panicked(_)))
    );
    let mut panics_unaccounted = 0;
    for (n, e) in &emitted {
        let fate = fates.remove(n).unwrap_or(0);
        if e.panics {
            assert!(fate <= 1, "panicking note {n} reported {fate} times");
            panics_unaccounted += 1 - fate as usize;
        } else {
            assert_eq!(fate, 1, "note {n} delivered or reported {fate} times");
        }
    }
    assert_eq!(
        panics_unaccounted, panicked,
        "each handler panic is one dead letter"
    );
    assert!(fates.is_empty(), "delivered but never sent: {fates:?}");
    assert_eq!(o.stats.dead_letters, o.dead.len() as u64);
    assert_eq!(o.stats.messages_delivered, received.len() as u64);

    // 2. Messages from one sender to one receiver arrive in send order.
    let mut arrived: HashMap<(Sender, Id), Vec<u32>> = HashMap::new();
    for (_, id, _, msg) in &received {
        let n = name(msg);
        let e = &emitted[&n];
        if e.deadline.is_none() && matches!(e.to, To::Id(_)) {
            arrived.entry((e.from, *id)).or_default().push(n);
        }
    }
    for (key, got) in &arrived {
        let sent = &sent_order[key];
        let mut i = 0;
        for n in got {
            while sent.get(i) != Some(n) {
                i += 1;
                assert!(
                    i < sent.len(),
                    "{key:?}: {n} out of send order: {got:?} vs {sent:?}"
                );
            }
        }
    }

    // 3. One instance at a time per ID, hooks bracket its messages; and
    // 4./6. each instance is deactivated at most once, only after its idle timeout (for idle
    // deactivations), and every instance exactly once by the end (close).
    let mut current: HashMap<Id, (u32, bool)> = HashMap::new(); // instance, still live
    let mut last_activity: HashMap<(Id, u32), Instant> = HashMap::new();
    let mut idle_override: HashMap<(Id, u32), Duration> = HashMap::new();
    let mut deactivated: HashMap<(Id, u32), u32> = HashMap::new();
    for (t, e) in &o.events {
        match e {
            Event::Activated { id, instance } => {
                if let Some((prev, live)) = current.get(id) {
                    assert!(
                        !live,
                        "{id}: instance {instance} activated while {prev} is live"
                    );
                    assert!(instance > prev);
                }
                current.insert(*id, (*instance, true));
                last_activity.insert((*id, *instance), *t);
            }
            Event::Received {
                id, instance, msg, ..
            } => {
                assert_eq!(
                    current.get(id),
                    Some(&(*instance, true)),
                    "{id} got {msg:?}"
                );
                last_activity.insert((*id, *instance), *t);
                if let Some(Msg::SetIdle(d)) = msg_action(msg) {
                    idle_override.insert((*id, *instance), *d);
                }
            }
            Event::Scheduled { .. } => {}
            Event::Deactivated { id, instance, why } => {
                assert_eq!(current.get(id), Some(&(*instance, true)));
                current.insert(*id, (*instance, false));
                *deactivated.entry((*id, *instance)).or_default() += 1;
                if *why == Deactivation::IdleTimeout {
                    let timeout = idle_override
                        .get(&(*id, *instance))
                        .copied()
                        .unwrap_or(o.config.get_idle_timeout());
                    let idle_for = *t - last_activity[&(*id, *instance)];
                    assert!(
                        idle_for >= timeout,
                        "{id}/{instance} idle {idle_for:?} < {timeout:?}"
                    );
                }
            }
        }
    }
    assert_eq!(
        last_activity.len(),
        deactivated.len(),
        "every instance deactivated"
    );
    assert!(deactivated.values().all(|&n| n == 1), "never twice");
    assert_eq!(o.stats.deactivations, deactivated.len() as u64);
    assert!(o.refused_after_close);
    assert_eq!((o.stats.live, o.stats.timers_pending), (0, 0));

    // 5. Timers never fire before their deadline (once: by 1 above).
    for (t, _, _, msg) in &received {
        if let Some(deadline) = emitted[&name(msg)].deadline {
            assert!(*t >= deadline, "timer fired {:?} early", deadline - *t);
        }
    }

    // 7. Stale handles never reach another receiver.
    for (_, id, _, msg) in &received {
        if let Some(target) = o.handle_targets.get(&name(msg)) {
            assert_eq!(id, target, "a handle for {target} reached {id}");
        }
    }

    // 8. Work is scheduled only for receivers with messages: checked at every check-out by
    // the harness; and nothing is left scheduled or running.
    assert_eq!((o.stats.scheduled, o.stats.running), (0, 0));
}

/// A run's observable results, keyed so that two correct runs of the same input compare
/// equal even when their drivers interleaved receivers differently.
#[derive(Debug, PartialEq)]
pub struct Summary {
    /// Per ID: lifecycle hooks in order, with times.
    pub lifecycle: BTreeMap<Id, Vec<(Duration, String)>>,
    /// Per ID: the timers it scheduled (time, note), sorted.
    pub scheduled: BTreeMap<Id, Vec<(Duration, u32)>>,
    /// Per (sender, receiver): the notes received, in order.
    pub order: BTreeMap<(Sender, Id), Vec<u32>>,
    /// Per ID: every delivery (time, instance, handler, message), sorted.
    pub deliveries: BTreeMap<Id, Vec<(Duration, u32, &'static str, u32)>>,
    /// Dead letters, sorted.
    pub dead: Vec<String>,
    pub stats: Stats,
}

/// Summarises `o` for comparison with a run in another mode.
pub fn summary(o: &Outcome) -> Summary {
    let mut from: HashMap<u32, Sender> = HashMap::new();
    for (_, msg) in &o.accepted {
        from.insert(name(msg), Sender::Outside);
    }
    let mut s = Summary {
        lifecycle: BTreeMap::new(),
        scheduled: BTreeMap::new(),
        order: BTreeMap::new(),
        deliveries: BTreeMap::new(),
        dead: o
            .dead
            .iter()
            .map(|d| format!("{:?} {:?} {}", d.to, d.msg, d.reason))
            .collect(),
        stats: o.stats,
    };
    s.dead.sort();
    for (t, e) in &o.events {
        let at = *t - o.t0;
        match e {
            Event::Received {
                id,
                instance,
                handler,
                msg,
            } => {
                let n = name(msg);
                for child in children(*id, msg) {
                    if child.after.is_none() {
                        from.insert(name(&child.msg), Sender::Receiver(*id));
                    }
                }
                if let Some(sender) = from.get(&n) {
                    s.order.entry((*sender, *id)).or_default().push(n);
                }
                s.deliveries
                    .entry(*id)
                    .or_default()
                    .push((at, *instance, handler, n));
            }
            Event::Scheduled { id, msg, .. } => {
                s.scheduled.entry(*id).or_default().push((at, name(msg)));
            }
            Event::Activated { id, .. } | Event::Deactivated { id, .. } => s
                .lifecycle
                .entry(*id)
                .or_default()
                .push((at, format!("{e:?}"))),
        }
    }
    s.deliveries.values_mut().for_each(|v| v.sort());
    s.scheduled.values_mut().for_each(|v| v.sort());
    s
}
