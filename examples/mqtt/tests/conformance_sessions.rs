//! Conformance, sessions [3.1.2.4], [4.1] and redelivery [4.4]: clean and persistent
//! sessions, queueing while the client is away, redelivery with DUP on reconnect, the bounded
//! queue and session expiry.
//!
//! QoS 0 messages for a client that is away may be queued or not [3.1.2.4]: the tests accept
//! both. The queue's bound and its policy (the oldest queued message is dropped) and session
//! expiry are the broker's configuration (README, "Configuration").

mod support;

use std::time::Duration;

use hermes_mqtt::config::SessionExpiry;
use hermes_mqtt::{Packet, PublishQos, QoS};
use support::*;

/// A persistent session for `id` subscribed to `t` at `qos`, whose client has disconnected.
async fn away(broker: &TestBroker, id: &str, t: &str, qos: QoS) {
    let (mut raw, _) = broker.connect_persistent(id).await;
    raw.subscribe_one(t, qos).await;
    raw.disconnect().await;
}

#[tokio::test]
async fn a_persistent_session_keeps_its_subscriptions_mqtt_3_1_2_4() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("keep"), unique("keep/t"));
    away(&broker, &id, &t, QoS::AtLeastOnce).await;
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    // No new SUBSCRIBE: the old subscription delivers.
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    assert_eq!(&sub.recv_message().await.payload[..], b"m");
}

