//! Conformance, PUBLISH and its acknowledgements [3.3] to [3.7], QoS [4.3], ordering [4.6]
//! and retained messages [3.3.1.3].

mod support;

use std::collections::{BTreeMap, HashSet};

use hermes_mqtt::{Packet, Publish, PublishQos, QoS};
use support::*;

const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

fn rumqttc_qos(qos: QoS) -> rumqttc::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
    }
}

// --- QoS flows, client to broker ---------------------------------------------------------------

#[tokio::test]
async fn qos_1_publish_gets_puback_with_its_packet_id_mqtt_4_3_2_2() {
    let broker = TestBroker::start().await;
    let mut raw = broker.connect(&unique("q1")).await;
    let t = unique("q1/t");
    raw.send(publish_packet(
        &t,
        b"m",
        QoS::AtLeastOnce,
        0x1234,
        false,
        false,
    ))
    .await;
    assert_eq!(raw.recv().await, Packet::PubAck(pid(0x1234)));
}

#[tokio::test]
async fn qos_2_publish_gets_pubrec_and_pubrel_gets_pubcomp_mqtt_4_3_3_2() {
    let broker = TestBroker::start().await;
    let mut raw = broker.connect(&unique("q2")).await;
    let t = unique("q2/t");
    raw.send(publish_packet(
        &t,
        b"m",
        QoS::ExactlyOnce,
        0xABCD,
        false,
        false,
    ))
    .await;
    assert_eq!(raw.recv().await, Packet::PubRec(pid(0xABCD)));
    raw.send(Packet::PubRel(pid(0xABCD))).await;
    assert_eq!(raw.recv().await, Packet::PubComp(pid(0xABCD)));
}

#[tokio::test]
async fn qos_0_publish_gets_no_acknowledgement_mqtt_4_3_1() {
    let broker = TestBroker::start().await;
    let mut raw = broker.connect(&unique("q0")).await;
    raw.send(publish_packet(
        &unique("q0/t"),
        b"m",
        QoS::AtMostOnce,
        0,
        false,
        false,
    ))
    .await;
    // The PINGRESP is the first thing back: no PUBACK or PUBREC came before it.
    raw.expect_alive().await;
}

#[tokio::test]
async fn pubrel_for_an_unknown_packet_id_gets_pubcomp_mqtt_4_3_3_2() {
    let broker = TestBroker::start().await;
    let mut raw = broker.connect(&unique("pubrel")).await;
    // A PUBREL resent after the broker's PUBCOMP was lost: answered all the same.
    raw.release(4242).await;
}

