//! Limits against abuse: the publish rate (backpressure, not a disconnect), CONNECT and
//! handshakes within `connect_timeout` however slowly the bytes come (slowloris), and garbage
//! closed at once and counted.

mod support;

use std::time::{Duration, Instant};

use hermes_mqtt::{ListenerConfig, Packet, QoS};
use support::streams::TestCerts;
use support::*;

/// Past `max_publish_rate` (and its burst) the broker stops reading the client until it may
/// publish again: every message arrives, later, and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_rate_slows_a_client_down_without_dropping() {
    let Some(broker) = TestBroker::configured("rate", |c| {
        c.max_publish_rate = 20;
        c.publish_burst = 5;
    })
    .await
    else {
        return;
    };
    let t = unique("rate/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut flood = broker.connect(&unique("flood")).await;
    let mut bytes = Vec::new();
    for i in 0..25u8 {
        bytes.extend(wire(publish_packet(
            &t,
            &[i],
            QoS::AtMostOnce,
            0,
            false,
            false,
        )));
    }
    bytes.extend(wire(Packet::PingReq));
    let started = Instant::now();
    flood.send_bytes(&bytes).await;
    // The PINGRESP comes after the 25 PUBLISHes are read: 20 past the burst of 5, at 20 a
    // second, take about a second.
    let pong = flood.recv().await;
    assert_eq!(pong, Packet::PingResp);
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(800), "{elapsed:?}");
    let got = sub.recv_messages(25).await;
    assert_eq!(payloads(&got).len(), 25, "nothing dropped");
    flood.expect_alive().await;
    let stats = broker.shutdown_stats().await;
    assert!(stats.publish_throttled >= 15, "{stats:?}");
}

/// A CONNECT dribbled byte by byte is closed at `connect_timeout`, however steadily the bytes
/// come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_connect_is_closed_at_the_timeout() {
    let Some(broker) = TestBroker::configured("slowloris", |c| {
        c.connect_timeout = Duration::from_millis(400);
    })
    .await
    else {
        return;
    };
    let bytes = wire(connect_packet(&unique("slow")));
    let mut raw = broker.raw().await;
    let started = Instant::now();
    for byte in &bytes[..bytes.len() - 1] {
        raw.send_bytes_lossy(std::slice::from_ref(byte)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if started.elapsed() > Duration::from_secs(2) {
            break;
        }
    }
    raw.expect_closed().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

/// A TLS listener's handshake counts against `connect_timeout` too: a client that opens the
/// socket and says nothing is closed then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_tls_client_is_closed_at_the_timeout() {
    let certs = TestCerts::new();
    let mut config = test_config();
    config.connect_timeout = Duration::from_millis(300);
    config.listeners = vec![ListenerConfig::tls(
        "127.0.0.1:0".parse().unwrap(),
        &certs.cert,
        &certs.key,
    )];
    let broker = hermes_mqtt::Broker::start(config).await.unwrap();
    let mut silent = Raw::open(broker.local_addrs()[0]).await;
    let started = Instant::now();
    silent.expect_closed().await;
    assert!(started.elapsed() < Duration::from_secs(2));
    let stats = broker.shutdown().await.unwrap().stats;
    assert_eq!(stats.handshake_failures, 1);
}

/// Garbage is closed at once, each connection counted (and logged at debug only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_closed_quickly_and_counted() {
    let Some(broker) = TestBroker::configured("garbage", |_| {}).await else {
        return;
    };
    let started = Instant::now();
    for i in 0..50u8 {
        let mut raw = broker.raw().await;
        raw.send_bytes_lossy(&[0xff, i, b'G', b'E', b'T', b' ', b'/'])
            .await;
        raw.expect_closed().await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A connected client that sends garbage too.
    let mut client = broker.connect(&unique("c")).await;
    client.send_bytes_lossy(&[0x00, 0x00]).await;
    client.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = broker.shutdown_stats().await;
    assert_eq!(stats.protocol_errors, 51, "{stats:?}");
}

/// The retained messages a new subscriber to `filter` gets, by topic, within [`QUIET`].
async fn retained_for(broker: &TestBroker, filter: &str) -> Vec<(String, Vec<u8>)> {
    let mut sub = broker.connect(&unique("late")).await;
    sub.subscribe_one(filter, QoS::AtLeastOnce).await;
    let mut got = Vec::new();
    while let Next::Packet(Packet::Publish(p)) = sub.next(QUIET).await {
        assert!(p.retain);
        sub.ack(&p).await;
        got.push((p.topic.as_str().to_owned(), p.payload.to_vec()));
    }
    got.sort();
    got
}

