//! The state of one client's session [4.1], as a sans-IO state machine: no I/O, no clock (the
//! time is passed in where it matters), no threads.
//!
//! The broker keeps one [`Session`] per client identifier. The connection feeds it the client's
//! packets (`on_*` methods), the router feeds it the messages that match its subscriptions
//! ([`deliver`](Session::deliver)), and each call pushes what must happen next into a
//! caller-provided `Vec<`[`Output`]`>`, in the order it must happen: packets to write to the
//! client, messages to publish into the broker, and subscriptions for the subscription index.
//!
//! # What it implements
//!
//! - **Clean and persistent sessions** [3.1.2.4]. [`connect`](Session::connect) with
//!   `clean = false` resumes the state [MQTT-3.1.2-4] and answers CONNACK with Session Present
//!   1 if there was state [MQTT-3.2.2-2], 0 otherwise [MQTT-3.2.2-3]. With `clean = true` the
//!   previous state is discarded, the session lasts as long as the connection, and its state
//!   is never reused [MQTT-3.1.2-6], [MQTT-3.2.2-1]. While a persistent session's client is
//!   away, QoS 1 and 2 messages for it are queued [MQTT-3.1.2-5].
//! - **Subscriptions**: the session's own filters with their granted QoS. A SUBSCRIBE to a
//!   filter the session already has replaces its QoS [MQTT-3.8.4-3]; UNSUBSCRIBE compares
//!   filters character by character [MQTT-3.10.4-1]. The broker-wide index (see
//!   [`Subscriptions`](crate::Subscriptions)) is told through [`Output::Subscribe`] and
//!   [`Output::Unsubscribe`]; it decides which sessions a message goes to and at which granted
//!   QoS, the maximum of a session's overlapping subscriptions [MQTT-3.3.5-1].
//! - **Outgoing delivery** at the minimum of the message's QoS and the granted QoS
//!   [MQTT-3.8.4-6], with RETAIN cleared [MQTT-3.3.1-9] ([`deliver`](Session::deliver)) or set
//!   for retained messages sent for a new subscription [MQTT-3.3.1-8]
//!   ([`deliver_retained`](Session::deliver_retained)). QoS 1 and 2 messages get a packet
//!   identifier that no other outgoing message in flight has, never 0 [MQTT-2.3.1-1],
//!   [MQTT-2.3.1-4], and follow the QoS 1 (PUBLISH, PUBACK) [MQTT-4.3.2-1] and QoS 2
//!   (PUBLISH, PUBREC, PUBREL, PUBCOMP) [MQTT-4.3.3-1] flows. At most
//!   [`Limits::max_inflight`] of them are unacknowledged at once; the rest wait in a queue of
//!   at most [`Limits::max_queued`].
//! - **Redelivery**: when a persistent session's client comes back, every unacknowledged
//!   PUBLISH is sent again with DUP 1 and its original packet identifier, and every PUBREL of a
//!   message in the PUBREL stage is sent again, in the order they were first sent
//!   [MQTT-4.4.0-1], [MQTT-4.6.0-1], [MQTT-3.3.1-1]. A PUBLISH is never sent again once its
//!   PUBREL was [MQTT-4.3.3-1].
//! - **Incoming QoS 2** ("method B" of [4.3.3]): the message is published into the broker when
//!   its PUBLISH arrives, and its packet identifier is kept until the PUBREL; a PUBLISH with
//!   the same identifier before then is answered PUBREC again but not published again
//!   [MQTT-4.3.3-2]. A PUBREL is answered PUBCOMP, also for an identifier the session does not
//!   hold (a PUBREL sent again after the PUBCOMP was lost).
//! - **Ordering** [4.6]: PUBACKs and PUBRECs go out in the order of the PUBLISHes
//!   [MQTT-4.6.0-2], [MQTT-4.6.0-3], PUBRELs in the order of the PUBRECs [MQTT-4.6.0-4] (each
//!   is answered at once), and QoS 1 and 2 messages to a client are sent in the order they were
//!   delivered to the session: the queue is first in, first out, and a message waits behind
//!   the queue even when the window has room [MQTT-4.6.0-6]. QoS 0 messages go out at once when
//!   the client is connected, ahead of queued QoS 1 and 2 ones: the order rule is per topic
//!   *and QoS*.
//!
//! # Choices
//!
//! - **QoS 0 while the client is away**: discarded, not queued (the specification allows
//!   either, [3.1.2.4]), and counted in [`discarded`](Session::discarded). A QoS 0 message has
//!   no acknowledgement, so it could not be kept safely anyway.
//! - **Queue full: the oldest queued message is dropped**, and counted in
//!   [`dropped`](Session::dropped). A client that comes back after a long absence gets the
//!   most recent [`Limits::max_queued`] messages, not the first ones; the order of those it
//!   gets is kept. The messages in flight are never dropped.
//! - **PUBREC for an identifier not in flight** is answered PUBREL anyway, so that a client
//!   can always finish its side of the flow; its PUBCOMP is then ignored. PUBACKs and
//!   PUBCOMPs for unknown identifiers are ignored.
//! - **Granted QoS**: a SUBSCRIBE is granted the QoS it asks for.
//!
//! # Persistence
//!
//! [`SessionState`] is what must survive a restart [4.1]: subscriptions, queued messages,
//! messages in flight (the PUBREL stage included) and the incoming QoS 2 identifiers awaiting
//! PUBREL. It derives serde's traits. It comes in parts so that storing it after each change
//! costs what changed, not the whole queue; [`Session::take_changes`] says which:
//!
//! - `subscriptions`: rewritten when they change (SUBSCRIBE, UNSUBSCRIBE);
//! - `delivery` ([`DeliveryState`]): the small part that changes on every QoS 1 or 2 step:
//!   at most `max_inflight` messages in flight, the incoming QoS 2 identifiers, the next
//!   packet identifier and when the client went away;
//! - `queue` ([`QueueState`]): each queued message has a sequence number, and the queue always
//!   holds a contiguous range of them, which only moves forward. Store each message under its
//!   own key; [`Changes`] says which numbers to write and which to delete.
//!
//! For exactly-once across a crash, store the changes before writing the packets of the same
//! call to the client (a PUBREC says the message is owned, a PUBCOMP that it is done).
//!
//! Clean sessions are not stored: they end with their connection.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use hermes_mqtt::session::{Limits, Output, Session};
//! use hermes_mqtt::{Message, Packet, QoS, Subscribe, TopicFilter, TopicName};
//!
//! let mut session = Session::new(Limits::default());
//! let mut out = Vec::new();
//! let connection = session.connect(false, &mut out); // CONNACK, Session Present 0
//! out.clear();
//!
//! let subscribe = Subscribe {
//!     packet_id: 1.try_into().unwrap(),
//!     filters: vec![(TopicFilter::from_static("sensors/#"), QoS::AtLeastOnce)],
//! };
//! session.on_subscribe(&subscribe, &mut out); // Output::Subscribe, then SUBACK
//! out.clear();
//!
//! let message = Message {
//!     topic: TopicName::from_static("sensors/1"),
//!     payload: Bytes::from_static(b"21.5"),
//!     qos: QoS::ExactlyOnce,
//!     retain: false,
//! };
//! session.deliver(message, QoS::AtLeastOnce, &mut out);
//! let Some(Output::Send(Packet::Publish(publish))) = out.pop() else { panic!() };
//! assert_eq!(publish.qos.qos(), QoS::AtLeastOnce);
//! let id = publish.qos.packet_id().unwrap();
//! assert!(session.on_puback(id, &mut out));
//! assert_eq!(session.inflight_len(), 0);
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU16;
use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::packet::{
    ConnAck, ConnectReturnCode, Packet, PacketId, Publish, PublishQos, QoS, SubAck, Subscribe,
    SubscribeReturnCode, Unsubscribe,
};
use crate::topic::TopicFilter;

