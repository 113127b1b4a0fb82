//! The broker's basics, end to end over TCP: a real client (rumqttc) for round trips, and a
//! raw client speaking the crate's own codec where the test needs to see or send exact bytes
//! (DUP flags, packet identifiers, malformed input).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hermes_mqtt::codec::{decode, encode};
use hermes_mqtt::config::SessionExpiry;
use hermes_mqtt::{
    Broker, Config, ConnAck, Connect, ConnectReturnCode, MqttString, Packet, PacketId, Publish,
    PublishQos, QoS, StartError, SubAck, Subscribe, SubscribeReturnCode, TopicFilter, TopicName,
    Unsubscribe, Will,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

fn memory_config() -> Config {
    Config {
        memory: true,
        listeners: vec!["127.0.0.1:0".parse().unwrap()],
        ..Config::default()
    }
}

async fn memory_broker() -> (Broker, SocketAddr) {
    let broker = Broker::start(memory_config()).await.unwrap();
    let addr = broker.local_addrs()[0];
    (broker, addr)
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn publish(topic: &'static str, payload: &'static [u8], qos: PublishQos, retain: bool) -> Packet {
    Packet::Publish(Publish {
        qos,
        retain,
        topic: TopicName::from_static(topic),
        payload: Bytes::from_static(payload),
    })
}

/// A client that speaks the crate's codec, packet by packet.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Raw {
        Raw {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: BytesMut::new(),
        }
    }

    /// Connects with `connect`; returns the CONNACK.
    async fn connect_with(addr: SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let mut raw = Raw::open(addr).await;
        raw.send(Packet::Connect(Box::new(connect))).await;
        match raw.recv().await {
            Some(Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn connect(addr: SocketAddr, client_id: &'static str, clean: bool) -> (Raw, ConnAck) {
        let mut connect = Connect::new(MqttString::from_static(client_id));
        connect.clean_session = clean;
        Raw::connect_with(addr, connect).await
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        encode(&packet, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next packet; `None` if the connection closes (or nothing comes within 5 s).
    async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT).await
    }

    async fn recv_within(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(packet) = decode(&mut self.buf, 1 << 20).unwrap() {
                return Some(packet);
            }
            match tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(_)) => {}
            }
        }
    }

    /// Whether the broker closed the connection (within 5 s).
    async fn closed(&mut self) -> bool {
        let mut byte = [0; 64];
        loop {
            match tokio::time::timeout(WAIT, self.stream.read(&mut byte)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
                Err(_) => return false,
            }
        }
    }

    async fn subscribe(&mut self, packet_id: u16, filters: &[(&'static str, QoS)]) -> SubAck {
        let filters = filters
            .iter()
            .map(|(f, q)| (TopicFilter::from_static(f), *q))
            .collect();
        self.send(Packet::Subscribe(Subscribe {
            packet_id: id(packet_id),
            filters,
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) => ack,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// The next PUBLISH, acknowledging nothing.
    async fn publish_received(&mut self) -> Publish {
        match self.recv().await {
            Some(Packet::Publish(p)) => p,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    /// Publishes at QoS 1 and waits for the PUBACK.
    async fn publish_qos1(
        &mut self,
        packet_id: u16,
        topic: &'static str,
        payload: &'static [u8],
        retain: bool,
    ) {
        let qos = PublishQos::AtLeastOnce {
            packet_id: id(packet_id),
            dup: false,
        };
        self.send(publish(topic, payload, qos, retain)).await;
        assert_eq!(self.recv().await, Some(Packet::PubAck(id(packet_id))));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_0_1_2_round_trips_with_a_real_client() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet as RPacket, QoS as RQoS};
    let (broker, addr) = memory_broker().await;
    let mut options = MqttOptions::new("rumqttc-1", addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(options, 16);
    client.subscribe("rt/#", RQoS::ExactlyOnce).await.unwrap();
    let mut got = Vec::new();
    let mut published = false;
    let run = async {
        while got.len() < 3 {
            match events.poll().await.unwrap() {
                Event::Incoming(RPacket::SubAck(_)) if !published => {
                    published = true;
                    for (n, qos) in [RQoS::AtMostOnce, RQoS::AtLeastOnce, RQoS::ExactlyOnce]
                        .into_iter()
                        .enumerate()
                    {
                        client
                            .publish(format!("rt/{n}"), qos, false, vec![n as u8])
                            .await
                            .unwrap();
                    }
                }
                Event::Incoming(RPacket::Publish(p)) => got.push((p.topic.clone(), p.qos)),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, run)
        .await
        .expect("three messages back");
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [
            ("rt/0".to_owned(), RQoS::AtMostOnce),
            ("rt/1".to_owned(), RQoS::AtLeastOnce),
            ("rt/2".to_owned(), RQoS::ExactlyOnce),
        ]
    );
    broker.shutdown().await.unwrap();
}

/// QoS 2 both ways, with the raw client: PUBREC/PUBREL/PUBCOMP, and a PUBLISH sent again
/// before the PUBREL is not delivered twice [MQTT-4.3.3-2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos2_flows_both_ways_exactly_once() {
    let (broker, addr) = memory_broker().await;
    let (mut sub, _) = Raw::connect(addr, "q2-sub", true).await;
    sub.subscribe(1, &[("q2", QoS::ExactlyOnce)]).await;
    let (mut publisher, _) = Raw::connect(addr, "q2-pub", true).await;
    let qos = |dup| PublishQos::ExactlyOnce {
        packet_id: id(7),
        dup,
    };
    publisher
        .send(publish("q2", b"once", qos(false), false))
        .await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(id(7))));
    publisher
        .send(publish("q2", b"once", qos(true), false))
        .await;
    assert_eq!(publisher.recv().await, Some(Packet::PubRec(id(7))));
    publisher.send(Packet::PubRel(id(7))).await;
    assert_eq!(publisher.recv().await, Some(Packet::PubComp(id(7))));

    let got = sub.publish_received().await;
    assert_eq!(&got.payload[..], b"once");
    let PublishQos::ExactlyOnce {
        packet_id,
        dup: false,
    } = got.qos
    else {
        panic!("QoS 2 expected: {got:?}");
    };
    sub.send(Packet::PubRec(packet_id)).await;
    assert_eq!(sub.recv().await, Some(Packet::PubRel(packet_id)));
    sub.send(Packet::PubComp(packet_id)).await;
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        None,
        "delivered once"
    );
    broker.shutdown().await.unwrap();
}

/// Delivered at min(published, granted) [MQTT-3.8.4-6]; overlapping subscriptions deliver
/// once at the maximum granted QoS [MQTT-3.3.5-1]; UNSUBSCRIBE stops delivery, also
/// answered for an unknown filter [MQTT-3.10.4-5].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_downgrade_overlap_and_unsubscribe() {
    let (broker, addr) = memory_broker().await;
    let (mut sub, _) = Raw::connect(addr, "overlap", true).await;
    let ack = sub
        .subscribe(1, &[("o/#", QoS::AtMostOnce), ("o/+", QoS::AtLeastOnce)])
        .await;
    assert_eq!(
        ack.return_codes,
        [
            SubscribeReturnCode::Granted(QoS::AtMostOnce),
            SubscribeReturnCode::Granted(QoS::AtLeastOnce)
        ]
    );
    let (mut publisher, _) = Raw::connect(addr, "overlap-pub", true).await;
    publisher.publish_qos1(1, "o/x", b"1", false).await;
    let got = sub.publish_received().await;
    assert_eq!(got.qos.qos(), QoS::AtLeastOnce);
    sub.send(Packet::PubAck(got.qos.packet_id().unwrap())).await;
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        None,
        "once"
    );

    sub.send(Packet::Unsubscribe(Unsubscribe {
        packet_id: id(2),
        filters: vec![
            TopicFilter::from_static("o/+"),
            TopicFilter::from_static("never/subscribed"),
        ],
    }))
    .await;
    assert_eq!(sub.recv().await, Some(Packet::UnsubAck(id(2))));
    publisher.publish_qos1(2, "o/x", b"2", false).await;
    let got = sub.publish_received().await;
    assert_eq!(got.qos.qos(), QoS::AtMostOnce, "only o/# at QoS 0 is left");
    broker.shutdown().await.unwrap();
}

/// Retained messages: set, replaced, sent with RETAIN 1 to a new subscription
/// [MQTT-3.3.1-6], [MQTT-3.3.1-8], RETAIN 0 on normal forwarding [MQTT-3.3.1-9], cleared by
/// an empty payload [MQTT-3.3.1-10]; wildcards do not match '$' topics [MQTT-4.7.2-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_set_replace_clear() {
    let (broker, addr) = memory_broker().await;
    let (mut publisher, _) = Raw::connect(addr, "ret-pub", true).await;
    publisher.publish_qos1(1, "ret/a", b"first", true).await;
    publisher.publish_qos1(2, "ret/a", b"second", true).await;
    publisher.publish_qos1(3, "$ret/b", b"system", true).await;

    let (mut sub, _) = Raw::connect(addr, "ret-sub", true).await;
    sub.subscribe(1, &[("#", QoS::AtLeastOnce)]).await;
    let got = sub.publish_received().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..], got.retain),
        ("ret/a", &b"second"[..], true)
    );
    sub.send(Packet::PubAck(got.qos.packet_id().unwrap())).await;
    assert_eq!(
        sub.recv_within(Duration::from_millis(300)).await,
        None,
        "no '$' topic for '#'"
    );

    publisher.publish_qos1(4, "ret/a", b"third", true).await;
    let got = sub.publish_received().await;
    assert_eq!((&got.payload[..], got.retain), (&b"third"[..], false));
    sub.send(Packet::PubAck(got.qos.packet_id().unwrap())).await;

    publisher.publish_qos1(5, "ret/a", b"", true).await;
    let _cleared = sub.publish_received().await;
    let (mut late, _) = Raw::connect(addr, "ret-late", true).await;
    late.subscribe(1, &[("ret/#", QoS::AtLeastOnce)]).await;
    assert_eq!(
        late.recv_within(Duration::from_millis(300)).await,
        None,
        "cleared"
    );
    broker.shutdown().await.unwrap();
}

