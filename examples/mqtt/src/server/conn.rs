//! The tokio edge: per TCP connection, a reader task (this one) and a writer task.
//!
//! The reader decodes packets (bounded by `max_packet_size`), insists on CONNECT first and
//! within `connect_timeout` [MQTT-3.1.0-1], validates it (answering a refusal's CONNACK
//! itself), and then forwards the client's packets to its session with `send_async`, which
//! waits while the session's mailbox or its shard's inbox is full: the reader stops reading
//! the socket until the session catches up. It routes QoS 0 PUBLISHes itself, straight to the
//! subscribers' sessions (no hop through its own), also with `send_async`: a reader whose
//! subscribers are behind stops reading too. It enforces keep alive [MQTT-3.1.2-24], answers
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
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;

use super::link::{Link, Out, Outbox};
use super::{ClientId, Counters, Handle, RetainedMsg, SessionMsg, Shared};
use crate::codec::{self, DecodeError};
use crate::message::Message;
use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, Packet, ProtocolVersion, Publish, PublishQos, QoS,
};
use crate::string::MqttString;
use crate::subscriptions::Matches;
use crate::will::CloseReason;

/// How long a connection that ended waits for its session to publish the will and close it.
const WILL_GRACE: Duration = Duration::from_secs(12);
/// How long a closing connection's writer may take to write what is left.
const WRITER_GRACE: Duration = Duration::from_secs(5);
/// Payloads from this size on are written from their shared buffer, not copied into the
/// write buffer.
const SHARED_PAYLOAD: usize = 1024;
/// Most packets, and bytes, one vectored write takes.
const BATCH_PACKETS: usize = 512;
const BATCH_BYTES: usize = 256 * 1024;