#[tokio::test]
async fn qos_1_and_2_messages_are_queued_while_away_and_delivered_in_order_mqtt_3_1_2_5() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("queue"), unique("queue/t"));
    away(&broker, &id, &t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"1", QoS::AtLeastOnce, false).await;
    publisher.publish(&t, b"2", QoS::ExactlyOnce, false).await;
    publisher.publish(&t, b"3", QoS::AtLeastOnce, false).await;
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    let got = sub.recv_messages(3).await;
    assert_eq!(payloads(&got), ["1", "2", "3"]);
    let qos: Vec<QoS> = got.iter().map(|p| p.qos.qos()).collect();
    assert_eq!(qos, [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce]);
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn qos_0_messages_while_away_may_be_queued_or_dropped_3_1_2_4() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("queue0"), unique("queue0/t"));
    away(&broker, &id, &t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"zero", QoS::AtMostOnce, false).await;
    publisher.publish(&t, b"one", QoS::AtLeastOnce, false).await;
    let (mut sub, _) = broker.connect_persistent(&id).await;
    // Either choice is allowed; if the QoS 0 message comes, it comes once, in order.
    let first = sub.recv_message().await;
    if &first.payload[..] == b"zero" {
        assert_eq!(first.qos, PublishQos::AtMostOnce);
        assert_eq!(&sub.recv_message().await.payload[..], b"one");
    } else {
        assert_eq!(&first.payload[..], b"one");
    }
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_clean_session_discards_the_stored_one_mqtt_3_1_2_6() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("discard"), unique("discard/t"));
    away(&broker, &id, &t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"queued", QoS::AtLeastOnce, false)
        .await;
    // A clean session: no queued message, no subscription.
    let mut sub = broker.connect(&id).await;
    publisher
        .publish(&t, b"after", QoS::AtLeastOnce, false)
        .await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_clean_session_ends_with_its_connection_mqtt_3_1_2_6() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("ends"), unique("ends/t"));
    let mut sub = broker.connect(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"lost", QoS::AtLeastOnce, false)
        .await;
    // Not kept for a later persistent session either.
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(!present);
    publisher
        .publish(&t, b"later", QoS::AtLeastOnce, false)
        .await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn unacknowledged_qos_1_is_redelivered_with_dup_on_reconnect_mqtt_4_4_0_1() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("redeliver1"), unique("redeliver1/t"));
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"a", QoS::AtLeastOnce, false).await;
    publisher.publish(&t, b"b", QoS::AtLeastOnce, false).await;
    let first = [sub.recv_publish().await, sub.recv_publish().await];
    // Not acknowledged; the network fails.
    sub.drop_connection();
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    // Sent again, in the order first sent [MQTT-4.6.0-1], with DUP 1 [MQTT-3.3.1-1] and
    // their packet identifiers.
    for original in &first {
        let again = sub.recv_publish().await;
        assert_eq!(again.payload, original.payload);
        assert_eq!(again.qos.packet_id(), original.qos.packet_id());
        assert!(
            again.qos.dup(),
            "DUP 1 on redelivery [MQTT-3.3.1-1]: {again:?}"
        );
        sub.ack(&again).await;
    }
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn unacknowledged_qos_2_publish_is_redelivered_with_dup_mqtt_4_4_0_1() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("redeliver2"), unique("redeliver2/t"));
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"two", QoS::ExactlyOnce, false).await;
    let first = sub.recv_publish().await;
    sub.disconnect().await;
    let (mut sub, _) = broker.connect_persistent(&id).await;
    let again = sub.recv_publish().await;
    assert_eq!(again.payload, first.payload);
    assert!(matches!(
        again.qos,
        PublishQos::ExactlyOnce { dup: true, .. }
    ));
    assert_eq!(again.qos.packet_id(), first.qos.packet_id());
    sub.ack(&again).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn pubrel_is_resent_for_an_incomplete_qos_2_delivery_mqtt_4_4_0_1() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("pubrel"), unique("pubrel/t"));
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"two", QoS::ExactlyOnce, false).await;
    let got = sub.recv_publish().await;
    let id2 = got.qos.packet_id().expect("QoS 2");
    sub.send(Packet::PubRec(id2)).await;
    assert_eq!(sub.recv().await, Packet::PubRel(id2));
    // No PUBCOMP: the connection drops.
    sub.drop_connection();
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    // The PUBREL again, not the PUBLISH, which was released [MQTT-4.3.3-1].
    assert_eq!(sub.recv().await, Packet::PubRel(id2));
    sub.send(Packet::PubComp(id2)).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn an_incoming_qos_2_message_is_kept_unreleased_across_reconnect_mqtt_4_3_3_2() {
    let broker = TestBroker::start().await;
    let t = unique("incoming2/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let id = unique("publisher");
    let (mut publisher, _) = broker.connect_persistent(&id).await;
    publisher.publish_unreleased(&t, b"once", 5, false).await;
    // The PUBREC was lost with the connection; the client resends after reconnecting.
    publisher.drop_connection();
    let (mut publisher, present) = broker.connect_persistent(&id).await;
    assert!(present);
    publisher.publish_unreleased(&t, b"once", 5, true).await;
    publisher.release(5).await;
    publisher
        .publish(&t, b"marker", QoS::ExactlyOnce, false)
        .await;
    let got = sub.recv_messages(2).await;
    assert_eq!(payloads(&got), ["once", "marker"], "delivered twice");
}

#[tokio::test]
async fn takeover_redelivers_the_unacknowledged_messages_mqtt_3_1_4_2() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("takeover"), unique("takeover/t"));
    let (mut first, _) = broker.connect_persistent(&id).await;
    first.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    let got = first.recv_publish().await;
    let (mut second, present) = broker.connect_persistent(&id).await;
    assert!(present);
    first.expect_closed_after_publishes().await;
    let again = second.recv_publish().await;
    assert_eq!(again.payload, got.payload);
    assert!(again.qos.dup());
}

#[tokio::test]
async fn a_clean_session_does_not_redeliver_the_previous_connections_messages_mqtt_3_1_2_6() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("clean-redeliver"), unique("clean-redeliver/t"));
    let mut sub = broker.connect(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    sub.recv_publish().await;
    sub.drop_connection();
    let mut sub = broker.connect(&id).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_persistent_session_with_rumqttc_gets_what_was_published_while_away_mqtt_3_1_2_5() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("rpersist"), unique("rpersist/t"));
    let (mut sub, present) = Client::connect(broker.addr(), &id, false).await;
    assert!(!present);
    sub.subscribe(&t, rumqttc::QoS::ExactlyOnce).await;
    sub.disconnect().await;
    let mut publisher = broker.client(&unique("rpub")).await;
    for i in 0..5 {
        let qos = if i % 2 == 0 {
            rumqttc::QoS::AtLeastOnce
        } else {
            rumqttc::QoS::ExactlyOnce
        };
        publisher
            .publish(&t, format!("{i}").as_bytes(), qos, false)
            .await;
    }
    let (mut sub, present) = Client::connect(broker.addr(), &id, false).await;
    assert!(present);
    for i in 0..5 {
        let p = sub.recv_publish().await;
        assert_eq!(String::from_utf8_lossy(&p.payload), format!("{i}"));
    }
    sub.expect_no_publish(QUIET).await;
}

