//! The user's handle, the same type on every executor.

use std::fmt;
use std::future::Future;
use std::hash::Hash;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hermes_core::{
    Addr, App, Factory, Kind, Location, NodeId, Recipient, Router, SendError, SendErrorKind, Stats,
    TimerId,
};

use event_listener::Listener;

use crate::inbox::{Envelope, Inbox, Limit, Refusal, Scheduled};
use crate::shard::{Core, Finish, hosts_shards, in_shard};
use crate::{AskError, Asked, Key, Message, Options, Reply, Shard, Wake};

/// A task for the executor's runtime: work a receiver started, already wired to bring its
/// outcome back to the receiver's shard.
pub type Spawned = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// What Hermes needs of the executor it runs on.
pub trait Runtime: Send + Sync + 'static {
    /// Runs `task` to completion on the executor's async runtime (tokio's, smol's, the pool's
    /// own): the futures receivers start with `Context::spawn` and `Context::ask`. It must not
    /// block the shards; a task is dropped unfinished when it is aborted or the runtime stops.
    fn spawn(&self, task: Spawned);

    /// Runs `wait`, which blocks the calling thread until the shards have done something, or
    /// returns `Err(WouldDeadlock)` if blocking this thread could stop the shards from running
    /// (say, inside a current-thread async runtime). The default refuses on a thread that runs
    /// shards as async tasks (see [`Shard::run_async`]) and otherwise runs `wait`.
    fn block(&self, wait: &mut dyn FnMut()) -> Result<(), WouldDeadlock> {
        if hosts_shards() {
            return Err(WouldDeadlock);
        }
        wait();
        Ok(())
    }

    /// Called once after every shard has finished, on a thread that may block: joins the
    /// executor's threads, if it has any.
    fn join(&self) {}

    /// The current time, from which [`Hermes::schedule`] counts: the real clock by default,
    /// the virtual one under simulation.
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Blocking here could stop the shards from running (inside a receiver, or on a thread of the
/// async runtime that runs them); see [`Runtime::block`]. Use the async form there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WouldDeadlock;

impl fmt::Display for WouldDeadlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "blocking here would stop the shards that run the receivers (inside a receiver, or \
             on a thread of the async runtime that runs them): use the async form \
             (ask(..).await, shutdown_async().await) instead",
        )
    }
}

impl std::error::Error for WouldDeadlock {}

/// The handle to a running Hermes: send messages, schedule them, ask, and shut down.
///
/// Every executor returns this same type. It is cheap to clone (an `Arc`); all clones address
/// the same receivers. Dropping the last clone shuts Hermes down (and waits for it when this
/// thread may block); a clone kept by a receiver or the factory keeps Hermes running, so call
/// [`shutdown`](Hermes::shutdown) then. Sends are routed to the shard that owns the ID, by a
/// hash of it.
///
/// A send is refused here only when Hermes is shutting down ([`SendError::Closed`]), the
/// receiver or its shard is at capacity ([`SendError::Full`] from
/// [`try_send`](Hermes::try_send); [`send`](Hermes::send) waits for room instead), or
/// placement puts the ID on another node of a cluster that cannot be reached now
/// ([`SendError::Unreachable`]; always, without a [`Remote`](crate::Remote)); the message
/// comes back in the error. Everything else (a stale handle, an ID that placement puts on no
/// shard, a factory that refuses the ID or fails, a handler that panics) is decided on a
/// shard, and the message becomes a dead letter there (see [`Options::on_dead_letter`]). Shards are chosen by the one
/// [`Placement`](hermes_core::Placement) that the routers use too.
///
/// `K` and `M` are the router's ID and message types; `A` is the application, `(K, M)` for one
/// kind of receiver, or the marker of an [`app!`](hermes_core::app) with several, whose sends
/// are typed by kind: `hermes.send(AccountId(7), AccountMsg::Deposit(5))`.
pub struct Hermes<K, M, A = (K, M)> {
    inner: Arc<Inner<K, M>>,
    app: PhantomData<fn() -> A>,
}

struct Inner<K, M> {
    core: Arc<Core<K, M>>,
    /// `Runtime::join` ran (or is running).
    joined: AtomicBool,
}

/// Each shard with the waiting end of its bell, as [`launch`] returns them.
pub type Shards<K, M, P> = Vec<(Shard<K, M>, P)>;

/// What [`launch`] returns: the handle, typed by the application, and the shards.
pub type Launched<K, M, A, P> = (Hermes<K, M, A>, Shards<K, M, P>);

/// The messages of a refused [`Hermes::send_all`], given back in order.
pub type Refused<T, A> = SendError<Vec<(<T as Kind<A>>::Id, T)>>;

