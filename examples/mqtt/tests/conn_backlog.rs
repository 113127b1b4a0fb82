//! A connection's writer under a backlog: a subscriber that reads nothing while megabytes of
//! QoS 1 or 2 PUBLISHes are written to it, then its connection closed by the broker (taken
//! over) with the backlog unwritten. Nothing is lost: the next connection of the session
//! gets every message, in order, the ones sent before again [MQTT-4.4.0-1].

mod support;

use hermes_mqtt::QoS;
use support::*;

/// 150 messages of 16 KB (2.4 MB, more than the socket buffers hold: the rest waits in the
/// writer's queue, or in the session behind its in-flight window of 100).
const MESSAGES: usize = 150;

async fn closed_with_a_backlog_loses_nothing(qos: QoS) {
    let broker = TestBroker::start().await;
    let (id, t) = (unique("backlog"), unique("backlog/t"));
    let (mut stuck, _) = broker.connect_persistent(&id).await;
    stuck.subscribe_one(&t, qos).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for i in 0..MESSAGES {
        let mut payload = format!("{i:05}").into_bytes();
        payload.resize(16 * 1024, b'.');
        publisher.publish(&t, &payload, qos, false).await;
    }
    // Taken over: the broker closes the stuck connection, its backlog unwritten.
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    let got = sub.recv_messages(MESSAGES).await;
    let indices: Vec<String> = got
        .iter()
        .map(|p| String::from_utf8_lossy(&p.payload[..5]).into_owned())
        .collect();
    let expected: Vec<String> = (0..MESSAGES).map(|i| format!("{i:05}")).collect();
    assert_eq!(indices, expected, "every message, once, in order");
    assert!(got[0].qos.dup(), "sent before: DUP 1 [MQTT-3.3.1-1]");
    sub.expect_silence(QUIET).await;
    drop(stuck);
}

#[tokio::test]
async fn a_connection_closed_with_a_backlog_loses_nothing_at_qos_1() {
    closed_with_a_backlog_loses_nothing(QoS::AtLeastOnce).await;
}

#[tokio::test]
async fn a_connection_closed_with_a_backlog_loses_nothing_at_qos_2() {
    closed_with_a_backlog_loses_nothing(QoS::ExactlyOnce).await;
}
