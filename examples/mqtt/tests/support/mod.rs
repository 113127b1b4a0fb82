//! What the conformance tests share: a broker on an ephemeral port, raw MQTT connections that
//! speak through the crate's codec, and `rumqttc` clients.
//!
//! Every wait has a deadline ([`TIMEOUT`]) and panics with what it was waiting for, so a broker
//! that does not answer fails a test instead of hanging it. Checks that something does *not*
//! happen wait [`QUIET`], after a marker where one is possible.
//!
//! # Against another broker
//!
//! With `HERMES_MQTT_TEST_ADDR=host:port` in the environment the tests connect to that broker
//! instead of starting their own, to check the suite itself against a reference broker
//! (Mosquitto: `mosquitto -p 1883`). Tests that need a configuration of their own (packet
//! size, queue length, session expiry) are then skipped, saying so. Client identifiers and
//! topics are unique per test ([`unique`]), so tests can share one broker.
//!
//! Mosquitto 2.0.11 (Debian 12) passes all but these, where it departs from 3.1.1:
//!
//! - `overlapping_subscriptions_deliver_at_the_maximum_qos`: one copy, at the QoS of one
//!   subscription, not the maximum [MQTT-3.3.5-1];
//! - `outgoing_packet_ids_wrap_without_0_or_reuse_in_flight`: after wrapping, it reuses the
//!   identifier of a message still in flight [MQTT-2.3.1-2];
//! - `qos_2_is_delivered_exactly_once_and_in_order_through_reconnects`: after sending a
//!   PUBREL it may send the PUBLISH again on a later reconnect [MQTT-4.3.3-1];
//! - `the_will_is_published_after_a_second_connect`: no will on that protocol error;
//! - `publish_qos_0_with_dup_closes_the_connection`, `wrong_fixed_header_flags_close`,
//!   `fixed_size_packets_with_another_length_close`, `packets_only_a_server_sends_close`:
//!   it lets these malformed packets through;
//! - `a_huge_declared_length_closes_without_waiting_for_the_bytes`: no size limit by default;
//! - keep alive is checked coarsely: `a_silent_client_is_disconnected_after_1_5_keep_alives`
//!   sometimes waits past its deadline.

