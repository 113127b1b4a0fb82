//! Conformance, CONNECT and CONNACK [3.1], [3.2], [3.1.4]: the return codes, what closes the
//! connection without one, the Session Present flag, client identifiers and takeover.
//!
//! Return code 3 (server unavailable) is not tested: nothing in the configuration makes the
//! broker refuse that way. Codes 4 and 5 come from its `password_file` and `allow_anonymous`
//! keys.

mod support;

use hermes_mqtt::{ConnectReturnCode, Login, MqttString, Packet, QoS};
use support::*;

/// The CONNACK must carry `code` and Session Present 0 [MQTT-3.2.2-4], and the broker must then
/// close the connection [MQTT-3.2.2-5].
async fn expect_refused(raw: &mut Raw, code: ConnectReturnCode) {
    let connack = raw.connack().await;
    assert_eq!(connack.code, code);
    assert!(
        !connack.session_present,
        "Session Present must be 0 with a non-zero return code [MQTT-3.2.2-4]"
    );
    raw.expect_closed().await;
}

#[tokio::test]
async fn connect_is_accepted_with_return_code_0_mqtt_3_2_2_1() {
    let broker = TestBroker::start().await;
    let (mut raw, connack) = broker.raw_connect(connect_packet(&unique("accept"))).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    // A clean session: Session Present 0 [MQTT-3.2.2-1].
    assert!(!connack.session_present);
    raw.expect_alive().await;
}

#[tokio::test]
async fn unsupported_protocol_level_gets_return_code_1_then_close_mqtt_3_1_2_2() {
    if external().is_some() {
        eprintln!("skipped: a reference broker may speak MQTT 5.0 (Mosquitto does)");
        return;
    }
    let broker = TestBroker::start().await;
    // An MQTT 5.0 client's CONNECT: protocol level 5, and an empty property list after the
    // keep alive. The broker reads the name and level, answers 0x01 and closes.
    let mut payload = vec![0]; // property length 0
    payload.extend(field(unique("v5").as_bytes()));
    let mut raw = broker.raw().await;
    raw.send_bytes(&connect_bytes(b"MQTT", 5, 0x02, 60, &payload))
        .await;
    expect_refused(&mut raw, ConnectReturnCode::UnacceptableProtocolVersion).await;
}

#[tokio::test]
async fn unknown_protocol_levels_get_return_code_1_mqtt_3_1_2_2() {
    let broker = TestBroker::start().await;
    // Level 3 is MQTT 3.1, whose protocol name is "MQIsdp": "MQTT" at level 3 is not a version
    // the broker speaks, nor "MQIsdp" at 3.1.1's level 4. Levels 6 and 255 are no version at
    // all.
    for (name, level) in [
        (&b"MQTT"[..], 3),
        (b"MQTT", 6),
        (b"MQTT", 255),
        (b"MQIsdp", 4),
    ] {
        let mut raw = broker.raw().await;
        let payload = field(unique("level").as_bytes());
        raw.send_bytes(&connect_bytes(name, level, 0x02, 60, &payload))
            .await;
        expect_refused(&mut raw, ConnectReturnCode::UnacceptableProtocolVersion).await;
    }
}

#[tokio::test]
async fn mqtt_3_1_connect_is_accepted() {
    let broker = TestBroker::start().await;
    // MQTT 3.1: protocol name "MQIsdp", level 3, same layout otherwise.
    let mut connect = connect_packet(&unique("v31"));
    connect.protocol_name = MqttString::from_static("MQIsdp");
    connect.protocol_level = 3;
    let (mut raw, connack) = broker.raw_connect(connect).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    // And it works: a QoS 1 round trip through its own subscription.
    let t = unique("v31/t");
    raw.subscribe_one(&t, QoS::AtLeastOnce).await;
    raw.publish(&t, b"hello", QoS::AtLeastOnce, false).await;
    let got = raw.recv_message().await;
    assert_eq!(
        (got.topic.as_str(), &got.payload[..]),
        (t.as_str(), &b"hello"[..])
    );
}

