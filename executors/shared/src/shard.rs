//! One shard: a single-threaded [`Router`] plus the decisions of the loop that drives it.
//!
//! [`Shard::turn`] does every piece of work that is ready and says what the executor should do
//! next: go again, park until a wake or a deadline, or exit. An executor is the loop around it,
//! and so is the simulator: this is the one drive loop.

use std::cell::Cell;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hermes_core::{
    Clock, Command, DeadLetter, DeadLetterReason, Location, NodeId, Outbound, Placement, Pressure,
    Recipient, Router, SharedFactory, Stats, SystemClock, panic_message,
};

use crate::crew::Watch;
use crate::inbox::{self, Envelope, Inbox, Limit, Refusal, Scheduled};
use crate::options::{Budget, DeadLetterSink, ShardFault};
use crate::remote::Release;
use crate::{Key, Message};
use hermes_reply::{Signal, poll_briefly};

/// What the executor does after a [`turn`](Shard::turn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// More work is ready: turn again (an async executor yields first).
    Busy,
    /// Nothing to do: wait for a [`Wake`](crate::Wake) or until the deadline, then turn again.
    Park(Option<Instant>),
    /// The shard has closed: drop it and end its thread or task.
    Exit,
}

/// State the shards and the handle share. Nothing here belongs to the application: what does
/// (the factory, the dead-letter sink) is owned by the shards, and dropped before they finish.
pub(crate) struct Core<K, M> {
    pub(crate) inboxes: Box<[Inbox<K, M>]>,
    /// Where every ID lives: the one placement the handle and the routers ask.
    pub(crate) placement: Arc<dyn Placement<K>>,
    /// False once shutdown has begun: the handle refuses new messages.
    pub(crate) accepting: AtomicBool,
    /// The counter behind IDs of timers scheduled from outside.
    pub(crate) timer_seq: AtomicU64,
    /// Each shard's stats as of its last turn.
    pub(crate) stats: Box<[Mutex<Stats>]>,
    pub(crate) finish: Arc<Finish>,
    /// Runs the tasks receivers start.
    pub(crate) runtime: Arc<dyn crate::Runtime>,
    /// Takes messages for other nodes of a cluster; `None` on a single process.
    pub(crate) remote: Option<Arc<dyn crate::Remote<K, M>>>,
}

impl<K: 'static, M> Core<K, M> {
    /// Where the handle takes a message for `id`: where placement puts it, except that an ID
    /// placed on no shard of ours (a placement bug) goes to shard 0, whose router finds it
    /// placed elsewhere and makes it a [`Stale`](hermes_core::DeadLetterReason::Stale) dead
    /// letter, as it does for such a send from a receiver.
    pub(crate) fn locate(&self, id: &K) -> Location {
        self.on_our_shard(self.placement.locate(id))
    }
}

impl<K, M> Core<K, M> {
    /// Tells every shard to start closing (a shard that already finished refuses it).
    pub(crate) fn close_shards(&self) {
        for inbox in self.inboxes.iter() {
            let _ = inbox.push(Envelope::Close, Limit::Control);
        }
    }

    /// `location`, or shard 0 if it is a shard that is not ours (see [`locate`](Core::locate)).
    pub(crate) fn on_our_shard(&self, location: Location) -> Location {
        match location {
            Location::Shard(n) if n as usize >= self.inboxes.len() => Location::Shard(0),
            location => location,
        }
    }

    /// The inbox of the shard at `location`, if it is one of ours.
    pub(crate) fn inbox(&self, location: Location) -> Option<&Inbox<K, M>> {
        match location {
            Location::Shard(n) => self.inboxes.get(n as usize),
            _ => None,
        }
    }