#![allow(dead_code)] // Each test file uses some of these.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hermes_mqtt::codec::{MAX_PACKET_SIZE, decode, encode};
use hermes_mqtt::{
    ConnAck, Connect, ConnectReturnCode, MqttString, Packet, PacketId, Publish, PublishQos, QoS,
    SubAck, Subscribe, SubscribeReturnCode, TopicFilter, TopicName, Unsubscribe, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

/// How long to wait for something that should happen: generous, as it is only reached when the
/// broker fails (the 2-core CI machine runs many tests at once).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// How long to watch for something that should not happen, after any marker has arrived.
pub const QUIET: Duration = Duration::from_millis(300);

/// The environment variable naming an external broker to test instead of an in-process one.
pub const EXTERNAL_ENV: &str = "HERMES_MQTT_TEST_ADDR";

/// A name no other test uses, for client identifiers and topic roots: `prefix-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// The external broker's address, if the tests are run against one.
pub fn external() -> Option<SocketAddr> {
    let addr = std::env::var(EXTERNAL_ENV).ok()?;
    Some(
        addr.parse()
            .unwrap_or_else(|_| panic!("{EXTERNAL_ENV}={addr:?} is not an address")),
    )
}

/// A configuration for tests: one listener on an ephemeral port, in memory, cheap password
/// hashes.
pub fn test_config() -> hermes_mqtt::Config {
    let mut config = hermes_mqtt::Config::default();
    config.listeners = vec![SocketAddr::from(([127, 0, 0, 1], 0)).into()];
    config.memory = true;
    config.log_level = hermes_mqtt::config::LogLevel::Warn;
    config.argon2_memory_kib = CHEAP_HASH.memory_kib;
    config.argon2_iterations = CHEAP_HASH.iterations;
    config.argon2_parallelism = CHEAP_HASH.parallelism;
    config
}

/// argon2 parameters that cost next to nothing, for tests (never for real passwords).
pub const CHEAP_HASH: hermes_mqtt::auth::HashParams = hermes_mqtt::auth::HashParams {
    memory_kib: 8,
    iterations: 1,
    parallelism: 1,
};

/// Writes a password file with `users` (name, password), hashed with [`CHEAP_HASH`], as
/// `passwd` in `dir`; returns its path.
pub fn password_file(dir: &Path, users: &[(&str, &str)]) -> std::path::PathBuf {
    let mut file = hermes_mqtt::auth::PasswordFile::default();
    for (user, password) in users {
        let hash = hermes_mqtt::auth::hash_password(password.as_bytes(), CHEAP_HASH).unwrap();
        file.set(user, hash).unwrap();
    }
    let path = dir.join("passwd");
    file.save(&path).unwrap();
    path
}

/// A broker for one test.
pub struct TestBroker {
    broker: Option<hermes_mqtt::Broker>,
    addr: SocketAddr,
}

impl TestBroker {
    /// The default test broker ([`test_config`]), or the external one.
    pub async fn start() -> Self {
        if let Some(addr) = external() {
            return Self::at(addr);
        }
        Self::with_config(test_config()).await
    }

    /// A broker that runs elsewhere (another process), at `addr`.
    pub fn at(addr: SocketAddr) -> Self {
        Self { broker: None, addr }
    }

    /// A broker with [`test_config`] changed by `change`; `None` (the test should return) when
    /// the tests run against an external broker, whose configuration they cannot set.
    pub async fn configured(
        test: &str,
        change: impl FnOnce(&mut hermes_mqtt::Config),
    ) -> Option<Self> {
        if external().is_some() {
            eprintln!("{test}: skipped, it needs its own broker configuration");
            return None;
        }
        let mut config = test_config();
        change(&mut config);
        Some(Self::with_config(config).await)
    }

    /// A broker storing its state in `dir`.
    pub async fn persistent(dir: &Path, change: impl FnOnce(&mut hermes_mqtt::Config)) -> Self {
        let mut config = test_config();
        config.memory = false;
        config.data_dir = dir.to_owned();
        change(&mut config);
        Self::with_config(config).await
    }

    /// A broker with exactly `config`.
    pub async fn with_config(config: hermes_mqtt::Config) -> Self {
        let broker = timeout(TIMEOUT, hermes_mqtt::Broker::start(config))
            .await
            .expect("the broker did not start within the timeout")
            .expect("the broker failed to start");
        let addr = *broker
            .local_addrs()
            .first()
            .expect("the broker has no listener address");
        Self {
            broker: Some(broker),
            addr,
        }
    }

    /// Shuts the broker down gracefully and returns its final counters.
    pub async fn shutdown_stats(mut self) -> hermes_mqtt::BrokerStats {
        let broker = self.broker.take().expect("an in-process broker");
        timeout(TIMEOUT, broker.shutdown())
            .await
            .expect("the broker did not shut down within the timeout")
            .expect("the broker did not shut down cleanly")
            .stats
    }

    /// The in-process broker, if the tests do not run against an external one.
    pub fn broker(&self) -> Option<&hermes_mqtt::Broker> {
        self.broker.as_ref()
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Shuts the broker down gracefully, within [`TIMEOUT`].
    pub async fn shutdown(mut self) {
        if let Some(broker) = self.broker.take() {
            timeout(TIMEOUT, broker.shutdown())
                .await
                .expect("the broker did not shut down within the timeout")
                .expect("the broker did not shut down cleanly");
        }
    }

    /// A raw TCP connection, nothing sent yet.
    pub async fn raw(&self) -> Raw {
        Raw::open(self.addr).await
    }

    /// A new connection that sends `bytes` first is closed, with nothing sent back.
    pub async fn closes_on_first(&self, bytes: &[u8]) {
        let mut raw = self.raw().await;
        raw.send_bytes_lossy(bytes).await;
        raw.expect_closed().await;
    }

    /// A connection that is connected and then sends `bytes` is closed, with nothing sent back.
    pub async fn closes_after_connect_on(&self, bytes: &[u8]) {
        let mut raw = self.connect(&unique("closes")).await;
        raw.send_bytes_lossy(bytes).await;
        raw.expect_closed().await;
    }

    /// A raw connection that sent `connect` and got its CONNACK.
    pub async fn raw_connect(&self, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = self.raw().await;
        raw.send(connect).await;
        let connack = raw.connack().await;
        (raw, connack)
    }

    /// A raw connection with a clean session, accepted.
    pub async fn connect(&self, client_id: &str) -> Raw {
        self.connect_with(connect_packet(client_id)).await
    }

    /// A raw connection that sent `connect`, which the broker accepted.
    pub async fn connect_with(&self, connect: Connect) -> Raw {
        let id = connect.client_id.clone();
        let (raw, connack) = self.raw_connect(connect).await;
        assert_eq!(
            connack.code,
            ConnectReturnCode::Accepted,
            "CONNACK for {id:?}"
        );
        raw
    }

    /// A raw connection with a persistent session (CleanSession 0), accepted; and the CONNACK's
    /// Session Present flag.
    pub async fn connect_persistent(&self, client_id: &str) -> (Raw, bool) {
        let mut connect = connect_packet(client_id);
        connect.clean_session = false;
        let (raw, connack) = self.raw_connect(connect).await;
        assert_eq!(connack.code, ConnectReturnCode::Accepted, "{client_id}");
        (raw, connack.session_present)
    }

    /// A `rumqttc` client, connected: see [`Client::connect`].
    pub async fn client(&self, client_id: &str) -> Client {
        Client::connect(self.addr, client_id, true).await.0
    }
}

// --- Packets -----------------------------------------------------------------------------------

/// A packet identifier.
pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).expect("packet identifiers are not 0")
}

