//! A deterministic simulation of a whole cluster: several nodes, each running its real shards
//! under `hermes_sim::Sim` (seeded scheduling, virtual time), a simulated NATS between them
//! (message delays, per-publisher order, drops), simulated membership (heartbeats and expiry
//! in virtual time), a simulated key-value bucket with revisions, and faults: crash a node, cut
//! it off from the NATS server, heal it. Everything comes from one seed, so a failing run
//! replays.
//!
//! The cluster's decisions are the production code's: placement ([`owner`](crate::owner) and
//! the node's placement object), what a node does when it reads the membership
//! (`membership::apply_view`: the new view, the hand-off gate, then `Hermes::release_moved` and
//! the `Released` notice), the hand-off gate itself (`Gated`, the factory wrapper, over
//! `GateState::check`), whether a node may send to another (`transport::reachable`), what a
//! node does with a message that arrives (`transport::arrival`: deliver, pass on, or give up
//! after too many hops), what a heartbeat does with the node's own entry (`OwnEntry`: a write
//! expecting its last revision, the lease it renews, and when the entry expired,
//! `membership::drop_out`, the release of every receiver and a fresh join) and the
//! compare-and-set and lease of [`KvStore`] (over a simulated bucket instead of JetStream's,
//! the lease on the virtual clock). What is simulated is the I/O: NATS subjects, the JetStream
//! buckets and the clock.
//!
//! Each node runs on its own thread, but only one thread runs at a time (the scheduler hands a
//! baton to one node, and waits for it to hand it back): a node whose activation waits at the
//! hand-off gate blocks its shard, as on a real node, while the others go on, and the run
//! stays deterministic.
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//! use hermes_cluster::sim::{ClusterSim, NodeEnv, SimOptions};
//! use hermes_core::{Activation, Context};
//!
//! let handled = Arc::new(AtomicU64::new(0));
//! let counter = Arc::clone(&handled);
//! let mut sim = ClusterSim::new(7, SimOptions::default(), move |_env: &NodeEnv| {
//!     let counter = Arc::clone(&counter);
//!     move |_id: &u64| {
//!         let counter = Arc::clone(&counter);
//!         Activation::ready(move |_: &mut Context<'_, u64, u32>, _msg: u32| {
//!             counter.fetch_add(1, Ordering::Relaxed);
//!         })
//!     }
//! });
//! for node in ["a", "b", "c"] {
//!     sim.start(node);
//! }
//! sim.run_for(Duration::from_secs(2)); // every node sees the three
//! for id in 0..30 {
//!     sim.send("a", id, 1).unwrap(); // through a's handle, to wherever `id` lives
//! }
//! sim.run_for(Duration::from_secs(1));
//! assert_eq!(handled.load(Ordering::Relaxed), 30);
//! sim.crash("c");
//! sim.run_for(Duration::from_secs(5)); // the others notice, and take c's IDs
//! assert_eq!(sim.view("a").unwrap().len(), 2);
//! for id in 0..30 {
//!     sim.send("b", id, 1).unwrap();
//! }
//! sim.run_for(Duration::from_secs(1));
//! assert_eq!(handled.load(Ordering::Relaxed), 60);
//! assert!(sim.violations().is_empty());
//! ```
//!
//! Checks built in ([`ClusterSim::violations`]): an ID is never active (activated by the
//! factory and not yet deactivated) on two nodes at once while the cluster is healthy, i.e.
//! before the first partition or pause; whatever the faults, an ID is never active on two
//! nodes with writes the store accepted on both (a write accepted on one while another node
//! that has the ID active had one accepted since this node activated it); and a node whose
//! membership entry expired joins again with none of its old receivers active. Applications check the rest (no acknowledged save lost,
//! every message delivered or dead-lettered) with their own bookkeeping: see `tests/sim.rs`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, App, Config, Context, Deactivation, DeadLetter, DeadLetterReason, Factory, Key,
    Kind, KindTable, Message, NodeId, Receiver, Recipient, SendError, id_hash,
};
use hermes_executor::{Hermes, Released as ReleaseDone, Remote};
use hermes_sim::{Sim, SimClock};
use hermes_store::{Operation, StoreError};

use crate::KvStore;
use crate::membership::{self, Gate, GateCheck, Gated, Hold, Lease, OwnEntry, Refused};
use crate::node_id;
use crate::placement::ClusterPlacement;
use crate::store::{Bucket, Entry};
use crate::transport::{Arrival, arrival, reachable};

/// The timings and shape of a simulated cluster.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Local shards per node (default 2).
    pub shards: u32,
    /// How often a node heartbeats and reads the membership (default 500 ms).
    pub heartbeat: Duration,
    /// How long after its last heartbeat a node drops out of the membership (default 3 s).
    pub liveness: Duration,
    /// How long a node that gained IDs from a live node waits for its release (default 2 s).
    pub handoff_timeout: Duration,
    /// Network delay of one NATS message, drawn uniformly from this range (default 1 to 20
    /// ms); messages from one publisher to one subject keep their order, as NATS keeps them.
    pub delay: (Duration, Duration),
    /// The router configuration of every node.
    pub config: Config,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            shards: 2,
            heartbeat: Duration::from_millis(500),
            liveness: Duration::from_secs(3),
            handoff_timeout: Duration::from_secs(2),
            delay: (Duration::from_millis(1), Duration::from_millis(20)),
            config: Config::default(),
        }
    }
}

/// What a node's factory gets: the node's name and number, and its [`KvStore`] (on the
/// simulated bucket shared by all nodes; it fails while the node is crashed or cut off).
#[derive(Clone, Debug)]
pub struct NodeEnv {
    /// The node's name.
    pub name: String,
    /// The node's number ([`node_id`] of its name).
    pub id: NodeId,
    /// The cluster's state, as this node's process sees it.
    pub store: Arc<KvStore>,
}

/// A broken rule the simulation saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// Simulated time since the start.
    pub at: Duration,
    /// What happened.
    pub what: String,
}

/// The planted bug, for the tests that show the simulator catches it (feature
/// `fault-injection`).
#[cfg(feature = "fault-injection")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlantedBug {
    /// The hand-off gate is skipped: a node activates an ID it gained from a live node without
    /// waiting for that node to deactivate it and save its state.
    SkipHandoffGate,
    /// [`KvStore`] writes ignore revisions and the node's lease: a stale owner's save
    /// overwrites the new owner's instead of failing with `Conflict`.
    UnconditionalSave,
}

/// Dead letters with the node they happened on, shared with the node threads.
type DeadLetters<K, M> = Arc<Mutex<Vec<(String, DeadLetter<K, M>)>>>;

