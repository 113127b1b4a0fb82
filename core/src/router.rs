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
use crate::job::{Ending, Work, run_batch, run_deactivated};
use crate::slot::{DEFAULT_IDLE, NEVER_IDLE, NIL, Slot, State};
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
    /// The bound of every mailbox, if any; see [`Config::mailbox_capacity()`].
    pub mailbox_capacity: Option<usize>,
    /// Most messages one `Run` handles; see [`Config::batch_size()`].
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
    /// counted in [`Stats::dead_letters_dropped`], logged, and dropped.
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

/// A deliberate bug, for proving that an invariant checker catches it.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
/// - [`poll_timeout`](Router::poll_timeout): when to call `handle_timeout` next.
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
    dead_letters: VecDeque<DeadLetter<K, M>>,
    closing: bool,
    /// Deliveries left before a closing router stops draining.
    drain_left: u64,
    epoch: Option<Instant>,
    /// The last `now` turned into ticks, and its ticks.
    clock: Option<(Instant, u64)>,
    /// Idle receivers on the router's default timeout, oldest first: their idle deadlines
    /// are in list order, so idle deactivation needs no timer entry per receiver.
    idle_head: u32,
    idle_tail: u32,
    /// Sequence for the IDs of timers receivers schedule (unique per receiver handle).
    timer_seq: u32,
    stats: Stats,
    /// Mailboxes that reached or left their capacity, for a driver that asked for them.
    pressure: Option<VecDeque<Pressure<K>>>,
    /// Tasks receivers started, by number, not yet completed or aborted.
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
    /// Empty mailbox buffers, reused by receivers that get messages (idle ones hold none).
    spare_batches: Vec<VecDeque<M>>,
    spare_effects: Vec<Effects<K, M>>,
    /// The effects of the run being finished: recorded here in place by an inline run, swapped
    /// in from a checked-in job.
    effects: Effects<K, M>,
    #[cfg(feature = "fault-injection")]
    fault: Option<Fault>,
}

/// How many spare mailbox buffers a router keeps, and the largest it keeps (in messages).
const SPARE_BUFFERS: usize = 1024;
const SPARE_BUFFER_CAPACITY: usize = 64;

