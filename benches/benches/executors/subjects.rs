//! The systems under test, shared by the `executors` and `executors_memory` benchmarks: Hermes on
//! each executor, the peer frameworks (actix, kameo, ractor) with their idiomatic APIs, and a raw
//! tokio mpsc channel per task as the baseline.
//!
//! Every system runs the same receiver logic: count `Tell`s, answer `Sync` with the count so
//! far, send a burst to another receiver, play ping-pong, stop after one message (churn), and
//! count fan-out messages. Completion is signalled with a [`Latch`] or an ask, never by polling.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use hermes_core::{Activation, Config, Context, Deactivation, Factory, Receiver, Sharded};
use hermes_executor::{Asked, Hermes, Options, Reply};

/// How long any single wait may take before the benchmark gives up (a hang guard).
pub const HANG: Duration = Duration::from_secs(120);

/// A burst sends this many messages per handler call, then continues from a message to itself,
/// so that mailboxes stay small (as in a steady stream) rather than holding the whole burst.
pub const CHUNK: u64 = 1000;

/// Counts arrivals down to zero, then answers its [`Asked`].
pub struct Latch {
    left: AtomicU64,
    done: Mutex<Option<Reply<()>>>,
}

impl Latch {
    /// A latch that opens after `n` arrivals.
    pub fn new(n: u64) -> (Arc<Latch>, Asked<()>) {
        let (reply, asked) = Reply::new();
        let latch = Latch {
            left: AtomicU64::new(n),
            done: Mutex::new(Some(reply)),
        };
        (Arc::new(latch), asked)
    }

    /// One arrival; the `n`th opens the latch (later ones are ignored).
    pub fn arrive(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1
            && let Some(reply) = self
                .done
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take()
        {
            let _ = reply.send(());
        }
    }
}

/// Blocks until `asked` answers; panics after [`HANG`].
pub fn wait<T>(asked: Asked<T>) -> T {
    asked
        .wait_timeout(HANG)
        .expect("the benchmark hung or lost a reply")
}

// ---------------------------------------------------------------------------------------------
// Hermes
// ---------------------------------------------------------------------------------------------

/// Messages of the Hermes receivers.
pub enum Msg {
    /// Add to the count.
    Tell(u64),
    /// Answer with the count so far.
    Sync(Reply<u64>),
    /// Send `left` `Tell`s to `to` ([`CHUNK`] per call), then a last `Ping` answering `done`.
    Burst {
        to: u64,
        left: u64,
        done: Reply<u64>,
    },
    /// A ping-pong hop: `left` hops to go, then answer `done`.
    Ping {
        from: u64,
        left: u64,
        done: Reply<u64>,
    },
    /// Churn: the one message of a short life; the receiver stops after it.
    Once,
    /// Fan-out: count, and arrive at the fan-out latch after the last one.
    Fan,
}

/// What a Hermes receiver reports to, per workload.
#[derive(Clone, Default)]
pub struct Wiring {
    /// Arrive here when deactivated (churn).
    pub on_deactivate: Option<Arc<Latch>>,
    /// Arrive here after `fan_messages` `Fan`s (fan-out).
    pub on_fan: Option<(Arc<Latch>, u64)>,
}

impl Wiring {
    /// Churn: arrive at a latch when deactivated; answers once `ids` receivers have been.
    pub fn churn(ids: u64) -> (Wiring, Asked<()>) {
        let (latch, done) = Latch::new(ids);
        let wiring = Wiring {
            on_deactivate: Some(latch),
            ..Wiring::default()
        };
        (wiring, done)
    }

    /// Fan-out: arrive at a latch after `messages` fan-out messages; answers once `receivers`
    /// receivers have had them all.
    pub fn fan_out(receivers: u64, messages: u64) -> (Wiring, Asked<()>) {
        let (latch, done) = Latch::new(receivers);
        let wiring = Wiring {
            on_fan: Some((latch, messages)),
            ..Wiring::default()
        };
        (wiring, done)
    }
}

/// The one Hermes receiver every workload uses.
pub struct Node {
    count: u64,
    fans: u64,
    wiring: Wiring,
}

impl Node {
    /// A fresh receiver reporting as `wiring` says.
    pub fn new(wiring: Wiring) -> Self {
        Node {
            count: 0,
            fans: 0,
            wiring,
        }
    }
}