/// Splits `options` into shards and the handle that feeds them. For executor authors.
///
/// `bell` is called once per shard and returns the two ends of that shard's wake-up primitive:
/// a [`Wake`] the handle and the other shards ring, and whatever the shard's loop waits on
/// (returned next to the shard). Run every shard with [`Shard::run_blocking`] or
/// [`Shard::run_async`] (or a loop of [`Shard::turn`]), waiting on its bell when parked; or
/// start with [`Crew::launch`](crate::Crew::launch) instead, for threads that may run each
/// other's shards.
pub fn launch<K: Key, M: Message, F: Factory<K, M>, W: Wake, P>(
    mut options: Options<K, M>,
    factory: F,
    runtime: impl Runtime,
    mut bell: impl FnMut() -> (W, P),
) -> Launched<K, M, F::App, P> {
    let shards = options.shards;
    let (wakers, parks): (Vec<_>, Vec<_>) = (0..shards).map(|_| bell()).unzip();
    let placement = options.take_placement();
    let core = Arc::new(Core {
        inboxes: wakers
            .into_iter()
            .map(|w| Inbox::new(Box::new(w), options.inbox_capacity))
            .collect(),
        placement: Arc::clone(&placement),
        accepting: AtomicBool::new(true),
        timer_seq: AtomicU64::new(0),
        stats: (0..shards).map(|_| Mutex::default()).collect(),
        finish: Arc::new(Finish::new(shards)),
        runtime: Arc::new(runtime),
        remote: options.remote.take(),
    });
    let kinds = factory.kinds();
    let factory = hermes_core::share(factory);
    // A shard hands dead letters on as they come, so its router needs no bound of its own on
    // them; with one, a single step that makes many (a close with thousands of timers pending)
    // dropped the overflow before the sink saw it.
    let config = options.config.clone().dead_letter_capacity(usize::MAX);
    let shard_list = (0..shards as u32)
        .zip(parks)
        .map(|(index, park)| {
            let mut router = Router::placed(config.clone(), index, Arc::clone(&placement));
            router.use_kinds(kinds.clone());
            let shard = Shard::new(
                index,
                router,
                Arc::clone(&core),
                Arc::clone(&factory),
                options.dead_letters.clone(),
                options.budget,
                options.fault,
            );
            (shard, park)
        })
        .collect();
    let inner = Inner {
        core,
        joined: AtomicBool::new(false),
    };
    let hermes = Hermes {
        inner: Arc::new(inner),
        app: PhantomData,
    };
    (hermes, shard_list)
}

/// What an offer to a shard came to: taken, or refused with the envelope back.
type Offer<K, M> = Result<(), (Envelope<K, M>, SendErrorKind)>;

/// A refused envelope as the error of the send that made it, its message back as the kind's
/// message it was sent as.
fn refused<K, M, T: Kind<A>, A: App<Id = K, Msg = M>>(
    envelope: Envelope<K, M>,
    kind: SendErrorKind,
) -> SendError<T> {
    let msg = match envelope {
        Envelope::Admit(_, msg) | Envelope::Deliver(_, msg) => msg,
        Envelope::Schedule(scheduled) => scheduled.msg,
        Envelope::Cancel(_)
        | Envelope::Complete(..)
        | Envelope::Abandon(_)
        | Envelope::Close
        | Envelope::Release(_) => unreachable!("the handle offers only messages"),
    };
    let msg = match T::from_app_msg(msg) {
        Ok(msg) => msg,
        // The handle wrapped it as a `T` a moment ago.
        Err(_) => unreachable!("a message changed kind on its way back"),
    };
    match kind {
        SendErrorKind::Full => SendError::Full(msg),
        SendErrorKind::Stale => SendError::Stale(msg),
        SendErrorKind::Unreachable => SendError::Unreachable(msg),
        _ => SendError::Closed(msg),
    }
}

/// Hands a message from the handle to the transport for `node`.
#[cold]
fn offer_remote<K: Key, M: Message>(
    core: &Core<K, M>,
    node: NodeId,
    envelope: Envelope<K, M>,
) -> Offer<K, M> {
    let Some(transport) = &core.remote else {
        return Err((envelope, SendErrorKind::Unreachable));
    };
    let (id, msg) = match envelope {
        Envelope::Admit(Recipient::Id(id), msg) => (id, msg),
        // Handles and timers are local to a shard: they never name another node.
        other => return Err((other, SendErrorKind::Stale)),
    };
    let mut batch = vec![(id, msg)];
    match transport.deliver(node, &mut batch) {
        Ok(()) => Ok(()),
        Err(reason) => match batch.pop() {
            Some((id, msg)) => Err((
                Envelope::Admit(Recipient::Id(id), msg),
                match reason {
                    hermes_core::DeadLetterReason::Full => SendErrorKind::Full,
                    _ => SendErrorKind::Unreachable,
                },
            )),
            // Taken after all: it went out.
            None => Ok(()),
        },
    }
}

