//! Three nodes as three processes on a real nats-server: a bank of 10,000 accounts spread
//! over them, transfers between accounts on different nodes, one node killed with SIGKILL
//! mid-load. Its accounts re-activate on the survivors from their JetStream state; the total
//! balance is conserved and no acknowledged transfer is lost. Then the node comes back and
//! takes its share again.
//!
//! The nodes are this test binary run again with `HERMES_BANK_NODE` set: the test
//! `bank_node` is a node's main and does nothing otherwise.

mod support;
use support::{SETTLE, wait_until};

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_cluster::testing::NatsServer;
use hermes_cluster::{Cluster, ClusterConfig, KvStore, Node};
use hermes_core::{Activation, Config, Context, Location, NodeId, Receiver, Reply};
use hermes_store::{Codec, StoreError};
use serde::{Deserialize, Serialize};

const ACCOUNTS: u64 = 10_000;
const OPENING: i64 = 100;
const CLUSTER: &str = "bank";

/// An account's messages: idempotent by transfer number.
#[derive(Serialize, Deserialize, Debug)]
enum Account {
    /// Take `amount` for transfer `transfer`: `Ok(true)` taken, `Ok(false)` not enough.
    Debit(u64, i64, Reply<Result<bool, String>>),
    /// Add `amount` for transfer `transfer`.
    Credit(u64, i64, Reply<Result<(), String>>),
}

type Bank = (u64, Account);

/// What an account keeps: its balance and the transfers it applied (with a debit's outcome).
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
struct State {
    balance: i64,
    applied: BTreeMap<u64, bool>,
}

const STATE: Codec<State> = Codec::new(1);

fn key(id: u64) -> String {
    format!("acct/{id}")
}

struct AccountReceiver {
    state: State,
    store: Arc<KvStore>,
}

impl AccountReceiver {
    /// Saves `next` (compare-and-set); on failure this instance is stale: it stops.
    fn commit(&mut self, ctx: &mut Context<'_, u64, Account>, next: State) -> Result<(), String> {
        match STATE.save(self.store.as_ref(), key(*ctx.id()).as_bytes(), &next) {
            Ok(()) => {
                self.state = next;
                Ok(())
            }
            Err(e) => {
                ctx.stop();
                Err(e.to_string())
            }
        }
    }
}

impl Receiver<u64, Account> for AccountReceiver {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Account>, msg: Account) {
        match msg {
            Account::Debit(transfer, amount, reply) => {
                if let Some(&done) = self.state.applied.get(&transfer) {
                    let _ = reply.send(Ok(done));
                    return;
                }
                let ok = self.state.balance >= amount;
                let mut next = self.state.clone();
                if ok {
                    next.balance -= amount;
                }
                next.applied.insert(transfer, ok);
                let _ = reply.send(self.commit(ctx, next).map(|()| ok));
            }
            Account::Credit(transfer, amount, reply) => {
                if self.state.applied.contains_key(&transfer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let mut next = self.state.clone();
                next.balance += amount;
                next.applied.insert(transfer, true);
                let _ = reply.send(self.commit(ctx, next));
            }
        }
    }
}

/// The liveness timeout is what the killed node's removal waits for: short, but many heartbeats,
/// so that a loaded machine stalling a live node's heartbeats does not drop it too.
fn config(url: &str, name: &str) -> ClusterConfig {
    ClusterConfig::new(url, CLUSTER, name)
        .heartbeat(Duration::from_millis(200))
        .liveness_timeout(Duration::from_secs(3))
        .handoff_timeout(Duration::from_secs(2))
        .shards(2)
}

fn load(store: &KvStore, id: u64) -> Result<State, StoreError> {
    Ok(STATE.load(store, key(id).as_bytes())?.unwrap_or(State {
        balance: OPENING,
        applied: BTreeMap::new(),
    }))
}

/// A node's main, when this binary runs as one (`HERMES_BANK_NODE=name`): serves accounts
/// until its standard input closes.
#[test]
fn bank_node() {
    let (Ok(name), Ok(url)) = (
        std::env::var("HERMES_BANK_NODE"),
        std::env::var("HERMES_BANK_NATS"),
    ) else {
        return;
    };
    let cluster = Cluster::connect(config(&url, &name)).expect("the node connects");
    let store = cluster.store();
    let node: Node<u64, Account, Bank> = cluster
        .start(Config::default(), move |id: &u64| match load(&store, *id) {
            Ok(state) => Activation::ready(AccountReceiver {
                state,
                store: Arc::clone(&store),
            }),
            Err(e) => Activation::failed(e),
        })
        .expect("the node starts");
    println!("ready {}", node.id().0);
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    node.shutdown();
}

/// A node process.
struct Proc {
    child: Child,
}