    fn publish(&self, index: u32, stats: Stats) {
        *self.stats[index as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = stats;
    }

    fn published(&self, index: u32) -> Stats {
        *self.stats[index as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Counts shards down to zero, summing their final stats.
pub(crate) struct Finish {
    left: Mutex<(usize, Stats)>,
    pub(crate) done: Signal<Stats>,
}

impl Finish {
    pub(crate) fn new(shards: usize) -> Self {
        Finish {
            left: Mutex::new((shards, Stats::default())),
            done: Signal::default(),
        }
    }

    fn arrive(&self, stats: Stats) {
        let mut left = self.left.lock().unwrap_or_else(PoisonError::into_inner);
        left.0 -= 1;
        left.1 += stats;
        if left.0 == 0 {
            let _ = self.done.set(left.1);
        }
    }
}

thread_local! {
    static IN_SHARD: Cell<bool> = const { Cell::new(false) };
    /// This thread has run a shard task: blocking it may stop a shard (see `hosts_shards`).
    static HOSTS_SHARDS: Cell<bool> = const { Cell::new(false) };
}

/// True on a thread that has run a shard as an async task ([`Shard::run_async`]): an async
/// runtime's worker, where blocking could stop the very shards it waits for. For
/// [`Runtime::block`](crate::Runtime::block) implementations.
pub fn hosts_shards() -> bool {
    HOSTS_SHARDS.with(Cell::get)
}

/// True on a thread that is running a shard's turn (inside a receiver, a factory, a sink).
pub(crate) fn in_shard() -> bool {
    IN_SHARD.with(Cell::get)
}

/// After a turn that found nothing to do, watches the shard's `inbox` without sleeping for a
/// short while (see [`poll_briefly`]): true if mail came, false if the shard is parked again
/// and its thread should sleep (until a wake or the deadline). While watching, the shard counts
/// as awake, so senders do not ring its bell. Only after a turn: an idle shard sleeps.
pub(crate) fn mail_soon<K, M>(inbox: &Inbox<K, M>, deadline: Option<Instant>) -> bool {
    inbox.watch(|pending| poll_briefly(deadline, pending))
}

/// Marks the current thread as running a shard while it lives.
struct InShard(bool);

impl InShard {
    fn enter() -> Self {
        InShard(IN_SHARD.with(|s| s.replace(true)))
    }
}

impl Drop for InShard {
    fn drop(&mut self) {
        IN_SHARD.with(|s| s.set(self.0));
    }
}

/// One shard: its router, and everything needed to drive it. Get the shards from
/// [`launch`](crate::launch), run each with [`turn`](Shard::turn) in a loop (or
/// [`run_blocking`](Shard::run_blocking) / [`run_async`](Shard::run_async)), and drop it after
/// [`Turn::Exit`].
///
/// Dropped before it exited (say, its async runtime shut down without a shutdown of Hermes), a
/// shard closes on the dropping thread: its queued messages drain and every live receiver's
/// `deactivated` hook runs, so durable state is saved. Either way the handle learns the shard
/// has finished only after everything it owned (receivers, the factory) has been dropped.
pub struct Shard<K: Key, M: Message> {
    index: u32,
    router: Router<K, M>,
    core: Arc<Core<K, M>>,
    factory: SharedFactory<K, M>,
    sink: Option<DeadLetterSink<K, M>>,
    budget: Budget,
    /// Inbox items taken this turn: swapped with the inbox's buffer, to keep both capacities.
    /// Empty between turns.
    taken: Vec<Envelope<K, M>>,
    /// Inbox items taken and not yet accepted, oldest first: what a turn's budget left of a
    /// burst. The buffer moves here whole from `taken` and back once it has drained.
    incoming: VecDeque<Envelope<K, M>>,
    /// Work for each other shard, sent in one push per shard per turn.
    outgoing: Vec<Vec<Envelope<K, M>>>,
    /// Since it last parked, the shard took mail or sent some to another shard: an answer may
    /// be on its way, worth watching for before sleeping (a timer tick alone is not).
    conversing: bool,
    /// Since it was last asked ([`Unit::watch`](crate::crew::Unit::watch)), the shard sent mail
    /// to another shard of this process.
    sent_inside: bool,
    /// A command polled when the turn's budget ran out.
    carry: Option<Command>,
    /// Mail for receivers on other nodes, per node, handed to the transport once per turn.
    remote_out: Vec<(NodeId, Vec<(K, M)>)>,
    /// Hand-offs waiting for this shard's receivers that moved to another node to be gone.
    releases: Vec<Arc<Release>>,
    /// Dead letters this shard made itself (the router counts its own).
    dead_letters: u64,
    exited: bool,
    #[cfg(feature = "fault-injection")]
    fault: Option<ShardFault>,
    /// Declared last, so dropped last: tells the handle this shard has finished.
    _finished: Arrival<K, M>,
}

/// Reports a shard's final stats to [`Finish`] when dropped, after every other field.
struct Arrival<K, M> {
    index: u32,
    core: Arc<Core<K, M>>,
}

impl<K, M> Drop for Arrival<K, M> {
    fn drop(&mut self) {
        self.core.finish.arrive(self.core.published(self.index));
    }
}

impl<K: Key, M: Message> std::fmt::Debug for Shard<K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("index", &self.index)
            .field("stats", &self.router.stats())
            .finish_non_exhaustive()
    }
}

impl<K: Key, M: Message> Shard<K, M> {
    pub(crate) fn new(
        index: u32,
        router: Router<K, M>,
        core: Arc<Core<K, M>>,
        factory: SharedFactory<K, M>,
        sink: Option<DeadLetterSink<K, M>>,
        budget: Budget,
        _fault: Option<ShardFault>,
    ) -> Self {
        let mut router = router;
        router.report_pressure();
        // One clock read per turn for the idle time of the receivers it ran (`turn`), instead of
        // one per run.
        router.defer_idle_time();
        let shards = core.inboxes.len();
        Shard {
            index,
            router,
            factory,
            sink,
            budget,
            taken: Vec::new(),
            incoming: VecDeque::new(),
            outgoing: (0..shards).map(|_| Vec::new()).collect(),
            conversing: false,
            sent_inside: false,
            remote_out: Vec::new(),
            releases: Vec::new(),
            carry: None,
            dead_letters: 0,
            exited: false,
            #[cfg(feature = "fault-injection")]
            fault: _fault,
            _finished: Arrival {
                index,
                core: Arc::clone(&core),
            },
            core,
        }
    }

    /// This shard's number, `0..shards`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The state this shard shares with the others and the handle.
    pub(crate) fn core(&self) -> Arc<Core<K, M>> {
        Arc::clone(&self.core)
    }

    /// True if the deliberate bug `fault` is switched on; always false without the
    /// `fault-injection` feature.
    #[inline(always)]
    fn fault(&self, fault: ShardFault) -> bool {
        #[cfg(feature = "fault-injection")]
        return self.fault == Some(fault);
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = fault;
            false
        }
    }

    /// Does all the work that is ready now, reading the time from `clock`, and says what to do
    /// next. The executors pass [`SystemClock`]; the simulator passes its virtual clock.
    #[must_use = "the Turn says whether to go again, park or exit"]
    pub fn turn(&mut self, clock: &impl Clock) -> Turn {
        if self.exited {
            return Turn::Exit;
        }
        let _in_shard = InShard::enter();
        let quota = if self.carry.is_some() {
            self.budget.busy_inbox
        } else {
            self.budget.inbox
        };
        if self.incoming.is_empty() {
            self.core.inboxes[self.index as usize].take(&mut self.taken);
            if self.taken.len() > quota {
                // More than this turn takes: the rest waits for the next turns.
                self.incoming = VecDeque::from(std::mem::take(&mut self.taken));
            }
        }
        // The clock is read only for what needs the time (a task's outcome), not per turn.
        let mut accepted = 0;
        if self.incoming.is_empty() {
            if !self.taken.is_empty() {
                // All that was taken fits in this turn (the common case): no queue.
                let mut taken = std::mem::take(&mut self.taken);
                accepted = taken.len();
                for envelope in taken.drain(..) {
                    self.accept(envelope, clock);
                }
                self.taken = taken;
            }
        } else {
            for _ in 0..quota {
                let Some(envelope) = self.incoming.pop_front() else {
                    break;
                };
                self.accept(envelope, clock);
                accepted += 1;
            }
            if self.incoming.is_empty() {
                // The burst has drained: its buffer goes back to taking from the inbox.
                self.taken = Vec::from(std::mem::take(&mut self.incoming));
            }
        }
        if accepted > 0 {
            self.conversing = true;
            self.inbox().accepted(accepted);
        }
        let mut more = !self.incoming.is_empty();
        // The clock is read only if something is due some time: a shard whose receivers are
        // all busy or have just taken mail (a conversation between shards) has no deadline.
        if let Some(at) = self.router.poll_timeout() {
            let now = clock.now();
            if at <= now {
                self.router.handle_timeout(now);
            }
        }
        more |= self.run_commands(clock);
        if self.router.has_unstamped() {
            // After the runs: their receivers' idle time starts no sooner than they ended.
            self.router.stamp_idle(clock.now());
        }
        self.flush();
        if self.router.is_closed() {
            self.exit(clock.now());
            return Turn::Exit;
        }
        // Mail already flagged means another turn: no need to take the inbox's lock to park
        // and find it (the lock is the line a sender needs for its next push).
        if more || self.inbox().is_pending() || !self.inbox().park() {
            return Turn::Busy;
        }
        // Idle: give back what a burst grew (the inbox does the same with its buffer).
        self.taken.shrink_to(inbox::KEEP);
        Turn::Park(self.router.poll_timeout())
    }

    /// Runs the shard on this thread until it exits: turns while there is work, and otherwise
    /// calls `park(deadline)`, which sleeps until the shard's [`Wake`](crate::Wake) fires or the
    /// deadline (if any) passes.
    ///
    /// Before it sleeps, the thread watches its inbox for a short while (tens of microseconds at
    /// most, and only if it took or sent mail since it last slept, not after a bare timer tick):
    /// a reply on its way costs no sleep and wake-up.
    pub fn run_blocking(mut self, mut park: impl FnMut(Option<Instant>)) {
        loop {
            match self.turn(&SystemClock) {
                Turn::Busy => {}
                Turn::Park(deadline) => {
                    let conversing = std::mem::take(&mut self.conversing);
                    if !(conversing && mail_soon(self.inbox(), deadline)) {
                        park(deadline);
                    }
                }
                Turn::Exit => return,
            }
        }
    }

    /// What the shard took and sent since this was last asked, and so how its thread should
    /// watch for an answer before sleeping (see [`Watch`]).
    pub(crate) fn take_watch(&mut self) -> Watch {
        let conversing = std::mem::take(&mut self.conversing);
        if std::mem::take(&mut self.sent_inside) {
            Watch::Bell
        } else if conversing {
            Watch::Inbox
        } else {
            Watch::No
        }
    }

    /// Runs the shard as a task until it exits: awaits `yield_now()` between busy turns, so
    /// other tasks get a turn too, and otherwise `park(deadline)`, which resolves when the
    /// shard's [`Wake`](crate::Wake) fires or the deadline (if any) passes.
    pub async fn run_async<Y, P>(
        mut self,
        mut yield_now: impl FnMut() -> Y,
        mut park: impl FnMut(Option<Instant>) -> P,
    ) where
        Y: Future<Output = ()>,
        P: Future<Output = ()>,
    {
        loop {
            HOSTS_SHARDS.with(|h| h.set(true));
            match self.turn(&SystemClock) {
                Turn::Busy => yield_now().await,
                Turn::Park(deadline) => park(deadline).await,
                Turn::Exit => return,
            }
        }
    }

    fn inbox(&self) -> &Inbox<K, M> {
        &self.core.inboxes[self.index as usize]
    }

    // Inlined into both of `turn`'s loops (a call costs a message a few instructions).
    #[inline(always)]
    fn accept(&mut self, envelope: Envelope<K, M>, clock: &impl Clock) {
        match envelope {
            // Whatever reached the inbox was accepted by the handle (or sent by a receiver):
            // route it as from inside, so it still reaches live receivers while closing. What
            // the handle admitted is queued even if its receiver filled up meanwhile.
            Envelope::Admit(to, msg) => self.router.admit(to, msg),
            Envelope::Deliver(to, msg) => self.router.forward(to, msg),
            Envelope::Schedule(scheduled) => {
                let Scheduled {
                    id,
                    to,
                    deadline,
                    msg,
                } = *scheduled;
                if self.router.is_closing() {
                    self.dead_letter(DeadLetter {
                        recipient: Recipient::Id(to),
                        message: Some(msg),
                        reason: DeadLetterReason::Closed,
                    });
                } else if let Err(e) = self.router.schedule_as(id, to, deadline, msg) {
                    // Not closing, so not refused; keep the message visible all the same.
                    tracing::error!(%e, "timer refused by a router that is not closing");
                }
            }
            Envelope::Cancel(id) => {
                self.router.cancel(id);
            }
            Envelope::Complete(task, msg) => self.router.complete(task, msg, clock.now()),
            Envelope::Abandon(task) => self.router.abandon(task, clock.now()),
            Envelope::Close => {
                if !self.router.is_closing() {
                    // The others' `Close` first: the handle may not have sent it to them yet,
                    // and this shard's `deactivated` hooks are about to send them mail. Mail
                    // ahead of a shard's `Close` would activate the receivers it names
                    // instead of being the `Closed` dead letter that mail sent while closing
                    // to a receiver not live is.
                    self.core.close_shards();
                }
                self.router.close();
            }
            Envelope::Release(release) => {
                self.router.release_moved();
                self.releases.push(release);
            }
        }
    }

    /// Hands the tasks receivers started to the runtime, each wired to bring its outcome back
    /// to this shard's inbox, or to say it has none (a panic in its future is caught inside
    /// the task, under every runtime and the simulator alike).
    fn spawn_tasks(&mut self) {
        while let Some(task) = self.router.poll_task() {
            // Weak: a task left in a runtime after shutdown keeps nothing of Hermes alive.
            let core = Arc::downgrade(&self.core);
            let index = self.index as usize;
            let id = task.id();
            self.core.runtime.spawn(Box::pin(async move {
                let envelope = match task.await {
                    Some(msg) => Envelope::Complete(id, msg),
                    None => Envelope::Abandon(id),
                };
                if let Some(core) = core.upgrade() {
                    // Refused only once this shard has finished: then the receiver is gone.
                    let _ = core.inboxes[index].push(envelope, Limit::Control);
                }
            }));
        }
    }

    /// Handles up to a turn's budget of commands; true if more are left.
    fn run_commands(&mut self, clock: &impl Clock) -> bool {
        for _ in 0..self.budget.commands {
            let Some(command) = self.carry.take().or_else(|| self.router.poll_command()) else {
                return false;
            };
            // The one place commands become work (factory and receiver panics caught there).
            if let Err(e) = self.router.handle(command, &*self.factory, clock) {
                // Commands come from this router and are handled once each: a bug if it happens.
                tracing::error!(%e, ?command, "shard mishandled a command");
            }
            // A run can make any number of dead letters: hand them on as they come, so the
            // router's bounded queue never overflows on a shard.
            while let Some(letter) = self.router.poll_dead_letter() {
                self.sink(letter);
            }
        }
        self.carry = self.router.poll_command();
        if self.fault(ShardFault::ForgetCarry) {
            self.carry = None;
        }
        self.carry.is_some()
    }

    /// Sends outbound work to its shards, hands tasks to the runtime and dead letters to the
    /// sink.
    fn flush(&mut self) {
        self.spawn_tasks();
        while let Some((location, outbound)) = self.router.poll_outbound() {
            let envelope = match outbound {
                Outbound::Message(to, msg) => Envelope::Deliver(to, msg),
                Outbound::Cancel(timer) => Envelope::Cancel(timer),
                #[allow(unreachable_patterns)] // `Outbound` is non-exhaustive
                _ => continue,
            };
            let shard = match location {
                Location::Shard(n) => n as usize,
                Location::Node(node) => {
                    self.queue_for_node(node, envelope);
                    continue;
                }
                _ => usize::MAX,
            };
            match self.outgoing.get_mut(shard) {
                Some(out) if shard != self.index as usize => out.push(envelope),
                // A handle from no shard of ours (or a router mistake): it reaches no receiver.
                _ => self.bounce(envelope, DeadLetterReason::Stale),
            }
        }
        for shard in 0..self.outgoing.len() {
            if self.outgoing[shard].is_empty() {
                continue;
            }
            self.conversing = true;
            self.sent_inside = true;
            if self.fault(ShardFault::LoseOutgoing) {
                self.outgoing[shard].clear();
            } else if let Err(refusal) =
                self.core.inboxes[shard].push_all(&mut self.outgoing[shard], Limit::Inside)
            {
                // That shard has closed (nothing there is live to take them), or its inbox is
                // full (as for a full mailbox, mail between receivers is then a dead letter).
                let reason = match refusal {
                    Refusal::Closed => DeadLetterReason::Closed,
                    Refusal::Full => DeadLetterReason::Full,
                };
                let mut out = std::mem::take(&mut self.outgoing[shard]);
                for envelope in out.drain(..) {
                    self.bounce(envelope, reason.clone());
                }
                self.outgoing[shard] = out;
            }
        }
        if !self.remote_out.is_empty() {
            self.flush_remote();
        }
        if !self.releases.is_empty() && self.router.moved_live() == 0 {
            for release in self.releases.drain(..) {
                release.arrive();
            }
        }
        while let Some(letter) = self.router.poll_dead_letter() {
            self.sink(letter);
        }
        while let Some(pressure) = self.router.poll_pressure() {
            match pressure {
                Pressure::Full(id) => self.inbox().set_full(hermes_core::id_hash(&id), true),
                Pressure::Relieved(id) => self.inbox().set_full(hermes_core::id_hash(&id), false),
                #[allow(unreachable_patterns)] // `Pressure` is non-exhaustive
                _ => {}
            }
        }
        self.core.publish(self.index, self.stats());
    }

    /// Queues mail for a receiver on another node, for this turn's batch to that node.
    #[cold]
    fn queue_for_node(&mut self, node: NodeId, envelope: Envelope<K, M>) {
        let (id, msg) = match envelope {
            Envelope::Deliver(Recipient::Id(id), msg) => (id, msg),
            // Handles and timers are local to a shard: they never name another node.
            other => return self.bounce(other, DeadLetterReason::Stale),
        };
        match self.remote_out.iter_mut().find(|(n, _)| *n == node) {
            Some((_, batch)) => batch.push((id, msg)),
            None => self.remote_out.push((node, vec![(id, msg)])),
        }
    }

    /// Hands this turn's mail for other nodes to the transport, one batch per node.
    #[cold]
    fn flush_remote(&mut self) {
        self.conversing = true;
        let mut batches = std::mem::take(&mut self.remote_out);
        for (node, batch) in &mut batches {
            let result = match &self.core.remote {
                Some(remote) => remote.deliver(*node, batch),
                None => Err(DeadLetterReason::Unreachable),
            };
            if let Err(reason) = result {
                for (id, msg) in batch.drain(..) {
                    self.dead_letter(DeadLetter {
                        recipient: Recipient::Id(id),
                        message: Some(msg),
                        reason: reason.clone(),
                    });
                }
            }
        }
        batches.clear();
        self.remote_out = batches;
    }

    /// This shard's stats, counting the dead letters it made outside the router.
    fn stats(&self) -> Stats {
        let mut stats = self.router.stats();
        stats.dead_letters += self.dead_letters;
        stats
    }

    /// Reports an envelope that can no longer be delivered.
    fn bounce(&mut self, envelope: Envelope<K, M>, reason: DeadLetterReason) {
        let (recipient, message) = match envelope {
            Envelope::Admit(to, msg) | Envelope::Deliver(to, msg) => (to, msg),
            Envelope::Schedule(scheduled) => (Recipient::Id(scheduled.to), scheduled.msg),
            Envelope::Complete(task, msg) => (Recipient::Addr(task.owner()), msg),
            Envelope::Release(release) => return release.arrive(),
            Envelope::Cancel(_) | Envelope::Abandon(_) | Envelope::Close => return,
        };
        self.dead_letter(DeadLetter {
            recipient,
            message: Some(message),
            reason,
        });
    }

    fn dead_letter(&mut self, letter: DeadLetter<K, M>) {
        tracing::debug!(recipient = ?letter.recipient, reason = %letter.reason, "dead letter");
        self.dead_letters += 1;
        self.sink(letter);
    }

    fn sink(&self, letter: DeadLetter<K, M>) {
        if let Some(sink) = &self.sink
            && let Err(panic) = catch_unwind(AssertUnwindSafe(|| sink(letter)))
        {
            tracing::warn!(panic = %panic_message(panic), "the dead-letter sink panicked");
        }
    }

    /// The router has closed: refuse further pushes and report whatever was still queued.
    fn exit(&mut self, now: Instant) {
        let left = self.inbox().close();
        let mut accepted = 0;
        for envelope in std::mem::take(&mut self.incoming).into_iter().chain(left) {
            self.accept(envelope, &now);
            accepted += 1;
        }
        self.inbox().accepted(accepted);
        self.flush();
        // Closed: nothing of this shard is live anywhere any more.
        for release in self.releases.drain(..) {
            release.arrive();
        }
        self.exited = true;
    }
}

impl<K: Key, M: Message> Drop for Shard<K, M> {
    fn drop(&mut self) {
        if self.exited {
            return;
        }
        // Not exited: the runtime dropped the task, or the thread is unwinding. Close here, so
        // that queued messages drain and every live receiver's `deactivated` hook runs.
        tracing::warn!(
            shard = self.index,
            "shard dropped before Hermes shut down (its runtime stopped?): closing it here, \
             running every deactivated hook"
        );
        self.router.close();
        // Every turn of a closing router makes progress (receivers run inline, the drain limit
        // bounds the messages) until it exits; parking would mean nothing is left to run.
        loop {
            match self.turn(&SystemClock) {
                Turn::Busy => {}
                Turn::Exit => return,
                Turn::Park(_) => {
                    tracing::error!(shard = self.index, "dropped shard stalled while closing");
                    return;
                }
            }
        }
    }
}
