//! What a user gets wrong, and what the server does to them: a wrong URL, a server without
//! JetStream, two nodes with one name, nodes whose timings disagree with the membership bucket,
//! a stale owner's deletes, a state too large for the server, bad frames on a node's subject,
//! and a NATS server that restarts under the nodes. Each must end in a typed error that says what to do, or in the documented
//! behaviour, never in silent loss or duplication.

mod support;
use support::{HEARTBEAT, LIVENESS, SETTLE, wait_members, wait_until};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_cluster::testing::NatsServer;
use hermes_cluster::{Cluster, ClusterConfig, ClusterError, Node};
use hermes_core::{Activation, AskError, Config, Context, DeadLetter, Location, Receiver, Reply};
use hermes_store::{Store, StoreError};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug)]
enum Msg {
    Add(u64),
    Get(Reply<u64>),
    /// Send `.1` messages of `.2` bytes each to `.0`, all in one turn.
    Burst(u64, u32, u32),
    Blob(Vec<u8>),
    /// Answer with this many bytes.
    Big(u32, Reply<Vec<u8>>),
}

type TestNode = Node<u64, Msg, (u64, Msg)>;

/// Every message any receiver took, by (node name, ID): how many times each was applied.
type Seen = Arc<Mutex<HashMap<(String, u64), u64>>>;

struct Counter {
    node: String,
    total: u64,
    seen: Seen,
}

impl Receiver<u64, Msg> for Counter {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Msg>, msg: Msg) {
        match msg {
            Msg::Add(n) => {
                self.total += n;
                *self
                    .seen
                    .lock()
                    .unwrap()
                    .entry((self.node.clone(), *ctx.id()))
                    .or_default() += 1;
            }
            Msg::Get(reply) => drop(reply.send(self.total)),
            Msg::Burst(to, n, size) => {
                for _ in 0..n {
                    ctx.send(to, Msg::Blob(vec![1; size as usize]));
                }
            }
            Msg::Blob(bytes) => self.total += bytes.len() as u64,
            Msg::Big(size, reply) => drop(reply.send(vec![2; size as usize])),
        }
    }
}

fn config(url: &str, cluster: &str, name: &str) -> ClusterConfig {
    ClusterConfig::new(url, cluster, name)
        .heartbeat(HEARTBEAT)
        .liveness_timeout(LIVENESS)
        .shards(2)
}

fn start(config: ClusterConfig, seen: &Seen) -> Result<TestNode, ClusterError> {
    start_with(config, seen, Arc::default())
}

/// Dead letters: (reason, the message's size if it was a blob).
type Dead = Arc<Mutex<Vec<(String, Option<usize>)>>>;

fn start_with(config: ClusterConfig, seen: &Seen, dead: Dead) -> Result<TestNode, ClusterError> {
    let node = config.node_name().to_owned();
    let seen = Arc::clone(seen);
    Cluster::connect(config)?.start_with(
        Config::default(),
        Some(Arc::new(move |letter: DeadLetter<u64, Msg>| {
            let size = match &letter.message {
                Some(Msg::Blob(bytes)) => Some(bytes.len()),
                _ => None,
            };
            dead.lock().unwrap().push((letter.reason.to_string(), size));
        })),
        move |_: &u64| {
            Activation::ready(Counter {
                node: node.clone(),
                total: 0,
                seen: Arc::clone(&seen),
            })
        },
    )
}

/// Nodes `a` (its dead letters in `dead`) and `b` of `cluster`, both members, and an ID that
/// `a` places on itself and one it places on `b`.
fn two_nodes(url: &str, cluster: &str, seen: &Seen, dead: &Dead) -> (TestNode, TestNode, u64, u64) {
    let a = start_with(config(url, cluster, "a"), seen, Arc::clone(dead)).expect("a");
    let b = start(config(url, cluster, "b"), seen).expect("b");
    wait_members(&[&a, &b], 2);
    let here = (0..)
        .find(|id| matches!(a.locate(id), Location::Shard(_)))
        .unwrap();
    let there = (0..)
        .find(|id| matches!(a.locate(id), Location::Node(_)))
        .unwrap();
    (a, b, here, there)
}

