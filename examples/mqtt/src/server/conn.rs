//! The tokio edge: per connection (TCP, TLS, WebSocket: any byte stream), a reader task
//! (this one) and a writer task.
//!
//! The reader decodes packets (bounded by `max_packet_size`), insists on CONNECT first and
//! within `connect_timeout` [MQTT-3.1.0-1], validates it (answering a refusal's CONNACK
//! itself), and then forwards the client's packets to its session with `send_async` (or
//! `send_all_async` for what one read brought), which waits while the session's mailbox or
//! its shard's inbox is full: the reader stops reading the socket until the session catches
//! up. It routes QoS 0 PUBLISHes itself, straight to the subscribers' sessions (no hop
//! through its own), grouped per subscriber (`route_direct`): a reader whose subscribers
//! are behind stops reading too. What one read brought is gathered and sent on together
//! before the socket is read again. It enforces keep alive [MQTT-3.1.2-24], answers
//! PINGREQ, and closes the connection on any protocol error [MQTT-4.8.0-1]; whatever ends the
//! connection, it tells the session with `Detach` and why, so the session publishes the will
//! unless the client sent DISCONNECT.
//!
//! The writer takes packets from the link's channel, encodes them and writes them in batches
//! with one vectored write: a large PUBLISH payload is written from the shared buffer, not
//! copied per subscriber.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::link::{Link, Out, Outbox};
use super::listen::Place;
use super::stats::{Counters, Local};
use super::{ClientId, Fanout, Handle, RetainedMsg, SessionMsg, Shared, may_publish, route_direct};
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
/// Payloads from this size on are written from their shared buffer, not copied into the
/// write buffer.
const SHARED_PAYLOAD: usize = 1024;
/// Most packets a reader gathers from what it read before sending them on together.
const BATCH_GATHER: usize = 64;
/// Most packets, and bytes, one vectored write takes.
const BATCH_PACKETS: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;

/// Serves one accepted connection, its handshakes done, until it ends: `read` and `write` are
/// its two directions; its CONNECT must be in by `connect_by`. `places` are its places under
/// the connection limits, given back when it ends.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve<R, W>(
    read: R,
    write: W,
    peer: SocketAddr,
    connect_by: Instant,
    link: Link,
    outbox: Outbox,
    shared: Arc<Shared>,
    hermes: Handle,
    places: (Place, Place),
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let conn = link.conn();
    let mut writer = tokio::spawn(write_loop(write, outbox, Arc::clone(&shared)));
    let bucket = shared
        .config
        .publish_rate()
        .map(|(rate, burst)| Bucket::new(rate, burst));
    let mut reader = Reader {
        read,
        buf: BytesMut::with_capacity(4096),
        link: link.clone(),
        shared: Arc::clone(&shared),
        hermes,
        fanout: Fanout::default(),
        direct: Vec::new(),
        to_session: Vec::new(),
        keep_alive: None,
        acl: None,
        bucket,
        local: Local::default(),
        refused: false,
    };
    let (client, reason) = reader.run(peer, connect_by).await;
    reader.local.flush_received(&shared.counters);
    if reason == CloseReason::ProtocolError && !reader.refused {
        Counters::add(&shared.counters.protocol_errors, 1);
    }
    if let Some(client) = client {
        Counters::gauge(&shared.counters.clients_connected, -1);
        tracing::debug!(conn, %peer, client_id = %client, ?reason, "connection closed");
        let detach = SessionMsg::Detach { conn, reason };
        if reader.hermes.send_async(client, detach).await.is_ok() {
            // The session closes it once the will is out (a retained one stored).
            let _ = tokio::time::timeout(WILL_GRACE, link.closed()).await;
        } else {
            tracing::debug!(
                conn,
                "broker closed: the session was not told the connection ended"
            );
        }
    } else {
        tracing::debug!(conn, %peer, ?reason, "connection closed before it was accepted");
    }
    link.close(reason);
    drop(reader);
    if tokio::time::timeout(WRITER_GRACE, &mut writer)
        .await
        .is_err()
    {
        writer.abort();
    }
    shared.unregister(conn);
    drop(places);
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
    fanout: Fanout,
    /// QoS 0 messages decoded from what was read, for the direct path: routed together once
    /// nothing more is decoded (or [`BATCH_GATHER`] are), before the socket is read again.
    direct: Vec<Message>,
    /// Packets for the session, gathered the same way and sent together.
    to_session: Vec<SessionMsg>,
    /// How long the client may send nothing, once connected [MQTT-3.1.2-24].
    keep_alive: Option<Duration>,
    /// What the client may do, with an ACL file.
    acl: Option<Arc<ClientAcl>>,
    /// `max_publish_rate`.
    bucket: Option<Bucket>,
    /// Counts not yet added to the shared counters.
    local: Local,
    /// A CONNECT was refused with a CONNACK (not a protocol error).
    refused: bool,
}

