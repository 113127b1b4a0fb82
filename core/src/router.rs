//! The `Router`: a deterministic, single-threaded, sans-IO state machine.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::hash::BuildHasher;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hashbrown::{DefaultHashBuilder, HashTable};
use slab::Slab;

use crate::context::{Effects, TimerOp};
use crate::idle::{IdleList, Ticks, nanos};
use crate::job::{Ending, Work, run_batch, run_deactivated};
use crate::mailbox::{Mailboxes, NO_MAILBOX};
use crate::slot::{DEFAULT_IDLE, NEVER_IDLE, Slot, State};
use crate::task::{Shared, Task, TaskId, TaskOp};
use crate::timers::{Fired, Timers};
use crate::{
    Activation, Addr, Clock, Command, CommandError, Context, Deactivation, DeadLetter,
    DeadLetterReason, Done, Factory, FactoryError, Job, Key, KindTable, Location, Message,
    Placement, Receiver, Recipient, SendError, SendErrorKind, Settings, Stats, TimerId,
    panic_message,
};
use hermes_reply::Expiry;

/// How a router behaves. Build with `Config::default()` and the setters; read the fields.
///
/// ```
/// use std::time::Duration;
/// use hermes_core::Config;
///
/// let config = Config::default().idle_timeout(Duration::from_secs(60)).mailbox_capacity(1000);
/// assert_eq!(config.idle_timeout, Duration::from_secs(60));
/// assert_eq!(config.mailbox_capacity, Some(1000));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// How long a receiver stays live with nothing to do; see [`Config::idle_timeout()`].
    pub idle_timeout: Duration,
    /// The bound of every mailbox, if any; see [`Config::mailbox_capacity()`]. Zero counts
    /// as one.
    pub mailbox_capacity: Option<usize>,
    /// Most messages one `Run` handles; see [`Config::batch_size()`]. Zero counts as one.
    pub batch_size: usize,
    /// Messages delivered after close began before closing stops draining; see
    /// [`Config::drain_limit()`].
    pub drain_limit: u64,
    /// Dead letters kept until polled; see [`Config::dead_letter_capacity()`].
    pub dead_letter_capacity: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(300),
            mailbox_capacity: Some(65_536),
            batch_size: 64,
            drain_limit: 1_000_000,
            dead_letter_capacity: 4096,
        }
    }
}

impl Config {
    /// How long a receiver stays live with nothing to do (default 5 minutes), counted from when
    /// it went idle. Zero deactivates a receiver as soon as its mailbox is empty; a timeout too
    /// long to represent (such as `Duration::MAX`) never deactivates it for idleness.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Bounds every mailbox (default 65,536 messages). A send to a full mailbox is refused
    /// ([`SendError::Full`]) from outside, or becomes a dead letter
    /// ([`DeadLetterReason::Full`]) from a receiver: between receivers nothing waits, so
    /// nothing can deadlock, and the loss is observable. The executors' handle makes outside
    /// senders wait for room instead (`send`, `send_async`) or says so (`try_send`).
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = Some(capacity.max(1));
        self
    }

    /// Most messages one `Run` handles before the receiver yields (default 64).
    pub fn batch_size(mut self, batch: usize) -> Self {
        self.batch_size = batch.max(1);
        self
    }

    /// How many messages a closing router still delivers (default one million) before it stops
    /// draining. Closing lets queued messages drain and receivers keep messaging each other;
    /// past this many deliveries, every live receiver is deactivated when its current run ends,
    /// and every message still queued or sent becomes a dead letter
    /// ([`DeadLetterReason::DrainLimit`]). This is what makes closing always finish, even when
    /// receivers keep sending each other (or themselves) messages forever.
    pub fn drain_limit(mut self, limit: u64) -> Self {
        self.drain_limit = limit;
        self
    }

    /// How many dead letters a router keeps until they are polled (default 4096). A driver
    /// that never polls them does not grow without bound: past this many, new dead letters are
    /// counted in [`Stats::dead_letters_dropped`], logged, and dropped. For routers you drive
    /// yourself ([`Router`], [`Driver`](crate::Driver)): the executors and the simulator hand
    /// every dead letter on as it comes, however many one step makes, and ignore this bound.
    pub fn dead_letter_capacity(mut self, capacity: usize) -> Self {
        self.dead_letter_capacity = capacity;
        self
    }

    /// The idle timeout in whole milliseconds, as slots store overrides.
    fn idle_timeout_ms(&self) -> u32 {
        idle_ms(self.idle_timeout)
    }
}

/// An idle timeout in whole milliseconds as slots store it: below the `NEVER_IDLE` and
/// `DEFAULT_IDLE` sentinels, or `NEVER_IDLE` from about 49 days on.
fn idle_ms(timeout: Duration) -> u32 {
    timeout.as_millis().min(u128::from(NEVER_IDLE)) as u32
}

/// A deliberate bug, for proving that an invariant checker catches it. More may be added.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Check-in drops the first message a receiver sent.
    DropOnCheckIn,
    /// A receiver with queued messages is deactivated after a run.
    DeactivateNonEmpty,
    /// Timers fire up to one millisecond before their deadline.
    EarlyTimer,
    /// Handles are not checked for generation.
    NoGenerationCheck,
}

/// Work for a router other than this one, from [`Router::poll_outbound`].
#[derive(Debug)]
#[non_exhaustive]
pub enum Outbound<K, M> {
    /// A message a receiver or timer here sent to a receiver that lives elsewhere: deliver it
    /// there with [`Router::forward`].
    Message(Recipient<K>, M),
    /// A receiver here cancelled a timer held elsewhere: pass it to that router's
    /// [`Router::cancel`].
    Cancel(TimerId),
}

/// Routes messages to receivers addressed by ID `K`; see the crate docs for the lifecycle.
///
/// # How to drive it
///
/// Inputs: messages ([`send`](Router::send), [`forward`](Router::forward)), timers
/// ([`schedule`](Router::schedule), [`cancel`](Router::cancel)), time
/// ([`handle_timeout`](Router::handle_timeout)), [`close`](Router::close), and the results of
/// commands. After any input, drain every output, in any order:
///
/// - [`poll_command`](Router::poll_command): handle each command once, with
///   [`handle`](Router::handle) (the one place commands become work) or, to run a receiver on
///   another thread, [`check_out`](Router::check_out) and [`check_in`](Router::check_in);
/// - [`poll_outbound`](Router::poll_outbound) (placed routers only): mail and timer
///   cancellations for other routers;
/// - [`poll_dead_letter`](Router::poll_dead_letter): undeliverable messages (bounded by
///   [`Config::dead_letter_capacity`]; a driver that never polls loses only the overflow,
///   counted);
/// - [`poll_task`](Router::poll_task): work receivers started ([`Context::spawn`],
///   [`Context::ask`]): run each [`Task`](crate::Task) and give its outcome back with
///   [`complete`](Router::complete), or its `None` with [`abandon`](Router::abandon) (a
///   future that panicked). Unpolled, those receivers wait for ever (never idle),
///   and their asks never end, not even at their timeouts;
/// - [`poll_timeout`](Router::poll_timeout): when to call `handle_timeout` next.
///
/// [`Driver`](crate::Driver) does all of this on the calling thread.
///
/// Time only moves forward: pass the same or later instants from call to call.
pub struct Router<K, M> {
    config: Config,
    /// This router's number among its peers (its shard), carried in every handle it issues.
    number: u32,
    /// Where IDs live; `None`: all of them here.
    placement: Option<Arc<dyn Placement<K>>>,
    /// Which kind each ID is, and each kind's settings; `None`: one kind, the config's.
    kinds: Option<KindTable<K>>,
    /// Each kind's settings merged with the config's, resolved once.
    limits: KindLimits,
    /// Work for other routers.
    outbound: VecDeque<(Location, Outbound<K, M>)>,
    slots: Slab<Slot<K, M>>,
    /// Last generation handed out per slab index; survives the slot's removal.
    generations: Vec<u32>,
    /// ID -> slab key. Stores only the key; hashing looks the ID up in the slot.
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    timers: Timers<K, M>,
    commands: VecDeque<Command>,
    /// The `Run` of the first idle receiver that the sends of a run woke, polled before
    /// `commands` (see [`Router::NEXT_RUNS`]).
    next: Option<Command>,
    /// How many runs in a row put the `Run` of a receiver they woke in `next` while other
    /// commands waited ([`Router::NEXT_RUNS`] at most).
    next_streak: u32,
    /// Idle time is deferred ([`Router::defer_idle_time`]).
    defer_idle: bool,
    /// Slots whose receivers went idle while idle time was deferred, for `stamp_idle`: every
    /// slot with the `UNSTAMPED` flag, once (and slots since freed or woken, which the flag
    /// tells apart).
    unstamped: Vec<u32>,
    /// True while the effects of a receiver's run are being applied and none of its sends has
    /// woken a receiver yet: the first one woken runs next.
    waking_next: bool,
    dead_letters: VecDeque<DeadLetter<K, M>>,
    closing: bool,
    /// Deliveries left before a closing router stops draining.
    drain_left: u64,
    /// Time in ticks, as slots store when they went idle.
    ticks: Ticks,
    /// Idle receivers on the router's default timeout, oldest first.
    idle: IdleList,
    /// The default idle timeout in nanoseconds (saturating), to compare with ticks.
    idle_timeout_ns: u64,
    /// Sequence for the IDs of timers receivers schedule (unique per receiver handle).
    timer_seq: u32,
    stats: Stats,
    /// Mailboxes that reached or left their capacity, for a driver that asked for them.
    pressure: Option<VecDeque<Pressure<K>>>,
    /// Tasks receivers started, by number, not yet completed, abandoned or aborted.
    tasks: hashbrown::HashMap<u64, InFlight<M>>,
    /// The numbers of each slot's tasks in flight (slots with none are absent).
    in_flight: hashbrown::HashMap<usize, Vec<u64>>,
    /// How many messages at the front of each slot's mailbox are task outcomes (slots with none
    /// are absent): outcomes are queued there, ahead of ordinary messages, and are for the
    /// instance that started the work only ([`complete`](Router::complete)).
    outcomes: hashbrown::HashMap<usize, usize>,
    /// The number of the next task.
    task_seq: u64,
    /// Tasks for the driver to run.
    tasks_out: VecDeque<Task<M>>,
    /// The mailboxes of receivers with messages (idle ones hold none), and spare buffers.
    mailboxes: Mailboxes<M>,
    /// Idle timeouts, in milliseconds, that instances set themselves (`Context::set_idle_timeout`),
    /// by slot; slots with none are absent (the timeout is their kind's).
    idle_timeouts: hashbrown::HashMap<usize, u32>,
    spare_effects: Vec<Effects<K, M>>,
    /// The effects of the run being finished: recorded here in place by an inline run, swapped
    /// in from a checked-in job.
    effects: Effects<K, M>,
    /// Since [`release_moved`](Router::release_moved): receivers going idle are checked for
    /// having moved to another node. False on a single process, so that check costs nothing.
    releasing: bool,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
}

