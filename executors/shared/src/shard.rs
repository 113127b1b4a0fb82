//! One shard: a single-threaded [`Router`] plus the decisions of the loop that drives it.
//!
//! [`Shard::turn`] does every piece of work that is ready and says what the executor should do
//! next: go again, park until a wake or a deadline, or exit. An executor is the loop around it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::fmt;
use std::hash::Hash;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use hermes_core::{
    Activation, Command, DeadLetter, DeadLetterReason, Factory, Recipient, Router, Sharded, Stats,
    panic_message,
};

use crate::inbox::{self, Envelope, Inbox, Scheduled};
use crate::options::DeadLetterSink;
use crate::signal::Signal;
use crate::spin;
use crate::{Key, Message};

/// Commands handled per turn before the shard looks at its inbox and timers again, so that
/// receivers messaging each other on one shard cannot starve everything else.
const COMMANDS_PER_TURN: usize = 256;

/// Inbox items taken per turn, so that a stream from outside cannot starve the receivers.
const INBOX_PER_TURN: usize = 1024;

/// Inbox items taken per turn while the router still has commands left from the last turn: a
/// backlog waits in the inbox (whose memory is freed as it drains) rather than in the router
/// (whose queues keep their largest size), and the inbox still makes progress.
const INBOX_PER_BUSY_TURN: usize = 64;

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

/// State the shards and the handle share.
pub(crate) struct Core<K, M> {
    pub(crate) inboxes: Box<[Inbox<K, M>]>,
    /// False once shutdown has begun: the handle refuses new messages.
    pub(crate) accepting: AtomicBool,
    /// The counter behind IDs of timers scheduled from outside.
    pub(crate) timer_seq: AtomicU64,
    /// Each shard's stats as of its last turn.
    pub(crate) stats: Box<[Mutex<Stats>]>,
    pub(crate) finish: Arc<Finish>,
    pub(crate) dead_letters: Option<DeadLetterSink<K, M>>,
}

impl<K, M> Core<K, M> {
    /// The shard that owns `id`.
    pub(crate) fn shard_of(&self, id: &K) -> usize
    where
        K: Hash,
    {
        match self.inboxes.len() {
            1 => 0,
            n => Sharded::shard_of(id, n as u32) as usize,
        }
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
            self.done.set(left.1);
        }
    }
}

thread_local! {
    static IN_SHARD: Cell<bool> = const { Cell::new(false) };
}