#[tokio::test]
async fn the_offline_queue_is_bounded_and_drops_the_oldest() {
    let Some(broker) = TestBroker::configured("max_queued", |c| c.max_queued = 3).await else {
        return;
    };
    let (id, t) = (unique("bounded"), unique("bounded/t"));
    away(&broker, &id, &t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for i in 1..=6 {
        publisher
            .publish(&t, format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    let (mut sub, _) = broker.connect_persistent(&id).await;
    // The README: when the queue is full the oldest queued message is dropped, so the client
    // gets the 3 newest, in order.
    let got = sub.recv_messages(3).await;
    assert_eq!(payloads(&got), ["4", "5", "6"]);
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_session_expires_after_the_configured_time_away() {
    const EXPIRY: Duration = Duration::from_millis(1000);
    let Some(broker) = TestBroker::configured("session_expiry", |c| {
        c.session_expiry = SessionExpiry::After(EXPIRY);
    })
    .await
    else {
        return;
    };
    let (id, t) = (unique("expire"), unique("expire/t"));
    // Connected longer than the expiry: the clock only runs while the client is away.
    let (mut raw, _) = broker.connect_persistent(&id).await;
    raw.subscribe_one(&t, QoS::AtLeastOnce).await;
    tokio::time::sleep(EXPIRY + EXPIRY / 4).await;
    raw.disconnect().await;
    // Back within the expiry: still there.
    let (raw, present) = broker.connect_persistent(&id).await;
    assert!(
        present,
        "the session expired while its client was connected, or too soon"
    );
    raw.disconnect().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"queued", QoS::AtLeastOnce, false)
        .await;
    // Away past the expiry: gone, and what was queued with it.
    tokio::time::sleep(EXPIRY * 2).await;
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(!present, "the session outlived its expiry");
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn session_expiry_0s_ends_a_persistent_session_with_its_connection() {
    let Some(broker) = TestBroker::configured("session_expiry 0s", |c| {
        c.session_expiry = SessionExpiry::After(Duration::ZERO);
    })
    .await
    else {
        return;
    };
    let (id, t) = (unique("expire0"), unique("expire0/t"));
    away(&broker, &id, &t, QoS::AtLeastOnce).await;
    let (_raw, present) = broker.connect_persistent(&id).await;
    assert!(!present);
}

#[tokio::test]
async fn a_persistent_session_taking_over_a_clean_one_starts_anew_mqtt_3_2_2_3() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("clean-then-persistent"), unique("ctp/t"));
    let mut clean = broker.connect(&id).await;
    clean.subscribe_one(&t, QoS::AtLeastOnce).await;
    // The clean session ends with its connection: nothing is there to resume.
    let (mut persistent, present) = broker.connect_persistent(&id).await;
    assert!(!present, "Session Present 1 for a clean session's state");
    clean.expect_closed().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    persistent.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_clean_session_taking_over_a_persistent_one_discards_it_mqtt_3_1_2_6() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("persistent-then-clean"), unique("ptc/t"));
    let (mut persistent, _) = broker.connect_persistent(&id).await;
    persistent.subscribe_one(&t, QoS::AtLeastOnce).await;
    let (mut clean, connack) = broker.raw_connect(connect_packet(&id)).await;
    assert!(!connack.session_present, "[MQTT-3.2.2-1]");
    persistent.expect_closed().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    clean.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_resumed_subscription_does_not_resend_retained_messages_mqtt_3_3_1_8() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("resume-retained"), unique("resume-retained/t"));
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"r", QoS::AtLeastOnce, true).await;
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    assert!(sub.recv_message().await.retain);
    sub.disconnect().await;
    // Resuming the session makes no new subscription: no retained message.
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    sub.expect_silence(QUIET).await;
}

