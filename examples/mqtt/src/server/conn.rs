//! The tokio edge: per connection (TCP, TLS, WebSocket: any byte stream), a reader task
//! (this one) and a writer task.
//!
//! The reader decodes packets (bounded by `max_packet_size`), insists on CONNECT first and
//! within `connect_timeout` [MQTT-3.1.0-1], validates it (answering a refusal's CONNACK
//! itself), and then forwards the client's packets to its session: what one read brought is
//! gathered and sent as one message before the socket is read again (offered at once, and only
//! while the session's mailbox or its shard's inbox is full awaited): the reader stops
//! reading the socket until the session catches up. It routes QoS 0 PUBLISHes itself,
//! straight to the subscribers' sessions (no hop through its own), grouped per subscriber
//! ([`fan_out`]): a reader whose subscribers are behind stops reading too. It enforces keep
//! alive [MQTT-3.1.2-24] without a timer of its own (the broker's keep-alive sweep wakes it
//! once its deadline, left on the link, has passed), writes a clean session's CONNACK itself
//! (no round trip through the session), answers
//! PINGREQ, and closes the connection on any protocol error [MQTT-4.8.0-1]; whatever ends the
//! connection, it tells the session with `Detach` and why, so the session publishes the will
//! unless the client sent DISCONNECT.
//!
//! The writer takes everything its link's buffer holds (packets encoded by their senders, see
//! [`link`](super::link)) in one swap and writes it with one vectored write: a large PUBLISH
//! payload is written from the shared buffer, not copied per subscriber. It is a task only
//! while the connection is busy ([`write_burst`]: until nothing more came while it looked a
//! few times): idle, it is the socket's writing half kept on the link, started by the next
//! sender.
//!
//! An idle connection keeps little (about 1.8 KB with its session, see BENCHMARKS.md): no read
//! buffer while no packet is partly read, no writer task, write buffer or queue while nothing
//! is to be written, no timer, and a reader task whose future holds no message while it
//! waits (408 bytes, it keeps only its wait for the socket: what runs once per connection,
//! or rarely, is boxed).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::link::{Link, Outbox, Queued, Writer};
use super::listen::Place;
use super::stats::{Counters, Local};
use super::{
    ClientId, Handle, RetainedMsg, SessionMsg, Shared, Waiting, fan_out, may_publish, send_wait,
};
use crate::acl::ClientAcl;
use crate::codec::{self, DecodeError};
use crate::message::Message;
use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, Packet, ProtocolVersion, Publish, PublishQos,
};
use crate::string::MqttString;
use crate::will::CloseReason;

/// How long a connection that ended waits for its session to publish the will and close it.
const WILL_GRACE: Duration = Duration::from_secs(12);
/// How long a closing connection's writer may take to write what is left.
const WRITER_GRACE: Duration = Duration::from_secs(5);
/// Most bytes one read takes.
const READ_CHUNK: usize = 8 * 1024;
/// Most packets a reader gathers from what it read before sending them on together.
const BATCH_GATHER: usize = 64;
/// Most pieces one vectored write takes.
const MAX_SLICES: usize = 64;

/// Serves one accepted connection, its handshakes done, until it ends: `read` and `write` are
/// its two directions; its CONNECT must be in by `connect_by`. `places` are its places under
/// the connection limits, given back when it ends. Its logs name it by its connection
/// number (the listener's "accepted" line has its peer's address: the task keeps none).
///
/// The writer is given to the link (idle: no task until something is to be written) and the
/// reader built here, outside the future, which only captures it: an async fn would keep its
/// arguments and the values moved out of them side by side, for the connection's whole life.
#[allow(clippy::too_many_arguments)]
pub(crate) fn serve<R, W>(
    read: R,
    write: W,
    connect_by: Instant,
    link: Link,
    outbox: Outbox,
    shared: Arc<Shared>,
    hermes: Handle,
    places: (Place, Place),
) -> impl Future<Output = ()> + Send
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    outbox.install(Box::new(Idle {
        write,
        shared: Arc::clone(&shared),
    }));
    drop(outbox);
    let bucket = shared
        .config
        .publish_rate()
        .map(|(rate, burst)| Box::new(Bucket::new(rate, burst)));
    let mut reader = Reader {
        read,
        buf: BytesMut::new(),
        link,
        shared,
        hermes,
        gathered: Gathered::Nothing,
        keep_alive: 0,
        acl: None,
        bucket,
        local: ReadCounts::default(),
        refused: false,
    };
    // The CONNECT's deadline is on the link, for the keep-alive sweep: the future keeps none.
    reader.link.set_due(reader.shared.stamp(connect_by));
    async move {
        let (client, reason) = reader.run().await;
        // Once per connection: boxed, so that what it keeps takes no room beside the reader's
        // wait for the connection's whole life.
        Box::pin(finish(reader, client, reason, places)).await;
    }
}

/// Ends a connection whose reader stopped for `reason`: tells its session (which publishes the
/// will unless the client sent DISCONNECT) and waits for it to close the connection, then for
/// the writer to write what is left (at most [`WRITER_GRACE`]: a client that reads nothing
/// does not keep the connection).
async fn finish<R>(
    mut reader: Reader<R>,
    client: Option<ClientId>,
    reason: CloseReason,
    places: (Place, Place),
) {
    let shared = &reader.shared;
    let link = &reader.link;
    let conn = link.conn();
    reader.local.flush_received(&shared.counters);
    if reason == CloseReason::ProtocolError && !reader.refused {
        Counters::add(&shared.counters.protocol_errors, 1);
    }
    if let Some(client) = client {
        Counters::gauge(&shared.counters.clients_connected, -1);
        tracing::debug!(conn, client_id = %client, ?reason, "connection closed");
        let detach = SessionMsg::Detach { conn, reason };
        if send_wait(&reader.hermes, client, detach).await.is_ok() {
            // The session closes it once the will is out (a retained one stored).
            let _ = tokio::time::timeout(WILL_GRACE, link.closed()).await;
        } else {
            tracing::debug!(
                conn,
                "broker closed: the session was not told the connection ended"
            );
        }
    } else {
        tracing::debug!(conn, ?reason, "connection closed before it was accepted");
    }
    link.close(reason);
    let link = link.clone();
    let shared = Arc::clone(shared);
    drop(reader);
    if tokio::time::timeout(WRITER_GRACE, link.writer_ended())
        .await
        .is_err()
    {
        link.abandon_writer();
    }
    shared.unregister(conn);
    drop(link);
    drop(places);
}

