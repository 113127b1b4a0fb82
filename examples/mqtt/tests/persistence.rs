//! Persistence [4.1]: what a persistent session holds (subscriptions, queued messages, QoS 1
//! and 2 in flight both ways) and the retained messages survive a restart on the same data
//! directory: a graceful one (`Broker::shutdown`, in process) and a crash (the `hermes-mqtt`
//! binary killed with SIGKILL).
//!
//! The broker commits its state in groups, every 2 ms; a client's acknowledgements wait for the
//! commit, the rest does not: a crash loses what was not committed yet, never what was
//! acknowledged (README, "Persistence"). The crash tests that look at more than what was
//! acknowledged wait until the broker's metrics say nothing is left to commit, then kill it (a
//! fixed 500 ms wait was too short on a loaded machine: 1 run in 20 lost a state change), and
//! for messages queued for an offline session, first until `queued_messages_stored_total`
//! counts them submitted to the store.

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_mqtt::config::SessionExpiry;
use hermes_mqtt::{Packet, PacketId, PublishQos, QoS};
use support::*;

// --- Graceful restarts, in process -------------------------------------------------------------

/// Stops `broker` gracefully and starts another on the same data directory.
async fn restart(broker: TestBroker, dir: &Path) -> TestBroker {
    broker.shutdown().await;
    TestBroker::persistent(dir, |_| {}).await
}

#[tokio::test]
async fn subscriptions_and_queued_messages_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let (id, t) = (unique("sess"), unique("sess/t"));
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(!present);
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    sub.subscribe_one(&format!("{t}/+/x"), QoS::AtLeastOnce)
        .await;
    sub.disconnect().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"1", QoS::AtLeastOnce, false).await;
    publisher.publish(&t, b"2", QoS::ExactlyOnce, false).await;
    publisher
        .publish(&format!("{t}/a/x"), b"3", QoS::ExactlyOnce, false)
        .await;

    let broker = restart(broker, dir.path()).await;
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present, "the session did not survive the restart");
    let got = sub.recv_messages(3).await;
    assert_eq!(payloads(&got), ["1", "2", "3"]);
    let qos: Vec<QoS> = got.iter().map(|p| p.qos.qos()).collect();
    assert_eq!(qos, [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtLeastOnce]);
    // The subscriptions came back too.
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&format!("{t}/b/x"), b"4", QoS::AtLeastOnce, false)
        .await;
    assert_eq!(&sub.recv_message().await.payload[..], b"4");
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn retained_messages_survive_a_graceful_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let r = unique("retained");
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&format!("{r}/a"), b"a1", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish(&format!("{r}/a"), b"a2", QoS::ExactlyOnce, true)
        .await;
    publisher
        .publish(&format!("{r}/b"), b"b", QoS::AtMostOnce, true)
        .await;
    publisher
        .publish(&format!("{r}/c"), b"c", QoS::AtLeastOnce, true)
        .await;
    publisher
        .publish(&format!("{r}/c"), b"", QoS::AtLeastOnce, true)
        .await;
    publisher.disconnect().await;

    let broker = restart(broker, dir.path()).await;
    let mut sub = broker.connect(&unique("sub")).await;
    sub.subscribe_one(&format!("{r}/#"), QoS::ExactlyOnce).await;
    let mut got = Vec::new();
    for _ in 0..2 {
        let p = sub.recv_message().await;
        assert!(p.retain);
        got.push((p.topic.to_string(), p.payload.to_vec(), p.qos.qos()));
    }
    got.sort();
    assert_eq!(
        got,
        [
            (format!("{r}/a"), b"a2".to_vec(), QoS::ExactlyOnce),
            (format!("{r}/b"), b"b".to_vec(), QoS::AtMostOnce),
        ],
        "the latest of each topic, with its QoS; the cleared one stays cleared"
    );
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn unacknowledged_messages_are_redelivered_after_a_graceful_restart_mqtt_4_4_0_1() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let (id, t) = (unique("inflight"), unique("inflight/t"));
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"q1", QoS::AtLeastOnce, false).await;
    publisher.publish(&t, b"q2", QoS::ExactlyOnce, false).await;
    publisher
        .publish(&t, b"released", QoS::ExactlyOnce, false)
        .await;
    let q1 = sub.recv_publish().await;
    let q2 = sub.recv_publish().await;
    let released = sub.recv_publish().await;
    let released_id = released.qos.packet_id().unwrap();
    sub.send(Packet::PubRec(released_id)).await;
    assert_eq!(sub.recv().await, Packet::PubRel(released_id));
    // None completed: q1 and q2 unacknowledged, the third at its PUBREL.
    sub.drop_connection();

    let broker = restart(broker, dir.path()).await;
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    for original in [&q1, &q2] {
        let again = sub.recv_publish().await;
        assert_eq!(again.payload, original.payload);
        assert_eq!(again.qos.packet_id(), original.qos.packet_id());
        assert!(again.qos.dup(), "DUP 1 on redelivery: {again:?}");
        sub.ack(&again).await;
    }
    assert_eq!(sub.recv().await, Packet::PubRel(released_id));
    sub.send(Packet::PubComp(released_id)).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn an_unreleased_incoming_qos_2_message_survives_a_graceful_restart_mqtt_4_3_3_2() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let (id, t) = (unique("incoming"), unique("incoming/t"));
    let sub_id = unique("sub");
    let (mut sub, _) = broker.connect_persistent(&sub_id).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    sub.disconnect().await;
    let (mut publisher, _) = broker.connect_persistent(&id).await;
    publisher.publish_unreleased(&t, b"once", 11, false).await;
    publisher.drop_connection();

    let broker = restart(broker, dir.path()).await;
    let (mut publisher, present) = broker.connect_persistent(&id).await;
    assert!(present);
    publisher.publish_unreleased(&t, b"once", 11, true).await;
    publisher.release(11).await;
    publisher
        .publish(&t, b"marker", QoS::AtLeastOnce, false)
        .await;
    let (mut sub, _) = broker.connect_persistent(&sub_id).await;
    let got = sub.recv_messages(2).await;
    assert_eq!(
        payloads(&got),
        ["once", "marker"],
        "delivered twice, or lost"
    );
}

