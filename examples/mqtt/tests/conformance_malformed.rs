//! Conformance, malformed input [4.8], [1.5.3], [2.2], [2.3.1]: each closes that connection,
//! without an answer, and the broker goes on serving the others.

mod support;

use std::time::Duration;

use hermes_mqtt::{ConnectReturnCode, Packet, QoS};
use support::*;

/// A connected client sends `bytes` (after its CONNECT's CONNACK): the broker closes that
/// connection, answering nothing, while a client connected beforehand keeps working and new
/// clients can connect.
async fn closes_only_that_connection(broker: &TestBroker, bytes: &[u8]) {
    let t = unique("bystander/t");
    let mut bystander = broker.connect(&unique("bystander")).await;
    bystander.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut victim = broker.connect(&unique("victim")).await;
    victim.send_bytes_lossy(bytes).await;
    match victim.next(TIMEOUT).await {
        Next::Closed => {}
        other => panic!("after {bytes:02x?}: expected the connection closed, got {other:?}"),
    }
    bystander.expect_alive().await;
    let mut newcomer = broker.connect(&unique("newcomer")).await;
    newcomer
        .publish(&t, b"still here", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&bystander.recv_message().await.payload[..], b"still here");
}

#[tokio::test]
async fn remaining_length_over_4_bytes_closes_2_2_3() {
    let broker = TestBroker::start().await;
    closes_only_that_connection(&broker, &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]).await;
}

#[tokio::test]
async fn a_remaining_length_over_4_bytes_closes_before_connect_2_2_3() {
    let broker = TestBroker::start().await;
    broker
        .closes_on_first(&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01])
        .await;
}

#[tokio::test]
async fn reserved_packet_types_close_2_2_1() {
    let broker = TestBroker::start().await;
    closes_only_that_connection(&broker, &[0x00, 0x00]).await;
    closes_only_that_connection(&broker, &[0xF0, 0x00]).await;
}

#[tokio::test]
async fn garbage_instead_of_connect_closes() {
    let broker = TestBroker::start().await;
    broker
        .closes_on_first(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    broker.closes_on_first(&[0xFF; 64]).await;
}

#[tokio::test]
async fn packets_only_a_server_sends_close_the_connection_mqtt_4_8_0_1() {
    let broker = TestBroker::start().await;
    for bytes in [
        vec![0x20, 0x02, 0x00, 0x00],       // CONNACK
        vec![0x90, 0x03, 0x00, 0x01, 0x00], // SUBACK
        vec![0xB0, 0x02, 0x00, 0x01],       // UNSUBACK
        vec![0xD0, 0x00],                   // PINGRESP
    ] {
        closes_only_that_connection(&broker, &bytes).await;
    }
}

#[tokio::test]
async fn wrong_fixed_header_flags_close_mqtt_2_2_2_2() {
    let broker = TestBroker::start().await;
    for bytes in [
        vec![0xC1, 0x00],             // PINGREQ with a flag
        vec![0xE2, 0x00],             // DISCONNECT with a flag
        vec![0x41, 0x02, 0x00, 0x01], // PUBACK with a flag
        vec![0x60, 0x02, 0x00, 0x01], // PUBREL without its 0010 [MQTT-3.6.1-1]
    ] {
        closes_only_that_connection(&broker, &bytes).await;
    }
}

#[tokio::test]
async fn fixed_size_packets_with_another_length_close_2_2_3() {
    let broker = TestBroker::start().await;
    for bytes in [
        vec![0xC0, 0x01, 0x00],             // PINGREQ with a body
        vec![0x40, 0x03, 0x00, 0x01, 0x00], // PUBACK of 3 bytes
        vec![0x40, 0x01, 0x00],             // PUBACK of 1 byte
    ] {
        closes_only_that_connection(&broker, &bytes).await;
    }
}

#[tokio::test]
async fn lengths_that_do_not_add_up_close() {
    let broker = TestBroker::start().await;
    // A PUBLISH whose topic length runs past the end of the packet.
    closes_only_that_connection(&broker, &[0x30, 0x04, 0x00, 0x10, b'a', b'b']).await;
    // A QoS 1 PUBLISH too short for its packet identifier.
    closes_only_that_connection(&broker, &[0x32, 0x04, 0x00, 0x01, b'a', 0x00]).await;
    // A SUBSCRIBE whose last filter has no QoS byte.
    closes_only_that_connection(&broker, &[0x82, 0x05, 0x00, 0x01, 0x00, 0x01, b'a']).await;
}

#[tokio::test]
async fn invalid_utf8_in_a_topic_closes_mqtt_1_5_3_1() {
    let broker = TestBroker::start().await;
    // A lone continuation byte, an overlong '/', an encoded surrogate (U+D800).
    for name in [&b"a/\x80"[..], b"a\xC0\xAFb", b"a/\xED\xA0\x80"] {
        closes_only_that_connection(&broker, &publish_bytes(0, name, None, b"x")).await;
        closes_only_that_connection(&broker, &subscribe_bytes(0x02, 1, &[(name, 0)])).await;
    }
}

#[tokio::test]
async fn a_null_character_in_a_topic_closes_mqtt_1_5_3_2() {
    let broker = TestBroker::start().await;
    closes_only_that_connection(&broker, &publish_bytes(0, b"a/\0/b", None, b"x")).await;
    closes_only_that_connection(&broker, &subscribe_bytes(0x02, 1, &[(b"a/\0", 0)])).await;
}

#[tokio::test]
async fn a_malformed_topic_is_not_delivered_mqtt_1_5_3_1() {
    let broker = TestBroker::start().await;
    let r = unique("bad-utf8");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&format!("{r}/#"), QoS::AtMostOnce).await;
    let mut bad = broker.connect(&unique("bad")).await;
    let mut name = format!("{r}/").into_bytes();
    name.extend_from_slice(b"\xFF\0");
    bad.send_bytes_lossy(&publish_bytes(0, &name, None, b"bad"))
        .await;
    bad.expect_closed().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&format!("{r}/ok"), b"ok", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"ok");
}