/// A task handed out and not yet completed or aborted.
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
        Router {
            drain_left: config.drain_limit,
            config,
            number,
            placement,
            kinds: None,
            outbound: VecDeque::new(),
            slots: Slab::new(),
            generations: Vec::new(),
            index: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            timers: Timers::default(),
            commands: VecDeque::new(),
            dead_letters: VecDeque::new(),
            closing: false,
            epoch: None,
            clock: None,
            idle_head: NIL,
            idle_tail: NIL,
            timer_seq: 0,
            stats: Stats::default(),
            pressure: None,
            tasks: hashbrown::HashMap::new(),
            in_flight: hashbrown::HashMap::new(),
            outcomes: hashbrown::HashMap::new(),
            task_seq: 0,
            tasks_out: VecDeque::new(),
            spare_batches: Vec::new(),
            spare_effects: Vec::new(),
            effects: Effects::default(),
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
        self.kinds = kinds;
    }

    /// The settings of `kind`, if the router has kinds.
    #[inline]
    fn settings(&self, kind: u8) -> Option<&Settings> {
        self.kinds.as_ref()?.settings.get(usize::from(kind))
    }

    /// The mailbox capacity of receivers of `kind`.
    #[inline]
    fn capacity(&self, kind: u8) -> Option<usize> {
        self.settings(kind)
            .and_then(|s| s.mailbox_capacity)
            .or(self.config.mailbox_capacity)
    }

    /// Most messages one run of a receiver of `kind` handles.
    #[inline]
    fn batch_size(&self, kind: u8) -> usize {
        self.settings(kind)
            .and_then(|s| s.batch_size)
            .unwrap_or(self.config.batch_size)
    }

    /// The idle timeout a new instance of `kind` starts with, as slots store it.
    #[inline]
    fn kind_idle_ms(&self, kind: u8) -> u32 {
        match self.settings(kind).and_then(|s| s.idle_timeout) {
            Some(timeout) => idle_ms(timeout),
            None => DEFAULT_IDLE,
        }
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

    /// The next command for the driver, in the order they arose.
    #[must_use = "every command must be handled once"]
    pub fn poll_command(&mut self) -> Option<Command> {
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
    /// [`complete`](Router::complete). See [`Task`].
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

    /// Tasks started and not yet completed or aborted.
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
        let head = self.slots.get(self.idle_head as usize)?;
        let since = self
            .epoch?
            .checked_add(Duration::from_nanos(head.idle_since))?;
        crate::deadline(since, self.config.idle_timeout)
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
        self.route(Recipient::Id(to), msg, From::Outside)
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

    /// Where `id` lives, if not here.
    fn elsewhere(&self, id: &K) -> Option<Location> {
        let location = self.placement.as_ref()?.locate(id);
        (location != Location::Shard(self.number)).then_some(location)
    }

    fn route(&mut self, to: Recipient<K>, msg: M, from: From) -> Result<(), Rejected<K, M>> {
        if from == From::Outside && self.closing {
            return Err(Rejected::new(to, msg, SendErrorKind::Closed));
        }
        let key = match &to {
            Recipient::Addr(addr) if addr.router != self.number => {
                self.stats.messages_forwarded += 1;
                let location = Location::Shard(addr.router);
                self.outbound
                    .push_back((location, Outbound::Message(to, msg)));
                return Ok(());
            }
            Recipient::Addr(addr) => match self.live(*addr) {
                Some(key) => key,
                None => return Err(Rejected::new(to, msg, SendErrorKind::Stale)),
            },
            Recipient::Id(id) => {
                let hash = self.hasher.hash_one(id);
                match self.lookup_hashed(hash, id) {
                    Some(key) => key,
                    None if let Some(location) = self.elsewhere(id) => {
                        self.stats.messages_forwarded += 1;
                        self.outbound
                            .push_back((location, Outbound::Message(to, msg)));
                        return Ok(());
                    }
                    None if self.closing => {
                        return Err(Rejected::new(to, msg, SendErrorKind::Closed));
                    }
                    None => {
                        let Recipient::Id(id) = to else {
                            unreachable!()
                        };
                        self.insert(id, hash, msg);
                        return Ok(());
                    }
                }
            }
        };
        let slot = &mut self.slots[key];
        if self.closing && matches!(slot.state, State::Deactivating(_)) {
            return Err(Rejected::new(to, msg, SendErrorKind::Closed));
        }
        let (kind, queued) = (slot.kind, slot.mailbox.len());
        let capacity = self.capacity(kind);
        if from != From::Admitted && capacity.is_some_and(|cap| queued >= cap) {
            return Err(Rejected::new(to, msg, SendErrorKind::Full));
        }
        self.enqueue(key, msg, false, capacity);
        Ok(())
    }

    /// Queues `msg` for the receiver at `key`: at the back, or, for a task's `outcome`, behind
    /// the outcomes at the front. Tells the driver if the mailbox reached `capacity`, and
    /// schedules an idle receiver.
    #[inline]
    fn enqueue(&mut self, key: usize, msg: M, outcome: bool, capacity: Option<usize>) {
        let slot = &mut self.slots[key];
        if slot.mailbox.capacity() == 0
            && let Some(buffer) = self.spare_batches.pop()
        {
            slot.mailbox = buffer;
        }
        if outcome {
            let ahead = self.outcomes.entry(key).or_insert(0);
            slot.mailbox.insert(*ahead, msg);
            *ahead += 1;
        } else {
            slot.mailbox.push_back(msg);
        }
        let queued = slot.mailbox.len();
        let idle = slot.state == State::Idle;
        if capacity.is_some_and(|cap| queued >= cap) {
            self.fill(key);
        }
        self.stats.messages_routed += 1;
        if idle {
            self.set_state(key, State::Scheduled);
            self.commands.push_back(Command::Run(self.addr_of(key)));
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
        let mut mailbox = self.spare_batches.pop().unwrap_or_default();
        mailbox.push_back(msg);
        let kind = self
            .kinds
            .as_ref()
            .map_or(0, |k| u8::try_from(k.kind_of(&id)).unwrap_or(u8::MAX));
        let mut slot = Slot::new(id, mailbox);
        slot.kind = kind;
        slot.idle_timeout_ms = self.kind_idle_ms(kind);
        let inserted = self.slots.insert(slot);
        debug_assert_eq!(inserted, key);
        if self.capacity(kind).is_some_and(|cap| cap <= 1) {
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
        self.relieve(key);
        self.unlink(key);
        let state = self.slots[key].state;
        self.count(state, false);
        self.stats.live -= 1;
        let hash = self.hasher.hash_one(&self.slots[key].id);
        if let Ok(entry) = self.index.find_entry(hash, |&k| k as usize == key) {
            entry.remove();
        }
        if !self.outcomes.is_empty() {
            self.outcomes.remove(&key);
        }
        let slot = self.slots.remove(key);
        debug_assert!(slot.mailbox.is_empty());
        self.spare_batch(slot.mailbox);
    }

    #[inline]
    fn set_state(&mut self, key: usize, state: State) {
        let old = std::mem::replace(&mut self.slots[key].state, state);
        if old == State::Idle {
            self.unlink(key);
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

    #[inline]
    fn ticks(&mut self, now: Instant) -> u64 {
        if let Some((then, ticks)) = self.clock
            && then == now
        {
            return ticks;
        }
        let epoch = *self.epoch.get_or_insert(now);
        let ticks = now.saturating_duration_since(epoch).as_nanos() as u64;
        self.clock = Some((now, ticks));
        ticks
    }

    #[inline]
    fn idle_timeout_of(&self, key: usize) -> Duration {
        match self.slots[key].idle_timeout_ms {
            DEFAULT_IDLE => self.config.idle_timeout,
            NEVER_IDLE => Duration::MAX,
            ms => Duration::from_millis(ms.into()),
        }
    }

    /// The receiver at `key` has nothing queued and is not running.
    fn become_idle(&mut self, key: usize, now: Instant) {
        if self.closing {
            return self.begin_deactivation(key, Deactivation::Closing);
        }
        // Waiting for work it started: idle, but its idle time starts when the work is back.
        let waiting = self.waiting(key);
        let timeout = self.idle_timeout_of(key);
        if timeout.is_zero() && !waiting {
            return self.begin_deactivation(key, Deactivation::IdleTimeout);
        }
        self.set_state(key, State::Idle);
        // An idle receiver holds no mailbox buffer.
        let buffer = std::mem::take(&mut self.slots[key].mailbox);
        self.spare_batch(buffer);
        if waiting {
            return;
        }
        let since = self.ticks(now);
        if self.slots[key].idle_timeout_ms == DEFAULT_IDLE {
            return self.list_push(key, since);
        }
        let addr = self.addr_of(key);
        let slot = &mut self.slots[key];
        slot.idle_since = since;
        if !slot.idle_armed() && slot.idle_timeout_ms != NEVER_IDLE {
            slot.set_idle_armed(true);
            self.timers.arm_idle(crate::deadline(now, timeout), addr);
        }
    }

    /// Appends an idle receiver on the default timeout to the idle list.
    #[inline]
    fn list_push(&mut self, key: usize, since: u64) {
        let tail = self.idle_tail;
        // Keep the list in deadline order even if a driver's clock stepped back.
        let since = match tail {
            NIL => since,
            t => since.max(self.slots[t as usize].idle_since),
        };
        let slot = &mut self.slots[key];
        slot.idle_since = since;
        slot.set_listed(true);
        slot.idle_prev = tail;
        slot.idle_next = NIL;
        match tail {
            NIL => self.idle_head = key as u32,
            t => self.slots[t as usize].idle_next = key as u32,
        }
        self.idle_tail = key as u32;
    }

    /// Takes a receiver off the idle list, if it is on it.
    #[inline]
    fn unlink(&mut self, key: usize) {
        let slot = &mut self.slots[key];
        if !slot.listed() {
            return;
        }
        slot.set_listed(false);
        let (prev, next) = (slot.idle_prev, slot.idle_next);
        match prev {
            NIL => self.idle_head = next,
            p => self.slots[p as usize].idle_next = next,
        }
        match next {
            NIL => self.idle_tail = prev,
            n => self.slots[n as usize].idle_prev = prev,
        }
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
        if self.slots[key].mailbox.is_empty() {
            return;
        }
        if !self.outcomes.is_empty() {
            self.outcomes.remove(&key);
        }
        let mut mailbox = std::mem::take(&mut self.slots[key].mailbox);
        let id = self.slots[key].id.clone();
        for msg in mailbox.drain(..) {
            self.dead_letter(Recipient::Id(id.clone()), Some(msg), reason.clone());
        }
        self.spare_batch(mailbox);
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
        for _ in 0..ahead {
            let msg = self.slots[key].mailbox.pop_front();
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
        if slot.mailbox.len() <= self.capacity(slot.kind).unwrap_or(0) / 2 {
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
        let mailbox = &mut self.slots[key].mailbox;
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
        self.spare_batch(rest);
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

    #[inline]
    fn spare_batch(&mut self, mut batch: VecDeque<M>) {
        let capacity = batch.capacity();
        if capacity > 0
            && capacity <= SPARE_BUFFER_CAPACITY
            && self.spare_batches.len() < SPARE_BUFFERS
        {
            batch.clear();
            self.spare_batches.push(batch);
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
        let slot = &mut self.slots[key];
        if slot.state != State::Activating {
            return Err(CommandError::WrongState(addr));
        }
        match activation {
            Activation::Ready(receiver) => {
                slot.receiver = Some(receiver);
                slot.set_fresh(true);
                self.stats.activations += 1;
                // Always a first run, even with an empty mailbox (a closing router emptied it at
                // its drain limit): the `activated` hook runs before anything else.
                self.set_state(key, State::Scheduled);
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
                let n = slot.mailbox.len().min(batch_size);
                let batch = if n == slot.mailbox.len() {
                    std::mem::take(&mut slot.mailbox)
                } else {
                    let mut batch = self.spare_batches.pop().unwrap_or_default();
                    batch.extend(slot.mailbox.drain(..n));
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
            self.finish_run(key, addr, receiver, handled, ending, now);
        }
        Ok(())
    }

    /// The end of a run, inline or checked in: applies its effects (in `self.effects`) and moves
    /// the receiver on in its lifecycle.
    fn finish_run(
        &mut self,
        key: usize,
        addr: Addr,
        receiver: Box<dyn Receiver<K, M>>,
        handled: u64,
        ending: Ending,
        now: Instant,
    ) {
        if let Some(timeout) = self.effects.idle_timeout.take() {
            let slot = &mut self.slots[key];
            let ms = idle_ms(timeout);
            let current = match slot.idle_timeout_ms {
                DEFAULT_IDLE => self.config.idle_timeout_ms(),
                ms => ms,
            };
            let shorter = ms < current;
            slot.idle_timeout_ms = ms;
            if shorter {
                // The armed idle check may be later than the new deadline: arm another.
                slot.set_idle_armed(false);
            }
        }
        self.stats.messages_delivered += handled;
        self.relieve_if_room(key);
        self.start_tasks(key, addr);
        self.apply();
        if self.closing && handled > 0 {
            self.count_drained(handled);
        }
        if self.drained() {
            self.fail_mailbox(key, DeadLetterReason::DrainLimit);
        }

        let injected = self.fault(Fault::DeactivateNonEmpty);
        let slot = &mut self.slots[key];
        match ending {
            Ending::Finished => {
                slot.receiver = Some(receiver);
                if injected && !slot.mailbox.is_empty() {
                    self.begin_deactivation(key, Deactivation::Stopped);
                } else if slot.mailbox.is_empty() {
                    self.become_idle(key, now);
                } else {
                    self.set_state(key, State::Scheduled);
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
        self.effects.tasks.clear();
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
        let slot = &mut self.slots[key];
        slot.set_idle_armed(false);
        let kind = slot.kind;
        self.slots[key].idle_timeout_ms = self.kind_idle_ms(kind);
        let slot = &mut self.slots[key];
        if slot.mailbox.is_empty() {
            self.remove(key);
        } else {
            // Messages arrived during deactivation: activate a fresh instance.
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
        let ours = owner.router == self.number
            && self.tasks.get(&task.seq).is_some_and(|t| t.owner == owner);
        if !ours {
            return self.dead_letter(Recipient::Addr(owner), Some(msg), DeadLetterReason::Stale);
        }
        self.tasks.remove(&task.seq);
        let key = owner.index as usize;
        if let Some(seqs) = self.in_flight.get_mut(&key) {
            seqs.retain(|&s| s != task.seq);
            if seqs.is_empty() {
                self.in_flight.remove(&key);
            }
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
        let capacity = self.capacity(self.slots[key].kind);
        self.enqueue(key, msg, true, capacity);
    }

    /// Applies what a receiver asked for, in order.
    /// Applies the effects being finished (`self.effects`) and clears them.
    #[inline]
    fn apply(&mut self) {
        if !self.effects.sends.is_empty() || !self.effects.timers.is_empty() {
            let mut effects = std::mem::take(&mut self.effects);
            self.apply_sends_and_timers(&mut effects);
            self.effects = effects;
        }
        self.effects.clear();
    }

    fn apply_sends_and_timers(&mut self, effects: &mut Effects<K, M>) {
        let mut sends = std::mem::take(&mut effects.sends);
        let mut drained = sends.drain(..);
        if self.fault(Fault::DropOnCheckIn) {
            drained.next();
        }
        for (to, msg) in drained {
            self.route_inside(to, msg);
        }
        effects.sends = sends;
        let mut timers = std::mem::take(&mut effects.timers);
        for op in timers.drain(..) {
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
        effects.timers = timers;
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
                id: &self.slots[key].id,
                addr,
                clock,
                effects: &mut self.effects,
                timer_seq: &mut self.timer_seq,
                kind: std::marker::PhantomData,
            };
            let panicked = run_deactivated(&mut *receiver, &mut ctx, why).is_err();
            self.finish_deactivation(key, addr, receiver, panicked);
            return Ok(());
        }
        self.set_state(key, State::Running);
        let mut left = self.batch_size(self.slots[key].kind);
        let fresh = self.slots[key].take_fresh();
        let Slot { id, mailbox, .. } = &mut self.slots[key];
        let mut ctx = Context {
            id,
            addr,
            clock,
            effects: &mut self.effects,
            timer_seq: &mut self.timer_seq,
            kind: std::marker::PhantomData,
        };
        // The messages a check-out would take: the mailbox cannot grow meanwhile (sends are
        // effects, applied afterwards).
        let next = || {
            left = left.checked_sub(1)?;
            mailbox.pop_front()
        };
        let (handled, ending) = run_batch(&mut receiver, &mut ctx, fresh, next);
        take_outcomes(&mut self.outcomes, key, ending.consumed(handled));
        // Idle time counts from the end of the run, not from when the driver last looked.
        let now = clock.now();
        self.finish_run(key, addr, receiver, handled, ending, now);
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
                let id = self.id(addr).ok_or(CommandError::Stale(addr))?;
                let activation = match catch_unwind(AssertUnwindSafe(|| factory.create(id))) {
                    Ok(activation) => activation,
                    Err(panic) => {
                        let why = panic_message(panic);
                        tracing::warn!(?addr, %why, "the factory panicked; activation failed");
                        self.stats.panics += 1;
                        Activation::failed(FactoryPanicked(why))
                    }
                };
                self.activate(addr, activation)
            }
            Command::Run(addr) | Command::Deactivate(addr) => self.run(addr, clock),
        }
    }

    // ---- time ---------------------------------------------------------------------------------

    /// Fires every timer due at `now` in deadline order (ties in scheduling order) and
    /// deactivates receivers idle past their timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = if self.fault(Fault::EarlyTimer) {
            now + Duration::from_millis(1)
        } else {
            now
        };
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
                    let head = self.idle_head as usize;
                    self.begin_deactivation(head, Deactivation::IdleTimeout);
                }
                None => break,
            }
        }
    }

    fn check_idle(&mut self, addr: Addr, now: Instant) {
        let Some(key) = self.live(addr) else { return };
        let slot = &mut self.slots[key];
        slot.set_idle_armed(false);
        // Not idle: re-armed when it next becomes idle. On the idle list (a later instance on
        // the default timeout): the list keeps its deadline.
        if slot.state != State::Idle || slot.listed() || self.waiting(key) {
            return;
        }
        let timeout = self.idle_timeout_of(key);
        let since = self.slots[key].idle_since;
        let elapsed = Duration::from_nanos(self.ticks(now).saturating_sub(since));
        if elapsed >= timeout {
            self.begin_deactivation(key, Deactivation::IdleTimeout);
        } else if let Some(at) = crate::deadline(now, timeout - elapsed) {
            self.slots[key].set_idle_armed(true);
            self.timers.arm_idle(Some(at), addr);
        }
    }

    // ---- close --------------------------------------------------------------------------------

    /// Starts closing: outside sends are refused from now on, pending timers become dead
    /// letters, queued messages drain, and then every live receiver is deactivated exactly once.
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
