//! Conformance, the will [3.1.2.5] and keep alive [3.1.2.10], [3.12]: when the will is
//! published (network loss, keep alive expiry, protocol error) and when not (DISCONNECT, a
//! refused CONNECT), with its QoS and RETAIN; keep alive timing; PINGREQ and PINGRESP.

mod support;

use std::time::Duration;

use hermes_mqtt::{Connect, ConnectReturnCode, Packet, QoS};
use support::*;
use tokio::time::Instant;

/// A CONNECT for a clean session with a will on `t` and keep alive `keep_alive`.
fn with_will(t: &str, payload: &str, qos: QoS, retain: bool, keep_alive: u16) -> Connect {
    let mut connect = connect_packet(&unique("will"));
    connect.will = Some(will(t, payload, qos, retain));
    connect.keep_alive = keep_alive;
    connect
}

/// A client subscribed to `t` at QoS 2, waiting for the will.
async fn watcher(broker: &TestBroker, t: &str) -> Raw {
    let mut raw = broker.connect(&unique("watcher")).await;
    raw.subscribe_one(t, QoS::ExactlyOnce).await;
    raw
}

/// No will on `t`: a marker published on `t` after the connection closed is the first thing
/// `watcher` gets, and nothing follows it.
async fn expect_no_will(broker: &TestBroker, watcher: &mut Raw, t: &str) {
    let mut publisher = broker.connect(&unique("marker")).await;
    publisher
        .publish(t, b"marker", QoS::AtLeastOnce, false)
        .await;
    let got = watcher.recv_message().await;
    assert_eq!(&got.payload[..], b"marker", "the will was published");
    watcher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn the_will_is_published_when_the_network_connection_is_lost_mqtt_3_1_2_8() {
    let broker = TestBroker::start().await;
    let t = unique("will/lost");
    let mut watcher = watcher(&broker, &t).await;
    let client = broker
        .connect_with(with_will(&t, "gone", QoS::AtLeastOnce, false, 60))
        .await;
    client.drop_connection();
    let got = watcher.recv_message().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        (t.as_str(), &b"gone"[..])
    );
    assert_eq!(got.qos.qos(), QoS::AtLeastOnce, "with its QoS");
    assert!(!got.retain);
    watcher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn the_will_is_published_with_its_qos_mqtt_3_1_2_8() {
    let broker = TestBroker::start().await;
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let t = unique("will/qos");
        let mut watcher = watcher(&broker, &t).await;
        let client = broker
            .connect_with(with_will(&t, "q", qos, false, 60))
            .await;
        client.drop_connection();
        let got = watcher.recv_message().await;
        assert_eq!(got.qos.qos(), qos);
    }
}

#[tokio::test]
async fn a_will_with_retain_is_retained_mqtt_3_1_2_17() {
    let broker = TestBroker::start().await;
    let t = unique("will/retained");
    let client = broker
        .connect_with(with_will(&t, "offline", QoS::AtLeastOnce, true, 60))
        .await;
    let mut watcher = watcher(&broker, &t).await;
    client.drop_connection();
    let live = watcher.recv_message().await;
    assert_eq!(&live.payload[..], b"offline");
    // A subscription made afterwards gets it as a retained message.
    let mut late = broker.connect(&unique("late")).await;
    late.subscribe_one(&t, QoS::AtLeastOnce).await;
    let got = late.recv_message().await;
    assert_eq!(&got.payload[..], b"offline");
    assert!(got.retain);
}

#[tokio::test]
async fn a_will_without_retain_is_not_retained_mqtt_3_1_2_16() {
    let broker = TestBroker::start().await;
    let t = unique("will/unretained");
    let mut watcher = watcher(&broker, &t).await;
    let client = broker
        .connect_with(with_will(&t, "offline", QoS::AtLeastOnce, false, 60))
        .await;
    client.drop_connection();
    watcher.recv_message().await;
    let mut late = broker.connect(&unique("late")).await;
    late.subscribe_one(&t, QoS::AtLeastOnce).await;
    late.expect_silence(QUIET).await;
}