#[tokio::test]
async fn qos_2_is_delivered_once_when_the_publish_is_resent_before_pubrel_mqtt_4_3_3_2() {
    let broker = TestBroker::start().await;
    let t = unique("once/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish_unreleased(&t, b"exactly once", 7, false)
        .await;
    // The PUBREC was "lost": the client sends the PUBLISH again, DUP 1, same identifier. The
    // broker answers PUBREC again but must not deliver the message again.
    publisher
        .publish_unreleased(&t, b"exactly once", 7, true)
        .await;
    publisher.release(7).await;
    // After the PUBREL the identifier is free: the same identifier is a new message.
    publisher.publish_unreleased(&t, b"next", 7, false).await;
    publisher.release(7).await;

    let first = sub.recv_message().await;
    assert_eq!(&first.payload[..], b"exactly once");
    let second = sub.recv_message().await;
    assert_eq!(
        &second.payload[..],
        b"next",
        "the first message was delivered twice"
    );
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn qos_2_resent_with_dup_while_subscriber_is_offline_is_queued_once_mqtt_4_3_3_2() {
    let broker = TestBroker::start().await;
    let t = unique("once-offline/t");
    let id = unique("sub");
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    sub.disconnect().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish_unreleased(&t, b"one", 9, false).await;
    publisher.publish_unreleased(&t, b"one", 9, true).await;
    publisher.release(9).await;
    publisher
        .publish(&t, b"marker", QoS::ExactlyOnce, false)
        .await;

    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    let got = sub.recv_messages(2).await;
    assert_eq!(payloads(&got), ["one", "marker"]);
    sub.expect_silence(QUIET).await;
}

// --- QoS flows, broker to client ---------------------------------------------------------------

#[tokio::test]
async fn qos_0_is_delivered_at_qos_0_without_packet_id_mqtt_2_3_1_5() {
    let broker = TestBroker::start().await;
    let t = unique("d0/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"zero", QoS::AtMostOnce, false).await;
    let got = sub.recv_publish().await;
    assert_eq!(got.qos, PublishQos::AtMostOnce);
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        (t.as_str(), &b"zero"[..])
    );
    assert!(!got.retain);
}

#[tokio::test]
async fn qos_1_is_delivered_with_a_packet_id_and_dup_0_mqtt_4_3_2_1() {
    let broker = TestBroker::start().await;
    let t = unique("d1/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"one", QoS::AtLeastOnce, false).await;
    let got = sub.recv_publish().await;
    let PublishQos::AtLeastOnce { packet_id, dup } = got.qos else {
        panic!("expected QoS 1, got {got:?}");
    };
    assert!(!dup, "a first delivery has DUP 0 [MQTT-3.3.1-1]");
    sub.send(Packet::PubAck(packet_id)).await;
    // Acknowledged: nothing is sent again on this connection.
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn qos_2_is_delivered_with_pubrec_pubrel_pubcomp_mqtt_4_3_3_1() {
    let broker = TestBroker::start().await;
    let t = unique("d2/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"two", QoS::ExactlyOnce, false).await;
    let got = sub.recv_publish().await;
    let PublishQos::ExactlyOnce { packet_id, dup } = got.qos else {
        panic!("expected QoS 2, got {got:?}");
    };
    assert!(!dup);
    sub.send(Packet::PubRec(packet_id)).await;
    assert_eq!(
        sub.recv().await,
        Packet::PubRel(packet_id),
        "[MQTT-4.3.3-1]"
    );
    sub.send(Packet::PubComp(packet_id)).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn the_incoming_dup_flag_is_not_propagated_mqtt_3_3_1_3() {
    let broker = TestBroker::start().await;
    let t = unique("dup/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .send(publish_packet(
            &t,
            b"resent",
            QoS::AtLeastOnce,
            3,
            true,
            false,
        ))
        .await;
    assert_eq!(publisher.recv().await, Packet::PubAck(pid(3)));
    let got = sub.recv_message().await;
    assert!(
        !got.qos.dup(),
        "DUP is set only for the broker's own redelivery"
    );
}

#[tokio::test]
async fn delivered_qos_is_the_minimum_of_published_and_granted_mqtt_3_8_4_6() {
    let broker = TestBroker::start().await;
    let root = unique("minqos");
    let mut sub = broker.connect(&unique("sub")).await;
    for granted in QOS {
        sub.subscribe_one(&format!("{root}/{}", granted as u8), granted)
            .await;
    }
    let mut publisher = broker.connect(&unique("pub")).await;
    for granted in QOS {
        for published in QOS {
            let t = format!("{root}/{}", granted as u8);
            let payload = format!("{}", published as u8);
            publisher
                .publish(&t, payload.as_bytes(), published, false)
                .await;
        }
    }
    let mut got = BTreeMap::new();
    for _ in 0..9 {
        let p = sub.recv_message().await;
        let key = (
            p.topic.to_string(),
            String::from_utf8_lossy(&p.payload).into_owned(),
        );
        assert!(
            got.insert(key, p.qos.qos()).is_none(),
            "delivered twice: {p:?}"
        );
    }
    for granted in QOS {
        for published in QOS {
            let key = (
                format!("{root}/{}", granted as u8),
                format!("{}", published as u8),
            );
            assert_eq!(
                got[&key],
                published.min(granted),
                "published at {published:?} to a subscription granted {granted:?}"
            );
        }
    }
}

#[tokio::test]
async fn qos_round_trips_with_rumqttc_clients() {
    let broker = TestBroker::start().await;
    for qos in QOS {
        let t = unique("rqos/t");
        let mut sub = broker.client(&unique("rsub")).await;
        let codes = sub.subscribe(&t, rumqttc_qos(qos)).await;
        let granted = match qos {
            QoS::AtMostOnce => rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtMostOnce),
            QoS::AtLeastOnce => rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce),
            QoS::ExactlyOnce => rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::ExactlyOnce),
        };
        assert_eq!(codes, [granted]);
        let mut publisher = broker.client(&unique("rpub")).await;
        publisher
            .publish(&t, b"payload", rumqttc_qos(qos), false)
            .await;
        let got = sub.recv_publish().await;
        assert_eq!(
            (got.topic.as_str(), &got.payload[..]),
            (t.as_str(), &b"payload"[..])
        );
        assert_eq!(got.qos, rumqttc_qos(qos));
        assert!(!got.retain);
        sub.expect_no_publish(QUIET).await;
    }
}

#[tokio::test]
async fn outgoing_packet_ids_in_flight_are_distinct_and_non_zero_mqtt_2_3_1_4() {
    let broker = TestBroker::start().await;
    let t = unique("ids/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for i in 0..10 {
        publisher
            .publish(&t, format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    // None acknowledged: ten messages in flight at once (the default window is 20).
    let mut ids = HashSet::new();
    for i in 0..10 {
        let p = sub.recv_publish().await;
        assert_eq!(String::from_utf8_lossy(&p.payload), format!("{i}"));
        let id = p.qos.packet_id().expect("QoS 1 has a packet id");
        assert!(ids.insert(id), "packet id {id} reused while in flight");
    }
}

#[tokio::test]
async fn the_inflight_window_holds_back_messages_until_acknowledged() {
    let Some(broker) = TestBroker::configured("inflight", |c| {
        c.max_inflight = 2.try_into().unwrap();
    })
    .await
    else {
        return;
    };
    let t = unique("window/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for i in 0..6 {
        publisher
            .publish(&t, format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    let first = [sub.recv_publish().await, sub.recv_publish().await];
    assert_eq!(payloads(&first), ["0", "1"]);
    sub.expect_silence(QUIET).await;
    // Each acknowledgement lets one more through, in order [MQTT-4.6.0-6].
    let mut rest = Vec::new();
    let mut unacked = first.to_vec();
    while rest.len() < 4 {
        let p = unacked.remove(0);
        sub.ack(&p).await;
        let next = sub.recv_publish().await;
        rest.push(next.clone());
        unacked.push(next);
    }
    assert_eq!(payloads(&rest), ["2", "3", "4", "5"]);
}

// --- Ordering [4.6] ----------------------------------------------------------------------------

/// Many messages on one topic at `qos`, published back to back without waiting for
/// acknowledgements, arrive in order; the broker's acknowledgements come in order too. QoS 2
/// goes in bursts of 10 unreleased messages, as a client's window would allow (Mosquitto, for
/// one, drops incoming QoS 2 messages past 20 unreleased).
async fn ordered(qos: QoS) {
    const N: u16 = 200;
    const BURST: u16 = 10;
    let broker = TestBroker::start().await;
    let t = unique("order/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, qos).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    let bursts: Vec<Vec<u16>> = if qos == QoS::ExactlyOnce {
        (1..=N)
            .collect::<Vec<_>>()
            .chunks(usize::from(BURST))
            .map(<[u16]>::to_vec)
            .collect()
    } else {
        vec![(1..=N).collect()]
    };
    for ids in bursts {
        let mut burst = Vec::new();
        for &i in &ids {
            let payload = format!("{i}");
            burst.extend(wire(publish_packet(
                &t,
                payload.as_bytes(),
                qos,
                i,
                false,
                false,
            )));
        }
        publisher.send_bytes(&burst).await;
        for &i in &ids {
            match qos {
                QoS::AtMostOnce => {}
                // PUBACKs in the order of the PUBLISHes [MQTT-4.6.0-2].
                QoS::AtLeastOnce => assert_eq!(publisher.recv().await, Packet::PubAck(pid(i))),
                // PUBRECs in the order of the PUBLISHes [MQTT-4.6.0-3].
                QoS::ExactlyOnce => assert_eq!(publisher.recv().await, Packet::PubRec(pid(i))),
            }
        }
        if qos == QoS::ExactlyOnce {
            let rels: Vec<u8> = ids
                .iter()
                .flat_map(|&i| wire(Packet::PubRel(pid(i))))
                .collect();
            publisher.send_bytes(&rels).await;
            for &i in &ids {
                assert_eq!(publisher.recv().await, Packet::PubComp(pid(i)));
            }
        }
    }
    for i in 1..=N {
        let p = sub.recv_message().await;
        assert_eq!(
            String::from_utf8_lossy(&p.payload),
            format!("{i}"),
            "out of order [MQTT-4.6.0-6]"
        );
    }
}

#[tokio::test]
async fn qos_0_messages_on_one_topic_keep_their_order_mqtt_4_6_0_6() {
    ordered(QoS::AtMostOnce).await;
}

#[tokio::test]
async fn qos_1_messages_on_one_topic_keep_their_order_mqtt_4_6_0_6() {
    ordered(QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn qos_2_messages_on_one_topic_keep_their_order_mqtt_4_6_0_6() {
    ordered(QoS::ExactlyOnce).await;
}

#[tokio::test]
async fn messages_keep_their_order_through_rumqttc_mqtt_4_6_0_6() {
    let broker = TestBroker::start().await;
    let t = unique("rorder/t");
    let mut sub = broker.client(&unique("rsub")).await;
    sub.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let publisher = broker.client(&unique("rpub")).await;
    for i in 0..300 {
        publisher
            .client
            .publish(&t, rumqttc::QoS::AtLeastOnce, false, format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..300 {
        let p = sub.recv_publish().await;
        assert_eq!(String::from_utf8_lossy(&p.payload), format!("{i}"));
    }
}

// --- Overlapping subscriptions [3.3.5] ---------------------------------------------------------

#[tokio::test]
async fn overlapping_subscriptions_deliver_at_the_maximum_qos_mqtt_3_3_5_1() {
    let broker = TestBroker::start().await;
    let root = unique("overlap");
    let mut sub = broker.connect(&unique("sub")).await;
    let codes = sub
        .subscribe(&[
            (&format!("{root}/+"), QoS::AtMostOnce),
            (&format!("{root}/#"), QoS::ExactlyOnce),
            (&format!("{root}/x"), QoS::AtLeastOnce),
        ])
        .await;
    assert_eq!(codes.len(), 3);
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&format!("{root}/x"), b"m", QoS::ExactlyOnce, false)
        .await;
    publisher
        .publish(&format!("{root}/marker"), b"marker", QoS::AtMostOnce, false)
        .await;
    // The first copy is at the highest granted QoS. The specification allows further copies,
    // one per other matching subscription at its own QoS [3.3.5]; the marker ends them.
    let mut copies = Vec::new();
    loop {
        let p = sub.recv_message().await;
        if &p.payload[..] == b"marker" {
            break;
        }
        copies.push(p.qos.qos());
    }
    assert!(
        copies.contains(&QoS::ExactlyOnce),
        "no copy at the maximum QoS of the matching subscriptions: {copies:?}"
    );
    assert!(
        copies.len() <= 3,
        "more copies than subscriptions: {copies:?}"
    );
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once() {
    // The specification allows a copy per matching subscription [3.3.5]; the broker documents
    // that it delivers one, at the maximum QoS, and real clients count on it.
    if external().is_some() {
        eprintln!("skipped: the specification allows a copy per subscription");
        return;
    }
    let broker = TestBroker::start().await;
    let root = unique("once");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe(&[
        (&format!("{root}/+"), QoS::AtLeastOnce),
        (&format!("{root}/#"), QoS::AtMostOnce),
        ("#", QoS::AtMostOnce),
    ])
    .await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&format!("{root}/x"), b"m", QoS::AtLeastOnce, false)
        .await;
    let got = sub.recv_message().await;
    assert_eq!(got.qos.qos(), QoS::AtLeastOnce);
    sub.expect_silence(QUIET).await;
}

// --- Invalid PUBLISH ---------------------------------------------------------------------------

#[tokio::test]
async fn wildcards_in_a_publish_topic_close_the_connection_mqtt_3_3_2_2() {
    let broker = TestBroker::start().await;
    for name in [&b"a/+"[..], b"a/#", b"#", b"+", b"a+b"] {
        broker
            .closes_after_connect_on(&publish_bytes(0x02, name, Some(1), b"x"))
            .await;
    }
}

#[tokio::test]
async fn a_publish_with_a_wildcard_topic_is_not_delivered_mqtt_3_3_2_2() {
    let broker = TestBroker::start().await;
    let root = unique("wild-deliver");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&format!("{root}/#"), QoS::AtMostOnce)
        .await;
    broker
        .closes_after_connect_on(&publish_bytes(
            0,
            format!("{root}/+").as_bytes(),
            None,
            b"bad",
        ))
        .await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&format!("{root}/marker"), b"marker", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"marker");
}

#[tokio::test]
async fn an_empty_publish_topic_closes_the_connection_mqtt_4_7_3_1() {
    let broker = TestBroker::start().await;
    broker
        .closes_after_connect_on(&publish_bytes(0, b"", None, b"x"))
        .await;
}

#[tokio::test]
async fn publish_qos_3_closes_the_connection_mqtt_3_3_1_4() {
    let broker = TestBroker::start().await;
    broker
        .closes_after_connect_on(&publish_bytes(0x06, b"a/b", Some(1), b"x"))
        .await;
}

#[tokio::test]
async fn publish_qos_0_with_dup_closes_the_connection_mqtt_3_3_1_2() {
    let broker = TestBroker::start().await;
    broker
        .closes_after_connect_on(&publish_bytes(0x08, b"a/b", None, b"x"))
        .await;
}

// --- Payloads and topics -----------------------------------------------------------------------

#[tokio::test]
async fn payloads_arrive_intact_empty_binary_and_large() {
    let broker = TestBroker::start().await;
    let t = unique("payload/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    let binary: Vec<u8> = (0..=255).collect();
    let large: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for payload in [&b""[..], &binary, &large] {
        publisher
            .publish(&t, payload, QoS::AtLeastOnce, false)
            .await;
        let got = sub.recv_message().await;
        assert_eq!(got.payload.len(), payload.len());
        assert!(got.payload[..] == payload[..], "payload changed");
    }
}

#[tokio::test]
async fn topics_are_matched_exactly_case_and_empty_levels_included_mqtt_4_7_3_4() {
    let broker = TestBroker::start().await;
    let root = unique("exact");
    let names = [
        format!("{root}/a"),
        format!("{root}/A"),
        format!("{root}/a/"),
        format!("{root}//a"),
        format!("{root}/a b"),
        format!("{root}/température/€"),
    ];
    let mut sub = broker.connect(&unique("sub")).await;
    for name in &names {
        sub.subscribe_one(name, QoS::AtLeastOnce).await;
    }
    let mut publisher = broker.connect(&unique("pub")).await;
    for name in &names {
        publisher
            .publish(name, name.as_bytes(), QoS::AtLeastOnce, false)
            .await;
        let got = sub.recv_message().await;
        // Each name reaches its own subscription only: one copy, the same name.
        assert_eq!(got.topic.as_str(), name);
        assert_eq!(&got.payload[..], name.as_bytes());
    }
    sub.expect_silence(QUIET).await;
}

// --- Retained messages [3.3.1.3] ---------------------------------------------------------------

/// A new subscriber to `t` at `qos`; the retained message it gets, if any within [`QUIET`].
async fn retained_for_new_subscriber(broker: &TestBroker, t: &str, qos: QoS) -> Option<Publish> {
    let mut sub = broker.connect(&unique("late")).await;
    sub.subscribe_one(t, qos).await;
    match sub.next(QUIET).await {
        Next::Packet(Packet::Publish(p)) => {
            sub.ack(&p).await;
            Some(p)
        }
        Next::Nothing => None,
        other => panic!("expected a retained PUBLISH or nothing, got {other:?}"),
    }
}

#[tokio::test]
async fn a_new_subscription_gets_the_retained_message_with_retain_1_mqtt_3_3_1_8() {
    let broker = TestBroker::start().await;
    let t = unique("retain/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"kept", QoS::AtLeastOnce, true).await;
    let got = retained_for_new_subscriber(&broker, &t, QoS::AtLeastOnce)
        .await
        .expect("the retained message [MQTT-3.3.1-6]");
    assert_eq!(&got.payload[..], b"kept");
    assert!(got.retain, "RETAIN 1 for a new subscription [MQTT-3.3.1-8]");
    assert_eq!(
        got.qos.qos(),
        QoS::AtLeastOnce,
        "stored with its QoS [MQTT-3.3.1-5]"
    );
}

#[tokio::test]
async fn retained_messages_are_sent_at_the_minimum_qos_mqtt_3_8_4_6() {
    let broker = TestBroker::start().await;
    let t = unique("retain-qos/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"r", QoS::ExactlyOnce, true).await;
    for granted in QOS {
        let got = retained_for_new_subscriber(&broker, &t, granted)
            .await
            .expect("the retained message");
        assert_eq!(got.qos.qos(), granted);
        assert!(got.retain);
    }
}

#[tokio::test]
async fn forwarding_to_an_established_subscription_clears_retain_mqtt_3_3_1_9() {
    let broker = TestBroker::start().await;
    let t = unique("retain-fwd/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"live", QoS::AtLeastOnce, true).await;
    let got = sub.recv_message().await;
    assert_eq!(&got.payload[..], b"live");
    assert!(
        !got.retain,
        "RETAIN 0 through an established subscription [MQTT-3.3.1-9]"
    );
}

#[tokio::test]
async fn a_retained_message_replaces_the_previous_one_mqtt_3_3_1_5() {
    let broker = TestBroker::start().await;
    let t = unique("retain-replace/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"first", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish(&t, b"second", QoS::AtLeastOnce, true)
        .await;
    let got = retained_for_new_subscriber(&broker, &t, QoS::AtLeastOnce)
        .await
        .expect("the retained message");
    assert_eq!(&got.payload[..], b"second");
}

#[tokio::test]
async fn a_retained_qos_0_message_replaces_the_previous_one_mqtt_3_3_1_7() {
    let broker = TestBroker::start().await;
    let t = unique("retain-q0/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"old", QoS::ExactlyOnce, true).await;
    publisher.publish(&t, b"new", QoS::AtMostOnce, true).await;
    // The old message MUST be discarded; the new one SHOULD be kept (MAY be discarded).
    let got = retained_for_new_subscriber(&broker, &t, QoS::ExactlyOnce).await;
    if let Some(got) = got {
        assert_eq!(
            &got.payload[..],
            b"new",
            "the old retained message was kept"
        );
        assert_eq!(got.qos.qos(), QoS::AtMostOnce);
    }
}

#[tokio::test]
async fn an_empty_retained_message_clears_and_is_still_delivered_mqtt_3_3_1_10() {
    let broker = TestBroker::start().await;
    let t = unique("retain-clear/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"kept", QoS::AtLeastOnce, true).await;
    assert_eq!(&sub.recv_message().await.payload[..], b"kept");
    publisher.publish(&t, b"", QoS::AtLeastOnce, true).await;
    // Processed as normal: the established subscriber gets the empty message
    // [MQTT-3.3.1-10].
    let got = sub.recv_message().await;
    assert!(got.payload.is_empty());
    // And the retained message is gone, the empty one not stored [MQTT-3.3.1-11].
    assert_eq!(
        retained_for_new_subscriber(&broker, &t, QoS::AtLeastOnce).await,
        None
    );
}

#[tokio::test]
async fn an_empty_retained_qos_0_message_clears_mqtt_3_3_1_10() {
    let broker = TestBroker::start().await;
    let t = unique("retain-clear0/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"kept", QoS::ExactlyOnce, true).await;
    publisher.publish(&t, b"", QoS::AtMostOnce, true).await;
    assert_eq!(
        retained_for_new_subscriber(&broker, &t, QoS::ExactlyOnce).await,
        None
    );
}

#[tokio::test]
async fn a_non_retained_message_leaves_the_retained_one_mqtt_3_3_1_12() {
    let broker = TestBroker::start().await;
    let t = unique("retain-keep/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"retained", QoS::AtLeastOnce, true)
        .await;
    publisher.publish(&t, b"not", QoS::AtLeastOnce, false).await;
    publisher.publish(&t, b"", QoS::AtLeastOnce, false).await;
    let got = retained_for_new_subscriber(&broker, &t, QoS::AtLeastOnce)
        .await
        .expect("the retained message is still there");
    assert_eq!(&got.payload[..], b"retained");
}

#[tokio::test]
async fn a_wildcard_subscription_gets_every_matching_retained_message_mqtt_3_3_1_6() {
    let broker = TestBroker::start().await;
    let root = unique("retain-wild");
    let mut publisher = broker.connect(&unique("pub")).await;
    let names = [
        format!("{root}/a"),
        format!("{root}/b/c"),
        format!("{root}/d"),
    ];
    for name in &names {
        publisher
            .publish(name, name.as_bytes(), QoS::AtLeastOnce, true)
            .await;
    }
    publisher
        .publish(&format!("{root}/d"), b"", QoS::AtLeastOnce, true)
        .await;
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&format!("{root}/#"), QoS::AtLeastOnce)
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = sub.recv_message().await;
        assert!(p.retain);
        got.push(p.topic.to_string());
    }
    got.sort();
    assert_eq!(got, [names[0].clone(), names[1].clone()]);
    sub.expect_silence(QUIET).await;
    // A filter matching one of them gets that one only.
    let got = retained_for_new_subscriber(&broker, &format!("{root}/+/c"), QoS::AtMostOnce)
        .await
        .expect("the retained message");
    assert_eq!(got.topic.as_str(), names[1]);
}

#[tokio::test]
async fn resubscribing_resends_the_retained_messages_mqtt_3_8_4_3() {
    let broker = TestBroker::start().await;
    let t = unique("retain-resub/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"r", QoS::AtLeastOnce, true).await;
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    assert!(sub.recv_message().await.retain);
    // The same filter again replaces the subscription, and the retained message is re-sent.
    sub.subscribe_one(&t, QoS::AtMostOnce).await;
    let again = sub.recv_message().await;
    assert!(again.retain);
    assert_eq!(again.qos.qos(), QoS::AtMostOnce);
}

#[tokio::test]
async fn retained_messages_with_rumqttc_clients() {
    let broker = TestBroker::start().await;
    let t = unique("rretain/t");
    let mut publisher = broker.client(&unique("rpub")).await;
    publisher
        .publish(&t, b"state", rumqttc::QoS::AtLeastOnce, true)
        .await;
    let mut sub = broker.client(&unique("rsub")).await;
    sub.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    let got = sub.recv_publish().await;
    assert_eq!(&got.payload[..], b"state");
    assert!(got.retain);
    publisher
        .publish(&t, b"", rumqttc::QoS::AtLeastOnce, true)
        .await;
    let cleared = sub.recv_publish().await;
    assert!(cleared.payload.is_empty() && !cleared.retain);
    let mut late = broker.client(&unique("rlate")).await;
    late.subscribe(&t, rumqttc::QoS::AtLeastOnce).await;
    late.expect_no_publish(QUIET).await;
}

// --- Many clients, slow clients ----------------------------------------------------------------

#[tokio::test]
async fn many_publishers_to_many_subscribers_keep_each_publishers_order_mqtt_4_6_0_6() {
    const PUBLISHERS: usize = 8;
    const MESSAGES: usize = 50;
    const SUBSCRIBERS: usize = 4;
    let broker = TestBroker::start().await;
    let t = unique("fan/t");
    let mut subs = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut sub = broker.connect(&unique("sub")).await;
        sub.subscribe_one(&t, QoS::AtLeastOnce).await;
        subs.push(sub);
    }
    let mut publishers = Vec::new();
    for p in 0..PUBLISHERS {
        let mut publisher = broker.connect(&unique("pub")).await;
        let t = t.clone();
        publishers.push(tokio::spawn(async move {
            for i in 0..MESSAGES {
                let payload = format!("{p} {i}");
                publisher
                    .publish(&t, payload.as_bytes(), QoS::AtLeastOnce, false)
                    .await;
            }
        }));
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
    for sub in &mut subs {
        let mut next = [0; PUBLISHERS];
        for _ in 0..PUBLISHERS * MESSAGES {
            let p = sub.recv_message().await;
            let text = String::from_utf8_lossy(&p.payload).into_owned();
            let (publisher, i) = text.split_once(' ').unwrap();
            let (publisher, i): (usize, usize) = (publisher.parse().unwrap(), i.parse().unwrap());
            assert_eq!(
                i, next[publisher],
                "publisher {publisher}'s messages out of order"
            );
            next[publisher] += 1;
        }
        sub.expect_silence(QUIET / 3).await;
    }
}

/// A burst of QoS 0 PUBLISHes in one write (gathered from one read, and encoded once for all
/// the subscribers) reaches every subscriber whole and in order, at QoS 0 and with RETAIN 0
/// [MQTT-3.3.1-9], whatever QoS each subscribed with; a QoS 1 PUBLISH in the middle of a
/// burst keeps its place for each [MQTT-4.6.0-6] and its subscribers' QoS [MQTT-3.8.4-6].
#[tokio::test]
async fn a_burst_of_qos0_reaches_every_subscriber_in_order_mqtt_3_3_1_9() {
    const MESSAGES: usize = 60;
    let broker = TestBroker::start().await;
    let t = unique("burst/t");
    let wildcard = format!("{}/+", t.rsplit_once('/').unwrap().0);
    let mut subs = Vec::new();
    for (f, qos) in [
        (t.as_str(), QoS::AtMostOnce),
        (wildcard.as_str(), QoS::AtLeastOnce),
        (t.as_str(), QoS::ExactlyOnce),
    ] {
        let mut sub = broker.connect(&unique("sub")).await;
        sub.subscribe_one(f, qos).await;
        subs.push((sub, qos));
    }
    let mut publisher = broker.connect(&unique("pub")).await;
    let burst = |from: usize, qos1_at: Option<usize>| {
        let mut bytes = Vec::new();
        for i in from..from + MESSAGES {
            let payload = format!("m{i}");
            let qos = if Some(i) == qos1_at {
                QoS::AtLeastOnce
            } else {
                QoS::AtMostOnce
            };
            let retain = i % 7 == 3;
            bytes.extend(wire(publish_packet(
                &t,
                payload.as_bytes(),
                qos,
                1,
                false,
                retain,
            )));
        }
        bytes
    };
    publisher.send_bytes(&burst(0, None)).await;
    publisher
        .send_bytes(&burst(MESSAGES, Some(MESSAGES + 10)))
        .await;
    for (sub, granted) in &mut subs {
        for i in 0..2 * MESSAGES {
            let p = sub.recv_message().await;
            assert_eq!(p.payload, format!("m{i}").as_bytes(), "in order");
            assert!(!p.retain, "RETAIN 0 for an established subscription");
            let expected = if i == MESSAGES + 10 {
                QoS::AtLeastOnce.min(*granted)
            } else {
                QoS::AtMostOnce
            };
            assert_eq!(p.qos.qos(), expected);
        }
        sub.expect_silence(QUIET / 3).await;
    }
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_does_not_hold_up_the_others() {
    let broker = TestBroker::start().await;
    let t = unique("stalled/t");
    let mut stalled = broker.connect(&unique("stalled")).await;
    stalled.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut reader = broker.connect(&unique("reader")).await;
    reader.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    // 8 MB through a subscriber that reads nothing: more than socket buffers hold.
    let payload = vec![b'x'; 4096];
    let mut burst = Vec::new();
    for _ in 0..2000 {
        burst.extend(wire(publish_packet(
            &t,
            &payload,
            QoS::AtMostOnce,
            0,
            false,
            false,
        )));
    }
    let last = wire(publish_packet(
        &t,
        b"last",
        QoS::AtMostOnce,
        0,
        false,
        false,
    ));
    let reading = tokio::spawn(async move {
        loop {
            if &reader.recv_publish().await.payload[..] == b"last" {
                return reader;
            }
        }
    });
    publisher.send_bytes(&burst).await;
    publisher.send_bytes(&last).await;
    publisher.expect_alive().await;
    let mut reader = tokio::time::timeout(TIMEOUT, reading)
        .await
        .expect("the reading subscriber was held up")
        .unwrap();
    reader.expect_alive().await;
    drop(stalled);
}

// --- Edge cases --------------------------------------------------------------------------------

#[tokio::test]
async fn the_same_filter_twice_in_one_subscribe_is_one_subscription_mqtt_3_8_4_3() {
    let broker = TestBroker::start().await;
    let t = unique("twice/t");
    let mut sub = broker.connect(&unique("sub")).await;
    let codes = sub
        .subscribe(&[(&t, QoS::AtMostOnce), (&t, QoS::ExactlyOnce)])
        .await;
    // A code for each, in order [MQTT-3.8.4-5]; the second replaces the first.
    assert_eq!(codes.len(), 2);
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::ExactlyOnce, false).await;
    let got = sub.recv_message().await;
    assert_eq!(got.qos.qos(), QoS::ExactlyOnce);
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_topic_of_65535_bytes_works_mqtt_4_7_3_3() {
    let broker = TestBroker::start().await;
    let root = unique("long");
    let t = format!("{root}/{}", "x".repeat(65_535 - root.len() - 1));
    assert_eq!(t.len(), 65_535);
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&format!("{root}/+"), QoS::AtLeastOnce)
        .await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"long", QoS::AtLeastOnce, true).await;
    let got = sub.recv_message().await;
    assert_eq!(got.topic.as_str(), t);
    let mut late = broker.connect(&unique("late")).await;
    late.subscribe_one(&t, QoS::AtLeastOnce).await;
    assert_eq!(late.recv_message().await.topic.as_str(), t);
}

#[tokio::test]
async fn a_subscribe_with_many_filters_gets_a_code_for_each_mqtt_3_9_3_1() {
    let broker = TestBroker::start().await;
    let root = unique("many");
    let names: Vec<String> = (0..100).map(|i| format!("{root}/{i}")).collect();
    let filters: Vec<(&str, QoS)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (n.as_str(), QOS[i % 3]))
        .collect();
    let mut sub = broker.connect(&unique("sub")).await;
    let codes = sub.subscribe(&filters).await;
    let expected: Vec<_> = filters
        .iter()
        .map(|&(_, q)| hermes_mqtt::SubscribeReturnCode::Granted(q))
        .collect();
    assert_eq!(codes, expected);
}

#[tokio::test]
async fn acknowledgements_for_unknown_packet_ids_keep_the_connection() {
    // PUBACK, PUBREC and PUBCOMP for identifiers the broker has not used: late duplicates of
    // acknowledgements, which a client may send after a reconnect. Not protocol errors.
    let broker = TestBroker::start().await;
    let mut raw = broker.connect(&unique("stray")).await;
    raw.send(Packet::PubAck(pid(501))).await;
    raw.send(Packet::PubComp(pid(502))).await;
    raw.send(Packet::PubRec(pid(503))).await;
    // A PUBREC may be answered with its PUBREL; nothing else may come.
    raw.send(Packet::PingReq).await;
    loop {
        match raw.recv().await {
            Packet::PingResp => break,
            Packet::PubRel(id) if id == pid(503) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_client_receives_its_own_messages() {
    // MQTT 3.1.1 has no "no local" option: a client subscribed to a topic gets what it
    // publishes there.
    let broker = TestBroker::start().await;
    let t = unique("self/t");
    let mut client = broker.client(&unique("self")).await;
    client.subscribe(&t, rumqttc::QoS::ExactlyOnce).await;
    client
        .publish(&t, b"echo", rumqttc::QoS::ExactlyOnce, false)
        .await;
    let got = client.recv_publish().await;
    assert_eq!(&got.payload[..], b"echo");
}

#[tokio::test]
async fn the_last_retained_message_received_wins_across_qos_levels_mqtt_3_3_1_5() {
    // Retained messages of QoS 0 and 1 on one topic, sent back to back: the one the broker
    // received last is the retained one, whatever path each QoS takes inside the broker. (Not
    // QoS 2: a broker may publish a QoS 2 message only at its PUBREL, "method A" of [4.3.3],
    // which is after a QoS 0 message sent right behind it.)
    let broker = TestBroker::start().await;
    for (first, second) in [
        (QoS::AtLeastOnce, QoS::AtMostOnce),
        (QoS::AtMostOnce, QoS::AtLeastOnce),
    ] {
        let t = unique("retain-race/t");
        let mut publisher = broker.connect(&unique("pub")).await;
        let mut bytes = wire(publish_packet(&t, b"first", first, 1, false, true));
        bytes.extend(wire(publish_packet(&t, b"second", second, 2, false, true)));
        publisher.send_bytes(&bytes).await;
        // The PUBACK, then a PINGRESP after it: all of it read and processed.
        publisher
            .recv_where("PUBACK", |p| matches!(p, Packet::PubAck(_)))
            .await;
        publisher.ping().await;
        let got = retained_for_new_subscriber(&broker, &t, QoS::ExactlyOnce)
            .await
            .expect("a retained message");
        assert_eq!(
            &got.payload[..],
            b"second",
            "retained {first:?} then {second:?}: the first one stayed"
        );
    }
}

#[tokio::test]
async fn a_retained_message_cleared_right_after_it_was_set_stays_cleared_mqtt_3_3_1_10() {
    // A common pattern: set a retained message at QoS 1, clear it with an empty QoS 0 one.
    let broker = TestBroker::start().await;
    let t = unique("retain-race-clear/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    let mut bytes = wire(publish_packet(&t, b"set", QoS::AtLeastOnce, 1, false, true));
    bytes.extend(wire(publish_packet(
        &t,
        b"",
        QoS::AtMostOnce,
        0,
        false,
        true,
    )));
    publisher.send_bytes(&bytes).await;
    assert_eq!(publisher.recv().await, Packet::PubAck(pid(1)));
    publisher.ping().await;
    assert_eq!(
        retained_for_new_subscriber(&broker, &t, QoS::AtLeastOnce).await,
        None
    );
}

#[tokio::test]
async fn acknowledgements_out_of_order_are_accepted() {
    let Some(broker) = TestBroker::configured("inflight", |c| {
        c.max_inflight = 3.try_into().unwrap();
    })
    .await
    else {
        return;
    };
    let t = unique("ooo/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for i in 0..6 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        publisher
            .publish(&t, format!("{i}").as_bytes(), qos, false)
            .await;
    }
    // The window's three, acknowledged last first; then the other three.
    let mut window = vec![
        sub.recv_publish().await,
        sub.recv_publish().await,
        sub.recv_publish().await,
    ];
    assert_eq!(payloads(&window), ["0", "1", "2"]);
    window.reverse();
    for p in &window {
        sub.ack(p).await;
    }
    let rest = sub.recv_messages(3).await;
    assert_eq!(payloads(&rest), ["3", "4", "5"]);
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn outgoing_packet_ids_wrap_without_0_or_reuse_in_flight_mqtt_2_3_1_1() {
    // One message stays unacknowledged while 65,600 more pass: the broker's identifiers wrap
    // around 65535, skip 0, and never take the one still in flight [MQTT-2.3.1-2].
    const BURST: u16 = 400;
    const BURSTS: u16 = 164;
    let broker = TestBroker::start().await;
    let t = unique("wrap/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"held", QoS::AtLeastOnce, false)
        .await;
    let held = sub.recv_publish().await;
    let held_id = held.qos.packet_id().unwrap();
    let mut seen = 0u32;
    for _ in 0..BURSTS {
        let mut bytes = Vec::new();
        for id in 1..=BURST {
            bytes.extend(wire(publish_packet(
                &t,
                b"x",
                QoS::AtLeastOnce,
                id,
                false,
                false,
            )));
        }
        publisher.send_bytes(&bytes).await;
        for _ in 0..BURST {
            let p = sub.recv_publish().await;
            let id = p.qos.packet_id().expect("QoS 1");
            assert_ne!(id, held_id, "reused the identifier of a message in flight");
            sub.send(Packet::PubAck(id)).await;
            seen += 1;
        }
        for id in 1..=BURST {
            assert_eq!(publisher.recv().await, Packet::PubAck(pid(id)));
        }
    }
    assert!(seen > 65_535);
    sub.ack(&held).await;
    sub.expect_silence(QUIET / 3).await;
}

#[tokio::test]
async fn a_wildcard_subscription_gets_retained_messages_from_many_topics_mqtt_3_3_1_6() {
    // Enough topics that a broker keeping retained messages in parts (by topic) has them in
    // every part.
    let broker = TestBroker::start().await;
    let root = unique("retain-many");
    let mut publisher = broker.connect(&unique("pub")).await;
    let mut expected = BTreeMap::new();
    for i in 0..64 {
        let t = format!("{root}/{}/{i}", i % 4);
        publisher
            .publish(&t, t.as_bytes(), QoS::AtLeastOnce, true)
            .await;
        expected.insert(t, QoS::AtLeastOnce);
    }
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&format!("{root}/#"), QoS::ExactlyOnce)
        .await;
    let mut got = BTreeMap::new();
    for _ in 0..expected.len() {
        let p = sub.recv_message().await;
        assert!(p.retain);
        assert_eq!(p.payload, p.topic.as_bytes());
        assert!(
            got.insert(p.topic.to_string(), p.qos.qos()).is_none(),
            "twice: {p:?}"
        );
    }
    assert_eq!(got, expected);
    sub.expect_silence(QUIET).await;
    // A filter in the middle: the 16 of one branch.
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&format!("{root}/2/+"), QoS::AtLeastOnce)
        .await;
    let got = sub.recv_messages(16).await;
    assert!(
        got.iter()
            .all(|p| p.topic.as_str().starts_with(&format!("{root}/2/")))
    );
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn an_acknowledged_packet_id_is_free_for_a_new_message_mqtt_4_3_2_2_and_4_3_3_2() {
    // Once the broker has sent PUBACK (QoS 1) or received PUBREL (QoS 2), a PUBLISH with the
    // same identifier is a new message, delivered again.
    let broker = TestBroker::start().await;
    let t = unique("reuse/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for payload in [b"q1 a", b"q1 b"] {
        publisher
            .send(publish_packet(
                &t,
                payload,
                QoS::AtLeastOnce,
                7,
                false,
                false,
            ))
            .await;
        assert_eq!(publisher.recv().await, Packet::PubAck(pid(7)));
    }
    for payload in [b"q2 a", b"q2 b"] {
        publisher.publish_unreleased(&t, payload, 9, false).await;
        publisher.release(9).await;
    }
    // Order is kept per topic and QoS [MQTT-4.6.0-6], not across the two.
    let mut got = payloads(&sub.recv_messages(4).await);
    got.sort();
    assert_eq!(got, ["q1 a", "q1 b", "q2 a", "q2 b"]);
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn retained_messages_outlive_the_session_that_set_them_mqtt_3_1_2_7() {
    let broker = TestBroker::start().await;
    let t = unique("retain-outlives/t");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"kept", QoS::AtLeastOnce, true).await;
    // Its clean session ends with the connection [MQTT-3.1.2-6]; the message stays.
    publisher.disconnect().await;
    let got = retained_for_new_subscriber(&broker, &t, QoS::AtLeastOnce)
        .await
        .expect("the retained message");
    assert_eq!(&got.payload[..], b"kept");
}