/// A deterministic pseudo-random sequence (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// `n` messages at `qos` queued for a persistent session whose client keeps losing its
/// connection at random points of the flows: before reading a packet's effect, after
/// delivering a message but before acknowledging it, after a PUBREL before the PUBCOMP. The
/// client keeps its own state as a real one would (the QoS 2 identifiers it has delivered and
/// not seen released). Returns the messages as the application saw them, in order.
///
/// With `live`, the messages are published while this goes on (each waiting for its
/// acknowledgement), so that they meet the session at every stage: away, coming back,
/// connected; otherwise all are published first, while the client is away.
async fn deliver_through_reconnects(qos: QoS, n: usize, seed: u64, live: bool) -> Vec<String> {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("flaky"), unique("flaky/t"));
    away(&broker, &id, &t, qos).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    let publishing = async move {
        for i in 0..n {
            publisher
                .publish(&t, format!("{i}").as_bytes(), qos, false)
                .await;
        }
    };
    let publishing = if live {
        tokio::spawn(publishing)
    } else {
        publishing.await;
        tokio::spawn(async {})
    };
    let mut rng = Rng(seed);
    let mut delivered = Vec::new();
    let mut unreleased = std::collections::HashSet::new();
    let mut reconnects = 0;
    'connection: loop {
        reconnects += 1;
        assert!(
            reconnects < 500,
            "no progress; delivered {}",
            delivered.len()
        );
        let (mut sub, present) = broker.connect_persistent(&id).await;
        assert!(present);
        loop {
            let packet = match sub.next(QUIET).await {
                Next::Packet(p) => p,
                Next::Nothing if delivered.len() >= n && unreleased.is_empty() => break 'connection,
                Next::Nothing if live && !publishing.is_finished() => continue,
                other => panic!("after {} delivered: {other:?}", delivered.len()),
            };
            // One time in eight the network fails before the client sees the packet.
            if rng.below(8) == 0 {
                continue 'connection;
            }
            let reply = match packet {
                Packet::Publish(p) => {
                    let packet_id = p.qos.packet_id().expect("QoS 1 or 2");
                    let payload = String::from_utf8_lossy(&p.payload).into_owned();
                    match p.qos {
                        PublishQos::AtLeastOnce { .. } => {
                            delivered.push(payload);
                            Packet::PubAck(packet_id)
                        }
                        _ => {
                            if unreleased.insert(packet_id) {
                                delivered.push(payload);
                            } else {
                                assert!(p.qos.dup(), "same identifier again without DUP: {p:?}");
                            }
                            Packet::PubRec(packet_id)
                        }
                    }
                }
                Packet::PubRel(packet_id) => {
                    unreleased.remove(&packet_id);
                    Packet::PubComp(packet_id)
                }
                other => panic!("unexpected {other:?}"),
            };
            // One time in eight it fails before the client's answer goes out.
            if rng.below(8) == 0 {
                continue 'connection;
            }
            sub.send(reply).await;
        }
    }
    publishing.await.expect("the publisher");
    delivered
}

#[tokio::test]
async fn qos_2_is_delivered_exactly_once_and_in_order_through_reconnects_mqtt_4_3_3() {
    let n = 60;
    let expected: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
    for seed in [1, 2, 3] {
        let delivered = deliver_through_reconnects(QoS::ExactlyOnce, n, seed, false).await;
        assert_eq!(delivered, expected, "seed {seed}");
    }
}

#[tokio::test]
async fn qos_1_is_delivered_at_least_once_through_reconnects_mqtt_4_3_2() {
    let n = 60;
    for seed in [4, 5, 6] {
        let delivered = deliver_through_reconnects(QoS::AtLeastOnce, n, seed, false).await;
        // Each one at least once; first deliveries in order [MQTT-4.6.0-6].
        let mut firsts = Vec::new();
        for d in &delivered {
            if !firsts.contains(d) {
                firsts.push(d.clone());
            }
        }
        let expected: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
        assert_eq!(firsts, expected, "seed {seed}");
    }
}