impl Receiver<u64, Msg> for Node {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Msg>, msg: Msg) {
        match msg {
            Msg::Tell(n) => self.count = self.count.wrapping_add(black_box(n)),
            Msg::Sync(reply) => {
                let _ = reply.send(self.count);
            }
            Msg::Burst { to, left, done } => {
                let n = left.min(CHUNK);
                for i in 0..n {
                    ctx.send(to, Msg::Tell(i));
                }
                if left > n {
                    let me = *ctx.id();
                    let left = left - n;
                    ctx.send(me, Msg::Burst { to, left, done });
                } else {
                    let last = Msg::Ping {
                        from: 0,
                        left: 0,
                        done,
                    };
                    ctx.send(to, last);
                }
            }
            Msg::Ping { from, left, done } => {
                if left == 0 {
                    let _ = done.send(self.count);
                } else {
                    let me = *ctx.id();
                    ctx.send(
                        from,
                        Msg::Ping {
                            from: me,
                            left: left - 1,
                            done,
                        },
                    );
                }
            }
            Msg::Once => ctx.stop(),
            Msg::Fan => {
                self.fans += 1;
                if let Some((latch, target)) = &self.wiring.on_fan
                    && self.fans == *target
                {
                    latch.arrive();
                }
            }
        }
    }

    fn deactivated(&mut self, _ctx: &mut Context<'_, u64, Msg>, _why: Deactivation) {
        if let Some(latch) = &self.wiring.on_deactivate {
            latch.arrive();
        }
    }
}

/// One of the Hermes executors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Exec {
    /// hermes-pool: one thread per shard.
    Pool,
    /// hermes-tokio on a multi-thread runtime with one worker per shard.
    Tokio,
    /// hermes-smol on an `Executor` run by one thread per shard.
    Smol,
}

impl Exec {
    /// The executor's name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Exec::Pool => "pool",
            Exec::Tokio => "tokio",
            Exec::Smol => "smol",
        }
    }

    /// Starts Hermes on this executor with `shards` shards (and as many threads), every
    /// receiver a [`Node`] wired as `wiring` says.
    pub fn start(self, shards: usize, config: Config, wiring: Wiring) -> Running {
        self.launch(shards, config, move |_: &u64| {
            Activation::ready(Node::new(wiring.clone()))
        })
    }

    /// Starts Hermes on this executor with `shards` shards (and as many threads) and `factory`.
    pub fn launch<M: hermes_executor::Message>(
        self,
        shards: usize,
        config: Config,
        factory: impl Factory<u64, M, App = (u64, M)>,
    ) -> Running<M> {
        let options = Options::new(config).shards(shards).name("bench");
        match self {
            Exec::Pool => Running {
                hermes: hermes_pool::start_with(options, factory).expect("spawn shard threads"),
                host: Host::Threads,
            },
            Exec::Tokio => {
                let rt = tokio_runtime(shards);
                let hermes = hermes_tokio::start_on(rt.handle(), options, factory);
                Running {
                    hermes,
                    host: Host::Tokio(rt),
                }
            }
            Exec::Smol => {
                let executor = Arc::new(smol::Executor::new());
                let (stop, stopped) = smol::channel::bounded::<()>(1);
                let threads = (0..shards)
                    .map(|_| {
                        let executor = Arc::clone(&executor);
                        let stopped = stopped.clone();
                        std::thread::spawn(move || {
                            smol::block_on(executor.run(async {
                                let _ = stopped.recv().await;
                            }));
                        })
                    })
                    .collect();
                let hermes = hermes_smol::start_on(&executor, options, factory);
                Running {
                    hermes,
                    host: Host::Smol { stop, threads },
                }
            }
        }
    }
}

/// A running Hermes and what hosts its shards.
pub struct Running<M = Msg> {
    /// The handle.
    pub hermes: Hermes<u64, M>,
    host: Host,
}

enum Host {
    Threads,
    Tokio(tokio::runtime::Runtime),
    Smol {
        stop: smol::channel::Sender<()>,
        threads: Vec<JoinHandle<()>>,
    },
}