#[tokio::test]
async fn clean_sessions_are_not_kept_across_a_restart_mqtt_3_1_2_6() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let (id, t) = (unique("clean"), unique("clean/t"));
    let mut sub = broker.connect(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    // Still connected at shutdown.
    let broker = restart(broker, dir.path()).await;
    sub.expect_closed_after_publishes().await;
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(!present);
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher.publish(&t, b"m", QoS::AtLeastOnce, false).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_session_connected_at_shutdown_survives_it() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let (id, t) = (unique("connected"), unique("connected/t"));
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    let broker = restart(broker, dir.path()).await;
    sub.expect_closed_after_publishes().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    publisher
        .publish(&t, b"while away", QoS::AtLeastOnce, false)
        .await;
    let (mut sub, present) = broker.connect_persistent(&id).await;
    assert!(present);
    assert_eq!(&sub.recv_message().await.payload[..], b"while away");
}

// --- A damaged data directory ---------------------------------------------------------------

/// The store file in a data directory (README, "Persistence").
const STORE_FILE: &str = "hermes-mqtt.redb";

/// Starts a broker on `dir` with [`test_config`] and returns what `Broker::start` gave, or
/// `Err(panic message)` if it panicked (caught by the task, so the test can say which case).
async fn start_on(
    dir: &Path,
) -> Result<Result<hermes_mqtt::Broker, hermes_mqtt::StartError>, String> {
    let mut config = test_config();
    config.memory = false;
    config.data_dir = dir.to_owned();
    tokio::spawn(hermes_mqtt::Broker::start(config))
        .await
        .map_err(|e| e.to_string())
}