#[tokio::test]
async fn the_will_is_not_published_after_disconnect_mqtt_3_1_2_10() {
    let broker = TestBroker::start().await;
    let t = unique("will/disconnect");
    let mut watcher = watcher(&broker, &t).await;
    let client = broker
        .connect_with(with_will(&t, "gone", QoS::AtLeastOnce, true, 60))
        .await;
    client.disconnect().await;
    expect_no_will(&broker, &mut watcher, &t).await;
}

#[tokio::test]
async fn the_will_is_published_on_a_protocol_error_mqtt_4_8_0_1() {
    let broker = TestBroker::start().await;
    let t = unique("will/protocol");
    let mut watcher = watcher(&broker, &t).await;
    let mut client = broker
        .connect_with(with_will(&t, "broken", QoS::AtLeastOnce, false, 60))
        .await;
    // A PUBLISH with QoS 3 [MQTT-3.3.1-4].
    client
        .send_bytes_lossy(&publish_bytes(0x06, b"a/b", Some(1), b"x"))
        .await;
    client.expect_closed().await;
    assert_eq!(&watcher.recv_message().await.payload[..], b"broken");
}

#[tokio::test]
async fn the_will_is_published_after_a_second_connect_mqtt_3_1_0_2() {
    let broker = TestBroker::start().await;
    let t = unique("will/second-connect");
    let mut watcher = watcher(&broker, &t).await;
    let connect = with_will(&t, "twice", QoS::AtLeastOnce, false, 60);
    let mut client = broker.connect_with(connect.clone()).await;
    client.send(connect).await;
    client.expect_closed().await;
    assert_eq!(&watcher.recv_message().await.payload[..], b"twice");
}

#[tokio::test]
async fn a_refused_connect_has_no_will_mqtt_3_1_2_8() {
    let broker = TestBroker::start().await;
    let t = unique("will/refused");
    let mut watcher = watcher(&broker, &t).await;
    // An empty client identifier with a persistent session is refused [MQTT-3.1.3-8].
    let mut connect = with_will(&t, "never", QoS::AtLeastOnce, false, 60);
    connect.client_id = hermes_mqtt::MqttString::from_static("");
    connect.clean_session = false;
    let (mut raw, connack) = broker.raw_connect(connect).await;
    assert_eq!(connack.code, ConnectReturnCode::IdentifierRejected);
    raw.expect_closed().await;
    expect_no_will(&broker, &mut watcher, &t).await;
}

#[tokio::test]
async fn the_will_is_published_when_a_new_connection_takes_over_mqtt_3_1_4_2() {
    // Closing the existing connection is not a DISCONNECT from its client, so its will is
    // published [MQTT-3.1.2-8] (the situations listed in [3.1.2.5] are "not limited to").
    let broker = TestBroker::start().await;
    let t = unique("will/takeover");
    let mut watcher = watcher(&broker, &t).await;
    let connect = with_will(&t, "replaced", QoS::AtLeastOnce, false, 60);
    let mut first = broker.connect_with(connect.clone()).await;
    let mut second = connect;
    second.will = None;
    let _second = broker.connect_with(second).await;
    first.expect_closed().await;
    assert_eq!(&watcher.recv_message().await.payload[..], b"replaced");
}