impl<M: hermes_executor::Message> Running<M> {
    /// Shuts Hermes down, then its runtime.
    pub fn stop(self) {
        self.hermes.shutdown().unwrap();
        drop(self.hermes);
        match self.host {
            Host::Threads => {}
            Host::Tokio(rt) => rt.shutdown_timeout(HANG),
            Host::Smol { stop, threads } => {
                drop(stop);
                for t in threads {
                    t.join().expect("smol thread");
                }
            }
        }
    }
}

impl Running {
    /// Activates receivers `ids` (a `Tell(0)` each) and waits until every one has run.
    pub fn activate(&self, ids: impl Iterator<Item = u64> + Clone) {
        for id in ids.clone() {
            self.hermes.send(id, Msg::Tell(0)).expect("open");
        }
        let asked: Vec<_> = ids.map(|id| self.hermes.ask(id, Msg::Sync)).collect();
        for a in asked {
            wait(a);
        }
    }
}

/// Two IDs on different shards of `shards` if there are several, else on the same one.
pub fn two_ids(shards: usize, same_shard: bool) -> (u64, u64) {
    let placement = Sharded::new(shards as u32);
    let shard = |id: &u64| placement.shard_of(id);
    let a = 1;
    let b = (2..)
        .find(|b| (shard(b) == shard(&a)) == (same_shard || shards == 1))
        .expect("some ID lands on each shard");
    (a, b)
}

/// A multi-thread tokio runtime with `workers` worker threads.
pub fn tokio_runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// actix: one System thread (actix actors live on a single-threaded arbiter).
// ---------------------------------------------------------------------------------------------

/// The actix side.
pub mod actix_peer {
    use super::*;
    use actix::prelude::*;

    /// The actix counterpart of [`Node`].
    #[derive(Default)]
    pub struct ANode {
        count: u64,
        fans: u64,
        peer: Option<Addr<ANode>>,
        wiring: Wiring,
    }

    impl ANode {
        /// A fresh actor reporting as `wiring` says.
        pub fn new(wiring: Wiring) -> Self {
            ANode {
                wiring,
                ..ANode::default()
            }
        }
    }

    impl Actor for ANode {
        type Context = actix::Context<Self>;

        fn stopped(&mut self, _ctx: &mut Self::Context) {
            if let Some(latch) = &self.wiring.on_deactivate {
                latch.arrive();
            }
        }
    }

    macro_rules! message {
        ($name:ident $(($($field:ty),*))?, $result:ty) => {
            /// A message (see [`Msg`]).
            pub struct $name $(($(pub $field),*))?;
            impl Message for $name {
                type Result = $result;
            }
        };
    }
    message!(Tell(u64), ());
    message!(Sync, u64);
    message!(Burst(Addr<ANode>, u64, Reply<u64>), ());
    message!(Ping(u64, Reply<u64>), ());
    message!(SetPeer(Addr<ANode>), ());
    message!(Once, ());
    message!(Fan, ());

    impl Handler<Tell> for ANode {
        type Result = ();
        fn handle(&mut self, msg: Tell, _: &mut Self::Context) {
            self.count = self.count.wrapping_add(black_box(msg.0));
        }
    }
    impl Handler<Sync> for ANode {
        type Result = u64;
        fn handle(&mut self, _: Sync, _: &mut Self::Context) -> u64 {
            self.count
        }
    }
    impl Handler<Burst> for ANode {
        type Result = ();
        fn handle(&mut self, Burst(to, left, done): Burst, ctx: &mut Self::Context) {
            let n = left.min(CHUNK);
            for i in 0..n {
                to.do_send(Tell(i));
            }
            if left > n {
                ctx.address().do_send(Burst(to, left - n, done));
            } else {
                to.do_send(Ping(0, done));
            }
        }
    }
    impl Handler<Ping> for ANode {
        type Result = ();
        fn handle(&mut self, Ping(left, done): Ping, _: &mut Self::Context) {
            match (&self.peer, left) {
                (_, 0) | (None, _) => {
                    let _ = done.send(self.count);
                }
                (Some(peer), _) => peer.do_send(Ping(left - 1, done)),
            }
        }
    }
    impl Handler<SetPeer> for ANode {
        type Result = ();
        fn handle(&mut self, SetPeer(peer): SetPeer, _: &mut Self::Context) {
            self.peer = Some(peer);
        }
    }
    impl Handler<Once> for ANode {
        type Result = ();
        fn handle(&mut self, _: Once, ctx: &mut Self::Context) {
            ctx.stop();
        }
    }
    impl Handler<Fan> for ANode {
        type Result = ();
        fn handle(&mut self, _: Fan, _: &mut Self::Context) {
            self.fans += 1;
            if let Some((latch, target)) = &self.wiring.on_fan
                && self.fans == *target
            {
                latch.arrive();
            }
        }
    }