/// An operator's data directory whose file was damaged on disk (a bad sector, a botched copy):
/// the broker either finds the damage harmless (a free page) and starts, or refuses to start
/// with an error naming the file; it never panics (exit 101 and a backtrace instead of the
/// README's clear error and exit 1). Before the fix, redb hit `unreachable!` opening such a
/// file.
#[tokio::test]
async fn a_damaged_store_file_is_refused_with_an_error_not_a_panic() {
    const PAGE: usize = 4096;
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let (mut sub, _) = broker.connect_persistent(&unique("damaged")).await;
    sub.subscribe_one("damaged/t", QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = broker.connect(&unique("pub")).await;
    for i in 0..20 {
        let payload = format!("message {i}");
        publisher
            .publish(
                &format!("damaged/{}", i % 4),
                payload.as_bytes(),
                QoS::AtLeastOnce,
                true,
            )
            .await;
        publisher
            .publish("damaged/t", payload.as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    broker.shutdown().await;

    let file = dir.path().join(STORE_FILE);
    let original = std::fs::read(&file).unwrap();
    let mut refused = 0;
    for offset in (PAGE..original.len()).step_by(PAGE) {
        let mut damaged = original.clone();
        let end = (offset + 64).min(damaged.len());
        for byte in &mut damaged[offset..end] {
            *byte ^= 0xff;
        }
        std::fs::write(&file, &damaged).unwrap();
        match start_on(dir.path()).await {
            Err(panic) => panic!("a store damaged at byte {offset}: the broker panicked: {panic}"),
            Ok(Ok(broker)) => {
                broker.shutdown().await.unwrap();
            }
            Ok(Err(error)) => {
                let message = error.to_string();
                assert!(
                    message.contains(STORE_FILE) && message.contains("corrupt"),
                    "damage at byte {offset}: {message}"
                );
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "no damaged page was noticed");
    // The undamaged file still works.
    std::fs::write(&file, &original).unwrap();
    let broker = start_on(dir.path()).await.unwrap().unwrap();
    broker.shutdown().await.unwrap();
}

/// A data directory holding a file of that name that is not a store: the error says so (and
/// what to do), instead of advising to make the directory writable.
#[tokio::test]
async fn a_store_file_that_is_no_store_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(STORE_FILE), vec![b'x'; 10_000]).unwrap();
    let error = start_on(dir.path()).await.unwrap().unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains(STORE_FILE) && message.contains("not a store file"),
        "{message}"
    );
    assert!(!message.contains("writable"), "{message}");
}

#[tokio::test]
async fn a_session_that_expired_while_the_broker_was_stopped_is_gone() {
    const EXPIRY: Duration = Duration::from_millis(1000);
    let dir = tempfile::tempdir().unwrap();
    let expiring = |c: &mut hermes_mqtt::Config| c.session_expiry = SessionExpiry::After(EXPIRY);
    let broker = TestBroker::persistent(dir.path(), expiring).await;
    let (id, t) = (unique("expired"), unique("expired/t"));
    let kept = unique("kept");
    let (mut sub, _) = broker.connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    broker.shutdown().await;
    tokio::time::sleep(EXPIRY + EXPIRY / 2).await;
    let broker = TestBroker::persistent(dir.path(), expiring).await;
    // A session of a client away for less than the expiry, for contrast.
    let (raw, _) = broker.connect_persistent(&kept).await;
    raw.disconnect().await;
    let (_sub, present) = broker.connect_persistent(&id).await;
    assert!(
        !present,
        "the session outlived its expiry across the restart"
    );
    let (_raw, present) = broker.connect_persistent(&kept).await;
    assert!(present);
}

// --- Crashes: the binary, killed ---------------------------------------------------------------

/// The `hermes-mqtt` binary, run on a data directory; killed (SIGKILL) when dropped.
struct BrokerProcess {
    child: Child,
    addr: SocketAddr,
    /// Its metrics endpoint.
    metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl BrokerProcess {
    /// Starts the binary on `dir`, listening on an ephemeral port, and reads the port from its
    /// "listening on" log line.
    fn start(dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_hermes-mqtt"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--metrics-address",
                "127.0.0.1:0",
                "--log-level",
                "info",
                "--data-dir",
            ])
            .arg(dir)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the hermes-mqtt binary starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = Arc::clone(&log);
        // Reads the log to its end, so the broker never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(addrs) = listening_address(&line).zip(metrics_address(&line)) {
                    let _ = tx.send(addrs);
                }
                lines.lock().unwrap().push(line);
            }
        });
        let (addr, metrics) = match rx.recv_timeout(TIMEOUT) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "no \"listening on\" line from hermes-mqtt: {:?}",
                    log.lock().unwrap()
                );
            }
        };
        Self {
            child,
            addr,
            metrics,
            log,
        }
    }

    /// Waits until every change the broker made so far is committed: what a crash now keeps.
    async fn wait_saved(&self) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let unsaved = metric(
                &http_get(self.metrics, "/metrics").await,
                "store_unsaved_writes",
            );
            if unsaved == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{unsaved} writes still not committed after {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until sessions have submitted `n` queued messages to the store (counted after the
    /// submission, so [`wait_saved`](Self::wait_saved) then waits for their commit).
    async fn wait_queued_stored(&self, n: u64) {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let stored = metric(
                &http_get(self.metrics, "/metrics").await,
                "queued_messages_stored_total",
            );
            if stored >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{stored} of {n} queued messages submitted to the store after {TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGKILL, and waits for the process to be gone.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("the killed broker is reaped");
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("hermes-mqtt log: {:#?}", self.log.lock().unwrap());
        }
    }
}

/// The address in "hermes-mqtt listening on 127.0.0.1:PORT; ...".
/// The metrics endpoint's address in the "listening on" line.
fn metrics_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split("metrics at http://").nth(1)?;
    rest[..rest.find('/')?].parse().ok()
}

