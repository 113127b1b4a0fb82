//! The reference model: a deliberately naive re-statement of what one router must do, in terms of
//! message sequence numbers. It predicts every output of every router call (commands, dead
//! letters, messages for other routers, counters), and the world compares.
//!
//! What it assumes beyond the invariants, all documented router behaviour: a mailbox is FIFO; a
//! `Run` checks out `min(queued, batch_size)` messages; unhandled messages go back to the front;
//! a job's sends are routed before its timer operations; timers due in one `handle_timeout` fire
//! in deadline order, ties in scheduling order; a delay or idle timeout past the end of
//! representable time means never, and a receiver's own idle timeout is kept in whole
//! milliseconds, 2^32 - 2 or more meaning never. Closing: the drain limit counts the messages
//! each run handled, when the run ends (after its sends are routed); on reaching it, every queued
//! message becomes a `DrainLimit` dead letter, and so does everything routed afterwards, and a
//! run or deactivation ending afterwards drops whatever it left queued. One thing it leaves open:
//! when a receiver's idle deadline and a timer message for it fall due at the same instant, either
//! may come first, and the model follows the router's choice.
//!
//! Kinds: a slot takes its kind's settings (see [`kinds`](crate::kinds)): its mailbox capacity
//! and batch size, and its kind's idle timeout (kept in whole milliseconds, as a receiver's own)
//! until an instance sets its own; the next instance in the slot starts from the kind's again.
//!
//! Tasks: a run's tasks are registered when it ends, in the order the receiver started them,
//! before its sends are routed, and handed out in that order. An ask's deadline is a router
//! timer: at it, a task still registered is expired (its future then answers `Timeout`, unless
//! its reply was answered or dropped first: the world tells which came first); closing drops the deadlines of the tasks registered so far. `complete` routes the outcome to the
//! task's instance by handle, as if sent from it, or makes it a `Stale` dead letter if the task
//! is no longer registered. A receiver with tasks registered goes idle without an idle deadline;
//! when its last task is completed, the outcome makes it run again, and its idle time counts
//! from the end of that run. A deactivation drops the tasks its hook started, then (after the
//! hook's sends) aborts every task of the instance.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use hermes_core::{Addr, Command, Config, Deactivation, Recipient, Settings, Stats, TimerId};

use crate::kinds::kind_of;
use crate::script::{Event, Id, Seq, is_head};
use crate::violation::{Checked, broken, ensure};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MState {
    Activating,
    Idle,
    Scheduled,
    Running,
    /// `out`: the hook job is checked out.
    Deactivating {
        why: Deactivation,
        out: bool,
    },
}

/// One instance the factory made for a slot.
#[derive(Clone, Debug)]
pub(crate) struct Inst {
    pub(crate) n: u32,
    pub(crate) version: u32,
    /// The `activated` hook has not run yet.
    pub(crate) fresh: bool,
    /// Its own idle timeout, if it set one, as the router keeps it ([`NEVER`]: never idle).
    pub(crate) idle: Option<Duration>,
}

#[derive(Clone, Debug)]
pub(crate) struct SlotM {
    pub(crate) id: Id,
    /// `None` until the router's `Activate` command for the new slot shows it.
    pub(crate) addr: Option<Addr>,
    pub(crate) state: MState,
    pub(crate) mailbox: VecDeque<Seq>,
    /// How many messages at the front of `mailbox` are task outcomes, for the instance in the
    /// slot only.
    pub(crate) outcomes: usize,
    pub(crate) inst: Option<Inst>,
    pub(crate) idle_since: Duration,
}

/// The deadline of a timer that never fires, and the idle deadline of a receiver never
/// deactivated for idleness: later than any time the world reaches.
pub(crate) const NEVER: Duration = Duration::MAX;

/// Per-instance idle timeouts are kept in whole milliseconds, and this many or more mean never
/// (`Context::set_idle_timeout`: about 49.7 days).
pub(crate) const NEVER_IDLE_MS: u64 = u32::MAX as u64 - 1;

/// The idle timeout a receiver asked for, as the router keeps it.
pub(crate) fn idle_override(timeout: Duration) -> Duration {
    match timeout.as_millis() {
        ms if ms >= u128::from(NEVER_IDLE_MS) => NEVER,
        ms => Duration::from_millis(ms as u64),
    }
}

/// `at + after` from the world's start, or [`NEVER`] past the end of representable time.
pub(crate) fn deadline(base: Instant, at: Duration, after: Duration) -> Duration {
    match (base + at).checked_add(after) {
        Some(_) => at + after,
        None => NEVER,
    }
}

/// A task the router holds: started by the instance at `addr`, not completed or aborted yet.
#[derive(Clone, Debug)]
pub(crate) struct TaskM {
    pub(crate) addr: Addr,
    /// An ask's deadline, from the world's start ([`NEVER`]: none, or dropped at close).
    pub(crate) deadline: Duration,
    /// The router expired it at its deadline: its future answers `Timeout` if its reply was
    /// still open then.
    pub(crate) expired: bool,
}

/// A task a run started, as its journal shows it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TaskSpec {
    pub(crate) task: Seq,
    /// An ask's deadline ([`NEVER`] for never); `None` for spawned work.
    pub(crate) deadline: Option<Duration>,
}

#[derive(Clone, Debug)]
pub(crate) struct TimerM {
    pub(crate) id: TimerId,
    pub(crate) to: Id,
    /// From the world's start; [`NEVER`] for a timer that never fires.
    pub(crate) deadline: Duration,
    pub(crate) seq: Seq,
    order: u64,
}

/// Why the router refuses a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    Closed,
    Full,
    Stale,
}