/// The bounds of one session's outgoing delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// How many outgoing QoS 1 and 2 messages may be unacknowledged at once (PUBLISH sent, not
    /// yet PUBACK or PUBCOMP). 1 delivers strictly one at a time.
    pub max_inflight: NonZeroU16,
    /// How many QoS 1 and 2 messages may wait for the window or for the client to come back.
    /// When it is full the oldest is dropped. 0 queues nothing.
    pub max_queued: usize,
}

impl Limits {
    /// The default [`max_inflight`](Self::max_inflight): 100, as rumqttd's sample
    /// configuration (Mosquitto's is 20). A window of 20 halves QoS 1 and 2 throughput to a
    /// client that acknowledges in batches (see the crate's BENCHMARKS.md); a message in
    /// flight is a shared [`Message`], so the larger window costs little memory.
    pub const DEFAULT_MAX_INFLIGHT: NonZeroU16 = NonZeroU16::MIN.saturating_add(99);
    /// The default [`max_queued`](Self::max_queued): 1000, as Mosquitto's.
    pub const DEFAULT_MAX_QUEUED: usize = 1000;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_inflight: Self::DEFAULT_MAX_INFLIGHT,
            max_queued: Self::DEFAULT_MAX_QUEUED,
        }
    }
}

/// What the caller must do, in order, after a call to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this packet to the client.
    Send(Packet),
    /// Publish this message, received from the client, into the broker: to the sessions whose
    /// subscriptions match it [MQTT-4.5.0-1], and to the retained store if its RETAIN flag is
    /// set [MQTT-3.3.1-5]. Its QoS is the one it was published with.
    Publish(Message),
    /// Add this subscription of the session to the subscription index, or replace its QoS;
    /// then deliver the retained messages that match the filter with
    /// [`Session::deliver_retained`], also when it replaced one [MQTT-3.3.1-6],
    /// [MQTT-3.8.4-3].
    Subscribe {
        /// The filter.
        filter: TopicFilter,
        /// The QoS granted.
        qos: QoS,
    },
    /// Remove this subscription of the session from the subscription index.
    Unsubscribe(TopicFilter),
}