/// A persistent session keeps its subscriptions and queues QoS 1 messages while its client is
/// away, across a graceful restart; a retained message survives too; an unacknowledged
/// message is sent again with DUP 1 and its packet identifier [MQTT-4.4.0-1].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        listeners: vec!["127.0.0.1:0".parse().unwrap()],
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    let broker = Broker::start(config.clone()).await.unwrap();
    let addr = broker.local_addrs()[0];
    let (mut sub, ack) = Raw::connect(addr, "durable", false).await;
    assert!(!ack.session_present);
    sub.subscribe(1, &[("d/#", QoS::AtLeastOnce)]).await;
    sub.send(Packet::Disconnect).await;
    assert!(sub.closed().await);

    let (mut publisher, _) = Raw::connect(addr, "durable-pub", true).await;
    publisher.publish_qos1(1, "d/1", b"while away", false).await;
    publisher.publish_qos1(2, "d/kept", b"retained", true).await;
    drop(publisher);
    broker.shutdown().await.unwrap();

    let broker = Broker::start(config.clone()).await.unwrap();
    let addr = broker.local_addrs()[0];
    let (mut sub, ack) = Raw::connect(addr, "durable", false).await;
    assert!(
        ack.session_present,
        "the session was restored [MQTT-3.2.2-2]"
    );
    let first = sub.publish_received().await;
    assert_eq!(
        (first.topic.as_str(), &first.payload[..]),
        ("d/1", &b"while away"[..])
    );
    let second = sub.publish_received().await;
    assert_eq!(second.topic.as_str(), "d/kept");
    assert!(!second.retain, "forwarded, not sent for a new subscription");
    // Acknowledge neither; leave without DISCONNECT.
    drop(sub);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut sub, ack) = Raw::connect(addr, "durable", false).await;
    assert!(ack.session_present);
    let again = sub.publish_received().await;
    assert_eq!(
        again.qos,
        PublishQos::AtLeastOnce {
            packet_id: first.qos.packet_id().unwrap(),
            dup: true
        }
    );
    sub.send(Packet::PubAck(first.qos.packet_id().unwrap()))
        .await;
    let again = sub.publish_received().await;
    assert!(again.qos.dup());
    sub.send(Packet::PubAck(second.qos.packet_id().unwrap()))
        .await;

    // A clean session discards it [MQTT-3.1.2-6].
    drop(sub);
    let (sub, ack) = Raw::connect(addr, "durable", true).await;
    assert!(!ack.session_present);
    drop(sub);
    broker.shutdown().await.unwrap();

    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    let (mut late, _) = Raw::connect(addr, "late", true).await;
    late.subscribe(1, &[("d/kept", QoS::AtMostOnce)]).await;
    let got = late.publish_received().await;
    assert!(got.retain);
    let (_sub, ack) = Raw::connect(addr, "durable", false).await;
    assert!(!ack.session_present, "the clean session deleted it");
    broker.shutdown().await.unwrap();
}

