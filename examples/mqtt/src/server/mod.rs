//! The running broker: Hermes receivers of two kinds, and the tokio edge that reads and writes
//! the sockets. See the README's "How it works" for the message flow.
//!
//! - [`session_rx`]: kind `Session`, one receiver per client ID, wrapping the sans-IO
//!   [`Session`](crate::Session): a virtual actor, activated from the store by any message.
//! - [`retained_rx`]: kind `Retained`, N receivers each owning the retained messages of the
//!   topics that hash to it.
//! - [`listen`]: the listeners (TCP, TLS, WebSocket, WebSocket over TLS), their limits and
//!   handshakes; [`ws`]: MQTT over WebSocket as a byte stream.
//! - [`conn`]: per connection, a reader task and a writer task.
//! - [`auth`]: passwords at CONNECT; [`stats`]: counters, `$SYS` topics, `/metrics`.
//! - the subscription index, [`Shared::index`], read by every publisher and written by
//!   sessions.

pub(crate) mod auth;
pub(crate) mod conn;
pub(crate) mod link;
pub(crate) mod listen;
pub(crate) mod retained_rx;
pub(crate) mod session_rx;
pub(crate) mod spin;
pub(crate) mod stats;
pub(crate) mod storage;
pub(crate) mod throttle;
pub(crate) mod ws;

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use hermes::Reply;

use crate::acl::{AclFile, ClientAcl};
use crate::config::Config;
use crate::message::Message;
use crate::packet::{Connect, Packet, QoS};
use crate::retained::RetainedStore;
use crate::session::Limits;
use crate::subscriptions::{Matches, Subscriptions};
use crate::topic::{TopicFilter, TopicName};
use crate::will::CloseReason;

pub(crate) use stats::Counters;

use auth::Authenticator;
use link::{ConnId, Frame, Frames, Link, Outbox};
use listen::ConnLimit;
use spin::IdleSpin;
use storage::Storage;
use throttle::Throttle;

/// A client identifier: the ID of a session receiver.
///
/// Its hash is computed once, when it is made: Hermes hashes a receiver's ID for every
/// message to it (on the way in and in the shard), and a client identifier can be 65535 bytes
/// long. Equal identifiers are usually clones of one `Arc`, compared by address first.
#[derive(Clone)]
pub(crate) struct ClientId {
    name: Arc<str>,
    hash: u64,
}

impl ClientId {
    pub(crate) fn new(name: &str) -> ClientId {
        // Deterministic (fixed keys): the same identifier hashes the same in every process.
        let hash =
            std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(name);
        ClientId {
            name: Arc::from(name),
            hash,
        }
    }

    /// The identifier, shared.
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }
}

impl PartialEq for ClientId {
    fn eq(&self, other: &ClientId) -> bool {
        Arc::ptr_eq(&self.name, &other.name)
            || (self.hash == other.hash && *self.name == *other.name)
    }
}

impl Eq for ClientId {}

impl std::hash::Hash for ClientId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // Equal identifiers have equal hashes: `hash` is a function of `name`.
        state.write_u64(self.hash);
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.name, f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

/// A retained-message shard: the ID of a retained receiver, `0..retained_shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RetainedShard(pub(crate) u16);

/// A message for a session receiver.
pub(crate) enum SessionMsg {
    /// A connection's CONNECT was accepted at the edge: attach it (taking over any other
    /// connection), answer CONNACK, resend what is in flight.
    Attach {
        /// The new connection.
        link: Link,
        /// Its CONNECT.
        connect: Box<Connect>,
        /// What its client may do, with an ACL file.
        acl: Option<Arc<ClientAcl>>,
        /// The reader wrote the CONNACK (a clean session's), and counted this message as
        /// unsettled: the session writes none, and settles it once attached.
        acked: bool,
    },
    /// The packets one read of connection `conn` brought, in order (ignored unless it is the
    /// attached one): one message per read, not one per packet, so that a QoS 2 flow's
    /// PUBLISH, PUBREL, PUBREC and PUBCOMP of one read cost one hop, one run of the session,
    /// one store of what changed and one write.
    Packets { conn: ConnId, packets: Vec<Packet> },
    /// A published message matching this session's subscriptions, whose maximum granted QoS
    /// is `qos`; with `durable`, its publisher's acknowledgement waits until this session has
    /// stored it (if it stores it).
    Deliver {
        message: Message,
        qos: QoS,
        durable: Option<Durable>,
    },
    /// Several, in order, as [`Deliver`](SessionMsg::Deliver) each (with its `durable`).
    DeliverMany(Vec<Delivery>, Option<Durable>),
    /// QoS 0 messages, in order, encoded once for all their subscribers: written as they are
    /// where the session would send them at QoS 0.
    DeliverFrames(Frames),
    /// Connection `conn` ended for `reason`.
    Detach { conn: ConnId, reason: CloseReason },
    /// A retained shard's answer for a subscription granted `qos`.
    Retained {
        qos: QoS,
        answer: Result<Vec<Message>, hermes::AskError>,
    },
    /// A retained shard applied a retained PUBLISH of connection `conn`, and stored it: what
    /// waited for it (hold number `hold`) may go out.
    Stored { conn: ConnId, hold: u64 },
    /// What a read of connection `conn`'s packets changed is on disk, here and in the sessions
    /// its messages went to (every clone of their [`Durable`] is dropped): the
    /// acknowledgements that waited for it (hold number `hold`) may go out.
    Durable { conn: ConnId, hold: u64 },
    /// A retained shard applied the retained will of a connection that ended: close it now,
    /// so that a client that sees it closed finds the will retained.
    WillStored { link: Link },
    /// A packet of connection `conn` that the reader counted as unsettled is carried out,
    /// its sends delivered: the reader may take the direct path again.
    Settled { conn: ConnId },
    /// Time to see whether this session, if its client is away, has expired.
    ExpiryCheck,
}