#[tokio::test]
async fn invalid_strings_in_connect_close_mqtt_1_5_3() {
    let broker = TestBroker::start().await;
    // A client identifier with U+0000, with invalid UTF-8.
    for id in [&b"client\0id"[..], b"client\xFF"] {
        broker
            .closes_on_first(&connect_bytes(b"MQTT", 4, 0x02, 60, &field(id)))
            .await;
    }
    // A will topic with invalid UTF-8 [MQTT-1.5.3-1], a user name with U+0000.
    let mut will = field(unique("w").as_bytes());
    will.extend(field(b"will/\xC3"));
    will.extend(field(b"payload"));
    broker
        .closes_on_first(&connect_bytes(b"MQTT", 4, 0x06, 60, &will))
        .await;
    let mut login = field(unique("u").as_bytes());
    login.extend(field(b"us\0er"));
    broker
        .closes_on_first(&connect_bytes(b"MQTT", 4, 0x82, 60, &login))
        .await;
}

#[tokio::test]
async fn a_will_topic_that_is_no_topic_name_closes_mqtt_3_1_2_9() {
    let broker = TestBroker::start().await;
    // Wildcards [MQTT-4.7.1-1], or empty [MQTT-4.7.3-1].
    for will_topic in [&b"will/+"[..], b"will/#", b""] {
        let mut payload = field(unique("bad-will").as_bytes());
        payload.extend(field(will_topic));
        payload.extend(field(b"payload"));
        broker
            .closes_on_first(&connect_bytes(b"MQTT", 4, 0x06, 60, &payload))
            .await;
    }
}

#[tokio::test]
async fn packet_id_0_closes_mqtt_2_3_1_1() {
    let broker = TestBroker::start().await;
    closes_only_that_connection(&broker, &publish_bytes(0x02, b"a/b", Some(0), b"x")).await;
    closes_only_that_connection(&broker, &publish_bytes(0x04, b"a/b", Some(0), b"x")).await;
    closes_only_that_connection(&broker, &[0x40, 0x02, 0x00, 0x00]).await; // PUBACK 0
    closes_only_that_connection(&broker, &[0x62, 0x02, 0x00, 0x00]).await; // PUBREL 0
    closes_only_that_connection(&broker, &frame(0xA2, &[0, 0, 0, 1, b'a'])).await; // UNSUBSCRIBE 0
}

#[tokio::test]
async fn a_truncated_packet_then_close_is_not_delivered() {
    let broker = TestBroker::start().await;
    let t = unique("truncated/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut client = broker.connect(&unique("cut")).await;
    let whole = wire(publish_packet(
        &t,
        b"cut short",
        QoS::AtMostOnce,
        0,
        false,
        false,
    ));
    client.send_bytes(&whole[..whole.len() - 3]).await;
    client.shutdown_write().await;
    // The broker sees the end of the stream and closes its side too.
    match client.next(TIMEOUT).await {
        Next::Closed => {}
        other => panic!("expected the connection closed, got {other:?}"),
    }
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"whole", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"whole");
}