/// A topic name.
pub fn topic(s: &str) -> TopicName {
    TopicName::try_from(s).unwrap_or_else(|e| panic!("{s:?} is not a topic name: {e}"))
}

/// A topic filter.
pub fn filter(s: &str) -> TopicFilter {
    TopicFilter::try_from(s).unwrap_or_else(|e| panic!("{s:?} is not a topic filter: {e}"))
}

/// A 3.1.1 CONNECT with a clean session, a keep alive of 60 s, no will and no login.
pub fn connect_packet(client_id: &str) -> Connect {
    Connect::new(MqttString::try_from(client_id).expect("client identifier"))
}

/// A will.
pub fn will(topic_name: &str, payload: &str, qos: QoS, retain: bool) -> Will {
    Will {
        topic: topic(topic_name),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos,
        retain,
    }
}

/// A PUBLISH; `id` is ignored for QoS 0.
pub fn publish_packet(
    topic_name: &str,
    payload: &[u8],
    qos: QoS,
    id: u16,
    dup: bool,
    retain: bool,
) -> Publish {
    let qos = match qos {
        QoS::AtMostOnce => PublishQos::AtMostOnce,
        QoS::AtLeastOnce => PublishQos::AtLeastOnce {
            packet_id: pid(id),
            dup,
        },
        QoS::ExactlyOnce => PublishQos::ExactlyOnce {
            packet_id: pid(id),
            dup,
        },
    };
    Publish {
        qos,
        retain,
        topic: topic(topic_name),
        payload: Bytes::copy_from_slice(payload),
    }
}

/// A PUBLISH with RETAIN 0, as a [`Packet`]; `id` is ignored for QoS 0.
pub fn publish_of(topic_name: &str, payload: &str, qos: QoS, id: u16, dup: bool) -> Packet {
    Packet::Publish(publish_packet(
        topic_name,
        payload.as_bytes(),
        qos,
        id,
        dup,
        false,
    ))
}

/// A SUBSCRIBE.
pub fn subscribe_packet(id: u16, filters: &[(&str, QoS)]) -> Subscribe {
    Subscribe {
        packet_id: pid(id),
        filters: filters.iter().map(|&(f, q)| (filter(f), q)).collect(),
    }
}

/// An UNSUBSCRIBE.
pub fn unsubscribe_packet(id: u16, filters: &[&str]) -> Unsubscribe {
    Unsubscribe {
        packet_id: pid(id),
        filters: filters.iter().map(|&f| filter(f)).collect(),
    }
}

/// The bytes of `packet`.
pub fn wire(packet: impl Into<Packet>) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode(&packet.into(), &mut buf).expect("encodable packet");
    buf.to_vec()
}

/// The bytes of `packets`, one after the other: sent with one write, a few hundred bytes on
/// loopback arrive in one read of the broker's.
pub fn together(packets: impl IntoIterator<Item = Packet>) -> Vec<u8> {
    packets.into_iter().flat_map(wire).collect()
}