/// What a reader read since it last added it to the shared counters (before each wait for
/// the socket: at most a read's worth, so 32 bits each).
#[derive(Default)]
struct ReadCounts {
    bytes: u32,
    packets: u32,
    publishes: u32,
    /// Messages published into the broker (QoS 0 ones the reader routes itself).
    published: u32,
}

impl ReadCounts {
    /// Adds them to the shared counters.
    fn flush_received(&mut self, c: &Counters) {
        if self.bytes | self.packets | self.published == 0 {
            return;
        }
        for (counter, n) in [
            (&c.bytes_received, self.bytes),
            (&c.packets_received, self.packets),
            (&c.publish_received, self.publishes),
            (&c.published, self.published),
        ] {
            if n != 0 {
                Counters::add(counter, u64::from(n));
            }
        }
        *self = ReadCounts::default();
    }
}

/// What a reader gathered: QoS 0 messages for the direct path, or packets for the session
/// (sent as one [`SessionMsg::Packets`]). Never both: what was gathered of the one goes out
/// before the other is gathered, in order.
enum Gathered {
    Nothing,
    Direct(Vec<Message>),
    Session(Vec<Packet>),
}

impl Gathered {
    /// Gathers a message for the direct path (after any there; the caller flushed the
    /// session's packets): how many there are.
    fn push_direct(&mut self, message: Message) -> usize {
        match self {
            Gathered::Direct(messages) => {
                messages.push(message);
                messages.len()
            }
            other => {
                *other = Gathered::Direct(vec![message]);
                1
            }
        }
    }

    /// Gathers a packet for the session (after any there; the caller flushed the QoS 0
    /// messages): how many there are.
    fn push_session(&mut self, packet: Packet) -> usize {
        match self {
            Gathered::Session(packets) => {
                packets.push(packet);
                packets.len()
            }
            other => {
                *other = Gathered::Session(vec![packet]);
                1
            }
        }
    }
}

/// A token bucket: `max_publish_rate` PUBLISH packets a second, `publish_burst` at once.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate.max(1)),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes a token: how long to wait first, if the bucket is empty (it goes into debt, so
    /// each PUBLISH past the rate waits its share).
    fn take(&mut self) -> Option<Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - 1.0;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }
}

/// What a connection's reader keeps.
struct Reader<R> {
    read: R,
    buf: BytesMut,
    link: Link,
    shared: Arc<Shared>,
    hermes: Handle,
    /// What was decoded from what was read, gathered to go out together once nothing more
    /// is decoded (or [`BATCH_GATHER`] are), before the socket is read again.
    gathered: Gathered,
    /// The client's keep alive, once connected (0: none): it may send nothing for
    /// `keep_alive_grace` times as long [MQTT-3.1.2-24].
    keep_alive: u16,
    /// What the client may do, with an ACL file.
    acl: Option<Arc<ClientAcl>>,
    /// `max_publish_rate` (boxed: most brokers set none, and every connection keeps this).
    bucket: Option<Box<Bucket>>,
    /// Counts not yet added to the shared counters.
    local: ReadCounts,
    /// A CONNECT was refused with a CONNACK (not a protocol error).
    refused: bool,
}

/// Why reading stopped before the connection was accepted, or after.
type Ended = (Option<ClientId>, CloseReason);

/// What to do after handling a packet.
enum Step {
    /// Read the next one.
    Next,
    /// End the connection.
    End(CloseReason),
    /// Wait for room in a mailbox first.
    Wait(Waiting),
}

/// Why [`Reader::take`] did not handle a packet.
enum Stop {
    /// The connection ends.
    Ended(CloseReason),
    /// A PUBLISH waits this long first (`max_publish_rate`).
    Throttle(Duration, Box<Packet>),
}

/// Carries out a [`Step`]: `None` to go on, or why the connection ends.
async fn proceed(step: Step) -> Option<CloseReason> {
    match step {
        Step::Next => None,
        Step::End(reason) => Some(reason),
        Step::Wait(waiting) => (!waiting.await).then_some(CloseReason::ServerClosed),
    }
}