/// Held by every write a client's acknowledgements wait for: the changes its packets made to
/// its own session and the messages it published, queued in each persistent subscriber's
/// session. Each holder drops its clone once its write is committed (or needs none); when
/// the last is dropped the publisher's session gets [`SessionMsg::Durable`] and writes the
/// PUBACK, PUBREC, PUBREL, PUBCOMP or SUBACK that waited. So what the broker acknowledged
/// survives a crash (README, "Persistence").
#[derive(Clone)]
pub(crate) struct Durable(Arc<Reply<()>>);

impl Durable {
    /// A new one, and what completes when the last clone is dropped.
    pub(crate) fn new() -> (Durable, hermes::Asked<()>) {
        let (reply, asked) = Reply::new();
        (Durable(Arc::new(reply)), asked)
    }

    /// Whether this is the only clone left: nothing else waits to be stored.
    pub(crate) fn is_alone(&self) -> bool {
        Arc::strong_count(&self.0) == 1
    }
}

impl fmt::Debug for Durable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Durable")
    }
}

/// One delivery of a [`SessionMsg::DeliverMany`].
#[derive(Debug, Clone)]
pub(crate) enum Delivery {
    /// A published message matching the session's subscriptions, whose maximum granted QoS
    /// is the second.
    Message(Message, QoS),
    /// A QoS 0 message encoded once for all its subscribers: written as it is where the
    /// session would send the message at QoS 0.
    Frame(Frame),
}

/// A message for a retained shard.
pub(crate) enum RetainedMsg {
    /// Apply a PUBLISH with RETAIN 1.
    Publish(Message),
    /// Apply a PUBLISH with RETAIN 1, and say when it is applied.
    Store(Message, Reply<()>),
    /// The retained messages that match a filter.
    Matching(TopicFilter, Reply<Vec<Message>>),
}

hermes::app! {
    /// The broker's receivers: sessions by client ID, retained messages by shard.
    pub(crate) app BrokerApp(BrokerId, BrokerMsg) {
        Session(ClientId => SessionMsg),
        Retained(RetainedShard => RetainedMsg),
    }
}

/// The typed Hermes handle of the broker.
pub(crate) type Handle = hermes::Hermes<BrokerId, BrokerMsg, BrokerApp>;

