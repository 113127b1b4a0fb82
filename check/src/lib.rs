//! An operation-sequence model checker for the Hermes [`Router`].
//!
//! A [`Plan`], decoded from arbitrary bytes (a fuzzer's input) or from a seed, is a sequence of
//! operations on a world of one or two routers: outside sends by ID and by handle (live or
//! stale), timers scheduled and cancelled, time moving on, close, and a driver that handles the
//! routers' commands in every order an executor may: inline, or checked out and checked back in
//! later, interleaved across receivers, out of order. Receivers are scripted: every message names
//! a script (send, relay, schedule, cancel, become, stop, panic, set the idle timeout, spawn work,
//! ask a receiver, answer or keep a request's reply, answer a kept one) and the receiver records
//! what it did. A few IDs are special: the factory refuses one and fails on another, and now and
//! then it panics (caught by `Router::handle`, or by a driver calling it itself). The
//! configuration varies too: idle timeouts, mailbox bounds, batch sizes, small drain limits, tiny
//! dead-letter capacities.
//!
//! Kinds: most plans split the IDs into three [`kinds`] (`Router::use_kinds`, with a table made by
//! `hermes_core::Kinds`), each with its own idle timeout, mailbox capacity and batch size or the
//! router's; the scripts' sends and asks go between kinds as freely as within one.
//!
//! Tasks: work a receiver spawns is ready at once or waits on a gate the plan answers or drops;
//! an ask's request carries a reply the asked receiver answers, keeps for later or drops. The
//! driver takes tasks from the routers (`poll_task`), polls their futures in any order, late or
//! never, gives outcomes back (`complete`, late ones after their task was aborted too, and now
//! and then to the wrong router, which must refuse them), and moves time past asks' deadlines.
//! The checker predicts what every poll yields (the answer, `Timeout`, `Dropped`, `None` once
//! aborted, or pending, and then that the waker was woken before it is ready), where every
//! outcome goes (the instance that started the work, ahead of the messages waiting for it, or a
//! `Stale` dead letter, never a next instance), that a receiver waiting for its tasks is not deactivated for idleness, and that every
//! future is dropped exactly when it must be: with the handler that panicked, with the
//! `deactivated` hook that started it, or with its instance when that is deactivated.
//!
//! Delays and idle timeouts reach the edges of time (`Duration::MAX`: never). A relay passes its
//! own message on; on a router closing under a small drain limit it does so forever, so that only
//! the limit ends closing. A cancel may name a timer the other router holds.
//!
//! After every router call the checker compares the router's outputs (commands, dead letters,
//! messages and timer cancellations for the other router, tasks, stats) with a naive reference
//! model, and checks the eight routing invariants of
//! [hermes_core's crate docs](hermes_core#invariants) against a ledger of every message (each
//! carries a unique sequence number; a task's outcome is numbered when the task starts, and is
//! in the ledger once given back). A plan with a tiny dead-letter capacity polls dead letters only
//! on `handle_timeout`, and checks the ones dropped meanwhile by their count. At the end it
//! drains everything (or closes while work is still queued and out), closes, and checks that
//! every accepted message (outcomes included) was delivered or reported exactly once, every
//! instance deactivated exactly once, no task is left in flight or its future alive, and every
//! reply was answered or dropped. A broken rule is a [`Violation`] naming its [`Invariant`].
//!
//! ```
//! let summary = hermes_check::check(&hermes_check::Plan::from_seed(7)).expect("no violation");
//! assert!(summary.steps > 0);
//! ```
//!
//! This is the one oracle of the routing invariants; hermes-core's own tests are targeted ones.
//! It runs three ways: as seeded tests in `cargo test` (`check/tests/seeds.rs`, the router's
//! random workloads), under `cargo fuzz run router` (`fuzz/`), and against routers with
//! deliberate bugs switched on, to show it catches them (`check/tests/faults.rs`).

pub mod kinds;
mod model;
mod plan;
mod script;
mod violation;
mod world;

use std::ops::AddAssign;
use std::sync::Once;

use hermes_core::Router;

pub use kinds::KINDS;
pub use plan::Plan;
pub use script::{Id, Msg};
pub use violation::{Invariant, Violation};

use world::World;

/// Changes every router of the world before a run, e.g. to switch on a deliberate bug.
pub type Tweak = dyn Fn(&mut Router<Id, Msg>) + Send + Sync;