/// The next packet, or why there is none.
enum Next {
    Packet(Packet),
    Ended(CloseReason),
    Malformed(DecodeError),
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads the connection until it ends: the session it attached to, if any, and why.
    #[allow(clippy::manual_async_fn)]
    fn run(&mut self) -> impl Future<Output = Ended> + '_ {
        // Plain functions returning their futures, here and below: an async fn keeps its
        // arguments and their moved copies side by side, in the connection's task.
        async move {
            // Taken by a plain function: nothing of it is kept across the awaits below (the
            // task would keep it).
            let next = self.next().await;
            let connect = match self.first(next) {
                Ok(connect) => connect,
                Err(ended) => return ended,
            };
            // Once per connection, and larger than the rest: boxed, so that the task is not as
            // large as this for the connection's whole life.
            let client = match Box::pin(self.accept(connect)).await {
                Ok(client) => client,
                Err(ended) => return ended,
            };
            let ended = self.packets(&client).await;
            (Some(client), ended)
        }
    }

    /// The first packet, which must be a CONNECT [MQTT-3.1.0-1].
    fn first(&mut self, next: Next) -> Result<Box<Connect>, Ended> {
        let conn = self.link.conn();
        match next {
            Next::Packet(Packet::Connect(connect)) => Ok(connect),
            Next::Packet(other) => {
                tracing::debug!(conn, packet = %other.packet_type(), "first packet is not CONNECT [MQTT-3.1.0-1]");
                Err((None, CloseReason::ProtocolError))
            }
            Next::Ended(CloseReason::KeepAliveTimeout) => {
                tracing::debug!(conn, "no CONNECT within connect_timeout");
                Err((None, CloseReason::ProtocolError))
            }
            Next::Ended(reason) => Err((None, reason)),
            Next::Malformed(DecodeError::UnsupportedProtocolLevel { name, level }) => {
                Err(self.unsupported(name.as_bytes(), level))
            }
            Next::Malformed(error) => {
                tracing::debug!(conn, %error, "malformed CONNECT; closing");
                Err((None, CloseReason::ProtocolError))
            }
        }
    }

    /// A CONNECT whose protocol level the decoder does not know: CONNACK 0x01 for an MQTT
    /// protocol name [MQTT-3.1.2-2], a plain close otherwise [MQTT-3.1.2-1].
    fn unsupported(&mut self, name: &[u8], level: u8) -> Ended {
        let mqtt = [ProtocolVersion::V311, ProtocolVersion::V31]
            .iter()
            .any(|v| v.name().as_bytes() == name);
        tracing::debug!(conn = self.link.conn(), level, "unsupported protocol level");
        if mqtt {
            self.refuse(ConnectReturnCode::UnacceptableProtocolVersion);
        }
        (None, CloseReason::ProtocolError)
    }

    /// Answers a refused CONNECT; the connection is then closed [MQTT-3.2.2-5].
    fn refuse(&mut self, code: ConnectReturnCode) {
        self.refused = true;
        let connack = ConnAck {
            session_present: false, // [MQTT-3.2.2-4]
            code,
        };
        self.link.send(Packet::ConnAck(connack));
    }

    /// Validates a CONNECT and attaches the connection to its session.
    async fn accept(&mut self, mut connect: Box<Connect>) -> Result<ClientId, Ended> {
        let conn = self.link.conn();
        let refused = |code| Err((None, refused_reason(code)));
        let Some(version) = connect.protocol_version() else {
            let name = connect.protocol_name.as_bytes().to_vec();
            return Err(self.unsupported(&name, connect.protocol_level));
        };
        let id_len = connect.client_id.len();
        if version == ProtocolVersion::V31 && !(1..=23).contains(&id_len) {
            // MQTT 3.1 allows 1 to 23 characters.
            self.refuse(ConnectReturnCode::IdentifierRejected);
            return refused(ConnectReturnCode::IdentifierRejected);
        }
        if id_len == 0 {
            if !connect.clean_session {
                // [MQTT-3.1.3-8]
                self.refuse(ConnectReturnCode::IdentifierRejected);
                return refused(ConnectReturnCode::IdentifierRejected);
            }
            // [MQTT-3.1.3-6], [MQTT-3.1.3-7]: assign a unique one.
            let started = self
                .shared
                .started_at
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis();
            let assigned = format!("hermes-{started:x}-{conn}");
            connect.client_id = MqttString::try_from(assigned)
                .unwrap_or_else(|_| MqttString::from_static("hermes-assigned"));
        }
        let auth = self.shared.auth();
        let user = match auth.check(connect.login.as_ref()).await {
            Ok(user) => user,
            Err(code) => {
                Counters::add(&self.shared.counters.refused_auth, 1);
                tracing::debug!(conn, client_id = %connect.client_id.as_str(), ?code, "CONNECT refused");
                self.refuse(code);
                return refused(code);
            }
        };
        let acl = self
            .shared
            .acl()
            .map(|acl| Arc::new(acl.for_client(user.as_deref(), connect.client_id.as_str())));
        if let Some(will) = &connect.will
            && !may_publish(acl.as_deref(), &will.topic)
        {
            // Its will could never be published: not authorized.
            Counters::add(&self.shared.counters.refused_auth, 1);
            tracing::debug!(conn, client_id = %connect.client_id.as_str(), topic = %will.topic.as_str(), "CONNECT refused: the ACL denies its will topic");
            self.refuse(ConnectReturnCode::NotAuthorized);
            return refused(ConnectReturnCode::NotAuthorized);
        }
        let client = ClientId::new(connect.client_id.as_str());
        let keep_alive = connect.keep_alive;
        tracing::debug!(conn, client_id = %client, clean = connect.clean_session, keep_alive = connect.keep_alive, "CONNECT");
        // A clean session's CONNACK is known here (accepted, no session present
        // [MQTT-3.2.2-1]): the reader writes it, without a round trip through the session,
        // and before the session is told, so that nothing the session writes once attached
        // can go out first [MQTT-3.2.0-1]. Until the session has attached, the client's QoS 0
        // PUBLISHes go through it (`unsettle`), behind its reset of the subscriptions a
        // session of that ID had.
        let acked = connect.clean_session;
        if acked {
            self.link.unsettle();
            self.link.send_now(Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::Accepted,
            }));
        }
        let attach = SessionMsg::Attach {
            link: self.link.clone(),
            connect,
            acl: acl.clone(),
            acked,
        };
        if send_wait(&self.hermes, client.clone(), attach)
            .await
            .is_err()
        {
            // Hermes is closing. A CONNACK went out already: the connection just closes.
            if acked {
                return Err((None, CloseReason::ServerClosed));
            }
            self.refuse(ConnectReturnCode::ServerUnavailable);
            return refused(ConnectReturnCode::ServerUnavailable);
        }
        self.shared.counters.client_connected();
        self.keep_alive = keep_alive;
        self.acl = acl;
        Ok(client)
    }

    /// Forwards the client's packets to its session until the connection ends; what was
    /// gathered before it ended goes out first.
    ///
    /// Each packet is handled without waiting ([`handle`](Self::handle)) and gathered; what
    /// one read brought goes out together before the socket is read again
    /// ([`flush`](Self::flush)). Only a send that finds a mailbox full leaves a future to
    /// await, boxed: the connection's task, which is as large as the largest future it
    /// awaits, is then little more than its wait for the next packet.
    // Not an async fn: see `run`.
    #[allow(clippy::manual_async_fn)]
    fn packets<'a>(&'a mut self, client: &'a ClientId) -> impl Future<Output = CloseReason> + 'a {
        async move {
            let reason = self.gather(client).await;
            proceed(self.flush(client)).await.unwrap_or(reason)
        }
    }

    /// Reads and handles the client's packets until the connection ends: why it ended.
    // Not an async fn: see `run`.
    #[allow(clippy::manual_async_fn)]
    fn gather<'a>(&'a mut self, client: &'a ClientId) -> impl Future<Output = CloseReason> + 'a {
        async move {
            loop {
                // `if let`, not `match`: no `Option<Next>` is kept across the awaits below.
                let next = if let Some(next) = self.buffered() {
                    next
                } else {
                    // Before the socket is read again, what was gathered goes out.
                    if let Some(reason) = proceed(self.flush(client)).await {
                        return reason;
                    }
                    let timeout = self.shared.config.keep_alive_timeout(self.keep_alive);
                    let deadline = timeout.and_then(|k| Instant::now().checked_add(k));
                    self.link
                        .set_due(deadline.map_or(0, |deadline| self.shared.stamp(deadline)));
                    self.next().await
                };
                // Taken by a plain function: nothing of it is kept across the awaits below.
                let step = match self.take(client, next) {
                    Ok(step) => step,
                    Err(Stop::Ended(reason)) => return reason,
                    // Boxed: the wait and what it keeps would else take room in every
                    // connection's task, most brokers never throttling.
                    Err(Stop::Throttle(wait, packet)) => {
                        match Box::pin(self.throttled(client, wait, *packet)).await {
                            Ok(step) => step,
                            Err(reason) => return reason,
                        }
                    }
                };
                if let Some(reason) = proceed(step).await {
                    return reason;
                }
            }
        }
    }

    /// Sends what was gathered: the QoS 0 messages to their subscribers, or the packets to
    /// the session, all of them in one [`SessionMsg::Packets`] (only one of the two has any).
    /// A single message is offered at once; a batch goes out with one
    /// [`send_all_async`](hermes::Hermes::send_all_async) (one lock per shard), boxed.
    fn flush(&mut self, client: &ClientId) -> Step {
        self.flush_after(client, Step::Next)
    }

    /// [`flush`](Self::flush), once `before` is done: while it still waits, nothing is offered
    /// ahead of it.
    fn flush_after(&mut self, client: &ClientId, before: Step) -> Step {
        // Taken, not cleared: an idle connection keeps no buffer of a past burst.
        let batch = match std::mem::replace(&mut self.gathered, Gathered::Nothing) {
            Gathered::Direct(mut messages) if !messages.is_empty() => {
                fan_out(&self.shared, &mut messages)
            }
            Gathered::Session(packets) if !packets.is_empty() => {
                let conn = self.link.conn();
                vec![(client.clone(), SessionMsg::Packets { conn, packets })]
            }
            Gathered::Nothing | Gathered::Direct(_) | Gathered::Session(_) => return before,
        };
        match before {
            Step::Next => self.send_batch(batch),
            Step::Wait(before) => {
                let hermes = self.hermes.clone();
                Step::Wait(Box::pin(async move {
                    before.await && hermes.send_all_async(batch).await.is_ok()
                }))
            }
            end @ Step::End(_) => end,
        }
    }

    /// Sends `batch`, in order: offered at once when it is one message, else (or when its
    /// mailbox is full) a boxed wait.
    fn send_batch(&self, mut batch: Vec<(ClientId, SessionMsg)>) -> Step {
        if batch.len() <= 1 {
            let Some((client, msg)) = batch.pop() else {
                return Step::Next;
            };
            return match self.hermes.try_send(client.clone(), msg) {
                Ok(()) => Step::Next,
                Err(hermes::SendError::Full(msg)) => {
                    let hermes = self.hermes.clone();
                    Step::Wait(Box::pin(async move {
                        hermes.send_async(client, msg).await.is_ok()
                    }))
                }
                Err(_) => Step::End(CloseReason::ServerClosed),
            };
        }
        let hermes = self.hermes.clone();
        Step::Wait(Box::pin(async move {
            hermes.send_all_async(batch).await.is_ok()
        }))
    }

    /// Handles one packet from the client, without waiting: what to do next.
    fn handle(&mut self, client: &ClientId, packet: Packet) -> Step {
        let conn = self.link.conn();
        tracing::trace!(conn, client_id = %client, packet = %packet.packet_type(), "received");
        // A denied QoS 0 PUBLISH is dropped here; a QoS 1 or 2 one goes to the session, which
        // acknowledges it without publishing it.
        if let Packet::Publish(publish) = &packet
            && publish.qos == PublishQos::AtMostOnce
            && !may_publish(self.acl.as_deref(), &publish.topic)
        {
            Counters::add(&self.shared.counters.denied_publish, 1);
            tracing::debug!(conn, client_id = %client, topic = %publish.topic.as_str(), "PUBLISH denied: dropped");
            return Step::Next;
        }
        let to_session = match packet {
            // The direct path, unless something the client sent before is still being
            // carried out by its session (a SUBSCRIBE, a retained PUBLISH...): then behind
            // it, through the session, so that its effects come first.
            Packet::Publish(publish)
                if publish.qos == PublishQos::AtMostOnce && self.link.is_settled() =>
            {
                return self.gather_qos0(client, publish);
            }
            // Before the CONNACK is written, or while the session still carries out what
            // came before (its answers go first), the session answers (after them
            // [MQTT-3.2.0-1]); else no hop is needed.
            Packet::PingReq if self.link.is_accepted() && self.link.is_settled() => {
                self.link.send_now(Packet::PingResp);
                return Step::Next;
            }
            Packet::Disconnect => return Step::End(CloseReason::Disconnect),
            Packet::Connect(_) => {
                tracing::debug!(conn, client_id = %client, "second CONNECT; closing [MQTT-3.1.0-2]");
                return Step::End(CloseReason::ProtocolError);
            }
            Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                tracing::debug!(conn, client_id = %client, packet = %packet.packet_type(), "a server's packet from a client; closing");
                return Step::End(CloseReason::ProtocolError);
            }
            packet @ (Packet::Publish(_)
            | Packet::PingReq
            | Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::Subscribe(_)
            | Packet::Unsubscribe(_)) => packet,
        };
        if matches!(
            to_session,
            Packet::Publish(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_)
        ) {
            self.link.unsettle();
        }
        // The QoS 0 messages gathered before it go first.
        let before = if matches!(self.gathered, Gathered::Direct(_)) {
            self.flush(client)
        } else {
            Step::Next
        };
        let gathered = self.gathered.push_session(to_session);
        if gathered < BATCH_GATHER {
            return before;
        }
        self.flush_after(client, before)
    }

    /// Handles what [`next`](Self::next) brought, if it can at once.
    fn take(&mut self, client: &ClientId, next: Next) -> Result<Step, Stop> {
        let packet = match next {
            Next::Packet(packet) => packet,
            Next::Ended(reason) => return Err(Stop::Ended(reason)),
            Next::Malformed(error) => {
                tracing::debug!(conn = self.link.conn(), client_id = %client, %error, "malformed packet; closing [MQTT-4.8.0-1]");
                return Err(Stop::Ended(CloseReason::ProtocolError));
            }
        };
        match self.throttle_wait(&packet) {
            None => Ok(self.handle(client, packet)),
            Some(wait) => Err(Stop::Throttle(wait, Box::new(packet))),
        }
    }

    /// Takes a token for a PUBLISH under `max_publish_rate`: how long to wait first, if the
    /// bucket is empty.
    fn throttle_wait(&mut self, packet: &Packet) -> Option<Duration> {
        if !matches!(packet, Packet::Publish(_)) {
            return None;
        }
        let wait = self.bucket.as_mut().and_then(|bucket| bucket.take())?;
        Counters::add(&self.shared.counters.publish_throttled, 1);
        Some(wait)
    }

    /// Waits `wait`, before handling a PUBLISH, for `max_publish_rate` (what was gathered
    /// goes out first, not waiting with it): the socket is not read meanwhile, so TCP flow
    /// control slows the client down. Then handles it; `Err` if the connection ended
    /// meanwhile.
    async fn throttled(
        &mut self,
        client: &ClientId,
        wait: Duration,
        packet: Packet,
    ) -> Result<Step, CloseReason> {
        if let Some(reason) = proceed(self.flush(client)).await {
            return Err(reason);
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = self.link.closed() => return Err(CloseReason::ServerClosed),
        }
        Ok(self.handle(client, packet))
    }

    /// A QoS 0 PUBLISH: to the retained shard if it says so (what was gathered before it
    /// first), and gathered for every subscriber's session.
    fn gather_qos0(&mut self, client: &ClientId, publish: Publish) -> Step {
        let message = Message::from(publish);
        self.local.published = self.local.published.saturating_add(1);
        // The packets for the session gathered before it go first.
        let mut step = if matches!(self.gathered, Gathered::Session(_)) {
            self.flush(client)
        } else {
            Step::Next
        };
        if message.retain {
            // The messages gathered before it are routed before it is retained.
            let before = self.flush_after(client, step);
            let shard = self.shared.retained_shard(message.topic.as_bytes());
            let retain = RetainedMsg::Publish(message.clone());
            let hermes = self.hermes.clone();
            step = match before {
                Step::Next => match self.hermes.try_send(shard, retain) {
                    Ok(()) => Step::Next,
                    Err(hermes::SendError::Full(retain)) => Step::Wait(Box::pin(async move {
                        hermes.send_async(shard, retain).await.is_ok()
                    })),
                    Err(_) => return Step::End(CloseReason::ServerClosed),
                },
                Step::Wait(before) => Step::Wait(Box::pin(async move {
                    before.await && hermes.send_async(shard, retain).await.is_ok()
                })),
                end @ Step::End(_) => return end,
            };
        }
        if self.gathered.push_direct(message) < BATCH_GATHER {
            return step;
        }
        self.flush_after(client, step)
    }

    /// The next packet decoded from what was read, if a whole one is there.
    fn buffered(&mut self) -> Option<Next> {
        match codec::decode(&mut self.buf, self.shared.config.max_packet_size) {
            Ok(Some(packet)) => {
                self.local.packets = self.local.packets.saturating_add(1);
                if matches!(packet, Packet::Publish(_)) {
                    self.local.publishes = self.local.publishes.saturating_add(1);
                }
                Some(Next::Packet(packet))
            }
            Ok(None) => None,
            Err(error) => Some(Next::Malformed(error)),
        }
    }

    /// The next packet: decoded from what was read, or read for, until the deadline set on
    /// the link ([`Link::set_due`]: the CONNECT's, or the keep alive's), which ends it with
    /// `KeepAliveTimeout`, or until the server closes the connection.
    ///
    /// The deadline is no timer of the connection's own: the broker's keep-alive sweep
    /// ([`keep_alive_sweep`](super::listen::keep_alive_sweep)) wakes the reader once it has
    /// passed (at most a sweep period late, never early: the reader looks at the clock
    /// itself).
    // Not an async fn: see `run`.
    #[allow(clippy::manual_async_fn)]
    fn next(&mut self) -> impl Future<Output = Next> + '_ {
        async move {
            loop {
                if let Some(next) = self.buffered() {
                    return next;
                }
                // Before waiting for the socket: what this read brought is counted.
                self.local.flush_received(&self.shared.counters);
                let read = read_some(&mut self.read, &mut self.buf);
                let woken = self.link.nudged();
                if self.link.is_closed() {
                    let reason = self
                        .link
                        .close_reason()
                        .unwrap_or(CloseReason::ServerClosed);
                    return Next::Ended(reason);
                }
                tokio::select! {
                    result = read => match result {
                        Ok(0) => return Next::Ended(CloseReason::NetworkError),
                        Ok(n) => {
                            self.shared.spin.poke();
                            let n = u32::try_from(n).unwrap_or(u32::MAX);
                            self.local.bytes = self.local.bytes.saturating_add(n);
                        }
                        Err(error) => {
                            tracing::debug!(conn = self.link.conn(), %error, "read failed");
                            return Next::Ended(CloseReason::NetworkError);
                        }
                    },
                    () = woken => {
                        if self.link.is_closed() {
                            let reason =
                                self.link.close_reason().unwrap_or(CloseReason::ServerClosed);
                            return Next::Ended(reason);
                        }
                        if self.overdue() {
                            return Next::Ended(CloseReason::KeepAliveTimeout);
                        }
                    }
                }
            }
        }
    }
}