/// True on a thread that is running a shard's turn (inside a receiver, a factory, a sink).
pub(crate) fn in_shard() -> bool {
    IN_SHARD.with(Cell::get)
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
/// [`launch`](crate::launch), run each with [`turn`](Shard::turn) in a loop, and drop it after
/// [`Turn::Exit`]. Dropping it early (say, a runtime shutting down) ends it without running
/// hooks; the handle still sees the shard finish.
pub struct Shard<K, M> {
    index: u32,
    router: Router<K, M>,
    core: Arc<Core<K, M>>,
    factory: Arc<dyn Factory<K, M>>,
    /// Inbox items taken and not yet accepted, oldest first (the buffer is swapped with the
    /// inbox's, to keep both capacities).
    incoming: VecDeque<Envelope<K, M>>,
    /// Messages for each other shard, sent in one push per shard per turn.
    outgoing: Vec<Vec<Envelope<K, M>>>,
    /// Since it last parked, the shard took mail or sent some to another shard: an answer may
    /// be on its way, worth watching for before sleeping (a timer tick alone is not).
    conversing: bool,
    /// A command polled when the turn's budget ran out.
    carry: Option<Command>,
    /// Dead letters this shard made itself (the router counts its own).
    dead_letters: u64,
    exited: bool,
}

impl<K, M> Shard<K, M>
where
    K: Key,
    M: Message,
{
    pub(crate) fn new(
        index: u32,
        router: Router<K, M>,
        core: Arc<Core<K, M>>,
        factory: Arc<dyn Factory<K, M>>,
    ) -> Self {
        let shards = core.inboxes.len();
        Shard {
            index,
            router,
            core,
            factory,
            incoming: VecDeque::new(),
            outgoing: (0..shards).map(|_| Vec::new()).collect(),
            conversing: false,
            carry: None,
            dead_letters: 0,
            exited: false,
        }
    }

    /// This shard's number, `0..shards`.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// Does all the work that is ready now, and says what to do next.
    pub fn turn(&mut self) -> Turn {
        if self.exited {
            return Turn::Exit;
        }
        let _in_shard = InShard::enter();
        let now = Instant::now();
        if self.incoming.is_empty() {
            let mut buffer = Vec::from(std::mem::take(&mut self.incoming));
            self.inbox().take(&mut buffer);
            self.incoming = VecDeque::from(buffer);
        }
        let quota = if self.carry.is_some() {
            INBOX_PER_BUSY_TURN
        } else {
            INBOX_PER_TURN
        };
        for _ in 0..quota {
            let Some(envelope) = self.incoming.pop_front() else {
                break;
            };
            self.accept(envelope);
            self.conversing = true;
        }
        let mut more = !self.incoming.is_empty();
        if self.router.poll_timeout().is_some_and(|at| at <= now) {
            self.router.handle_timeout(now);
        }
        more |= self.run_commands(now);
        self.flush();
        if self.router.is_closed() {
            self.exit();
            return Turn::Exit;
        }
        if more || !self.inbox().park() {
            return Turn::Busy;
        }
        // Idle: give back what a burst grew (the inbox does the same with its buffer).
        self.incoming.shrink_to(inbox::KEEP);
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
            match self.turn() {
                Turn::Busy => {}
                Turn::Park(deadline) => {
                    let conversing = std::mem::take(&mut self.conversing);
                    if !(conversing && self.mail_soon(deadline)) {
                        park(deadline);
                    }
                }
                Turn::Exit => return,
            }
        }
    }

    /// After a turn that found nothing to do, watches the inbox without sleeping for a short
    /// while (see [`spin::poll_briefly`]): true if mail came, false if the shard is parked
    /// again and its thread should sleep (until a wake or the deadline). While watching, the
    /// shard counts as awake, so senders do not ring its bell. Only after a turn: an idle shard
    /// sleeps.
    fn mail_soon(&self, deadline: Option<Instant>) -> bool {
        let inbox = self.inbox();
        inbox.unpark();
        spin::poll_briefly(deadline, || inbox.is_pending()) || !inbox.park()
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
            match self.turn() {
                Turn::Busy => yield_now().await,
                Turn::Park(deadline) => park(deadline).await,
                Turn::Exit => return,
            }
        }
    }

    fn inbox(&self) -> &Inbox<K, M> {
        &self.core.inboxes[self.index as usize]
    }

    fn accept(&mut self, envelope: Envelope<K, M>) {
        match envelope {
            // Whatever reached the inbox was accepted by the handle (or sent by a receiver):
            // route it as from inside, so it still reaches live receivers while closing.
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
            Envelope::Close => self.router.close(),
        }
    }

    /// Handles up to a turn's budget of commands; true if more are left.
    fn run_commands(&mut self, now: Instant) -> bool {
        for _ in 0..COMMANDS_PER_TURN {
            let Some(command) = self.carry.take().or_else(|| self.router.poll_command()) else {
                return false;
            };
            self.handle(command, now);
        }
        self.carry = self.router.poll_command();
        self.carry.is_some()
    }

    fn handle(&mut self, command: Command, now: Instant) {
        let result = match command {
            Command::Activate(addr) => match self.router.id(addr) {
                Some(id) => {
                    let factory = &self.factory;
                    let activation = catch_unwind(AssertUnwindSafe(|| factory.create(id)))
                        .unwrap_or_else(|panic| {
                            tracing::warn!(?id, "the factory panicked; activation failed");
                            Activation::failed(FactoryPanicked(panic_message(panic)))
                        });
                    self.router.activate(addr, activation, now)
                }
                None => Err(hermes_core::CommandError::Stale(addr)),
            },
            // Receivers run inline; the router catches their panics.
            Command::Run(addr) | Command::Deactivate(addr) => self.router.run(addr, now),
        };
        if let Err(e) = result {
            // Commands come from this router and are handled once each: a bug if it happens.
            tracing::error!(%e, ?command, "shard mishandled a command");
        }
    }

    /// Sends outbound messages to their shards and hands dead letters to the sink.
    fn flush(&mut self) {
        let shards = self.outgoing.len();
        while let Some((to, msg)) = self.router.poll_outbound() {
            let shard = match &to {
                Recipient::Addr(addr) => addr.router() as usize,
                Recipient::Id(id) => self.core.shard_of(id),
            };
            match self.outgoing.get_mut(shard) {
                Some(out) if shard != self.index as usize => out.push(Envelope::Deliver(to, msg)),
                // A handle from no shard of ours (or a router mistake): it reaches no receiver.
                _ => self.dead_letter(DeadLetter {
                    recipient: to,
                    message: Some(msg),
                    reason: DeadLetterReason::Stale,
                }),
            }
        }
        for shard in 0..shards {
            if self.outgoing[shard].is_empty() {
                continue;
            }
            let mut out = std::mem::take(&mut self.outgoing[shard]);
            self.conversing = true;
            if self.core.inboxes[shard].push_all(&mut out).is_err() {
                // That shard has closed: nothing there is live to take them.
                for envelope in out.drain(..) {
                    self.bounce(envelope);
                }
            }
            self.outgoing[shard] = out;
        }
        while let Some(letter) = self.router.poll_dead_letter() {
            self.sink(letter);
        }
        *self.core.stats[self.index as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = self.stats();
    }

    /// This shard's stats, counting the dead letters it made outside the router.
    fn stats(&self) -> Stats {
        let mut stats = self.router.stats();
        stats.dead_letters += self.dead_letters;
        stats
    }

    /// Reports an envelope that can no longer be delivered.
    fn bounce(&mut self, envelope: Envelope<K, M>) {
        let (recipient, message) = match envelope {
            Envelope::Deliver(to, msg) => (to, msg),
            Envelope::Schedule(scheduled) => (Recipient::Id(scheduled.to), scheduled.msg),
            Envelope::Cancel(_) | Envelope::Close => return,
        };
        self.dead_letter(DeadLetter {
            recipient,
            message: Some(message),
            reason: DeadLetterReason::Closed,
        });
    }

    fn dead_letter(&mut self, letter: DeadLetter<K, M>) {
        tracing::debug!(recipient = ?letter.recipient, reason = %letter.reason, "dead letter");
        self.dead_letters += 1;
        self.sink(letter);
    }

    fn sink(&self, letter: DeadLetter<K, M>) {
        if let Some(sink) = &self.core.dead_letters
            && let Err(panic) = catch_unwind(AssertUnwindSafe(|| sink(letter)))
        {
            tracing::warn!(panic = %panic_message(panic), "the dead-letter sink panicked");
        }
    }

    /// The router has closed: refuse further pushes and report whatever was still queued.
    fn exit(&mut self) {
        let left = self.inbox().close();
        for envelope in std::mem::take(&mut self.incoming).into_iter().chain(left) {
            self.accept(envelope);
        }
        self.flush();
        self.exited = true;
    }
}

impl<K, M> Drop for Shard<K, M> {
    fn drop(&mut self) {
        // Normally after `Turn::Exit`; otherwise (a runtime dropped its tasks) refuse further
        // pushes so that senders see `Closed` rather than a queue nobody reads.
        let left = self.core.inboxes[self.index as usize].close().len() + self.incoming.len();
        let mut stats = self.router_stats();
        stats.dead_letters += left as u64;
        if left > 0 {
            tracing::warn!(
                shard = self.index,
                messages = left,
                "shard dropped before it closed; queued messages are lost"
            );
        }
        self.core.finish.arrive(stats);
    }
}

impl<K, M> Shard<K, M> {
    /// Stats without the `Hash`/`Debug` bounds the router's methods need.
    fn router_stats(&self) -> Stats {
        *self.core.stats[self.index as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The error of an activation whose factory panicked.
#[derive(Debug)]
struct FactoryPanicked(Arc<str>);

impl fmt::Display for FactoryPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the factory panicked: {}", self.0)
    }
}

impl std::error::Error for FactoryPanicked {}