type MakeFactory<F> = Arc<dyn Fn(&NodeEnv) -> F + Send + Sync>;

/// A simulated cluster of nodes running one application. See the [module docs](self).
pub struct ClusterSim<K: Key, M: Message, F: Factory<K, M>> {
    seed: u64,
    rng: fastrand::Rng,
    options: SimOptions,
    make: MakeFactory<F>,
    clock: SimClock,
    nodes: BTreeMap<String, SimNode<K, M, F::App>>,
    /// Incarnations started so far, by name (a restarted node gets a fresh seed).
    incarnations: HashMap<String, u64>,
    net: Arc<Mutex<Network<K, M>>>,
    bucket: Arc<Mutex<BucketState>>,
    /// The membership bucket: each member's entry (expired ones are removed as it is read).
    members: BTreeMap<NodeId, MemberEntry>,
    /// The membership bucket's last revision.
    member_revision: u64,
    tracker: Arc<Mutex<Tracker<K>>>,
    dead: DeadLetters<K, M>,
    trace: Vec<String>,
    /// Activations that waited at the hand-off gate, and waits that timed out.
    gate_waits: u64,
    gate_timeouts: Arc<std::sync::atomic::AtomicU64>,
    #[cfg(feature = "fault-injection")]
    bug: Option<PlantedBug>,
}

/// A node's entry in the simulated membership bucket.
#[derive(Clone, Copy, Debug)]
struct MemberEntry {
    /// When it was written: it expires the liveness timeout later.
    at: Duration,
    revision: u64,
    /// Which start of the node wrote it (its announcement's instance).
    incarnation: u64,
}

