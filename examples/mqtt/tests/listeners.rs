//! The listeners: TCP, TLS, WebSocket (subprotocol "mqtt", path /mqtt) and WebSocket over TLS,
//! several at once, each with its own connection limit; certificate files that cannot be used
//! are startup errors naming them.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use hermes_mqtt::{Broker, Config, ListenerConfig, Packet, QoS, StartError, SubscribeReturnCode};
use support::streams::{
    PacketIo, StreamClient, TestCerts, http_status, upgrade_request, ws_handshake,
};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start(listeners: Vec<ListenerConfig>, change: impl FnOnce(&mut Config)) -> Broker {
    let mut config = test_config();
    config.listeners = listeners;
    change(&mut config);
    Broker::start(config).await.expect("the broker starts")
}

/// A QoS 1 message published over plain TCP reaches the subscriber connected through `recv`.
async fn published_over_tcp(tcp: SocketAddr, topic_name: &str) {
    let broker = TestBroker::at(tcp);
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(topic_name, b"over another stream", QoS::AtLeastOnce, false)
        .await;
}

fn expect_publish(packet: Packet, topic_name: &str) {
    match packet {
        Packet::Publish(p) => {
            assert_eq!(p.topic.as_str(), topic_name);
            assert_eq!(&p.payload[..], b"over another stream");
        }
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_carries_mqtt_both_ways() {
    let certs = TestCerts::new();
    let broker = start(
        vec![
            ListenerConfig::tcp(any_port()),
            ListenerConfig::tls(any_port(), &certs.cert, &certs.key),
        ],
        |_| {},
    )
    .await;
    let [tcp, tls] = broker.local_addrs()[..] else {
        panic!("two listeners")
    };
    let t = unique("tls/t");
    let mut client = StreamClient::connect(certs.connect(tls).await, &unique("tls")).await;
    client.subscribe_to(&t).await;
    published_over_tcp(tcp, &t).await;
    expect_publish(client.recv().await, &t);
    // And from the TLS client to itself.
    client
        .send(publish_packet(
            &t,
            b"over another stream",
            QoS::AtMostOnce,
            0,
            false,
            false,
        ))
        .await;
    expect_publish(client.recv().await, &t);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mqtt_on_a_tls_port_is_closed_and_counted() {
    let certs = TestCerts::new();
    let broker = start(
        vec![ListenerConfig::tls(any_port(), &certs.cert, &certs.key)],
        |_| {},
    )
    .await;
    let mut stream = TcpStream::connect(broker.local_addrs()[0]).await.unwrap();
    stream
        .write_all(&wire(connect_packet(&unique("plain"))))
        .await
        .unwrap();
    // A TLS alert may come back, then the close.
    let mut answer = Vec::new();
    tokio::time::timeout(TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .expect("closed in time")
        .ok();
    wait_for_handshake_failures(&broker, 1).await;
    assert_eq!(broker.stats().handshake_failures, 1);
    assert_eq!(broker.stats().clients_connected, 0);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_carries_mqtt_in_binary_frames() {
    let broker = start(
        vec![
            ListenerConfig::tcp(any_port()),
            ListenerConfig::ws(any_port()),
        ],
        |_| {},
    )
    .await;
    let [tcp, ws] = broker.local_addrs()[..] else {
        panic!("two listeners")
    };
    let stream = TcpStream::connect(ws).await.unwrap();
    let mut client = ws_handshake(stream, &format!("ws://{ws}/mqtt")).await;
    assert_eq!(client.protocol.as_deref(), Some("mqtt"), "[MQTT-6.0.0-4]");
    client.connect(&unique("ws")).await;
    let t = unique("ws/t");
    client.subscribe_to(&t).await;
    published_over_tcp(tcp, &t).await;
    expect_publish(client.recv().await, &t);

    // Two packets in one frame, and one packet split over two frames [MQTT-6.0.0-2].
    let mut both = wire(publish_packet(
        &t,
        b"over another stream",
        QoS::AtMostOnce,
        0,
        false,
        false,
    ));
    both.extend(wire(Packet::PingReq));
    client.send_frame(Message::Binary(both.into())).await;
    // The PINGRESP may overtake the message, which goes through the subscriber's session.
    let (first, second) = (client.recv().await, client.recv().await);
    let (publish, ping) = if first == Packet::PingResp {
        (second, first)
    } else {
        (first, second)
    };
    expect_publish(publish, &t);
    assert_eq!(ping, Packet::PingResp);
    let ping = wire(Packet::PingReq);
    client
        .send_frame(Message::Binary(ping[..1].to_vec().into()))
        .await;
    client
        .send_frame(Message::Binary(ping[1..].to_vec().into()))
        .await;
    assert_eq!(client.recv().await, Packet::PingResp);

    // A text frame closes the connection [MQTT-6.0.0-1].
    client.send_frame(Message::Text("hello".into())).await;
    assert!(client.closed().await);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refuses_other_paths_and_handshakes_without_mqtt() {
    let broker = start(vec![ListenerConfig::ws(any_port())], |_| {}).await;
    let ws = broker.local_addrs()[0];
    let status = http_status(ws, &upgrade_request("/other", Some("mqtt"))).await;
    assert!(status.contains("404"), "{status}");
    let status = http_status(ws, &upgrade_request("/mqtt", None)).await;
    assert!(status.contains("400"), "{status}");
    let status = http_status(ws, &upgrade_request("/mqtt", Some("chat, mqtt"))).await;
    assert!(status.contains("101"), "{status}");
    let status = http_status(ws, "GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(!status.contains("101"), "not an upgrade: {status}");
    wait_for_handshake_failures(&broker, 3).await;
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_over_tls_carries_mqtt() {
    let certs = TestCerts::new();
    let broker = start(
        vec![
            ListenerConfig::tcp(any_port()),
            ListenerConfig::wss(any_port(), &certs.cert, &certs.key).with_path("/custom"),
        ],
        |_| {},
    )
    .await;
    let [tcp, wss] = broker.local_addrs()[..] else {
        panic!("two listeners")
    };
    let tls = certs.connect(wss).await;
    let mut client = ws_handshake(tls, &format!("wss://localhost:{}/custom", wss.port())).await;
    client.connect(&unique("wss")).await;
    let t = unique("wss/t");
    client.subscribe_to(&t).await;
    published_over_tcp(tcp, &t).await;
    expect_publish(client.recv().await, &t);
    broker.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_at_once_shares_one_broker() {
    let certs = TestCerts::new();
    let broker = start(
        vec![
            ListenerConfig::tcp(any_port()),
            ListenerConfig::tls(any_port(), &certs.cert, &certs.key),
            ListenerConfig::ws(any_port()),
            ListenerConfig::wss(any_port(), &certs.cert, &certs.key),
        ],
        |_| {},
    )
    .await;
    let [tcp, tls, ws, wss] = broker.local_addrs()[..] else {
        panic!("four listeners")
    };
    let t = unique("all/t");
    let mut over_tls = StreamClient::connect(certs.connect(tls).await, &unique("a")).await;
    let mut over_ws = ws_handshake(
        TcpStream::connect(ws).await.unwrap(),
        &format!("ws://{ws}/mqtt"),
    )
    .await;
    over_ws.connect(&unique("b")).await;
    let mut over_wss = ws_handshake(
        certs.connect(wss).await,
        &format!("wss://localhost:{}/mqtt", wss.port()),
    )
    .await;
    over_wss.connect(&unique("c")).await;
    over_tls.subscribe_to(&t).await;
    over_ws.subscribe_to(&t).await;
    over_wss.subscribe_to(&t).await;
    assert_eq!(broker.stats().clients_connected, 3);
    published_over_tcp(tcp, &t).await;
    expect_publish(over_tls.recv().await, &t);
    expect_publish(over_ws.recv().await, &t);
    expect_publish(over_wss.recv().await, &t);
    broker.shutdown().await.unwrap();
}

/// One connection over a listener's own limit, or over the broker's, is closed at once and
/// counted; a place freed is taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_listener_and_overall() {
    let broker = start(
        vec![
            ListenerConfig::tcp(any_port()).with_max_connections(2),
            ListenerConfig::tcp(any_port()),
        ],
        |c| c.max_connections = 3,
    )
    .await;
    let [limited, other] = broker.local_addrs()[..] else {
        panic!("two listeners")
    };
    let a = TestBroker::at(limited).connect(&unique("a")).await;
    let _b = TestBroker::at(limited).connect(&unique("b")).await;
    let mut third = Raw::open(limited).await;
    third.expect_closed().await;
    assert_eq!(broker.stats().refused_max_connections, 1);
    let _c = TestBroker::at(other).connect(&unique("c")).await;
    let mut fourth = Raw::open(other).await;
    fourth.expect_closed().await;
    assert_eq!(broker.stats().refused_max_connections, 2);
    a.disconnect().await;
    // Its place is given back once the connection task ends.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let mut raw = Raw::open(limited).await;
        raw.send(connect_packet(&unique("again"))).await;
        if let Next::Packet(Packet::ConnAck(_)) = raw.next(Duration::from_secs(1)).await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.shutdown().await.unwrap();
}

/// A certificate or key that cannot be used stops the start with an error naming the file.
#[tokio::test]
async fn unusable_certificates_are_startup_errors_naming_the_file() {
    let certs = TestCerts::new();
    let missing = certs.path("missing.pem");
    let garbage = certs.path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let other = TestCerts::new();
    for (cert, key, names) in [
        (&missing, &certs.key, &missing),
        (&garbage, &certs.key, &garbage),
        (&certs.cert, &garbage, &garbage),
        (&certs.cert, &other.key, &certs.cert),
    ] {
        let mut config = test_config();
        config.listeners = vec![ListenerConfig::tls(any_port(), cert, key)];
        let error = Broker::start(config).await.unwrap_err();
        assert!(matches!(error, StartError::Tls { .. }), "{error}");
        let message = error.to_string();
        assert!(
            message.contains(&names.display().to_string()),
            "{message} names {}",
            names.display()
        );
    }
}

/// SUBACK return codes, to check a subscription over any listener.
#[allow(dead_code)]
fn granted(codes: &[SubscribeReturnCode]) -> bool {
    codes.iter().all(|c| *c != SubscribeReturnCode::Failure)
}

/// Waits (at most 5 s) until `broker` has counted `n` failed handshakes. A failure is counted
/// once the handshake's future has ended, which closes the socket first: the client may read
/// the end of the stream before the count is added.
async fn wait_for_handshake_failures(broker: &Broker, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while broker.stats().handshake_failures < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} handshake failures counted, {n} expected",
            broker.stats().handshake_failures
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