fn with_will(client_id: &'static str, topic: &'static str, retain: bool) -> Connect {
    let mut connect = Connect::new(MqttString::from_static(client_id));
    connect.will = Some(Will {
        topic: TopicName::from_static(topic),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain,
    });
    connect
}

/// The will is published on a network loss, a protocol error and a takeover, never after
/// DISCONNECT [MQTT-3.1.2-8], [MQTT-3.1.2-10]; a second connection with the same client ID
/// closes the first [MQTT-3.1.4-2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_and_takeover() {
    let (broker, addr) = memory_broker().await;
    let (mut watcher, _) = Raw::connect(addr, "watcher", true).await;
    watcher.subscribe(1, &[("will/#", QoS::AtMostOnce)]).await;

    let (raw, _) = Raw::connect_with(addr, with_will("w-net", "will/net", false)).await;
    drop(raw);
    assert_eq!(watcher.publish_received().await.topic.as_str(), "will/net");

    let (mut raw, _) = Raw::connect_with(addr, with_will("w-proto", "will/proto", false)).await;
    raw.stream.write_all(&[0x00, 0x00]).await.unwrap(); // packet type 0 is reserved
    assert!(raw.closed().await);
    assert_eq!(
        watcher.publish_received().await.topic.as_str(),
        "will/proto"
    );

    let (mut first, _) = Raw::connect_with(addr, with_will("w-take", "will/take", false)).await;
    let (_second, ack) = Raw::connect(addr, "w-take", true).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    assert!(first.closed().await, "the first connection is closed");
    assert_eq!(watcher.publish_received().await.topic.as_str(), "will/take");

    let (mut raw, _) = Raw::connect_with(addr, with_will("w-bye", "will/bye", false)).await;
    raw.send(Packet::Disconnect).await;
    assert!(raw.closed().await);
    assert_eq!(
        watcher.recv_within(Duration::from_millis(300)).await,
        None,
        "no will after DISCONNECT"
    );
    broker.shutdown().await.unwrap();
}