fn listening_address(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening on ").nth(1)?;
    let end = rest.find([';', ',', ' ']).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

#[tokio::test]
async fn sessions_queued_messages_and_retained_messages_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path());
    let (id, t) = (unique("crash"), unique("crash/t"));
    let retained = unique("crash/retained");
    let (mut sub, _) = TestBroker::at(broker.addr).connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    sub.disconnect().await;
    let mut publisher = TestBroker::at(broker.addr).connect(&unique("client")).await;
    for i in 1..=3 {
        publisher
            .publish(&t, format!("{i}").as_bytes(), QoS::AtLeastOnce, false)
            .await;
    }
    publisher
        .publish(&retained, b"r", QoS::AtLeastOnce, true)
        .await;
    // The messages reach the offline session after their PUBACKs, with nothing a client can
    // see: wait until the session has submitted the three to the store, then for the commit.
    broker.wait_queued_stored(3).await;
    broker.wait_saved().await;
    broker.kill();

    let broker = BrokerProcess::start(dir.path());
    let (mut sub, present) = TestBroker::at(broker.addr).connect_persistent(&id).await;
    assert!(present, "the session did not survive SIGKILL");
    let got = sub.recv_messages(3).await;
    assert_eq!(payloads(&got), ["1", "2", "3"]);
    let mut late = TestBroker::at(broker.addr).connect(&unique("client")).await;
    late.subscribe_one(&retained, QoS::AtLeastOnce).await;
    let got = late.recv_message().await;
    assert_eq!((&got.payload[..], got.retain), (&b"r"[..], true));
    // The subscription is still there.
    let mut publisher = TestBroker::at(broker.addr).connect(&unique("client")).await;
    publisher.publish(&t, b"4", QoS::AtLeastOnce, false).await;
    assert_eq!(&sub.recv_message().await.payload[..], b"4");
}