fn get(node: &TestNode, id: u64) -> Result<u64, AskError> {
    node.hermes()
        .ask_blocking(id, Msg::Get, Duration::from_secs(5))
}

#[test]
fn a_wrong_url_or_a_server_without_jetstream_is_a_typed_error_that_says_what_to_do() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    // Nothing listens on the server's port once it is stopped.
    let mut stopped = nats;
    let url = stopped.url();
    stopped.stop();
    match Cluster::connect(config(&url, "wrong", "a")) {
        Err(ClusterError::Connect(m)) => assert!(m.contains("nats-server"), "{m}"),
        other => panic!("a wrong URL: {other:?}"),
    }
    drop(stopped);

    let Some(plain) = NatsServer::start_without_jetstream() else {
        return;
    };
    match Cluster::connect(config(&plain.url(), "nojs", "a")) {
        Err(ClusterError::JetStream(m)) => assert!(m.contains("-js"), "{m}"),
        other => panic!("a server without JetStream: {other:?}"),
    }
}

/// Two processes given the same node name would both subscribe to that node's subject and
/// both own its IDs: every message to them applied twice. The second is refused instead.
#[test]
fn a_second_node_with_a_taken_name_is_refused() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let seen = Seen::default();
    let a = start(config(&url, "dup", "a"), &seen).expect("the first a starts");
    let b = start(config(&url, "dup", "b"), &seen).expect("b starts");
    wait_members(&[&a, &b], 2);
    match Cluster::connect(config(&url, "dup", "a")) {
        Err(ClusterError::Config(m)) => {
            assert!(m.contains("\"a\"") && m.contains("name"), "{m}")
        }
        other => panic!("a second node named a: {other:?}"),
    }
    // The name is free again once its node left.
    a.shutdown();
    let a = start(config(&url, "dup", "a"), &seen).expect("a restarts once it left");
    wait_members(&[&a, &b], 2);
    // A node that stops without leaving (dropped: its heartbeats stop, its entry stays until
    // it expires) is restarted under its name: the restart waits for the entry to expire
    // instead of taking it for a running twin.
    drop(a);
    let a = start(config(&url, "dup", "a"), &seen).expect("a restarts after a crash");
    wait_members(&[&a, &b], 2);
    a.shutdown();
    b.shutdown();
}

/// The membership bucket's entries expire after the liveness timeout of the node that created
/// it: a node configured with heartbeats slower than that would drop out between its beats.
#[test]
fn a_node_whose_heartbeat_the_bucket_would_expire_is_refused() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let seen = Seen::default();
    let a = start(
        ClusterConfig::new(&url, "timing", "a")
            .heartbeat(Duration::from_millis(100))
            .liveness_timeout(Duration::from_millis(500))
            .shards(1),
        &seen,
    )
    .expect("a starts");
    let slow = ClusterConfig::new(&url, "timing", "b")
        .heartbeat(Duration::from_millis(400))
        .liveness_timeout(Duration::from_secs(5))
        .shards(1);
    match Cluster::connect(slow) {
        Err(ClusterError::Config(m)) => assert!(m.contains("liveness"), "{m}"),
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a node whose heartbeats the bucket expires between beats connected"),
    }
    a.shutdown();
}