impl Proc {
    fn start(url: &str, name: &str) -> Proc {
        let child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "bank_node", "--nocapture", "--test-threads=1"])
            .env("HERMES_BANK_NODE", name)
            .env("HERMES_BANK_NATS", url)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("a node process starts");
        Proc { child }
    }

    fn kill(mut self) {
        // SIGKILL: no shutdown, no goodbye; its heartbeats just stop.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        std::mem::forget(self);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // a graceful leave
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

type Client = Node<u64, Account, Bank>;

fn wait_members(client: &Client, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while client.members().len() != n {
        assert!(
            Instant::now() < deadline,
            "waited {within:?} for the membership to reach {n} nodes (it has {:?})",
            client.members()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asks until a definite answer (requests are idempotent), for at most a minute.
fn until_answered<R>(
    client: &Client,
    id: u64,
    make: impl Fn(Reply<Result<R, String>>) -> Account,
) -> R {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client
            .hermes()
            .ask_blocking(id, &make, Duration::from_millis(1000))
        {
            Ok(Ok(answer)) => return answer,
            Ok(Err(_)) | Err(_) => {
                assert!(Instant::now() < deadline, "account {id} never answered");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

/// One transfer, driven to completion: debit (retried until answered), then credit (retried
/// until answered). Returns whether money moved.
fn transfer(client: &Client, number: u64, from: u64, to: u64, amount: i64) -> bool {
    let debited = until_answered(client, from, |r| Account::Debit(number, amount, r));
    if debited {
        until_answered(client, to, |r| Account::Credit(number, amount, r));
    }
    debited
}

/// Acknowledged transfers: (number, from, to).
type Acked = Arc<Mutex<Vec<(u64, u64, u64)>>>;

/// Transfers from several threads until `stop`; each acknowledged transfer is recorded.
fn load_run(
    client: &Arc<Client>,
    threads: u64,
    base: u64,
    stop: &Arc<AtomicBool>,
    acked: &Acked,
    done: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let (client, stop, acked, done) = (
                Arc::clone(client),
                Arc::clone(stop),
                Arc::clone(acked),
                Arc::clone(done),
            );
            std::thread::spawn(move || {
                let mut rng = fastrand::Rng::with_seed(base + t);
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let number = base + t * 1_000_000 + i;
                    i += 1;
                    let from = rng.u64(0..ACCOUNTS);
                    let mut to = rng.u64(0..ACCOUNTS);
                    if to == from {
                        to = (to + 1) % ACCOUNTS;
                    }
                    if transfer(&client, number, from, to, rng.i64(1..=30)) {
                        acked.lock().unwrap().push((number, from, to));
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect()
}

/// Checks, from the state in JetStream, that money is conserved and every acknowledged
/// transfer is recorded by both of its accounts.
fn audit(store: &KvStore, acked: &[(u64, u64, u64)]) {
    let mut total = 0;
    let mut states = Vec::with_capacity(ACCOUNTS as usize);
    for id in 0..ACCOUNTS {
        let state = load(store, id).expect("state loads");
        total += state.balance;
        assert!(state.balance >= 0, "account {id} is negative");
        states.push(state);
    }
    assert_eq!(total, OPENING * ACCOUNTS as i64, "money is not conserved");
    for &(number, from, to) in acked {
        assert_eq!(
            states[from as usize].applied.get(&number),
            Some(&true),
            "acknowledged transfer {number} lost its debit"
        );
        assert!(
            states[to as usize].applied.contains_key(&number),
            "acknowledged transfer {number} lost its credit"
        );
    }
}

#[test]
fn three_processes_kill_and_rejoin() {
    if std::env::var_os("HERMES_BANK_NODE").is_some() {
        return;
    }
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let nodes: Vec<Proc> = ["a", "b", "c"]
        .iter()
        .map(|n| Proc::start(&url, n))
        .collect();
    let joined = Cluster::connect(config(&url, "driver").client()).unwrap();
    let store = joined.store();
    let client: Arc<Client> = Arc::new(
        joined
            .start(Config::default(), |_: &u64| {
                Activation::<u64, Account>::Refused
            })
            .unwrap(),
    );
    wait_members(&client, 3, Duration::from_secs(30));
    let b = hermes_cluster::node_id("b");

    // Load, then kill b mid-load.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let done = Arc::new(AtomicU64::new(0));
    let threads = load_run(&client, 8, 1, &stop, &acked, &done);
    wait_until(
        "50 transfers before the kill",
        Duration::from_secs(60),
        || done.load(Ordering::Relaxed) > 50,
    );
    let mut nodes = nodes.into_iter();
    let (a, killed, c) = (
        nodes.next().unwrap(),
        nodes.next().unwrap(),
        nodes.next().unwrap(),
    );
    killed.kill();
    wait_members(&client, 2, SETTLE);
    // Keep going on the survivors: b's accounts re-activate there from their saved state.
    let at_removal = done.load(Ordering::Relaxed);
    wait_until(
        "50 transfers after b was removed",
        Duration::from_secs(60),
        || done.load(Ordering::Relaxed) > at_removal + 50,
    );
    let on_b_survivors = (0..ACCOUNTS)
        .filter(|id| client.locate(id) == Location::Node(b))
        .count();
    assert_eq!(on_b_survivors, 0, "no account is placed on the dead node");
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    audit(&store, &acked.lock().unwrap());
    let first = acked.lock().unwrap().len();

    // b comes back and takes its share again.
    let b_again = Proc::start(&url, "b");
    wait_members(&client, 3, Duration::from_secs(30));
    let on_b: Vec<u64> = (0..ACCOUNTS)
        .filter(|id| client.locate(id) == Location::Node(b))
        .collect();
    assert!(
        (2_500..4_200).contains(&on_b.len()),
        "b owns {} accounts after rejoining",
        on_b.len()
    );
    stop.store(false, Ordering::Relaxed);
    let threads = load_run(&client, 8, 2, &stop, &acked, &done);
    std::thread::sleep(Duration::from_secs(2));
    // Transfers between accounts b owns again go through b.
    for (i, pair) in on_b.chunks(2).take(20).enumerate() {
        if let [from, to] = pair {
            transfer(&client, 9_000_000_000 + i as u64, *from, *to, 1);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let all = acked.lock().unwrap().clone();
    assert!(all.len() > first, "no transfers after b rejoined");
    audit(&store, &all);
    eprintln!(
        "kill-and-rejoin: {} transfers acknowledged ({} before the rejoin), {} attempted",
        all.len(),
        first,
        done.load(Ordering::Relaxed)
    );
    drop((a, c, b_again));
    let _ = NodeId(0);
}