#[tokio::test]
async fn qos_2_published_during_reconnects_is_delivered_exactly_once_in_order_mqtt_4_3_3() {
    let n = 100;
    let expected: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
    for seed in [7, 8] {
        let delivered = deliver_through_reconnects(QoS::ExactlyOnce, n, seed, true).await;
        assert_eq!(delivered, expected, "seed {seed}");
    }
}

#[tokio::test]
async fn qos_1_published_during_reconnects_is_delivered_in_order_mqtt_4_6_0_6() {
    let n = 100;
    for seed in [9, 10] {
        let delivered = deliver_through_reconnects(QoS::AtLeastOnce, n, seed, true).await;
        let mut firsts = Vec::new();
        for d in &delivered {
            if !firsts.contains(d) {
                firsts.push(d.clone());
            }
        }
        let expected: Vec<String> = (0..n).map(|i| format!("{i}")).collect();
        assert_eq!(firsts, expected, "seed {seed}");
    }
}

#[tokio::test]
async fn a_connected_clients_queue_behind_a_full_window_drops_the_oldest() {
    let Some(broker) = TestBroker::configured("max_inflight 1, max_queued 2", |c| {
        c.max_inflight = 1.try_into().unwrap();
        c.max_queued = 2;
    })
    .await
    else {
        return;
    };
    let t = unique("full/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for i in 1..=5 {
        publisher
            .publish(&t, format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    // "1" is in flight and never dropped; of "2" to "5" the queue keeps the newest two.
    let first = sub.recv_publish().await;
    assert_eq!(&first.payload[..], b"1");
    sub.expect_silence(QUIET).await;
    sub.ack(&first).await;
    let rest = sub.recv_messages(2).await;
    assert_eq!(payloads(&rest), ["4", "5"]);
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_clean_session_taking_over_a_clean_one_starts_empty_mqtt_3_1_2_6() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("clean-clean"), unique("clean-clean/t"));
    let mut first = broker.connect(&id).await;
    first.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut second = broker.connect(&id).await;
    first.expect_closed().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    second.expect_silence(QUIET).await;
}

/// A clean session's CONNACK is written at once by the connection (no session present
/// [MQTT-3.2.2-1]); a QoS 0 PUBLISH sent right behind the CONNECT, in the same write, still
/// comes after the reset of a persistent session of that ID: its old subscription delivers
/// nothing [MQTT-3.1.2-6].
#[tokio::test]
async fn a_publish_right_behind_a_clean_connect_does_not_reach_the_discarded_session_mqtt_3_1_2_6()
{
    let broker = TestBroker::start().await;
    let (id, t) = (unique("clean-publish"), unique("clean-publish/t"));
    away(&broker, &id, &t, QoS::AtMostOnce).await;
    let mut raw = broker.raw().await;
    let mut bytes = wire(connect_packet(&id));
    for n in 0..5u8 {
        bytes.extend(wire(publish_packet(
            &t,
            &[n],
            QoS::AtMostOnce,
            0,
            false,
            false,
        )));
    }
    raw.send_bytes(&bytes).await;
    let connack = raw.connack().await;
    assert!(!connack.session_present, "[MQTT-3.2.2-1]");
    raw.expect_silence(QUIET).await;
    raw.expect_alive().await;
    // The session is the new, clean one: a fresh subscription delivers.
    raw.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtMostOnce, false).await;
    assert_eq!(&raw.recv_message().await.payload[..], b"m");
}

#[tokio::test]
async fn redelivered_messages_come_before_those_queued_while_away_mqtt_4_4_0_1() {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("redeliver-first"), unique("redeliver-first/t"));
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"1", QoS::AtLeastOnce, false).await;
    let first = sub.recv_publish().await;
    // Not acknowledged; the network fails; another message comes meanwhile.
    sub.drop_connection();
    publisher.publish(&t, b"2", QoS::AtLeastOnce, false).await;
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    let again = sub.recv_publish().await;
    assert_eq!((&again.payload[..], again.qos.dup()), (&b"1"[..], true));
    assert_eq!(again.qos.packet_id(), first.qos.packet_id());
    sub.ack(&again).await;
    let queued = sub.recv_publish().await;
    assert_eq!((&queued.payload[..], queued.qos.dup()), (&b"2"[..], false));
    sub.ack(&queued).await;
    sub.expect_silence(QUIET).await;
}