impl<R> Reader<R> {
    /// Whether the deadline on the link has passed (by a millisecond at least: a stamp is a
    /// whole one).
    fn overdue(&self) -> bool {
        let due = self.link.due();
        due != 0 && self.shared.stamp(Instant::now()) > due
    }
}

/// Reads what the socket has into `buf`: how many bytes (0 at the end of the stream). An
/// empty `buf` is first released and the bytes read into a buffer on the stack, only while
/// the read is polled, then copied into a `buf` of their size: a connection waiting for its
/// next packet holds no read buffer. A partial packet is read on into `buf` itself.
async fn read_some<R: AsyncRead + Unpin>(
    read: &mut R,
    buf: &mut BytesMut,
) -> std::io::Result<usize> {
    if buf.is_empty() {
        // Its memory may be shared with the packets split off it: let them own it.
        *buf = BytesMut::new();
        std::future::poll_fn(|cx| {
            let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut into = ReadBuf::uninit(&mut stack);
            ready!(Pin::new(&mut *read).poll_read(cx, &mut into))?;
            buf.extend_from_slice(into.filled());
            Poll::Ready(Ok(into.filled().len()))
        })
        .await
    } else {
        buf.reserve(READ_CHUNK);
        read.read_buf(buf).await
    }
}

/// The close reason of a refused CONNECT (it has no will to publish anyway).
fn refused_reason(_code: ConnectReturnCode) -> CloseReason {
    CloseReason::ProtocolError
}