/// `max_retained`: past it a retained PUBLISH on a new topic is delivered to the subscribers
/// and acknowledged, but not retained, and counted; replacing and clearing a topic's retained
/// message still work, and clearing one makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retained_refuses_new_topics_but_delivers_them() {
    let Some(broker) = TestBroker::configured("max_retained", |c| c.max_retained = 2).await else {
        return;
    };
    let base = unique("cap");
    let t = |n: u32| format!("{base}/{n}");
    let mut live = broker.connect(&unique("live")).await;
    live.subscribe_one(&format!("{base}/#"), QoS::AtLeastOnce)
        .await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for n in 1..=3 {
        // Acknowledged: PUBACK (publish asserts it).
        publisher
            .publish(&t(n), b"v1", QoS::AtLeastOnce, true)
            .await;
        let got = live.recv_message().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            (t(n).as_str(), &b"v1"[..])
        );
    }
    let expect = |pairs: &[(u32, &[u8])]| -> Vec<(String, Vec<u8>)> {
        pairs.iter().map(|(n, p)| (t(*n), p.to_vec())).collect()
    };
    let filter = format!("{base}/#");
    assert_eq!(
        retained_for(&broker, &filter).await,
        expect(&[(1, b"v1"), (2, b"v1")])
    );
    // Replacing one is not a new one.
    publisher
        .publish(&t(2), b"v2", QoS::AtLeastOnce, true)
        .await;
    assert_eq!(
        retained_for(&broker, &filter).await,
        expect(&[(1, b"v1"), (2, b"v2")])
    );
    // Clearing one makes room for another.
    publisher.publish(&t(1), b"", QoS::AtLeastOnce, true).await;
    publisher
        .publish(&t(3), b"v3", QoS::AtLeastOnce, true)
        .await;
    assert_eq!(
        retained_for(&broker, &filter).await,
        expect(&[(2, b"v2"), (3, b"v3")])
    );
    let stats = broker.shutdown_stats().await;
    assert_eq!(
        (stats.retained, stats.retained_refused),
        (2, 1),
        "{stats:?}"
    );
    assert_eq!(stats.retained_bytes, 4);
}

/// `max_retained_bytes`: a retained message that would take the payloads past it is not
/// retained; one that was to grow a topic's message past it removes that topic's old message
/// rather than keep it as if it were the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retained_bytes_bounds_the_payloads() {
    let Some(broker) =
        TestBroker::configured("max_retained_bytes", |c| c.max_retained_bytes = 10).await
    else {
        return;
    };
    let base = unique("bytes");
    let (a, b) = (format!("{base}/a"), format!("{base}/b"));
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&a, b"123456", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish(&b, b"12345", QoS::AtLeastOnce, true)
        .await; // 11 > 10: refused
    let filter = format!("{base}/#");
    assert_eq!(
        retained_for(&broker, &filter).await,
        [(a.clone(), b"123456".to_vec())]
    );
    publisher
        .publish(&a, b"1234567890", QoS::AtLeastOnce, true)
        .await; // 10: fits
    publisher
        .publish(&a, b"12345678901", QoS::AtLeastOnce, true)
        .await; // 11: refused
    assert_eq!(retained_for(&broker, &filter).await, []);
    publisher
        .publish(&b, b"12345", QoS::AtLeastOnce, true)
        .await; // room again
    assert_eq!(
        retained_for(&broker, &filter).await,
        [(b.clone(), b"12345".to_vec())]
    );
    let stats = broker.shutdown_stats().await;
    assert_eq!(
        (stats.retained, stats.retained_bytes, stats.retained_refused),
        (1, 5, 2),
        "{stats:?}"
    );
}

/// The limits hold across a restart: the gauges start from what the store holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retained_limits_count_what_the_store_held() {
    if external().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let base = unique("kept");
    let broker = TestBroker::persistent(dir.path(), |c| c.max_retained = 1).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&format!("{base}/1"), b"x", QoS::AtLeastOnce, true)
        .await;
    drop(publisher);
    broker.shutdown().await;
    let broker = TestBroker::persistent(dir.path(), |c| c.max_retained = 1).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&format!("{base}/2"), b"y", QoS::AtLeastOnce, true)
        .await;
    let got = retained_for(&broker, &format!("{base}/#")).await;
    assert_eq!(got, [(format!("{base}/1"), b"x".to_vec())]);
    let stats = broker.shutdown_stats().await;
    assert_eq!(
        (stats.retained, stats.retained_refused),
        (1, 1),
        "{stats:?}"
    );
}