/// Keep alive is enforced at one and a half times its value [MQTT-3.1.2-24], and the will is
/// published (retained, as asked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_expiry_publishes_the_will() {
    let (broker, addr) = memory_broker().await;
    let mut connect = with_will("sleepy", "will/sleepy", true);
    connect.keep_alive = 1;
    let (mut raw, _) = Raw::connect_with(addr, connect).await;
    let started = std::time::Instant::now();
    assert!(raw.closed().await);
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1400), "{waited:?}");
    assert!(waited < Duration::from_millis(3000), "{waited:?}");
    let (mut late, _) = Raw::connect(addr, "late", true).await;
    late.subscribe(1, &[("will/sleepy", QoS::AtMostOnce)]).await;
    assert!(late.publish_received().await.retain);
    broker.shutdown().await.unwrap();
}

/// CONNECT rules: CONNACK 0x01 for an unknown protocol level [MQTT-3.1.2-2], 0x02 for an
/// empty client ID without a clean session [MQTT-3.1.3-8], an assigned one with
/// [MQTT-3.1.3-6]; MQTT 3.1 ("MQIsdp") works; the first packet must be CONNECT
/// [MQTT-3.1.0-1], and a second one closes the connection [MQTT-3.1.0-2].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_rules() {
    let (broker, addr) = memory_broker().await;
    let mut raw = Raw::open(addr).await;
    // CONNECT, protocol "MQTT" level 5.
    raw.stream
        .write_all(&[0x10, 0x0C, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 60, 0, 0])
        .await
        .unwrap();
    let Some(Packet::ConnAck(ack)) = raw.recv().await else {
        panic!()
    };
    assert_eq!(ack.code, ConnectReturnCode::UnacceptableProtocolVersion);
    assert!(raw.closed().await);

    let mut connect = Connect::new(MqttString::from_static(""));
    connect.clean_session = false;
    let (mut raw, ack) = Raw::connect_with(addr, connect).await;
    assert_eq!(
        (ack.code, ack.session_present),
        (ConnectReturnCode::IdentifierRejected, false)
    );
    assert!(raw.closed().await);

    let (mut raw, ack) = Raw::connect(addr, "", true).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    raw.send(Packet::PingReq).await;
    assert_eq!(raw.recv().await, Some(Packet::PingResp));
    raw.send(Packet::Connect(Box::new(Connect::new(
        MqttString::from_static("again"),
    ))))
    .await;
    assert!(raw.closed().await);

    let mut v31 = Connect::new(MqttString::from_static("old-client"));
    v31.protocol_name = MqttString::from_static("MQIsdp");
    v31.protocol_level = 3;
    let (_raw, ack) = Raw::connect_with(addr, v31).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);

    let mut raw = Raw::open(addr).await;
    raw.send(Packet::PingReq).await;
    assert!(raw.closed().await, "PINGREQ before CONNECT");
    broker.shutdown().await.unwrap();
}

