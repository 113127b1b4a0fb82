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
pub(crate) mod stats;
pub(crate) mod storage;
pub(crate) mod ws;

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
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
use link::{ConnId, Link, Outbox};
use listen::ConnLimit;
use storage::Storage;

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
    /// A packet from connection `conn` (ignored unless it is the attached one).
    Packet { conn: ConnId, packet: Packet },
    /// A published message matching this session's subscriptions, whose maximum granted QoS
    /// is `qos`.
    Deliver { message: Message, qos: QoS },
    /// Several, in order, as [`Deliver`](SessionMsg::Deliver) each.
    DeliverMany(Vec<(Message, QoS)>),
    /// Connection `conn` ended for `reason`.
    Detach { conn: ConnId, reason: CloseReason },
    /// A retained shard's answer for a subscription granted `qos`.
    Retained {
        qos: QoS,
        answer: Result<Vec<Message>, hermes::AskError>,
    },
    /// A retained shard applied a retained PUBLISH of connection `conn`: what waited for it
    /// may go out.
    Stored { conn: ConnId },
    /// A retained shard applied the retained will of a connection that ended: close it now,
    /// so that a client that sees it closed finds the will retained.
    WillStored { link: Link },
    /// A packet of connection `conn` that the reader counted as unsettled is carried out,
    /// its sends delivered: the reader may take the direct path again.
    Settled { conn: ConnId },
    /// Time to see whether this session, if its client is away, has expired.
    ExpiryCheck,
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
    /// Accept errors are logged at most once a minute.
    pub(crate) accept_error_log: RateLimited,
    /// Live connections, to close them at shutdown.
    conns: Mutex<HashMap<ConnId, Link>>,
    conns_changed: tokio::sync::Notify,
    closing: AtomicBool,
    next_conn: AtomicU64,
}

/// How long an offline persistent session stays in memory after its last message, when it is
/// in the store too (it is activated again from there by the next message for it).
pub(crate) const OFFLINE_IDLE: Duration = Duration::from_secs(60);