/// What [`Session::deliver`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivered {
    /// Sent to the client ([`Output::Send`]).
    Sent,
    /// Queued, for the window or for the client to come back; `dropped_oldest` queued messages
    /// were dropped to make room (counted in [`Session::dropped`]).
    Queued {
        /// How many of the oldest queued messages were dropped.
        dropped_oldest: usize,
    },
    /// Dropped: it had to wait and [`Limits::max_queued`] is 0 (counted in
    /// [`Session::dropped`]).
    Dropped,
    /// Not kept, by design: a QoS 0 message while the client is away, or any message for a
    /// clean session whose connection has ended (counted in [`Session::discarded`]).
    Discarded,
}

/// What is left of a session after its connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum AfterDisconnect {
    /// A persistent session: keep it (and its stored state) for the client to come back, until
    /// it expires ([`Session::expires_at`]).
    Keep,
    /// A clean session: it has ended, its subscriptions were given up through
    /// [`Output::Unsubscribe`]; drop it [MQTT-3.1.2-6].
    Discard,
    /// Not the current connection (one that another connection with the same client
    /// identifier took over [MQTT-3.1.4-2]): nothing changed.
    Stale,
}

/// One connection of a session, as returned by [`Session::connect`]: tells
/// [`Session::disconnected`] which connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Connection(u64);

/// Where an outgoing QoS 1 or 2 message is in its flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// PUBLISH sent, waiting for PUBACK (QoS 1) or PUBREC (QoS 2). The message is kept to be
    /// sent again with DUP 1 if the client comes back [MQTT-4.4.0-1].
    Unacknowledged(Message),
    /// QoS 2: PUBREC received and PUBREL sent, waiting for PUBCOMP. The message is gone: its
    /// PUBLISH is never sent again [MQTT-4.3.3-1].
    Released,
}

/// An outgoing QoS 1 or 2 message in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InFlight {
    packet_id: PacketId,
    stage: Stage,
}

impl InFlight {
    /// Its packet identifier.
    #[must_use]
    pub fn packet_id(&self) -> PacketId {
        self.packet_id
    }

    /// Where it is in its flow.
    #[must_use]
    pub fn stage(&self) -> &Stage {
        &self.stage
    }
}

/// What a session must keep between connections and across restarts [4.1]; see the
/// [module docs](self#persistence) for how to store it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// The session's subscriptions: filter and granted QoS.
    pub subscriptions: BTreeMap<TopicFilter, QoS>,
    /// Messages in flight both ways, and the rest that changes with each acknowledgement.
    pub delivery: DeliveryState,
    /// Messages waiting to be sent.
    pub queue: QueueState,
}

/// The part of a session's state that changes with each QoS 1 or 2 step; small, bounded by
/// [`Limits::max_inflight`] messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryState {
    /// Outgoing QoS 1 and 2 messages in flight, in the order first sent.
    inflight: VecDeque<InFlight>,
    /// Incoming QoS 2 packet identifiers: PUBLISH received, PUBREL not yet.
    incoming: BTreeSet<PacketId>,
    /// Where the search for a free packet identifier starts.
    next_packet_id: PacketId,
    /// When the client went away, in milliseconds since the Unix epoch; `None` while
    /// connected.
    offline_since_ms: Option<u64>,
}

impl Default for DeliveryState {
    fn default() -> Self {
        Self {
            inflight: VecDeque::new(),
            incoming: BTreeSet::new(),
            next_packet_id: PacketId::MIN,
            offline_since_ms: None,
        }
    }
}

impl DeliveryState {
    /// The outgoing messages in flight, in the order first sent.
    pub fn inflight(&self) -> impl ExactSizeIterator<Item = &InFlight> {
        self.inflight.iter()
    }

    /// The incoming QoS 2 packet identifiers awaiting PUBREL.
    pub fn incoming(&self) -> impl ExactSizeIterator<Item = PacketId> {
        self.incoming.iter().copied()
    }

    /// When the client went away, in milliseconds since the Unix epoch; `None` while it was
    /// connected (or, in stored state, if the broker stopped while it was).
    #[must_use]
    pub fn offline_since_ms(&self) -> Option<u64> {
        self.offline_since_ms
    }
}

/// The queue of messages waiting to be sent, first in, first out. Each message has a sequence
/// number; the queue holds the contiguous range [`seqs`](Self::seqs), which only moves
/// forward, so each message can be stored under its own key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueState {
    /// The sequence number of `messages[0]`, or of the next message if it is empty.
    first_seq: u64,
    messages: VecDeque<Message>,
}

impl QueueState {
    /// A queue holding `messages` with sequence numbers from `first_seq` on: as stored, each
    /// under its own key.
    #[must_use]
    pub fn from_parts(first_seq: u64, messages: impl IntoIterator<Item = Message>) -> Self {
        Self {
            first_seq,
            messages: messages.into_iter().collect(),
        }
    }

    /// The sequence numbers of the queued messages.
    #[must_use]
    pub fn seqs(&self) -> Range<u64> {
        self.first_seq..self.end_seq()
    }

    fn end_seq(&self) -> u64 {
        let len = u64::try_from(self.messages.len()).unwrap_or(u64::MAX);
        self.first_seq.saturating_add(len)
    }

    /// The queued message with sequence number `seq`.
    #[must_use]
    pub fn get(&self, seq: u64) -> Option<&Message> {
        let index = usize::try_from(seq.checked_sub(self.first_seq)?).ok()?;
        self.messages.get(index)
    }