/// A packet by hand: the first byte, the remaining length (shortest form), the body. For
/// packets the codec would refuse to encode.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A length-prefixed field.
pub fn field(bytes: &[u8]) -> Vec<u8> {
    let len = u16::try_from(bytes.len()).expect("field of at most 65535 bytes");
    let mut out = len.to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// A CONNECT by hand: protocol name and level, connect flags, keep alive, then `payload` (the
/// fields after the variable header, each already length-prefixed).
pub fn connect_bytes(
    name: &[u8],
    level: u8,
    flags: u8,
    keep_alive: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = field(name);
    body.push(level);
    body.push(flags);
    body.extend_from_slice(&keep_alive.to_be_bytes());
    body.extend_from_slice(payload);
    frame(0x10, &body)
}

/// A PUBLISH by hand: `flags` are the low four bits of the first byte (DUP, QoS, RETAIN), then
/// the topic's raw bytes, the packet identifier if given, and the payload.
pub fn publish_bytes(flags: u8, topic_name: &[u8], id: Option<u16>, payload: &[u8]) -> Vec<u8> {
    let mut body = field(topic_name);
    if let Some(id) = id {
        body.extend_from_slice(&id.to_be_bytes());
    }
    body.extend_from_slice(payload);
    frame(0x30 | flags, &body)
}

/// A SUBSCRIBE by hand with fixed-header flags `flags` (the specification requires 0010):
/// packet identifier, then each filter's raw bytes and requested QoS byte.
pub fn subscribe_bytes(flags: u8, id: u16, filters: &[(&[u8], u8)]) -> Vec<u8> {
    let mut body = id.to_be_bytes().to_vec();
    for (f, qos) in filters {
        body.extend(field(f));
        body.push(*qos);
    }
    frame(0x80 | flags, &body)
}

// --- Raw connections ---------------------------------------------------------------------------

/// What came from the broker.
#[derive(Debug)]
pub enum Next {
    /// A packet.
    Packet(Packet),
    /// The broker closed the connection (or reset it), after the packets before.
    Closed,
    /// Bytes that are not an MQTT packet.
    Malformed(String),
    /// Nothing within the time given.
    Nothing,
}

/// A raw MQTT connection: packets in and out through the crate's codec, every wait with a
/// deadline. Packets that arrive while a helper waits for something else (a PUBLISH before a
/// SUBACK, say) are kept, in order, for [`Raw::recv`].
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
    pending: VecDeque<Packet>,
    closed: bool,
    next_id: u16,
}

