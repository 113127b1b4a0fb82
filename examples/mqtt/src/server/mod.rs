//! The running broker: Hermes receivers of two kinds, and the tokio edge that reads and writes
//! the sockets. See the README's "How it works" for the message flow.
//!
//! - [`session_rx`]: kind `Session`, one receiver per client ID, wrapping the sans-IO
//!   [`Session`](crate::Session): a virtual actor, activated from the store by any message.
//! - [`retained_rx`]: kind `Retained`, N receivers each owning the retained messages of the
//!   topics that hash to it.
//! - [`conn`]: per TCP connection, a reader task and a writer task.
//! - the subscription index, [`Shared::index`], read by every publisher and written by
//!   sessions.

pub(crate) mod conn;
pub(crate) mod link;
pub(crate) mod retained_rx;
pub(crate) mod session_rx;
pub(crate) mod storage;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use hermes::Reply;

use crate::config::Config;
use crate::message::Message;
use crate::packet::{Connect, Packet, QoS};
use crate::retained::RetainedStore;
use crate::session::Limits;
use crate::subscriptions::Subscriptions;
use crate::topic::TopicFilter;
use crate::will::CloseReason;

use link::{ConnId, Link, Outbox};
use storage::Storage;

/// A client identifier: the ID of a session receiver.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClientId(pub(crate) Arc<str>);

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
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
    },
    /// A packet from connection `conn` (ignored unless it is the attached one).
    Packet { conn: ConnId, packet: Packet },
    /// A published message matching this session's subscriptions, whose maximum granted QoS
    /// is `qos`.
    Deliver { message: Message, qos: QoS },
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

/// What the broker counts; see [`BrokerStats`](crate::BrokerStats).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connections: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) queue_drops: AtomicU64,
    pub(crate) qos0_drops: AtomicU64,
    pub(crate) full_drops: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) expired_sessions: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

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
    pub(crate) fn new(
        config: Config,
        storage: Option<Storage>,
        index: Subscriptions<ClientId>,
        retained_shards: u16,
        preloaded: Vec<Option<RetainedStore>>,
    ) -> Shared {
        Shared {
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