/// Why an ask's request was not sent.
fn ask_error(kind: SendErrorKind) -> AskError {
    match kind {
        SendErrorKind::Full => AskError::Full,
        SendErrorKind::Unreachable => AskError::Unreachable,
        _ => AskError::Closed,
    }
}

/// Pushes a `send_all` batch unless its shard's inbox, or one of its receivers, is full.
fn push_unless_full<K: Hash, M>(
    inbox: &Inbox<K, M>,
    batch: &mut Vec<Envelope<K, M>>,
) -> Result<(), Refusal> {
    if inbox.any_full(batch) {
        return Err(Refusal::Full);
    }
    inbox.push_all(batch, Limit::Outside)
}

/// A `send_all`'s messages sorted by shard, and those refused so far.
struct Sorted<K, M, T, A> {
    batches: Vec<Vec<Envelope<K, M>>>,
    refused: Vec<(K, M)>,
    kind: SendErrorKind,
    app: PhantomData<fn() -> (T, A)>,
}

impl<K, M, T: Kind<A>, A: App<Id = K, Msg = M>> Sorted<K, M, T, A> {
    /// A shard refused `batch`.
    fn refuse(&mut self, kind: SendErrorKind, batch: &mut Vec<Envelope<K, M>>) {
        self.kind = kind;
        self.refused
            .extend(batch.drain(..).filter_map(|envelope| match envelope {
                Envelope::Admit(Recipient::Id(id), msg) => Some((id, msg)),
                _ => None,
            }));
    }

    /// Ok if nothing was refused; otherwise the refused pairs, in order, as the kind's.
    fn result(self) -> Result<(), Refused<T, A>> {
        if self.refused.is_empty() {
            return Ok(());
        }
        let refused = self
            .refused
            .into_iter()
            .filter_map(|(id, msg)| {
                Some((T::from_app_id(&id)?.clone(), T::from_app_msg(msg).ok()?))
            })
            .collect();
        Err(match self.kind {
            SendErrorKind::Full => SendError::Full(refused),
            SendErrorKind::Unreachable => SendError::Unreachable(refused),
            _ => SendError::Closed(refused),
        })
    }
}

impl From<Refusal> for SendErrorKind {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Closed => SendErrorKind::Closed,
            Refusal::Full => SendErrorKind::Full,
        }
    }
}