/// A connection's writing half while nothing is to be written, kept on its link: the next
/// write starts its task ([`write_burst`]). It is all an idle connection's writer costs (a
/// box of 24 bytes for a TCP connection: no task).
struct Idle<W> {
    write: W,
    shared: Arc<Shared>,
}

impl<W: AsyncWrite + Unpin + Send + 'static> Writer for Idle<W> {
    fn start(mut self: Box<Self>, outbox: Outbox, now: bool) {
        let mut first = Queued::default();
        // A close is left to the task: it shuts the writing half down after the rest.
        if now && outbox.take(&mut first) && !first.close {
            match self.write_now(&mut first) {
                Ok(true) => match outbox.park(self) {
                    None => return,
                    Some(back) => (self, first) = (back, Queued::default()),
                },
                // The rest (in `first`) is the task's.
                Ok(false) => {}
                Err(error) => {
                    tracing::debug!(%error, "write failed; closing the connection");
                    outbox.failed();
                    return;
                }
            }
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(write_burst(self, outbox, first))),
            // Only while the runtime is being torn down: the connection closes.
            Err(_) => {
                tracing::debug!("no runtime to write on; closing the connection");
                outbox.failed();
            }
        }
    }
}

impl<W: AsyncWrite + Unpin> Idle<W> {
    /// Writes `taken` as far as the socket takes it without waiting: true once all of it
    /// is written and flushed; else what is left is in `taken`.
    fn write_now(&mut self, taken: &mut Queued) -> std::io::Result<bool> {
        let before = taken.len();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // Dropped when it would wait: what it wrote is off `taken` already.
        let done = std::pin::pin!(write_out(&mut self.write, taken)).poll(&mut cx);
        let mut local = Local {
            bytes: (before - taken.len()) as u64,
            ..Local::default()
        };
        let done = match done {
            Poll::Ready(Ok(())) => {
                local.packets = taken.packets as u64;
                local.publishes = taken.publishes as u64;
                true
            }
            Poll::Ready(Err(error)) => return Err(error),
            Poll::Pending => false,
        };
        local.flush_sent(&self.shared.counters);
        Ok(done)
    }
}