/// A stale owner that read a key as absent, or deleted it, must not delete or overwrite what
/// the new owner wrote since: its delete and its next put are conflicts.
#[test]
fn a_stale_owners_deletes_are_compare_and_set_too() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let stale = Cluster::connect(config(&url, "cas", "a")).expect("a connects");
    let owner = Cluster::connect(config(&url, "cas", "b")).expect("b connects");
    let (stale, owner) = (stale.store(), owner.store());

    // Read as absent by the stale owner; written by the new one; deleted by the stale one.
    assert_eq!(stale.get(b"k1").unwrap(), None);
    assert_eq!(owner.get(b"k1").unwrap(), None);
    owner.put(b"k1", b"new").unwrap();
    assert!(
        matches!(stale.delete(b"k1"), Err(StoreError::Conflict { .. })),
        "a stale delete of a key read as absent went through"
    );
    assert_eq!(owner.get(b"k1").unwrap().as_deref(), Some(&b"new"[..]));

    // Deleted by the stale owner; then written by the new one; then written by the stale one.
    assert_eq!(stale.get(b"k2").unwrap(), None);
    stale.put(b"k2", b"old").unwrap();
    stale.delete(b"k2").unwrap();
    assert_eq!(owner.get(b"k2").unwrap(), None);
    owner.put(b"k2", b"new").unwrap();
    assert!(
        matches!(stale.put(b"k2", b"stale"), Err(StoreError::Conflict { .. })),
        "a stale owner's put after its own delete overwrote the new owner's state"
    );
    assert_eq!(owner.get(b"k2").unwrap().as_deref(), Some(&b"new"[..]));

    // The owner itself goes on after its own deletes: delete, put, delete, put.
    owner.delete(b"k2").unwrap();
    owner.put(b"k2", b"again").unwrap();
    owner.delete(b"k2").unwrap();
    owner.delete(b"k2").unwrap();
    owner.put(b"k2", b"last").unwrap();
    assert_eq!(stale.get(b"k2").unwrap().as_deref(), Some(&b"last"[..]));
}

/// A value larger than the server takes is an error, not a hang; the store goes on.
#[test]
fn a_state_too_large_for_the_server_is_an_error() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let cluster = Cluster::connect(config(&nats.url(), "big", "a")).expect("connects");
    let store = cluster.store();
    assert_eq!(store.get(b"big").unwrap(), None);
    let big = vec![7u8; 2 << 20];
    let e = store
        .put(b"big", &big)
        .expect_err("2 MiB is over the server's payload limit");
    // Refused before it is sent: the server closes a connection that sends it (the node's
    // subscriptions and heartbeats with it), and the put timed out.
    assert!(e.to_string().contains("max_payload"), "{e}");
    store.put(b"big", b"small").unwrap();
    assert_eq!(store.get(b"big").unwrap().as_deref(), Some(&b"small"[..]));
}

/// The NATS server restarts (same port, same store directory) under two running nodes: their
/// store calls fail while it is down (typed errors, within the store timeout), and once it is
/// back they reconnect, keep their membership, take messages across nodes again, and find
/// the state saved before.
#[test]
fn nodes_carry_on_after_the_nats_server_restarts() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let seen = Seen::default();
    let connect = |name: &str| {
        Cluster::connect(config(&url, "restart", name).store_timeout(Duration::from_millis(500)))
            .expect("connects")
    };
    let (ca, cb) = (connect("a"), connect("b"));
    let store = cb.store();
    let start = |cluster: Cluster, name: &str| {
        let (node, seen) = (name.to_owned(), Arc::clone(&seen));
        cluster
            .start(Config::default(), move |_: &u64| {
                Activation::ready(Counter {
                    node: node.clone(),
                    total: 0,
                    seen: Arc::clone(&seen),
                })
            })
            .expect("starts")
    };
    let (a, b) = (start(ca, "a"), start(cb, "b"));
    wait_members(&[&a, &b], 2);
    store.get(b"saved").unwrap();
    store.put(b"saved", b"before").unwrap();
    let on_b: Vec<u64> = (0..20u64)
        .filter(|id| matches!(a.locate(id), Location::Node(_)))
        .collect();
    for &id in &on_b {
        a.hermes().send(id, Msg::Add(1)).unwrap();
        assert_eq!(get(&a, id), Ok(1));
    }

    nats.stop();
    match store.get(b"saved") {
        Err(e) => assert!(e.to_string().contains("NATS server"), "{e}"),
        Ok(v) => panic!("a store call with the server down: {v:?}"),
    }
    // Longer than a heartbeat, shorter than the liveness timeout.
    std::thread::sleep(HEARTBEAT * 5);
    nats.restart();

    wait_until("asks across nodes to go through again", SETTLE, || {
        on_b.iter().all(|&id| get(&a, id).is_ok())
    });
    assert_eq!(a.members().len(), 2);
    assert_eq!(b.members().len(), 2);
    assert_eq!(
        store.get(b"saved").unwrap().as_deref(),
        Some(&b"before"[..])
    );
    for &id in &on_b {
        a.hermes().send(id, Msg::Add(1)).unwrap();
    }
    wait_until("sends after the restart to arrive", SETTLE, || {
        on_b.iter().all(|&id| get(&a, id) == Ok(2))
    });
    a.shutdown();
    b.shutdown();
}