#[tokio::test]
async fn mqtt_3_1_connack_has_no_session_present() {
    // MQTT 3.1 has no Session Present flag: the CONNACK's first byte is reserved, 0, also
    // when the client resumes a persistent session (which it does: its subscription is kept).
    let broker = TestBroker::start().await;
    let (id, t) = (unique("v31p"), unique("v31p/t"));
    let mut connect = connect_packet(&id);
    connect.protocol_name = MqttString::from_static("MQIsdp");
    connect.protocol_level = 3;
    connect.clean_session = false;
    let (mut raw, connack) = broker.raw_connect(connect.clone()).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    raw.subscribe_one(&t, QoS::AtLeastOnce).await;
    raw.disconnect().await;
    let (mut raw, connack) = broker.raw_connect(connect).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert!(
        !connack.session_present,
        "Session Present sent to an MQTT 3.1 client"
    );
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"kept", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&raw.recv_message().await.payload[..], b"kept");
}

#[tokio::test]
async fn wrong_protocol_name_closes_without_connack_mqtt_3_1_2_1() {
    let broker = TestBroker::start().await;
    // The broker speaks no other protocol, so it closes, answering nothing.
    for name in [&b"MQTX"[..], b"mqtt", b"MQIsdp\0", b""] {
        let payload = field(unique("name").as_bytes());
        broker
            .closes_on_first(&connect_bytes(name, 4, 0x02, 60, &payload))
            .await;
    }
}

#[tokio::test]
async fn reserved_connect_flag_closes_the_connection_mqtt_3_1_2_3() {
    let broker = TestBroker::start().await;
    let payload = field(unique("reserved").as_bytes());
    // Connect flags: clean session (0x02) and the reserved bit 0.
    broker
        .closes_on_first(&connect_bytes(b"MQTT", 4, 0x03, 60, &payload))
        .await;
}

#[tokio::test]
async fn empty_client_id_with_persistent_session_gets_return_code_2_mqtt_3_1_3_8() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet("");
    connect.clean_session = false;
    let mut raw = broker.raw().await;
    raw.send(connect).await;
    expect_refused(&mut raw, ConnectReturnCode::IdentifierRejected).await;
}

#[tokio::test]
async fn empty_client_id_with_clean_session_is_assigned_a_unique_id_mqtt_3_1_3_6() {
    let broker = TestBroker::start().await;
    let (mut first, connack) = broker.raw_connect(connect_packet("")).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert!(!connack.session_present);
    // A second client without an identifier gets another one: it does not take the first
    // one's place [MQTT-3.1.4-2], both stay connected.
    let (mut second, connack) = broker.raw_connect(connect_packet("")).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    first.expect_alive().await;
    second.expect_alive().await;
    // Each receives what it subscribed to, and only that.
    let (t1, t2) = (unique("anon/1"), unique("anon/2"));
    first.subscribe_one(&t1, QoS::AtLeastOnce).await;
    second.subscribe_one(&t2, QoS::AtLeastOnce).await;
    first
        .publish(&t2, b"for second", QoS::AtLeastOnce, false)
        .await;
    second
        .publish(&t1, b"for first", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&first.recv_message().await.payload[..], b"for first");
    assert_eq!(&second.recv_message().await.payload[..], b"for second");
}

#[tokio::test]
async fn client_ids_of_23_alphanumerics_are_accepted_mqtt_3_1_3_5() {
    let broker = TestBroker::start().await;
    // Unique per run, padded to 23 characters from the set the broker must allow.
    let digits = unique("").replace('-', "");
    let id: String = format!("Zz{digits}abcdefghijklmnopqrstuvwxyz")
        .chars()
        .take(23)
        .collect();
    assert_eq!(id.len(), 23);
    let (_raw, connack) = broker.raw_connect(connect_packet(&id)).await;
    assert_eq!(
        connack.code,
        ConnectReturnCode::Accepted,
        "client id {id:?}"
    );
}

#[tokio::test]
async fn connect_with_user_name_and_password_is_accepted_without_authentication() {
    let broker = TestBroker::start().await;
    let mut connect = connect_packet(&unique("login"));
    connect.login = Some(Login {
        username: MqttString::from_static("user"),
        password: Some(bytes::Bytes::from_static(b"secret")),
    });
    let (_raw, connack) = broker.raw_connect(connect).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
}

#[tokio::test]
async fn password_without_user_name_closes_the_connection_mqtt_3_1_2_22() {
    let broker = TestBroker::start().await;
    let mut payload = field(unique("pw").as_bytes());
    payload.extend(field(b"secret"));
    // Password flag (0x40) without the user name flag (0x80).
    broker
        .closes_on_first(&connect_bytes(b"MQTT", 4, 0x42, 60, &payload))
        .await;
}