impl<K, M, A> Hermes<K, M, A>
where
    K: Key,
    M: Message,
    A: App<Id = K, Msg = M>,
{
    /// Sends `msg` to the receiver with ID `id`, activating it if needed, without waiting:
    /// [`SendError::Full`] gives the message back at once when the receiver's mailbox or its
    /// shard's inbox is at capacity. The message's type decides the kind, and so the ID's type.
    /// Messages from one thread to one ID arrive in send order.
    ///
    /// A receiver counts as full from the moment its shard sees its mailbox at capacity until
    /// the mailbox is down to half of it; a message admitted here is queued even if the
    /// mailbox filled up meanwhile, so memory stays bounded by the inbox's and the mailbox's
    /// capacities and nothing admitted is lost.
    pub fn try_send<T: Kind<A>>(&self, id: T::Id, msg: T) -> Result<(), SendError<T>> {
        let (location, envelope) = Self::admit(&self.inner.core, id, msg);
        self.offer(location, envelope)
            .map_err(|(envelope, kind)| refused(envelope, kind))
    }

    /// Sends `msg` to the receiver with ID `id`, waiting (blocking this thread) while it or
    /// its shard is full; see [`try_send`](Hermes::try_send). Where this thread must not
    /// block (inside a receiver, on a thread of the async runtime that runs the shards) it
    /// does not wait: it returns [`SendError::Full`] as `try_send` would. From async code,
    /// [`send_async`](Hermes::send_async).
    pub fn send<T: Kind<A>>(&self, id: T::Id, msg: T) -> Result<(), SendError<T>> {
        let (location, envelope) = Self::admit(&self.inner.core, id, msg);
        self.offer_blocking(location, envelope, None)
            .map_err(|(envelope, kind)| refused(envelope, kind))
    }

    /// [`send`](Hermes::send), waiting at most `timeout` for room: [`SendError::Full`] after.
    pub fn send_timeout<T: Kind<A>>(
        &self,
        id: T::Id,
        msg: T,
        timeout: Duration,
    ) -> Result<(), SendError<T>> {
        let deadline = Instant::now().checked_add(timeout);
        let (location, envelope) = Self::admit(&self.inner.core, id, msg);
        self.offer_blocking(location, envelope, deadline)
            .map_err(|(envelope, kind)| refused(envelope, kind))
    }

    /// Sends `msg` to the receiver with ID `id`, awaiting room while it or its shard is full:
    /// a producer that awaits each send is slowed to the rate its receiver keeps up with. See
    /// [`try_send`](Hermes::try_send).
    pub async fn send_async<T: Kind<A>>(&self, id: T::Id, msg: T) -> Result<(), SendError<T>> {
        let (location, envelope) = Self::admit(&self.inner.core, id, msg);
        self.offer_async(location, envelope)
            .await
            .map_err(|(envelope, kind)| refused(envelope, kind))
    }

    /// Offers `envelope`, awaiting room while its receiver or its shard is full.
    async fn offer_async(&self, location: Location, mut envelope: Envelope<K, M>) -> Offer<K, M> {
        loop {
            envelope = match self.offer(location, envelope) {
                Err((envelope, SendErrorKind::Full)) => envelope,
                result => return result,
            };
            let Some(inbox) = self.inner.core.inbox(location) else {
                // Another node's queue is full: nothing to await here; the caller retries.
                let kind = match location {
                    Location::Node(_) => SendErrorKind::Full,
                    _ => SendErrorKind::Stale,
                };
                return Err((envelope, kind));
            };
            // Listen, then look again: room that came in between is not missed.
            let listener = inbox.room.listen();
            envelope = match self.offer(location, envelope) {
                Err((envelope, SendErrorKind::Full)) => envelope,
                result => return result,
            };
            listener.await;
        }
    }

    /// Delivers a message that came from another node of a cluster (for transports): routed
    /// as [`send_async`](Hermes::send_async) routes, by the application's ID and message
    /// types, awaiting room while the receiver or its shard is full. If placement puts `id`
    /// on another node after all (the sender's view of the cluster was older), it is passed
    /// on to the transport again.
    pub async fn deliver_async(&self, id: K, msg: M) -> Result<(), SendError<M>> {
        let location = self.inner.core.locate(&id);
        let envelope = Envelope::Admit(Recipient::Id(id), msg);
        self.offer_async(location, envelope)
            .await
            .map_err(|(envelope, kind)| {
                let msg = match envelope {
                    Envelope::Admit(_, msg) => msg,
                    _ => unreachable!("only a message is offered here"),
                };
                match kind {
                    SendErrorKind::Full => SendError::Full(msg),
                    SendErrorKind::Stale => SendError::Stale(msg),
                    SendErrorKind::Unreachable => SendError::Unreachable(msg),
                    _ => SendError::Closed(msg),
                }
            })
    }

    /// Placement changed (a node joined or left the cluster): every shard deactivates its
    /// receivers whose IDs now belong to another node (their `deactivated` hooks run with
    /// [`Deactivation::Moved`](hermes_core::Deactivation::Moved), saving their state), and
    /// forwards messages for them to the new node. The [`Released`] resolves when no shard has
    /// such a receiver live any more (or the shards have closed).
    pub fn release_moved(&self) -> Released {
        let core = &self.inner.core;
        let release = crate::remote::Release::new(core.inboxes.len());
        for inbox in core.inboxes.iter() {
            if let Err((Envelope::Release(release), _)) =
                inbox.push(Envelope::Release(Arc::clone(&release)), Limit::Control)
            {
                // That shard has finished: nothing is live there.
                release.arrive();
            }
        }
        Released { release }
    }

    /// The shard of `id` and the envelope that takes the message there. The ID is hashed by
    /// placement alone (not at all with one shard); the inbox hashes it again only while a
    /// receiver of that shard is full.
    fn admit<T: Kind<A>>(core: &Core<K, M>, id: T::Id, msg: T) -> (Location, Envelope<K, M>) {
        let id = T::into_app_id(id);
        let location = core.locate(&id);
        (
            location,
            Envelope::Admit(Recipient::Id(id), msg.into_app_msg()),
        )
    }

    /// Pushes `envelope` to the shard at `location` if it takes it now: not shutting down, an
    /// inbox of ours below capacity, and the receiver (for a message by ID) not full.
    #[inline(always)]
    fn offer(&self, location: Location, envelope: Envelope<K, M>) -> Offer<K, M> {
        let core = &self.inner.core;
        if !core.accepting.load(Ordering::Acquire) {
            return Err((envelope, SendErrorKind::Closed));
        }
        if let Location::Node(node) = location {
            return offer_remote(core, node, envelope);
        }
        let Some(inbox) = core.inbox(location) else {
            // The placement put the ID on no shard of ours.
            return Err((envelope, SendErrorKind::Stale));
        };
        if let Envelope::Admit(Recipient::Id(id), _) = &envelope
            && inbox.is_full_for(id)
        {
            return Err((envelope, SendErrorKind::Full));
        }
        inbox
            .push(envelope, Limit::Outside)
            .map_err(|(envelope, refusal)| (envelope, refusal.into()))
    }

    /// [`offer`](Hermes::offer), waiting on this thread for room until `deadline` (if any),
    /// where this thread may block.
    fn offer_blocking(
        &self,
        location: Location,
        mut envelope: Envelope<K, M>,
        deadline: Option<Instant>,
    ) -> Offer<K, M> {
        loop {
            envelope = match self.offer(location, envelope) {
                Err((envelope, SendErrorKind::Full)) => envelope,
                result => return result,
            };
            let Some(inbox) = self.inner.core.inbox(location) else {
                if let Location::Node(_) = location {
                    // The transport's queue to another node is full: it has no event to wait
                    // on, so back off briefly, as long as this thread may wait at all.
                    if in_shard() || deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err((envelope, SendErrorKind::Full));
                    }
                    std::thread::sleep(Duration::from_micros(100));
                    continue;
                }
                return Err((envelope, SendErrorKind::Stale));
            };
            let listener = inbox.room.listen();
            envelope = match self.offer(location, envelope) {
                Err((envelope, SendErrorKind::Full)) => envelope,
                result => return result,
            };
            if in_shard() {
                return Err((envelope, SendErrorKind::Full));
            }
            let mut listener = Some(listener);
            let mut timed_out = false;
            let waited = self.inner.core.runtime.block(&mut || {
                if let Some(listener) = listener.take() {
                    timed_out = match deadline {
                        Some(deadline) => listener.wait_deadline(deadline).is_none(),
                        None => {
                            listener.wait();
                            false
                        }
                    };
                }
            });
            if waited.is_err() || timed_out {
                return Err((envelope, SendErrorKind::Full));
            }
        }
    }

    /// Sends every `(id, msg)` pair, as [`send`](Hermes::send) in a loop would (per-ID order
    /// kept, receivers activated as needed, waiting while a shard's inbox is full), but hands
    /// them over with one push per shard rather than one per message: for a thread that has
    /// many messages at once (a socket reader with a buffer full of requests, a fan-out). A
    /// batch is admitted whole once its shard's inbox is below capacity and none of its
    /// receivers is full.
    ///
    /// Refused while shutting down, or (where this thread must not block) while a shard is
    /// full: then the pairs that were not sent come back, in order.
    ///
    /// ```
    /// use hermes_core::{Activation, Config, Context, SystemClock};
    /// use hermes_executor::{launch, Options, Runtime, Turn, Wake};
    ///
    /// # struct NoBell;
    /// # impl Wake for NoBell { fn wake(&self) {} }
    /// # struct Inline;
    /// # impl Runtime for Inline { fn spawn(&self, _: hermes_executor::Spawned) {} }
    /// let options = Options::new(Config::default()).shards(2);
    /// let (hermes, shards) = launch(options, |_id: &u32| {
    ///     Activation::ready(|_ctx: &mut Context<'_, u32, u64>, _msg: u64| {})
    /// }, Inline, || (NoBell, ()));
    /// let mut shards: Vec<_> = shards.into_iter().map(|(shard, ())| shard).collect();
    ///
    /// hermes.send_all((0..1000).map(|i| (i % 10, u64::from(i))))?;
    /// let finished = hermes.shutdown_async();
    /// while shards.iter_mut().any(|s| s.turn(&SystemClock) != Turn::Exit) {}
    /// drop(shards);
    /// assert_eq!(finished.wait().messages_delivered, 1000);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send_all<T: Kind<A>>(
        &self,
        messages: impl IntoIterator<Item = (T::Id, T)>,
    ) -> Result<(), Refused<T, A>> {
        let mut sorted = self.sort::<T>(messages)?;
        for shard in 0..sorted.batches.len() {
            let mut batch = std::mem::take(&mut sorted.batches[shard]);
            if !batch.is_empty()
                && let Err(refusal) = self.push_batch(shard, &mut batch)
            {
                sorted.refuse(refusal, &mut batch);
            }
        }
        sorted.result()
    }

    /// [`send_all`](Hermes::send_all), awaiting room (where `send_all` blocks): for a task
    /// with many messages at once, such as a socket reader fanning a message out.
    pub async fn send_all_async<T: Kind<A>>(
        &self,
        messages: impl IntoIterator<Item = (T::Id, T)>,
    ) -> Result<(), Refused<T, A>> {
        let mut sorted = self.sort::<T>(messages)?;
        for shard in 0..sorted.batches.len() {
            let mut batch = std::mem::take(&mut sorted.batches[shard]);
            if batch.is_empty() {
                continue;
            }
            let inbox = &self.inner.core.inboxes[shard];
            let pushed = loop {
                match push_unless_full(inbox, &mut batch) {
                    Err(Refusal::Full) => {}
                    result => break result,
                }
                // Listen, then look again: room that came in between is not missed.
                let listener = inbox.room.listen();
                match push_unless_full(inbox, &mut batch) {
                    Err(Refusal::Full) => {}
                    result => break result,
                }
                listener.await;
            };
            if let Err(refusal) = pushed {
                sorted.refuse(refusal.into(), &mut batch);
            }
        }
        sorted.result()
    }

    /// Sorts messages into one batch per shard; refused at once while shutting down.
    fn sort<T: Kind<A>>(
        &self,
        messages: impl IntoIterator<Item = (T::Id, T)>,
    ) -> Result<Sorted<K, M, T, A>, Refused<T, A>> {
        let core = &self.inner.core;
        if !core.accepting.load(Ordering::Acquire) {
            return Err(SendError::Closed(messages.into_iter().collect()));
        }
        let mut sorted = Sorted {
            batches: core.inboxes.iter().map(|_| Vec::new()).collect(),
            refused: Vec::new(),
            kind: SendErrorKind::Closed,
            app: PhantomData,
        };
        let mut remote: Vec<(NodeId, Vec<(K, M)>)> = Vec::new();
        for (id, msg) in messages {
            let id = T::into_app_id(id);
            match core.locate(&id) {
                Location::Shard(n) => {
                    let envelope = Envelope::Admit(Recipient::Id(id), msg.into_app_msg());
                    sorted.batches[n as usize].push(envelope);
                }
                Location::Node(node) => match remote.iter_mut().find(|(n, _)| *n == node) {
                    Some((_, batch)) => batch.push((id, msg.into_app_msg())),
                    None => remote.push((node, vec![(id, msg.into_app_msg())])),
                },
                // `Location` may grow; a location the handle cannot reach is refused, in order.
                _ => sorted.refused.push((id, msg.into_app_msg())),
            }
        }
        for (node, mut batch) in remote {
            let sent = match &core.remote {
                Some(transport) => transport.deliver(node, &mut batch),
                None => Err(hermes_core::DeadLetterReason::Unreachable),
            };
            if sent.is_err() {
                sorted.kind = SendErrorKind::Unreachable;
                sorted.refused.extend(batch);
            }
        }
        Ok(sorted)
    }

    /// Pushes a batch to shard `shard`, waiting for its inbox to be below capacity where this
    /// thread may block.
    fn push_batch(
        &self,
        shard: usize,
        batch: &mut Vec<Envelope<K, M>>,
    ) -> Result<(), SendErrorKind> {
        let inbox = &self.inner.core.inboxes[shard];
        loop {
            match push_unless_full(inbox, batch) {
                Err(Refusal::Full) => {}
                result => return result.map_err(SendErrorKind::from),
            }
            let listener = inbox.room.listen();
            match push_unless_full(inbox, batch) {
                Err(Refusal::Full) => {}
                result => return result.map_err(SendErrorKind::from),
            }
            if in_shard() {
                return Err(SendErrorKind::Full);
            }
            let mut listener = Some(listener);
            let waited = self.inner.core.runtime.block(&mut || {
                if let Some(listener) = listener.take() {
                    listener.wait();
                }
            });
            if waited.is_err() {
                return Err(SendErrorKind::Full);
            }
        }
    }

    /// Sends `msg` by handle (see [`Addr`]) to a receiver of `T`'s kind, without waiting; a
    /// stale handle, or one of a receiver of another kind (handles are not typed by kind),
    /// makes it a [`Stale`](hermes_core::DeadLetterReason::Stale) dead letter.
    pub fn send_to<T: Kind<A>>(&self, addr: Addr, msg: T) -> Result<(), SendError<T>> {
        let location = self.inner.core.on_our_shard(Location::Shard(addr.router()));
        let envelope = Envelope::Admit(Recipient::Addr(addr), msg.into_app_msg());
        self.offer(location, envelope)
            .map_err(|(envelope, kind)| refused(envelope, kind))
    }

    /// Delivers `msg` to `id` after `after`, counted from now. A delay too long to represent
    /// (such as `Duration::MAX`) never fires, but can be cancelled. Cancel it with
    /// [`cancel`](Hermes::cancel). Refused with [`SendError::Full`] while the shard's inbox is
    /// at capacity.
    pub fn schedule<T: Kind<A>>(
        &self,
        id: T::Id,
        after: Duration,
        msg: T,
    ) -> Result<TimerId, SendError<T>> {
        let core = &self.inner.core;
        let id = T::into_app_id(id);
        let location = match core.locate(&id) {
            // A timer for a receiver on another node is held here and sent there when due.
            Location::Node(_) => {
                let shards = core.inboxes.len() as u32;
                Location::Shard(hermes_core::Sharded::new(shards).shard_of(&id))
            }
            location => location,
        };
        let Location::Shard(shard) = location else {
            return Err(SendError::Stale(msg));
        };
        let seq = core.timer_seq.fetch_add(1, Ordering::Relaxed);
        let timer = TimerId::outside(shard, seq);
        let deadline = hermes_core::deadline(core.runtime.now(), after);
        let envelope = Envelope::Schedule(Box::new(Scheduled {
            id: timer,
            to: id,
            deadline,
            msg: msg.into_app_msg(),
        }));
        self.offer(location, envelope)
            .map(|()| timer)
            .map_err(|(envelope, kind)| refused(envelope, kind))
    }

    /// Cancels a timer, scheduled here or by a receiver: it will not fire unless it is
    /// already due. Unknown and fired timers are ignored.
    pub fn cancel(&self, timer: TimerId) {
        if let Some(inbox) = self.inner.core.inbox(Location::Shard(timer.router())) {
            // Refused only once that shard has closed, and then no timer is pending there.
            let _ = inbox.push(Envelope::Cancel(timer), Limit::Control);
        }
    }

    /// Sends a request made by `make` (which puts the [`Reply`] into a message) to `id`, and
    /// returns the answer to come. Await it, or block on it with [`Asked::wait_timeout`].
    ///
    /// The request goes out now, not when the result is first polled, as with
    /// [`send`](Hermes::send): waiting for room while the receiver or its shard is full where
    /// this thread may block, and failing with [`AskError::Full`] where it may not. Async asks
    /// have no timeout of their own: wrap them in your runtime's timeout if the receiver may
    /// never answer while holding on to the `Reply`.
    pub fn ask<T: Kind<A>, R>(&self, id: T::Id, make: impl FnOnce(Reply<R>) -> T) -> Asked<R> {
        let (reply, asked) = Reply::new();
        match self.send(id, make(reply)) {
            Ok(()) => asked,
            Err(e) => Asked::failed(ask_error(e.kind())),
        }
    }

    /// Asks and blocks for the answer, at most `timeout`. From async code, `ask(..).await`
    /// instead: this returns [`AskError::WouldDeadlock`] at once, without sending the
    /// request, where blocking could stop the shards (inside a receiver, on a thread of the
    /// async runtime that runs them).
    pub fn ask_blocking<T: Kind<A>, R>(
        &self,
        id: T::Id,
        make: impl FnOnce(Reply<R>) -> T,
        timeout: Duration,
    ) -> Result<R, AskError> {
        // Refuse before sending: a request that went out with the caller told it failed
        // would be applied behind the caller's back (a withdrawal made twice on retry).
        if in_shard() || self.inner.core.runtime.block(&mut || {}).is_err() {
            return Err(AskError::WouldDeadlock);
        }
        let start = Instant::now();
        let (reply, asked) = Reply::new();
        if let Err(e) = self.send_timeout(id, make(reply), timeout) {
            return Err(ask_error(e.kind()));
        }
        // One timeout for both waits: for room, then for the answer.
        let left = timeout.saturating_sub(start.elapsed());
        let mut asked = Some(asked);
        let mut answer = Err(AskError::WouldDeadlock);
        let blocked = self.inner.core.runtime.block(&mut || {
            if let Some(asked) = asked.take() {
                answer = asked.wait_timeout(left);
            }
        });
        blocked.map_err(|WouldDeadlock| AskError::WouldDeadlock)?;
        answer
    }
}