    /// An actix System running on its own thread.
    pub struct ActixHost {
        system: actix::System,
        arbiter: actix::ArbiterHandle,
        thread: Option<JoinHandle<()>>,
    }

    impl ActixHost {
        /// Starts the System thread.
        pub fn start() -> Self {
            let (tx, rx) = std::sync::mpsc::channel();
            let thread = std::thread::spawn(move || {
                let system = actix::System::new();
                tx.send((actix::System::current(), actix::Arbiter::current()))
                    .expect("bench thread waits");
                system.run().expect("actix system");
            });
            let (system, arbiter) = rx.recv().expect("actix system started");
            ActixHost {
                system,
                arbiter,
                thread: Some(thread),
            }
        }

        /// Runs `f` on the System's thread (where actors can be started) and returns its result.
        pub fn on<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let (tx, rx) = std::sync::mpsc::channel();
            self.arbiter.spawn_fn(move || {
                let _ = tx.send(f());
            });
            rx.recv().expect("actix arbiter alive")
        }

        /// Starts `n` actors wired as `wiring` says.
        pub fn spawn(&self, n: u64, wiring: Wiring) -> Vec<Addr<ANode>> {
            self.on(move || (0..n).map(|_| ANode::new(wiring.clone()).start()).collect())
        }
    }

    impl Drop for ActixHost {
        fn drop(&mut self) {
            self.system.stop();
            if let Some(t) = self.thread.take() {
                t.join().expect("actix thread");
            }
        }
    }

    /// Blocks on an actix request from outside the System (its reply is a channel, which
    /// needs no runtime to await).
    pub fn block<F: Future>(f: F) -> F::Output {
        smol::block_on(f)
    }
}

// ---------------------------------------------------------------------------------------------
// kameo: actors are tokio tasks; unbounded mailboxes.
// ---------------------------------------------------------------------------------------------

/// The kameo side.
pub mod kameo_peer {
    use super::*;
    use kameo::actor::{ActorRef, Spawn, WeakActorRef};
    use kameo::error::{ActorStopReason, Infallible};
    use kameo::message::{Context, Message};

    /// The kameo counterpart of [`Node`].
    #[derive(Default)]
    pub struct KNode {
        count: u64,
        fans: u64,
        peer: Option<ActorRef<KNode>>,
        wiring: Wiring,
    }

    impl kameo::Actor for KNode {
        type Args = Self;
        type Error = Infallible;

        async fn on_start(state: Self, _: ActorRef<Self>) -> Result<Self, Infallible> {
            Ok(state)
        }

        async fn on_stop(
            &mut self,
            _: WeakActorRef<Self>,
            _: ActorStopReason,
        ) -> Result<(), Infallible> {
            if let Some(latch) = &self.wiring.on_deactivate {
                latch.arrive();
            }
            Ok(())
        }
    }

    /// Spawns an actor with an unbounded mailbox, wired as `wiring` says. Call inside the
    /// runtime.
    pub fn spawn(wiring: Wiring) -> ActorRef<KNode> {
        KNode::spawn_with_mailbox(
            KNode {
                wiring,
                ..KNode::default()
            },
            kameo::mailbox::unbounded(),
        )
    }

    /// Messages (see [`Msg`]).
    pub struct Tell(pub u64);
    /// Answer with the count.
    pub struct Sync;
    /// Send tells to the actor ([`CHUNK`] per call), then a last ping answering the reply.
    pub struct Burst(pub ActorRef<KNode>, pub u64, pub Reply<u64>);
    /// A ping-pong hop.
    pub struct Ping(pub u64, pub Reply<u64>);
    /// Set the ping-pong peer.
    pub struct SetPeer(pub ActorRef<KNode>);
    /// Churn: stop after this.
    pub struct Once;
    /// Fan-out.
    pub struct Fan;