/// A kind's mailbox capacity, batch size and idle timeout with the config's defaults filled in.
#[derive(Clone, Copy, Debug)]
struct Limits {
    capacity: Option<usize>,
    batch_size: usize,
    /// The kind's idle timeout in milliseconds, as `idle_ms` gives them (`DEFAULT_IDLE`: the
    /// router's); an instance may set its own (`Router::idle_timeouts`).
    idle_ms: u32,
}

/// Every kind's [`Limits`], resolved once (when the router gets its kinds), so that hot paths
/// read one value instead of merging a kind's `Option`s with the config's per message.
#[derive(Debug)]
struct KindLimits {
    /// By kind; empty without kinds.
    kinds: Vec<Limits>,
    /// The config's: for every receiver without kinds, and for an ID of a kind the table does
    /// not know.
    default: Limits,
    /// The smallest mailbox capacity of them all (`usize::MAX`: unbounded).
    least_capacity: usize,
}

impl KindLimits {
    fn new<K>(config: &Config, kinds: Option<&KindTable<K>>) -> Self {
        // The fields are public, so a zero can bypass the setters: a run that may handle no
        // message would be scheduled again for ever, so one is the least either bound can be.
        let resolve = |settings: &Settings| Limits {
            capacity: settings
                .mailbox_capacity
                .or(config.mailbox_capacity)
                .map(|capacity| capacity.max(1)),
            batch_size: settings.batch_size.unwrap_or(config.batch_size).max(1),
            idle_ms: settings.idle_timeout.map_or(DEFAULT_IDLE, idle_ms),
        };
        let kinds: Vec<Limits> =
            kinds.map_or_else(Vec::new, |t| t.settings.iter().map(resolve).collect());
        let default = resolve(&Settings::default());
        let least_capacity = kinds
            .iter()
            .chain([&default])
            .filter_map(|limits| limits.capacity)
            .min()
            .unwrap_or(usize::MAX);
        KindLimits {
            kinds,
            default,
            least_capacity,
        }
    }

    /// The limits of receivers of `kind`.
    #[inline]
    fn get(&self, kind: u8) -> &Limits {
        self.kinds.get(usize::from(kind)).unwrap_or(&self.default)
    }
}

/// A task handed out and not yet completed, abandoned or aborted.
struct InFlight<M> {
    /// The instance its outcome goes to.
    owner: Addr,
    shared: Arc<Shared<M>>,
    /// For an ask: ends it with `Timeout` at its deadline.
    expiry: Option<Expiry>,
}

/// Where a message comes from, which decides how a refusal is reported.
#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    /// `send` from outside: refused while closing, or when the mailbox is full.
    Outside,
    /// A receiver or a timer: a refusal is a dead letter.
    Inside,
    /// From outside, already admitted by the driver's own flow control
    /// ([`Router::admit`]): queued even if the mailbox is at capacity.
    Admitted,
}

/// Where a message goes in a mailbox.
#[derive(Clone, Copy)]
enum Place {
    /// At the back; refused if the mailbox is full, unless the driver admitted it
    /// ([`From::Admitted`]).
    Back { from: From },
    /// A task's outcome: behind the outcomes at the front, never refused.
    Outcome,
}

/// A change in whether a receiver's mailbox is at capacity, for a driver that tells senders
/// to wait ([`Router::poll_pressure`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pressure<K> {
    /// The mailbox of the receiver with this ID reached its capacity.
    Full(K),
    /// It has room again (down to half its capacity, or the receiver is gone).
    Relieved(K),
}

/// The idle timeout, in milliseconds as `idle_ms` gives them (`DEFAULT_IDLE`: the router's), of
/// the instance in `slot` (at `key`): its own, if it set one (in `own`), else its kind's.
#[inline]
fn idle_ms_of<K, M>(
    slot: &Slot<K, M>,
    key: usize,
    own: &hashbrown::HashMap<usize, u32>,
    limits: &KindLimits,
) -> u32 {
    match slot.own_timeout().then(|| own.get(&key)).flatten() {
        Some(&ms) => ms,
        None => limits.get(slot.kind).idle_ms,
    }
}

/// True if idle timeout `ms` (as [`idle_timeout`] reads it) is zero: deactivate at once.
#[inline(always)]
fn idle_is_zero(ms: u32, config: &Config) -> bool {
    match ms {
        DEFAULT_IDLE => config.idle_timeout.is_zero(),
        ms => ms == 0,
    }
}

/// The idle timeout `ms` (from `idle_ms_of`) stands for, under `config`.
#[inline]
fn idle_timeout(ms: u32, config: &Config) -> Duration {
    match ms {
        DEFAULT_IDLE => config.idle_timeout,
        NEVER_IDLE => Duration::MAX,
        ms => Duration::from_millis(ms.into()),
    }
}

/// Takes up to `n` outcomes off the count of those at the front of slot `key`'s mailbox (in
/// `outcomes`, the router's side table), as a run takes `n` messages off its front; how many it
/// took.
#[inline]
fn take_outcomes(outcomes: &mut hashbrown::HashMap<usize, usize>, key: usize, n: usize) -> usize {
    if outcomes.is_empty() || n == 0 {
        return 0;
    }
    match outcomes.get_mut(&key) {
        None => 0,
        Some(ahead) if *ahead > n => {
            *ahead -= n;
            n
        }
        Some(ahead) => {
            let taken = *ahead;
            outcomes.remove(&key);
            taken
        }
    }
}

/// A message the router did not take.
struct Rejected<K, M> {
    to: Recipient<K>,
    msg: M,
    kind: SendErrorKind,
}

impl<K, M> Router<K, M> {
    /// How many `Run`s in a row may jump the command queue. When the sends of a receiver's run
    /// wake an idle receiver on the same router (the first one, if they wake several), that
    /// receiver's `Run` is what [`poll_command`](Router::poll_command) gives next, ahead of the
    /// commands queued before it, as an actor runtime runs the actor it just woke (tokio's LIFO
    /// slot): a reply between two receivers does not wait behind every command queued
    /// meanwhile. A pair that keeps messaging each other would then keep the others waiting
    /// forever, so once this many such `Run`s in a row went ahead of waiting commands, the next
    /// one queues at the back, and the count starts again. Nothing else changes: each receiver
    /// still runs one run at a time, on its messages in order.
    pub const NEXT_RUNS: u32 = 3;

    /// A router that owns every ID.
    pub fn new(config: Config) -> Self {
        Self::build(config, 0, None)
    }

    /// Router (shard) number `number` among peers, owning the IDs that `placement` locates at
    /// [`Location::Shard`]`(number)`. Messages for other IDs, and for handles issued by other
    /// routers, go out through [`poll_outbound`](Router::poll_outbound).
    pub fn placed(config: Config, number: u32, placement: Arc<dyn Placement<K>>) -> Self {
        Self::build(config, number, Some(placement))
    }

    fn build(config: Config, number: u32, placement: Option<Arc<dyn Placement<K>>>) -> Self {
        let limits = KindLimits::new::<K>(&config, None);
        let idle_timeout_ns = nanos(config.idle_timeout);
        Router {
            drain_left: config.drain_limit,
            config,
            number,
            placement,
            kinds: None,
            limits,
            outbound: VecDeque::new(),
            slots: Slab::new(),
            generations: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            timers: Timers::default(),
            commands: VecDeque::new(),
            next: None,
            next_streak: 0,
            defer_idle: false,
            unstamped: Vec::new(),
            waking_next: false,
            dead_letters: VecDeque::new(),
            closing: false,
            ticks: Ticks::default(),
            idle: IdleList::default(),
            idle_timeout_ns,
            timer_seq: 0,
            stats: Stats::default(),
            pressure: None,
            tasks: hashbrown::HashMap::new(),
            in_flight: hashbrown::HashMap::new(),
            outcomes: hashbrown::HashMap::new(),
            task_seq: 0,
            tasks_out: VecDeque::new(),
            mailboxes: Mailboxes::default(),
            idle_timeouts: hashbrown::HashMap::new(),
            spare_effects: Vec::new(),
            effects: Effects::default(),
            releasing: false,
            #[cfg(feature = "fault-injection")]
            fault: None,
        }
    }

    /// The configuration this router was built with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Treats IDs by kind: each kind's idle timeout, mailbox capacity and batch size from
    /// `kinds`, where it sets them. Call it before sending anything; drivers call it with the
    /// table of their factory ([`Factory::kinds`](crate::Factory::kinds)).
    pub fn use_kinds(&mut self, kinds: Option<KindTable<K>>) {
        self.limits = KindLimits::new(&self.config, kinds.as_ref());
        self.kinds = kinds;
    }

    /// The mailbox capacity of receivers of `kind`.
    #[inline]
    fn capacity(&self, kind: u8) -> Option<usize> {
        self.limits.get(kind).capacity
    }

    /// Most messages one run of a receiver of `kind` handles.
    #[inline]
    fn batch_size(&self, kind: u8) -> usize {
        self.limits.get(kind).batch_size
    }

    /// The router number carried by the handles this router issues.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// True once a closing router has delivered its [drain limit](Config::drain_limit).
    #[inline]
    fn drained(&self) -> bool {
        self.closing && self.drain_left == 0
    }

