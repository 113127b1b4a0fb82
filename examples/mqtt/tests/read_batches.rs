//! What one read of a connection brings goes to its session as one Hermes message
//! (`SessionMsg::Packets`), and what a session publishes while handling it is routed
//! together, one message per subscriber. Nothing of that may show: the packets of one read
//! are carried out in order [MQTT-4.6.0-2..4], their effects on the subscription index
//! where they are among them, and a malformed packet after valid ones closes the connection
//! only once those are handled [MQTT-4.8.0-1]. Exactly once at QoS 2 across a restart in the
//! middle of such reads [MQTT-4.3.3-2]: `persistence.rs`.

mod support;

use hermes_mqtt::{Packet, PublishQos, QoS};
use support::*;

#[tokio::test]
async fn the_packets_of_one_read_are_carried_out_in_order_mqtt_4_6_0_2() {
    let broker = TestBroker::start().await;
    let (t, mine, later) = (
        unique("batch/t"),
        unique("batch/mine"),
        unique("batch/later"),
    );
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.subscribe_one(&mine, QoS::AtLeastOnce).await;

    publisher
        .send_bytes(&together([
            publish_of(&t, "1", QoS::ExactlyOnce, 10, false),
            publish_of(&t, "2", QoS::AtLeastOnce, 11, false),
            Packet::PubRel(pid(10)),
            publish_of(&t, "3", QoS::ExactlyOnce, 12, false),
            // Sent again before its PUBREL: answered, not published again [MQTT-4.3.3-2].
            publish_of(&t, "3", QoS::ExactlyOnce, 12, true),
            // Routed before the UNSUBSCRIBE after it: delivered to the publisher itself.
            publish_of(&mine, "own", QoS::AtLeastOnce, 13, false),
            Packet::Unsubscribe(unsubscribe_packet(14, &[&mine])),
            publish_of(&mine, "after", QoS::AtLeastOnce, 15, false),
            // Routed after the SUBSCRIBE before it: delivered.
            Packet::Subscribe(subscribe_packet(16, &[(&later, QoS::AtLeastOnce)])),
            publish_of(&later, "new", QoS::AtLeastOnce, 17, false),
            Packet::PubRel(pid(12)),
            Packet::PingReq,
        ]))
        .await;
    let got = publisher.answers(12).await;
    let suback = Packet::SubAck(hermes_mqtt::SubAck {
        packet_id: pid(16),
        return_codes: vec![hermes_mqtt::SubscribeReturnCode::Granted(QoS::AtLeastOnce)],
    });
    assert_eq!(
        got,
        [
            Packet::PubRec(pid(10)),
            Packet::PubAck(pid(11)),
            Packet::PubComp(pid(10)),
            Packet::PubRec(pid(12)),
            Packet::PubRec(pid(12)),
            Packet::PubAck(pid(13)),
            Packet::UnsubAck(pid(14)),
            Packet::PubAck(pid(15)),
            suback,
            Packet::PubAck(pid(17)),
            Packet::PubComp(pid(12)),
            Packet::PingResp,
        ],
        "answers in the order of the packets [MQTT-4.6.0-2], [MQTT-4.6.0-3]"
    );
    let own = publisher.recv_messages(2).await;
    assert_eq!(payloads(&own), ["own", "new"]);
    publisher.expect_silence(QUIET).await;

    let delivered = sub.recv_messages(3).await;
    assert_eq!(payloads(&delivered), ["1", "2", "3"], "each once, in order");
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_subscribers_acknowledgements_of_one_read_are_answered_in_order_mqtt_4_6_0_4() {
    let broker = TestBroker::start().await;
    let t = unique("batch/acks");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for payload in [b"a", b"b", b"c"] {
        publisher
            .publish(&t, payload, QoS::ExactlyOnce, false)
            .await;
    }
    let mut ids = Vec::new();
    for _ in 0..3 {
        let publish = sub.recv_publish().await;
        let PublishQos::ExactlyOnce { packet_id, .. } = publish.qos else {
            panic!("expected QoS 2, got {publish:?}");
        };
        ids.push(packet_id);
    }
    sub.send_bytes(&together([Packet::PubRec(ids[0]), Packet::PubRec(ids[1])]))
        .await;
    assert_eq!(
        sub.answers(2).await,
        [Packet::PubRel(ids[0]), Packet::PubRel(ids[1])]
    );
    sub.send_bytes(&together([
        Packet::PubComp(ids[0]),
        Packet::PubRec(ids[2]),
        Packet::PubComp(ids[1]),
    ]))
    .await;
    assert_eq!(sub.answers(1).await, [Packet::PubRel(ids[2])]);
    sub.send(Packet::PubComp(ids[2])).await;
    // All three done: the next message gets the window, once.
    publisher.publish(&t, b"d", QoS::ExactlyOnce, false).await;
    assert_eq!(payloads(&sub.recv_messages(1).await), ["d"]);
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_malformed_packet_after_valid_ones_in_one_read_closes_after_them_mqtt_4_8_0_1() {
    let broker = TestBroker::start().await;
    let t = unique("batch/malformed");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    let mut bytes = together([
        publish_of(&t, "1", QoS::AtLeastOnce, 1, false),
        publish_of(&t, "2", QoS::ExactlyOnce, 2, false),
        Packet::PubRel(pid(2)),
    ]);
    // A PUBREL whose fixed header flags are not 0010 [MQTT-3.6.1-1].
    bytes.extend_from_slice(&frame(0x60, &[0x00, 0x03]));
    publisher.send_bytes_lossy(&bytes).await;
    assert_eq!(
        publisher.answers(3).await,
        [
            Packet::PubAck(pid(1)),
            Packet::PubRec(pid(2)),
            Packet::PubComp(pid(2))
        ],
        "the valid packets before it are handled"
    );
    publisher.expect_closed().await;
    let delivered = sub.recv_messages(2).await;
    assert_eq!(payloads(&delivered), ["1", "2"]);
    sub.expect_silence(QUIET).await;
}