/// Why reading stopped before the connection was accepted, or after.
type Ended = (Option<ClientId>, CloseReason);

/// The next packet, or why there is none.
enum Next {
    Packet(Packet),
    Ended(CloseReason),
    Malformed(DecodeError),
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Reads the connection until it ends: the session it attached to, if any, and why.
    async fn run(&mut self, peer: SocketAddr, connect_by: Instant) -> Ended {
        let conn = self.link.conn();
        let connect = match self.next(Some(connect_by)).await {
            Next::Packet(Packet::Connect(connect)) => connect,
            Next::Packet(other) => {
                tracing::debug!(conn, %peer, packet = %other.packet_type(), "first packet is not CONNECT [MQTT-3.1.0-1]");
                return (None, CloseReason::ProtocolError);
            }
            Next::Ended(CloseReason::KeepAliveTimeout) => {
                tracing::debug!(conn, %peer, "no CONNECT within connect_timeout");
                return (None, CloseReason::ProtocolError);
            }
            Next::Ended(reason) => return (None, reason),
            Next::Malformed(DecodeError::UnsupportedProtocolLevel { name, level }) => {
                return self.unsupported(peer, name.as_bytes(), level);
            }
            Next::Malformed(error) => {
                tracing::debug!(conn, %peer, %error, "malformed CONNECT; closing");
                return (None, CloseReason::ProtocolError);
            }
        };
        let client = match self.accept(peer, connect).await {
            Ok(client) => client,
            Err(ended) => return ended,
        };
        let ended = self.packets(&client).await;
        (Some(client), ended)
    }

