//! Who may connect, and what they may do: the password file (CONNACK 0x04 and 0x05, as slow
//! for an unknown user as for a wrong password) and the ACL file (SUBACK 0x80 for a denied
//! filter; a denied PUBLISH acknowledged, dropped and counted; a will on a denied topic
//! refused with 0x05), and `$SYS` topics that clients cannot publish to.

mod support;

use std::time::{Duration, Instant};

use bytes::Bytes;
use hermes_mqtt::{Connect, ConnectReturnCode, Login, MqttString, QoS, SubscribeReturnCode};
use support::*;

const ACL: &str = "
# Anonymous clients.
topic read public/#

user alice
topic readwrite alice/#
topic read $SYS/#

user bob
topic readwrite bob/#

client sensor-17
topic write sensors/17/#

pattern readwrite users/%u/#
pattern deny secret/#
";

/// A broker with users alice and bob (passwords "a-pass", "b-pass") and the ACL above.
async fn with_acl(
    dir: &std::path::Path,
    change: impl FnOnce(&mut hermes_mqtt::Config),
) -> TestBroker {
    let passwords = password_file(dir, &[("alice", "a-pass"), ("bob", "b-pass")]);
    let acl = dir.join("acl");
    std::fs::write(&acl, ACL).unwrap();
    let mut config = test_config();
    config.password_file = Some(passwords);
    config.acl_file = Some(acl);
    config.sys_interval = Duration::ZERO;
    change(&mut config);
    TestBroker::with_config(config).await
}

fn login(client_id: &str, user: Option<(&str, &str)>) -> Connect {
    let mut connect = connect_packet(client_id);
    connect.login = user.map(|(name, password)| Login {
        username: MqttString::try_from(name).unwrap(),
        password: Some(Bytes::copy_from_slice(password.as_bytes())),
    });
    connect
}