/// Malformed input closes that connection only; the broker serves the next one. A packet over
/// max_packet_size is refused the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_close_only_their_connection() {
    let config = Config {
        max_packet_size: 128,
        ..memory_config()
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    let garbage: [&[u8]; 4] = [
        &[0xF0, 0x00],                   // reserved type 15
        &[0x10, 0xFF, 0xFF, 0xFF, 0xFF], // remaining length of 5 bytes
        &[0x10, 0x02, 0x00, 0x09],       // truncated protocol name
        b"GET / HTTP/1.1\r\n\r\n",
    ];
    for bytes in garbage {
        let mut raw = Raw::open(addr).await;
        raw.stream.write_all(bytes).await.unwrap();
        assert!(raw.closed().await, "{bytes:?}");
    }
    let (mut raw, _) = Raw::connect(addr, "big", true).await;
    let payload: &'static [u8] = &[7; 200];
    raw.send(publish("big", payload, PublishQos::AtMostOnce, false))
        .await;
    assert!(raw.closed().await, "over max_packet_size");

    let (mut ok, ack) = Raw::connect(addr, "still-fine", true).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    ok.send(Packet::PingReq).await;
    assert_eq!(ok.recv().await, Some(Packet::PingResp));
    broker.shutdown().await.unwrap();
}

/// A session past its expiry while its client is away is discarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_sessions_expire() {
    let config = Config {
        session_expiry: SessionExpiry::After(Duration::from_millis(300)),
        ..memory_config()
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    let (mut raw, _) = Raw::connect(addr, "brief", false).await;
    raw.subscribe(1, &[("x", QoS::AtLeastOnce)]).await;
    drop(raw);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (raw, ack) = Raw::connect(addr, "brief", false).await;
    assert!(ack.session_present, "not yet expired");
    drop(raw);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (_raw, ack) = Raw::connect(addr, "brief", false).await;
    assert!(!ack.session_present, "expired");
    assert_eq!(broker.stats().expired_sessions, 1);
    broker.shutdown().await.unwrap();
}

/// Starting fails with a typed error that names what is wrong: a busy address, a data
/// directory that cannot be created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_errors_name_the_problem() {
    let (broker, addr) = memory_broker().await;
    let busy = Config {
        listeners: vec![addr.into()],
        ..memory_config()
    };
    let error = Broker::start(busy).await.unwrap_err();
    assert!(
        matches!(error, StartError::AddrInUse { addr: a } if a == addr),
        "{error}"
    );
    assert!(error.to_string().contains(&addr.to_string()));
    // Where the address came from: a flag or the configuration file (a TLS or WebSocket
    // listener has no flag).
    let message = error.to_string();
    assert!(
        message.contains("--listen") && message.contains("configuration file's `listeners`"),
        "{message}"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    let bad_dir = Config {
        memory: false,
        data_dir: file.path().join("data"),
        ..memory_config()
    };
    let error = Broker::start(bad_dir).await.unwrap_err();
    assert!(matches!(error, StartError::DataDir { .. }), "{error}");
    assert!(error.to_string().contains("--data-dir"), "{error}");
    broker.shutdown().await.unwrap();
}