    /// A CONNECT whose protocol level the decoder does not know: CONNACK 0x01 for an MQTT
    /// protocol name [MQTT-3.1.2-2], a plain close otherwise [MQTT-3.1.2-1].
    fn unsupported(&mut self, peer: SocketAddr, name: &[u8], level: u8) -> Ended {
        let mqtt = [ProtocolVersion::V311, ProtocolVersion::V31]
            .iter()
            .any(|v| v.name().as_bytes() == name);
        tracing::debug!(conn = self.link.conn(), %peer, level, "unsupported protocol level");
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
    async fn accept(
        &mut self,
        peer: SocketAddr,
        mut connect: Box<Connect>,
    ) -> Result<ClientId, Ended> {
        let conn = self.link.conn();
        let refused = |code| Err((None, refused_reason(code)));
        let Some(version) = connect.protocol_version() else {
            let name = connect.protocol_name.as_bytes().to_vec();
            return Err(self.unsupported(peer, &name, connect.protocol_level));
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
                tracing::debug!(conn, %peer, client_id = %connect.client_id.as_str(), ?code, "CONNECT refused");
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
            tracing::debug!(conn, %peer, client_id = %connect.client_id.as_str(), topic = %will.topic.as_str(), "CONNECT refused: the ACL denies its will topic");
            self.refuse(ConnectReturnCode::NotAuthorized);
            return refused(ConnectReturnCode::NotAuthorized);
        }
        let client = ClientId::new(connect.client_id.as_str());
        let keep_alive = self.shared.config.keep_alive_timeout(connect.keep_alive);
        tracing::debug!(conn, %peer, client_id = %client, clean = connect.clean_session, keep_alive = connect.keep_alive, "CONNECT");
        let attach = SessionMsg::Attach {
            link: self.link.clone(),
            connect,
            acl: acl.clone(),
        };
        if self
            .hermes
            .send_async(client.clone(), attach)
            .await
            .is_err()
        {
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
    async fn packets(&mut self, client: &ClientId) -> CloseReason {
        let reason = self.gather(client).await;
        if !self.flush(client).await {
            return CloseReason::ServerClosed;
        }
        reason
    }

    /// Sends what was gathered: the QoS 0 messages to their subscribers, or the packets to
    /// the session (only one of the two has any). False once the broker is closing.
    async fn flush(&mut self, client: &ClientId) -> bool {
        if !self.direct.is_empty() {
            // Taken, not cleared: an idle connection keeps no buffer of a past burst.
            let mut direct = std::mem::take(&mut self.direct);
            return route_direct(&self.shared, &self.hermes, &mut direct, &mut self.fanout).await;
        }
        match self.to_session.len() {
            0 => true,
            1 => match self.to_session.pop() {
                Some(msg) => self.hermes.send_async(client.clone(), msg).await.is_ok(),
                None => true,
            },
            _ => {
                let batch = std::mem::take(&mut self.to_session);
                let batch = batch.into_iter().map(|msg| (client.clone(), msg));
                self.hermes.send_all_async(batch).await.is_ok()
            }
        }
    }

    /// Reads the client's packets until the connection ends, gathering what goes to the
    /// sessions: whatever one read brought is sent together (one Hermes message per
    /// subscriber, one inbox lock per shard), before the socket is read again.
    async fn gather(&mut self, client: &ClientId) -> CloseReason {
        let conn = self.link.conn();
        loop {
            let packet = match self.buffered() {
                Some(next) => next,
                None => {
                    if !self.flush(client).await {
                        return CloseReason::ServerClosed;
                    }
                    let deadline = self.keep_alive.and_then(|k| Instant::now().checked_add(k));
                    self.next(deadline).await
                }
            };
            let packet = match packet {
                Next::Packet(packet) => packet,
                Next::Ended(reason) => return reason,
                Next::Malformed(error) => {
                    tracing::debug!(conn, client_id = %client, %error, "malformed packet; closing [MQTT-4.8.0-1]");
                    return CloseReason::ProtocolError;
                }
            };
            tracing::trace!(conn, client_id = %client, packet = %packet.packet_type(), "received");
            if let Packet::Publish(publish) = &packet {
                if !self.throttle(client).await {
                    return CloseReason::ServerClosed;
                }
                // A denied QoS 0 PUBLISH is dropped here; a QoS 1 or 2 one goes to the
                // session, which acknowledges it without publishing it.
                if publish.qos == PublishQos::AtMostOnce
                    && !may_publish(self.acl.as_deref(), &publish.topic)
                {
                    Counters::add(&self.shared.counters.denied_publish, 1);
                    tracing::debug!(conn, client_id = %client, topic = %publish.topic.as_str(), "PUBLISH denied: dropped");
                    continue;
                }
            }
            let to_session = match packet {
                // The direct path, unless something the client sent before is still being
                // carried out by its session (a SUBSCRIBE, a retained PUBLISH...): then
                // behind it, through the session, so that its effects come first.
                Packet::Publish(publish)
                    if publish.qos == PublishQos::AtMostOnce && self.link.is_settled() =>
                {
                    if !self.to_session.is_empty() && !self.flush(client).await {
                        return CloseReason::ServerClosed;
                    }
                    if !self.gather_qos0(client, publish).await {
                        return CloseReason::ServerClosed;
                    }
                    continue;
                }
                // Before the session has written CONNACK, it answers (after the CONNACK
                // [MQTT-3.2.0-1]); after, no hop is needed.
                Packet::PingReq if self.link.is_accepted() => {
                    self.link.send(Packet::PingResp);
                    continue;
                }
                Packet::Disconnect => return CloseReason::Disconnect,
                Packet::Connect(_) => {
                    tracing::debug!(conn, client_id = %client, "second CONNECT; closing [MQTT-3.1.0-2]");
                    return CloseReason::ProtocolError;
                }
                Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                    tracing::debug!(conn, client_id = %client, packet = %packet.packet_type(), "a server's packet from a client; closing");
                    return CloseReason::ProtocolError;
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
            if !self.direct.is_empty() && !self.flush(client).await {
                return CloseReason::ServerClosed;
            }
            self.to_session.push(SessionMsg::Packet {
                conn,
                packet: to_session,
            });
            if self.to_session.len() >= BATCH_GATHER && !self.flush(client).await {
                return CloseReason::ServerClosed;
            }
        }
    }

    /// Waits, before handling a PUBLISH, for `max_publish_rate`: the socket is not read
    /// meanwhile, so TCP flow control slows the client down. False if the broker closed the
    /// connection meanwhile.
    async fn throttle(&mut self, client: &ClientId) -> bool {
        let Some(wait) = self.bucket.as_mut().and_then(Bucket::take) else {
            return true;
        };
        Counters::add(&self.shared.counters.publish_throttled, 1);
        // What was gathered does not wait with this one.
        if !self.flush(client).await {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.link.closed() => false,
        }
    }

    /// A QoS 0 PUBLISH: to the retained shard at once if it says so, and gathered for every
    /// subscriber's session. False once the broker is closing.
    async fn gather_qos0(&mut self, client: &ClientId, publish: Publish) -> bool {
        let message = Message::from(publish);
        self.local.published += 1;
        if message.retain {
            // The messages gathered before it are routed before it is retained.
            if !self.flush(client).await {
                return false;
            }
            let shard = self.shared.retained_shard(message.topic.as_bytes());
            let retain = RetainedMsg::Publish(message.clone());
            if self.hermes.send_async(shard, retain).await.is_err() {
                return false;
            }
        }
        self.direct.push(message);
        self.direct.len() < BATCH_GATHER || self.flush(client).await
    }

    /// The next packet decoded from what was read, if a whole one is there.
    fn buffered(&mut self) -> Option<Next> {
        match codec::decode(&mut self.buf, self.shared.config.max_packet_size) {
            Ok(Some(packet)) => {
                self.local.packets += 1;
                if matches!(packet, Packet::Publish(_)) {
                    self.local.publishes += 1;
                }
                Some(Next::Packet(packet))
            }
            Ok(None) => None,
            Err(error) => Some(Next::Malformed(error)),
        }
    }

    /// The next packet: decoded from what was read, or read for, until `deadline` (which ends
    /// it with `KeepAliveTimeout`), or until the server closes the connection.
    async fn next(&mut self, deadline: Option<Instant>) -> Next {
        loop {
            if let Some(next) = self.buffered() {
                return next;
            }
            // Before waiting for the socket: what this read brought is counted.
            self.local.flush_received(&self.shared.counters);
            let read = self.read.read_buf(&mut self.buf);
            let closed = self.link.closed();
            let timeout = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = read => match result {
                    Ok(0) => return Next::Ended(CloseReason::NetworkError),
                    Ok(n) => self.local.bytes += n as u64,
                    Err(error) => {
                        tracing::debug!(conn = self.link.conn(), %error, "read failed");
                        return Next::Ended(CloseReason::NetworkError);
                    }
                },
                () = closed => {
                    let reason = self.link.close_reason().unwrap_or(CloseReason::ServerClosed);
                    return Next::Ended(reason);
                }
                () = timeout => return Next::Ended(CloseReason::KeepAliveTimeout),
            }
        }
    }
}

/// The close reason of a refused CONNECT (it has no will to publish anyway).
fn refused_reason(_code: ConnectReturnCode) -> CloseReason {
    CloseReason::ProtocolError
}

/// The writer task: encodes and writes what the link brings, in batches.
async fn write_loop<W: AsyncWrite + Unpin>(mut write: W, mut outbox: Outbox, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
    let mut local = Local::default();
    while let Some(first) = outbox.recv().await {
        let mut closing = false;
        let mut next = Some(first);
        let mut packets = 0;
        let mut bytes = 0;
        while let Some(out) = next.take() {
            match out {
                Out::Packet(packet) => {
                    bytes += encode(&packet, &mut buf, &mut chunks);
                    packets += 1;
                    if matches!(packet, Packet::Publish(_)) {
                        local.publishes += 1;
                    }
                }
                Out::Close => {
                    closing = true;
                    break;
                }
            }
            if packets >= BATCH_PACKETS || bytes >= BATCH_BYTES {
                break;
            }
            next = outbox.try_recv();
        }
        if !buf.is_empty() {
            chunks.push_back(buf.split().freeze());
        }
        let written: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let result = match write_all(&mut write, &mut chunks).await {
            Ok(()) => write.flush().await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::debug!(%error, "write failed; closing the connection");
            local.flush_sent(&shared.counters);
            outbox.failed();
            return;
        }
        local.bytes += written;
        local.packets += packets as u64;
        local.flush_sent(&shared.counters);
        if closing {
            break;
        }
    }
    let _ = write.shutdown().await;
}

/// Encodes `packet`: small ones into `buf`, a large PUBLISH as its header (into `buf`) and
/// its payload (shared, into `chunks`). Returns about how many bytes it adds.
fn encode(packet: &Packet, buf: &mut BytesMut, chunks: &mut VecDeque<Bytes>) -> usize {
    let result = match packet {
        Packet::Publish(publish) if publish.payload.len() >= SHARED_PAYLOAD => {
            codec::encode_publish_header(publish, buf).map(|()| {
                chunks.push_back(buf.split().freeze());
                chunks.push_back(publish.payload.clone());
            })
        }
        packet => codec::encode(packet, buf),
    };
    match result {
        Ok(()) => match packet {
            Packet::Publish(publish) => publish.payload.len() + publish.topic.as_bytes().len() + 8,
            _ => 8,
        },
        Err(error) => {
            tracing::warn!(%error, packet = %packet.packet_type(), "cannot encode a packet for a client; skipped");
            0
        }
    }
}

/// Writes every chunk, with vectored writes of up to 64 chunks.
async fn write_all<W: AsyncWrite + Unpin>(
    write: &mut W,
    chunks: &mut VecDeque<Bytes>,
) -> std::io::Result<()> {
    while !chunks.is_empty() {
        let written = {
            let slices: Vec<IoSlice<'_>> =
                chunks.iter().take(64).map(|c| IoSlice::new(c)).collect();
            write.write_vectored(&slices).await?
        };
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = written;
        while left > 0 {
            let Some(front) = chunks.front_mut() else {
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