    /// The queued messages, oldest first.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &Message> {
        self.messages.iter()
    }

    /// The number of queued messages.
    #[must_use]
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether no message is queued.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    fn push_back(&mut self, message: Message) {
        self.messages.push_back(message);
    }

    fn pop_front(&mut self) -> Option<Message> {
        let message = self.messages.pop_front()?;
        self.first_seq = self.first_seq.saturating_add(1);
        Some(message)
    }

    fn push_front(&mut self, message: Message) {
        self.messages.push_front(message);
        self.first_seq = self.first_seq.saturating_sub(1);
    }

    fn clear(&mut self) {
        self.first_seq = self.end_seq();
        self.messages.clear();
    }
}

/// What changed in a session's [`SessionState`] since the last [`Session::take_changes`]:
/// which parts to store again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct Changes {
    /// Store [`SessionState::subscriptions`] again.
    pub subscriptions: bool,
    /// Store [`SessionState::delivery`] again.
    pub delivery: bool,
    /// Delete the stored queued messages with these sequence numbers.
    pub queue_removed: Range<u64>,
    /// Store the queued messages with these sequence numbers ([`QueueState::get`]).
    pub queue_added: Range<u64>,
}

impl Changes {
    /// Whether nothing changed.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        !self.subscriptions
            && !self.delivery
            && self.queue_removed.is_empty()
            && self.queue_added.is_empty()
    }
}

/// One client's session: see the [module docs](self).
#[derive(Debug)]
pub struct Session {
    state: SessionState,
    limits: Limits,
    /// The current connection, while connected.
    connection: Option<Connection>,
    /// The last connection's number.
    connections: u64,
    /// Whether the session is clean: lasts as long as its connection. A new session is,
    /// until a connection says otherwise.
    clean: bool,
    /// Whether there is state from an earlier connection, for Session Present.
    present: bool,
    /// Since the last `take_changes`.
    subscriptions_changed: bool,
    delivery_changed: bool,
    stored_queue: Range<u64>,
    dropped: u64,
    discarded: u64,
    /// How many packet identifiers from `next_packet_id` on are known to be free, in a row
    /// (none of them in flight): each send takes the next one without looking at the window.
    /// Not stored: 0 after a restore, so the first send looks.
    free_ids: u16,
}

impl Session {
    /// A new session, with no state: not connected, not yet persistent.
    #[must_use]
    pub fn new(limits: Limits) -> Self {
        Self::with_state(SessionState::default(), limits, false)
    }

    /// A persistent session with stored `state`, its client away: [`connect`](Self::connect)
    /// with `clean = false` resumes it with Session Present 1.
    #[must_use]
    pub fn restore(state: SessionState, limits: Limits) -> Self {
        Self::with_state(state, limits, true)
    }

    fn with_state(state: SessionState, limits: Limits, present: bool) -> Self {
        let stored_queue = state.queue.seqs();
        Self {
            state,
            limits,
            connection: None,
            connections: 0,
            clean: !present,
            present,
            // A new session was never stored; a restored one is as stored.
            subscriptions_changed: !present,
            delivery_changed: !present,
            stored_queue,
            dropped: 0,
            discarded: 0,
            free_ids: 0,
        }
    }

    /// The state to store.
    #[must_use]
    pub fn state(&self) -> &SessionState {
        &self.state
    }