#[tokio::test]
async fn inflight_messages_survive_sigkill_mqtt_4_4_0_1() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path());
    let (id, t) = (unique("crash-inflight"), unique("crash-inflight/t"));
    let (mut sub, _) = TestBroker::at(broker.addr).connect_persistent(&id).await;
    sub.subscribe_one(&t, QoS::ExactlyOnce).await;
    let mut publisher = TestBroker::at(broker.addr).connect(&unique("client")).await;
    publisher
        .publish(&t, b"unacked", QoS::AtLeastOnce, false)
        .await;
    publisher
        .publish(&t, b"released", QoS::ExactlyOnce, false)
        .await;
    let unacked = sub.recv_publish().await;
    let released = sub.recv_publish().await;
    let released_id = released.qos.packet_id().unwrap();
    sub.send(Packet::PubRec(released_id)).await;
    assert_eq!(sub.recv().await, Packet::PubRel(released_id));
    broker.wait_saved().await;
    broker.kill();
    drop(sub);

    let broker = BrokerProcess::start(dir.path());
    let (mut sub, present) = TestBroker::at(broker.addr).connect_persistent(&id).await;
    assert!(present);
    let again = sub.recv_publish().await;
    assert_eq!(again.payload, unacked.payload);
    assert!(again.qos.dup());
    sub.ack(&again).await;
    assert_eq!(sub.recv().await, Packet::PubRel(released_id));
    sub.send(Packet::PubComp(released_id)).await;
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_cleared_retained_message_stays_cleared_after_sigkill_mqtt_3_3_1_10() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path());
    let t = unique("crash-clear/t");
    let mut publisher = TestBroker::at(broker.addr).connect(&unique("client")).await;
    publisher.publish(&t, b"old", QoS::AtLeastOnce, true).await;
    publisher.publish(&t, b"", QoS::AtLeastOnce, true).await;
    broker.wait_saved().await;
    broker.kill();

    let broker = BrokerProcess::start(dir.path());
    let mut late = TestBroker::at(broker.addr).connect(&unique("client")).await;
    late.subscribe_one(&t, QoS::AtLeastOnce).await;
    late.expect_silence(QUIET).await;
}

#[tokio::test]
async fn a_retained_will_published_at_shutdown_survives_the_restart_mqtt_3_1_2_8() {
    // A graceful shutdown closes every connection, which is not a DISCONNECT: the wills are
    // published, and a retained one is stored before the broker stops (README, "Persistence").
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let t = unique("shutdown-will/t");
    let mut connect = connect_packet(&unique("will"));
    connect.will = Some(will(&t, "broker went down", QoS::AtLeastOnce, true));
    let mut client = broker.connect_with(connect).await;
    let broker = restart(broker, dir.path()).await;
    client.expect_closed_after_publishes().await;
    let mut late = broker.connect(&unique("late")).await;
    late.subscribe_one(&t, QoS::AtLeastOnce).await;
    let got = late.recv_message().await;
    assert_eq!(
        (&got.payload[..], got.retain),
        (&b"broker went down"[..], true)
    );
}

// --- QoS 2 in the middle of both flows, the packets of one read together --------------------

/// Two persistent clients in the middle of QoS 2 flows, left so for a restart (the reads'
/// packets going to their sessions as one message each).
struct MidFlow {
    pub_id: String,
    sub_id: String,
    topic: String,
    /// The subscriber's identifiers: the first message received (PUBREL stage), the second
    /// not yet acknowledged.
    released: PacketId,
    unacked: PacketId,
}

/// Publishes two QoS 2 messages and releases the first in one read; the subscriber receives
/// the first (PUBREC, PUBREL) and not the second.
async fn qos_2_mid_flow(broker: &TestBroker) -> MidFlow {
    let (pub_id, sub_id, topic) = (unique("pub"), unique("sub"), unique("midflow/t"));
    let (mut sub, _) = broker.connect_persistent(&sub_id).await;
    sub.subscribe_one(&topic, QoS::ExactlyOnce).await;
    let (mut publisher, _) = broker.connect_persistent(&pub_id).await;
    publisher
        .send_bytes(&together([
            publish_of(&topic, "1", QoS::ExactlyOnce, 1, false),
            publish_of(&topic, "2", QoS::ExactlyOnce, 2, false),
            Packet::PubRel(pid(1)),
        ]))
        .await;
    assert_eq!(
        publisher.answers(3).await,
        [
            Packet::PubRec(pid(1)),
            Packet::PubRec(pid(2)),
            Packet::PubComp(pid(1))
        ]
    );
    let first = sub.recv_publish().await;
    let second = sub.recv_publish().await;
    assert_eq!(payloads(&[first.clone(), second.clone()]), ["1", "2"]);
    let (Some(released), Some(unacked)) = (first.qos.packet_id(), second.qos.packet_id()) else {
        panic!("expected QoS 2: {first:?}, {second:?}");
    };
    sub.send(Packet::PubRec(released)).await;
    assert_eq!(sub.answers(1).await, [Packet::PubRel(released)]);
    MidFlow {
        pub_id,
        sub_id,
        topic,
        released,
        unacked,
    }
}