const ALICE: Option<(&str, &str)> = Some(("alice", "a-pass"));
const BOB: Option<(&str, &str)> = Some(("bob", "b-pass"));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_filter_gets_0x80_and_the_others_are_granted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = with_acl(dir.path(), |_| {}).await;
    let mut alice = broker.connect_with(login(&unique("alice"), ALICE)).await;
    let codes = alice
        .subscribe(&[
            ("alice/#", QoS::AtLeastOnce),
            ("bob/#", QoS::AtLeastOnce),
            ("users/alice/inbox", QoS::AtMostOnce),
            ("users/bob/inbox", QoS::AtMostOnce),
            ("#", QoS::AtMostOnce),
            ("$SYS/broker/+", QoS::AtMostOnce),
        ])
        .await;
    assert_eq!(
        codes,
        [
            SubscribeReturnCode::Granted(QoS::AtLeastOnce),
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Granted(QoS::AtMostOnce),
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Granted(QoS::AtMostOnce),
        ]
    );
    // The granted subscription works; the connection is not closed for the refusals.
    alice
        .publish("alice/x", b"mine", QoS::AtMostOnce, false)
        .await;
    assert_eq!(&alice.recv_publish().await.payload[..], b"mine");
    let stats = broker.shutdown_stats().await;
    assert_eq!(stats.denied_subscriptions, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_publish_is_acknowledged_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let broker = with_acl(dir.path(), |_| {}).await;
    let mut bob = broker.connect_with(login(&unique("bob"), BOB)).await;
    bob.subscribe_one("bob/#", QoS::ExactlyOnce).await;
    let mut alice = broker.connect_with(login(&unique("alice"), ALICE)).await;
    // Each is acknowledged as its QoS says (PUBACK; PUBREC and PUBCOMP), so alice is not
    // stuck; none reaches bob.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        alice.publish("bob/inbox", b"from alice", qos, false).await;
        alice
            .publish("secret/x", b"denied by a pattern", qos, true)
            .await;
    }
    bob.expect_silence(QUIET).await;
    // Bob's own publish goes through.
    bob.publish("bob/inbox", b"from bob", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&bob.recv_message().await.payload[..], b"from bob");
    alice.expect_alive().await;
    let stats = broker.shutdown_stats().await;
    assert_eq!(stats.denied_publishes, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_get_the_first_section_and_client_rules_apply_to_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let broker = with_acl(dir.path(), |_| {}).await;
    let mut anonymous = broker.connect_with(login(&unique("anon"), None)).await;
    let codes = anonymous
        .subscribe(&[("public/#", QoS::AtMostOnce), ("alice/#", QoS::AtMostOnce)])
        .await;
    assert_eq!(
        codes,
        [
            SubscribeReturnCode::Granted(QoS::AtMostOnce),
            SubscribeReturnCode::Failure
        ]
    );
    // Read only: its publish to public/ is dropped.
    anonymous
        .publish("public/news", b"x", QoS::AtLeastOnce, false)
        .await;
    anonymous.expect_silence(QUIET).await;
    // The client section: sensor-17 may write sensors/17/#, whoever it is.
    let mut sensor = broker.connect_with(login("sensor-17", None)).await;
    sensor
        .publish("sensors/17/temp", b"21", QoS::AtLeastOnce, false)
        .await;
    let stats = broker.shutdown_stats().await;
    assert_eq!(stats.denied_publishes, 1, "only the anonymous one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_on_a_denied_topic_refuses_the_connect_with_5() {
    let dir = tempfile::tempdir().unwrap();
    let broker = with_acl(dir.path(), |_| {}).await;
    let mut connect = login(&unique("alice"), ALICE);
    connect.will = Some(will("bob/last-words", "gone", QoS::AtLeastOnce, false));
    let (mut raw, ack) = broker.raw_connect(connect).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    raw.expect_closed().await;
    let mut connect = login(&unique("alice"), ALICE);
    connect.will = Some(will("alice/last-words", "gone", QoS::AtLeastOnce, false));
    let (_raw, ack) = broker.raw_connect(connect).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
}

/// A persistent session that another user takes over keeps only the subscriptions that user
/// may make.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_taken_over_by_another_user_loses_what_it_may_not_read() {
    let dir = tempfile::tempdir().unwrap();
    let broker = with_acl(dir.path(), |_| {}).await;
    let id = unique("shared-id");
    let mut first = login(&id, ALICE);
    first.clean_session = false;
    let mut alice = broker.connect_with(first).await;
    alice.subscribe_one("alice/#", QoS::AtLeastOnce).await;
    alice.disconnect().await;
    let mut second = login(&id, BOB);
    second.clean_session = false;
    let (mut bob, ack) = broker.raw_connect(second).await;
    assert!(ack.session_present);
    let mut publisher = broker.connect_with(login(&unique("alice"), ALICE)).await;
    publisher
        .publish("alice/x", b"for alice only", QoS::AtLeastOnce, false)
        .await;
    bob.expect_silence(QUIET).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_cannot_publish_to_sys_topics() {
    let Some(broker) = TestBroker::configured("sys", |c| c.sys_interval = Duration::ZERO).await
    else {
        return;
    };
    let mut watcher = broker.connect(&unique("watcher")).await;
    watcher.subscribe_one("$SYS/#", QoS::AtMostOnce).await;
    let mut spoofer = broker.connect(&unique("spoofer")).await;
    spoofer
        .publish("$SYS/broker/version", b"spoofed", QoS::AtLeastOnce, true)
        .await;
    spoofer
        .publish("$SYS", b"spoofed", QoS::AtMostOnce, false)
        .await;
    watcher.expect_silence(QUIET).await;
    // Not retained either.
    let mut late = broker.connect(&unique("late")).await;
    late.subscribe_one("$SYS/#", QoS::AtMostOnce).await;
    late.expect_silence(QUIET).await;
    let stats = broker.shutdown_stats().await;
    assert_eq!(stats.denied_publishes, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_anonymous_access_every_client_needs_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let broker = with_acl(dir.path(), |c| c.allow_anonymous = false).await;
    let (_, ack) = broker.raw_connect(login(&unique("anon"), None)).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
    let (_, ack) = broker
        .raw_connect(login(&unique("x"), Some(("alice", "b-pass"))))
        .await;
    assert_eq!(ack.code, ConnectReturnCode::BadUserNameOrPassword);
    let (_, ack) = broker.raw_connect(login(&unique("x"), ALICE)).await;
    assert_eq!(ack.code, ConnectReturnCode::Accepted);
    let stats = broker.shutdown_stats().await;
    assert_eq!(stats.refused_auth, 2);

    // A user name with no password file to check it against proves nothing.
    let Some(broker) = TestBroker::configured("no file", |c| c.allow_anonymous = false).await
    else {
        return;
    };
    let (_, ack) = broker.raw_connect(login(&unique("x"), ALICE)).await;
    assert_eq!(ack.code, ConnectReturnCode::NotAuthorized);
}

/// A refusal takes as long for a user that does not exist as for a wrong password: the
/// broker checks the password against a hash of the same cost either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_takes_as_long_as_a_wrong_password() {
    let dir = tempfile::tempdir().unwrap();
    // Costly enough to measure (a few milliseconds), cheap enough for CI.
    let params = hermes_mqtt::auth::HashParams {
        memory_kib: 1024,
        iterations: 2,
        parallelism: 1,
    };
    let mut file = hermes_mqtt::auth::PasswordFile::default();
    file.set(
        "alice",
        hermes_mqtt::auth::hash_password(b"a-pass", params).unwrap(),
    )
    .unwrap();
    file.save(&dir.path().join("passwd")).unwrap();
    let mut config = test_config();
    config.password_file = Some(dir.path().join("passwd"));
    let broker = TestBroker::with_config(config).await;
    // Interleaved, so that both see the same load (other tests run at the same time), and
    // medians; without the stand-in hash an unknown user is answered some 100 times faster.
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..9 {
        for (user, samples) in [("alice", &mut known), ("nobody", &mut unknown)] {
            let started = Instant::now();
            let (_, ack) = broker
                .raw_connect(login(&unique("t"), Some((user, "wrong"))))
                .await;
            assert_eq!(ack.code, ConnectReturnCode::BadUserNameOrPassword);
            samples.push(started.elapsed());
        }
    }
    known.sort();
    unknown.sort();
    let (known, unknown) = (known[known.len() / 2], unknown[unknown.len() / 2]);
    assert!(
        unknown * 3 >= known && known * 3 >= unknown,
        "wrong password: {known:?}, unknown user: {unknown:?}"
    );
}

/// `Broker::reload` (SIGHUP in the binary) reads the password and ACL files again for new
/// connections; a file that has become unusable leaves the ones in use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reads_the_files_again() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = password_file(dir.path(), &[("alice", "a-pass")]);
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "user alice\ntopic readwrite alice/#\n").unwrap();
    let mut config = test_config();
    config.password_file = Some(passwords);
    config.acl_file = Some(acl.clone());
    let broker = hermes_mqtt::Broker::start(config).await.unwrap();
    let mqtt = TestBroker::at(broker.local_addrs()[0]);
    let (_, ack) = mqtt.raw_connect(login(&unique("b"), BOB)).await;
    assert_eq!(ack.code, ConnectReturnCode::BadUserNameOrPassword);

    password_file(dir.path(), &[("alice", "a-pass"), ("bob", "b-pass")]);
    std::fs::write(&acl, "user bob\ntopic readwrite bob/#\n").unwrap();
    broker.reload().await.unwrap();
    let mut bob = mqtt.connect_with(login(&unique("b"), BOB)).await;
    assert_eq!(
        bob.subscribe(&[("bob/#", QoS::AtMostOnce)]).await,
        [SubscribeReturnCode::Granted(QoS::AtMostOnce)]
    );
    let mut alice = mqtt.connect_with(login(&unique("a"), ALICE)).await;
    assert_eq!(
        alice.subscribe(&[("alice/#", QoS::AtMostOnce)]).await,
        [SubscribeReturnCode::Failure],
        "the new ACL has no rule for alice"
    );

    std::fs::write(&acl, "allow everything\n").unwrap();
    let error = broker.reload().await.unwrap_err().to_string();
    assert!(error.contains("line 1") && error.contains("acl"), "{error}");
    let mut bob = mqtt.connect_with(login(&unique("b"), BOB)).await;
    assert_eq!(
        bob.subscribe(&[("bob/#", QoS::AtMostOnce)]).await,
        [SubscribeReturnCode::Granted(QoS::AtMostOnce)],
        "the files in use are kept"
    );
    broker.shutdown().await.unwrap();
}