    /// The session's limits.
    #[must_use]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Whether a client is connected.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.connection.is_some()
    }

    /// The connected client's connection, as [`connect`](Self::connect) returned it.
    #[must_use]
    pub fn connection(&self) -> Option<Connection> {
        self.connection
    }

    /// Whether the session outlives its connection (the last CONNECT had CleanSession 0, or
    /// it was restored).
    #[must_use]
    pub fn is_persistent(&self) -> bool {
        !self.clean
    }

    /// The session's subscriptions: filter and granted QoS.
    #[must_use]
    pub fn subscriptions(&self) -> &BTreeMap<TopicFilter, QoS> {
        &self.state.subscriptions
    }

    /// The number of outgoing QoS 1 and 2 messages in flight.
    #[must_use]
    pub fn inflight_len(&self) -> usize {
        self.state.delivery.inflight.len()
    }

    /// The number of messages waiting in the queue.
    #[must_use]
    pub fn queued_len(&self) -> usize {
        self.state.queue.len()
    }

    /// How many queued messages were dropped because the queue was full (or
    /// [`Limits::max_queued`] is 0), since this value was created.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// How many messages were discarded by design ([`Delivered::Discarded`]) since this value
    /// was created.
    #[must_use]
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// When the client went away, for a persistent session whose client is away.
    #[must_use]
    pub fn offline_since(&self) -> Option<SystemTime> {
        let ms = self.state.delivery.offline_since_ms?;
        UNIX_EPOCH.checked_add(Duration::from_millis(ms))
    }

    /// When a persistent session whose client is away expires, if it is kept for `expiry`
    /// after its client went away [4.1]; `None` while connected.
    #[must_use]
    pub fn expires_at(&self, expiry: Duration) -> Option<SystemTime> {
        self.offline_since()?.checked_add(expiry)
    }

    /// A client connected with this session's client identifier, and the broker accepted it.
    /// Pushes the CONNACK (Session Present per [MQTT-3.2.2-1..3]), then, for a persistent
    /// session, the unacknowledged PUBLISHes (DUP 1) and PUBRELs in their original order
    /// [MQTT-4.4.0-1], then the queued messages the window takes.
    ///
    /// With `clean`, any previous state is discarded first [MQTT-3.1.2-6], its subscriptions
    /// given up through [`Output::Unsubscribe`]. If a client was connected, its connection is
    /// over [MQTT-3.1.4-2] (closing it is the caller's job), and its [`Connection`] is stale.
    pub fn connect(&mut self, clean: bool, out: &mut Vec<Output>) -> Connection {
        let (connection, session_present) = self.open(clean, out);
        out.push(Output::Send(Packet::ConnAck(ConnAck {
            session_present,
            code: ConnectReturnCode::Accepted,
        })));
        for inflight in &self.state.delivery.inflight {
            let packet = match &inflight.stage {
                Stage::Unacknowledged(message) => {
                    Packet::Publish(message.to_publish(inflight.packet_id, true))
                }
                Stage::Released => Packet::PubRel(inflight.packet_id),
            };
            out.push(Output::Send(packet));
        }
        self.fill_window(out);
        connection
    }

    /// [`connect`](Self::connect) with a clean session whose CONNACK the caller has written
    /// already (a clean session's is known before it is told: accepted, Session Present 0
    /// [MQTT-3.2.2-1]): the same, without the CONNACK. The previous state is discarded, its
    /// subscriptions given up through [`Output::Unsubscribe`]; nothing is left to resend.
    pub fn connect_clean_acked(&mut self, out: &mut Vec<Output>) -> Connection {
        self.open(true, out).0
    }

    /// Ends the connection a client had, resets the state if `clean`, and starts a new
    /// connection: it, and Session Present.
    fn open(&mut self, clean: bool, out: &mut Vec<Output>) -> (Connection, bool) {
        if self.connection.is_some() {
            self.end_connection(out);
        }
        let session_present = if clean {
            self.reset(out);
            false
        } else {
            self.present
        };
        self.clean = clean;
        self.present = !clean;
        self.connections += 1;
        let connection = Connection(self.connections);
        self.connection = Some(connection);
        if self.state.delivery.offline_since_ms.take().is_some() {
            self.delivery_changed = true;
        }
        (connection, session_present)
    }

    /// `connection` ended, at `now`, for any reason (DISCONNECT or not: the will is the
    /// connection's business, see [`will`](crate::will)). A clean session ends with it
    /// [MQTT-3.1.2-6]; a persistent one keeps its state and queues QoS 1 and 2 messages until
    /// its client comes back [MQTT-3.1.2-4], [MQTT-3.1.2-5].
    pub fn disconnected(
        &mut self,
        connection: Connection,
        now: SystemTime,
        out: &mut Vec<Output>,
    ) -> AfterDisconnect {
        if self.connection != Some(connection) {
            return AfterDisconnect::Stale;
        }
        self.end_connection(out);
        if self.clean {
            return AfterDisconnect::Discard;
        }
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        self.state.delivery.offline_since_ms = Some(ms);
        self.delivery_changed = true;
        AfterDisconnect::Keep
    }

    /// A persistent session restored from storage whose client was still connected when the
    /// broker stopped (a crash keeps no time of leaving): counts it as away since `since`,
    /// for its expiry. Does nothing while connected or if the time is already known.
    pub fn offline_from(&mut self, since: SystemTime) {
        if self.connection.is_some() || self.state.delivery.offline_since_ms.is_some() {
            return;
        }
        let since = since.duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = u64::try_from(since.as_millis()).unwrap_or(u64::MAX);
        self.state.delivery.offline_since_ms = Some(ms);
        self.delivery_changed = true;
    }

    /// The session is discarded: a persistent one whose client stayed away past its expiry
    /// [4.1]. Gives its subscriptions up through [`Output::Unsubscribe`] and clears its state;
    /// drop it (and its stored state) then.
    pub fn expire(&mut self, out: &mut Vec<Output>) {
        self.connection = None;
        self.reset(out);
    }

    fn end_connection(&mut self, out: &mut Vec<Output>) {
        self.connection = None;
        if self.clean {
            self.reset(out);
        }
    }

    /// Discards all state; its subscriptions leave the index.
    fn reset(&mut self, out: &mut Vec<Output>) {
        let subscriptions = std::mem::take(&mut self.state.subscriptions);
        self.subscriptions_changed |= !subscriptions.is_empty();
        out.extend(subscriptions.into_keys().map(Output::Unsubscribe));
        self.state.delivery = DeliveryState::default();
        self.free_ids = 0;
        self.delivery_changed = true;
        self.state.queue.clear();
        self.present = false;
    }

    /// A PUBLISH from the client [3.3.4]: pushes the message to publish into the broker
    /// ([`Output::Publish`]), and the answer: none for QoS 0, PUBACK for QoS 1 [MQTT-4.3.2-2],
    /// PUBREC for QoS 2 [MQTT-4.3.3-2]. A QoS 2 PUBLISH whose packet identifier awaits its
    /// PUBREL is a resend: answered PUBREC, not published again.
    pub fn on_publish(&mut self, publish: Publish, out: &mut Vec<Output>) {
        match publish.qos {
            PublishQos::AtMostOnce => out.push(Output::Publish(publish.into())),
            PublishQos::AtLeastOnce { packet_id: id, .. } => {
                out.push(Output::Publish(publish.into()));
                out.push(Output::Send(Packet::PubAck(id)));
            }
            PublishQos::ExactlyOnce { packet_id: id, .. } => {
                if self.state.delivery.incoming.insert(id) {
                    self.delivery_changed = true;
                    out.push(Output::Publish(publish.into()));
                }
                out.push(Output::Send(Packet::PubRec(id)));
            }
        }
    }

    /// A PUBREL from the client: the incoming QoS 2 message `id` is done, and a PUBLISH with
    /// this identifier is a new message again. Pushes PUBCOMP, also for an identifier the
    /// session does not hold [MQTT-4.3.3-2].
    pub fn on_pubrel(&mut self, id: PacketId, out: &mut Vec<Output>) {
        if self.state.delivery.incoming.remove(&id) {
            self.delivery_changed = true;
        }
        out.push(Output::Send(Packet::PubComp(id)));
    }

    /// A PUBACK from the client: the outgoing QoS 1 message `id` is delivered. Frees its place
    /// in the window, which the next queued message takes. Returns whether such a message was
    /// in flight; a PUBACK for anything else is ignored.
    pub fn on_puback(&mut self, id: PacketId, out: &mut Vec<Output>) -> bool {
        let acked =
            |stage: &Stage| matches!(stage, Stage::Unacknowledged(m) if m.qos == QoS::AtLeastOnce);
        self.complete(id, acked, out)
    }

    /// A PUBREC from the client: the outgoing QoS 2 message `id` was received. Pushes PUBREL
    /// [MQTT-4.3.3-1] (again, for a PUBREC sent again), and forgets the message: its PUBLISH
    /// is never sent again. A PUBREC for an identifier not in flight is answered PUBREL too,
    /// so that the client can finish. Returns whether `id` was in flight as a QoS 2 message.
    pub fn on_pubrec(&mut self, id: PacketId, out: &mut Vec<Output>) -> bool {
        let found = self.inflight_index(id);
        let inflight = &mut self.state.delivery.inflight;
        let Some(f) = found.and_then(|i| inflight.get_mut(i)) else {
            out.push(Output::Send(Packet::PubRel(id)));
            return false;
        };
        match &f.stage {
            Stage::Unacknowledged(m) if m.qos == QoS::ExactlyOnce => {
                f.stage = Stage::Released;
                self.delivery_changed = true;
            }
            Stage::Unacknowledged(_) => return false,
            Stage::Released => {}
        }
        out.push(Output::Send(Packet::PubRel(id)));
        true
    }

    /// A PUBCOMP from the client: the outgoing QoS 2 message `id` is delivered. Frees its
    /// place in the window, which the next queued message takes. Returns whether `id` was in
    /// the PUBREL stage; a PUBCOMP for anything else is ignored.
    pub fn on_pubcomp(&mut self, id: PacketId, out: &mut Vec<Output>) -> bool {
        self.complete(id, |stage| *stage == Stage::Released, out)
    }

    /// Removes the message in flight with packet identifier `id` if `done` holds for its
    /// stage, and refills the window.
    fn complete(
        &mut self,
        id: PacketId,
        done: impl Fn(&Stage) -> bool,
        out: &mut Vec<Output>,
    ) -> bool {
        let Some(index) = self.inflight_index(id) else {
            return false;
        };
        let inflight = &mut self.state.delivery.inflight;
        if !inflight.get(index).is_some_and(|f| done(&f.stage)) {
            return false;
        }
        inflight.remove(index);
        self.delivery_changed = true;
        self.fill_window(out);
        true
    }

    /// A SUBSCRIBE from the client: each filter is subscribed in turn, as if in a SUBSCRIBE of
    /// its own [MQTT-3.8.4-4], replacing the QoS of the same filter [MQTT-3.8.4-3], granted the
    /// QoS asked for. Pushes an [`Output::Subscribe`] for each, then the SUBACK with a return
    /// code for each, in order [MQTT-3.8.4-1], [MQTT-3.8.4-5], [MQTT-3.9.3-1].
    pub fn on_subscribe(&mut self, subscribe: &Subscribe, out: &mut Vec<Output>) {
        self.on_subscribe_limited(subscribe, usize::MAX, out);
    }

    /// [`on_subscribe`](Self::on_subscribe), holding at most `max_subscriptions`: a filter
    /// that would be one more is refused with return code 0x80 [MQTT-3.9.3-1] (the others
    /// of the same SUBSCRIBE are still granted, and replacing a filter the session has is
    /// always granted).
    pub fn on_subscribe_limited(
        &mut self,
        subscribe: &Subscribe,
        max_subscriptions: usize,
        out: &mut Vec<Output>,
    ) {
        self.on_subscribe_checked(subscribe, max_subscriptions, |_| true, out);
    }

    /// [`on_subscribe_limited`](Self::on_subscribe_limited), granting only the filters for
    /// which `allowed` holds (an access control list, say): the others are refused with
    /// return code 0x80 [MQTT-3.9.3-1], and a subscription the session had to such a filter
    /// is left as it was.
    pub fn on_subscribe_checked(
        &mut self,
        subscribe: &Subscribe,
        max_subscriptions: usize,
        mut allowed: impl FnMut(&TopicFilter) -> bool,
        out: &mut Vec<Output>,
    ) {
        let mut return_codes = Vec::with_capacity(subscribe.filters.len());
        for (filter, qos) in &subscribe.filters {
            if !allowed(filter) {
                return_codes.push(SubscribeReturnCode::Failure);
                continue;
            }
            let subscriptions = &self.state.subscriptions;
            if subscriptions.len() >= max_subscriptions && !subscriptions.contains_key(filter) {
                return_codes.push(SubscribeReturnCode::Failure);
                continue;
            }
            // Its own buffer: a decoded filter keeps its whole packet's buffer alive.
            let filter = filter.to_compact();
            self.state.subscriptions.insert(filter.clone(), *qos);
            out.push(Output::Subscribe { filter, qos: *qos });
            return_codes.push(SubscribeReturnCode::Granted(*qos));
            self.subscriptions_changed = true;
        }
        out.push(Output::Send(Packet::SubAck(SubAck {
            packet_id: subscribe.packet_id,
            return_codes,
        })));
    }

    /// Removes the subscriptions to `filters` that the session has, without an UNSUBACK (the
    /// broker's decision, not the client's): pushes an [`Output::Unsubscribe`] for each.
    pub fn drop_subscriptions(&mut self, filters: &[TopicFilter], out: &mut Vec<Output>) {
        for filter in filters {
            if self.state.subscriptions.remove(filter).is_some() {
                self.subscriptions_changed = true;
                out.push(Output::Unsubscribe(filter.clone()));
            }
        }
    }

    /// An UNSUBSCRIBE from the client: each filter the session has, compared character by
    /// character [MQTT-3.10.4-1], is removed ([`Output::Unsubscribe`]); then UNSUBACK, also
    /// when none was there [MQTT-3.10.4-4], [MQTT-3.10.4-5]. Messages queued or in flight are
    /// still delivered [MQTT-3.10.4-3].
    pub fn on_unsubscribe(&mut self, unsubscribe: &Unsubscribe, out: &mut Vec<Output>) {
        for filter in &unsubscribe.filters {
            if self.state.subscriptions.remove(filter).is_some() {
                self.subscriptions_changed = true;
                out.push(Output::Unsubscribe(filter.clone()));
            }
        }
        out.push(Output::Send(Packet::UnsubAck(unsubscribe.packet_id)));
    }

    /// A message published into the broker that matches this session's subscriptions, whose
    /// maximum granted QoS among the matching ones is `granted` [MQTT-3.3.5-1] (what the
    /// [`Subscriptions`](crate::Subscriptions) index returns). Sent at the lower of the
    /// message's QoS and `granted` [MQTT-3.8.4-6] with RETAIN 0 [MQTT-3.3.1-9]: at once if it
    /// can, else queued (see the [module docs](self#choices) for what is not kept).
    pub fn deliver(&mut self, message: Message, granted: QoS, out: &mut Vec<Output>) -> Delivered {
        self.send_or_queue(message.forwarded(granted), out)
    }

    /// A retained message that matches a subscription granted `granted` which the session just
    /// made or replaced: sent like [`deliver`](Self::deliver), but with RETAIN 1
    /// [MQTT-3.3.1-8].
    pub fn deliver_retained(
        &mut self,
        message: Message,
        granted: QoS,
        out: &mut Vec<Output>,
    ) -> Delivered {
        self.send_or_queue(message.retained_for(granted), out)
    }

    /// A message for this session that [`deliver`](Self::deliver) would send at QoS 0 (its
    /// QoS or the granted one is 0), which the caller writes in a form of its own (encoded
    /// once for all its subscribers, say): [`Delivered::Sent`] while a client is connected,
    /// and the caller writes it then; otherwise [`Delivered::Discarded`], counted, as
    /// `deliver` would.
    pub fn deliver_qos0(&mut self) -> Delivered {
        if self.connection.is_none() {
            self.discarded += 1;
            return Delivered::Discarded;
        }
        Delivered::Sent
    }

    fn send_or_queue(&mut self, message: Message, out: &mut Vec<Output>) -> Delivered {
        let connected = self.connection.is_some();
        if !connected && (message.qos == QoS::AtMostOnce || self.clean) {
            self.discarded += 1;
            return Delivered::Discarded;
        }
        if message.qos == QoS::AtMostOnce {
            out.push(Output::Send(Packet::Publish(message.to_publish_qos0())));
            return Delivered::Sent;
        }
        if connected && self.state.queue.is_empty() && self.window_open() {
            let Err(message) = self.send_new(message, out) else {
                return Delivered::Sent;
            };
            return self.enqueue(message);
        }
        self.enqueue(message)
    }

    fn enqueue(&mut self, message: Message) -> Delivered {
        if self.limits.max_queued == 0 {
            self.dropped += 1;
            return Delivered::Dropped;
        }
        let mut dropped_oldest = 0;
        while self.state.queue.len() >= self.limits.max_queued
            && self.state.queue.pop_front().is_some()
        {
            dropped_oldest += 1;
        }
        self.dropped += dropped_oldest as u64;
        self.state.queue.push_back(message);
        Delivered::Queued { dropped_oldest }
    }

    fn window_open(&self) -> bool {
        self.state.delivery.inflight.len() < usize::from(self.limits.max_inflight.get())
    }

    /// Sends the queued messages that the window takes, while connected.
    fn fill_window(&mut self, out: &mut Vec<Output>) {
        while self.connection.is_some() && self.window_open() {
            let Some(message) = self.state.queue.pop_front() else {
                return;
            };
            if let Err(message) = self.send_new(message, out) {
                self.state.queue.push_front(message);
                return;
            }
        }
    }

    /// Where the message in flight with packet identifier `id` is in the window. `O(1)` while
    /// the identifiers in flight follow each other without gaps (identifiers are taken in
    /// turn, and acknowledged mostly in order): it is then as far from the first as its
    /// identifier is from the first's. Otherwise (acknowledgements out of order, skipped
    /// identifiers), a scan.
    fn inflight_index(&self, id: PacketId) -> Option<usize> {
        let inflight = &self.state.delivery.inflight;
        let first = u32::from(inflight.front()?.packet_id.get());
        let guess = (u32::from(id.get()) + 65_535 - first) % 65_535;
        let guess = usize::try_from(guess).unwrap_or(usize::MAX);
        if inflight.get(guess).is_some_and(|f| f.packet_id == id) {
            return Some(guess);
        }
        inflight.iter().position(|f| f.packet_id == id)
    }

    /// Sends a QoS 1 or 2 `message` with a free packet identifier, and puts it in flight; gives
    /// it back if no identifier is free.
    fn send_new(&mut self, message: Message, out: &mut Vec<Output>) -> Result<(), Message> {
        let Some(packet_id) = self.free_packet_id() else {
            return Err(message);
        };
        out.push(Output::Send(Packet::Publish(
            message.to_publish(packet_id, false),
        )));
        self.state.delivery.inflight.push_back(InFlight {
            packet_id,
            stage: Stage::Unacknowledged(message),
        });
        self.delivery_changed = true;
        Ok(())
    }

    /// A packet identifier that no outgoing message in flight has [MQTT-2.3.1-4], never 0,
    /// taken in turn from 1 to 65535 and round again, skipping those in flight.
    ///
    /// `O(1)` amortized: one look at the window finds how many identifiers from the next one
    /// on are free in a row (up to the nearest one in flight, the oldest message in flight
    /// in the usual case: about 65535 minus the window), and the sends that follow take them
    /// without looking again. Only this function puts identifiers in flight, and it takes
    /// them from that run, so the run stays free; acknowledgements only free more.
    fn free_packet_id(&mut self) -> Option<PacketId> {
        if self.free_ids == 0 {
            self.free_ids = self.find_free_ids();
        }
        self.free_ids = self.free_ids.checked_sub(1)?;
        let delivery = &mut self.state.delivery;
        let id = delivery.next_packet_id;
        delivery.next_packet_id = next_id(id);
        Some(id)
    }

    /// Moves `next_packet_id` past identifiers in flight, and returns how many from there on
    /// are free in a row: up to the nearest one in flight, all 65535 if none is; 0 if every
    /// identifier is in flight. `O(max_inflight)` per identifier skipped; one is skipped only
    /// where a message has stayed in flight for 65535 others.
    fn find_free_ids(&mut self) -> u16 {
        let delivery = &mut self.state.delivery;
        for _ in 0..u16::MAX {
            let next = u32::from(delivery.next_packet_id.get());
            // How far each identifier in flight is ahead of `next`, round 65535 (0: it is
            // `next` itself).
            let nearest = delivery
                .inflight
                .iter()
                .map(|f| (u32::from(f.packet_id.get()) + 65_535 - next) % 65_535)
                .min();
            match nearest {
                None => return u16::MAX,
                Some(0) => delivery.next_packet_id = next_id(delivery.next_packet_id),
                Some(free) => return u16::try_from(free).unwrap_or(u16::MAX),
            }
        }
        0
    }

    /// What changed in [`state`](Self::state) since the last call (or since the session was
    /// created or restored): what to store. See the [module docs](self#persistence).
    pub fn take_changes(&mut self) -> Changes {
        let now = self.state.queue.seqs();
        let stored = std::mem::replace(&mut self.stored_queue, now.clone());
        Changes {
            subscriptions: std::mem::take(&mut self.subscriptions_changed),
            delivery: std::mem::take(&mut self.delivery_changed),
            queue_removed: ordered(stored.start, stored.end.min(now.start)),
            queue_added: ordered(stored.end.max(now.start), now.end),
        }
    }
}

/// The packet identifier after `id`: 1 after 65535.
fn next_id(id: PacketId) -> PacketId {
    id.checked_add(1).unwrap_or(PacketId::MIN)
}

/// `start..end`, or the empty `start..start` if `end` is before `start`.
fn ordered(start: u64, end: u64) -> Range<u64> {
    start..end.max(start)
}

#[cfg(test)]
mod tests;