impl Raw {
    /// Connects to `addr`.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = timeout(TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("TCP connect timed out")
            .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        stream.set_nodelay(true).expect("TCP_NODELAY");
        Self {
            stream,
            buf: BytesMut::new(),
            pending: VecDeque::new(),
            closed: false,
            next_id: 0,
        }
    }

    /// A fresh packet identifier for this connection's own requests, from 1 up.
    pub fn next_id(&mut self) -> u16 {
        self.next_id = self.next_id % u16::MAX + 1;
        self.next_id
    }

    /// Sends `packet`; panics if the connection is closed.
    pub async fn send(&mut self, packet: impl Into<Packet>) {
        let packet = packet.into();
        let bytes = wire(packet.clone());
        if let Err(e) = self.stream.write_all(&bytes).await {
            panic!("cannot send {packet:?}: {e}");
        }
    }

    /// Sends raw bytes; panics if the connection is closed.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        if let Err(e) = self.stream.write_all(bytes).await {
            panic!("cannot send {bytes:02x?}: {e}");
        }
    }

    /// Sends raw bytes, ignoring a connection that the broker already closed (it may close as
    /// soon as it has read enough of a malformed packet).
    pub async fn send_bytes_lossy(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// Closes the sending half (TCP FIN), as a client whose packet is cut short.
    pub async fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown().await;
    }

    /// The next thing from the broker within `within`.
    pub async fn next(&mut self, within: Duration) -> Next {
        if let Some(packet) = self.pending.pop_front() {
            return Next::Packet(packet);
        }
        let deadline = Instant::now() + within;
        loop {
            match decode(&mut self.buf, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => return Next::Packet(packet),
                Ok(None) => {}
                Err(e) => return Next::Malformed(e.to_string()),
            }
            if self.closed {
                return Next::Closed;
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf));
            match read.await {
                Err(_) => return Next::Nothing,
                Ok(Ok(0) | Err(_)) => self.closed = true,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// The next packet; panics on a close, garbage or nothing within [`TIMEOUT`].
    pub async fn recv(&mut self) -> Packet {
        match self.next(TIMEOUT).await {
            Next::Packet(p) => p,
            other => panic!("expected a packet from the broker, got {other:?}"),
        }
    }

    /// The next packet, which must be a PUBLISH.
    pub async fn recv_publish(&mut self) -> Publish {
        match self.recv().await {
            Packet::Publish(p) => p,
            other => panic!("expected a PUBLISH, got {other:?}"),
        }
    }

    /// The next PUBLISH, acknowledged as its QoS requires (PUBACK; or PUBREC, PUBREL from the
    /// broker, PUBCOMP).
    pub async fn recv_message(&mut self) -> Publish {
        let publish = self.recv_publish().await;
        self.ack(&publish).await;
        publish
    }

    /// The next `n` PUBLISHes, each acknowledged.
    pub async fn recv_messages(&mut self, n: usize) -> Vec<Publish> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(self.recv_message().await);
        }
        got
    }

    /// Acknowledges a PUBLISH from the broker as its QoS requires; for QoS 2 the whole flow,
    /// keeping any PUBLISH that arrives meanwhile.
    pub async fn ack(&mut self, publish: &Publish) {
        match publish.qos {
            PublishQos::AtMostOnce => {}
            PublishQos::AtLeastOnce { packet_id, .. } => {
                self.send(Packet::PubAck(packet_id)).await;
            }
            PublishQos::ExactlyOnce { packet_id, .. } => {
                self.send(Packet::PubRec(packet_id)).await;
                // Other flows' packets may come first (a PUBREL resent on reconnect, say).
                let want = Packet::PubRel(packet_id);
                self.recv_where("PUBREL after PUBREC [MQTT-4.3.3-1]", |p| *p == want)
                    .await;
                self.send(Packet::PubComp(packet_id)).await;
            }
        }
    }

    /// The next `n` packets other than PUBLISH, in order (the PUBLISHes are kept for
    /// [`Raw::recv`]).
    pub async fn answers(&mut self, n: usize) -> Vec<Packet> {
        let mut got = Vec::with_capacity(n);
        for _ in 0..n {
            got.push(self.recv_skipping_publishes().await);
        }
        got
    }

    /// The next packet that is not a PUBLISH; the PUBLISHes before it are kept for
    /// [`Raw::recv`].
    pub async fn recv_skipping_publishes(&mut self) -> Packet {
        self.recv_where("a packet other than PUBLISH", |p| {
            !matches!(p, Packet::Publish(_))
        })
        .await
    }

    /// The first packet that `wanted` accepts, kept or new; the others are kept, in order,
    /// for [`Raw::recv`]. Panics naming `what` if none comes within [`TIMEOUT`].
    pub async fn recv_where(&mut self, what: &str, wanted: impl Fn(&Packet) -> bool) -> Packet {
        if let Some(i) = self.pending.iter().position(&wanted) {
            return self.pending.remove(i).expect("position is in range");
        }
        let mut skipped = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_unbuffered(left).await {
                Next::Packet(p) if wanted(&p) => break p,
                Next::Packet(p) => skipped.push(p),
                other => panic!("expected {what}, got {other:?} after {skipped:?}"),
            }
        };
        self.pending.extend(skipped);
        found
    }

    /// Like [`Raw::next`], but not from the kept packets.
    async fn next_unbuffered(&mut self, within: Duration) -> Next {
        let kept = std::mem::take(&mut self.pending);
        let next = self.next(within).await;
        let mut kept = kept;
        kept.extend(std::mem::take(&mut self.pending));
        self.pending = kept;
        next
    }

    /// The CONNACK, which must be the first packet.
    pub async fn connack(&mut self) -> ConnAck {
        match self.recv().await {
            Packet::ConnAck(c) => c,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    /// Subscribes, and returns the SUBACK's return codes (which must carry the SUBSCRIBE's
    /// packet identifier [MQTT-3.8.4-2]).
    pub async fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<SubscribeReturnCode> {
        let id = self.next_id();
        self.send(subscribe_packet(id, filters)).await;
        match self.recv_skipping_publishes().await {
            Packet::SubAck(SubAck {
                packet_id,
                return_codes,
            }) => {
                assert_eq!(
                    packet_id,
                    pid(id),
                    "SUBACK's packet identifier [MQTT-3.8.4-2]"
                );
                return_codes
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Subscribes to one filter, which must be granted `qos`.
    pub async fn subscribe_one(&mut self, f: &str, qos: QoS) {
        let codes = self.subscribe(&[(f, qos)]).await;
        assert_eq!(
            codes,
            [SubscribeReturnCode::Granted(qos)],
            "SUBACK for {f:?} at {qos:?}"
        );
    }

    /// Unsubscribes, expecting the UNSUBACK [MQTT-3.10.4-4].
    pub async fn unsubscribe(&mut self, filters: &[&str]) {
        let id = self.next_id();
        self.send(unsubscribe_packet(id, filters)).await;
        match self.recv_skipping_publishes().await {
            Packet::UnsubAck(got) => assert_eq!(got, pid(id), "UNSUBACK's identifier"),
            other => panic!("expected UNSUBACK, got {other:?}"),
        }
    }

    /// Publishes and completes the QoS flow: PUBACK for QoS 1 [MQTT-4.3.2-2]; PUBREC, PUBREL,
    /// PUBCOMP for QoS 2 [MQTT-4.3.3-2]. For QoS 0 it then pings, so that the broker has read
    /// the PUBLISH when this returns.
    pub async fn publish(&mut self, topic_name: &str, payload: &[u8], qos: QoS, retain: bool) {
        let id = self.next_id();
        self.send(publish_packet(topic_name, payload, qos, id, false, retain))
            .await;
        match qos {
            QoS::AtMostOnce => self.ping().await,
            QoS::AtLeastOnce => {
                let got = self.recv_skipping_publishes().await;
                assert_eq!(got, Packet::PubAck(pid(id)), "PUBACK [MQTT-4.3.2-2]");
            }
            QoS::ExactlyOnce => {
                let got = self.recv_skipping_publishes().await;
                assert_eq!(got, Packet::PubRec(pid(id)), "PUBREC [MQTT-4.3.3-2]");
                self.send(Packet::PubRel(pid(id))).await;
                let got = self.recv_skipping_publishes().await;
                assert_eq!(got, Packet::PubComp(pid(id)), "PUBCOMP [MQTT-4.3.3-2]");
            }
        }
    }

    /// Sends a QoS 2 PUBLISH with identifier `id` and DUP `dup`, and expects its PUBREC
    /// [MQTT-4.3.3-2]; the message stays unreleased until [`Raw::release`].
    pub async fn publish_unreleased(
        &mut self,
        topic_name: &str,
        payload: &[u8],
        id: u16,
        dup: bool,
    ) {
        let publish = publish_packet(topic_name, payload, QoS::ExactlyOnce, id, dup, false);
        self.send(publish).await;
        let got = self.recv_skipping_publishes().await;
        assert_eq!(got, Packet::PubRec(pid(id)), "PUBREC [MQTT-4.3.3-2]");
    }

    /// PUBREL for `id`, and its PUBCOMP [MQTT-4.3.3-2].
    pub async fn release(&mut self, id: u16) {
        self.send(Packet::PubRel(pid(id))).await;
        let got = self.recv_skipping_publishes().await;
        assert_eq!(got, Packet::PubComp(pid(id)), "PUBCOMP [MQTT-4.3.3-2]");
    }

    /// PINGREQ, and its PINGRESP [MQTT-3.12.4-1]; PUBLISHes meanwhile are kept.
    pub async fn ping(&mut self) {
        self.send(Packet::PingReq).await;
        let got = self.recv_skipping_publishes().await;
        assert_eq!(got, Packet::PingResp, "PINGRESP [MQTT-3.12.4-1]");
    }

    /// DISCONNECT, then waits for the broker to close the connection [MQTT-3.14.4-1].
    pub async fn disconnect(mut self) {
        self.send(Packet::Disconnect).await;
        self.expect_closed().await;
    }

    /// Drops the connection without a DISCONNECT: a network failure, for the broker.
    pub fn drop_connection(self) {
        drop(self);
    }

    /// Waits for the broker to close the connection, which it must do without sending
    /// anything first.
    pub async fn expect_closed(&mut self) {
        match self.next(TIMEOUT).await {
            Next::Closed => {}
            Next::Nothing => panic!("the broker did not close the connection"),
            other => panic!("expected the broker to close the connection, got {other:?}"),
        }
    }

    /// Waits for the broker to close the connection, ignoring PUBLISHes before the close.
    pub async fn expect_closed_after_publishes(&mut self) {
        loop {
            match self.next(TIMEOUT).await {
                Next::Closed => return,
                Next::Packet(Packet::Publish(_)) => {}
                Next::Nothing => panic!("the broker did not close the connection"),
                other => panic!("expected the broker to close the connection, got {other:?}"),
            }
        }
    }

    /// Nothing arrives for `within`, and the connection stays open.
    pub async fn expect_silence(&mut self, within: Duration) {
        match self.next(within).await {
            Next::Nothing => {}
            other => panic!("expected nothing from the broker, got {other:?}"),
        }
    }

    /// Checks that the connection still works: a PINGREQ gets its PINGRESP, and no PUBLISH
    /// came before it.
    pub async fn expect_alive(&mut self) {
        self.send(Packet::PingReq).await;
        match self.next(TIMEOUT).await {
            Next::Packet(Packet::PingResp) => {}
            other => panic!("expected PINGRESP on a live connection, got {other:?}"),
        }
    }

    /// Whether the broker has closed the connection within `within` (anything received first
    /// is discarded).
    pub async fn closes_within(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Next::Closed | Next::Malformed(_) => return true,
                Next::Nothing => return false,
                Next::Packet(_) => {}
            }
        }
    }
}

/// The payloads of `publishes`, as strings.
pub fn payloads(publishes: &[Publish]) -> Vec<String> {
    publishes
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload).into_owned())
        .collect()
}