/// Why a message becomes a dead letter, without the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reason {
    NoReceiver,
    FactoryFailed,
    Closed,
    Full,
    Stale,
    Panicked,
    /// A closing router delivered its drain limit.
    DrainLimit,
}

impl From<Refusal> for Reason {
    fn from(r: Refusal) -> Reason {
        match r {
            Refusal::Closed => Reason::Closed,
            Refusal::Full => Reason::Full,
            Refusal::Stale => Reason::Stale,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct EDead {
    pub(crate) to: Recipient<Id>,
    pub(crate) seq: Seq,
    pub(crate) reason: Reason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Activate,
    Run,
    Deactivate,
}

impl Kind {
    pub(crate) fn of(c: Command) -> Kind {
        match c {
            Command::Activate(_) => Kind::Activate,
            Command::Run(_) => Kind::Run,
            Command::Deactivate(_) => Kind::Deactivate,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct ECmd {
    pub(crate) kind: Kind,
    pub(crate) id: Id,
    /// `None` for the `Activate` of a new slot.
    pub(crate) addr: Option<Addr>,
}

/// What the model expects the router call in progress to output.
#[derive(Default, Debug)]
pub(crate) struct Expect {
    pub(crate) commands: Vec<ECmd>,
    pub(crate) dead: Vec<EDead>,
    pub(crate) outbound: Vec<(Recipient<Id>, Seq)>,
    /// Cancellations of timers held by another router, in order.
    pub(crate) outbound_cancels: Vec<TimerId>,
    /// Timer messages whose timer was cancelled: never to be delivered.
    pub(crate) cancelled: Vec<Seq>,
    /// Timers that fired.
    pub(crate) fired: usize,
    /// Tasks aborted (their instance was deactivated): their futures, if not finished, are
    /// dropped now.
    pub(crate) aborted: Vec<Seq>,
    /// Tasks a `deactivated` hook started, dropped unstarted now.
    pub(crate) discarded: Vec<Seq>,
    /// Asks expired at their deadline.
    pub(crate) expired: Vec<Seq>,
    /// Idle receivers past their idle timeout, kept live because they wait for tasks.
    pub(crate) spared: usize,
    /// Outcomes given back in time but too late for their instance: while its deactivation was
    /// under way, or queued when it stopped or panicked. `Stale` dead letters.
    pub(crate) stale_outcomes: usize,
    /// Outcomes queued ahead of other messages waiting in the mailbox.
    pub(crate) outcomes_ahead: usize,
    /// Slots reactivated after an instance that set its own idle timeout, in a kind with its
    /// own: the next instance starts from the kind's again.
    pub(crate) restored: usize,
}

#[derive(Clone, Copy, Default, Debug)]
struct Counters {
    routed: u64,
    forwarded: u64,
    delivered: u64,
    activations: u64,
    deactivations: u64,
    dead_letters: u64,
    dead_letters_dropped: u64,
    panics: u64,
}

/// What a job is expected to do, from the model's point of view.
#[derive(Clone, Debug)]
pub(crate) struct MJob {
    pub(crate) addr: Addr,
    pub(crate) id: Id,
    pub(crate) inst: u32,
    pub(crate) version: u32,
    pub(crate) work: MWork,
}

#[derive(Clone, Debug)]
pub(crate) enum MWork {
    /// The first `outcomes` of `batch` are task outcomes.
    Run {
        batch: Vec<Seq>,
        fresh: bool,
        outcomes: usize,
    },
    Deactivate {
        why: Deactivation,
    },
}

impl MJob {
    /// Messages the job carries.
    pub(crate) fn len(&self) -> usize {
        match &self.work {
            MWork::Run { batch, .. } => batch.len(),
            MWork::Deactivate { .. } => 0,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) enum TimerOpM {
    Schedule {
        id: TimerId,
        to: Id,
        deadline: Duration,
        seq: Seq,
    },
    Cancel(TimerId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum End {
    Finished,
    Stopped,
    Panicked(Seq),
    ActivationPanicked,
    /// A deactivation job: the hook ran (whether or not it panicked).
    Deactivated,
}

/// What a job did, read from its journal and checked against the job.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) delivered: Vec<Seq>,
    pub(crate) sends: Vec<(Recipient<Id>, Seq)>,
    pub(crate) timers: Vec<TimerOpM>,
    /// Messages the job created that a panic rolled back.
    pub(crate) void: Vec<Seq>,
    pub(crate) end: End,
    pub(crate) version: u32,
    pub(crate) idle: Option<Duration>,
    /// The `activated` hook ran without panicking.
    pub(crate) activated: bool,
    /// The `deactivated` hook panicked (a deactivation job).
    pub(crate) hook_panicked: bool,
    /// Tasks started (not rolled back), in order.
    pub(crate) tasks: Vec<TaskSpec>,
}

/// How a factory answered, for the model.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Made {
    Ready(u32),
    Refused,
    Failed,
    /// The factory panicked inside `Router::handle`, which caught it: a failed activation and a
    /// panic counted.
    Panicked,
}

/// The reference model of one router.
pub(crate) struct Model {
    number: u32,
    routers: u32,
    /// Each kind's settings; `None`: no kinds.
    kinds: Option<Vec<Settings>>,
    idle_timeout: Duration,
    capacity: Option<usize>,
    batch: usize,
    drain_limit: u64,
    dead_letter_capacity: usize,
    /// Dead letters the router holds until the driver polls them.
    held: usize,
    pub(crate) closing: bool,
    /// Deliveries left before closing stops draining (counted from close).
    drain_left: u64,
    pub(crate) slots: Vec<SlotM>,
    /// The highest generation seen per slot index.
    generations: HashMap<u32, u32>,
    pub(crate) timers: Vec<TimerM>,
    timer_order: u64,
    /// Tasks registered (started, not completed or aborted), by number.
    pub(crate) tasks: BTreeMap<Seq, TaskM>,
    /// Tasks started and not handed out yet, in order (aborted ones too).
    tasks_out: VecDeque<Seq>,
    counters: Counters,
    pub(crate) expect: Expect,
}

impl Model {
    /// The model of router `number` of `routers`, built with `config` and, if it has kinds,
    /// each kind's settings.
    pub(crate) fn new(
        number: u32,
        routers: u32,
        config: &Config,
        kinds: Option<Vec<Settings>>,
    ) -> Model {
        Model {
            number,
            routers,
            kinds,
            idle_timeout: config.idle_timeout,
            capacity: config.mailbox_capacity,
            batch: config.batch_size,
            drain_limit: config.drain_limit,
            dead_letter_capacity: config.dead_letter_capacity,
            held: 0,
            closing: false,
            drain_left: config.drain_limit,
            slots: Vec::new(),
            generations: HashMap::new(),
            timers: Vec::new(),
            timer_order: 0,
            tasks: BTreeMap::new(),
            tasks_out: VecDeque::new(),
            counters: Counters::default(),
            expect: Expect::default(),
        }
    }

    pub(crate) fn owns(&self, id: Id) -> bool {
        owner(id, self.routers) == self.number
    }

    pub(crate) fn slot_by_addr(&self, addr: Addr) -> Option<usize> {
        self.slots.iter().position(|s| s.addr == Some(addr))
    }

    pub(crate) fn slot_by_id(&self, id: Id) -> Option<usize> {
        self.slots.iter().position(|s| s.id == id)
    }

    /// Records the handle of a new slot, shown by its `Activate` command.
    pub(crate) fn assign(&mut self, id: Id, addr: Addr) -> Checked {
        let Some(i) = self
            .slots
            .iter()
            .position(|s| s.id == id && s.addr.is_none())
        else {
            broken!(
                Model,
                "Activate({addr:?}) for {id:?}, which has no new slot"
            );
        };
        ensure!(
            addr.router() == self.number,
            StaleHandles,
            "router {} issued {addr:?}, a handle naming another router",
            self.number
        );
        if let Some(&seen) = self.generations.get(&addr.index()) {
            ensure!(
                addr.generation() > seen,
                StaleHandles,
                "slot index {} reused with generation {} after generation {seen}: old handles \
                 would reach the new receiver",
                addr.index(),
                addr.generation()
            );
        }
        ensure!(
            !self
                .slots
                .iter()
                .any(|s| s.addr.is_some_and(|a| a.index() == addr.index())),
            StaleHandles,
            "{addr:?} for {id:?} shares its slot index with a live receiver"
        );
        self.generations.insert(addr.index(), addr.generation());
        self.slots[i].addr = Some(addr);
        Ok(())
    }

    /// The settings of `id`'s kind, if the router has kinds.
    fn settings(&self, id: Id) -> Option<&Settings> {
        self.kinds.as_ref()?.get(kind_of(id))
    }

    /// The mailbox capacity of `id`: its kind's, or the router's.
    fn capacity(&self, id: Id) -> Option<usize> {
        self.settings(id)
            .and_then(|s| s.mailbox_capacity)
            .or(self.capacity)
    }

    /// Most messages one run of `id` handles: its kind's, or the router's.
    fn batch(&self, id: Id) -> usize {
        self.settings(id)
            .and_then(|s| s.batch_size)
            .unwrap_or(self.batch)
    }

    /// The idle timeout of the instance in `slot`: its own, else its kind's (both as the router
    /// keeps them), else the router's.
    fn timeout_of(&self, slot: &SlotM) -> Duration {
        slot.inst
            .as_ref()
            .and_then(|i| i.idle)
            .or_else(|| {
                self.settings(slot.id)
                    .and_then(|s| s.idle_timeout)
                    .map(idle_override)
            })
            .unwrap_or(self.idle_timeout)
    }

    /// True while the receiver behind `addr` has tasks registered.
    pub(crate) fn waiting(&self, addr: Option<Addr>) -> bool {
        addr.is_some_and(|a| self.tasks.values().any(|t| t.addr == a))
    }

    /// When an idle receiver is due to be deactivated ([`NEVER`] for never, and while it waits
    /// for tasks).
    pub(crate) fn idle_deadline(&self, slot: &SlotM) -> Duration {
        if self.waiting(slot.addr) {
            return NEVER;
        }
        slot.idle_since.saturating_add(self.timeout_of(slot))
    }

    fn command(&mut self, kind: Kind, i: usize) {
        let slot = &self.slots[i];
        self.expect.commands.push(ECmd {
            kind,
            id: slot.id,
            addr: slot.addr,
        });
    }

    /// A dead letter: held for the driver, or past the capacity dropped (only counted); it is
    /// expected either way, and the world tells which from the count.
    fn dead(&mut self, to: Recipient<Id>, seq: Seq, reason: Reason) {
        self.counters.dead_letters += 1;
        if self.held >= self.dead_letter_capacity {
            self.counters.dead_letters_dropped += 1;
        } else {
            self.held += 1;
        }
        self.expect.dead.push(EDead { to, seq, reason });
    }

    /// The driver polled every dead letter the router held.
    pub(crate) fn polled_dead_letters(&mut self) {
        self.held = 0;
    }

    // ---- routing ------------------------------------------------------------------------------

    /// Routes a message: from outside (`outside`), or from a receiver, timer or other router.
    pub(crate) fn route(
        &mut self,
        to: Recipient<Id>,
        seq: Seq,
        outside: bool,
    ) -> Result<(), Refusal> {
        if outside && self.closing {
            return Err(Refusal::Closed);
        }
        let i = match &to {
            Recipient::Addr(a) if a.router() != self.number => {
                self.forward(to, seq);
                return Ok(());
            }
            Recipient::Addr(a) => self.slot_by_addr(*a).ok_or(Refusal::Stale)?,
            Recipient::Id(id) => match self.slot_by_id(*id) {
                Some(i) => i,
                None if !self.owns(*id) => {
                    self.forward(to, seq);
                    return Ok(());
                }
                None if self.closing => return Err(Refusal::Closed),
                None => {
                    self.slots.push(SlotM {
                        id: *id,
                        addr: None,
                        state: MState::Activating,
                        mailbox: VecDeque::from([seq]),
                        outcomes: 0,
                        inst: None,
                        idle_since: Duration::ZERO,
                    });
                    self.counters.routed += 1;
                    self.command(Kind::Activate, self.slots.len() - 1);
                    return Ok(());
                }
            },
        };
        let capacity = self.capacity(self.slots[i].id);
        let slot = &mut self.slots[i];
        if self.closing && matches!(slot.state, MState::Deactivating { .. }) {
            return Err(Refusal::Closed);
        }
        if capacity.is_some_and(|c| slot.mailbox.len() >= c) {
            return Err(Refusal::Full);
        }
        slot.mailbox.push_back(seq);
        self.counters.routed += 1;
        if slot.state == MState::Idle {
            slot.state = MState::Scheduled;
            self.command(Kind::Run, i);
        }
        Ok(())
    }

    fn forward(&mut self, to: Recipient<Id>, seq: Seq) {
        self.counters.forwarded += 1;
        self.expect.outbound.push((to, seq));
    }

    /// Routes a message from a receiver, timer or other router: a refusal is a dead letter, and
    /// so is everything once closing stopped draining.
    pub(crate) fn route_inside(&mut self, to: Recipient<Id>, seq: Seq) {
        if self.drained() {
            return self.dead(to, seq, Reason::DrainLimit);
        }
        if let Err(r) = self.route(to.clone(), seq, false) {
            self.dead(to, seq, r.into());
        }
    }

    // ---- timers -------------------------------------------------------------------------------

    pub(crate) fn schedule(&mut self, id: TimerId, to: Id, deadline: Duration, seq: Seq) {
        self.timers.push(TimerM {
            id,
            to,
            deadline,
            seq,
            order: self.timer_order,
        });
        self.timer_order += 1;
    }

    /// Cancels a pending timer; its message if it was pending.
    pub(crate) fn cancel(&mut self, id: TimerId) -> Option<Seq> {
        let i = self.timers.iter().position(|t| t.id == id)?;
        let seq = self.timers.remove(i).seq;
        self.expect.cancelled.push(seq);
        Some(seq)
    }

    /// Fires the timers due at `now` and deactivates receivers idle past their timeout.
    /// `deactivated(addr)`: whether the router did deactivate that receiver in this call; used
    /// only to order an idle deadline and a timer message due at the same instant.
    pub(crate) fn handle_timeout(&mut self, now: Duration, deactivated: impl Fn(Addr) -> bool) {
        enum Due {
            Idle(Id),
            Timer(TimerM),
        }
        let mut due: Vec<(Duration, u8, u64, Due)> = Vec::new();
        let mut i = 0;
        while i < self.timers.len() {
            if self.timers[i].deadline <= now {
                let t = self.timers.remove(i);
                due.push((t.deadline, 1, t.order, Due::Timer(t)));
            } else {
                i += 1;
            }
        }
        // An expiry only flags the task: its order among the rest does not matter.
        for (&task, t) in &mut self.tasks {
            if t.deadline <= now && !t.expired {
                t.expired = true;
                self.expect.expired.push(task);
            }
        }
        for slot in &self.slots {
            if slot.state == MState::Idle
                && self.waiting(slot.addr)
                && slot.idle_since.saturating_add(self.timeout_of(slot)) <= now
            {
                self.expect.spared += 1;
            }
            let deadline = self.idle_deadline(slot);
            if slot.state == MState::Idle && deadline <= now {
                let first = slot.addr.is_some_and(&deactivated);
                due.push((deadline, if first { 0 } else { 2 }, 0, Due::Idle(slot.id)));
            }
        }
        due.sort_by_key(|(at, rank, order, _)| (*at, *rank, *order));
        for (_, _, _, d) in due {
            match d {
                Due::Timer(t) => {
                    self.expect.fired += 1;
                    self.route_inside(Recipient::Id(t.to), t.seq);
                }
                Due::Idle(id) => {
                    if let Some(i) = self.slot_by_id(id)
                        && self.slots[i].state == MState::Idle
                    {
                        self.begin_deactivation(i, Deactivation::IdleTimeout);
                    }
                }
            }
        }
    }

    // ---- lifecycle ----------------------------------------------------------------------------

    fn become_idle(&mut self, i: usize, now: Duration) {
        if self.closing {
            return self.begin_deactivation(i, Deactivation::Closing);
        }
        // Waiting for its tasks: idle, but not for idleness until they are back.
        let waiting = self.waiting(self.slots[i].addr);
        if self.timeout_of(&self.slots[i]).is_zero() && !waiting {
            return self.begin_deactivation(i, Deactivation::IdleTimeout);
        }
        let slot = &mut self.slots[i];
        slot.state = MState::Idle;
        slot.idle_since = now;
    }

    fn begin_deactivation(&mut self, i: usize, why: Deactivation) {
        self.slots[i].state = MState::Deactivating { why, out: false };
        self.command(Kind::Deactivate, i);
    }

    fn fail_activation(&mut self, i: usize, reason: Reason) {
        self.fail_mailbox(i, reason);
        self.slots.remove(i);
    }

    /// Reports every message queued for slot `i` as a dead letter, in order.
    fn fail_mailbox(&mut self, i: usize, reason: Reason) {
        let id = self.slots[i].id;
        self.slots[i].outcomes = 0;
        for seq in std::mem::take(&mut self.slots[i].mailbox) {
            self.dead(Recipient::Id(id), seq, reason);
        }
    }

    // ---- the drain limit ----------------------------------------------------------------------

    /// Closing has delivered its drain limit: nothing is queued or routed any more.
    pub(crate) fn drained(&self) -> bool {
        self.closing && self.drain_left == 0
    }

    /// Counts the deliveries of a run that ended while closing; on reaching the limit, stops
    /// draining.
    fn count_drained(&mut self, handled: usize) {
        if self.drain_left == 0 {
            return;
        }
        self.drain_left = self.drain_left.saturating_sub(handled as u64);
        if self.drain_left == 0 {
            self.stop_draining();
        }
    }

    /// Every message still queued anywhere becomes a dead letter, receiver by receiver in the
    /// router's slot order (the order of their handles' indices; a slot made in this very call
    /// has none yet, and comes last).
    fn stop_draining(&mut self) {
        let mut order: Vec<usize> = (0..self.slots.len()).collect();
        order.sort_by_key(|&i| self.slots[i].addr.map_or(u32::MAX, |a| a.index()));
        for i in order {
            self.fail_mailbox(i, Reason::DrainLimit);
        }
    }

    /// Completes an `Activate`; `Err` if the router must refuse the call.
    pub(crate) fn activate(&mut self, addr: Addr, made: Made) -> Result<(), ()> {
        let i = self.slot_by_addr(addr).ok_or(())?;
        if self.slots[i].state != MState::Activating {
            return Err(());
        }
        match made {
            Made::Ready(n) => {
                self.counters.activations += 1;
                self.slots[i].inst = Some(Inst {
                    n,
                    version: 0,
                    fresh: true,
                    idle: None,
                });
                // Even with an empty mailbox (emptied at the drain limit): the `activated`
                // hook runs before the instance can be deactivated.
                self.slots[i].state = MState::Scheduled;
                self.command(Kind::Run, i);
            }
            Made::Refused => self.fail_activation(i, Reason::NoReceiver),
            Made::Failed => self.fail_activation(i, Reason::FactoryFailed),
            Made::Panicked => {
                self.counters.panics += 1;
                self.fail_activation(i, Reason::FactoryFailed);
            }
        }
        Ok(())
    }

    /// True if a `check_out` of `addr` is legitimate now (a `Run` or `Deactivate` is due).
    pub(crate) fn can_check_out(&self, addr: Addr) -> bool {
        self.slot_by_addr(addr).is_some_and(|i| {
            let s = &self.slots[i];
            s.state == MState::Scheduled
                || matches!(s.state, MState::Deactivating { out: false, .. }) && s.inst.is_some()
        })
    }

    /// Checks out the job a `Run` or `Deactivate` is for; `Err` if the router must refuse.
    pub(crate) fn check_out(&mut self, addr: Addr) -> Result<MJob, ()> {
        if !self.can_check_out(addr) {
            return Err(());
        }
        let i = self.slot_by_addr(addr).ok_or(())?;
        let batch = self.batch(self.slots[i].id);
        let slot = &mut self.slots[i];
        let inst = slot.inst.as_mut().ok_or(())?;
        let work = match slot.state {
            MState::Scheduled => {
                slot.state = MState::Running;
                let n = slot.mailbox.len().min(batch);
                let fresh = std::mem::take(&mut inst.fresh);
                let outcomes = slot.outcomes.min(n);
                slot.outcomes -= outcomes;
                MWork::Run {
                    batch: slot.mailbox.drain(..n).collect(),
                    fresh,
                    outcomes,
                }
            }
            MState::Deactivating { why, .. } => {
                slot.state = MState::Deactivating { why, out: true };
                MWork::Deactivate { why }
            }
            _ => return Err(()),
        };
        Ok(MJob {
            addr,
            id: slot.id,
            inst: inst.n,
            version: inst.version,
            work,
        })
    }

    /// Checks a job back in with what it did.
    pub(crate) fn check_in(&mut self, job: &MJob, out: &Outcome, now: Duration) -> Result<(), ()> {
        let i = self.slot_by_addr(job.addr).ok_or(())?;
        match &job.work {
            MWork::Run {
                batch, outcomes, ..
            } => {
                if self.slots[i].state != MState::Running {
                    return Err(());
                }
                let consumed = match out.end {
                    End::ActivationPanicked => 0,
                    End::Panicked(_) => out.delivered.len() + 1,
                    _ => out.delivered.len(),
                };
                // What the job left goes back to the front: its outcomes first (they came
                // before those queued meanwhile), its other messages behind every outcome.
                let ahead = outcomes.saturating_sub(consumed);
                let (its_outcomes, its_others) = batch[consumed..].split_at(ahead);
                let slot = &mut self.slots[i];
                let queued: Vec<Seq> = slot.mailbox.drain(..slot.outcomes).collect();
                for &seq in its_others.iter().rev() {
                    slot.mailbox.push_front(seq);
                }
                for &seq in its_outcomes.iter().chain(&queued).rev() {
                    slot.mailbox.push_front(seq);
                }
                slot.outcomes += ahead;
                self.counters.delivered += out.delivered.len() as u64;
                if let Some(inst) = slot.inst.as_mut() {
                    inst.version = out.version;
                    if let Some(timeout) = out.idle {
                        inst.idle = Some(idle_override(timeout));
                    }
                }
                self.start_tasks(job.addr, &out.tasks);
                self.apply(out);
                if self.closing && !out.delivered.is_empty() {
                    self.count_drained(out.delivered.len());
                }
                // Past the limit, what the job left unhandled and sent itself is dropped too.
                if self.drained() {
                    self.fail_mailbox(i, Reason::DrainLimit);
                }
                match out.end {
                    End::ActivationPanicked => {
                        self.counters.panics += 1;
                        self.fail_activation(i, Reason::FactoryFailed);
                    }
                    End::Stopped => self.begin_deactivation(i, Deactivation::Stopped),
                    End::Panicked(seq) => {
                        self.counters.panics += 1;
                        let id = self.slots[i].id;
                        self.dead(Recipient::Id(id), seq, Reason::Panicked);
                        self.begin_deactivation(i, Deactivation::Panicked);
                    }
                    End::Finished | End::Deactivated => {
                        if self.slots[i].mailbox.is_empty() {
                            self.become_idle(i, now);
                        } else {
                            self.slots[i].state = MState::Scheduled;
                            self.command(Kind::Run, i);
                        }
                    }
                }
            }
            MWork::Deactivate { .. } => {
                if !matches!(self.slots[i].state, MState::Deactivating { out: true, .. }) {
                    return Err(());
                }
                // The hook's own tasks have no instance to come back to.
                self.expect
                    .discarded
                    .extend(out.tasks.iter().map(|t| t.task));
                self.apply(out);
                self.abort_tasks(job.addr);
                self.counters.deactivations += 1;
                if out.hook_panicked {
                    self.counters.panics += 1;
                }
                // The outcomes still queued were for this instance only.
                let slot = &mut self.slots[i];
                let stale: Vec<Seq> = slot.mailbox.drain(..slot.outcomes).collect();
                slot.outcomes = 0;
                self.expect.stale_outcomes += stale.len();
                for seq in stale {
                    self.dead(Recipient::Addr(job.addr), seq, Reason::Stale);
                }
                if self.drained() {
                    self.fail_mailbox(i, Reason::DrainLimit);
                }
                // The next instance starts from its kind's idle timeout, not this one's own.
                let own = self.slots[i].inst.take().and_then(|inst| inst.idle);
                let kind = self.settings(self.slots[i].id).and_then(|s| s.idle_timeout);
                let slot = &mut self.slots[i];
                if slot.mailbox.is_empty() {
                    self.slots.remove(i);
                } else {
                    self.expect.restored += usize::from(own.is_some() && kind.is_some());
                    slot.state = MState::Activating;
                    self.command(Kind::Activate, i);
                }
            }
        }
        Ok(())
    }

    /// Registers the tasks a run started, in order, and hands them out.
    fn start_tasks(&mut self, addr: Addr, tasks: &[TaskSpec]) {
        for t in tasks {
            self.tasks.insert(
                t.task,
                TaskM {
                    addr,
                    deadline: t.deadline.unwrap_or(NEVER),
                    expired: false,
                },
            );
            self.tasks_out.push_back(t.task);
        }
    }

    /// Aborts every task of the instance at `addr`, which is being deactivated.
    fn abort_tasks(&mut self, addr: Addr) {
        let aborted: Vec<Seq> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.addr == addr)
            .map(|(&task, _)| task)
            .collect();
        for task in aborted {
            self.tasks.remove(&task);
            self.expect.aborted.push(task);
        }
    }

    /// Tasks started and not handed out yet.
    pub(crate) fn tasks_out_len(&self) -> usize {
        self.tasks_out.len()
    }

    /// The next task the router hands out (`poll_task`).
    pub(crate) fn take_task(&mut self) -> Option<Seq> {
        self.tasks_out.pop_front()
    }

    /// Gives back the outcome (message `seq`) of task `task`, started by the instance at
    /// `owner`: queued at the front of its mailbox, behind the outcomes already there, if the
    /// task is this router's and still registered and the instance is not being deactivated;
    /// otherwise a dead letter.
    pub(crate) fn complete(&mut self, task: Seq, owner: Addr, seq: Seq) {
        let registered =
            owner.router() == self.number && self.tasks.get(&task).is_some_and(|t| t.addr == owner);
        let i = self.slot_by_addr(owner);
        if !registered {
            return self.dead(Recipient::Addr(owner), seq, Reason::Stale);
        }
        self.tasks.remove(&task);
        let taking = |i: &usize| {
            !matches!(
                self.slots[*i].state,
                MState::Activating | MState::Deactivating { .. }
            )
        };
        let Some(i) = i.filter(taking) else {
            self.expect.stale_outcomes += 1;
            return self.dead(Recipient::Addr(owner), seq, Reason::Stale);
        };
        if self.drained() {
            return self.dead(Recipient::Addr(owner), seq, Reason::DrainLimit);
        }
        let slot = &mut self.slots[i];
        self.expect.outcomes_ahead += usize::from(slot.mailbox.len() > slot.outcomes);
        slot.mailbox.insert(slot.outcomes, seq);
        slot.outcomes += 1;
        self.counters.routed += 1;
        if slot.state == MState::Idle {
            slot.state = MState::Scheduled;
            self.command(Kind::Run, i);
        }
    }

    /// Applies a job's effects: every send, then every timer operation, in order.
    fn apply(&mut self, out: &Outcome) {
        for (to, seq) in &out.sends {
            self.route_inside(to.clone(), *seq);
        }
        for op in &out.timers {
            match *op {
                TimerOpM::Schedule {
                    id,
                    to,
                    deadline,
                    seq,
                } => {
                    if self.closing {
                        self.dead(Recipient::Id(to), seq, Reason::Closed);
                    } else {
                        self.schedule(id, to, deadline, seq);
                    }
                }
                // A timer held by another router: the cancellation goes there (placed routers).
                TimerOpM::Cancel(id) if self.routers > 1 && id.router() != self.number => {
                    self.expect.outbound_cancels.push(id);
                }
                TimerOpM::Cancel(id) => {
                    self.cancel(id);
                }
            }
        }
    }

    /// Starts closing.
    pub(crate) fn close(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.drain_left = self.drain_limit;
        // The router's timers go, and with them the deadlines of the asks registered so far.
        for t in self.tasks.values_mut() {
            t.deadline = NEVER;
        }
        let mut timers = std::mem::take(&mut self.timers);
        timers.sort_by_key(|t| (t.deadline, t.order));
        for t in timers {
            self.dead(Recipient::Id(t.to), t.seq, Reason::Closed);
        }
        if self.drained() {
            self.stop_draining();
        }
        for i in 0..self.slots.len() {
            if self.slots[i].state == MState::Idle {
                self.begin_deactivation(i, Deactivation::Closing);
            }
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closing && self.slots.is_empty()
    }

    /// Receivers with messages queued or in hand: the most that may hold resources.
    ///
    /// Once closing stopped draining, a receiver whose `Run` was already out keeps it, with an
    /// empty mailbox, until the driver handles it (the router cannot take a command back): it
    /// then finds nothing to do and is deactivated. Those count too.
    pub(crate) fn with_work(&self) -> usize {
        let drained = self.drained();
        self.slots
            .iter()
            .filter(|s| {
                !s.mailbox.is_empty()
                    || s.state == MState::Running
                    || drained && s.state == MState::Scheduled
            })
            .count()
    }

    /// The stats the router must report.
    pub(crate) fn stats(&self) -> Stats {
        let mut s = Stats::default();
        s.live = self.slots.len();
        s.messages_routed = self.counters.routed;
        s.messages_forwarded = self.counters.forwarded;
        s.messages_delivered = self.counters.delivered;
        s.activations = self.counters.activations;
        s.deactivations = self.counters.deactivations;
        s.dead_letters = self.counters.dead_letters;
        s.dead_letters_dropped = self.counters.dead_letters_dropped;
        s.panics = self.counters.panics;
        s.timers_pending = self.timers.len();
        for slot in &self.slots {
            match slot.state {
                MState::Activating => s.activating += 1,
                MState::Idle => s.idle += 1,
                MState::Scheduled => s.scheduled += 1,
                MState::Running => s.running += 1,
                MState::Deactivating { .. } => s.deactivating += 1,
            }
        }
        s
    }

    /// A one-line picture of the model's receivers, for violation reports.
    pub(crate) fn describe(&self) -> String {
        let slots: Vec<String> = self
            .slots
            .iter()
            .map(|s| {
                let idle = match s.state {
                    MState::Idle => format!(
                        " idle since {:?} until {:?}",
                        s.idle_since,
                        self.idle_deadline(s)
                    ),
                    _ => String::new(),
                };
                format!(
                    "{:?}@{:?}:{:?}{idle} mailbox {:?}",
                    s.id,
                    s.addr,
                    s.state,
                    s.mailbox.iter().collect::<Vec<_>>()
                )
            })
            .collect();
        let timers: Vec<String> = self
            .timers
            .iter()
            .map(|t| format!("#{}->{:?}@{:?}", t.seq, t.to, t.deadline))
            .collect();
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .map(|(task, t)| {
                let expired = if t.expired { " expired" } else { "" };
                format!("task #{task} of {:?}@{:?}{expired}", t.addr, t.deadline)
            })
            .collect();
        let kinds = match &self.kinds {
            Some(kinds) => format!(", kinds {kinds:?}"),
            None => String::new(),
        };
        let closing = match (self.closing, self.drain_left) {
            (false, _) => String::new(),
            (true, 0) => " (closing, drain limit reached)".to_string(),
            (true, left) => format!(" (closing, {left} deliveries to the drain limit)"),
        };
        format!(
            "router {}{closing} (idle timeout {:?}, capacity {:?}, batch {}{kinds}): [{}], \
             timers [{}], tasks [{}] (not handed out: {:?})",
            self.number,
            self.idle_timeout,
            self.capacity,
            self.batch,
            slots.join("; "),
            timers.join(", "),
            tasks.join(", "),
            self.tasks_out
        )
    }
}

/// The router that owns `id` among `routers`.
pub(crate) fn owner(id: Id, routers: u32) -> u32 {
    u32::from(id.0) % routers
}

/// Reads a job's journal: checks that the receiver did what the job should make it do, and
/// collects the effects to apply at check-in.
pub(crate) fn interpret(job: &MJob, events: &[Event], base: Instant) -> Checked<Outcome> {
    let mut out = Outcome {
        delivered: Vec::new(),
        sends: Vec::new(),
        timers: Vec::new(),
        void: Vec::new(),
        end: End::Finished,
        version: job.version,
        idle: None,
        activated: false,
        hook_panicked: false,
        tasks: Vec::new(),
    };
    let mut segments = segments(events)?.into_iter();
    match &job.work {
        MWork::Run { batch, fresh, .. } => {
            if *fresh {
                match segments.next() {
                    Some((Event::Activated { inst }, effects)) if *inst == job.inst => {
                        if effects.iter().any(|e| matches!(e, Event::Panicking)) {
                            out.end = End::ActivationPanicked;
                            ensure!(
                                segments.next().is_none(),
                                Model,
                                "{:?} handled messages after its activated hook panicked",
                                job.id
                            );
                            return Ok(out);
                        }
                        out.activated = true;
                    }
                    other => broken!(
                        Model,
                        "the first job of instance {} of {:?} did not start with its activated \
                         hook (saw {:?})",
                        job.inst,
                        job.id,
                        other.map(|s| s.0)
                    ),
                }
            }
            for (k, &seq) in batch.iter().enumerate() {
                let Some((head, effects)) = segments.next() else {
                    broken!(
                        ExactlyOnce,
                        "a job of {:?} handled {k} of its {} messages and ended without a stop \
                         or a panic; {:?} onwards were not delivered",
                        job.id,
                        batch.len(),
                        &batch[k..]
                    );
                };
                let Event::Received {
                    inst,
                    version,
                    id,
                    addr,
                    seq: got,
                    ..
                } = head
                else {
                    broken!(
                        Model,
                        "expected {:?} to handle #{seq}, saw {head:?}",
                        job.id
                    );
                };
                ensure!(
                    *got == seq,
                    Model,
                    "{:?} handled #{got} where the model expected #{seq} (its mailbox is FIFO)",
                    job.id
                );
                ensure!(
                    (*id, *addr) == (job.id, job.addr),
                    StaleHandles,
                    "a job for {:?} at {:?} ran as {id:?} at {addr:?}",
                    job.id,
                    job.addr
                );
                ensure!(
                    (*inst, *version) == (job.inst, out.version),
                    Model,
                    "#{seq} reached instance {inst} version {version} of {:?}; expected \
                     instance {} version {}",
                    job.id,
                    job.inst,
                    out.version
                );
                if effects.iter().any(|e| matches!(e, Event::Panicking)) {
                    out.end = End::Panicked(seq);
                    out.void.extend(effects.iter().filter_map(created));
                    break;
                }
                out.delivered.push(seq);
                commit(&mut out, effects, base);
                if effects.iter().any(|e| matches!(e, Event::Became)) {
                    out.version += 1;
                }
                if effects.iter().any(|e| matches!(e, Event::Stopped)) {
                    out.end = End::Stopped;
                    break;
                }
            }
        }
        MWork::Deactivate { why: expected, .. } => {
            out.end = End::Deactivated;
            let Some((head, effects)) = segments.next() else {
                broken!(
                    Deactivation,
                    "a deactivation job of {:?} did not run the deactivated hook",
                    job.id
                );
            };
            let Event::Deactivated {
                inst,
                version,
                id,
                why,
            } = head
            else {
                broken!(Model, "a deactivation job of {:?} ran {head:?}", job.id);
            };
            ensure!(
                (*inst, *version, *id) == (job.inst, job.version, job.id),
                Deactivation,
                "the deactivation of instance {} version {} of {:?} ran on instance {inst} \
                 version {version} of {id:?}",
                job.inst,
                job.version,
                job.id
            );
            ensure!(
                why == expected,
                Deactivation,
                "{:?} was deactivated as {why:?}; the model expected {expected:?}",
                job.id
            );
            if effects.iter().any(|e| matches!(e, Event::Panicking)) {
                out.hook_panicked = true;
                out.void.extend(effects.iter().filter_map(created));
            } else {
                commit(&mut out, effects, base);
            }
        }
    }
    if let Some((head, _)) = segments.next() {
        broken!(
            Model,
            "a job of {:?} did more than the model expected: {head:?}",
            job.id
        );
    }
    Ok(out)
}

/// Splits a journal into handler runs: a head (activated, received, deactivated) and the
/// effects recorded while it ran.
fn segments(events: &[Event]) -> Checked<Vec<(&Event, &[Event])>> {
    let mut out = Vec::new();
    let mut start = None;
    for (k, e) in events.iter().enumerate() {
        if is_head(e) {
            if let Some(s) = start {
                out.push((&events[s], &events[s + 1..k]));
            }
            start = Some(k);
        } else if start.is_none() {
            broken!(Model, "a receiver recorded {e:?} outside any handler");
        }
    }
    if let Some(s) = start {
        out.push((&events[s], &events[s + 1..]));
    }
    Ok(out)
}

/// The message an effect created, if any.
fn created(e: &Event) -> Option<Seq> {
    match e {
        Event::Sent { seq, .. } | Event::Scheduled { seq, .. } => Some(*seq),
        _ => None,
    }
}

fn commit(out: &mut Outcome, effects: &[Event], base: Instant) {
    for e in effects {
        match e {
            Event::Sent { to, seq } => out.sends.push((to.clone(), *seq)),
            Event::Scheduled {
                timer,
                to,
                deadline,
                seq,
            } => out.timers.push(TimerOpM::Schedule {
                id: *timer,
                to: *to,
                deadline: deadline.map_or(NEVER, |at| at.saturating_duration_since(base)),
                seq: *seq,
            }),
            Event::Cancelled { timer } => out.timers.push(TimerOpM::Cancel(*timer)),
            Event::IdleTimeout(d) => out.idle = Some(*d),
            Event::Spawned { task, .. } => out.tasks.push(TaskSpec {
                task: *task,
                deadline: None,
            }),
            Event::Asked { task, deadline, .. } => out.tasks.push(TaskSpec {
                task: *task,
                deadline: Some(deadline.map_or(NEVER, |at| at.saturating_duration_since(base))),
            }),
            _ => {}
        }
    }
}