#[tokio::test]
async fn will_qos_without_will_flag_closes_the_connection_mqtt_3_1_2_13() {
    let broker = TestBroker::start().await;
    let payload = field(unique("wq").as_bytes());
    // Will QoS 1 (0x08) with the will flag 0.
    broker
        .closes_on_first(&connect_bytes(b"MQTT", 4, 0x0A, 60, &payload))
        .await;
}

#[tokio::test]
async fn will_retain_without_will_flag_closes_the_connection_mqtt_3_1_2_15() {
    let broker = TestBroker::start().await;
    let payload = field(unique("wr").as_bytes());
    // Will retain (0x20) with the will flag 0.
    broker
        .closes_on_first(&connect_bytes(b"MQTT", 4, 0x22, 60, &payload))
        .await;
}

#[tokio::test]
async fn will_qos_3_closes_the_connection_mqtt_3_1_2_14() {
    let broker = TestBroker::start().await;
    let mut payload = field(unique("w3").as_bytes());
    payload.extend(field(b"will/topic"));
    payload.extend(field(b"gone"));
    // Will flag (0x04) with both will QoS bits (0x18).
    broker
        .closes_on_first(&connect_bytes(b"MQTT", 4, 0x1E, 60, &payload))
        .await;
}

#[tokio::test]
async fn will_flag_without_will_fields_closes_the_connection_mqtt_3_1_2_9() {
    let broker = TestBroker::start().await;
    // The will flag says a will topic and message follow the client identifier; none do.
    let payload = field(unique("wf").as_bytes());
    broker
        .closes_on_first(&connect_bytes(b"MQTT", 4, 0x06, 60, &payload))
        .await;
}

#[tokio::test]
async fn first_packet_other_than_connect_closes_the_connection_mqtt_3_1_0_1() {
    let broker = TestBroker::start().await;
    let firsts = [
        wire(publish_packet(
            "a/b",
            b"x",
            QoS::AtMostOnce,
            0,
            false,
            false,
        )),
        wire(publish_packet(
            "a/b",
            b"x",
            QoS::AtLeastOnce,
            1,
            false,
            false,
        )),
        wire(subscribe_packet(1, &[("a/b", QoS::AtMostOnce)])),
        wire(Packet::PingReq),
        wire(Packet::Disconnect),
    ];
    // Nothing may answer it: not a PUBACK, SUBACK or PINGRESP.
    for first in firsts {
        broker.closes_on_first(&first).await;
    }
}

#[tokio::test]
async fn a_message_published_before_connect_is_not_delivered_mqtt_3_1_0_1() {
    let broker = TestBroker::start().await;
    let t = unique("pre-connect");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut raw = broker.raw().await;
    raw.send(publish_packet(
        &t,
        b"sneaky",
        QoS::AtMostOnce,
        0,
        false,
        false,
    ))
    .await;
    raw.expect_closed().await;
    // A marker on the same topic from a proper client arrives, and nothing before it.
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"marker", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"marker");
}

#[tokio::test]
async fn second_connect_closes_the_connection_mqtt_3_1_0_2() {
    let broker = TestBroker::start().await;
    let id = unique("twice");
    let mut raw = broker.connect(&id).await;
    raw.send(connect_packet(&id)).await;
    raw.expect_closed().await;
}

#[tokio::test]
async fn connack_is_the_first_packet_the_broker_sends_mqtt_3_2_0_1() {
    let broker = TestBroker::start().await;
    let mut raw = broker.raw().await;
    // CONNECT and a PINGREQ in one write: the CONNACK comes first, then the PINGRESP.
    let mut bytes = wire(connect_packet(&unique("first")));
    bytes.extend(wire(Packet::PingReq));
    raw.send_bytes(&bytes).await;
    assert_eq!(raw.connack().await.code, ConnectReturnCode::Accepted);
    assert_eq!(raw.recv().await, Packet::PingResp);
}

#[tokio::test]
async fn session_present_is_0_for_a_new_persistent_session_mqtt_3_2_2_3() {
    let broker = TestBroker::start().await;
    let (_raw, present) = broker.connect_persistent(&unique("new")).await;
    assert!(!present);
}