impl<K, M, A> Hermes<K, M, A> {
    /// Totals over all shards, as of each shard's latest turn (a shard that is busy may be
    /// one turn behind). After [`shutdown`](Hermes::shutdown), the final totals.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for shard in self.inner.core.stats.iter() {
            total += *shard.lock().unwrap_or_else(PoisonError::into_inner);
        }
        total
    }

    /// How many shards run the receivers.
    pub fn shard_count(&self) -> usize {
        self.inner.core.inboxes.len()
    }

    /// False once shutdown has begun.
    pub fn is_accepting(&self) -> bool {
        self.inner.core.accepting.load(Ordering::Acquire)
    }

    /// Shuts Hermes down and waits for it: refuses new messages, lets queued messages drain
    /// (up to [`Config::drain_limit`](hermes_core::Config::drain_limit)), deactivates every live
    /// receiver once (so `deactivated` hooks run), ends every thread or task, drops everything
    /// Hermes owned (receivers, the factory, the dead-letter sink), and returns the final
    /// totals. Later calls return the same totals at once.
    ///
    /// Where it cannot wait (inside a receiver, on a thread of the async runtime that runs the
    /// shards, or on the pool's thread for the futures receivers start), it starts the shutdown
    /// and returns [`WouldDeadlock`] at once: the shards finish on their own; await
    /// [`shutdown_async`](Hermes::shutdown_async) to know when.
    pub fn shutdown(&self) -> Result<Stats, WouldDeadlock> {
        let finished = self.shutdown_async();
        if in_shard() {
            return Err(WouldDeadlock);
        }
        let mut stats = None;
        self.inner
            .core
            .runtime
            .block(&mut || stats = Some(finished.wait()))?;
        self.inner.join();
        Ok(stats.unwrap_or_default())
    }

    /// Begins shutting down (as [`shutdown`](Hermes::shutdown)) and returns a future of the
    /// final totals, resolved when every shard has finished.
    pub fn shutdown_async(&self) -> Finished {
        self.inner.begin_shutdown();
        Finished {
            finish: Arc::clone(&self.inner.core.finish),
        }
    }
}