/// What every receiver and connection task shares.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) limits: Limits,
    /// The subscription index: written by sessions, read by every publisher.
    pub(crate) index: RwLock<Subscriptions<ClientId>>,
    /// `None` with `memory`.
    pub(crate) storage: Option<Storage>,
    pub(crate) retained_shards: u16,
    /// Retained messages loaded at startup, per shard, taken by each shard's first activation.
    pub(crate) preloaded: Mutex<Vec<Option<RetainedStore>>>,
    pub(crate) counters: Counters,
    /// When this broker started: a stored session whose client was connected when the last
    /// one stopped counts as away since then.
    pub(crate) started_at: SystemTime,
    /// The same, for the uptime.
    pub(crate) started: Instant,
    /// `allow_anonymous` and the password file; replaced by a reload.
    auth: RwLock<Arc<Authenticator>>,
    /// The ACL file, if any; replaced by a reload.
    acl: RwLock<Option<Arc<AclFile>>>,
    /// `max_connections`, over all listeners.
    pub(crate) conn_limit: Arc<ConnLimit>,
    /// Accept errors are logged at most once a minute (`stats::summary_loop` counts them).
    pub(crate) accept_error_log: Throttle,
    /// Retained messages refused for `max_retained` or `max_retained_bytes`.
    pub(crate) retained_refused_log: Throttle,
    /// Live connections, to close them at shutdown and for the keep-alive sweep: in
    /// [`CONN_SHARDS`] maps by connection number, each under its own lock, so that the sweep
    /// (which walks them all) holds a lock over a few hundred at most, and connects and
    /// closes on other shards do not wait for it.
    conns: Box<[Mutex<HashMap<ConnId, Link>>]>,
    conns_changed: tokio::sync::Notify,
    closing: AtomicBool,
    next_conn: AtomicU64,
    /// Keeps the runtime worker awake a moment after a read or an accept (`idle_spin_us`).
    pub(crate) spin: Arc<IdleSpin>,
}

/// How long an offline persistent session stays in memory after its last message, when it is
/// in the store too (it is activated again from there by the next message for it).
pub(crate) const OFFLINE_IDLE: Duration = Duration::from_secs(60);

/// The longest wait for connections to close.
const CLOSE_GRACE_MAX: Duration = Duration::from_secs(3600);

/// How many maps the live connections are in ([`Shared::conns`]).
const CONN_SHARDS: usize = 32;