/// What one run (or many, added up) exercised.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Operations performed.
    pub steps: u64,
    /// Messages accepted (from outside, receivers and timers).
    pub messages: u64,
    /// Messages handled by a receiver.
    pub delivered: u64,
    /// Messages reported as dead letters.
    pub dead_letters: u64,
    /// Dead letters a router dropped (and counted) because the driver had not polled the ones
    /// before them.
    pub dead_letters_dropped: u64,
    /// Outside sends and timers the router refused (closed, full, stale).
    pub refused: u64,
    /// Messages moved between the two routers.
    pub forwarded: u64,
    /// Pending timers cancelled by a receiver on the other router (the cancellation went out
    /// through `Outbound::Cancel` and reached the router holding the timer).
    pub remote_cancels: u64,
    /// Timers that fired.
    pub timers_fired: u64,
    /// Timers scheduled with a delay past the end of representable time: never due.
    pub timers_never: u64,
    /// Receivers that set an idle timeout of about 49.7 days or more: never idle.
    pub never_idle: u64,
    /// Instances the factory made.
    pub activations: u64,
    /// Instances deactivated.
    pub deactivations: u64,
    /// Handlers (or activated hooks) that panicked.
    pub panics: u64,
    /// Factories that panicked (caught by `Router::handle`, or by the driver that called them).
    pub factory_panics: u64,
    /// Handlers replaced with `become_` (and kept: not rolled back by a panic).
    pub becomes: u64,
    /// Receivers that stopped themselves.
    pub stops: u64,
    /// Receivers deactivated for being idle.
    pub idle_deactivations: u64,
    /// Messages accepted that were addressed by handle.
    pub by_handle: u64,
    /// Messages refused or reported because a mailbox was full.
    pub full: u64,
    /// Messages refused or reported because their handle was stale.
    pub stale: u64,
    /// Routers closed.
    pub closes: u64,
    /// Messages reported because a closing router had delivered its drain limit.
    pub drain_limited: u64,
    /// Driver mistakes the router refused.
    pub misuses: u64,
    /// The most receivers live on one router at once.
    pub max_live: usize,
    /// Messages delivered from a receiver of one kind to a receiver of another (plans with
    /// kinds).
    pub cross_kind: u64,
    /// Of those, asks' requests: asks between receivers of different kinds.
    pub cross_kind_asks: u64,
    /// Tasks receivers started (spawned work and asks), registered by their router.
    pub tasks: u64,
    /// Asks receivers made (their requests sent).
    pub asks: u64,
    /// Asks whose future yielded the answer.
    pub answers: u64,
    /// Asks whose future yielded `Timeout`: the router expired them at their deadline.
    pub timeouts: u64,
    /// Tasks whose future yielded `Dropped`: the gate or reply was dropped unanswered.
    pub unanswered: u64,
    /// Asks the router expired at their deadline (whether or not anyone polled them then).
    pub expired: u64,
    /// Tasks aborted with their instance, their future dropped unfinished.
    pub aborted: u64,
    /// Outcomes given back after their task was aborted (`Stale` dead letters).
    pub late_outcomes: u64,
    /// Outcomes delivered to the instance that started the work.
    pub outcomes: u64,
    /// Outcomes queued ahead of other messages already waiting for their receiver.
    pub outcomes_ahead: u64,
    /// Outcomes given back while their task was still registered, but never handled: their
    /// instance was deactivated first (the outcome came while its deactivation was under way,
    /// or was still queued when it stopped or panicked). `Stale` dead letters.
    pub stale_outcomes: u64,
    /// Outcomes given to the router that did not start the task (a driver mistake the router
    /// refuses: `Stale` dead letters).
    pub stray_outcomes: u64,
    /// Tasks found ready after a pending poll, their waker woken (by the answer, the gate, the
    /// router's expiry or abort).
    pub wakeups: u64,
    /// Receivers idle past their idle timeout but kept live, waiting for their tasks.
    pub spared: u64,
    /// Slots of a kind with its own idle timeout reactivated after an instance that set its
    /// own: the next instance starts from the kind's timeout again.
    pub kind_idle_restored: u64,
}