/// The longest wait for connections to close.
const CLOSE_GRACE_MAX: Duration = Duration::from_secs(3600);

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
        Shared {
            conn_limit: ConnLimit::new(config.max_connections),
            auth: RwLock::new(Arc::new(auth)),
            acl: RwLock::new(acl.map(Arc::new)),
            started: Instant::now(),
            accept_error_log: RateLimited::new(Duration::from_secs(60)),
            limits: config.session_limits(),
            config,
            index: RwLock::new(index),
            storage,
            retained_shards: retained_shards.max(1),
            preloaded: Mutex::new(preloaded),
            counters: Counters::default(),
            started_at: SystemTime::now(),
            conns: Mutex::default(),
            conns_changed: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            next_conn: AtomicU64::new(1),
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

    /// Replaces the password file and ACL file for new connections.
    pub(crate) fn replace_access(&self, auth: Authenticator, acl: Option<AclFile>) {
        *self.auth.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(auth);
        *self.acl.write().unwrap_or_else(PoisonError::into_inner) = acl.map(Arc::new);
    }

    /// Whether the broker is shutting down.
    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Registers a new connection: its link, and the writer's end; `None` once the broker is
    /// shutting down.
    pub(crate) fn register(&self) -> Option<(Link, Outbox)> {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        if self.closing.load(Ordering::Acquire) {
            return None;
        }
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (link, outbox) = Link::new(conn, self.config.max_qos0_backlog);
        conns.insert(conn, link.clone());
        drop(conns);
        Counters::add(&self.counters.connections, 1);
        Some((link, outbox))
    }

    /// A connection task ended.
    pub(crate) fn unregister(&self, conn: ConnId) {
        let mut conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        conns.remove(&conn);
        drop(conns);
        self.conns_changed.notify_waiters();
    }

    /// Stops accepting connections and closes every live one (their wills are published:
    /// the server closing a connection is not a DISCONNECT [MQTT-3.1.2-8]); returns how many.
    pub(crate) fn close_all(&self) -> usize {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
        self.closing.store(true, Ordering::Release);
        for link in conns.values() {
            link.close(CloseReason::ServerClosed);
        }
        conns.len()
    }

    /// `at` in the broker's milliseconds (since it started, plus one: 0 is never), as the
    /// keep-alive sweep compares them ([`Link::set_due`]).
    pub(crate) fn stamp(&self, at: tokio::time::Instant) -> u64 {
        let since = at.into_std().saturating_duration_since(self.started);
        u64::try_from(since.as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    }

    /// The keep-alive sweep's pass: wakes the reader of every connection whose wait for a
    /// packet (keep alive [MQTT-3.1.2-24], or its CONNECT) was due before `now` (a
    /// [`stamp`](Self::stamp)), so that it closes; returns how many. One pass over the live
    /// connections instead of a timer in each.
    pub(crate) fn nudge_overdue(&self, now: u64) -> usize {
        let conns = self.conns.lock().unwrap_or_else(PoisonError::into_inner);
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
            let left = self
                .conns
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .len();
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return left;
            }
        }
    }
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
/// shard, not one per delivery.
pub(crate) fn fan_out(shared: &Shared, messages: &mut Vec<Message>) -> Vec<(ClientId, SessionMsg)> {
    let mut fanout = FANOUT.take();
    fanout.group(
        &shared.index.read().unwrap_or_else(PoisonError::into_inner),
        messages,
    );
    messages.clear();
    let groups = fanout
        .groups
        .drain(..)
        .map(|(client, mut delivered)| {
            let msg = match (delivered.pop(), delivered.is_empty()) {
                (Some((message, qos)), true) => SessionMsg::Deliver { message, qos },
                (last, _) => {
                    delivered.extend(last);
                    SessionMsg::DeliverMany(delivered)
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
    groups: Vec<(ClientId, Vec<(Message, QoS)>)>,
    /// Where each subscriber is in `groups`, when the messages' topics differ.
    index: hashbrown::HashMap<ClientId, usize>,
}

impl Fanout {
    /// Groups `messages` by subscriber: each message once per matching session, at the
    /// maximum QoS of its matching subscriptions [MQTT-3.3.5-1].
    fn group(&mut self, index: &Subscriptions<ClientId>, messages: &[Message]) {
        let Some(first) = messages.first() else {
            return;
        };
        index.matches(&first.topic, &mut self.matches);
        self.groups.extend(self.matches.iter().map(|(client, qos)| {
            let mut delivered = Vec::with_capacity(messages.len());
            delivered.push((first.clone(), qos));
            (client.clone(), delivered)
        }));
        let first_matches = self.groups.len();
        for message in &messages[1..] {
            if message.topic == first.topic && self.index.is_empty() {
                // The same topic, the same index: the same subscribers, in order.
                for (_, delivered) in &mut self.groups[..first_matches] {
                    let qos = delivered[0].1;
                    delivered.push((message.clone(), qos));
                }
                continue;
            }
            if self.index.is_empty() {
                for (i, (client, _)) in self.groups.iter().enumerate() {
                    self.index.insert(client.clone(), i);
                }
            }
            index.matches(&message.topic, &mut self.matches);
            for (client, qos) in self.matches.iter() {
                match self.index.get(client) {
                    Some(&i) => self.groups[i].1.push((message.clone(), qos)),
                    None => {
                        self.index.insert(client.clone(), self.groups.len());
                        self.groups
                            .push((client.clone(), vec![(message.clone(), qos)]));
                    }
                }
            }
        }
        self.index.clear();
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

/// Lets something happen at most once per period (a log line, say).
#[derive(Debug)]
pub(crate) struct RateLimited {
    start: Instant,
    period: Duration,
    /// Milliseconds since `start` of the last time allowed, plus one (0: never).
    last: AtomicU64,
}

impl RateLimited {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            start: Instant::now(),
            period,
            last: AtomicU64::new(0),
        }
    }

    /// Whether it may happen now.
    pub(crate) fn allow(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let period = u64::try_from(self.period.as_millis()).unwrap_or(u64::MAX);
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_add(1).saturating_sub(last) < period {
            return false;
        }
        self.last
            .compare_exchange(
                last,
                now.saturating_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok()
    }
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

    /// A subscriber and what it got: (topic, payload, QoS) in order.
    type Got = (String, Vec<(String, String, QoS)>);

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
                    .map(|(m, qos)| {
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
    /// the maximum QoS of the subscriber's matching filters, whatever their topics.
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
        let s = |t: &str, p: &str, q| (t.to_owned(), p.to_owned(), q);
        let (q0, q1, q2) = (QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce);

        // One topic: the fast path.
        let same = [
            message("t/1", "1"),
            message("t/1", "2"),
            message("t/1", "3"),
        ];
        assert_eq!(
            grouped(&mut fanout, &index, &same),
            [
                (
                    "a".into(),
                    vec![s("t/1", "1", q1), s("t/1", "2", q1), s("t/1", "3", q1)]
                ),
                (
                    "b".into(),
                    vec![s("t/1", "1", q2), s("t/1", "2", q2), s("t/1", "3", q2)]
                ),
            ]
        );
        // Topics that differ, a subscriber first matched late, a topic nobody wants.
        let mixed = [
            message("t/2", "1"),
            message("t/1", "2"),
            message("x", "3"),
            message("u", "4"),
            message("t/2", "5"),
            message("t/1", "6"),
        ];
        assert_eq!(
            grouped(&mut fanout, &index, &mixed),
            [
                (
                    "a".into(),
                    vec![
                        s("t/2", "1", q0),
                        s("t/1", "2", q1),
                        s("t/2", "5", q0),
                        s("t/1", "6", q1)
                    ]
                ),
                ("b".into(), vec![s("t/1", "2", q2), s("t/1", "6", q2)]),
                ("c".into(), vec![s("u", "4", q0)]),
            ]
        );
        // Nothing left over for the next call.
        assert!(grouped(&mut fanout, &index, &[]).is_empty());
        assert!(fanout.index.is_empty());
    }

    #[test]
    fn rate_limited_allows_once_per_period() {
        let limit = RateLimited::new(Duration::from_millis(200));
        assert!(limit.allow());
        assert!(!limit.allow());
        assert!(!limit.allow());
        std::thread::sleep(Duration::from_millis(250));
        assert!(limit.allow());
        assert!(!limit.allow());
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