/// After the restart: the publisher's second message, sent again and released in one read,
/// is not published again; the subscriber gets the first's PUBREL and the second again (DUP
/// 1), in the order first sent [MQTT-4.4.0-1], then the marker: each message once.
async fn qos_2_finished(broker: &TestBroker, flow: MidFlow) {
    let t = &flow.topic;
    let (mut publisher, present) = broker.connect_persistent(&flow.pub_id).await;
    assert!(present);
    publisher
        .send_bytes(&together([
            publish_of(t, "2", QoS::ExactlyOnce, 2, true),
            Packet::PubRel(pid(2)),
            publish_of(t, "marker", QoS::AtLeastOnce, 3, false),
        ]))
        .await;
    assert_eq!(
        publisher.answers(3).await,
        [
            Packet::PubRec(pid(2)),
            Packet::PubComp(pid(2)),
            Packet::PubAck(pid(3))
        ]
    );
    let (mut sub, present) = broker.connect_persistent(&flow.sub_id).await;
    assert!(present);
    assert_eq!(sub.recv().await, Packet::PubRel(flow.released));
    let again = sub.recv_publish().await;
    assert_eq!(payloads(std::slice::from_ref(&again)), ["2"]);
    assert_eq!(
        again.qos,
        PublishQos::ExactlyOnce {
            packet_id: flow.unacked,
            dup: true
        }
    );
    sub.send(Packet::PubComp(flow.released)).await;
    sub.ack(&again).await;
    let marker = sub.recv_messages(1).await;
    assert_eq!(payloads(&marker), ["marker"], "1 or 2 delivered twice");
    sub.expect_silence(QUIET).await;
}

#[tokio::test]
async fn qos_2_is_exactly_once_across_a_graceful_restart_mid_flow_mqtt_4_3_3_2() {
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let flow = qos_2_mid_flow(&broker).await;
    let broker = restart(broker, dir.path()).await;
    qos_2_finished(&broker, flow).await;
}

#[tokio::test]
async fn qos_2_is_exactly_once_across_sigkill_mid_flow_mqtt_4_3_3_2() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path());
    let flow = qos_2_mid_flow(&TestBroker::at(broker.addr)).await;
    broker.wait_saved().await;
    broker.kill();
    let broker = BrokerProcess::start(dir.path());
    qos_2_finished(&TestBroker::at(broker.addr), flow).await;
}