impl AddAssign for Summary {
    fn add_assign(&mut self, o: Summary) {
        self.steps += o.steps;
        self.messages += o.messages;
        self.delivered += o.delivered;
        self.dead_letters += o.dead_letters;
        self.dead_letters_dropped += o.dead_letters_dropped;
        self.refused += o.refused;
        self.forwarded += o.forwarded;
        self.remote_cancels += o.remote_cancels;
        self.timers_fired += o.timers_fired;
        self.timers_never += o.timers_never;
        self.never_idle += o.never_idle;
        self.activations += o.activations;
        self.deactivations += o.deactivations;
        self.panics += o.panics;
        self.factory_panics += o.factory_panics;
        self.becomes += o.becomes;
        self.stops += o.stops;
        self.idle_deactivations += o.idle_deactivations;
        self.by_handle += o.by_handle;
        self.full += o.full;
        self.stale += o.stale;
        self.closes += o.closes;
        self.drain_limited += o.drain_limited;
        self.misuses += o.misuses;
        self.max_live = self.max_live.max(o.max_live);
        self.cross_kind += o.cross_kind;
        self.cross_kind_asks += o.cross_kind_asks;
        self.tasks += o.tasks;
        self.asks += o.asks;
        self.answers += o.answers;
        self.timeouts += o.timeouts;
        self.unanswered += o.unanswered;
        self.expired += o.expired;
        self.aborted += o.aborted;
        self.late_outcomes += o.late_outcomes;
        self.outcomes += o.outcomes;
        self.outcomes_ahead += o.outcomes_ahead;
        self.stale_outcomes += o.stale_outcomes;
        self.stray_outcomes += o.stray_outcomes;
        self.wakeups += o.wakeups;
        self.spared += o.spared;
        self.kind_idle_restored += o.kind_idle_restored;
    }
}

/// Runs plans against routers, optionally changed by a [`Tweak`].
#[derive(Default)]
pub struct Checker {
    tweak: Option<Box<Tweak>>,
}

impl Checker {
    /// A checker for routers as they are.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Applies `tweak` to every router before each run (the fault-injection tests switch a
    /// deliberate bug on here).
    pub fn tweak_routers(
        mut self,
        tweak: impl Fn(&mut Router<Id, Msg>) + Send + Sync + 'static,
    ) -> Checker {
        self.tweak = Some(Box::new(tweak));
        self
    }

    /// Runs `plan`, checking every invariant after every step; the first violation, if any.
    pub fn check(&self, plan: &Plan) -> Result<Summary, Violation> {
        quiet_scripted_panics();
        let mut world = World::new(plan, self.tweak.as_deref());
        for (step, op) in plan.ops.iter().enumerate() {
            if let Err(b) = world.step(*op) {
                return Err(violation(b, Some(step), plan, &world));
            }
        }
        match world.finish() {
            Ok(()) => Ok(world.summary),
            Err(b) => Err(violation(b, None, plan, &world)),
        }
    }
}

/// Runs `plan` against unchanged routers; see [`Checker::check`].
pub fn check(plan: &Plan) -> Result<Summary, Violation> {
    Checker::new().check(plan)
}

/// Decodes `data` into a plan and runs it: the fuzz target's whole body.
pub fn check_bytes(data: &[u8]) -> Result<Summary, Violation> {
    check(&Plan::from_bytes(data))
}

/// Runs the plan of one seed; the same seed always runs the same plan.
pub fn check_seed(seed: u64) -> Result<Summary, Violation> {
    check(&Plan::from_seed(seed))
}

/// How many operations a violation report lists.
const HISTORY: usize = 24;

fn violation(b: violation::Broken, step: Option<usize>, plan: &Plan, world: &World) -> Violation {
    let end = step.map_or(plan.ops.len(), |s| s + 1);
    let mut history: Vec<String> = plan.ops[end.saturating_sub(HISTORY)..end]
        .iter()
        .enumerate()
        .map(|(k, op)| format!("{:>4}: {op:?}", end.saturating_sub(HISTORY) + k))
        .collect();
    if step.is_none() {
        history.push("then: the final drain and close".to_string());
    }
    Violation {
        invariant: b.invariant,
        detail: format!("{}\nstate:\n{}", b.detail, world.describe()),
        step,
        history,
    }
}

/// Installs, once per process, a panic hook that keeps the scripted receivers' deliberate panics
/// quiet and passes every other panic to the hook that was there before.
fn quiet_scripted_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&script::SCRIPTED_PANIC) {
                previous(info);
            }
        }));
    });
}