impl<K, M> Inner<K, M> {
    fn begin_shutdown(&self) {
        if self.core.accepting.swap(false, Ordering::AcqRel) {
            self.core.close_shards();
        }
    }

    fn join(&self) {
        if !self.joined.swap(true, Ordering::AcqRel) {
            self.core.runtime.join();
        }
    }
}

impl<K, M> Drop for Inner<K, M> {
    fn drop(&mut self) {
        self.begin_shutdown();
        if in_shard() {
            return;
        }
        let done = &self.core.finish.done;
        let waited = self.core.runtime.block(&mut || {
            done.wait(None, |s| s.as_ref().copied());
        });
        match waited {
            Ok(()) => self.join(),
            // The shards finish on their runtime, or close where it drops them: either way
            // every `deactivated` hook runs.
            Err(WouldDeadlock) => tracing::debug!(
                "the last Hermes handle was dropped where it cannot wait: the shards finish \
                 shutting down on their runtime"
            ),
        }
    }
}

impl<K, M, A> Clone for Hermes<K, M, A> {
    fn clone(&self) -> Self {
        Hermes {
            inner: Arc::clone(&self.inner),
            app: PhantomData,
        }
    }
}

impl<K, M, A> fmt::Debug for Hermes<K, M, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hermes")
            .field("shards", &self.shard_count())
            .field("accepting", &self.is_accepting())
            .finish()
    }
}