/// Serves one accepted connection until it ends.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    link: Link,
    outbox: Outbox,
    shared: Arc<Shared>,
    hermes: Handle,
) {
    let conn = link.conn();
    let _ = stream.set_nodelay(true);
    let (read, write) = stream.into_split();
    let mut writer = tokio::spawn(write_loop(write, outbox));
    let mut reader = Reader {
        read,
        buf: BytesMut::with_capacity(4096),
        link: link.clone(),
        shared: Arc::clone(&shared),
        hermes,
        matches: Matches::new(),
        targets: Vec::new(),
        keep_alive: None,
    };
    let (client, reason) = reader.run(peer).await;
    if let Some(client) = client {
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
}

/// What a connection's reader keeps.
struct Reader {
    read: OwnedReadHalf,
    buf: BytesMut,
    link: Link,
    shared: Arc<Shared>,
    hermes: Handle,
    matches: Matches<ClientId>,
    targets: Vec<(ClientId, QoS)>,
    /// How long the client may send nothing, once connected [MQTT-3.1.2-24].
    keep_alive: Option<Duration>,
}

/// Why reading stopped before the connection was accepted, or after.
type Ended = (Option<ClientId>, CloseReason);

/// The next packet, or why there is none.
enum Next {
    Packet(Packet),
    Ended(CloseReason),
    Malformed(DecodeError),
}

impl Reader {
    /// Reads the connection until it ends: the session it attached to, if any, and why.
    async fn run(&mut self, peer: SocketAddr) -> Ended {
        let conn = self.link.conn();
        // A timeout too long to represent is none.
        let connect_by = Instant::now().checked_add(self.shared.config.connect_timeout);
        let connect = match self.next(connect_by).await {
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
    fn unsupported(&self, peer: SocketAddr, name: &[u8], level: u8) -> Ended {
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
    fn refuse(&self, code: ConnectReturnCode) {
        let connack = ConnAck {
            session_present: false, // [MQTT-3.2.2-4]
            code,
        };
        self.link.send(Packet::ConnAck(connack));
    }

    /// Validates a CONNECT and attaches the connection to its session.
    async fn accept(&mut self, peer: SocketAddr, mut connect: Connect) -> Result<ClientId, Ended> {
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
        if let Err(code) = self.shared.config.authenticate(connect.login.as_ref()) {
            tracing::info!(conn, %peer, client_id = %connect.client_id.as_str(), ?code, "CONNECT refused");
            self.refuse(code);
            return refused(code);
        }
        let client = ClientId(Arc::from(connect.client_id.as_str()));
        let keep_alive = self.shared.config.keep_alive_timeout(connect.keep_alive);
        tracing::debug!(conn, %peer, client_id = %client, clean = connect.clean_session, keep_alive = connect.keep_alive, "CONNECT");
        let attach = SessionMsg::Attach {
            link: self.link.clone(),
            connect: Box::new(connect),
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
        self.keep_alive = keep_alive;
        Ok(client)
    }

    /// Forwards the client's packets to its session until the connection ends.
    async fn packets(&mut self, client: &ClientId) -> CloseReason {
        let conn = self.link.conn();
        loop {
            let deadline = self.keep_alive.and_then(|k| Instant::now().checked_add(k));
            let packet = match self.next(deadline).await {
                Next::Packet(packet) => packet,
                Next::Ended(reason) => return reason,
                Next::Malformed(error) => {
                    tracing::debug!(conn, client_id = %client, %error, "malformed packet; closing [MQTT-4.8.0-1]");
                    return CloseReason::ProtocolError;
                }
            };
            tracing::trace!(conn, client_id = %client, packet = %packet.packet_type(), "received");
            let to_session = match packet {
                // The direct path, unless something the client sent before is still being
                // carried out by its session (a SUBSCRIBE, a retained PUBLISH...): then
                // behind it, through the session, so that its effects come first.
                Packet::Publish(publish)
                    if publish.qos == PublishQos::AtMostOnce && self.link.is_settled() =>
                {
                    if !self.route_qos0(publish).await {
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
            let msg = SessionMsg::Packet {
                conn,
                packet: to_session,
            };
            if self.hermes.send_async(client.clone(), msg).await.is_err() {
                return CloseReason::ServerClosed;
            }
        }
    }

    /// A QoS 0 PUBLISH: to the retained shard if it says so, and to every subscriber's
    /// session. False once the broker is closing.
    async fn route_qos0(&mut self, publish: Publish) -> bool {
        let message = Message::from(publish);
        Counters::add(&self.shared.counters.published, 1);
        if message.retain {
            let shard = self.shared.retained_shard(message.topic.as_bytes());
            let retain = RetainedMsg::Publish(message.clone());
            if self.hermes.send_async(shard, retain).await.is_err() {
                return false;
            }
        }
        self.shared
            .index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .matches(&message.topic, &mut self.matches);
        self.targets.extend(
            self.matches
                .iter()
                .map(|(client, qos)| (client.clone(), qos)),
        );
        // HERMES: one send_async per subscriber; the handle's send_all groups a fan-out per
        // shard but blocks the thread, and has no async form.
        let mut targets = std::mem::take(&mut self.targets);
        let mut open = true;
        for (client, qos) in targets.drain(..) {
            let deliver = SessionMsg::Deliver {
                message: message.clone(),
                qos,
            };
            if open && self.hermes.send_async(client, deliver).await.is_err() {
                open = false;
            }
        }
        self.targets = targets;
        open
    }

    /// The next packet: decoded from what was read, or read for, until `deadline` (which ends
    /// it with `KeepAliveTimeout`), or until the server closes the connection.
    async fn next(&mut self, deadline: Option<Instant>) -> Next {
        let max = self.shared.config.max_packet_size;
        loop {
            match codec::decode(&mut self.buf, max) {
                Ok(Some(packet)) => return Next::Packet(packet),
                Ok(None) => {}
                Err(error) => return Next::Malformed(error),
            }
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
                    Ok(_) => {}
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
async fn write_loop(mut write: OwnedWriteHalf, mut outbox: Outbox) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut chunks: VecDeque<Bytes> = VecDeque::new();
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
        if let Err(error) = write_all(&mut write, &mut chunks).await {
            tracing::debug!(%error, "write failed; closing the connection");
            outbox.failed();
            return;
        }
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
async fn write_all(
    write: &mut OwnedWriteHalf,
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