    impl Message<Tell> for KNode {
        type Reply = ();
        async fn handle(&mut self, msg: Tell, _: &mut Context<Self, ()>) {
            self.count = self.count.wrapping_add(black_box(msg.0));
        }
    }
    impl Message<Sync> for KNode {
        type Reply = u64;
        async fn handle(&mut self, _: Sync, _: &mut Context<Self, u64>) -> u64 {
            self.count
        }
    }
    impl Message<Burst> for KNode {
        type Reply = ();
        async fn handle(&mut self, Burst(to, left, done): Burst, ctx: &mut Context<Self, ()>) {
            let n = left.min(CHUNK);
            for i in 0..n {
                to.tell(Tell(i)).await.expect("peer alive");
            }
            if left > n {
                let me = ctx.actor_ref().clone();
                me.tell(Burst(to, left - n, done)).await.expect("alive");
            } else {
                to.tell(Ping(0, done)).await.expect("peer alive");
            }
        }
    }
    impl Message<Ping> for KNode {
        type Reply = ();
        async fn handle(&mut self, Ping(left, done): Ping, _: &mut Context<Self, ()>) {
            match (&self.peer, left) {
                (_, 0) | (None, _) => {
                    let _ = done.send(self.count);
                }
                (Some(peer), _) => peer.tell(Ping(left - 1, done)).await.expect("peer alive"),
            }
        }
    }
    impl Message<SetPeer> for KNode {
        type Reply = ();
        async fn handle(&mut self, SetPeer(peer): SetPeer, _: &mut Context<Self, ()>) {
            self.peer = Some(peer);
        }
    }
    impl Message<Once> for KNode {
        type Reply = ();
        async fn handle(&mut self, _: Once, ctx: &mut Context<Self, ()>) {
            ctx.stop();
        }
    }
    impl Message<Fan> for KNode {
        type Reply = ();
        async fn handle(&mut self, _: Fan, _: &mut Context<Self, ()>) {
            self.fans += 1;
            if let Some((latch, target)) = &self.wiring.on_fan
                && self.fans == *target
            {
                latch.arrive();
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// ractor: actors are tokio tasks; mailboxes are unbounded.
// ---------------------------------------------------------------------------------------------

/// The ractor side.
pub mod ractor_peer {
    use super::*;
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

    /// The ractor actor (state lives in [`RState`]).
    pub struct RNode;

    /// The ractor counterpart of [`Node`]'s state.
    #[derive(Default)]
    pub struct RState {
        count: u64,
        fans: u64,
        peer: Option<ActorRef<RMsg>>,
        wiring: Wiring,
    }

    /// Messages (see [`Msg`]).
    pub enum RMsg {
        /// Add to the count.
        Tell(u64),
        /// Answer with the count.
        Sync(RpcReplyPort<u64>),
        /// Send tells to the actor ([`CHUNK`] per call), then a last ping answering the reply.
        Burst(ActorRef<RMsg>, u64, Reply<u64>),
        /// A ping-pong hop.
        Ping(u64, Reply<u64>),
        /// Set the ping-pong peer.
        SetPeer(ActorRef<RMsg>),
        /// Churn: stop after this.
        Once,
        /// Fan-out.
        Fan,
    }

    impl Actor for RNode {
        type Msg = RMsg;
        type State = RState;
        type Arguments = Wiring;

        async fn pre_start(
            &self,
            _: ActorRef<RMsg>,
            wiring: Wiring,
        ) -> Result<RState, ActorProcessingErr> {
            Ok(RState {
                wiring,
                ..RState::default()
            })
        }

        async fn handle(
            &self,
            myself: ActorRef<RMsg>,
            msg: RMsg,
            state: &mut RState,
        ) -> Result<(), ActorProcessingErr> {
            match msg {
                RMsg::Tell(n) => state.count = state.count.wrapping_add(black_box(n)),
                RMsg::Sync(reply) => {
                    let _ = reply.send(state.count);
                }
                RMsg::Burst(to, left, done) => {
                    let n = left.min(CHUNK);
                    for i in 0..n {
                        to.cast(RMsg::Tell(i))?;
                    }
                    if left > n {
                        myself.cast(RMsg::Burst(to, left - n, done))?;
                    } else {
                        to.cast(RMsg::Ping(0, done))?;
                    }
                }
                RMsg::Ping(left, done) => match (&state.peer, left) {
                    (_, 0) | (None, _) => {
                        let _ = done.send(state.count);
                    }
                    (Some(peer), _) => peer.cast(RMsg::Ping(left - 1, done))?,
                },
                RMsg::SetPeer(peer) => state.peer = Some(peer),
                RMsg::Once => myself.stop(None),
                RMsg::Fan => {
                    state.fans += 1;
                    if let Some((latch, target)) = &state.wiring.on_fan
                        && state.fans == *target
                    {
                        latch.arrive();
                    }
                }
            }
            Ok(())
        }

        async fn post_stop(
            &self,
            _: ActorRef<RMsg>,
            state: &mut RState,
        ) -> Result<(), ActorProcessingErr> {
            if let Some(latch) = &state.wiring.on_deactivate {
                latch.arrive();
            }
            Ok(())
        }
    }

    /// Spawns an actor wired as `wiring` says (ractor's spawn waits for `pre_start`).
    pub async fn spawn(wiring: Wiring) -> ActorRef<RMsg> {
        let (actor, _join) = Actor::spawn(None, RNode, wiring)
            .await
            .expect("ractor spawn");
        actor
    }
}

// ---------------------------------------------------------------------------------------------
// The baseline: a tokio task per receiver reading an unbounded tokio mpsc channel.
// ---------------------------------------------------------------------------------------------

/// The raw tokio mpsc baseline.
pub mod mpsc_peer {
    use super::*;
    use tokio::sync::{mpsc, oneshot};

    /// Messages (see [`Msg`]).
    pub enum PMsg {
        /// Add to the count.
        Tell(u64),
        /// Answer with the count.
        Sync(oneshot::Sender<u64>),
        /// A ping-pong hop.
        Ping(u64, Reply<u64>),
        /// Set the ping-pong peer.
        SetPeer(mpsc::UnboundedSender<PMsg>),
        /// Churn: end after this.
        Once,
        /// Fan-out.
        Fan,
    }

    /// Spawns a task reading a fresh channel, wired as `wiring` says. Call inside the runtime.
    pub fn spawn(wiring: Wiring) -> mpsc::UnboundedSender<PMsg> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (mut count, mut fans, mut peer) = (0u64, 0u64, None);
            while let Some(msg) = rx.recv().await {
                match msg {
                    PMsg::Tell(n) => count = count.wrapping_add(black_box(n)),
                    PMsg::Sync(reply) => {
                        let _ = reply.send(count);
                    }
                    PMsg::Ping(left, done) => match (&peer, left) {
                        (_, 0) | (None, _) => {
                            let _ = done.send(count);
                        }
                        (Some(p), _) => {
                            let p: &mpsc::UnboundedSender<PMsg> = p;
                            let _ = p.send(PMsg::Ping(left - 1, done));
                        }
                    },
                    PMsg::SetPeer(p) => peer = Some(p),
                    PMsg::Once => break,
                    PMsg::Fan => {
                        fans += 1;
                        if let Some((latch, target)) = &wiring.on_fan
                            && fans == *target
                        {
                            latch.arrive();
                        }
                    }
                }
            }
            if let Some(latch) = &wiring.on_deactivate {
                latch.arrive();
            }
        });
        tx
    }

    /// Sends `n` tells on `to` ([`CHUNK`] before each yield), then a last ping answering
    /// `done`.
    pub async fn burst(to: mpsc::UnboundedSender<PMsg>, n: u64, done: Reply<u64>) {
        for start in (0..n).step_by(CHUNK as usize) {
            for i in start..(start + CHUNK).min(n) {
                to.send(PMsg::Tell(i)).expect("task alive");
            }
            tokio::task::yield_now().await;
        }
        to.send(PMsg::Ping(0, done)).expect("task alive");
    }

    /// Asks the task for its count.
    pub async fn sync(to: &mpsc::UnboundedSender<PMsg>) -> u64 {
        let (tx, rx) = oneshot::channel();
        to.send(PMsg::Sync(tx)).expect("task alive");
        rx.await.expect("task answers")
    }
}
