//! Membership changes under traffic, checked as an application would: a third node joins and
//! then one leaves while one sender keeps sending numbered messages to 40 IDs. Every message is
//! applied once or is a dead letter (none lost, none applied twice), no ID is ever active on two
//! nodes at once (the hand-off barrier), and each ID's durable state, saved when it moves and
//! loaded by its next owner, counts every message it was sent.

mod support;
use support::{HEARTBEAT, LIVENESS, SETTLE, wait_members, wait_until};

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_cluster::testing::NatsServer;
use hermes_cluster::{Cluster, ClusterConfig, KvStore, Node};
use hermes_core::{
    Activation, AskError, Config, Context, Deactivation, DeadLetter, Receiver, Recipient, Reply,
};
use hermes_store::Codec;
use serde::{Deserialize, Serialize};

const IDS: u64 = 40;

#[derive(Serialize, Deserialize, Debug)]
enum Msg {
    Apply(u64),
    Count(Reply<u64>),
}

type TestNode = Node<u64, Msg, (u64, Msg)>;

/// What every node of the test shares (they run in one process).
#[derive(Default)]
struct World {
    /// The IDs active now, with the node that runs them.
    active: Mutex<HashMap<u64, String>>,
    /// Activations, by node.
    activations: Mutex<HashMap<String, u64>>,
    /// Activations of an ID already active on another node.
    doubles: Mutex<Vec<String>>,
    /// Every (ID, number) applied, on any node.
    applied: Mutex<HashSet<(u64, u64)>>,
    /// Numbers applied twice.
    twice: Mutex<Vec<(u64, u64)>>,
    /// Numbers that ended as dead letters.
    dead: Mutex<Vec<(u64, u64)>>,
    /// Saves that failed.
    failed_saves: AtomicU64,
}

const COUNT: Codec<u64> = Codec::new(1);

fn key(id: u64) -> String {
    format!("count/{id}")
}

struct Account {
    node: String,
    count: u64,
    store: Arc<KvStore>,
    world: Arc<World>,
}

impl Receiver<u64, Msg> for Account {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Msg>, msg: Msg) {
        match msg {
            Msg::Apply(n) => {
                self.count += 1;
                if !self.world.applied.lock().unwrap().insert((*ctx.id(), n)) {
                    self.world.twice.lock().unwrap().push((*ctx.id(), n));
                }
            }
            Msg::Count(reply) => drop(reply.send(self.count)),
        }
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, u64, Msg>, _why: Deactivation) {
        let id = *ctx.id();
        if let Err(e) = COUNT.save(self.store.as_ref(), key(id).as_bytes(), &self.count) {
            eprintln!("{} could not save {id}: {e}", self.node);
            self.world.failed_saves.fetch_add(1, Ordering::Relaxed);
        }
        // After the save: the next owner may load it from here on.
        self.world.active.lock().unwrap().remove(&id);
    }
}

fn start(url: &str, name: &str, world: &Arc<World>) -> TestNode {
    let cluster = Cluster::connect(
        ClusterConfig::new(url, "traffic", name)
            .heartbeat(HEARTBEAT)
            .liveness_timeout(LIVENESS)
            .shards(2),
    )
    .expect("connects");
    let store = cluster.store();
    let (node, world, dead) = (name.to_owned(), Arc::clone(world), Arc::clone(world));
    cluster
        .start_with(
            Config::default(),
            Some(Arc::new(move |letter: DeadLetter<u64, Msg>| {
                match (&letter.recipient, &letter.message) {
                    (Recipient::Id(id), Some(Msg::Apply(n))) => {
                        dead.dead.lock().unwrap().push((*id, *n))
                    }
                    _ => eprintln!("dead letter: {}", letter.reason),
                }
            })),
            move |&id: &u64| {
                *world
                    .activations
                    .lock()
                    .unwrap()
                    .entry(node.clone())
                    .or_default() += 1;
                if let Some(other) = world.active.lock().unwrap().insert(id, node.clone()) {
                    world
                        .doubles
                        .lock()
                        .unwrap()
                        .push(format!("{id} activated on {node} while active on {other}"));
                }
                match COUNT.load(store.as_ref(), key(id).as_bytes()) {
                    Ok(count) => Activation::ready(Account {
                        node: node.clone(),
                        count: count.unwrap_or(0),
                        store: Arc::clone(&store),
                        world: Arc::clone(&world),
                    }),
                    Err(e) => {
                        world.active.lock().unwrap().remove(&id);
                        Activation::failed(e)
                    }
                }
            },
        )
        .expect("starts")
}

#[test]
fn a_node_joins_and_one_leaves_under_traffic() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let world = Arc::new(World::default());
    let a = Arc::new(start(&url, "a", &world));
    let b = start(&url, "b", &world);
    wait_members(&[&a, &b], 2);

    // One sender, through node a: message n goes to ID n % IDS.
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (a, sent, stop) = (Arc::clone(&a), Arc::clone(&sent), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..IDS {
                    // A refused send is a dead letter too (the sink saw it).
                    let _ = a.hermes().send(n % IDS, Msg::Apply(n));
                    n += 1;
                }
                sent.store(n, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let progress = |what: &str| {
        let at = sent.load(Ordering::Relaxed);
        wait_until(what, SETTLE, || {
            sent.load(Ordering::Relaxed) > at + 10 * IDS
        });
    };
    progress("traffic before the join");
    let c = start(&url, "c", &world);
    wait_members(&[&a, &b, &c], 3);
    progress("traffic after the join");
    b.shutdown();
    wait_members(&[&a, &c], 2);
    progress("traffic after b left");
    stop.store(true, Ordering::Relaxed);
    sender.join().unwrap();
    let sent = sent.load(Ordering::Relaxed);

    let settled =
        || (world.applied.lock().unwrap().len() + world.dead.lock().unwrap().len()) as u64 >= sent;
    wait_until("every message applied or a dead letter", SETTLE, settled);
    let dead = world.dead.lock().unwrap().clone();
    eprintln!(
        "{sent} sent, {} applied, {} dead letters",
        world.applied.lock().unwrap().len(),
        dead.len()
    );
    assert!(
        world.doubles.lock().unwrap().is_empty(),
        "{:?}",
        world.doubles.lock().unwrap()
    );
    assert!(
        world.twice.lock().unwrap().is_empty(),
        "{:?}",
        world.twice.lock().unwrap()
    );
    assert_eq!(world.failed_saves.load(Ordering::Relaxed), 0);
    let applied = world.applied.lock().unwrap().clone();
    for n in 0..sent {
        let id = n % IDS;
        assert!(
            applied.contains(&(id, n)) != dead.contains(&(id, n)),
            "message {n} to {id}: applied {}, dead letter {}",
            applied.contains(&(id, n)),
            dead.contains(&(id, n))
        );
    }
    // Each ID's state went with it: its count is every message applied to it, wherever.
    for id in 0..IDS {
        let expected = applied.iter().filter(|(i, _)| *i == id).count() as u64;
        let count: Result<u64, AskError> =
            a.hermes()
                .ask_blocking(id, Msg::Count, Duration::from_secs(5));
        assert_eq!(count, Ok(expected), "id {id}'s durable count");
    }
    c.shutdown();
    match Arc::try_unwrap(a) {
        Ok(a) => a.shutdown(),
        Err(_) => panic!("the sender is done: a has one owner"),
    }
}