/// The writer's task: writes what the link's senders encoded, everything queued at once,
/// until nothing is left and nothing more came while it looked a few times
/// ([`Outbox::linger`]); then gives the writing half back to the link and ends. After the
/// close it shuts the writing half down. The connection's end may abandon it (a client that
/// reads nothing of what is left at close): it then stops where it is.
// Not an async fn: its arguments would be kept beside their moved copies.
#[allow(clippy::manual_async_fn)]
fn write_burst<W: AsyncWrite + Unpin + Send + 'static>(
    idle: Box<Idle<W>>,
    outbox: Outbox,
    first: Queued,
) -> impl Future<Output = ()> + Send {
    async move {
        tokio::select! {
            biased;
            () = outbox.abandoned() => outbox.gone(),
            () = write_until_idle(idle, &outbox, first) => {}
        }
    }
}

/// [`write_burst`]'s work: `first` (taken already, maybe partly written), then batches
/// until the queue is empty (the writer parked) or closed.
async fn write_until_idle<W: AsyncWrite + Unpin + Send + 'static>(
    mut idle: Box<Idle<W>>,
    outbox: &Outbox,
    mut first: Queued,
) {
    loop {
        let taken = std::mem::take(&mut first);
        match write_batches(&mut idle.write, outbox, &idle.shared, taken).await {
            // A busy connection keeps its task: more was queued while it looked.
            Busy::Idle if outbox.linger().await => {}
            Busy::Idle => match outbox.park(idle) {
                None => return,
                // Queued after the last batch was taken: written by this task still.
                Some(back) => idle = back,
            },
            Busy::Closing => {
                let _ = idle.write.shutdown().await;
                outbox.gone();
                return;
            }
            Busy::Failed => return,
        }
    }
}