#[tokio::test]
async fn session_present_is_1_when_resuming_a_persistent_session_mqtt_3_2_2_2() {
    let broker = TestBroker::start().await;
    let id = unique("resume");
    let (mut raw, present) = broker.connect_persistent(&id).await;
    assert!(!present);
    raw.subscribe_one(&unique("resume/t"), QoS::AtLeastOnce)
        .await;
    raw.disconnect().await;
    let (raw, present) = broker.connect_persistent(&id).await;
    assert!(
        present,
        "the session was kept: Session Present 1 [MQTT-3.2.2-2]"
    );
    raw.disconnect().await;
    // Resuming again, with no subscription change in between, still finds the session.
    let (_raw, present) = broker.connect_persistent(&id).await;
    assert!(present);
}

#[tokio::test]
async fn session_present_is_1_even_for_a_session_without_subscriptions_mqtt_3_2_2_2() {
    let broker = TestBroker::start().await;
    let id = unique("empty-session");
    let (raw, _) = broker.connect_persistent(&id).await;
    raw.disconnect().await;
    // The session exists though it holds nothing: the server "has stored Session state".
    let (_raw, present) = broker.connect_persistent(&id).await;
    assert!(present);
}

#[tokio::test]
async fn session_present_is_0_with_clean_session_even_if_one_was_stored_mqtt_3_2_2_1() {
    let broker = TestBroker::start().await;
    let id = unique("clean-after");
    let (mut raw, _) = broker.connect_persistent(&id).await;
    raw.subscribe_one(&unique("clean/t"), QoS::AtLeastOnce)
        .await;
    raw.disconnect().await;
    let (raw, connack) = broker.raw_connect(connect_packet(&id)).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    assert!(!connack.session_present, "[MQTT-3.2.2-1]");
    raw.disconnect().await;
    // The clean session discarded the stored one, and ended with its connection
    // [MQTT-3.1.2-6]: a persistent session now starts anew.
    let (_raw, present) = broker.connect_persistent(&id).await;
    assert!(!present, "[MQTT-3.1.2-6]");
}

#[tokio::test]
async fn takeover_closes_the_existing_connection_mqtt_3_1_4_2() {
    let broker = TestBroker::start().await;
    let id = unique("takeover");
    let mut first = broker.connect(&id).await;
    let (mut second, connack) = broker.raw_connect(connect_packet(&id)).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    first.expect_closed().await;
    second.expect_alive().await;
}

#[tokio::test]
async fn takeover_of_a_persistent_session_keeps_it_mqtt_3_1_4_2() {
    let broker = TestBroker::start().await;
    let id = unique("takeover-p");
    let t = unique("takeover/t");
    let (mut first, _) = broker.connect_persistent(&id).await;
    first.subscribe_one(&t, QoS::AtLeastOnce).await;
    let (mut second, present) = broker.connect_persistent(&id).await;
    assert!(
        present,
        "the new connection resumes the session [MQTT-3.2.2-2]"
    );
    first.expect_closed().await;
    // The subscription came along: the new connection receives its messages.
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    assert_eq!(&second.recv_message().await.payload[..], b"m");
}

#[tokio::test]
async fn takeover_with_rumqttc_clients_mqtt_3_1_4_2() {
    let broker = TestBroker::start().await;
    let id = unique("rtakeover");
    let mut first = broker.client(&id).await;
    let _second = broker.client(&id).await;
    assert!(
        first.ended_within(TIMEOUT).await,
        "the first connection was not closed"
    );
}

// --- Authentication: return codes 4 and 5 [3.2.2.3] --------------------------------------------

/// A CONNECT with `username` and `password`.
fn login(username: &str, password: Option<&str>) -> hermes_mqtt::Connect {
    let mut connect = connect_packet(&unique("auth"));
    connect.login = Some(Login {
        username: MqttString::try_from(username).unwrap(),
        password: password.map(|p| bytes::Bytes::copy_from_slice(p.as_bytes())),
    });
    connect
}

/// A broker with user "alice" (password "wonderland") in its password file, and
/// `allow_anonymous`.
async fn with_users(test: &str, allow_anonymous: bool) -> Option<TestBroker> {
    let dir = tempfile::tempdir().unwrap();
    let passwords = support::password_file(dir.path(), &[("alice", "wonderland")]);
    // The broker reads the file when it starts.
    TestBroker::configured(test, |c| {
        c.password_file = Some(passwords);
        c.allow_anonymous = allow_anonymous;
    })
    .await
}

#[tokio::test]
async fn a_known_user_with_the_right_password_is_accepted() {
    let Some(broker) = with_users("users", false).await else {
        return;
    };
    let (mut raw, connack) = broker.raw_connect(login("alice", Some("wonderland"))).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    raw.expect_alive().await;
}