    /// True once [`close`](Router::close) was called.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// True once closing has finished: no receiver is live.
    pub fn is_closed(&self) -> bool {
        self.closing && self.slots.is_empty()
    }

    /// Counters and receiver counts.
    pub fn stats(&self) -> Stats {
        Stats {
            timers_pending: self.timers.len(),
            ..self.stats
        }
    }

    /// The next command for the driver: in the order they arose, except that the `Run` of a
    /// receiver woken by a send of the run that just ended usually comes first (see
    /// [`NEXT_RUNS`](Router::NEXT_RUNS)).
    #[must_use = "every command must be handled once"]
    #[inline]
    pub fn poll_command(&mut self) -> Option<Command> {
        if self.next.is_some() {
            return self.next.take();
        }
        self.commands.pop_front()
    }

    /// The next undeliverable message.
    #[must_use = "a dead letter is the only report of an undeliverable message"]
    pub fn poll_dead_letter(&mut self) -> Option<DeadLetter<K, M>> {
        self.dead_letters.pop_front()
    }

    /// The next piece of work for another router, and where it goes.
    #[must_use = "outbound work must be delivered to its router, or it is lost"]
    pub fn poll_outbound(&mut self) -> Option<(Location, Outbound<K, M>)> {
        self.outbound.pop_front()
    }

    /// The next task a receiver started, for the driver to run; give its outcome back with
    /// [`complete`](Router::complete), or its `None` with [`abandon`](Router::abandon). See
    /// [`Task`].
    #[must_use = "a task's receiver waits for its outcome"]
    pub fn poll_task(&mut self) -> Option<Task<M>> {
        self.tasks_out.pop_front()
    }

    /// Reports, from now on, when a receiver's mailbox reaches its capacity and when it has
    /// room again ([`poll_pressure`](Router::poll_pressure)): for a driver that makes outside
    /// senders wait while a receiver is full, as the executors do. Off by default, so a driver
    /// that does not poll them keeps nothing.
    pub fn report_pressure(&mut self) {
        self.pressure.get_or_insert_with(VecDeque::new);
    }

    /// The next change in whether a receiver's mailbox is at capacity, if
    /// [`report_pressure`](Router::report_pressure) was called.
    #[must_use]
    pub fn poll_pressure(&mut self) -> Option<Pressure<K>> {
        self.pressure.as_mut()?.pop_front()
    }

    /// Tasks started and not yet completed, abandoned or aborted.
    pub fn tasks_in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// The next time [`handle_timeout`](Router::handle_timeout) has work, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.next_deadline(), self.list_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the oldest receiver on the idle list is due to be deactivated; `None` if there is
    /// none, or never.
    fn list_deadline(&self) -> Option<Instant> {
        let head = self.slots.get(self.idle.head as usize)?;
        let epoch = self.ticks.epoch()?;
        // Summed in ticks, one `Instant` sum instead of two (a shard asks at every park); the
        // same instant, exactly, while the sum is short of the ticks' limit.
        match head.idle_since.checked_add(self.idle_timeout_ns) {
            Some(due) if due < u64::MAX => epoch.checked_add(Duration::from_nanos(due)),
            _ => {
                let since = epoch.checked_add(Duration::from_nanos(head.idle_since))?;
                crate::deadline(since, self.config.idle_timeout)
            }
        }
    }

    /// Cancels a timer held by this router; true if it was pending (it will never fire).
    pub fn cancel(&mut self, timer: TimerId) -> bool {
        self.timers.cancel(timer)
    }

    /// Switches on a deliberate bug (tests of invariant checkers only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(&mut self, fault: Fault) {
        self.fault = Some(fault);
    }

    /// True if `fault` is switched on; always false without the `fault-injection` feature.
    #[inline(always)]
    fn fault(&self, fault: Fault) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.fault == Some(fault);
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = fault;
            false
        }
    }
}

impl<K: Key, M: Message> Router<K, M> {
    // ---- sending ------------------------------------------------------------------------------

    /// Sends `msg` from outside to the receiver with ID `to`, activating it if needed.
    pub fn send(&mut self, to: K, msg: M) -> Result<(), SendError<M>> {
        if self.closing {
            return Err(SendError::Closed(msg));
        }
        self.route_id(to, msg, From::Outside)
            .map_err(Rejected::into_error)
    }

    /// Sends `msg` from outside by handle; [`SendError::Stale`] if its receiver is gone.
    pub fn send_to(&mut self, to: Addr, msg: M) -> Result<(), SendError<M>> {
        self.route(Recipient::Addr(to), msg, From::Outside)
            .map_err(Rejected::into_error)
    }

    /// Schedules `msg` for the receiver `to` at `deadline`, from outside; `None`: never (the
    /// timer can be cancelled, and is a dead letter at close).
    pub fn schedule(
        &mut self,
        to: K,
        deadline: impl Into<Option<Instant>>,
        msg: M,
    ) -> Result<TimerId, SendError<M>> {
        if self.closing {
            return Err(SendError::Closed(msg));
        }
        let id = self.timers.outside_id(self.number);
        self.timers.schedule(id, deadline.into(), to, msg);
        Ok(id)
    }

    /// Like [`schedule`](Router::schedule), with an ID the caller chose, usually
    /// [`TimerId::outside`]: a driver can then give the ID to a caller on another thread before
    /// the router sees the timer. Use each ID once.
    pub fn schedule_as(
        &mut self,
        id: TimerId,
        to: K,
        deadline: impl Into<Option<Instant>>,
        msg: M,
    ) -> Result<(), SendError<M>> {
        if self.closing {
            return Err(SendError::Closed(msg));
        }
        self.timers.schedule(id, deadline.into(), to, msg);
        Ok(())
    }

    /// A handle to the live receiver with ID `id`.
    pub fn addr(&self, id: &K) -> Option<Addr> {
        self.lookup(id).map(|key| self.addr_of(key))
    }

    /// The ID of the live receiver behind `addr`.
    pub fn id(&self, addr: Addr) -> Option<&K> {
        self.live(addr).map(|key| &self.slots[key].id)
    }

    /// Accepts a message that a receiver or timer on another router sent. It is routed as if sent
    /// from a receiver here: while closing it still reaches live receivers, and a refusal
    /// becomes a dead letter here.
    pub fn forward(&mut self, to: Recipient<K>, msg: M) {
        self.route_inside(to, msg);
    }