/// How a busy writer's batches ended.
enum Busy {
    /// Everything queued was written.
    Idle,
    /// Everything queued was written, and the link asked to close the connection.
    Closing,
    /// A write failed: the connection is closed.
    Failed,
}

/// Writes what the link's senders queued until nothing is left, from `taken` (a batch taken
/// already, or empty): each batch taken whole, in one swap, and written with vectored
/// writes. Its buffers are kept from batch to batch and released when nothing is left.
async fn write_batches<W: AsyncWrite + Unpin>(
    write: &mut W,
    outbox: &Outbox,
    shared: &Shared,
    mut taken: Queued,
) -> Busy {
    let mut local = Local::default();
    while !taken.is_empty() || outbox.take(&mut taken) {
        let written = taken.len() as u64;
        if let Err(error) = write_out(write, &mut taken).await {
            tracing::debug!(%error, "write failed; closing the connection");
            local.flush_sent(&shared.counters);
            outbox.failed();
            return Busy::Failed;
        }
        local.bytes += written;
        local.packets += taken.packets as u64;
        local.publishes += taken.publishes as u64;
        local.flush_sent(&shared.counters);
        if taken.close {
            return Busy::Closing;
        }
        // Kept for the next swap: a busy connection reuses its two buffers.
        taken.clear();
    }
    Busy::Idle
}

/// Writes and flushes `taken`; what is written is taken off it as it goes, so that a write
/// dropped before its end leaves the rest there.
async fn write_out<W: AsyncWrite + Unpin>(
    write: &mut W,
    taken: &mut Queued,
) -> std::io::Result<()> {
    write_all(write, &mut taken.chunks, &mut taken.tail).await?;
    write.flush().await
}