#[tokio::test]
async fn the_will_is_published_once_mqtt_3_1_2_10() {
    let broker = TestBroker::start().await;
    let t = unique("will/once");
    let mut watcher = watcher(&broker, &t).await;
    let mut client = broker
        .connect_with(with_will(&t, "once", QoS::AtLeastOnce, false, 60))
        .await;
    // A protocol error and the network failing together.
    client
        .send_bytes_lossy(&publish_bytes(0x06, b"a/b", Some(1), b"x"))
        .await;
    client.drop_connection();
    assert_eq!(&watcher.recv_message().await.payload[..], b"once");
    watcher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn the_will_is_published_by_a_rumqttc_client_that_vanishes_mqtt_3_1_2_8() {
    let broker = TestBroker::start().await;
    let t = unique("will/rumqttc");
    let mut watcher = watcher(&broker, &t).await;
    let mut options = client_options(broker.addr(), &unique("rwill"), true);
    options.set_last_will(rumqttc::LastWill::new(
        &t,
        "vanished",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (client, _) = Client::connect_with(options).await;
    drop(client); // stops its event loop, dropping the socket
    assert_eq!(&watcher.recv_message().await.payload[..], b"vanished");
}

#[tokio::test]
async fn the_will_is_not_published_by_a_rumqttc_client_that_disconnects_mqtt_3_1_2_10() {
    let broker = TestBroker::start().await;
    let t = unique("will/rdisconnect");
    let mut watcher = watcher(&broker, &t).await;
    let mut options = client_options(broker.addr(), &unique("rwill"), true);
    options.set_last_will(rumqttc::LastWill::new(
        &t,
        "vanished",
        rumqttc::QoS::AtLeastOnce,
        false,
    ));
    let (client, _) = Client::connect_with(options).await;
    client.disconnect().await;
    expect_no_will(&broker, &mut watcher, &t).await;
}

// --- Keep alive --------------------------------------------------------------------------------

#[tokio::test]
async fn pingreq_gets_pingresp_mqtt_3_12_4_1() {
    let broker = TestBroker::start().await;
    let mut raw = broker.connect(&unique("ping")).await;
    for _ in 0..3 {
        raw.send(Packet::PingReq).await;
        assert_eq!(raw.recv().await, Packet::PingResp);
    }
}

#[tokio::test]
async fn a_silent_client_is_disconnected_after_1_5_keep_alives_and_its_will_published_mqtt_3_1_2_24()
 {
    let broker = TestBroker::start().await;
    let t = unique("will/keepalive");
    let mut watcher = watcher(&broker, &t).await;
    let mut client = broker
        .connect_with(with_will(&t, "timed out", QoS::AtLeastOnce, false, 1))
        .await;
    let start = Instant::now();
    // The client sends nothing. The broker closes within 1.5 s (and some slack), not before
    // the keep alive itself (1 s) has passed.
    client.expect_closed().await;
    let closed = start.elapsed();
    assert!(
        closed >= Duration::from_millis(1000),
        "closed after {closed:?}, before the keep alive of 1 s"
    );
    assert!(
        closed <= Duration::from_millis(3000),
        "closed after {closed:?}, long after 1.5 times the keep alive of 1 s"
    );
    assert_eq!(&watcher.recv_message().await.payload[..], b"timed out");
}

#[tokio::test]
async fn any_packet_resets_the_keep_alive_mqtt_3_1_2_23() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(&unique("alive"));
    connect.keep_alive = 1;
    let mut raw = broker.connect_with(connect).await;
    let t = unique("alive/t");
    // For 3 s, twice the 1.5 s limit: a packet every 600 ms, PINGREQs and PUBLISHes.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        if i % 2 == 0 {
            raw.send(Packet::PingReq).await;
            assert_eq!(raw.recv().await, Packet::PingResp);
        } else {
            raw.send(publish_packet(&t, b"x", QoS::AtMostOnce, 0, false, false))
                .await;
        }
    }
    raw.expect_alive().await;
}

#[tokio::test]
async fn keep_alive_0_turns_the_timeout_off_mqtt_3_1_2_10() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(&unique("no-keepalive"));
    connect.keep_alive = 0;
    let mut raw = broker.connect_with(connect).await;
    raw.expect_silence(Duration::from_millis(2500)).await;
    raw.expect_alive().await;
}

