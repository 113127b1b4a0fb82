//! What the broker shows of itself: the `$SYS/broker/...` topics every `sys_interval` (named
//! as Mosquitto names them), the Prometheus `/metrics` endpoint, and its counters.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use hermes_mqtt::config::ConfigError;
use hermes_mqtt::{Broker, Config, Packet, QoS, StartError};
use support::streams::http_status;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_are_published_every_interval() {
    let Some(broker) = TestBroker::configured("sys", |c| {
        c.sys_interval = Duration::from_millis(200);
    })
    .await
    else {
        return;
    };
    let mut watcher = broker.connect(&unique("watcher")).await;
    watcher
        .subscribe_one("$SYS/broker/#", QoS::AtMostOnce)
        .await;
    let mut publisher = broker.connect(&unique("publisher")).await;
    publisher
        .publish("sys/test", b"counted", QoS::AtLeastOnce, false)
        .await;
    // Until a third round starts: the second, whole, came after both clients connected.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut uptimes = 0;
    while uptimes < 3 {
        let publish = watcher.recv_publish().await;
        assert!(!publish.retain, "not retained");
        let topic = publish.topic.as_str().to_owned();
        if topic == "$SYS/broker/uptime" {
            uptimes += 1;
        }
        seen.insert(
            topic,
            String::from_utf8_lossy(&publish.payload).into_owned(),
        );
    }
    for topic in [
        "version",
        "uptime",
        "clients/connected",
        "clients/total",
        "clients/disconnected",
        "clients/maximum",
        "messages/received",
        "messages/sent",
        "publish/messages/received",
        "publish/messages/sent",
        "bytes/received",
        "bytes/sent",
        "subscriptions/count",
        "retained messages/count",
        "load/messages/received/1min",
        "load/messages/sent/5min",
        "load/bytes/received/15min",
        "load/connections/1min",
    ] {
        assert!(
            seen.contains_key(&format!("$SYS/broker/{topic}")),
            "{topic} missing from {seen:?}"
        );
    }
    let value = |topic: &str| seen[&format!("$SYS/broker/{topic}")].clone();
    let number = |topic: &str| value(topic).parse::<f64>().unwrap();
    assert!(value("version").starts_with("hermes-mqtt version "));
    assert!(value("uptime").ends_with(" seconds"));
    assert_eq!(number("clients/connected"), 2.0);
    assert!(number("subscriptions/count") >= 1.0);
    assert!(
        number("messages/received") >= 4.0,
        "CONNECTs, SUBSCRIBE, PUBLISH"
    );
    assert!(number("bytes/received") > 0.0);
    assert!(number("load/messages/received/1min") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_interval_0_publishes_nothing() {
    let Some(broker) = TestBroker::configured("sys", |c| c.sys_interval = Duration::ZERO).await
    else {
        return;
    };
    let mut watcher = broker.connect(&unique("watcher")).await;
    watcher.subscribe_one("$SYS/#", QoS::AtMostOnce).await;
    watcher.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_metrics_on_their_own_listener() {
    let mut config = test_config();
    config.metrics_address = Some("127.0.0.1:0".parse().unwrap());
    let broker = Broker::start(config).await.unwrap();
    let metrics = broker.metrics_addr().expect("a metrics listener");
    let mqtt = TestBroker::at(broker.local_addrs()[0]);
    let mut client = mqtt.connect(&unique("m")).await;
    client.subscribe_one("m/#", QoS::AtLeastOnce).await;
    client.publish("m/x", b"1", QoS::AtLeastOnce, false).await;
    assert!(matches!(
        client.recv_publish().await,
        hermes_mqtt::Publish { .. }
    ));

    // The writer counts a PUBLISH once its write has returned, which may be after the client
    // read it: ask again until it is counted.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let answer = loop {
        let answer = http_get(metrics, "/metrics").await;
        let counted = answer
            .split_once("\r\n\r\n")
            .is_some_and(|(_, body)| metric(body, "publish_sent_total") >= 1);
        if counted || tokio::time::Instant::now() >= deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    assert!(
        body.contains("# TYPE hermes_mqtt_clients_connected gauge"),
        "{body}"
    );
    assert_eq!(metric(body, "clients_connected"), 1);
    assert_eq!(metric(body, "subscriptions"), 1);
    assert!(metric(body, "publish_received_total") >= 1);
    assert!(metric(body, "publish_sent_total") >= 1);
    assert!(metric(body, "bytes_received_total") > 0);
    assert!(metric(body, "connections_open") >= 1);
    assert!(
        metric(body, "hermes_receivers_live") >= 1,
        "the client's session"
    );
    assert!(
        broker
            .metrics_text()
            .contains("hermes_mqtt_uptime_seconds ")
    );

    assert!(
        http_status(metrics, "GET / HTTP/1.1\r\n\r\n")
            .await
            .contains("404")
    );
    assert!(
        http_status(metrics, "POST /metrics HTTP/1.1\r\n\r\n")
            .await
            .contains("405")
    );
    broker.shutdown().await.unwrap();
}

/// The counters of bytes and packets each way, and of connections, are kept.
/// The metrics listener at a listener's address is a configuration error from the library
/// too (not only from the binary's flags), said before anything is bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_at_a_listeners_address_is_refused_before_binding() {
    let address = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let config = Config {
        memory: true,
        listeners: vec![address.into()],
        metrics_address: Some(address),
        ..Config::default()
    };
    let error = Broker::start(config).await.unwrap_err();
    assert!(
        matches!(
            &error,
            StartError::Config(ConfigError::MetricsOnListener { address: a }) if *a == address
        ),
        "{error:?}"
    );
    assert!(
        error.to_string().contains("is also a listener's"),
        "{error}"
    );
    // Nothing was bound.
    drop(std::net::TcpListener::bind(address).expect("the address is free"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_counted() {
    let Some(broker) = TestBroker::configured("stats", |_| {}).await else {
        return;
    };
    let mut client = broker.connect(&unique("c")).await;
    client.subscribe_one("s/#", QoS::AtMostOnce).await;
    client
        .publish("s/x", b"payload", QoS::AtMostOnce, false)
        .await;
    let _ = client
        .recv_where("PUBLISH", |p| matches!(p, Packet::Publish(_)))
        .await;
    client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = broker.shutdown_stats().await;
    assert!(stats.packets_received >= 4, "{stats:?}");
    assert!(stats.packets_sent >= 3, "{stats:?}");
    assert!(
        stats.bytes_received > 20 && stats.bytes_sent > 10,
        "{stats:?}"
    );
    assert_eq!(stats.clients_connected, 0);
}

/// A shutdown with persistent sessions whose clients are away counts no dead letters: their
/// expiry timers, which Hermes drops when it closes, are set again at the next start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_with_offline_sessions_counts_no_dead_letters() {
    let Some(broker) = TestBroker::configured("dead letters", |_| {}).await else {
        return;
    };
    for _ in 0..3 {
        let (mut client, _) = broker.connect_persistent(&unique("away")).await;
        client.subscribe_one(&unique("t"), QoS::AtLeastOnce).await;
        client.disconnect().await;
    }
    let stats = broker.shutdown_stats().await;
    assert_eq!(stats.dead_letters, 0, "{stats:?}");
}