/// Writes every chunk, then `tail`, with vectored writes of up to [`MAX_SLICES`] pieces,
/// taking what is written off them.
async fn write_all<W: AsyncWrite + Unpin>(
    write: &mut W,
    chunks: &mut VecDeque<Bytes>,
    tail: &mut BytesMut,
) -> std::io::Result<()> {
    while !chunks.is_empty() || !tail.is_empty() {
        // The slices are made on the stack of each poll: the task's future keeps none.
        let written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut n = 0;
            for chunk in chunks.iter().take(MAX_SLICES) {
                slices[n] = IoSlice::new(chunk);
                n += 1;
            }
            if n < MAX_SLICES && !tail.is_empty() {
                slices[n] = IoSlice::new(tail);
                n += 1;
            }
            Pin::new(&mut *write).poll_write_vectored(cx, &slices[..n])
        })
        .await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let Some(front) = chunks.front_mut() else {
                tail.advance(left);
                break;
            };
            if front.len() <= left {
                left -= front.len();
                chunks.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::server::link::{Out, Written};

    /// The size of what `f` returns.
    fn size_of_return<R>(_f: impl FnOnce() -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The tokio tasks alive on this runtime.
    fn tasks() -> usize {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    }

    /// Waits (at most 5 s) until `tasks()` is `n`.
    async fn tasks_become(n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while tasks() != n {
            assert!(
                Instant::now() < deadline,
                "{} tasks alive, not {n}",
                tasks()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A connection's link with its writer installed, writing into a duplex pipe whose
    /// other end (the client's) is returned, `capacity` bytes of it buffered.
    fn writer_link(capacity: usize) -> (Link, tokio::io::DuplexStream) {
        let (client, server) = tokio::io::duplex(capacity);
        let (link, outbox) = Link::new(1, 1_000);
        outbox.install(Box::new(Idle {
            write: server,
            shared: Shared::for_tests(),
        }));
        (link, client)
    }

    /// The client reads `n` PUBACKs off `client`, in order from `first`.
    async fn read_acks(client: &mut tokio::io::DuplexStream, first: u16, n: u16) {
        let mut wire = BytesMut::new();
        let mut got = Vec::new();
        while got.len() < usize::from(n) {
            match codec::decode(&mut wire, usize::MAX) {
                Ok(Some(packet)) => got.push(packet),
                Ok(None) => {
                    let read =
                        tokio::time::timeout(Duration::from_secs(5), client.read_buf(&mut wire));
                    assert!(
                        read.await.expect("the writer writes").unwrap() > 0,
                        "closed early"
                    );
                }
                Err(error) => panic!("{error}"),
            }
        }
        let expected: Vec<Packet> = (first..first + n).map(ack).collect();
        assert_eq!(got, expected);
    }

    fn ack(n: u16) -> Packet {
        Packet::PubAck(std::num::NonZeroU16::new(n).expect("from 1"))
    }

    /// An idle connection's writer is no task, only its socket's half on the link: a size
    /// class of tokio's (256 bytes: 104 of header and the future) is a box of 24 bytes.
    #[test]
    #[allow(unreachable_code)]
    fn an_idle_writer_is_a_small_box() {
        type Half = tokio::net::tcp::OwnedWriteHalf;
        let size = std::mem::size_of::<Idle<Half>>();
        assert!(size <= 24, "the idle writer: {size} bytes");
        // The task's future, while there is something to write (then the buffers too).
        let busy = size_of_return(|| write_burst::<Half>(todo!(), todo!(), todo!()));
        eprintln!("idle writer: a {size}-byte box; busy writer task: a {busy}-byte future");
    }

    /// No writer task while nothing is to be written; a write starts one, which writes
    /// what was queued, in order, and ends when nothing more comes; deliveries keep coming
    /// in order across those starts.
    #[tokio::test(flavor = "current_thread")]
    async fn an_idle_connection_has_no_writer_task_and_gets_its_deliveries_in_order() {
        let base = tasks();
        let (link, mut client) = writer_link(64 * 1024);
        assert_eq!(tasks(), base, "installed idle: no task");
        let mut next = 1;
        for burst in [1u16, 3, 50] {
            for n in next..next + burst {
                assert_eq!(link.send(ack(n)), Written::Queued);
            }
            assert_eq!(
                tasks(),
                base + 1,
                "a write starts one writer task, not one per send"
            );
            read_acks(&mut client, next, burst).await;
            tasks_become(base).await;
            next += burst;
        }
        // A batch from a session run, too.
        let mut outs: Vec<_> = (next..next + 10).map(|n| Out::Packet(ack(n))).collect();
        assert_eq!(link.send_all(&mut outs), (0, false));
        read_acks(&mut client, next, 10).await;
        tasks_become(base).await;
    }

    /// The reader's own answers ([`Link::send_now`]) are written on its thread while the
    /// writer is idle: no task; what the socket does not take is left to a task, and what
    /// is queued after it comes after it.
    #[tokio::test(flavor = "current_thread")]
    async fn the_readers_answers_are_written_at_once() {
        let base = tasks();
        let (link, mut client) = writer_link(64);
        assert_eq!(link.send_now(ack(1)), Written::Queued);
        assert_eq!(tasks(), base, "written at once: no task");
        read_acks(&mut client, 1, 1).await;
        // 64 bytes of pipe: 16 PUBACKs fill it, the 17th waits for a task.
        for n in 2..=17 {
            assert_eq!(link.send_now(ack(n)), Written::Queued);
        }
        assert_eq!(tasks(), base, "all taken by the socket at once");
        assert_eq!(link.send_now(ack(18)), Written::Queued);
        assert_eq!(tasks(), base + 1, "the rest is the task's");
        for n in 19..=30 {
            assert_eq!(link.send_now(ack(n)), Written::Queued);
        }
        read_acks(&mut client, 2, 29).await;
        tasks_become(base).await;
    }

    /// A client that does not read: what is queued meanwhile piles up behind one writer
    /// task (started once), which drains all of it, in order, when the client reads, and
    /// then ends.
    #[tokio::test(flavor = "current_thread")]
    async fn a_backlog_starts_one_writer_which_drains_it() {
        let base = tasks();
        // 64 bytes of pipe: the writer blocks after 16 PUBACKs.
        let (link, mut client) = writer_link(64);
        for n in 1..=2_000 {
            assert_eq!(link.send(ack(n)), Written::Queued);
            if n % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(tasks(), base + 1, "one writer for the whole backlog");
        read_acks(&mut client, 1, 2_000).await;
        tasks_become(base).await;
        // And the next write starts it again.
        assert_eq!(link.send(ack(2_001)), Written::Queued);
        read_acks(&mut client, 2_001, 1).await;
        tasks_become(base).await;
    }

    /// Close with a backlog: the rest is written, then the writing half is shut down (the
    /// client reads the end of the stream) and the writer is gone; a client that reads
    /// nothing at close has its writer abandoned, which ends its task.
    #[tokio::test(flavor = "current_thread")]
    async fn close_writes_the_backlog_then_ends_the_stream() {
        let base = tasks();
        let (link, mut client) = writer_link(64);
        for n in 1..=500 {
            link.send(ack(n));
        }
        link.close(CloseReason::ServerClosed);
        assert_eq!(link.send(ack(501)), Written::Closed);
        read_acks(&mut client, 1, 500).await;
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing after the close: {rest:?}");
        tokio::time::timeout(Duration::from_secs(5), link.writer_ended())
            .await
            .expect("the writer ends after the close");
        tasks_become(base).await;

        // The client reads nothing: the writer blocks until abandoned.
        let (link, _client) = writer_link(64);
        for n in 1..=500 {
            link.send(ack(n));
        }
        link.close(CloseReason::ServerClosed);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), link.writer_ended())
                .await
                .is_err(),
            "blocked on a client that reads nothing"
        );
        link.abandon_writer();
        tokio::time::timeout(Duration::from_secs(5), link.writer_ended())
            .await
            .expect("an abandoned writer ends");
        tasks_become(base).await;
    }

    /// A connection waiting for its next packet holds no read buffer: what a read brings
    /// into an empty buffer takes only its size, and a partial packet is read on in place.
    #[tokio::test]
    async fn reads_allocate_only_what_they_bring() {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let mut buf = BytesMut::new();
        client.write_all(&[0x30, 0x0a, 0x00]).await.unwrap();
        assert_eq!(read_some(&mut server, &mut buf).await.unwrap(), 3);
        assert_eq!(&buf[..], &[0x30, 0x0a, 0x00]);
        assert!(buf.capacity() < 64, "capacity {}", buf.capacity());
        // The rest of the packet is appended to what is pending.
        client.write_all(&[0x03, b'a', b'/', b'b']).await.unwrap();
        assert_eq!(read_some(&mut server, &mut buf).await.unwrap(), 4);
        assert_eq!(&buf[..], &[0x30, 0x0a, 0x00, 0x03, b'a', b'/', b'b']);
        // A buffer emptied by decoding is released before the next read.
        buf.clear();
        client.write_all(&[0xc0, 0x00]).await.unwrap();
        assert_eq!(read_some(&mut server, &mut buf).await.unwrap(), 2);
        assert!(buf.capacity() < 64, "capacity {}", buf.capacity());
        // A large write is read at most a chunk at a time.
        let big = vec![7u8; 3 * READ_CHUNK];
        client.write_all(&big).await.unwrap();
        buf.clear();
        let n = read_some(&mut server, &mut buf).await.unwrap();
        assert!((1..=READ_CHUNK).contains(&n), "{n}");
        assert_eq!(buf.len(), n);
        // The end of the stream reads 0.
        drop(client);
        let mut total = n;
        loop {
            buf.clear();
            match read_some(&mut server, &mut buf).await.unwrap() {
                0 => break,
                n => total += n,
            }
        }
        assert_eq!(total, big.len());
    }
}