#[tokio::test]
async fn a_truncated_connect_then_close_is_closed() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    let connect = wire(connect_packet(&unique("cut")));
    raw.send_bytes(&connect[..5]).await;
    raw.shutdown_write().await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn a_huge_declared_length_closes_without_waiting_for_the_bytes() {
    let broker = TestBroker::start().await;
    // 268,435,455 bytes declared (the largest), far over the default limit of 1 MiB: closed
    // on the header alone.
    closes_only_that_connection(&broker, &[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
}

#[tokio::test]
async fn a_packet_over_max_packet_size_closes() {
    let Some(broker) =
        TestBroker::configured("max_packet_size", |c| c.max_packet_size = 1024).await
    else {
        return;
    };
    let t = unique("size/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    // 1024 bytes in all is allowed.
    let header = wire(publish_packet(&t, b"", QoS::AtMostOnce, 0, false, false)).len() + 1;
    let fits = vec![b'x'; 1024 - header];
    let packet = wire(publish_packet(&t, &fits, QoS::AtMostOnce, 0, false, false));
    assert_eq!(packet.len(), 1024);
    publisher.send_bytes(&packet).await;
    assert_eq!(sub.recv_publish().await.payload.len(), fits.len());
    // One byte more is not.
    let over = vec![b'x'; fits.len() + 1];
    closes_only_that_connection(
        &broker,
        &wire(publish_packet(&t, &over, QoS::AtMostOnce, 0, false, false)),
    )
    .await;
    sub.expect_silence(QUIET).await;
    publisher.expect_alive().await;
}

#[tokio::test]
async fn a_connect_over_max_packet_size_closes() {
    let Some(broker) = TestBroker::configured("max_packet_size", |c| c.max_packet_size = 256).await
    else {
        return;
    };
    let mut connect = connect_packet(&unique("big"));
    connect.will = Some(will("will/t", &"x".repeat(300), QoS::AtMostOnce, false));
    broker.closes_on_first(&wire(connect)).await;
}

#[tokio::test]
async fn a_connect_sent_byte_by_byte_is_accepted() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    for byte in wire(connect_packet(&unique("slow"))) {
        raw.send_bytes(&[byte]).await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(raw.connack().await.code, ConnectReturnCode::Accepted);
}

#[tokio::test]
async fn packets_coalesced_in_one_write_are_all_processed() {
    let broker = TestBroker::start().await;
    let t = unique("coalesced/t");
    let mut raw = broker.raw().await;
    let mut bytes = wire(connect_packet(&unique("coalesced")));
    bytes.extend(wire(subscribe_packet(1, &[(&t, QoS::AtLeastOnce)])));
    for id in 2..5 {
        bytes.extend(wire(publish_packet(
            &t,
            &[id as u8],
            QoS::AtLeastOnce,
            id,
            false,
            false,
        )));
    }
    bytes.extend(wire(Packet::PingReq));
    raw.send_bytes(&bytes).await;
    assert_eq!(raw.connack().await.code, ConnectReturnCode::Accepted);
    let mut acks = Vec::new();
    let mut delivered = Vec::new();
    while acks.len() < 5 {
        match raw.recv().await {
            Packet::Publish(p) => {
                raw.ack(&p).await;
                delivered.push(p.payload[0]);
            }
            other => acks.push(other),
        }
    }
    assert!(matches!(acks[0], Packet::SubAck(_)), "{acks:?}");
    assert_eq!(
        acks[1..],
        [
            Packet::PubAck(pid(2)),
            Packet::PubAck(pid(3)),
            Packet::PubAck(pid(4)),
            Packet::PingResp
        ]
    );
    while delivered.len() < 3 {
        let p = raw.recv_message().await;
        delivered.push(p.payload[0]);
    }
    assert_eq!(delivered, [2, 3, 4]);
}

#[tokio::test]
async fn a_leading_bom_is_kept_and_matched_as_is_mqtt_1_5_3_3() {
    // U+FEFF at the start of a string is a character like any other, not a byte order mark
    // to skip or strip [MQTT-1.5.3-3]: a topic with it is not the topic without it.
    let broker = TestBroker::start().await;
    let t = unique("bom");
    let with_bom = format!("\u{FEFF}{t}");
    let mut sub = broker.connect(&unique("bom-sub")).await;
    sub.subscribe(&[(&with_bom, QoS::AtMostOnce), (&t, QoS::AtMostOnce)])
        .await;
    let mut publisher = broker.connect(&unique("bom-pub")).await;
    publisher
        .publish(&with_bom, b"with", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish(&t, b"without", QoS::AtLeastOnce, false)
        .await;
    let got = sub.recv_messages(2).await;
    assert_eq!(payloads(&got), ["with", "without"]);
    assert_eq!(got[0].topic.as_str(), with_bom, "the BOM was stripped");
    assert_eq!(got[1].topic.as_str(), t);
    sub.expect_silence(QUIET).await;
}