#[tokio::test]
async fn a_connection_that_sends_no_connect_is_closed_mqtt_3_1_4() {
    // "If the Server does not receive a CONNECT Packet within a reasonable amount of time
    // after the Network Connection is established, the Server SHOULD close the connection."
    let Some(broker) = TestBroker::configured("connect_timeout", |c| {
        c.connect_timeout = Duration::from_millis(300);
    })
    .await
    else {
        return;
    };
    let mut silent = broker.raw().await;
    let mut partial = broker.raw().await;
    let connect = wire(connect_packet(&unique("partial")));
    partial.send_bytes(&connect[..connect.len() - 1]).await;
    assert!(
        silent.closes_within(TIMEOUT).await,
        "silent connection kept"
    );
    assert!(partial.closes_within(TIMEOUT).await, "half a CONNECT kept");
}

#[tokio::test]
async fn an_empty_retained_will_clears_the_retained_message_mqtt_3_3_1_10() {
    let broker = TestBroker::start().await;
    let t = unique("will/clear");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"online", QoS::AtLeastOnce, true)
        .await;
    let client = broker
        .connect_with(with_will(&t, "", QoS::AtLeastOnce, true, 60))
        .await;
    let mut watcher = watcher(&broker, &t).await;
    assert_eq!(&watcher.recv_message().await.payload[..], b"online");
    client.drop_connection();
    // Published like any message: delivered empty, and the retained message removed.
    assert!(watcher.recv_message().await.payload.is_empty());
    let mut late = broker.connect(&unique("late")).await;
    late.subscribe_one(&t, QoS::AtLeastOnce).await;
    late.expect_silence(QUIET).await;
}

#[tokio::test]
async fn nothing_after_disconnect_is_processed_mqtt_3_14_4_2() {
    // DISCONNECT ends the connection: a PUBLISH behind it in the same write is not processed,
    // and the will (deleted by the DISCONNECT) is not published either.
    let broker = TestBroker::start().await;
    let t = unique("after-disconnect/t");
    let mut watcher = watcher(&broker, &t).await;
    let mut client = broker
        .connect_with(with_will(&t, "will", QoS::AtLeastOnce, false, 60))
        .await;
    let mut bytes = wire(Packet::Disconnect);
    bytes.extend(wire(publish_packet(
        &t,
        b"late",
        QoS::AtMostOnce,
        0,
        false,
        false,
    )));
    client.send_bytes(&bytes).await;
    client.expect_closed().await;
    expect_no_will(&broker, &mut watcher, &t).await;
}

/// Keep alive is checked by one sweep over the connections, not a timer in each: of several
/// connections with a keep alive of 1 s, the silent ones are closed (not before 1.5 s
/// [MQTT-3.1.2-24], and not long after) with their wills published, and those that keep
/// sending, for three times as long, are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keep_alive_sweep_closes_exactly_the_silent_connections_mqtt_3_1_2_24() {
    let broker = TestBroker::start().await;
    let t = unique("will/sweep");
    let mut watcher = watcher(&broker, &t).await;
    let mut silent = Vec::new();
    let mut busy = Vec::new();
    for i in 0..4 {
        silent.push(
            broker
                .connect_with(with_will(
                    &t,
                    &format!("silent {i}"),
                    QoS::AtLeastOnce,
                    false,
                    1,
                ))
                .await,
        );
        busy.push(
            broker
                .connect_with(with_will(
                    &t,
                    &format!("busy {i}"),
                    QoS::AtLeastOnce,
                    false,
                    1,
                ))
                .await,
        );
    }
    let start = Instant::now();
    let other = unique("sweep/other");
    // The busy ones send a packet every 200 ms (a PUBLISH or a PINGREQ) for 4.5 s.
    let sending = tokio::spawn(async move {
        for round in 0..22 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            for raw in &mut busy {
                if round % 2 == 0 {
                    raw.send(publish_packet(
                        &other,
                        b"x",
                        QoS::AtMostOnce,
                        0,
                        false,
                        false,
                    ))
                    .await;
                } else {
                    raw.ping().await;
                }
            }
        }
        busy
    });
    for raw in &mut silent {
        raw.expect_closed().await;
        let closed = start.elapsed();
        assert!(
            closed >= Duration::from_millis(1450),
            "closed after {closed:?}, before 1.5 times the keep alive of 1 s"
        );
        assert!(
            closed <= Duration::from_millis(3000),
            "closed after {closed:?}, long after 1.5 times the keep alive of 1 s"
        );
    }
    let mut wills: Vec<String> = Vec::new();
    for _ in 0..4 {
        let message = watcher.recv_message().await;
        wills.push(String::from_utf8(message.payload.to_vec()).unwrap());
    }
    wills.sort();
    assert_eq!(wills, ["silent 0", "silent 1", "silent 2", "silent 3"]);
    let mut busy = sending.await.unwrap();
    assert!(start.elapsed() >= Duration::from_secs(4));
    for raw in &mut busy {
        raw.expect_alive().await;
    }
    watcher.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_malformed_disconnect_closes_and_the_will_is_published_mqtt_3_14_1_1() {
    // A DISCONNECT with a reserved flag set, or with a body, is malformed: the connection is
    // closed as for any protocol error [MQTT-4.8.0-1], which is no DISCONNECT, so the will is
    // published [MQTT-3.1.2-8].
    let broker = TestBroker::start().await;
    for (i, bytes) in [&[0xE1, 0x00][..], &[0xE0, 0x01, 0x00]]
        .into_iter()
        .enumerate()
    {
        let t = unique("will/bad-disconnect");
        let mut watcher = watcher(&broker, &t).await;
        let payload = format!("bad disconnect {i}");
        let mut client = broker
            .connect_with(with_will(&t, &payload, QoS::AtLeastOnce, false, 60))
            .await;
        client.send_bytes_lossy(bytes).await;
        client.expect_closed().await;
        assert_eq!(watcher.recv_message().await.payload, payload.as_bytes());
    }
}