/// A subscriber that reads nothing: its QoS 0 backlog is bounded (the excess dropped and
/// counted), and the broker keeps serving its publisher and everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_loses_qos0_not_the_broker() {
    let config = Config {
        max_qos0_backlog: 16,
        ..memory_config()
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    let (mut stuck, _) = Raw::connect(addr, "stuck", true).await;
    stuck.subscribe(1, &[("flood", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = Raw::connect(addr, "flooder", true).await;
    let payload: &'static [u8] = Box::leak(vec![b'x'; 16 * 1024].into_boxed_slice());
    for _ in 0..2000 {
        publisher
            .send(publish("flood", payload, PublishQos::AtMostOnce, false))
            .await;
    }
    publisher.send(Packet::PingReq).await;
    assert_eq!(publisher.recv().await, Some(Packet::PingResp));
    let (mut other, _) = Raw::connect(addr, "other", true).await;
    other.send(Packet::PingReq).await;
    assert_eq!(other.recv().await, Some(Packet::PingResp));
    assert!(broker.stats().qos0_drops > 0, "{:?}", broker.stats());
    drop(stuck);
    broker.shutdown().await.unwrap();
}

/// `max_subscriptions` refuses a filter over the limit with 0x80, filter by filter, while a
/// filter the session has is replaced [MQTT-3.8.4-3]; a connection that sends no CONNECT
/// within `connect_timeout` is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_limit_and_connect_timeout() {
    let config = Config {
        max_subscriptions: 1,
        connect_timeout: Duration::from_millis(300),
        ..memory_config()
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    let (mut raw, _) = Raw::connect(addr, "limited", true).await;
    let ack = raw
        .subscribe(
            1,
            &[
                ("a", QoS::AtLeastOnce),
                ("b", QoS::AtMostOnce),
                ("a", QoS::ExactlyOnce),
            ],
        )
        .await;
    assert_eq!(
        ack.return_codes,
        [
            SubscribeReturnCode::Granted(QoS::AtLeastOnce),
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Granted(QoS::ExactlyOnce),
        ]
    );
    let started = std::time::Instant::now();
    let mut silent = Raw::open(addr).await;
    assert!(silent.closed().await);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    broker.shutdown().await.unwrap();
}

/// With a password file and `allow_anonymous = false`: CONNACK 0x05 without a user name,
/// 0x04 for a wrong password or an unknown user, 0x00 with the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_return_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut passwords = hermes_mqtt::auth::PasswordFile::default();
    let cheap = hermes_mqtt::auth::HashParams {
        memory_kib: 8,
        iterations: 1,
        parallelism: 1,
    };
    let hash = hermes_mqtt::auth::hash_password(b"secret", cheap).unwrap();
    passwords.set("alice", hash).unwrap();
    passwords.save(&dir.path().join("passwd")).unwrap();
    let config = Config {
        allow_anonymous: false,
        password_file: Some(dir.path().join("passwd")),
        ..memory_config()
    };
    let broker = Broker::start(config).await.unwrap();
    let addr = broker.local_addrs()[0];
    let with_login = |user: &'static str, password: &'static [u8]| {
        let mut connect = Connect::new(MqttString::from_static("auth"));
        connect.login = Some(hermes_mqtt::Login {
            username: MqttString::from_static(user),
            password: Some(Bytes::from_static(password)),
        });
        connect
    };
    let cases = [
        (
            Connect::new(MqttString::from_static("auth")),
            ConnectReturnCode::NotAuthorized,
        ),
        (
            with_login("alice", b"wrong"),
            ConnectReturnCode::BadUserNameOrPassword,
        ),
        (
            with_login("mallory", b"secret"),
            ConnectReturnCode::BadUserNameOrPassword,
        ),
        (with_login("alice", b"secret"), ConnectReturnCode::Accepted),
    ];
    for (connect, code) in cases {
        let (mut raw, ack) = Raw::connect_with(addr, connect).await;
        assert_eq!(ack.code, code);
        if code != ConnectReturnCode::Accepted {
            assert!(raw.closed().await, "{code:?} closes [MQTT-3.2.2-5]");
        }
    }
    broker.shutdown().await.unwrap();
}