/// What the scheduler keeps of a running node.
struct SimNode<K, M, A> {
    id: NodeId,
    /// Which start of its name this is.
    incarnation: u64,
    /// Its membership entry and lease, kept by the production code over the simulated bucket.
    own: OwnEntry,
    /// Its entry expired: it releases every receiver, and until that is done (or it gives up
    /// waiting, at the given time) it does not heartbeat, as on NATS.
    rejoining: Option<(ReleaseDone, Duration)>,
    commands: mpsc::Sender<Command>,
    reports: mpsc::Receiver<Report>,
    thread: Option<JoinHandle<()>>,
    hermes: Hermes<K, M, A>,
    placement: Arc<ClusterPlacement>,
    gate: Arc<Gate>,
    link: Arc<Link>,
    state: NodeState,
    /// Something arrived for it since it last ran.
    dirty: bool,
    /// Leaving: shutting down, which may wait at the hand-off gate.
    leaving: bool,
    /// Paused (a long stop of the process): it neither runs nor heartbeats.
    paused: bool,
    next_beat: Duration,
    /// Hand-offs whose release is not announced yet: the shards' signal, the view, and when
    /// the node gives up waiting and announces anyway.
    releasing: Vec<(ReleaseDone, u64, Duration)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum NodeState {
    /// Waiting for a command; its earliest shard deadline.
    Idle(Option<Duration>),
    /// Its shard waits at the hand-off gate for the ID with this hash.
    Blocked(u64),
}

/// The connection of a node's process to the (simulated) NATS server.
#[derive(Debug)]
struct Link {
    alive: AtomicBool,
    connected: AtomicBool,
}

impl Link {
    fn up(&self) -> bool {
        self.alive.load(Ordering::Relaxed) && self.connected.load(Ordering::Relaxed)
    }
}

enum Command {
    /// Run everything that can run now.
    Run,
    /// The hand-off gate it waits at may be open: look again.
    Resume,
    /// Stop now (a crash): drop everything.
    Crash,
    /// Shut down gracefully: deactivate (save) every receiver.
    Leave,
}

enum Report {
    Quiet(Option<Duration>),
    Blocked(u64),
    Stopped,
}

/// The scheduler and a node thread's shared line: commands in, reports out.
struct Baton {
    commands: Mutex<mpsc::Receiver<Command>>,
    reports: mpsc::Sender<Report>,
    stopping: AtomicBool,
    /// Told to leave while its shard waited at the gate: it leaves once the run is done.
    leaving: AtomicBool,
}

/// The hand-off gate's wait in a simulated node: instead of blocking on a condition variable
/// (the production [`Gate::wait`]), hand the baton back to the scheduler and wait for it to say
/// the gate may be open; the decision is the same [`Gate::check`].
struct SimHold {
    gate: Arc<Gate>,
    /// Waits that ended by the hand-off timeout, in this cluster.
    timeouts: Arc<std::sync::atomic::AtomicU64>,
    clock: SimClock,
    baton: Arc<Baton>,
    timeout: Duration,
}

impl Hold for SimHold {
    fn hold(&self, hash: u64, mine: &dyn Fn() -> bool) -> bool {
        loop {
            if !mine() {
                return false;
            }
            match self.gate.check(hash, self.clock.now()) {
                GateCheck::Open => return false,
                GateCheck::TimedOut => {
                    membership::gave_up(self.timeout);
                    self.timeouts.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                GateCheck::Wait(_) => {}
            }
            if self.baton.stopping.load(Ordering::Relaxed)
                || self.baton.reports.send(Report::Blocked(hash)).is_err()
            {
                return true;
            }
            let command = self
                .baton
                .commands
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .recv();
            match command {
                Ok(Command::Resume | Command::Run) => {}
                // Shutting down waits for the gate as a running node does (on NATS,
                // `Hermes::shutdown` waits for the shard that waits at the gate).
                Ok(Command::Leave) => self.baton.leaving.store(true, Ordering::Relaxed),
                Ok(Command::Crash) | Err(_) => {
                    self.baton.stopping.store(true, Ordering::Relaxed);
                    return true;
                }
            }
        }
    }
}

// ---- network ------------------------------------------------------------------------------------

enum Packet<K, M> {
    /// A frame of messages to node `to`.
    Mail { to: NodeId, items: Vec<(K, M, u8)> },
    /// `from` released what it lost in view `view` (to every node).
    Released { view: u64 },
}

struct InFlight<K, M> {
    at: Duration,
    seq: u64,
    from: NodeId,
    packet: Packet<K, M>,
}

/// Simulated core NATS: packets in flight, delivered after a seeded delay; one publisher's
/// packets to one subject keep their order.
struct Network<K, M> {
    rng: fastrand::Rng,
    delay: (Duration, Duration),
    clock: SimClock,
    seq: u64,
    flight: Vec<InFlight<K, M>>,
    /// The latest delivery time per (publisher, subject), to keep their order.
    last: HashMap<(NodeId, Option<NodeId>), Duration>,
    /// Packets published by a node cut off from the server: lost.
    lost: u64,
}

impl<K, M> Network<K, M> {
    fn publish(&mut self, from: NodeId, subject: Option<NodeId>, packet: Packet<K, M>) {
        let now = self.clock.elapsed();
        let (lo, hi) = self.delay;
        let span = u64::try_from(hi.saturating_sub(lo).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if span == 0 { 0 } else { self.rng.u64(..=span) };
        let delay = lo.saturating_add(Duration::from_nanos(jitter));
        let last = self.last.entry((from, subject)).or_default();
        let at = now.saturating_add(delay).max(*last);
        *last = at;
        self.seq += 1;
        self.flight.push(InFlight {
            at,
            seq: self.seq,
            from,
            packet,
        });
    }

    fn next_at(&self) -> Option<Duration> {
        self.flight.iter().map(|p| p.at).min()
    }

    /// The earliest packet due by `now`, if any.
    fn take_due(&mut self, now: Duration) -> Option<InFlight<K, M>> {
        let i = self
            .flight
            .iter()
            .enumerate()
            .filter(|(_, p)| p.at <= now)
            .min_by_key(|(_, p)| (p.at, p.seq))
            .map(|(i, _)| i)?;
        Some(self.flight.swap_remove(i))
    }
}

/// A node's transport in the simulation: the production checks, a simulated publish.
struct SimTransport<K, M> {
    placement: Arc<ClusterPlacement>,
    net: Arc<Mutex<Network<K, M>>>,
    link: Arc<Link>,
}

impl<K: Key, M: Message> Remote<K, M> for SimTransport<K, M> {
    fn deliver(&self, node: NodeId, batch: &mut Vec<(K, M)>) -> Result<(), DeadLetterReason> {
        reachable(&self.placement, node)?;
        let items: Vec<(K, M, u8)> = batch.drain(..).map(|(k, m)| (k, m, 0)).collect();
        let mut net = self.net.lock().unwrap_or_else(PoisonError::into_inner);
        if self.link.up() {
            let me = self.placement.me();
            net.publish(me, Some(node), Packet::Mail { to: node, items });
        } else {
            // As a NATS client cut off from its server: the publish is lost, not refused.
            net.lost += items.len() as u64;
        }
        Ok(())
    }
}

// ---- the state bucket ---------------------------------------------------------------------------

/// Simulated JetStream key-value bucket: values with revisions (one sequence for the bucket).
#[derive(Debug, Default)]
struct BucketState {
    seq: u64,
    entries: BTreeMap<Vec<u8>, (Option<Vec<u8>>, u64)>,
}

/// The bucket as one node's process reaches it: failing while the node is down or cut off.
struct SimBucket {
    state: Arc<Mutex<BucketState>>,
    link: Arc<Link>,
    /// Tells the tracker of each write the bucket accepted.
    wrote: Arc<dyn Fn() + Send + Sync>,
}

impl SimBucket {
    fn state(
        &self,
        op: Operation,
        key: Option<&[u8]>,
    ) -> Result<std::sync::MutexGuard<'_, BucketState>, StoreError> {
        if !self.link.up() {
            return Err(StoreError::other(
                op,
                key,
                "the JetStream key-value operation timed out: is the NATS server up, with \
                 JetStream enabled?",
            ));
        }
        Ok(self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl Bucket for SimBucket {
    fn entry(&self, key: &[u8]) -> Result<Entry, StoreError> {
        Ok(self
            .state(Operation::Get, Some(key))?
            .entries
            .get(key)
            .cloned())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
        let mut state = self.state(Operation::Put, Some(key))?;
        state.seq += 1;
        let revision = state.seq;
        state
            .entries
            .insert(key.to_vec(), (Some(value.to_vec()), revision));
        drop(state);
        (self.wrote)();
        Ok(revision)
    }

    fn update(&self, key: &[u8], value: &[u8], expected: u64) -> Result<u64, StoreError> {
        let mut state = self.state(Operation::Put, Some(key))?;
        let current = state.entries.get(key).map_or(0, |(_, r)| *r);
        if current != expected {
            return Err(StoreError::Conflict { key: key.to_vec() });
        }
        state.seq += 1;
        let revision = state.seq;
        state
            .entries
            .insert(key.to_vec(), (Some(value.to_vec()), revision));
        drop(state);
        (self.wrote)();
        Ok(revision)
    }

    fn delete(&self, key: &[u8], expected: Option<u64>) -> Result<u64, StoreError> {
        let mut state = self.state(Operation::Delete, Some(key))?;
        let current = state.entries.get(key).map_or(0, |(_, r)| *r);
        if expected.is_some_and(|e| e != current) {
            return Err(StoreError::Conflict { key: key.to_vec() });
        }
        state.seq += 1;
        let revision = state.seq;
        state.entries.insert(key.to_vec(), (None, revision));
        drop(state);
        (self.wrote)();
        Ok(revision)
    }

    fn keys(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let state = self.state(Operation::Scan, None)?;
        Ok(state
            .entries
            .iter()
            .filter(|(_, (v, _))| v.is_some())
            .map(|(k, _)| k.clone())
            .collect())
    }
}

// ---- where IDs are active -----------------------------------------------------------------------

/// The tracker, locked (a panic elsewhere leaves its records as they were: still readable).
fn track<K>(tracker: &Mutex<Tracker<K>>) -> std::sync::MutexGuard<'_, Tracker<K>> {
    tracker.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One activation of an ID on a node.
#[derive(Clone, Copy, Debug)]
struct Activity {
    since: Duration,
    wrote: Option<Duration>,
}

thread_local! {
    /// The hash of the ID whose receiver runs on this thread now: the store's writes are its.
    static WRITER: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` as the receiver of the ID with hash `hash` (its store writes count as that ID's).
fn as_writer<T>(hash: u64, f: impl FnOnce() -> T) -> T {
    let before = WRITER.replace(Some(hash));
    let out = f();
    WRITER.set(before);
    out
}

/// Which nodes have which IDs active, and the rules it checks.
struct Tracker<K> {
    clock: SimClock,
    active: HashMap<K, Vec<NodeId>>,
    /// No partition or pause so far: an ID must never be active on two nodes.
    healthy: bool,
    /// Each activation (by ID hash and node): since when, and its last write the store
    /// accepted.
    writes: HashMap<(u64, NodeId), Activity>,
    violations: Vec<Violation>,
    activations: u64,
    /// Nodes crashing: what their dropped shards still do is not activity of the cluster.
    crashing: Vec<NodeId>,
}

impl<K: Key> Tracker<K> {
    fn activated(&mut self, id: &K, node: NodeId) {
        if self.crashing.contains(&node) {
            return;
        }
        self.activations += 1;
        self.writes.insert(
            (id_hash(id), node),
            Activity {
                since: self.clock.elapsed(),
                wrote: None,
            },
        );
        let nodes = self.active.entry(id.clone()).or_default();
        if self.healthy && !nodes.is_empty() {
            let what = format!(
                "{id:?} activated on node {:016x} while active on {nodes:x?}",
                node.0
            );
            self.violations.push(Violation {
                at: self.clock.elapsed(),
                what,
            });
        }
        nodes.push(node);
    }

    /// The store accepted a write of `node`, made by the receiver of the ID with hash `id`
    /// (`None`: not in a receiver). No other node that has that ID active may have had a
    /// write accepted since this node activated it: whatever the faults, an ID is never
    /// active on two nodes with writes accepted on both (the lease and compare-and-set).
    fn wrote(&mut self, node: NodeId, id: Option<u64>) {
        let Some(hash) = id else {
            return;
        };
        if self.crashing.contains(&node) {
            return;
        }
        let now = self.clock.elapsed();
        let Some(since) = self.writes.get(&(hash, node)).map(|a| a.since) else {
            return;
        };
        let mut others: Vec<(NodeId, Duration)> = self
            .writes
            .iter()
            .filter(|((h, n), _)| *h == hash && *n != node)
            .filter_map(|(&(_, n), a)| a.wrote.filter(|&w| w >= since).map(|w| (n, w)))
            .collect();
        others.sort();
        if let Some(&(other, at)) = others.first() {
            self.violations.push(Violation {
                at: now,
                what: format!(
                    "the ID with hash {hash:016x} written on node {:016x} while active on \
                     {:016x}, which wrote it too at {at:?}, after this node activated it at \
                     {since:?}",
                    node.0, other.0
                ),
            });
        }
        if let Some(activity) = self.writes.get_mut(&(hash, node)) {
            activity.wrote = Some(now);
        }
    }

    /// How many IDs `node` has active.
    fn active_on(&self, node: NodeId) -> usize {
        self.active.values().filter(|n| n.contains(&node)).count()
    }

    fn deactivated(&mut self, id: &K, node: NodeId) {
        self.writes.remove(&(id_hash(id), node));
        if let Some(nodes) = self.active.get_mut(id) {
            if let Some(i) = nodes.iter().position(|&n| n == node) {
                nodes.swap_remove(i);
            }
            if nodes.is_empty() {
                self.active.remove(id);
            }
        }
    }

    fn forget_node(&mut self, node: NodeId) {
        self.writes.retain(|&(_, n), _| n != node);
        self.active.retain(|_, nodes| {
            nodes.retain(|&n| n != node);
            !nodes.is_empty()
        });
    }
}

/// The application's factory, recording activations and deactivations in the tracker.
struct Tracked<F, K> {
    inner: F,
    node: NodeId,
    tracker: Arc<Mutex<Tracker<K>>>,
}

impl<K: Key, M: Message, F: Factory<K, M>> Factory<K, M> for Tracked<F, K> {
    type App = F::App;

    fn create(&self, id: &K) -> Activation<K, M> {
        match self.inner.create(id) {
            Activation::Ready(receiver) => {
                track(&self.tracker).activated(id, self.node);
                Activation::ready(TrackedReceiver {
                    inner: receiver,
                    id: id.clone(),
                    node: self.node,
                    tracker: Arc::clone(&self.tracker),
                })
            }
            other => other,
        }
    }

    fn kinds(&self) -> Option<KindTable<K>> {
        self.inner.kinds()
    }
}

struct TrackedReceiver<K, M> {
    inner: Box<dyn Receiver<K, M>>,
    id: K,
    node: NodeId,
    tracker: Arc<Mutex<Tracker<K>>>,
}

impl<K: Key, M: Message> Receiver<K, M> for TrackedReceiver<K, M> {
    fn receive(&mut self, ctx: &mut Context<'_, K, M>, msg: M) {
        as_writer(id_hash(&self.id), || self.inner.receive(ctx, msg));
    }

    fn activated(&mut self, ctx: &mut Context<'_, K, M>) {
        as_writer(id_hash(&self.id), || self.inner.activated(ctx));
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, K, M>, why: Deactivation) {
        as_writer(id_hash(&self.id), || self.inner.deactivated(ctx, why));
        track(&self.tracker).deactivated(&self.id, self.node);
    }
}

// ---- the simulation -----------------------------------------------------------------------------

impl<K, M, F> ClusterSim<K, M, F>
where
    K: Key + Sync,
    M: Message,
    F: Factory<K, M>,
    F::App: App<Id = K, Msg = M>,
{
    /// A cluster with no nodes yet, every choice drawn from `seed`; `make` makes each node's
    /// factory (once per node start).
    pub fn new(
        seed: u64,
        options: SimOptions,
        make: impl Fn(&NodeEnv) -> F + Send + Sync + 'static,
    ) -> Self {
        let clock = SimClock::new();
        let mut rng = fastrand::Rng::with_seed(seed);
        let net = Network {
            rng: fastrand::Rng::with_seed(rng.u64(..)),
            delay: options.delay,
            clock: clock.clone(),
            seq: 0,
            flight: Vec::new(),
            last: HashMap::new(),
            lost: 0,
        };
        ClusterSim {
            seed,
            rng,
            options,
            make: Arc::new(make),
            tracker: Arc::new(Mutex::new(Tracker {
                clock: clock.clone(),
                active: HashMap::new(),
                healthy: true,
                writes: HashMap::new(),
                violations: Vec::new(),
                activations: 0,
                crashing: Vec::new(),
            })),
            clock,
            nodes: BTreeMap::new(),
            incarnations: HashMap::new(),
            net: Arc::new(Mutex::new(net)),
            bucket: Arc::new(Mutex::new(BucketState::default())),
            members: BTreeMap::new(),
            member_revision: 0,
            dead: Arc::new(Mutex::new(Vec::new())),
            trace: Vec::new(),
            gate_waits: 0,
            gate_timeouts: Arc::default(),
            #[cfg(feature = "fault-injection")]
            bug: None,
        }
    }

    /// Plants `bug` in every node started from now on.
    #[cfg(feature = "fault-injection")]
    pub fn with_bug(mut self, bug: PlantedBug) -> Self {
        self.bug = Some(bug);
        self
    }

    /// The seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Simulated time since the start.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    /// The simulated instant now (what receivers see as `Context::now`).
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    fn log(&mut self, what: impl std::fmt::Display) {
        let line = format!("{:?} {what}", self.clock.elapsed());
        tracing::debug!(seed = self.seed, "{line}");
        self.trace.push(line);
    }

    /// Starts a node named `name` (a new one joining, or one that crashed or left coming back):
    /// its shards, its transport, its first heartbeat and view, as `Cluster::start` does.
    ///
    /// # Panics
    ///
    /// If a node of that name is running, or its thread cannot start.
    pub fn start(&mut self, name: &str) {
        assert!(
            !self.nodes.contains_key(name),
            "node {name} is already running"
        );
        let id = node_id(name);
        let incarnation = self.incarnations.entry(name.to_owned()).or_default();
        *incarnation += 1;
        let node_seed =
            self.seed ^ id.0.rotate_left(17) ^ incarnation.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let link = Arc::new(Link {
            alive: AtomicBool::new(true),
            connected: AtomicBool::new(true),
        });
        let lease = Arc::new({
            let clock = self.clock.clone();
            Lease::with_clock(move || clock.now())
        });
        #[allow(unused_mut)]
        let wrote: Arc<dyn Fn() + Send + Sync> = {
            let tracker = Arc::clone(&self.tracker);
            Arc::new(move || track(&tracker).wrote(id, WRITER.get()))
        };
        let mut store = KvStore::new(
            SimBucket {
                state: Arc::clone(&self.bucket),
                link: Arc::clone(&link),
                wrote,
            },
            Arc::clone(&lease),
        );
        #[cfg(feature = "fault-injection")]
        {
            store.unconditional = self.bug == Some(PlantedBug::UnconditionalSave);
        }
        let store = Arc::new(store);
        let env = NodeEnv {
            name: name.to_owned(),
            id,
            store,
        };
        let placement = Arc::new(ClusterPlacement::new(id, true, self.options.shards));
        let gate = Arc::new(Gate::new(
            id,
            self.options.handoff_timeout,
            placement.view(),
            self.clock.now(),
        ));
        let (command_tx, command_rx) = mpsc::channel();
        let (report_tx, report_rx) = mpsc::channel();
        let baton = Arc::new(Baton {
            commands: Mutex::new(command_rx),
            reports: report_tx,
            stopping: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
        });
        let hold = SimHold {
            gate: Arc::clone(&gate),
            timeouts: Arc::clone(&self.gate_timeouts),
            clock: self.clock.clone(),
            baton: Arc::clone(&baton),
            timeout: self.options.handoff_timeout,
        };
        let gated: Gated<Tracked<F, K>> = Gated {
            inner: Tracked {
                inner: (self.make)(&env),
                node: id,
                tracker: Arc::clone(&self.tracker),
            },
            gate: Arc::new(hold) as Arc<dyn Hold>,
            placement: Arc::clone(&placement),
            #[cfg(feature = "fault-injection")]
            skip_gate: self.bug == Some(PlantedBug::SkipHandoffGate),
        };
        let transport: Arc<dyn Remote<K, M>> = Arc::new(SimTransport {
            placement: Arc::clone(&placement),
            net: Arc::clone(&self.net),
            link: Arc::clone(&link),
        });
        let (handle_tx, handle_rx) = mpsc::channel();
        let config = self.options.config.clone();
        let shards = self.options.shards;
        let clock = self.clock.clone();
        let dead = Arc::clone(&self.dead);
        let node_name = name.to_owned();
        let node_placement: Arc<dyn hermes_core::Placement<K>> = placement.clone();
        let thread = std::thread::Builder::new()
            .name(format!("sim-node-{name}"))
            .spawn(move || {
                let sim = Sim::new(node_seed, config, gated)
                    .with_clock(clock)
                    .with_node(node_placement, transport)
                    .with_shards(shards);
                let _ = handle_tx.send(sim.handle().clone());
                node_thread(sim, baton, dead, node_name);
            })
            .expect("a thread for a simulated node");
        let hermes = handle_rx
            .recv()
            .expect("the simulated node starts (see its panic above)");
        let beat_phase =
            Duration::from_nanos(self.rng.u64(
                ..=u64::try_from(self.options.heartbeat.as_nanos().max(1)).unwrap_or(u64::MAX),
            ));
        let node = SimNode {
            id,
            incarnation: *self.incarnations.get(name).unwrap_or(&0),
            own: OwnEntry::new(lease, self.options.liveness),
            rejoining: None,
            commands: command_tx,
            reports: report_rx,
            thread: Some(thread),
            hermes,
            placement,
            gate,
            link,
            state: NodeState::Idle(None),
            dirty: true,
            leaving: false,
            paused: false,
            next_beat: self.clock.elapsed().saturating_add(beat_phase),
            releasing: Vec::new(),
        };
        self.nodes.insert(name.to_owned(), node);
        self.log(format_args!("start {name} ({:016x})", id.0));
        // The first beat (and view) before start returns, as on NATS.
        self.beat(name);
        if let Some(node) = self.nodes.get(name) {
            node.gate.settle();
        }
    }

    /// Crashes node `name`: it stops at once, saves nothing more, and its heartbeats stop (the
    /// others notice after the liveness timeout). Messages in flight to it are lost.
    pub fn crash(&mut self, name: &str) {
        self.stop(name, Command::Crash);
        self.log(format_args!("crash {name}"));
    }

    /// Node `name` leaves gracefully: it deactivates (saves) every receiver, then removes its
    /// membership entry (the others take over at once). Shutting down may wait at the hand-off
    /// gate (a message for an ID it gained, drained at shutdown): the cluster runs meanwhile,
    /// and this returns once the node has left.
    pub fn leave(&mut self, name: &str) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        node.leaving = true;
        self.log(format_args!("leave {name}"));
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        if node.commands.send(Command::Leave).is_err() {
            self.node_died(name);
            return;
        }
        let report = node.reports.recv();
        self.handle_report(name, report);
        while self.nodes.contains_key(name) {
            let end = self.end(Duration::from_secs(3600));
            if !self.step(end) {
                break;
            }
        }
    }

    /// A leaving node has shut down: it leaves the membership.
    fn left(&mut self, name: &str) {
        let Some(mut node) = self.nodes.remove(name) else {
            return;
        };
        node.link.alive.store(false, Ordering::Relaxed);
        if let Some(thread) = node.thread.take()
            && let Err(panic) = thread.join()
        {
            std::panic::resume_unwind(panic);
        }
        track(&self.tracker).forget_node(node.id);
        self.members.remove(&node.id);
        self.log(format_args!("left {name}"));
    }

    fn stop(&mut self, name: &str, how: Command) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        if matches!(how, Command::Crash) {
            node.link.alive.store(false, Ordering::Relaxed);
            let mut tracker = track(&self.tracker);
            tracker.forget_node(node.id);
            tracker.crashing.push(node.id);
        }
        if node.commands.send(how).is_ok() {
            loop {
                match node.reports.recv() {
                    Ok(Report::Stopped) | Err(_) => break,
                    // A gate it waits at answered: it stops waiting (time stands still here).
                    Ok(_) => {
                        let _ = node.commands.send(Command::Crash);
                    }
                }
            }
        }
        let mut node = self.nodes.remove(name).expect("checked above");
        node.link.alive.store(false, Ordering::Relaxed);
        if let Some(thread) = node.thread.take()
            && let Err(panic) = thread.join()
        {
            std::panic::resume_unwind(panic);
        }
        let mut tracker = track(&self.tracker);
        tracker.forget_node(node.id);
        tracker.crashing.retain(|&n| n != node.id);
    }

    /// Cuts node `name` off from the NATS server: it cannot heartbeat, read the membership,
    /// send, receive or save, but keeps running (a partition). From now on the cluster is not
    /// healthy: an ID may be active on both sides.
    pub fn partition(&mut self, name: &str) {
        if let Some(node) = self.nodes.get(name) {
            node.link.connected.store(false, Ordering::Relaxed);
            track(&self.tracker).healthy = false;
            self.log(format_args!("partition {name}"));
        }
    }

    /// Pauses node `name` (a process stopped by a long garbage collection, a debugger, an
    /// overloaded machine): it neither runs nor heartbeats, but stays connected; messages for
    /// it wait. Past the liveness timeout the others take its IDs, and when it resumes it is a
    /// stale owner until it notices. From now on the cluster is not healthy.
    pub fn pause(&mut self, name: &str) {
        if let Some(node) = self.nodes.get_mut(name) {
            node.paused = true;
            track(&self.tracker).healthy = false;
            self.log(format_args!("pause {name}"));
        }
    }

    /// Resumes a paused node.
    pub fn resume(&mut self, name: &str) {
        if let Some(node) = self.nodes.get_mut(name) {
            node.paused = false;
            node.dirty = true;
            self.log(format_args!("resume {name}"));
        }
    }

    /// Reconnects node `name` to the NATS server.
    pub fn heal(&mut self, name: &str) {
        if let Some(node) = self.nodes.get(name) {
            node.link.connected.store(true, Ordering::Relaxed);
            self.log(format_args!("heal {name}"));
        }
    }

    /// Sends `msg` to `to` from outside, through node `via`'s handle (its placement decides
    /// where it goes). `Closed` if that node is not running.
    pub fn send<T: Kind<F::App>>(
        &mut self,
        via: &str,
        to: T::Id,
        msg: T,
    ) -> Result<(), SendError<T>> {
        let Some(node) = self.nodes.get_mut(via) else {
            return Err(SendError::Closed(msg));
        };
        node.dirty = true;
        node.hermes.try_send(to, msg)
    }

    /// The handle of node `name`, if it is running: `ask` and the other futures work through
    /// [`wait`](ClusterSim::wait).
    pub fn handle(&self, name: &str) -> Option<&Hermes<K, M, F::App>> {
        self.nodes.get(name).map(|n| &n.hermes)
    }

    /// Runs the cluster until `future` is ready, for at most `within` of simulated time.
    pub fn wait<T>(&mut self, within: Duration, future: impl Future<Output = T>) -> Option<T> {
        let mut future = std::pin::pin!(future);
        let mut cx = TaskContext::from_waker(Waker::noop());
        let end = self.end(within);
        loop {
            if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
                return Some(v);
            }
            if !self.step(end) {
                return None;
            }
        }
    }

    /// The running nodes' names.
    pub fn running(&self) -> Vec<String> {
        self.nodes.keys().cloned().collect()
    }

    /// The membership as node `name` sees it.
    pub fn view(&self, name: &str) -> Option<Vec<NodeId>> {
        self.nodes.get(name).map(|n| n.placement.view().to_vec())
    }

    /// Broken rules seen so far.
    pub fn violations(&self) -> Vec<Violation> {
        track(&self.tracker).violations.clone()
    }

    /// Activations that waited at the hand-off gate so far, and how many of those waits ended
    /// by the hand-off timeout rather than the previous owner's release.
    pub fn gate_waits(&self) -> (u64, u64) {
        (self.gate_waits, self.gate_timeouts.load(Ordering::Relaxed))
    }

    /// Activations so far, on all nodes.
    pub fn activations(&self) -> u64 {
        track(&self.tracker).activations
    }

    /// Takes the dead letters so far (on shards and in the transport), with the node they
    /// happened on.
    pub fn take_dead_letters(&mut self) -> Vec<(String, DeadLetter<K, M>)> {
        std::mem::take(&mut *self.dead.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Messages published by a node cut off from the server, so lost (NATS's at-most-once).
    pub fn lost_in_network(&self) -> u64 {
        self.net.lock().unwrap_or_else(PoisonError::into_inner).lost
    }

    /// The state bucket's value of `key` now, read directly.
    pub fn stored(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.bucket
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .get(key)
            .and_then(|(v, _)| v.clone())
    }

    /// What happened so far (starts, faults, views, hand-offs), one line each, with the
    /// simulated time: the same seed gives the same lines.
    pub fn trace(&self) -> &[String] {
        &self.trace
    }

    /// Runs the cluster for `duration` of simulated time (up to [`SimClock::MAX`]: a longer
    /// duration stops the clock there).
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.end(duration);
        while self.step(end) {}
        self.clock.advance_to(end);
    }

    /// The simulated time `within` from now, clamped to [`SimClock::MAX`].
    fn end(&self, within: Duration) -> Duration {
        self.elapsed().saturating_add(within).min(SimClock::MAX)
    }

    /// One round at the current instant, or moves the clock to the next thing to do (not past
    /// `end`). False when there is nothing to do until after `end`.
    fn step(&mut self, end: Duration) -> bool {
        let now = self.elapsed();
        let mut did = false;
        // Faults and deliveries due now.
        loop {
            let due = self
                .net
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take_due(now);
            let Some(packet) = due else { break };
            self.arrive(packet);
            did = true;
        }
        // Heartbeats due now.
        let due: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.next_beat <= now && !n.paused)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            if let Some(node) = self.nodes.get_mut(&name) {
                node.next_beat = now.saturating_add(self.options.heartbeat);
            }
            self.beat(&name);
            did = true;
        }
        // Nodes with something to do, in a seeded order.
        let mut names: Vec<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.paused)
            .filter(|(_, n)| match n.state {
                NodeState::Idle(deadline) => n.dirty || deadline.is_some_and(|d| d <= now),
                NodeState::Blocked(hash) => {
                    !matches!(n.gate.check(hash, self.clock.now()), GateCheck::Wait(_))
                        || n.placement.owner_of(hash) != Some(n.id)
                }
            })
            .map(|(name, _)| name.clone())
            .collect();
        self.rng.shuffle(&mut names);
        for name in names {
            self.run_node(&name);
            did = true;
        }
        // Nodes whose entry expired and whose receivers are released: they join again.
        let mut rejoined = Vec::new();
        for (name, node) in self.nodes.iter_mut().filter(|(_, n)| !n.paused) {
            let mut cx = TaskContext::from_waker(Waker::noop());
            if let Some((done, give_up)) = &mut node.rejoining
                && (Pin::new(&mut *done).poll(&mut cx).is_ready() || *give_up <= now)
            {
                rejoined.push(name.clone());
            }
        }
        for name in rejoined {
            self.rejoined(&name);
            did = true;
        }
        // Hand-offs whose release is done: announce them.
        let mut announce = Vec::new();
        for node in self.nodes.values_mut().filter(|n| !n.paused) {
            let mut cx = TaskContext::from_waker(Waker::noop());
            node.releasing.retain_mut(|(done, view, give_up)| {
                let ready = Pin::new(&mut *done).poll(&mut cx).is_ready();
                if ready || *give_up <= now {
                    announce.push((node.id, *view, node.link.up()));
                    false
                } else {
                    true
                }
            });
        }
        for (id, view, up) in announce {
            if up {
                self.net
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .publish(id, None, Packet::Released { view });
            }
            self.log(format_args!("released {:016x} view {view:016x}", id.0));
            did = true;
        }
        if did {
            return true;
        }
        // Nothing now: the next thing to do (what was due now has been done; a deadline that
        // is due but found nothing to do does not hold the clock).
        let mut next = self
            .net
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .next_at()
            .filter(|&at| at > now);
        let mut earliest = |at: Duration| {
            if at > now && next.is_none_or(|n| at < n) {
                next = Some(at);
            }
        };
        for node in self.nodes.values().filter(|n| !n.paused) {
            earliest(node.next_beat);
            if let NodeState::Idle(Some(deadline)) = node.state {
                earliest(deadline);
            }
            if let NodeState::Blocked(hash) = node.state
                && let GateCheck::Wait(until) = node.gate.check(hash, self.clock.now())
            {
                earliest(until.saturating_duration_since(self.clock.at(Duration::ZERO)));
            }
            for (_, _, give_up) in &node.releasing {
                earliest(*give_up);
            }
            if let Some((_, give_up)) = &node.rejoining {
                earliest(*give_up);
            }
        }
        match next {
            Some(at) if at <= end => {
                self.clock.advance_to(at);
                true
            }
            _ => false,
        }
    }

    /// Hands the baton to node `name` until it is quiet or blocked at the gate.
    fn run_node(&mut self, name: &str) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        node.dirty = false;
        let command = match node.state {
            NodeState::Idle(_) => Command::Run,
            NodeState::Blocked(_) => Command::Resume,
        };
        if node.commands.send(command).is_err() {
            self.node_died(name);
            return;
        }
        let report = node.reports.recv();
        self.handle_report(name, report);
    }

    /// What node `name` said when it handed the baton back.
    fn handle_report(&mut self, name: &str, report: Result<Report, mpsc::RecvError>) {
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        match report {
            Ok(Report::Quiet(deadline)) => node.state = NodeState::Idle(deadline),
            Ok(Report::Blocked(hash)) => {
                let first = !matches!(node.state, NodeState::Blocked(_));
                node.state = NodeState::Blocked(hash);
                if first {
                    self.gate_waits += 1;
                    self.log(format_args!("gate {name} waits for {hash:016x}"));
                }
            }
            Ok(Report::Stopped) if node.leaving => self.left(name),
            Ok(Report::Stopped) | Err(_) => self.node_died(name),
        }
    }

    /// A node thread ended without being told to: it panicked. Re-raise the panic here.
    fn node_died(&mut self, name: &str) {
        if let Some(mut node) = self.nodes.remove(name)
            && let Some(thread) = node.thread.take()
            && let Err(panic) = thread.join()
        {
            std::panic::resume_unwind(panic);
        }
        panic!(
            "cluster sim (seed {}): node {name} stopped unexpectedly",
            self.seed
        );
    }

    /// Node `name` heartbeats and reads the membership, as `Heartbeat::beat` does on NATS:
    /// it writes its entry expecting the revision it last wrote ([`OwnEntry`]); if the entry
    /// expired meanwhile, it drops out and releases every receiver ([`membership::drop_out`])
    /// and heartbeats again once that is done ([`ClusterSim::rejoined`]).
    fn beat(&mut self, name: &str) {
        let now = self.elapsed();
        let Some(node) = self.nodes.get(name) else {
            return;
        };
        if !node.link.up() || node.rejoining.is_some() {
            // The put and the read fail (or, rejoining, wait): the view stays as it was.
            return;
        }
        // The bucket forgets entries past their age.
        let liveness = self.options.liveness;
        self.members
            .retain(|_, entry| entry.at.saturating_add(liveness) > now);
        let (id, incarnation) = (node.id, node.incarnation);
        let current = self.members.get(&id).copied();
        let write = match node.own.expected() {
            None => true,
            Some(expected) => current.is_some_and(|entry| entry.revision == expected),
        };
        if write {
            self.member_revision += 1;
            let revision = self.member_revision;
            self.members.insert(
                id,
                MemberEntry {
                    at: now,
                    revision,
                    incarnation,
                },
            );
            node.own.written(revision, self.clock.now());
        } else {
            let entry = current.map(|entry| (entry.revision, entry.incarnation == incarnation));
            if node.own.refused(entry) == Refused::Expired {
                self.log(format_args!("expired {name}: drops out"));
                let give_up = now.saturating_add(self.release_timeout());
                let Some(node) = self.nodes.get_mut(name) else {
                    return;
                };
                membership::drop_out(&node.placement, &node.gate, self.clock.now());
                let released = node.hermes.release_moved();
                node.rejoining = Some((released, give_up));
                node.dirty = true;
                return;
            }
        }
        let nodes: Vec<NodeId> = self.members.keys().copied().collect();
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        let Some(view) =
            membership::apply_view(&node.placement, &node.gate, nodes, self.clock.now())
        else {
            return;
        };
        let released = node.hermes.release_moved();
        let give_up = now.saturating_add(self.release_timeout());
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        node.releasing.push((released, view, give_up));
        node.dirty = true;
        let mut line = format!("view {name} {view:016x}:");
        for n in node.placement.view().iter() {
            let _ = write!(line, " {:016x}", n.0);
        }
        self.log(line);
    }

    /// How long a node waits for its receivers to be released before it goes on, as on NATS.
    fn release_timeout(&self) -> Duration {
        self.options
            .handoff_timeout
            .max(Duration::from_secs(1))
            .saturating_mul(5)
    }

    /// Node `name`, whose entry expired, has released its receivers (or given up waiting): it
    /// announces itself again and reads the membership, joining as a fresh node.
    fn rejoined(&mut self, name: &str) {
        let now = self.elapsed();
        let Some(node) = self.nodes.get_mut(name) else {
            return;
        };
        node.rejoining = None;
        node.next_beat = now.saturating_add(self.options.heartbeat);
        let id = node.id;
        // It joins as a fresh node: nothing it ran before its entry expired is left.
        let left = track(&self.tracker).active_on(id);
        if left > 0 {
            let mut tracker = track(&self.tracker);
            tracker.violations.push(Violation {
                at: now,
                what: format!(
                    "node {name} ({:016x}) joins again with {left} receivers still active from \
                     before its membership entry expired",
                    id.0
                ),
            });
        }
        self.log(format_args!("rejoin {name}"));
        self.beat(name);
    }

    /// A packet reaches its subject's subscribers.
    fn arrive(&mut self, packet: InFlight<K, M>) {
        match packet.packet {
            Packet::Released { view } => {
                for node in self.nodes.values_mut() {
                    if node.link.up() {
                        node.gate.released(packet.from, view);
                    }
                }
            }
            Packet::Mail { to, items } => {
                let Some((name, node)) = self.nodes.iter_mut().find(|(_, n)| n.id == to) else {
                    // Nobody subscribes to a dead node's subject: NATS drops it.
                    self.net.lock().unwrap_or_else(PoisonError::into_inner).lost +=
                        items.len() as u64;
                    return;
                };
                if !node.link.up() {
                    self.net.lock().unwrap_or_else(PoisonError::into_inner).lost +=
                        items.len() as u64;
                    return;
                }
                node.dirty = true;
                let mut dead = Vec::new();
                for (id, msg, hops) in items {
                    match arrival(&node.placement, &id, hops) {
                        Arrival::TooManyHops => {
                            dead.push((id, msg, DeadLetterReason::Unreachable));
                        }
                        Arrival::Forward(next, hops) => match reachable(&node.placement, next) {
                            Ok(()) => self
                                .net
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner)
                                .publish(
                                    to,
                                    Some(next),
                                    Packet::Mail {
                                        to: next,
                                        items: vec![(id, msg, hops)],
                                    },
                                ),
                            Err(reason) => dead.push((id, msg, reason)),
                        },
                        Arrival::Here => {
                            // On NATS the transport waits for room (`deliver_async`); here a
                            // full inbox is a dead letter.
                            let mut delivered =
                                std::pin::pin!(node.hermes.deliver_async(id.clone(), msg));
                            let mut cx = TaskContext::from_waker(Waker::noop());
                            match delivered.as_mut().poll(&mut cx) {
                                Poll::Ready(Ok(())) => {}
                                Poll::Ready(Err(e)) => {
                                    let reason = match &e {
                                        SendError::Full(_) => DeadLetterReason::Full,
                                        SendError::Unreachable(_) => DeadLetterReason::Unreachable,
                                        _ => DeadLetterReason::Closed,
                                    };
                                    dead.push((id, e.into_inner(), reason));
                                }
                                Poll::Pending => {
                                    tracing::warn!(
                                        ?id,
                                        "a full inbox in the simulation: message dropped"
                                    );
                                }
                            }
                        }
                    }
                }
                let name = name.clone();
                let mut sink = self.dead.lock().unwrap_or_else(PoisonError::into_inner);
                for (id, msg, reason) in dead {
                    sink.push((
                        name.clone(),
                        DeadLetter {
                            recipient: Recipient::Id(id),
                            message: Some(msg),
                            reason,
                        },
                    ));
                }
            }
        }
    }
}

impl<K: Key, M: Message, F: Factory<K, M>> Drop for ClusterSim<K, M, F> {
    fn drop(&mut self) {
        for (_, mut node) in std::mem::take(&mut self.nodes) {
            node.link.alive.store(false, Ordering::Relaxed);
            if node.commands.send(Command::Crash).is_ok() {
                while let Ok(report) = node.reports.recv() {
                    match report {
                        Report::Stopped => break,
                        _ => {
                            let _ = node.commands.send(Command::Crash);
                        }
                    }
                }
            }
            if let Some(thread) = node.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl<K: Key, M: Message, F: Factory<K, M>> std::fmt::Debug for ClusterSim<K, M, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterSim")
            .field("seed", &self.seed)
            .field("elapsed", &self.clock.elapsed())
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A node's thread: runs its simulation when the scheduler says so.
fn node_thread<K: Key, M: Message, A: App<Id = K, Msg = M>>(
    mut sim: Sim<K, M, A>,
    baton: Arc<Baton>,
    dead: DeadLetters<K, M>,
    name: String,
) {
    let collect = |sim: &mut Sim<K, M, A>| {
        let letters = sim.take_dead_letters();
        if !letters.is_empty() {
            let mut dead = dead.lock().unwrap_or_else(PoisonError::into_inner);
            dead.extend(letters.into_iter().map(|l| (name.clone(), l)));
        }
    };
    loop {
        let command = baton
            .commands
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .recv();
        match command {
            Ok(Command::Run | Command::Resume) => {
                sim.run_until_quiet();
                collect(&mut sim);
                if baton.stopping.load(Ordering::Relaxed) {
                    break;
                }
                if baton.leaving.load(Ordering::Relaxed) {
                    sim.close();
                    collect(&mut sim);
                    break;
                }
                if baton
                    .reports
                    .send(Report::Quiet(sim.next_deadline()))
                    .is_err()
                {
                    return;
                }
            }
            Ok(Command::Leave) => {
                sim.close();
                collect(&mut sim);
                break;
            }
            Ok(Command::Crash) | Err(_) => {
                baton.stopping.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    baton.stopping.store(true, Ordering::Relaxed);
    // A crash drops the shards unclosed: they close here, but the store refuses their saves.
    drop(sim);
    let _ = baton.reports.send(Report::Stopped);
}