#[tokio::test]
async fn a_wrong_password_or_unknown_user_gets_return_code_4() {
    let Some(broker) = with_users("users", true).await else {
        return;
    };
    for connect in [
        login("alice", Some("looking-glass")),
        login("alice", None),
        login("alice", Some("")),
        login("bob", Some("wonderland")),
        login("Alice", Some("wonderland")),
    ] {
        let mut raw = broker.raw().await;
        raw.send(connect).await;
        expect_refused(&mut raw, ConnectReturnCode::BadUserNameOrPassword).await;
    }
}

#[tokio::test]
async fn an_anonymous_client_gets_return_code_5_when_anonymity_is_not_allowed() {
    let Some(broker) = with_users("allow_anonymous", false).await else {
        return;
    };
    let mut raw = broker.raw().await;
    raw.send(connect_packet(&unique("anonymous"))).await;
    expect_refused(&mut raw, ConnectReturnCode::NotAuthorized).await;
}

#[tokio::test]
async fn an_anonymous_client_is_accepted_when_anonymity_is_allowed() {
    let Some(broker) = with_users("allow_anonymous", true).await else {
        return;
    };
    let (_raw, connack) = broker
        .raw_connect(connect_packet(&unique("anonymous")))
        .await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
}

#[tokio::test]
async fn a_refused_client_does_not_take_over_or_touch_the_session_mqtt_3_2_2_4() {
    let Some(broker) = with_users("users", true).await else {
        return;
    };
    // Alice is connected with a persistent session; someone with her client identifier and a
    // wrong password is refused, and her connection and session are untouched.
    let t = unique("auth/t");
    let mut alice = login("alice", Some("wonderland"));
    alice.clean_session = false;
    let id = alice.client_id.clone();
    let (mut raw, connack) = broker.raw_connect(alice).await;
    assert_eq!(connack.code, ConnectReturnCode::Accepted);
    raw.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut impostor = login("alice", Some("guess"));
    impostor.client_id = id;
    impostor.clean_session = true;
    let mut other = broker.raw().await;
    other.send(impostor).await;
    expect_refused(&mut other, ConnectReturnCode::BadUserNameOrPassword).await;
    raw.expect_alive().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"still", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&raw.recv_message().await.payload[..], b"still");
}

#[tokio::test]
async fn rumqttc_reports_a_refused_login() {
    let Some(broker) = with_users("users", true).await else {
        return;
    };
    let mut options = client_options(broker.addr(), &unique("rauth"), true);
    options.set_credentials("alice", "nope");
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(options, 10);
    let result = tokio::time::timeout(TIMEOUT, eventloop.poll())
        .await
        .expect("rumqttc got no answer");
    match result {
        Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
            assert_eq!(code, rumqttc::ConnectReturnCode::BadUserNamePassword);
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

// --- Under load ----------------------------------------------------------------------------------

#[tokio::test]
async fn concurrent_connections_with_one_client_id_leave_exactly_one_mqtt_3_1_4_2() {
    let broker = TestBroker::start().await;
    let id = unique("crowd");
    let t = unique("crowd/t");
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let addr = broker.addr();
        let id = id.clone();
        tasks.push(tokio::spawn(async move {
            let mut raw = Raw::open(addr).await;
            let mut connect = connect_packet(&id);
            connect.clean_session = false;
            raw.send(connect).await;
            // Each is accepted, then all but one are taken over.
            match raw.next(TIMEOUT).await {
                Next::Packet(Packet::ConnAck(c)) => {
                    assert_eq!(c.code, ConnectReturnCode::Accepted);
                }
                other => panic!("expected CONNACK, got {other:?}"),
            }
            raw
        }));
    }
    let mut conns = Vec::new();
    for task in tasks {
        conns.push(task.await.unwrap());
    }
    // The survivor is the one still open once the others have been closed: each closed one
    // closes within TIMEOUT; the broker has no reason to close the last.
    let mut alive = Vec::new();
    for mut raw in conns {
        if !raw.closes_within(QUIET).await {
            alive.push(raw);
        }
    }
    assert_eq!(
        alive.len(),
        1,
        "{} connections left for one client id",
        alive.len()
    );
    let mut survivor = alive.pop().unwrap();
    survivor.subscribe_one(&t, QoS::AtLeastOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    assert_eq!(&survivor.recv_message().await.payload[..], b"m");
}

#[tokio::test]
async fn two_hundred_clients_connect_at_once() {
    let broker = TestBroker::start().await;
    let t = unique("crowd/all");
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let addr = broker.addr();
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            let broker = TestBroker::at(addr);
            let mut raw = broker.connect(&unique("many")).await;
            raw.subscribe_one(&t, QoS::AtMostOnce).await;
            raw
        }));
    }
    let mut conns = Vec::new();
    for task in tasks {
        conns.push(task.await.unwrap());
    }
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"all", QoS::AtMostOnce, false).await;
    for raw in &mut conns {
        assert_eq!(&raw.recv_publish().await.payload[..], b"all");
    }
}