#[tokio::test]
async fn the_will_message_is_binary_data() {
    // The will message is binary data, not a string [3.1.3.3]: any bytes, U+0000 and invalid
    // UTF-8 included, are published as they came.
    let broker = TestBroker::start().await;
    let t = unique("will/binary");
    let mut watcher = watcher(&broker, &t).await;
    let mut payload = field(unique("binary").as_bytes());
    payload.extend(field(t.as_bytes()));
    payload.extend(field(&[0xFF, 0x00, 0xC0]));
    let mut client = broker.raw().await;
    // Will flag, will QoS 1, clean session.
    client
        .send_bytes(&connect_bytes(b"MQTT", 4, 0b0000_1110, 60, &payload))
        .await;
    assert_eq!(client.connack().await.code, ConnectReturnCode::Accepted);
    client.drop_connection();
    assert_eq!(
        &watcher.recv_message().await.payload[..],
        &[0xFF, 0x00, 0xC0]
    );
}

/// The keep-alive sweep walks the live connections a map at a time: among 70 connections
/// (over every map), the silent ones are closed, each after its 1.5 keep alives, and the
/// ones that keep sending stay connected and answered throughout.
#[tokio::test]
async fn the_sweep_closes_only_the_silent_connections_mqtt_3_1_2_24() {
    let broker = TestBroker::start().await;
    let mut silent = Vec::new();
    let mut alive = Vec::new();
    for n in 0..70 {
        let mut connect = connect_packet(&unique("sweep"));
        connect.keep_alive = 1;
        let raw = broker.connect_with(connect).await;
        if n % 7 == 0 {
            silent.push(raw);
        } else {
            alive.push(raw);
        }
    }
    let start = Instant::now();
    // For 2.4 s, past the silent ones' 1.5 s: the others send a PINGREQ every 400 ms.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        for raw in &mut alive {
            raw.send(Packet::PingReq).await;
            assert_eq!(raw.recv().await, Packet::PingResp);
        }
    }
    for raw in &mut silent {
        raw.expect_closed().await;
    }
    let closed = start.elapsed();
    assert!(
        closed <= Duration::from_millis(4000),
        "the silent connections closed after {closed:?}, long after their 1.5 s"
    );
    for raw in &mut alive {
        raw.expect_alive().await;
    }
}