    /// Placement changed (a node joined or left the cluster): every live receiver whose ID
    /// placement now puts on another node ([`Location::Node`]) is deactivated with
    /// [`Deactivation::Moved`] once it is not running and its mailbox is empty (its
    /// `deactivated` hook saves its state). Messages for it that arrive meanwhile are still
    /// delivered here while it is live, and forwarded to the new node
    /// ([`poll_outbound`](Router::poll_outbound)) once it is gone. Returns how many receivers
    /// are on their way out; [`moved_live`](Router::moved_live) says when none is left.
    pub fn release_moved(&mut self) -> usize {
        if self.placement.is_none() {
            return 0;
        }
        self.releasing = true;
        let idle: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| s.state == State::Idle && self.on_other_node(&s.id))
            .map(|(k, _)| k)
            .collect();
        for &key in &idle {
            self.begin_deactivation(key, Deactivation::Moved);
        }
        self.moved_live()
    }

    /// How many live receivers (in any state) have IDs that placement puts on another node:
    /// zero once a [`release_moved`](Router::release_moved) is complete. Looks at every live
    /// receiver.
    pub fn moved_live(&mut self) -> usize {
        if self.placement.is_none() {
            return 0;
        }
        let moved = self
            .slots
            .iter()
            .filter(|(_, s)| self.on_other_node(&s.id))
            .count();
        if moved == 0 {
            self.releasing = false;
        }
        moved
    }

    /// True if placement puts `id` on another node.
    fn on_other_node(&self, id: &K) -> bool {
        self.placed_on_node(id).is_some()
    }

    /// The node placement puts `id` on, if it is another node.
    fn placed_on_node(&self, id: &K) -> Option<Location> {
        match self.placement.as_ref()?.locate(id) {
            location @ Location::Node(_) => Some(location),
            Location::Shard(_) => None,
        }
    }

    /// Where `id` lives, if not here.
    fn elsewhere(&self, id: &K) -> Option<Location> {
        let location = self.placement.as_ref()?.locate(id);
        (location != Location::Shard(self.number)).then_some(location)
    }

    fn route(&mut self, to: Recipient<K>, msg: M, from: From) -> Result<(), Rejected<K, M>> {
        if from == From::Outside && self.closing {
            return Err(Rejected::new(to, msg, SendErrorKind::Closed));
        }
        match to {
            Recipient::Id(id) => self.route_id(id, msg, from),
            Recipient::Addr(addr) => self.route_addr(addr, msg, from),
        }
    }

    /// Routes a message by ID (the caller checked that an outside sender may send).
    #[inline(always)]
    fn route_id(&mut self, id: K, msg: M, from: From) -> Result<(), Rejected<K, M>> {
        let hash = self.hasher.hash_one(&id);
        let Some(key) = self.lookup_hashed(hash, &id) else {
            return self.route_new(id, hash, msg);
        };
        self.deliver(key, msg, from)
            .map_err(|(msg, kind)| Rejected::new(Recipient::Id(id), msg, kind))
    }

    /// Routes a message by handle (the caller checked that an outside sender may send).
    fn route_addr(&mut self, addr: Addr, msg: M, from: From) -> Result<(), Rejected<K, M>> {
        let to = Recipient::Addr(addr);
        if addr.router != self.number {
            self.stats.messages_forwarded += 1;
            let location = Location::Shard(addr.router);
            self.outbound
                .push_back((location, Outbound::Message(to, msg)));
            return Ok(());
        }
        let Some(key) = self.live(addr) else {
            return Err(Rejected::new(to, msg, SendErrorKind::Stale));
        };
        // A handle is not typed by kind: a message of another kind than its receiver's is
        // refused here, as for a stale handle, rather than reaching (and panicking) it.
        if let Some(kinds) = &self.kinds
            && kinds
                .message_kind(&msg)
                .is_some_and(|kind| kind != usize::from(self.slots[key].kind))
        {
            return Err(Rejected::new(to, msg, SendErrorKind::Stale));
        }
        self.deliver(key, msg, from)
            .map_err(|(msg, kind)| Rejected::new(to, msg, kind))
    }

    /// Routes a message for an ID with no live receiver here: forwarded to where the ID lives,
    /// refused while closing, or queued for a new receiver.
    fn route_new(&mut self, id: K, hash: u64, msg: M) -> Result<(), Rejected<K, M>> {
        if let Some(location) = self.elsewhere(&id) {
            self.stats.messages_forwarded += 1;
            self.outbound
                .push_back((location, Outbound::Message(Recipient::Id(id), msg)));
            return Ok(());
        }
        if self.closing {
            return Err(Rejected::new(Recipient::Id(id), msg, SendErrorKind::Closed));
        }
        self.insert(id, hash, msg);
        Ok(())
    }

    /// Queues `msg` for the live receiver at `key`, unless it is refused: the receiver is being
    /// deactivated by a closing router, or its mailbox is full (for a sender the driver did not
    /// admit). A refusal gives the message back.
    #[inline(always)]
    fn deliver(&mut self, key: usize, msg: M, from: From) -> Result<(), (M, SendErrorKind)> {
        if self.closing && matches!(self.slots[key].state, State::Deactivating(_)) {
            return Err((msg, SendErrorKind::Closed));
        }
        let place = Place::Back { from };
        self.enqueue(key, msg, place)
            .map_err(|msg| (msg, SendErrorKind::Full))
    }

    /// Queues `msg` for the receiver at `key` where `place` says, opening its mailbox if it has
    /// none; refuses it (giving it back) if it goes at the back, unadmitted, of a full
    /// mailbox. Tells the driver if the mailbox reached its capacity, and schedules an idle
    /// receiver.
    #[inline(always)]
    fn enqueue(&mut self, key: usize, msg: M, place: Place) -> Result<(), M> {
        let slot = &mut self.slots[key];
        if slot.mailbox == NO_MAILBOX {
            slot.mailbox = self.mailboxes.open();
        }
        let mailbox = self.mailboxes.get_mut(slot.mailbox);
        let queued = mailbox.len();
        // Far below every kind's bound (the common case), the mailbox can neither be full nor
        // fill up with this message: one comparison, no look-up of the kind's capacity.
        let capacity = if queued + 1 >= self.limits.least_capacity {
            self.limits.get(slot.kind).capacity
        } else {
            None
        };
        match place {
            Place::Back { from } => {
                // (An empty mailbox is never full: capacities are at least 1.)
                if from != From::Admitted && capacity.is_some_and(|cap| queued >= cap) {
                    return Err(msg);
                }
                mailbox.push_back(msg);
            }
            Place::Outcome => {
                let ahead = self.outcomes.entry(key).or_insert(0);
                mailbox.insert(*ahead, msg);
                *ahead += 1;
            }
        }
        let idle = slot.state == State::Idle;
        if capacity.is_some_and(|cap| queued + 1 >= cap) {
            self.fill(key);
        }
        self.stats.messages_routed += 1;
        if idle {
            // Only a receiver's send may wake a receiver to run next (the test is free on
            // the other paths, where `place` is a constant).
            let inside = matches!(place, Place::Back { from: From::Inside });
            self.wake(key, inside);
        }
        Ok(())
    }

    /// Schedules the idle receiver at `key`, which has just been given a message (`inside`: by
    /// a receiver or a timer): `Run`.
    #[inline(always)]
    fn wake(&mut self, key: usize, inside: bool) {
        let slot = &mut self.slots[key];
        slot.state = State::Scheduled;
        self.stats.idle -= 1;
        self.stats.scheduled += 1;
        if slot.listed() {
            let (prev, next) = IdleList::take_off(slot);
            self.idle.join(&mut self.slots, prev, next);
        }
        let run = Command::Run(self.addr_of(key));
        if inside && self.waking_next && self.jumps_queue() {
            self.next = Some(run);
        } else {
            self.commands.push_back(run);
        }
    }

    /// Whether the `Run` of the first receiver that the run being finished woke goes in the
    /// "next" place, ahead of the queue, while what it was sent is fresh: yes, unless the place
    /// is taken, or runs did that `NEXT_RUNS` times in a row while other commands waited (then
    /// the count starts again).
    #[inline]
    fn jumps_queue(&mut self) -> bool {
        self.waking_next = false;
        if self.next.is_some() {
            return false;
        }
        if self.commands.is_empty() {
            // Nothing waits behind it.
            self.next_streak = 0;
            true
        } else if self.next_streak < Self::NEXT_RUNS {
            self.next_streak += 1;
            true
        } else {
            self.next_streak = 0;
            false
        }
    }

    /// Accepts a message from outside that the driver already admitted with flow control of
    /// its own (the executors check the shard's inbox and [`poll_pressure`](Router::poll_pressure)
    /// before they take a message): it is queued even if the mailbox is at capacity, so what a
    /// sender was told went through does go through. Otherwise routed as
    /// [`forward`](Router::forward) routes.
    pub fn admit(&mut self, to: Recipient<K>, msg: M) {
        if self.drained() {
            return self.dead_letter(to, Some(msg), DeadLetterReason::DrainLimit);
        }
        if let Err(r) = self.route(to, msg, From::Admitted) {
            self.refused(r);
        }
    }

    /// Tells the driver a receiver's mailbox is at capacity, if it was not already.
    #[cold]
    fn fill(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        if !slot.full() {
            slot.set_full(true);
            if let Some(pressure) = &mut self.pressure {
                pressure.push_back(Pressure::Full(slot.id.clone()));
            }
        }
    }

    /// Tells the driver a receiver's mailbox has room again, if it was full.
    fn relieve(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        if slot.full() {
            slot.set_full(false);
            if let Some(pressure) = &mut self.pressure {
                pressure.push_back(Pressure::Relieved(slot.id.clone()));
            }
        }
    }

    /// Routes a message sent by a receiver or a timer; a refusal becomes a dead letter.
    fn route_inside(&mut self, to: Recipient<K>, msg: M) {
        if self.drained() {
            return self.dead_letter(to, Some(msg), DeadLetterReason::DrainLimit);
        }
        if let Err(r) = self.route(to, msg, From::Inside) {
            self.refused(r);
        }
    }

    /// Reports a message the router did not take as a dead letter.
    fn refused(&mut self, r: Rejected<K, M>) {
        let reason = match r.kind {
            SendErrorKind::Closed => DeadLetterReason::Closed,
            SendErrorKind::Full => DeadLetterReason::Full,
            SendErrorKind::Stale => DeadLetterReason::Stale,
            SendErrorKind::Unreachable => DeadLetterReason::Unreachable,
        };
        self.dead_letter(r.to, Some(r.msg), reason);
    }

    fn dead_letter(
        &mut self,
        recipient: Recipient<K>,
        message: Option<M>,
        reason: DeadLetterReason,
    ) {
        tracing::debug!(?recipient, %reason, "dead letter");
        self.stats.dead_letters += 1;
        if self.dead_letters.len() >= self.config.dead_letter_capacity {
            if self.stats.dead_letters_dropped == 0 {
                tracing::warn!(
                    capacity = self.config.dead_letter_capacity,
                    "dead letters are not being polled: dropping the overflow (counted in \
                     Stats::dead_letters_dropped); poll them with Router::poll_dead_letter"
                );
            }
            self.stats.dead_letters_dropped += 1;
            return;
        }
        self.dead_letters.push_back(DeadLetter {
            recipient,
            message,
            reason,
        });
    }

    // ---- slots --------------------------------------------------------------------------------

    fn lookup(&self, id: &K) -> Option<usize> {
        self.lookup_hashed(self.hasher.hash_one(id), id)
    }

    fn lookup_hashed(&self, hash: u64, id: &K) -> Option<usize> {
        let slots = &self.slots;
        self.index
            .find(hash, |&key| slots[key as usize].id == *id)
            .map(|&key| key as usize)
    }

    /// The slab key behind a handle, if it is not stale.
    #[inline]
    fn live(&self, addr: Addr) -> Option<usize> {
        if addr.router != self.number {
            return None;
        }
        let key = addr.index as usize;
        if !self.slots.contains(key) {
            return None;
        }
        if self.fault(Fault::NoGenerationCheck) {
            return Some(key);
        }
        (self.generations[key] == addr.generation).then_some(key)
    }

    #[inline]
    fn addr_of(&self, key: usize) -> Addr {
        Addr {
            router: self.number,
            index: key as u32,
            generation: self.generations[key],
        }
    }

    /// Creates an activating slot for `id` holding `msg`, and emits `Activate`.
    fn insert(&mut self, id: K, hash: u64, msg: M) {
        let key = self.slots.vacant_key();
        if key >= self.generations.len() {
            self.generations.resize(key + 1, 0);
        }
        let generation = self.generations[key].wrapping_add(1);
        self.generations[key] = generation;
        let mailbox = self.mailboxes.open();
        self.mailboxes.get_mut(mailbox).push_back(msg);
        let kind = self
            .kinds
            .as_ref()
            .map_or(0, |k| u8::try_from(k.kind_of(&id)).unwrap_or(u8::MAX));
        let inserted = self.slots.insert(Slot::new(id, mailbox, kind));
        debug_assert_eq!(inserted, key);
        // A first message fills only a mailbox of one (the least capacity tells at a glance).
        if self.limits.least_capacity <= 1 && self.capacity(kind).is_some_and(|cap| cap <= 1) {
            self.fill(key);
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index.insert_unique(hash, key as u32, |&k| {
            hasher.hash_one(&slots[k as usize].id)
        });
        self.stats.messages_routed += 1;
        self.stats.live += 1;
        self.stats.activating += 1;
        self.commands.push_back(Command::Activate(Addr {
            router: self.number,
            index: key as u32,
            generation,
        }));
    }

    /// Frees a slot whose receiver is gone and whose mailbox is empty.
    fn remove(&mut self, key: usize) {
        if self.slots[key].full() {
            self.relieve(key);
        }
        // Out of the slab first, then everything else from the slot in hand.
        let slot = self.slots.remove(key);
        if slot.listed() {
            self.idle
                .join(&mut self.slots, slot.idle_prev, slot.idle_next);
        }
        self.count(slot.state, false);
        self.stats.live -= 1;
        let hash = self.hasher.hash_one(&slot.id);
        if let Ok(entry) = self.index.find_entry(hash, |&k| k as usize == key) {
            entry.remove();
        }
        if !self.outcomes.is_empty() {
            self.outcomes.remove(&key);
        }
        if slot.mailbox != NO_MAILBOX {
            self.mailboxes.close(slot.mailbox);
        }
        if slot.own_timeout() {
            self.idle_timeouts.remove(&key);
        }
    }

    #[inline]
    fn set_state(&mut self, key: usize, state: State) {
        let slot = &mut self.slots[key];
        let old = std::mem::replace(&mut slot.state, state);
        // Leaving `Idle`: off the idle list, if on it (only idle receivers are).
        if slot.listed() {
            let (prev, next) = IdleList::take_off(slot);
            self.idle.join(&mut self.slots, prev, next);
        }
        self.count(old, false);
        self.count(state, true);
    }

    #[inline]
    fn count(&mut self, state: State, add: bool) {
        let n = match state {
            State::Activating => &mut self.stats.activating,
            State::Idle => &mut self.stats.idle,
            State::Scheduled => &mut self.stats.scheduled,
            State::Running => &mut self.stats.running,
            State::Deactivating(_) => &mut self.stats.deactivating,
        };
        if add { *n += 1 } else { *n -= 1 }
    }

    /// The idle timeout of the instance at `key`.
    #[inline]
    fn idle_timeout_of(&self, key: usize) -> Duration {
        let ms = idle_ms_of(&self.slots[key], key, &self.idle_timeouts, &self.limits);
        idle_timeout(ms, &self.config)
    }

    /// The receiver at `key`, whose run just finished, has nothing queued. `now`: when the run
    /// ended; `None` while idle time is deferred (its idle time then starts at the next
    /// [`stamp_idle`](Router::stamp_idle)).
    fn become_idle(&mut self, key: usize, now: Option<Instant>) {
        if self.closing {
            return self.begin_deactivation(key, Deactivation::Closing);
        }
        if self.releasing && self.on_other_node(&self.slots[key].id) {
            return self.begin_deactivation(key, Deactivation::Moved);
        }
        // Waiting for work it started: idle, but its idle time starts when the work is back.
        let waiting = self.waiting(key);
        // All on the slot at hand: one look-up of it, and one of the idle list's tail.
        let slot = &mut self.slots[key];
        let timeout_ms = idle_ms_of(slot, key, &self.idle_timeouts, &self.limits);
        if idle_is_zero(timeout_ms, &self.config) && !waiting {
            return self.begin_deactivation(key, Deactivation::IdleTimeout);
        }
        // Running -> Idle.
        debug_assert_eq!(slot.state, State::Running);
        slot.state = State::Idle;
        self.stats.running -= 1;
        self.stats.idle += 1;
        // An idle receiver holds no mailbox.
        self.mailboxes.close(slot.mailbox);
        slot.mailbox = NO_MAILBOX;
        if waiting {
            return;
        }
        let Some(now) = now else {
            // Once per turn: a receiver woken and idle again before the stamp is listed
            // already (its flag stays until the stamp).
            if !slot.unstamped() {
                slot.set_unstamped(true);
                self.unstamped.push(key as u32);
            }
            return;
        };
        self.start_idle_time(key, timeout_ms, now);
    }

    /// Starts the idle time of the idle receiver at `key` at `now`: its place at the tail of
    /// the idle list (the default timeout), or its own idle timer (`timeout_ms`).
    #[inline(always)]
    fn start_idle_time(&mut self, key: usize, timeout_ms: u32, now: Instant) {
        let since = self.ticks.at(now);
        let slot = &mut self.slots[key];
        match timeout_ms {
            DEFAULT_IDLE => {
                let prev = self.idle.append(slot, key, since);
                IdleList::link(&mut self.slots, prev, key);
            }
            timeout_ms => {
                slot.idle_since = since;
                if !slot.idle_armed() && timeout_ms != NEVER_IDLE {
                    slot.set_idle_armed(true);
                    let addr = self.addr_of(key);
                    let timeout = idle_timeout(timeout_ms, &self.config);
                    self.timers.arm_idle(crate::deadline(now, timeout), addr);
                }
            }
        }
    }

    /// Starts the idle time, at `now`, of the idle receiver at `key` whose run ended while idle
    /// time was deferred: as [`become_idle`](Router::become_idle) would have at the end of
    /// that run. Skips a receiver woken since (it is not idle, or a later run gave it its time).
    fn stamp(&mut self, key: usize, now: Instant) {
        let waiting = self.waiting(key);
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if !slot.unstamped() {
            return;
        }
        slot.set_unstamped(false);
        if slot.state != State::Idle || slot.listed() || waiting {
            return;
        }
        let timeout_ms = idle_ms_of(slot, key, &self.idle_timeouts, &self.limits);
        self.start_idle_time(key, timeout_ms, now);
    }

    fn begin_deactivation(&mut self, key: usize, why: Deactivation) {
        self.set_state(key, State::Deactivating(why));
        self.commands
            .push_back(Command::Deactivate(self.addr_of(key)));
    }

    /// Reports every queued message of `key` as a dead letter and frees the slot.
    fn fail_activation(&mut self, key: usize, reason: DeadLetterReason) {
        self.fail_mailbox(key, reason);
        self.remove(key);
    }

    /// Reports every message queued for `key` as a dead letter, in order.
    fn fail_mailbox(&mut self, key: usize, reason: DeadLetterReason) {
        let n = self.slots[key].mailbox;
        if self.mailboxes.is_empty(n) {
            return;
        }
        if !self.outcomes.is_empty() {
            self.outcomes.remove(&key);
        }
        let mut mailbox = std::mem::take(self.mailboxes.get_mut(n));
        let id = self.slots[key].id.clone();
        for msg in mailbox.drain(..) {
            self.dead_letter(Recipient::Id(id.clone()), Some(msg), reason.clone());
        }
        // The emptied buffer stays with the mailbox.
        *self.mailboxes.get_mut(n) = mailbox;
        self.relieve(key);
    }

    /// The instance at `key` (handle `addr`) is gone: the outcomes at the front of its mailbox,
    /// for that instance only, become `Stale` dead letters, in order.
    fn fail_outcomes(&mut self, key: usize, addr: Addr) {
        if self.outcomes.is_empty() {
            return;
        }
        let Some(ahead) = self.outcomes.remove(&key) else {
            return;
        };
        // Outcomes are queued messages: the mailbox is open.
        let n = self.slots[key].mailbox;
        for _ in 0..ahead {
            let msg = self.mailboxes.get_mut(n).pop_front();
            self.dead_letter(Recipient::Addr(addr), msg, DeadLetterReason::Stale);
        }
        self.relieve_if_room(key);
    }

    /// Tells the driver a full mailbox has room again, once it is down to half its capacity.
    #[inline]
    fn relieve_if_room(&mut self, key: usize) {
        if self.slots[key].full() {
            self.relieve_if_drained(key);
        }
    }

    #[cold]
    fn relieve_if_drained(&mut self, key: usize) {
        let slot = &self.slots[key];
        if self.mailboxes.len(slot.mailbox) <= self.capacity(slot.kind).unwrap_or(0) / 2 {
            self.relieve(key);
        }
    }

    /// Puts the messages a checked-out run did not handle back at the front of the mailbox of
    /// `key`, in order. The first `ahead` of them are outcomes: they stay first (they came
    /// before any queued meanwhile), and the others go behind every outcome.
    #[inline]
    fn put_back(&mut self, key: usize, mut rest: VecDeque<M>, ahead: usize) {
        let queued = if self.outcomes.is_empty() {
            0
        } else {
            self.outcomes.get(&key).copied().unwrap_or(0)
        };
        let n = self.slots[key].mailbox;
        if n == NO_MAILBOX {
            // A deactivation (of an idle receiver) checking in: nothing is left.
            debug_assert!(rest.is_empty());
            return self.mailboxes.recycle(rest);
        }
        let mailbox = self.mailboxes.get_mut(n);
        if queued == 0 || rest.len() == ahead {
            if mailbox.is_empty() {
                std::mem::swap(mailbox, &mut rest);
            } else {
                while let Some(msg) = rest.pop_back() {
                    mailbox.push_front(msg);
                }
            }
        } else {
            // Its outcomes, the outcomes queued meanwhile, its other messages, the mailbox's.
            let others = rest.split_off(ahead);
            rest.extend(mailbox.drain(..queued));
            rest.extend(others);
            rest.append(mailbox);
            std::mem::swap(mailbox, &mut rest);
        }
        self.mailboxes.recycle(rest);
        if ahead > 0 {
            self.outcomes.insert(key, queued + ahead);
        }
    }

    /// Counts deliveries against a closing router's drain limit; on reaching it, stops
    /// draining.
    fn count_drained(&mut self, handled: u64) {
        if self.drain_left == 0 {
            return;
        }
        self.drain_left = self.drain_left.saturating_sub(handled);
        if self.drain_left == 0 {
            self.stop_draining();
        }
    }

    /// The drain limit is reached: everything still queued becomes a dead letter. Receivers
    /// with a `Run` out find an empty mailbox and are deactivated; later mail is refused.
    fn stop_draining(&mut self) {
        tracing::warn!(
            limit = self.config.drain_limit,
            "closing delivered its drain limit of messages; the rest are dead letters \
             (receivers that keep messaging each other stop here)"
        );
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.fail_mailbox(key, DeadLetterReason::DrainLimit);
        }
    }

    fn spare_effects(&mut self, effects: Effects<K, M>) {
        if self.spare_effects.len() < 64 {
            self.spare_effects.push(effects);
        }
    }

    /// Moves the timer sequence past the numbers a checked-out job used.
    fn advance_timer_seq(&mut self, used_up_to: u32) {
        if (used_up_to.wrapping_sub(self.timer_seq) as i32) > 0 {
            self.timer_seq = used_up_to;
        }
    }

    // ---- commands -----------------------------------------------------------------------------

    /// Completes an [`Activate`](Command::Activate) with what the factory made.
    pub fn activate(
        &mut self,
        addr: Addr,
        activation: Activation<K, M>,
    ) -> Result<(), CommandError> {
        let key = self.live(addr).ok_or(CommandError::Stale(addr))?;
        self.activate_at(key, addr, activation)
    }

    /// [`activate`](Router::activate) for the live slot `key` behind `addr`.
    #[inline]
    fn activate_at(
        &mut self,
        key: usize,
        addr: Addr,
        activation: Activation<K, M>,
    ) -> Result<(), CommandError> {
        let slot = &mut self.slots[key];
        if slot.state != State::Activating {
            return Err(CommandError::WrongState(addr));
        }
        match activation {
            Activation::Ready(receiver) => {
                slot.receiver = Some(receiver);
                slot.set_fresh(true);
                // Activating -> Scheduled, on the slot at hand.
                slot.state = State::Scheduled;
                self.stats.activating -= 1;
                self.stats.scheduled += 1;
                self.stats.activations += 1;
                // Always a first run, even with an empty mailbox (a closing router emptied it at
                // its drain limit): the `activated` hook runs before anything else.
                self.commands.push_back(Command::Run(addr));
            }
            Activation::Refused => self.fail_activation(key, DeadLetterReason::NoReceiver),
            Activation::Failed(e) => self.fail_activation(key, DeadLetterReason::FactoryFailed(e)),
        }
        Ok(())
    }

    /// Checks out the receiver of a [`Run`](Command::Run) (with up to a batch of its messages)
    /// or of a [`Deactivate`](Command::Deactivate), to [`execute`](Job::execute) anywhere.
    pub fn check_out(&mut self, addr: Addr) -> Result<Job<K, M>, CommandError> {
        let key = self.live(addr).ok_or(CommandError::Stale(addr))?;
        let batch_size = self.batch_size(self.slots[key].kind);
        let slot = &mut self.slots[key];
        let work = match slot.state {
            State::Scheduled => {
                // A scheduled receiver has its mailbox open (it stays open while checked out).
                let mailbox = slot.mailbox;
                let queued = self.mailboxes.len(mailbox);
                let n = queued.min(batch_size);
                let batch = if n == queued {
                    std::mem::take(self.mailboxes.get_mut(mailbox))
                } else {
                    let mut batch = self.mailboxes.buffer();
                    batch.extend(self.mailboxes.get_mut(mailbox).drain(..n));
                    batch
                };
                let fresh = slot.take_fresh();
                // The outcomes at the front of the mailbox go first, in the batch.
                let outcomes = take_outcomes(&mut self.outcomes, key, n);
                Work::Run {
                    batch,
                    fresh,
                    outcomes,
                }
            }
            State::Deactivating(why) if slot.receiver.is_some() => Work::Deactivate(why),
            _ => return Err(CommandError::WrongState(addr)),
        };
        let Some(receiver) = slot.receiver.take() else {
            return Err(CommandError::WrongState(addr));
        };
        let job = Job {
            addr,
            id: slot.id.clone(),
            receiver,
            work,
            effects: self.spare_effects.pop().unwrap_or_default(),
            timer_seq: self.timer_seq,
        };
        if matches!(job.work, Work::Run { .. }) {
            self.set_state(key, State::Running);
        }
        Ok(job)
    }

    /// Checks a job back in: applies its effects (sends, timers, become, stop) and moves the
    /// receiver on in its lifecycle.
    pub fn check_in(&mut self, done: Done<K, M>, now: Instant) -> Result<(), CommandError> {
        let addr = done.addr;
        let key = self.live(addr).ok_or(CommandError::NotCheckedOut(addr))?;
        let slot = &mut self.slots[key];
        let expected = if done.deactivation {
            matches!(slot.state, State::Deactivating(_))
        } else {
            slot.state == State::Running
        };
        if !expected || slot.receiver.is_some() {
            return Err(CommandError::NotCheckedOut(addr));
        }
        // (Putting the rest back does not change it.)
        let full = slot.full();
        let Done {
            receiver,
            rest,
            outcomes,
            handled,
            ending,
            deactivation,
            mut effects,
            timer_seq,
            ..
        } = done;
        self.put_back(key, rest, outcomes);
        self.advance_timer_seq(timer_seq);
        // The job's effects become the ones being finished; the buffers they replace are spare.
        std::mem::swap(&mut self.effects, &mut effects);
        self.spare_effects(effects);
        if deactivation {
            let panicked = matches!(ending, Ending::Panicked(_));
            self.finish_deactivation(key, addr, receiver, panicked);
        } else {
            self.finish_run(key, addr, receiver, handled, ending, Some(now), full);
        }
        Ok(())
    }

    /// The end of a run, inline or checked in: applies its effects (in `self.effects`) and moves
    /// the receiver on in its lifecycle. `full`: the slot's mailbox was reported full (read by
    /// the caller, which had the slot in hand).
    #[allow(clippy::too_many_arguments)]
    fn finish_run(
        &mut self,
        key: usize,
        addr: Addr,
        receiver: Box<dyn Receiver<K, M>>,
        handled: u64,
        ending: Ending,
        now: Option<Instant>,
        full: bool,
    ) {
        self.stats.messages_delivered += handled;
        if self.effects.is_empty() && !self.closing {
            // The common case, with nothing to apply: what `apply_effects` does then.
            if full {
                self.relieve_if_drained(key);
            }
        } else if !full && !self.closing && self.effects.is_one_send() {
            // The next most common: one send and nothing else, from a receiver whose mailbox
            // was not full, on an open router. What `apply_effects` does then, without its
            // calls and its clearing of every list: the send is popped, so nothing is left.
            self.apply_one_send();
        } else {
            self.apply_effects(key, addr, handled, full);
        }
        let injected = self.fault(Fault::DeactivateNonEmpty);
        let slot = &mut self.slots[key];
        match ending {
            Ending::Finished => {
                slot.receiver = Some(receiver);
                let empty = self.mailboxes.is_empty(slot.mailbox);
                if injected && !empty {
                    self.begin_deactivation(key, Deactivation::Stopped);
                } else if empty {
                    self.become_idle(key, now);
                } else {
                    // Running -> Scheduled, on the slot at hand.
                    slot.state = State::Scheduled;
                    self.stats.running -= 1;
                    self.stats.scheduled += 1;
                    self.commands.push_back(Command::Run(addr));
                }
            }
            Ending::Stopped => {
                slot.receiver = Some(receiver);
                self.begin_deactivation(key, Deactivation::Stopped);
            }
            Ending::Panicked(why) => {
                tracing::warn!(id = ?slot.id, %why, "receiver panicked; deactivating it");
                slot.receiver = Some(receiver);
                let id = slot.id.clone();
                self.stats.panics += 1;
                self.dead_letter(Recipient::Id(id), None, DeadLetterReason::Panicked(why));
                self.begin_deactivation(key, Deactivation::Panicked);
            }
            Ending::ActivationPanicked(why) => {
                tracing::warn!(id = ?slot.id, %why, "activated hook panicked; activation failed");
                drop(receiver);
                self.stats.panics += 1;
                let error = FactoryError::new(ActivationPanic(why));
                self.fail_activation(key, DeadLetterReason::FactoryFailed(error));
            }
        }
    }

    /// Applies the effects of a run that `handled` messages (in `self.effects`), and counts them
    /// against a closing router's drain limit. Out of line: most runs have nothing to apply, and
    /// `finish_run` stays small without it.
    #[inline(never)]
    fn apply_effects(&mut self, key: usize, addr: Addr, handled: u64, full: bool) {
        if let Some(timeout) = self.effects.idle_timeout.take() {
            let slot = &mut self.slots[key];
            let ms = idle_ms(timeout);
            let current = match idle_ms_of(slot, key, &self.idle_timeouts, &self.limits) {
                DEFAULT_IDLE => self.config.idle_timeout_ms(),
                ms => ms,
            };
            let shorter = ms < current;
            slot.set_own_timeout(true);
            self.idle_timeouts.insert(key, ms);
            if shorter {
                // The armed idle check may be later than the new deadline: arm another.
                slot.set_idle_armed(false);
            }
        }
        if full {
            self.relieve_if_drained(key);
        }
        self.start_tasks(key, addr);
        self.waking_next = true;
        self.apply();
        self.waking_next = false;
        if self.closing && handled > 0 {
            self.count_drained(handled);
        }
        if self.drained() {
            self.fail_mailbox(key, DeadLetterReason::DrainLimit);
        }
    }

    /// Applies the effects of a run that recorded one send and nothing else, on an open router
    /// (`effects.is_one_send()`): routes it as `apply_effects` would (a receiver it wakes may
    /// run next), and leaves the effects empty.
    #[inline(always)]
    fn apply_one_send(&mut self) {
        debug_assert!(!self.closing && self.effects.is_one_send());
        if self.fault(Fault::DropOnCheckIn) {
            self.effects.sends.clear();
            return;
        }
        if let Some((to, msg)) = self.effects.sends.pop() {
            self.waking_next = true;
            if let Err(r) = self.route(to, msg, From::Inside) {
                self.refused(r);
            }
            self.waking_next = false;
        }
    }

    /// The end of a deactivation, inline or checked in: applies the hook's effects (in
    /// `self.effects`), drops the instance, and frees the slot or, if messages arrived meanwhile,
    /// activates a fresh one.
    fn finish_deactivation(
        &mut self,
        key: usize,
        addr: Addr,
        receiver: Box<dyn Receiver<K, M>>,
        panicked: bool,
    ) {
        // Work started by the `deactivated` hook has no instance to come back to.
        if !self.effects.tasks.is_empty() {
            self.effects.tasks.clear();
        }
        self.apply();
        drop(receiver);
        self.abort_tasks(key);
        self.stats.deactivations += 1;
        if panicked {
            self.stats.panics += 1;
        }
        self.fail_outcomes(key, addr);
        // An idle-timeout override lasts as long as the instance, and so does an idle check
        // armed for it: the next instance arms its own.
        if self.drained() {
            self.fail_mailbox(key, DeadLetterReason::DrainLimit);
        }
        let n = self.slots[key].mailbox;
        if self.mailboxes.is_empty(n) {
            self.remove(key);
        } else if let Some(location) = self.placed_on_node(&self.slots[key].id) {
            // Messages arrived during a hand-off: they follow the ID to its new node, in order.
            let mut mailbox = std::mem::take(self.mailboxes.get_mut(n));
            let id = self.slots[key].id.clone();
            for msg in mailbox.drain(..) {
                self.stats.messages_forwarded += 1;
                self.outbound
                    .push_back((location, Outbound::Message(Recipient::Id(id.clone()), msg)));
            }
            // The emptied buffer stays with the mailbox.
            *self.mailboxes.get_mut(n) = mailbox;
            self.remove(key);
        } else {
            // Messages arrived during deactivation: activate a fresh instance.
            let slot = &mut self.slots[key];
            slot.set_idle_armed(false);
            if slot.own_timeout() {
                slot.set_own_timeout(false);
                self.idle_timeouts.remove(&key);
            }
            self.set_state(key, State::Activating);
            self.commands.push_back(Command::Activate(addr));
        }
    }

    /// Registers the tasks the run being finished started, and hands them out.
    fn start_tasks(&mut self, key: usize, addr: Addr) {
        if self.effects.tasks.is_empty() {
            return;
        }
        let mut tasks = std::mem::take(&mut self.effects.tasks);
        for TaskOp {
            flags,
            future,
            deadline,
        } in tasks.drain(..)
        {
            let seq = self.task_seq;
            self.task_seq += 1;
            let expiry = deadline.map(|(deadline, expiry)| {
                self.timers.arm_task(deadline, seq);
                expiry
            });
            let shared = Shared::new(flags, future);
            let in_flight = InFlight {
                owner: addr,
                shared: Arc::clone(&shared),
                expiry,
            };
            self.tasks.insert(seq, in_flight);
            self.in_flight.entry(key).or_default().push(seq);
            let id = TaskId { owner: addr, seq };
            self.tasks_out.push_back(Task { id, shared });
        }
        self.effects.tasks = tasks;
    }

    /// True if the receiver at `key` waits for tasks it started (no hashing when none is in
    /// flight anywhere: the common case).
    #[inline]
    fn waiting(&self, key: usize) -> bool {
        !self.in_flight.is_empty() && self.in_flight.contains_key(&key)
    }

    /// Aborts every task of the instance at `key`, which is being deactivated.
    fn abort_tasks(&mut self, key: usize) {
        if self.in_flight.is_empty() {
            return;
        }
        let Some(seqs) = self.in_flight.remove(&key) else {
            return;
        };
        for seq in seqs {
            if let Some(task) = self.tasks.remove(&seq) {
                task.shared.abort();
            }
        }
    }

    /// Gives back the outcome of a task ([`poll_task`](Router::poll_task)): the message for the
    /// instance that started the work, and only it (see [`Task`]).
    ///
    /// It is queued at the front of that instance's mailbox, behind the outcomes already
    /// queued there and ahead of every other message, so it is handled next; a full mailbox
    /// does not refuse it. It becomes a [`Stale`](DeadLetterReason::Stale) dead letter if the
    /// instance is being deactivated or gone (its task was aborted), if `task` is another
    /// router's (this router's tasks are left as they are), and later if the instance is
    /// deactivated before handling it; a [`DrainLimit`](DeadLetterReason::DrainLimit) one once a
    /// closing router stopped draining. (`now`, when it came back, is not needed: an outcome
    /// never leaves its receiver idle.)
    pub fn complete(&mut self, task: TaskId, msg: M, now: Instant) {
        let owner = task.owner;
        if self.finish_task(task).is_none() {
            return self.dead_letter(Recipient::Addr(owner), Some(msg), DeadLetterReason::Stale);
        }
        // A task in flight has a live instance (deactivation aborts its tasks), which no
        // longer takes outcomes once its `Deactivate` is out.
        let live = self.live(owner).map(|key| self.slots[key].state);
        if matches!(
            live,
            None | Some(State::Activating | State::Deactivating(_))
        ) {
            return self.dead_letter(Recipient::Addr(owner), Some(msg), DeadLetterReason::Stale);
        }
        if self.drained() {
            return self.dead_letter(
                Recipient::Addr(owner),
                Some(msg),
                DeadLetterReason::DrainLimit,
            );
        }
        // Queued, it makes the instance run, whose idle time then counts from the end of that
        // run. (Refused, it would leave an idle receiver to count its idle time from `now`, but
        // a receiver refuses outcomes only while deactivating, or closing: never idle then.)
        let _ = now;
        if self
            .enqueue(owner.index as usize, msg, Place::Outcome)
            .is_err()
        {
            unreachable!("an outcome is never refused");
        }
    }

    /// Says that a task ([`poll_task`](Router::poll_task)) ended without an outcome: its
    /// [`Task`] yielded `None`, or the driver dropped it unfinished. Its receiver stops waiting
    /// for it, so it can go idle (its idle time starts at `now` if that was its last task) and
    /// be deactivated as usual; the receiver is not told. A future that panicked is logged with
    /// the receiver's ID and counted in [`Stats::panics`]. A task already aborted (its receiver
    /// is gone), already completed, or another router's, is ignored.
    pub fn abandon(&mut self, task: TaskId, now: Instant) {
        let Some(ended) = self.finish_task(task) else {
            return;
        };
        // Unfinished (a driver dropped it): its future goes now, as on an abort.
        ended.shared.abort();
        let Some(key) = self.live(task.owner) else {
            return;
        };
        if let Some(panic) = ended.shared.panic() {
            self.stats.panics += 1;
            let id = &self.slots[key].id;
            tracing::error!(
                ?id,
                ?task,
                %panic,
                "a future the receiver started panicked: it ends without an outcome"
            );
        }
        // Its last task gone, an idle receiver's idle time starts now.
        let slot = &self.slots[key];
        if slot.state == State::Idle && !slot.listed() && !slot.unstamped() && !self.waiting(key) {
            let timeout_ms = idle_ms_of(slot, key, &self.idle_timeouts, &self.limits);
            if idle_is_zero(timeout_ms, &self.config) {
                self.begin_deactivation(key, Deactivation::IdleTimeout);
            } else {
                self.start_idle_time(key, timeout_ms, now);
            }
        }
    }

    /// Forgets `task`, which ended, if it is this router's and still in flight (its instance is
    /// then live: deactivation aborts, and forgets, its tasks).
    fn finish_task(&mut self, task: TaskId) -> Option<InFlight<M>> {
        let owner = task.owner;
        if owner.router != self.number || self.tasks.get(&task.seq)?.owner != owner {
            return None;
        }
        let ended = self.tasks.remove(&task.seq)?;
        let key = owner.index as usize;
        if let Some(seqs) = self.in_flight.get_mut(&key) {
            seqs.retain(|&s| s != task.seq);
            if seqs.is_empty() {
                self.in_flight.remove(&key);
            }
        }
        Some(ended)
    }

    /// Applies the effects being finished (`self.effects`), in order, and clears them.
    #[inline(always)]
    fn apply(&mut self) {
        if !self.effects.is_empty() {
            self.apply_recorded();
        }
    }

    /// [`apply`](Router::apply) when there is something to apply: the sends, then the timer
    /// operations, each list taken out of `self.effects` (routing never records effects) and
    /// put back emptied, to keep its buffer.
    fn apply_recorded(&mut self) {
        if self.effects.sends.len() == 1 && !self.fault(Fault::DropOnCheckIn) {
            // The common case: one send, popped in place (a drain costs more to set up and
            // drop, and routing records no effects).
            if let Some((to, msg)) = self.effects.sends.pop() {
                self.route_inside(to, msg);
            }
        } else if !self.effects.sends.is_empty() {
            let mut sends = std::mem::take(&mut self.effects.sends);
            let mut drained = sends.drain(..);
            if self.fault(Fault::DropOnCheckIn) {
                drained.next();
            }
            for (to, msg) in drained {
                self.route_inside(to, msg);
            }
            self.effects.sends = sends;
        }
        if !self.effects.timers.is_empty() {
            let mut timers = std::mem::take(&mut self.effects.timers);
            for op in timers.drain(..) {
                self.apply_timer(op);
            }
            self.effects.timers = timers;
        }
        self.effects.clear();
    }

    /// Applies one timer operation of a run's effects.
    fn apply_timer(&mut self, op: TimerOp<K, M>) {
        match op {
            TimerOp::Schedule {
                id,
                to,
                deadline,
                msg,
            } => {
                if self.closing {
                    self.dead_letter(Recipient::Id(to), Some(msg), DeadLetterReason::Closed);
                } else {
                    self.timers.schedule(id, deadline, to, msg);
                }
            }
            TimerOp::Cancel(id) if id.router() != self.number && self.placement.is_some() => {
                let location = Location::Shard(id.router());
                self.outbound.push_back((location, Outbound::Cancel(id)));
            }
            TimerOp::Cancel(id) => {
                self.timers.cancel(id);
            }
        }
    }

    /// Handles a `Run` or `Deactivate` inline, reading the time from `clock` (an `Instant` for a
    /// fixed time, [`SystemClock`](crate::SystemClock) for the real one). The same as
    /// [`check_out`](Router::check_out), [`Job::execute`], [`check_in`](Router::check_in) (the
    /// same batch loop and the same check-in code), without moving the receiver and its batch
    /// out and back.
    pub fn run(&mut self, addr: Addr, clock: impl Clock) -> Result<(), CommandError> {
        let key = self.live(addr).ok_or(CommandError::Stale(addr))?;
        let slot = &mut self.slots[key];
        let why = match slot.state {
            State::Scheduled => None,
            State::Deactivating(why) => Some(why),
            _ => return Err(CommandError::WrongState(addr)),
        };
        let Some(mut receiver) = slot.receiver.take() else {
            return Err(CommandError::WrongState(addr));
        };
        let clock: &dyn Clock = &clock;
        if let Some(why) = why {
            let mut ctx = Context {
                id: &slot.id,
                addr,
                clock,
                effects: &mut self.effects,
                timer_seq: &mut self.timer_seq,
                before: &mut None,
                kind: std::marker::PhantomData,
            };
            let panicked = run_deactivated(&mut *receiver, &mut ctx, why).is_err();
            self.finish_deactivation(key, addr, receiver, panicked);
            return Ok(());
        }
        // Scheduled -> Running, on the slot at hand (`set_state` would look it up again).
        slot.state = State::Running;
        self.stats.scheduled -= 1;
        self.stats.running += 1;
        // (Nothing changes it before the run's end reads it.)
        let full = slot.full();
        let batch_size = self.limits.get(slot.kind).batch_size;
        let fresh = slot.take_fresh();
        // A scheduled receiver has its mailbox open.
        let mailbox = self.mailboxes.get_mut(slot.mailbox);
        let mut ctx = Context {
            id: &slot.id,
            addr,
            clock,
            effects: &mut self.effects,
            timer_seq: &mut self.timer_seq,
            before: &mut None,
            kind: std::marker::PhantomData,
        };
        // The messages a check-out would take: the mailbox cannot grow meanwhile (sends are
        // effects, applied afterwards).
        let (handled, ending) = run_batch(&mut receiver, &mut ctx, fresh, mailbox, batch_size);
        take_outcomes(&mut self.outcomes, key, ending.consumed(handled));
        // Idle time counts from the end of the run, not from when the driver last looked (or,
        // deferred, from the next `stamp_idle`, later still).
        let now = (!self.defer_idle).then(|| clock.now());
        self.finish_run(key, addr, receiver, handled, ending, now, full);
        Ok(())
    }

    /// Handles any command inline: the one place where commands become work, for every driver
    /// (the executors' shards, [`Driver`](crate::Driver), the simulator and the checker).
    ///
    /// `Activate` calls `factory`; a factory that panics fails the activation like one that
    /// returns [`Activation::Failed`] (its queued messages become
    /// [`FactoryFailed`](DeadLetterReason::FactoryFailed) dead letters). `Run` and `Deactivate`
    /// run the receiver inline ([`run`](Router::run)), whose panics are caught too.
    pub fn handle(
        &mut self,
        command: Command,
        factory: &(impl Factory<K, M> + ?Sized),
        clock: impl Clock,
    ) -> Result<(), CommandError> {
        match command {
            Command::Activate(addr) => {
                let key = self.live(addr).ok_or(CommandError::Stale(addr))?;
                let id = &self.slots[key].id;
                let activation = match catch_unwind(AssertUnwindSafe(|| factory.create(id))) {
                    Ok(activation) => activation,
                    Err(panic) => {
                        let why = panic_message(panic);
                        tracing::warn!(?addr, %why, "the factory panicked; activation failed");
                        self.stats.panics += 1;
                        Activation::failed(FactoryPanicked(why))
                    }
                };
                self.activate_at(key, addr, activation)
            }
            Command::Run(addr) | Command::Deactivate(addr) => self.run(addr, clock),
        }
    }

    // ---- time ---------------------------------------------------------------------------------

    /// Defers idle time, for a driver that runs many receivers between two reads of its clock:
    /// from now on, a receiver whose run ends with nothing queued takes the start of its idle
    /// time from the next [`stamp_idle`](Router::stamp_idle), not from a clock read when its run
    /// ends. That saves a clock read per run, and only ever starts idle time later than the run
    /// ended (a receiver is never deactivated sooner than its idle timeout allows). The driver
    /// must call `stamp_idle` after the runs of each turn, before it waits on
    /// [`poll_timeout`](Router::poll_timeout): until then those receivers have no idle deadline.
    /// The executors' shards do; the inline [`Driver`](crate::Driver) does not need to.
    pub fn defer_idle_time(&mut self) {
        self.defer_idle = true;
    }

    /// True if receivers went idle since the last [`stamp_idle`](Router::stamp_idle) while
    /// idle time was deferred.
    #[inline]
    pub fn has_unstamped(&self) -> bool {
        !self.unstamped.is_empty()
    }

    /// Starts, at `now`, the idle time of the receivers that went idle since the last call
    /// while idle time was deferred ([`defer_idle_time`](Router::defer_idle_time)). Pass a time
    /// read after their runs ended.
    pub fn stamp_idle(&mut self, now: Instant) {
        // (Stamping queues nothing here.)
        for i in 0..self.unstamped.len() {
            self.stamp(self.unstamped[i] as usize, now);
        }
        self.unstamped.clear();
    }

    /// Fires every timer due at `now` in deadline order (ties in scheduling order) and
    /// deactivates receivers idle past their timeout.
    #[inline]
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = if self.fault(Fault::EarlyTimer) {
            now + Duration::from_millis(1)
        } else {
            now
        };
        // Most calls find nothing due: tell that cheaply (inline, in the caller), comparing the
        // oldest idle receiver's deadline in ticks rather than building it as an `Instant`.
        if self.timers.due(now) || self.list_may_be_due(now) {
            self.fire_due(now);
        }
    }

    /// [`handle_timeout`](Router::handle_timeout) when something may be due.
    #[inline(never)]
    fn fire_due(&mut self, now: Instant) {
        loop {
            // Timers and idle checks in the heap due up to the oldest idle receiver's deadline
            // go first (ties included), then that receiver: all in deadline order.
            let idle_due = self.list_deadline().filter(|at| *at <= now);
            match self.timers.pop_due(idle_due.unwrap_or(now)) {
                Some(Fired::User(p)) => self.route_inside(Recipient::Id(p.to), p.msg),
                // Judged as of the check's own deadline, not `now`: a timer message due
                // before the receiver's idle deadline must find it live, however late this
                // call comes.
                Some(Fired::Idle(addr, at)) => self.check_idle(addr, at),
                Some(Fired::Task(seq)) => {
                    // Ends the ask with `Timeout` unless its answer came first.
                    if let Some(expiry) = self.tasks.get(&seq).and_then(|t| t.expiry.as_ref()) {
                        expiry.expire();
                    }
                }
                None if idle_due.is_some() => {
                    let head = self.idle.head as usize;
                    self.begin_deactivation(head, Deactivation::IdleTimeout);
                }
                None => break,
            }
        }
    }

    /// False if the oldest receiver on the idle list is certainly not due at `now` (nor is any
    /// other: the list is in deadline order); true if it may be, for `list_deadline` to tell.
    /// Exact in ticks: its deadline is `epoch + since + timeout`, and `ticks(now)` is `now -
    /// epoch` (0 before the epoch, where nothing is due), saturating only where both sides do.
    #[inline]
    fn list_may_be_due(&mut self, now: Instant) -> bool {
        let Some(head) = self.slots.get(self.idle.head as usize) else {
            return false;
        };
        let due = head.idle_since.saturating_add(self.idle_timeout_ns);
        due <= self.ticks.at(now)
    }

    fn check_idle(&mut self, addr: Addr, now: Instant) {
        let Some(key) = self.live(addr) else { return };
        let slot = &mut self.slots[key];
        slot.set_idle_armed(false);
        // Not idle: re-armed when it next becomes idle. On the idle list (a later instance on
        // the default timeout): the list keeps its deadline. Idle time not started yet: armed
        // when it is (`stamp_idle`).
        if slot.state != State::Idle || slot.listed() || slot.unstamped() || self.waiting(key) {
            return;
        }
        let timeout = self.idle_timeout_of(key);
        let since = self.slots[key].idle_since;
        let elapsed = Duration::from_nanos(self.ticks.at(now).saturating_sub(since));
        if elapsed >= timeout {
            self.begin_deactivation(key, Deactivation::IdleTimeout);
        } else if let Some(at) = crate::deadline(now, timeout - elapsed) {
            self.slots[key].set_idle_armed(true);
            self.timers.arm_idle(Some(at), addr);
        }
    }

    // ---- close --------------------------------------------------------------------------------

    /// Starts closing: outside sends are refused from now on, pending timers become dead
    /// letters, queued messages drain, and every live receiver is deactivated exactly once, as
    /// soon as its own mailbox is empty (an idle one at once; see the crate docs, "Closing").
    /// [`is_closed`](Router::is_closed) turns true when that is done.
    pub fn close(&mut self) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.drain_left = self.config.drain_limit;
        for p in self.timers.drain() {
            self.dead_letter(Recipient::Id(p.to), Some(p.msg), DeadLetterReason::Closed);
        }
        if self.drained() {
            self.stop_draining();
        }
        let idle: Vec<usize> = self
            .slots
            .iter()
            .filter(|(_, s)| s.state == State::Idle)
            .map(|(k, _)| k)
            .collect();
        for key in idle {
            self.begin_deactivation(key, Deactivation::Closing);
        }
    }
}

impl<K, M> std::fmt::Debug for Router<K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("number", &self.number)
            .field("config", &self.config)
            .field("closing", &self.closing)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<K, M> Rejected<K, M> {
    fn new(to: Recipient<K>, msg: M, kind: SendErrorKind) -> Self {
        Rejected { to, msg, kind }
    }

    fn into_error(self) -> SendError<M> {
        match self.kind {
            SendErrorKind::Closed => SendError::Closed(self.msg),
            SendErrorKind::Full => SendError::Full(self.msg),
            SendErrorKind::Stale => SendError::Stale(self.msg),
            SendErrorKind::Unreachable => SendError::Unreachable(self.msg),
        }
    }
}

/// The error a failed activation carries when the factory panicked.
#[derive(Debug)]
struct FactoryPanicked(Arc<str>);

impl std::fmt::Display for FactoryPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the factory panicked: {}", self.0)
    }
}

impl std::error::Error for FactoryPanicked {}

/// The error a failed activation carries when the `activated` hook panicked.
#[derive(Debug)]
struct ActivationPanic(Arc<str>);

impl std::fmt::Display for ActivationPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the activated hook panicked: {}", self.0)
    }
}

impl std::error::Error for ActivationPanic {}