/// A turn's mail for one node is one frame, but NATS takes at most `max_payload` (1 MiB by
/// default) per message: a burst of large messages is split into frames the server takes, and
/// a message larger than that alone is a dead letter (message kept), never silently dropped.
/// An answer too large to cross is `Dropped` for the asker, at once.
#[test]
fn messages_larger_than_the_server_takes_are_split_or_dead_letters() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let seen = Seen::default();
    let dead = Dead::default();
    let (a, b, local, remote) = two_nodes(&url, "big-frames", &seen, &dead);
    // 300 messages of 8 KiB in one turn: 2.4 MB for b.
    a.hermes()
        .send(local, Msg::Burst(remote, 300, 8 << 10))
        .unwrap();
    wait_until("the burst to arrive on b", SETTLE, || {
        get(&a, remote) == Ok(300 * (8 << 10))
    });
    // One message of 2 MiB: a dead letter on a, kept; the next one arrives.
    a.hermes()
        .send(local, Msg::Burst(remote, 1, 2 << 20))
        .unwrap();
    a.hermes().send(local, Msg::Burst(remote, 1, 10)).unwrap();
    wait_until("the small one after the large one", SETTLE, || {
        get(&a, remote) == Ok(300 * (8 << 10) + 10)
    });
    assert_eq!(
        dead.lock().unwrap().as_slice(),
        &[(
            hermes_core::DeadLetterReason::Unreachable.to_string(),
            Some(2 << 20)
        )]
    );
    // An answer of 2 MiB cannot come back: the asker hears `Dropped`, not a timeout.
    let asked = std::time::Instant::now();
    let answer = a
        .hermes()
        .ask_blocking(remote, |r| Msg::Big(2 << 20, r), Duration::from_secs(30));
    assert_eq!(answer.map(|v| v.len()), Err(AskError::Dropped));
    assert!(asked.elapsed() < Duration::from_secs(30));
    a.shutdown();
    b.shutdown();
}

/// Client nodes have no membership entry, so nothing stops two of them from sharing a name
/// (two replicas of one gateway): both receive the answers sent to that name. Each must still
/// get its own answers, never the other's.
#[test]
fn two_clients_with_one_name_each_get_their_own_answers() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let seen = Seen::default();
    let member = start(config(&url, "twins", "m"), &seen).expect("m");
    let clients: Vec<Arc<TestNode>> = (0..2)
        .map(|_| Arc::new(start(config(&url, "twins", "gw").client(), &seen).expect("gw")))
        .collect();
    wait_members(&[&member], 1);
    // Each client sets its own ID's total, then asks for it, over and over, at once.
    let askers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, client)| {
            let client = Arc::clone(client);
            std::thread::spawn(move || {
                let id = i as u64;
                client.hermes().send(id, Msg::Add(100 * (id + 1))).unwrap();
                (0..200)
                    .map(|_| get(&client, id))
                    .filter(|answer| *answer != Ok(100 * (id + 1)))
                    .count()
            })
        })
        .collect();
    let wrong: Vec<usize> = askers.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(wrong, [0, 0], "answers meant for the other client");
    for client in clients {
        match Arc::try_unwrap(client) {
            Ok(client) => client.shutdown(),
            Err(_) => panic!("the askers are done"),
        }
    }
    member.shutdown();
}