/// The end of a hand-off ([`Hermes::release_moved`]): resolves once no shard has a receiver
/// live whose ID placement puts on another node.
#[must_use = "the hand-off has begun either way: await Released, or wait on it, to know when it is done"]
pub struct Released {
    release: Arc<crate::remote::Release>,
}

impl Released {
    /// Blocks until the hand-off is done or `timeout` passes; true if it is done.
    pub fn wait_timeout(&self, timeout: Duration) -> bool {
        let deadline = Instant::now().checked_add(timeout);
        self.release
            .done
            .wait(deadline, |s| s.as_ref().copied())
            .is_some()
    }
}

impl Future for Released {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.release.done.poll(cx, |s| s.as_ref().copied())
    }
}

impl fmt::Debug for Released {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Released").finish_non_exhaustive()
    }
}

/// The end of a shutdown: a future of the final totals, or [`wait`](Finished::wait) for them.
#[must_use = "the shutdown has begun either way: await Finished, or wait on it, to know when it is done and get the final totals"]
pub struct Finished {
    finish: Arc<Finish>,
}

impl Finished {
    /// Blocks until every shard has finished; returns the final totals.
    pub fn wait(&self) -> Stats {
        self.finish
            .done
            .wait(None, |s| s.as_ref().copied())
            .unwrap_or_default()
    }
}

impl Future for Finished {
    type Output = Stats;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Stats> {
        self.finish.done.poll(cx, |s| s.as_ref().copied())
    }
}

impl fmt::Debug for Finished {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Finished").finish_non_exhaustive()
    }
}