#[tokio::test]
async fn a_refused_connect_ignores_what_follows_it_mqtt_3_1_4_5() {
    // A CONNECT refused with a CONNACK, and a PUBLISH in the same write: the PUBLISH is not
    // processed.
    let broker = TestBroker::start().await;
    let t = unique("refused/t");
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut raw = broker.raw().await;
    // An empty client identifier with CleanSession 0 [MQTT-3.1.3-8].
    let mut bytes = connect_bytes(b"MQTT", 4, 0, 60, &field(b""));
    bytes.extend(publish_bytes(0, t.as_bytes(), None, b"after the refusal"));
    raw.send_bytes_lossy(&bytes).await;
    expect_refused(&mut raw, ConnectReturnCode::IdentifierRejected).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn connect_fields_must_match_their_flags_mqtt_3_1_2_11_and_18_to_21() {
    // A CONNECT whose flags announce a field its payload lacks, or whose payload has bytes no
    // flag announces, is malformed: closed without a CONNACK [MQTT-3.1.4-1].
    let broker = TestBroker::start().await;
    let id = field(unique("fields").as_bytes());
    let with = |rest: &[&[u8]]| {
        let mut payload = id.clone();
        for f in rest {
            payload.extend(field(f));
        }
        payload
    };
    for (flags, payload) in [
        (0b1000_0010, with(&[])), // user name flag, no user name [MQTT-3.1.2-19]
        (0b1100_0010, with(&[b"user"])), // password flag, no password [MQTT-3.1.2-21]
        (0b0000_0010, with(&[b"user"])), // a user name without its flag [MQTT-3.1.2-18]
        (0b1000_0010, with(&[b"u", b"p"])), // a password without its flag [MQTT-3.1.2-20]
        (0b0000_0010, with(&[b"will/t", b"m"])), // a will without its flag [MQTT-3.1.2-11]
    ] {
        broker
            .closes_on_first(&connect_bytes(b"MQTT", 4, flags, 60, &payload))
            .await;
    }
}

#[tokio::test]
async fn the_password_is_binary_data() {
    // The password is binary data [3.1.3.5], not a string: bytes that are not UTF-8 are
    // accepted (this broker has no password file, so any password is).
    let broker = TestBroker::start().await;
    let mut payload = field(unique("binary-pw").as_bytes());
    payload.extend(field(b"user"));
    payload.extend(field(&[0xFF, 0x00, 0xFE]));
    let mut raw = broker.raw().await;
    raw.send_bytes(&connect_bytes(b"MQTT", 4, 0b1100_0010, 60, &payload))
        .await;
    assert_eq!(raw.connack().await.code, ConnectReturnCode::Accepted);
    raw.expect_alive().await;
}

#[tokio::test]
async fn clients_with_empty_ids_get_distinct_sessions_mqtt_3_1_3_6() {
    // Each gets an identifier of its own: the second does not take over the first.
    let broker = TestBroker::start().await;
    let t = unique("empty-ids/t");
    let mut a = broker.connect("").await;
    let mut b = broker.connect("").await;
    a.subscribe_one(&t, QoS::AtMostOnce).await;
    b.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"both", QoS::AtMostOnce, false).await;
    assert_eq!(&a.recv_message().await.payload[..], b"both");
    assert_eq!(&b.recv_message().await.payload[..], b"both");
}

#[tokio::test]
async fn client_ids_beyond_23_characters_are_accepted_mqtt_3_1_3_5() {
    // The broker MUST allow 1 to 23 of [0-9a-zA-Z] and MAY allow more: it allows any
    // identifier up to the 65535 bytes a string holds.
    let broker = TestBroker::start().await;
    let id = format!("{}/{}", unique("long"), "x".repeat(65_000));
    let mut raw = broker.connect(&id).await;
    raw.expect_alive().await;
}