/// While its NATS connection is down, a node cannot know whether a message for another node
/// will ever get there (the client would buffer it, and publish it on reconnecting, perhaps
/// before the receiving node has subscribed again: lost without a trace). So it refuses them:
/// sends from the handle fail (`Unreachable`, the message given back), sends from receivers
/// are dead letters, message kept. Every message sent is then applied or refused, none lost.
#[test]
fn a_node_cut_off_from_nats_refuses_mail_for_other_nodes() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let seen = Seen::default();
    let dead = Dead::default();
    let (a, b, local, _) = two_nodes(&url, "outage", &seen, &dead);
    let on_b: Vec<u64> = (0..20u64)
        .filter(|id| matches!(a.locate(id), Location::Node(_)))
        .collect();
    for &id in &on_b {
        assert_eq!(get(&a, id), Ok(0));
    }
    nats.stop();
    // Mail sent before the client notices that the server is gone goes into a dead connection
    // and may be lost (core NATS delivers at most once): send until the node refuses.
    let mut in_flight = 0u64;
    wait_until("the node to notice the outage", SETTLE, || {
        match a.hermes().send(on_b[0], Msg::Add(1)) {
            Ok(()) => {
                in_flight += 1;
                false
            }
            Err(_) => true,
        }
    });
    let (mut accepted, mut refused, mut bursts) = (0, 0, 0);
    // Long enough for the client's reconnect attempts to back off (the messages it buffered
    // over 2.5 s were all lost, before this fix).
    let until = std::time::Instant::now() + Duration::from_millis(2500);
    while std::time::Instant::now() < until {
        for &id in &on_b {
            match a.hermes().send(id, Msg::Add(1)) {
                Ok(()) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
        // From a receiver: a dead letter if refused.
        a.hermes().send(local, Msg::Burst(on_b[0], 1, 1)).unwrap();
        bursts += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
    nats.restart();
    wait_until("asks across nodes after the restart", SETTLE, || {
        on_b.iter().all(|&id| get(&a, id).is_ok())
    });
    let applied: u64 = on_b.iter().map(|&id| get(&a, id).unwrap()).sum();
    let dead = dead.lock().unwrap().len() as u64;
    eprintln!(
        "{in_flight} sent before the outage was noticed; then {accepted} sends accepted, \
         {refused} refused; {bursts} receivers' sends, {dead} dead letters; {applied} applied"
    );
    assert!(refused > 0, "no send was refused while the server was down");
    assert!(
        dead > 0,
        "no receiver's send was a dead letter while the server was down"
    );
    // Once the outage was noticed, every message was applied, or refused, or a dead letter:
    // none lost. Those sent before may have been lost, or applied.
    let noticed = accepted + bursts - dead;
    assert!(
        (noticed..=noticed + in_flight).contains(&applied),
        "{applied} applied: {noticed} expected, and at most {in_flight} sent before the outage \
         was noticed"
    );
    a.shutdown();
    b.shutdown();
}

/// A node that stops while the NATS server is down: each receiver's `deactivated` hook saves,
/// and each save failed only after the store timeout, one after the other, so the shutdown of
/// a node with thousands of receivers took hours (20 receivers, one shard, 200 ms timeout:
/// 6.2 s). Once the connection has been down for a store timeout, store calls fail at once,
/// saying so.
#[test]
fn store_calls_fail_fast_once_the_server_has_been_gone_a_store_timeout() {
    let Some(mut nats) = NatsServer::start() else {
        return;
    };
    let cluster = Cluster::connect(
        config(&nats.url(), "down", "a")
            .shards(1)
            .store_timeout(Duration::from_millis(300)),
    )
    .expect("connects");
    let store = cluster.store();
    struct Saver {
        store: Arc<hermes_cluster::KvStore>,
        errors: Arc<Mutex<Vec<String>>>,
    }
    impl Receiver<u64, Msg> for Saver {
        fn receive(&mut self, _: &mut Context<'_, u64, Msg>, msg: Msg) {
            if let Msg::Get(reply) = msg {
                let _ = reply.send(0);
            }
        }
        fn deactivated(&mut self, ctx: &mut Context<'_, u64, Msg>, _: hermes_core::Deactivation) {
            let key = format!("k{}", ctx.id());
            if let Err(e) = self.store.put(key.as_bytes(), b"v") {
                self.errors.lock().unwrap().push(e.to_string());
            }
        }
    }
    let errors = Arc::new(Mutex::new(Vec::new()));
    let node = {
        let errors = Arc::clone(&errors);
        cluster
            .start(Config::default(), move |_: &u64| {
                Activation::ready(Saver {
                    store: Arc::clone(&store),
                    errors: Arc::clone(&errors),
                })
            })
            .expect("starts")
    };
    for id in 0..20 {
        assert_eq!(get(&node, id), Ok(0));
    }
    nats.stop();
    node.shutdown();
    let errors = errors.lock().unwrap();
    assert_eq!(errors.len(), 20, "every save failed: {errors:?}");
    let waited = errors.iter().filter(|e| e.contains("timed out")).count();
    assert!(
        waited <= 2,
        "{waited} of 20 saves waited out the store timeout: {errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("unreachable for")),
        "{errors:?}"
    );
}

/// The wire format's frames, as tests/misuse.rs writes them (postcard encodes a struct as the
/// tuple of its fields, an enum as its variant's index then its fields).
#[derive(Serialize)]
struct Frame(u8, u64, Vec<Vec<u8>>);

#[derive(Serialize)]
enum Item {
    Message { to: u64, msg: Msg, hops: u8 },
}

/// Bytes from NATS are untrusted: a frame that does not decode, one of another wire version,
/// and an item that does not decode are dropped and counted, never a panic; the good item next
/// to a bad one is delivered; a message passed on too often is a dead letter.
#[test]
fn bad_frames_are_counted_and_dropped_alone() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let seen = Seen::default();
    let dead = Dead::default();
    let (a, b, mine, theirs) = two_nodes(&url, "wire", &seen, &dead);
    let item = |to: u64, n: u64, hops: u8| {
        postcard::to_allocvec(&Item::Message {
            to,
            msg: Msg::Add(n),
            hops,
        })
        .unwrap()
    };
    let frames = [
        b"not a frame".to_vec(),
        postcard::to_allocvec(&Frame(2, 1, vec![item(mine, 1000, 0)])).unwrap(),
        postcard::to_allocvec(&Frame(1, 1, vec![vec![9, 9, 9], item(mine, 7, 0)])).unwrap(),
        // Passed on 8 times already, and b's: a dead letter on a.
        postcard::to_allocvec(&Frame(1, 1, vec![item(theirs, 1, 8)])).unwrap(),
    ];
    let subject = format!("hermes.wire.node.{:016x}", a.id().0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::connect(&url).await.unwrap();
        for frame in frames {
            client.publish(subject.clone(), frame.into()).await.unwrap();
        }
        client.flush().await.unwrap();
    });
    wait_until("the good item", SETTLE, || get(&a, mine) == Ok(7));
    wait_until("the dead letter", SETTLE, || {
        dead.lock().unwrap().len() == 1
    });
    let (_, _, bad, _) = a.transport_counts();
    assert_eq!(bad, 3, "the garbage, the other version, the bad item");
    assert_eq!(
        get(&b, theirs),
        Ok(0),
        "the message passed on too often was not delivered"
    );
    a.shutdown();
    b.shutdown();
}
