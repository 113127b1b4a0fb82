//! Asks and sends to a receiver on another node, as a user relying on location transparency
//! would write them: an ask the remote receiver never answers times out at the asker's
//! deadline; one it drops, or panics on, ends `Dropped` at once; a receiver's own ask across
//! nodes gets its `Timeout` as a message; one sender's messages to a remote receiver arrive in
//! order; a message that does not serialize is a dead letter on the sending node, message kept.

mod support;
use support::{HEARTBEAT, LIVENESS, wait_members};

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_cluster::testing::NatsServer;
use hermes_cluster::{Cluster, ClusterConfig, Node};
use hermes_core::{
    Activation, AskError, Config, Context, DeadLetter, DeadLetterReason, Location, Receiver, Reply,
};
use serde::{Deserialize, Serialize, Serializer};

/// A value that cannot be serialized (say, a handle to a local resource put in a message).
#[derive(Deserialize, Debug)]
struct Local;

impl Serialize for Local {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("a Local does not cross nodes"))
    }
}

#[derive(Serialize, Deserialize, Debug)]
enum Msg {
    /// Keep the reply, never answer.
    Hold(Reply<u64>),
    /// Drop the reply unanswered.
    Drop(Reply<u64>),
    /// Panic holding the reply.
    Boom(Reply<u64>),
    Seq(u64),
    Seen(Reply<Vec<u64>>),
    Odd(Local),
    /// Ask `to` with `Hold`, timing out after this many milliseconds; keep the outcome.
    AskHold(u64, u64),
    Asked(Result<u64, AskError>),
    Outcome(Reply<Option<Result<u64, AskError>>>),
}

type TestNode = Node<u64, Msg, (u64, Msg)>;

#[derive(Default)]
struct Remote {
    kept: Vec<Reply<u64>>,
    seen: Vec<u64>,
    outcome: Option<Result<u64, AskError>>,
}

impl Receiver<u64, Msg> for Remote {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Msg>, msg: Msg) {
        match msg {
            Msg::Hold(reply) => self.kept.push(reply),
            Msg::Drop(reply) => drop(reply),
            Msg::Boom(_reply) => panic!("boom (a deliberate panic in a cluster test)"),
            Msg::Seq(n) => self.seen.push(n),
            Msg::Seen(reply) => drop(reply.send(self.seen.clone())),
            Msg::Odd(_) => {}
            Msg::AskHold(to, ms) => {
                ctx.ask(to, Msg::Hold, Duration::from_millis(ms), Msg::Asked);
            }
            Msg::Asked(outcome) => self.outcome = Some(outcome),
            Msg::Outcome(reply) => drop(reply.send(self.outcome)),
        }
    }
}

fn start(url: &str, cluster: &str, name: &str, dead: Arc<Mutex<Vec<String>>>) -> TestNode {
    let config = ClusterConfig::new(url, cluster, name)
        .heartbeat(HEARTBEAT)
        .liveness_timeout(LIVENESS)
        .shards(2);
    Cluster::connect(config)
        .expect("connects")
        .start_with(
            Config::default(),
            Some(Arc::new(move |letter: DeadLetter<u64, Msg>| {
                let what = match (&letter.reason, &letter.message) {
                    (DeadLetterReason::Unreachable, Some(Msg::Odd(_))) => "odd unreachable",
                    (DeadLetterReason::Panicked(_), None) => "panicked",
                    _ => "other",
                };
                dead.lock().unwrap().push(what.to_string());
            })),
            |_: &u64| Activation::ready(Remote::default()),
        )
        .expect("starts")
}

/// IDs that `from` places on another node.
fn remote_ids(from: &TestNode, n: usize) -> Vec<u64> {
    (0..)
        .filter(|id| matches!(from.locate(id), Location::Node(_)))
        .take(n)
        .collect()
}

#[test]
fn asks_sends_and_serialization_errors_across_nodes() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let (dead_a, dead_b) = (Arc::default(), Arc::default());
    let a = start(&url, "remote", "a", Arc::clone(&dead_a));
    let b = start(&url, "remote", "b", Arc::clone(&dead_b));
    wait_members(&[&a, &b], 2);
    let ids = remote_ids(&a, 5);
    let hermes = a.hermes();

    // An ask the remote receiver never answers: the asker's own timeout.
    let started = Instant::now();
    let held = hermes.ask_blocking(ids[0], Msg::Hold, Duration::from_millis(300));
    assert_eq!(held, Err(AskError::Timeout));
    assert!(started.elapsed() >= Duration::from_millis(300));
    // Dropped unanswered, or panicked on: `Dropped`, well before a long timeout.
    let long = Duration::from_secs(30);
    assert_eq!(
        hermes.ask_blocking(ids[1], Msg::Drop, long),
        Err(AskError::Dropped)
    );
    assert_eq!(
        hermes.ask_blocking(ids[2], Msg::Boom, long),
        Err(AskError::Dropped)
    );

    // One sender's messages to a remote receiver arrive in order.
    for n in 0..2000 {
        hermes.send(ids[3], Msg::Seq(n)).unwrap();
    }
    let seen = hermes.ask_blocking(ids[3], Msg::Seen, long).unwrap();
    assert_eq!(seen, (0..2000).collect::<Vec<_>>());

    // A receiver's ask across nodes that is never answered: `Timeout` comes as a message.
    let local = (0..)
        .find(|id| !matches!(a.locate(id), Location::Node(_)))
        .unwrap();
    hermes.send(local, Msg::AskHold(ids[4], 200)).unwrap();
    let deadline = Instant::now() + long;
    loop {
        let outcome = hermes.ask_blocking(local, Msg::Outcome, long).unwrap();
        if let Some(outcome) = outcome {
            assert_eq!(outcome, Err(AskError::Timeout));
            break;
        }
        assert!(Instant::now() < deadline, "the ask never ended");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A message that does not serialize: accepted by the handle (routing is the shard's),
    // then a dead letter on the sending node, with its message, as `Unreachable`.
    hermes.send(ids[3], Msg::Odd(Local)).unwrap();
    let deadline = Instant::now() + long;
    while !dead_a
        .lock()
        .unwrap()
        .contains(&"odd unreachable".to_string())
    {
        assert!(
            Instant::now() < deadline,
            "no dead letter: {:?}",
            dead_a.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // The next message to that receiver still gets there.
    hermes.send(ids[3], Msg::Seq(2000)).unwrap();
    let seen = hermes.ask_blocking(ids[3], Msg::Seen, long).unwrap();
    assert_eq!(seen.last(), Some(&2000));
    assert_eq!(*dead_b.lock().unwrap(), ["panicked"]);
    a.shutdown();
    b.shutdown();
}