// --- rumqttc clients ---------------------------------------------------------------------------

/// What a `rumqttc` event loop reported.
#[derive(Debug)]
pub enum Event {
    /// A packet from the broker.
    Incoming(rumqttc::Packet),
    /// A packet the client wrote (and flushed).
    Outgoing(rumqttc::Outgoing),
    /// The connection ended; the event loop stopped.
    Error(String),
}

/// A `rumqttc` client whose event loop runs in a task, reporting into a channel.
pub struct Client {
    /// The client, to publish, subscribe and so on.
    pub client: rumqttc::AsyncClient,
    events: mpsc::UnboundedReceiver<Event>,
    kept: VecDeque<Event>,
    task: JoinHandle<()>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `rumqttc` options for a test client: keep alive 30 s.
pub fn client_options(addr: SocketAddr, client_id: &str, clean: bool) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(clean);
    options
}

impl Client {
    /// Connects with `clean` session; returns the client once the CONNACK accepted it, and the
    /// CONNACK's Session Present flag.
    pub async fn connect(addr: SocketAddr, client_id: &str, clean: bool) -> (Self, bool) {
        Self::connect_with(client_options(addr, client_id, clean)).await
    }

    /// Connects with `options`; see [`Client::connect`].
    pub async fn connect_with(options: rumqttc::MqttOptions) -> (Self, bool) {
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 100);
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let event = match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(p)) => Event::Incoming(p),
                    Ok(rumqttc::Event::Outgoing(o)) => Event::Outgoing(o),
                    Err(e) => {
                        let _ = tx.send(Event::Error(e.to_string()));
                        return;
                    }
                };
                if tx.send(event).is_err() {
                    return;
                }
            }
        });
        let mut this = Self {
            client,
            events,
            kept: VecDeque::new(),
            task,
        };
        let session_present = match this.next_event(TIMEOUT).await {
            Some(Event::Incoming(rumqttc::Packet::ConnAck(c))) => {
                assert_eq!(c.code, rumqttc::ConnectReturnCode::Success);
                c.session_present
            }
            other => panic!("expected CONNACK, got {other:?}"),
        };
        (this, session_present)
    }

    async fn next_event(&mut self, within: Duration) -> Option<Event> {
        timeout(within, self.events.recv()).await.ok().flatten()
    }

    /// Waits for the first event that `pick` takes; other events are kept for later waits.
    /// Panics with `what` after [`TIMEOUT`] or if the connection ends first.
    async fn wait_for<T>(&mut self, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        if let Some(i) = self.kept.iter().position(|e| pick(e).is_some()) {
            let event = self.kept.remove(i).expect("position is in range");
            return pick(&event).expect("picked before");
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                Some(event) => {
                    if let Some(t) = pick(&event) {
                        return t;
                    }
                    if let Event::Error(e) = &event {
                        panic!("connection ended while waiting for {what}: {e}");
                    }
                    self.kept.push_back(event);
                }
                None => panic!("no {what} within {TIMEOUT:?}; kept: {:?}", self.kept),
            }
        }
    }

    /// Subscribes; returns the SUBACK's return codes.
    pub async fn subscribe(
        &mut self,
        f: &str,
        qos: rumqttc::QoS,
    ) -> Vec<rumqttc::SubscribeReasonCode> {
        self.client
            .subscribe(f, qos)
            .await
            .expect("subscribe request");
        self.wait_for("SUBACK", |e| match e {
            Event::Incoming(rumqttc::Packet::SubAck(s)) => Some(s.return_codes.clone()),
            _ => None,
        })
        .await
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&mut self, f: &str) {
        self.client
            .unsubscribe(f)
            .await
            .expect("unsubscribe request");
        self.wait_for("UNSUBACK", |e| {
            matches!(e, Event::Incoming(rumqttc::Packet::UnsubAck(_))).then_some(())
        })
        .await;
    }

    /// Publishes; returns once the broker acknowledged it (PUBACK for QoS 1, PUBCOMP for QoS
    /// 2) or, for QoS 0, once it was written.
    pub async fn publish(&mut self, t: &str, payload: &[u8], qos: rumqttc::QoS, retain: bool) {
        self.client
            .publish(t, qos, retain, payload.to_vec())
            .await
            .expect("publish request");
        match qos {
            rumqttc::QoS::AtMostOnce => {
                self.wait_for("the PUBLISH written", |e| {
                    matches!(e, Event::Outgoing(rumqttc::Outgoing::Publish(_))).then_some(())
                })
                .await;
            }
            rumqttc::QoS::AtLeastOnce => {
                self.wait_for("PUBACK", |e| {
                    matches!(e, Event::Incoming(rumqttc::Packet::PubAck(_))).then_some(())
                })
                .await;
            }
            rumqttc::QoS::ExactlyOnce => {
                self.wait_for("PUBCOMP", |e| {
                    matches!(e, Event::Incoming(rumqttc::Packet::PubComp(_))).then_some(())
                })
                .await;
            }
        }
    }

    /// The next PUBLISH from the broker (`rumqttc` acknowledges it).
    pub async fn recv_publish(&mut self) -> rumqttc::Publish {
        self.wait_for("PUBLISH", |e| match e {
            Event::Incoming(rumqttc::Packet::Publish(p)) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    /// No PUBLISH arrives within `within`.
    pub async fn expect_no_publish(&mut self, within: Duration) {
        let is_publish = |e: &Event| matches!(e, Event::Incoming(rumqttc::Packet::Publish(_)));
        if let Some(p) = self.kept.iter().find(|e| is_publish(e)) {
            panic!("unexpected PUBLISH: {p:?}");
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                None => return,
                Some(e) if is_publish(&e) => panic!("unexpected PUBLISH: {e:?}"),
                Some(e) => self.kept.push_back(e),
            }
        }
    }

    /// DISCONNECT, written, then the event loop stopped.
    pub async fn disconnect(mut self) {
        self.client.disconnect().await.expect("disconnect request");
        self.wait_for("DISCONNECT written", |e| {
            matches!(e, Event::Outgoing(rumqttc::Outgoing::Disconnect)).then_some(())
        })
        .await;
    }

    /// Whether the connection ended (the event loop reported an error) within `within`.
    pub async fn ended_within(&mut self, within: Duration) -> bool {
        if self.kept.iter().any(|e| matches!(e, Event::Error(_))) {
            return true;
        }
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_event(left).await {
                None => return false,
                Some(Event::Error(_)) => return true,
                Some(e) => self.kept.push_back(e),
            }
        }
    }
}

/// The answer (head and body) to `GET path` from the HTTP server at `addr` (the metrics
/// endpoint).
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_string(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    answer
}

/// The value of metric `hermes_mqtt_{name}` in a `/metrics` answer.
pub fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("hermes_mqtt_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .parse()
        .unwrap()
}

pub mod streams;