/// What the broker acknowledged (PUBACK for QoS 1, PUBREC and PUBCOMP for QoS 2, SUBACK) is
/// on disk: SIGKILL right after the last acknowledgement, with no wait for the commit, loses
/// none of it. Two persistent subscribers (one at QoS 1, one at QoS 2, both away) get every
/// message after the restart, the QoS 2 one each exactly once; the retained message is there.
/// (The broker acknowledged before its commit: this lost the last few milliseconds of
/// messages, typically most of a burst.)
#[tokio::test]
async fn what_was_acknowledged_survives_sigkill_right_after_the_acknowledgement() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path());
    let t = unique("acked/t");
    let retained = unique("acked/retained");
    let (sub1, sub2) = (unique("acked-sub1"), unique("acked-sub2"));
    for (id, qos) in [(&sub1, QoS::AtLeastOnce), (&sub2, QoS::ExactlyOnce)] {
        let (mut sub, _) = TestBroker::at(broker.addr).connect_persistent(id).await;
        sub.subscribe_one(&t, qos).await;
        sub.disconnect().await;
    }
    let (mut publisher, _) = TestBroker::at(broker.addr)
        .connect_persistent(&unique("acked-pub"))
        .await;
    // All at once, so that the last acknowledgements come within a commit interval of the
    // PUBLISHes.
    let mut burst = Vec::new();
    for i in 1..=N {
        let id = u16::try_from(i).unwrap();
        let qos = if i % 2 == 0 {
            QoS::ExactlyOnce
        } else {
            QoS::AtLeastOnce
        };
        burst.push(publish_of(&t, &i.to_string(), qos, id, false));
    }
    publisher.send_bytes(&together(burst)).await;
    let mut answers = publisher.answers(N).await;
    let releases: Vec<Packet> = answers
        .iter()
        .filter_map(|p| match p {
            Packet::PubRec(id) => Some(Packet::PubRel(*id)),
            _ => None,
        })
        .collect();
    let released = releases.len();
    publisher.send_bytes(&together(releases)).await;
    answers.extend(publisher.answers(released).await);
    publisher
        .publish(&retained, b"r", QoS::AtLeastOnce, true)
        .await;
    broker.kill();
    let acked = answers
        .iter()
        .filter(|p| matches!(p, Packet::PubAck(_) | Packet::PubComp(_)))
        .count();
    assert_eq!(acked, N, "answers: {answers:?}");

    let broker = BrokerProcess::start(dir.path());
    let mut late = TestBroker::at(broker.addr).connect(&unique("client")).await;
    late.subscribe_one(&retained, QoS::AtLeastOnce).await;
    let got = late.recv_message().await;
    assert_eq!((&got.payload[..], got.retain), (&b"r"[..], true));
    let expected: Vec<String> = (1..=N).map(|i| i.to_string()).collect();
    for id in [&sub1, &sub2] {
        let (mut sub, present) = TestBroker::at(broker.addr).connect_persistent(id).await;
        assert!(present, "session {id} lost");
        let mut got = Vec::new();
        loop {
            match sub.next(QUIET).await {
                Next::Packet(Packet::Publish(p)) => {
                    sub.ack(&p).await;
                    got.push(p);
                }
                Next::Nothing => break,
                other => panic!("{id}: expected a PUBLISH, got {other:?}"),
            }
        }
        assert_eq!(payloads(&got), expected, "{id} lost or duplicated messages");
    }
}

/// A client that publishes QoS 1 messages without pause gets its PUBACKs while it goes on:
/// each read's acknowledgements wait for their own commit, not for every later read's too.
/// (With one count of holds for the connection, a new read held before the last was stored
/// kept every PUBACK, and everything else for that client, back until the client paused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_publishing_without_pause_gets_its_pubacks_meanwhile() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let broker = TestBroker::persistent(dir.path(), |_| {}).await;
    let t = unique("unpaused/t");
    // A persistent subscriber, away: every message is stored before its PUBACK.
    let (mut sub, _) = broker.connect_persistent(&unique("unpaused-sub")).await;
    sub.subscribe_one(&t, QoS::AtLeastOnce).await;
    sub.disconnect().await;

    let stream = tokio::net::TcpStream::connect(broker.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (mut rx, mut tx) = stream.into_split();
    tx.write_all(&wire(connect_packet(&unique("unpaused-pub"))))
        .await
        .unwrap();
    let mut connack = [0u8; 4];
    tokio::time::timeout(TIMEOUT, rx.read_exact(&mut connack))
        .await
        .expect("CONNACK")
        .unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    // The writer goes on until a PUBACK has come (or for 3 s at most).
    let acked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let acked = Arc::clone(&acked);
        tokio::spawn(async move {
            let start = Instant::now();
            let mut id = 0u16;
            while !acked.load(std::sync::atomic::Ordering::SeqCst) {
                if start.elapsed() > Duration::from_secs(3) {
                    return false;
                }
                let burst = (0..20).map(|_| {
                    id = id % u16::MAX + 1;
                    publish_of(&t, "x", QoS::AtLeastOnce, id, false)
                });
                tx.write_all(&together(burst)).await.unwrap();
                tokio::task::yield_now().await;
            }
            true
        })
    };
    let mut first = [0u8; 4];
    let read = tokio::time::timeout(TIMEOUT, rx.read_exact(&mut first)).await;
    acked.store(true, std::sync::atomic::Ordering::SeqCst);
    let stopped_by_the_puback = writer.await.unwrap();
    read.expect("a PUBACK").unwrap();
    assert_eq!(first, [0x40, 2, 0, 1], "the first PUBACK");
    assert!(
        stopped_by_the_puback,
        "no PUBACK came while the client was publishing (for 3 s)"
    );
    drop(rx);
    broker.shutdown().await;
}