/// Never, as an idle timeout.
pub(crate) const NEVER: Duration = Duration::MAX;

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: Config,
        storage: Option<Storage>,
        index: Subscriptions<ClientId>,
        retained_shards: u16,
        preloaded: Vec<Option<RetainedStore>>,
        auth: Authenticator,
        acl: Option<AclFile>,
    ) -> Shared {
        let spin = IdleSpin::new(Duration::from_micros(u64::from(config.idle_spin_us)));
        Shared {
            conn_limit: ConnLimit::new(config.max_connections),
            auth: RwLock::new(Arc::new(auth)),
            acl: RwLock::new(acl.map(Arc::new)),
            started: Instant::now(),
            accept_error_log: Throttle::new(
                ("accept error", "accept errors"),
                throttle::Level::Warn,
                Duration::from_secs(60),
            ),
            retained_refused_log: Throttle::new(
                (
                    "retained message refused for max_retained or max_retained_bytes",
                    "retained messages refused for max_retained or max_retained_bytes",
                ),
                throttle::Level::Warn,
                throttle::PERIOD,
            ),
            limits: config.session_limits(),
            config,
            index: RwLock::new(index),
            storage,
            retained_shards: retained_shards.max(1),
            preloaded: Mutex::new(preloaded),
            counters: Counters::default(),
            started_at: SystemTime::now(),
            conns: (0..CONN_SHARDS).map(|_| Mutex::default()).collect(),
            conns_changed: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
            spin: Arc::new(spin),
        }
    }

    /// The retained shard of a topic (or of a filter without wildcards, which is its topic).
    pub(crate) fn retained_shard(&self, topic: &[u8]) -> RetainedShard {
        RetainedShard(retained_shard_of(topic, self.retained_shards))
    }

    /// The authenticator of new connections.
    pub(crate) fn auth(&self) -> Arc<Authenticator> {
        Arc::clone(&self.auth.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The ACL file of new connections.
    pub(crate) fn acl(&self) -> Option<Arc<AclFile>> {
        self.acl
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Logs the counts of the throttled problems not logged yet, if due at `now` (or
    /// `force`d: at the shutdown, after the last commit).
    pub(crate) fn log_throttled(&self, now: Instant, force: bool) {
        if let Some(storage) = &self.storage
            && !force
        {
            // The shutdown's last summary comes from `Storage::shutdown`, after its commit.
            storage.log_errors(now);
        }
        self.retained_refused_log.log_pending(now, force);
    }

    /// Replaces the password file and ACL file for new connections.
    pub(crate) fn replace_access(&self, auth: Authenticator, acl: Option<AclFile>) {
        *self.auth.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(auth);
        *self.acl.write().unwrap_or_else(PoisonError::into_inner) = acl.map(Arc::new);
    }

    /// Whether the broker is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The map of live connections that `conn` is in, locked.
    fn conns_of(&self, conn: ConnId) -> MutexGuard<'_, HashMap<ConnId, Link>> {
        // Connection numbers are consecutive: consecutive connections are in different maps.
        let shard = (conn % CONN_SHARDS as u64) as usize;
        lock(&self.conns[shard])
    }

    /// Registers a new connection: its link, and the writer's end; `None` once the broker is
    /// shutting down.
    pub(crate) fn register(&self) -> Option<(Link, Outbox)> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.conns_of(conn);
        // Under the map's lock: `close_all` sets it before walking the maps, each locked.
        if self.closing.load(Ordering::Acquire) {
            return None;
        }
        let (link, outbox) = Link::new(conn, self.config.max_qos0_backlog);
        conns.insert(conn, link.clone());
        drop(conns);
        Counters::add(&self.counters.connections, 1);
        Some((link, outbox))
    }

    /// A count that every read and every accepted connection moves: what the spinner
    /// ([`spin::run`]) watches for activity.
    pub(crate) fn activity(&self) -> u64 {
        self.counters
            .bytes_received
            .load(Ordering::Relaxed)
            .wrapping_add(self.next_conn.load(Ordering::Relaxed))
    }

    /// A connection task ended.
    pub(crate) fn unregister(&self, conn: ConnId) {
        self.conns_of(conn).remove(&conn);
        self.conns_changed.notify_waiters();
    }

    /// Stops accepting connections and closes every live one (their wills are published:
    /// the server closing a connection is not a DISCONNECT [MQTT-3.1.2-8]); returns how many.
    pub(crate) fn close_all(&self) -> usize {
        self.closing.store(true, Ordering::Release);
        let mut closed = 0;
        for shard in &self.conns {
            let conns = lock(shard);
            for link in conns.values() {
                link.close(CloseReason::ServerClosed);
            }
            closed += conns.len();
        }
        closed
    }

    /// How many connections are live.
    fn live_connections(&self) -> usize {
        self.conns.iter().map(|shard| lock(shard).len()).sum()
    }

    /// `at` in the broker's milliseconds (since it started, plus one: 0 is never), as the
    /// keep-alive sweep compares them ([`Link::set_due`]).
    pub(crate) fn stamp(&self, at: tokio::time::Instant) -> u64 {
        let since = at.into_std().saturating_duration_since(self.started);
        u64::try_from(since.as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// How many maps of live connections the keep-alive sweep walks, one at a time
    /// ([`sweep_shard`](Self::sweep_shard)).
    pub(crate) fn conn_shards(&self) -> usize {
        self.conns.len()
    }

    /// The keep-alive sweep's pass over map `shard` of the live connections: wakes the reader
    /// of every connection whose wait for a packet (keep alive [MQTT-3.1.2-24], or its
    /// CONNECT) was due before `now` (a [`stamp`](Self::stamp)), so that it closes; returns
    /// how many. One pass over the live connections instead of a timer in each, holding one
    /// map's lock at a time.
    pub(crate) fn sweep_shard(&self, shard: usize, now: u64) -> usize {
        let Some(conns) = self.conns.get(shard) else {
            return 0;
        };
        let conns = lock(conns);
        let mut nudged = 0;
        for link in conns.values() {
            let due = link.due();
            if due != 0 && due < now {
                link.nudge();
                nudged += 1;
            }
        }
        nudged
    }

    /// Waits until every connection task has ended, at most `timeout`; returns how many are
    /// still running.
    pub(crate) async fn connections_ended(&self, timeout: Duration) -> usize {
        let now = tokio::time::Instant::now();
        let deadline = now.checked_add(timeout).unwrap_or(now + CLOSE_GRACE_MAX);
        loop {
            let notified = self.conns_changed.notified();
            let left = self.live_connections();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return left;
            }
        }
    }
}

#[cfg(test)]
impl Shared {
    /// A broker's shared state with the default configuration, no storage, no subscription.
    pub(crate) fn for_tests() -> Arc<Shared> {
        let auth = Authenticator::new(true, None, crate::auth::HashParams::DEFAULT)
            .expect("no password file: nothing to hash");
        Arc::new(Shared::new(
            Config::default(),
            None,
            Subscriptions::new(),
            1,
            Vec::new(),
            auth,
            None,
        ))
    }
}

/// `mutex` locked, also if a thread panicked while holding it (what it guards stays whole:
/// each change is one insert or remove).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// FNV-1a of `topic`, modulo `shards`: stable for a given build and input.
pub(crate) fn retained_shard_of(topic: &[u8], shards: u16) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in topic {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    u16::try_from(hash % u64::from(shards.max(1))).unwrap_or(0)
}

/// Whether a client with `acl` may publish to `topic`: never to `$SYS` topics (the broker's
/// own), and with an ACL file only where it grants.
pub(crate) fn may_publish(acl: Option<&ClientAcl>, topic: &TopicName) -> bool {
    let bytes = topic.as_bytes();
    if bytes == b"$SYS" || bytes.starts_with(b"$SYS/") {
        return false;
    }
    acl.is_none_or(|acl| acl.can_publish(topic))
}

/// Sends `messages`, in order, to every session subscribed to their topics, straight from the
/// edge (a `$SYS` topic), waiting while a mailbox is full; empties `messages`. False once the
/// broker is closing. See [`fan_out`].
pub(crate) async fn route_direct(
    shared: &Shared,
    hermes: &Handle,
    messages: &mut Vec<Message>,
) -> bool {
    let groups = fan_out(shared, messages);
    hermes.send_all_async(groups).await.is_ok()
}

thread_local! {
    /// The grouping of [`fan_out`], for whoever routes on this thread: a scratch buffer, so
    /// that connections keep none.
    static FANOUT: Cell<Fanout> = Cell::default();
}

/// What to send so that `messages` reach, in order, every session subscribed to their topics
/// (a reader's QoS 0 PUBLISHes gathered from one read, a `$SYS` topic); empties `messages`.
///
/// One Hermes message per subscriber, not per delivery: a subscriber that several of the
/// messages match gets them together in one [`SessionMsg::DeliverMany`], in order, so that its
/// session takes them in one run and its connection's writer writes them in one system call.
/// Sent with one [`send_all_async`](hermes::Hermes::send_all_async), they take one lock per
/// shard, not one per delivery. A QoS 0 message that goes to more than one subscriber is
/// encoded once ([`Delivery::Frame`]): each subscriber's session copies its bytes. QoS 0
/// messages all on one topic (a publisher's burst) are encoded once together
/// ([`SessionMsg::DeliverFrames`]): every subscriber gets the same buffer, which its writer
/// writes as it is.
pub(crate) fn fan_out(shared: &Shared, messages: &mut Vec<Message>) -> Vec<(ClientId, SessionMsg)> {
    let mut fanout = FANOUT.take();
    let index = shared.index.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(frames) = fanout.same_topic_qos0(&index, messages) {
        fanout.first_matched = false;
        drop(index);
        messages.clear();
        let groups = fanout
            .matches
            .iter()
            .map(|(client, _)| (client.clone(), SessionMsg::DeliverFrames(frames.clone())))
            .collect();
        FANOUT.set(fanout);
        return groups;
    }
    fanout.group(&index, messages);
    drop(index);
    messages.clear();
    let groups = fanout
        .groups
        .drain(..)
        .map(|(client, mut delivered)| {
            let msg = match (delivered.pop(), delivered.is_empty()) {
                (Some(Delivery::Message(message, qos)), true) => SessionMsg::Deliver {
                    message,
                    qos,
                    durable: None,
                },
                (last, _) => {
                    delivered.extend(last);
                    SessionMsg::DeliverMany(delivered, None)
                }
            };
            (client, msg)
        })
        .collect();
    FANOUT.set(fanout);
    groups
}

/// What [`fan_out`] keeps between calls: the messages of each subscriber.
#[derive(Default)]
pub(crate) struct Fanout {
    matches: Matches<ClientId>,
    /// Each subscriber, in the order first matched, with its messages in order.
    groups: Vec<(ClientId, Vec<Delivery>)>,
    /// Where each subscriber is in `groups`, when the messages' topics differ.
    index: hashbrown::HashMap<ClientId, usize>,
    /// `matches` holds the first message's subscribers already.
    first_matched: bool,
}

impl Fanout {
    /// `messages` encoded together if they are all QoS 0 on one topic, and more than one
    /// subscriber has them (left in `matches`, each at QoS 0 whatever its subscription's).
    fn same_topic_qos0(
        &mut self,
        index: &Subscriptions<ClientId>,
        messages: &[Message],
    ) -> Option<Frames> {
        let first = messages.first()?;
        let same = messages
            .iter()
            .all(|m| m.qos == QoS::AtMostOnce && m.topic == first.topic);
        if !same {
            return None;
        }
        index.matches(&first.topic, &mut self.matches);
        self.first_matched = true;
        if self.matches.len() < 2 {
            return None;
        }
        Frames::qos0(messages)
    }

    /// Groups `messages` by subscriber: each message once per matching session, at the
    /// maximum QoS of its matching subscriptions [MQTT-3.3.5-1].
    fn group(&mut self, index: &Subscriptions<ClientId>, messages: &[Message]) {
        let Some(first) = messages.first() else {
            return;
        };
        if !std::mem::take(&mut self.first_matched) {
            index.matches(&first.topic, &mut self.matches);
        }
        let shared = self.matches.len() > 1;
        let frame = shared.then(|| Frame::qos0_of(first)).flatten();
        self.groups.extend(self.matches.iter().map(|(client, qos)| {
            let mut delivered = Vec::with_capacity(messages.len());
            delivered.push(delivery(first, qos, frame.as_ref()));
            (client.clone(), delivered)
        }));
        let first_matches = self.groups.len();
        for message in &messages[1..] {
            if message.topic == first.topic && self.index.is_empty() {
                // The same topic, the same index: the same subscribers, in order.
                let frame = shared.then(|| Frame::qos0_of(message)).flatten();
                // `matches` still holds the first topic's, in the order of the groups.
                let groups = self.groups[..first_matches].iter_mut();
                for ((_, delivered), (_, qos)) in groups.zip(self.matches.iter()) {
                    delivered.push(delivery(message, qos, frame.as_ref()));
                }
                continue;
            }
            if self.index.is_empty() {
                for (i, (client, _)) in self.groups.iter().enumerate() {
                    self.index.insert(client.clone(), i);
                }
            }
            index.matches(&message.topic, &mut self.matches);
            let frame = (self.matches.len() > 1)
                .then(|| Frame::qos0_of(message))
                .flatten();
            for (client, qos) in self.matches.iter() {
                let delivery = delivery(message, qos, frame.as_ref());
                match self.index.get(client) {
                    Some(&i) => self.groups[i].1.push(delivery),
                    None => {
                        self.index.insert(client.clone(), self.groups.len());
                        self.groups.push((client.clone(), vec![delivery]));
                    }
                }
            }
        }
        self.index.clear();
    }
}

/// `message` for a subscriber granted `qos`: its `frame`, if it has one.
fn delivery(message: &Message, qos: QoS, frame: Option<&Frame>) -> Delivery {
    match frame {
        Some(frame) => Delivery::Frame(frame.clone()),
        None => Delivery::Message(message.clone(), qos),
    }
}

/// Sends `msg` to `id` as [`send_async`](hermes::Hermes::send_async) does (waiting while
/// the receiver's mailbox or its shard's inbox is full), with a future of a pointer's size:
/// the message is offered at once, and only when there is no room is a future that waits
/// allocated. A connection's task is as large as the largest future it ever awaits, and it
/// awaits this for each packet: inline, `send_async`'s future (the message, its envelope)
/// would be most of an idle connection's memory. `Err` once the broker is closing.
pub(crate) fn send_wait<'a, T>(
    hermes: &'a Handle,
    id: T::Id,
    msg: T,
) -> impl Future<Output = Result<(), ()>> + Send + 'a
where
    T: hermes::Kind<BrokerApp> + Send + 'a,
    T::Id: Clone + Send + 'a,
{
    use futures_util::future::Either;
    match hermes.try_send(id.clone(), msg) {
        Ok(()) => Either::Left(std::future::ready(Ok(()))),
        Err(hermes::SendError::Full(msg)) => Either::Right(Box::pin(async move {
            hermes.send_async(id, msg).await.map_err(|_| ())
        })),
        Err(_) => Either::Left(std::future::ready(Err(()))),
    }
}

/// What is left to send when a mailbox was full: a future that sends it, waiting for room;
/// false once the broker is closing.
pub(crate) type Waiting = std::pin::Pin<Box<dyn Future<Output = bool> + Send>>;

thread_local! {
    /// The matches of one topic, for whoever routes a message on this thread: a scratch
    /// buffer, so that connections and sessions keep none.
    static MATCHES: Cell<Matches<ClientId>> = Cell::default();
}

/// Calls `f` with the subscribers of `topic` (each once, at the maximum QoS of its matching
/// subscriptions), matched into the thread's scratch buffer; the index is not locked while
/// `f` runs.
pub(crate) fn with_subscribers<T>(
    shared: &Shared,
    topic: &TopicName,
    f: impl FnOnce(&Matches<ClientId>) -> T,
) -> T {
    let mut matches = MATCHES.take();
    shared
        .index
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .matches(topic, &mut matches);
    let result = f(&matches);
    MATCHES.set(matches);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_equal_by_name_and_hash_alike() {
        use std::hash::BuildHasher;
        let a = ClientId::new("client-a");
        let also_a = ClientId::new("client-a");
        let b = ClientId::new("client-b");
        assert!(!Arc::ptr_eq(&a.name, &also_a.name));
        assert_eq!(a, also_a);
        assert_eq!(a, a.clone());
        assert_ne!(a, b);
        let state = std::collections::hash_map::RandomState::new();
        assert_eq!(state.hash_one(&a), state.hash_one(&also_a));
        assert_ne!(state.hash_one(&a), state.hash_one(&b));
        assert_eq!(&**a.name(), "client-a");
        assert_eq!(format!("{a} {a:?}"), "client-a \"client-a\"");
    }

    fn message(topic: &str, payload: &str) -> Message {
        Message {
            topic: TopicName::try_from(topic).unwrap(),
            payload: bytes::Bytes::copy_from_slice(payload.as_bytes()),
            qos: QoS::AtMostOnce,
            retain: false,
        }
    }

    /// The message a frame carries, decoded: a QoS 0 PUBLISH with RETAIN 0.
    fn frame_message(frame: &Frame) -> Message {
        let mut wire = bytes::BytesMut::new();
        let mut queued = link::Queued::default();
        let (link, outbox) = Link::new(1, 10);
        let mut outs = vec![link::Out::Frame(frame.clone())];
        assert_eq!(link.send_all(&mut outs), (0, false));
        assert!(outbox.take(&mut queued));
        for chunk in &queued.chunks {
            wire.extend_from_slice(chunk);
        }
        wire.extend_from_slice(&queued.tail);
        let Ok(Some(Packet::Publish(publish))) = crate::codec::decode(&mut wire, usize::MAX) else {
            panic!("a frame is a PUBLISH");
        };
        assert!(wire.is_empty());
        assert_eq!(publish.qos, crate::packet::PublishQos::AtMostOnce);
        assert!(!publish.retain, "RETAIN 0 [MQTT-3.3.1-9]");
        Message::from(publish)
    }

    /// A subscriber and what it got: (topic, payload, QoS granted) in order; `None` for a
    /// QoS 0 message encoded once for all its subscribers.
    type Got = (String, Vec<(String, String, Option<QoS>)>);

    /// What each subscriber gets, in order, sorted by client.
    fn grouped(
        fanout: &mut Fanout,
        index: &Subscriptions<ClientId>,
        messages: &[Message],
    ) -> Vec<Got> {
        fanout.group(index, messages);
        let mut groups: Vec<_> = fanout
            .groups
            .drain(..)
            .map(|(client, delivered)| {
                let delivered = delivered
                    .into_iter()
                    .map(|delivery| {
                        let (m, qos) = match delivery {
                            Delivery::Message(m, qos) => (m, Some(qos)),
                            Delivery::Frame(frame) => (frame_message(&frame), None),
                        };
                        let payload = String::from_utf8(m.payload.to_vec()).unwrap();
                        (m.topic.as_str().to_owned(), payload, qos)
                    })
                    .collect();
                (client.to_string(), delivered)
            })
            .collect();
        groups.sort();
        groups
    }

    /// Messages gathered from one read go to each subscriber together, in order, each once at
    /// the maximum QoS of the subscriber's matching filters, whatever their topics; a QoS 0
    /// message for more than one subscriber is encoded once, as a PUBLISH at QoS 0 with
    /// RETAIN 0, whatever it was published with.
    #[test]
    fn fanout_groups_each_subscribers_messages_in_order() {
        let mut index = Subscriptions::new();
        let filter = |f: &str| TopicFilter::try_from(f).unwrap();
        let (a, b, c) = (ClientId::new("a"), ClientId::new("b"), ClientId::new("c"));
        index.subscribe(&filter("t/+"), a.clone(), QoS::AtMostOnce);
        index.subscribe(&filter("t/1"), a.clone(), QoS::AtLeastOnce);
        index.subscribe(&filter("t/1"), b.clone(), QoS::ExactlyOnce);
        index.subscribe(&filter("u"), c.clone(), QoS::AtMostOnce);
        let mut fanout = Fanout::default();
        let s = |t: &str, p: &str, q| (t.to_owned(), p.to_owned(), Some(q));
        let f = |t: &str, p: &str| (t.to_owned(), p.to_owned(), None);
        let (q0, q1, q2) = (QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce);
        let with_qos = |m: Message, qos| Message { qos, ..m };
        let retained = |m: Message| Message { retain: true, ..m };

        // One topic: the fast path; QoS 0 encoded once for both, QoS 1 at each one's QoS.
        let same = [
            message("t/1", "1"),
            retained(message("t/1", "2")),
            with_qos(message("t/1", "3"), q1),
            message("t/1", "4"),
        ];
        assert_eq!(
            grouped(&mut fanout, &index, &same),
            [
                (
                    "a".into(),
                    vec![
                        f("t/1", "1"),
                        f("t/1", "2"),
                        s("t/1", "3", q1),
                        f("t/1", "4")
                    ]
                ),
                (
                    "b".into(),
                    vec![
                        f("t/1", "1"),
                        f("t/1", "2"),
                        s("t/1", "3", q2),
                        f("t/1", "4")
                    ]
                ),
            ]
        );
        // The same with a QoS 1 message first.
        let same = [with_qos(message("t/1", "1"), q1), message("t/1", "2")];
        assert_eq!(
            grouped(&mut fanout, &index, &same),
            [
                ("a".into(), vec![s("t/1", "1", q1), f("t/1", "2")]),
                ("b".into(), vec![s("t/1", "1", q2), f("t/1", "2")]),
            ]
        );
        // Topics that differ, a subscriber first matched late, a topic nobody wants; a
        // message for one subscriber is not encoded ahead.
        let mixed = [
            message("t/2", "1"),
            message("t/1", "2"),
            message("x", "3"),
            message("u", "4"),
            message("t/2", "5"),
            with_qos(message("t/1", "6"), q2),
        ];
        assert_eq!(
            grouped(&mut fanout, &index, &mixed),
            [
                (
                    "a".into(),
                    vec![
                        s("t/2", "1", q0),
                        f("t/1", "2"),
                        s("t/2", "5", q0),
                        s("t/1", "6", q1)
                    ]
                ),
                ("b".into(), vec![f("t/1", "2"), s("t/1", "6", q2)]),
                ("c".into(), vec![s("u", "4", q0)]),
            ]
        );
        // Nothing left over for the next call.
        assert!(grouped(&mut fanout, &index, &[]).is_empty());
        assert!(fanout.index.is_empty());
    }

    /// QoS 0 messages all on one topic, for more than one subscriber, are encoded once
    /// together for all of them; anything else is grouped per subscriber as before, the
    /// subscribers matched once.
    #[test]
    fn fanout_encodes_a_burst_on_one_topic_once() {
        let mut index = Subscriptions::new();
        let filter = |f: &str| TopicFilter::try_from(f).unwrap();
        let (a, b) = (ClientId::new("a"), ClientId::new("b"));
        index.subscribe(&filter("t/+"), a.clone(), QoS::AtLeastOnce);
        index.subscribe(&filter("t/1"), b.clone(), QoS::AtMostOnce);
        let mut fanout = Fanout::default();
        let burst = [
            message("t/1", "1"),
            message("t/1", "2"),
            message("t/1", "3"),
        ];
        let frames = fanout
            .same_topic_qos0(&index, &burst)
            .expect("encoded once");
        assert_eq!(frames.len(), 3);
        let mut clients: Vec<_> = fanout.matches.iter().map(|(c, _)| c.to_string()).collect();
        clients.sort();
        assert_eq!(clients, ["a", "b"]);
        fanout.first_matched = false;
        // A QoS 1 message among them, or another topic: per subscriber.
        let qos1 = [
            message("t/1", "1"),
            Message {
                qos: QoS::AtLeastOnce,
                ..message("t/1", "2")
            },
        ];
        assert!(fanout.same_topic_qos0(&index, &qos1).is_none());
        assert_eq!(grouped(&mut fanout, &index, &qos1).len(), 2);
        let two_topics = [message("t/1", "1"), message("t/2", "2")];
        assert!(fanout.same_topic_qos0(&index, &two_topics).is_none());
        assert_eq!(grouped(&mut fanout, &index, &two_topics).len(), 2);
        // One subscriber: not encoded ahead; its matches are reused, not looked up again.
        let one = [message("t/2", "1"), message("t/2", "2")];
        assert!(fanout.same_topic_qos0(&index, &one).is_none());
        assert!(fanout.first_matched);
        assert_eq!(
            grouped(&mut fanout, &index, &one),
            [(
                "a".into(),
                vec![
                    ("t/2".into(), "1".into(), Some(QoS::AtLeastOnce)),
                    ("t/2".into(), "2".into(), Some(QoS::AtLeastOnce))
                ]
            )]
        );
        assert!(!fanout.first_matched);
    }

    #[test]
    fn sys_topics_may_not_be_published_by_clients() {
        let topic = |s: &str| TopicName::try_from(s).unwrap();
        assert!(!may_publish(None, &topic("$SYS")));
        assert!(!may_publish(None, &topic("$SYS/broker/version")));
        assert!(may_publish(None, &topic("$SYSTEM/x")));
        assert!(may_publish(None, &topic("a/$SYS")));
    }
}
