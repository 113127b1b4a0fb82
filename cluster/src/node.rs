//! A node: the NATS connection, the buckets, the local Hermes, and the tasks that tie them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use hermes_core::{Config, DeadLetter, Factory, Key, Location, Message, NodeId, Placement};
use hermes_executor::{Hermes, Options};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use crate::membership::{
    self, Announce, Gate, Gated, Lease, OwnEntry, Refused, Released, member_key,
};
use crate::placement::{ClusterPlacement, node_id};
use crate::store::JetStreamBucket;
use crate::transport::{self, Transport};
use crate::{ClusterConfig, ClusterError, KvStore};

/// A connection to a cluster, before its node starts: connect, get the cluster's
/// [`KvStore`] for the factory, then [`start`](Cluster::start) the node.
///
/// ```no_run
/// use hermes_cluster::{Cluster, ClusterConfig};
/// use hermes_core::{Activation, Config, Context};
///
/// let cluster = Cluster::connect(ClusterConfig::new("nats://127.0.0.1:4222", "demo", "a"))?;
/// let node = cluster.start(Config::default(), |_id: &u64| {
///     Activation::ready(|_ctx: &mut Context<'_, u64, String>, msg: String| println!("{msg}"))
/// })?;
/// node.hermes().send(7, "hello from wherever 7 lives".to_string())?;
/// node.shutdown();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Cluster {
    config: ClusterConfig,
    me: NodeId,
    runtime: tokio::runtime::Runtime,
    client: async_nats::Client,
    members: jetstream::kv::Store,
    store: Arc<KvStore>,
    /// How long the membership bucket keeps an entry (its liveness timeout).
    expiry: Duration,
    /// How long this node's entry is known to last; the store writes only within it.
    lease: Arc<Lease>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("cluster", &self.config.cluster)
            .field("node", &self.config.node)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to the NATS server of `config` and opens (creating them if needed) the
    /// cluster's JetStream key-value buckets: `hermes_{cluster}_members` (heartbeats, entries
    /// expiring after the liveness timeout) and `hermes_{cluster}_state` (receivers' state).
    /// Blocks; call it outside any async runtime.
    pub fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        config.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("hermes-nats-{}", config.node))
            .enable_all()
            .build()
            .map_err(|e| ClusterError::Connect(format!("could not start the I/O runtime: {e}")))?;
        let me = node_id(&config.node);
        let (client, members, state, js, expiry) = runtime.block_on(async {
            let client = async_nats::ConnectOptions::new()
                .name(format!("hermes-{}-{}", config.cluster, config.node))
                .connection_timeout(Duration::from_secs(5))
                .event_callback(connection_event)
                .connect(&config.nats_url)
                .await
                .map_err(|e| {
                    ClusterError::Connect(format!(
                        "could not connect to NATS at {} ({e}): is nats-server running there?",
                        config.nats_url
                    ))
                })?;
            let js = jetstream::new(client.clone());
            let members = open_bucket(
                &js,
                jetstream::kv::Config {
                    bucket: format!("hermes_{}_members", config.cluster),
                    history: 1,
                    max_age: config.liveness,
                    ..Default::default()
                },
                "the membership bucket",
            )
            .await?;
            let state = open_bucket(
                &js,
                jetstream::kv::Config {
                    bucket: format!("hermes_{}_state", config.cluster),
                    history: 1,
                    ..Default::default()
                },
                "the state bucket",
            )
            .await?;
            let mut expiry = config.liveness;
            if config.member {
                expiry = check_timings(&members, &config).await?;
                check_name_free(&members, me, &config, expiry).await?;
            }
            Ok::<_, ClusterError>((client, members, state, js, expiry))
        })?;
        let lease = Arc::new(Lease::default());
        let store = Arc::new(KvStore::new(
            JetStreamBucket::new(
                state,
                js,
                client.clone(),
                runtime.handle().clone(),
                config.store_timeout,
            ),
            Arc::clone(&lease),
        ));
        Ok(Cluster {
            config,
            me,
            runtime,
            client,
            members,
            store,
            expiry,
            lease,
        })
    }

    /// The cluster's durable state: give it to the factory, so that receivers load their
    /// state on whichever node activates them.
    pub fn store(&self) -> Arc<KvStore> {
        Arc::clone(&self.store)
    }

    /// This node's number.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// Starts this node with router `config` and `factory`; see [`start_with`](Cluster::start_with).
    pub fn start<K, M, F>(
        self,
        config: Config,
        factory: F,
    ) -> Result<Node<K, M, F::App>, ClusterError>
    where
        K: Key + Serialize + DeserializeOwned,
        M: Message + Serialize + DeserializeOwned,
        F: Factory<K, M>,
    {
        self.start_with(config, None, factory)
    }

    /// Starts this node: its shards (on the thread pool executor), its subscription, its
    /// heartbeats; it joins the membership once it can take messages. `dead_letters` sees
    /// every message that could not be delivered, on a shard or in the transport.
    pub fn start_with<K, M, F>(
        self,
        config: Config,
        dead_letters: Option<DeadLetterSink<K, M>>,
        factory: F,
    ) -> Result<Node<K, M, F::App>, ClusterError>
    where
        K: Key + Serialize + DeserializeOwned,
        M: Message + Serialize + DeserializeOwned,
        F: Factory<K, M>,
    {
        let Cluster {
            config: cc,
            me,
            runtime,
            client,
            members,
            store: _,
            expiry,
            lease,
        } = self;
        let placement = Arc::new(ClusterPlacement::new(me, cc.member, cc.shards as u32));
        let (transport, outbound) = Transport::<K, M, F::App>::new(
            me,
            &cc.cluster,
            cc.outbound_capacity,
            max_frame(&client),
            client.clone(),
            Arc::clone(&placement),
            dead_letters.clone(),
        );
        let gate = Arc::new(Gate::new(
            me,
            cc.handoff_timeout,
            placement.view(),
            std::time::Instant::now(),
        ));
        let mut options = Options::new(config)
            .shards(cc.shards)
            .name(format!("hermes-{}", cc.node))
            .placement(Shared(Arc::clone(&placement)))
            .remote(transport.clone());
        if let Some(sink) = dead_letters {
            options = options.on_dead_letter(move |letter| sink(letter));
        }
        let gated: Gated<F> = Gated {
            inner: factory,
            gate: Arc::clone(&gate) as Arc<dyn crate::membership::Hold>,
            placement: Arc::clone(&placement),
            #[cfg(feature = "fault-injection")]
            skip_gate: false,
        };
        let hermes = hermes_pool::start_with(options, gated).map_err(ClusterError::Start)?;
        transport.attach(hermes.clone());

        let released_subject = format!("hermes.{}.released", cc.cluster);
        let mut tasks = Vec::new();
        let setup = runtime.block_on(async {
            let own = client
                .subscribe(transport::subject(&cc.cluster, me))
                .await
                .map_err(|e| ClusterError::Connect(format!("could not subscribe: {e}")))?;
            let releases = client
                .subscribe(released_subject.clone())
                .await
                .map_err(|e| ClusterError::Connect(format!("could not subscribe: {e}")))?;
            // Everything this node publishes goes through one task, in order.
            client
                .flush()
                .await
                .map_err(|e| ClusterError::Connect(format!("could not flush: {e}")))?;
            Ok::<_, ClusterError>((own, releases))
        });
        let (own, releases) = match setup {
            Ok(subscriptions) => subscriptions,
            Err(e) => {
                transport.detach();
                let _ = hermes.shutdown();
                return Err(e);
            }
        };
        tasks.push(runtime.spawn(transport::publish(client.clone(), outbound)));
        tasks.push(runtime.spawn(transport::subscribe(own, Arc::clone(&transport))));
        {
            let gate = Arc::clone(&gate);
            tasks.push(runtime.spawn(async move {
                let mut releases = releases;
                while let Some(message) = releases.next().await {
                    match postcard::from_bytes::<Released>(&message.payload) {
                        Ok(r) => gate.released(NodeId(r.node), r.view),
                        Err(e) => {
                            tracing::warn!(%e, "ignoring a release notice that does not decode")
                        }
                    }
                }
            }));
        }
        {
            let answers = Arc::clone(&transport.answers);
            tasks.push(runtime.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    answers.expire(Duration::from_secs(600));
                }
            }));
        }
        let announce = Announce {
            name: cc.node.clone(),
            id: me.0,
            instance: crate::random_u64(),
        };
        let heartbeat = Heartbeat {
            me,
            member: cc.member,
            every: cc.heartbeat,
            kv: members.clone(),
            announce: Bytes::from(postcard::to_allocvec(&announce).unwrap_or_default()),
            placement: Arc::clone(&placement),
            gate,
            hermes: hermes.clone(),
            client: client.clone(),
            released_subject,
            release_timeout: cc.handoff_timeout.max(Duration::from_secs(1)) * 5,
            own: OwnEntry::new(lease, expiry),
        };
        // The first beat (and view) before start returns: the node is a member from here on.
        runtime.block_on(heartbeat.beat());
        heartbeat.gate.settle();
        tasks.push(runtime.spawn(heartbeat.run()));
        Ok(Node {
            hermes,
            me,
            name: cc.node,
            member: cc.member,
            heartbeat: cc.heartbeat,
            placement,
            transport,
            members,
            runtime: Some(runtime),
            tasks,
        })
    }
}

/// Creates the bucket, or opens it if another node created it first. Nodes that start
/// together race to create it: the server may then refuse the loser's create ("subjects
/// overlap with an existing stream") although the bucket it wants now exists, so a failed
/// create looks for the bucket a few times before it counts as an error.
async fn open_bucket(
    js: &jetstream::Context,
    config: jetstream::kv::Config,
    what: &str,
) -> Result<jetstream::kv::Store, ClusterError> {
    let bucket = config.bucket.clone();
    let created = match js.create_key_value(config).await {
        Ok(store) => return Ok(store),
        Err(e) => e,
    };
    for _ in 0..10 {
        if let Ok(store) = js.get_key_value(bucket.as_str()).await {
            tracing::debug!(%bucket, error = %created, "bucket created by another node meanwhile");
            return Ok(store);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(jetstream_error(what, created))
}

/// The membership bucket's entries expire after the liveness timeout of the node that created
/// it (a bucket's `max_age` stays as created): a node whose heartbeats are further apart than
/// half of it would drop out of the membership between its beats, and is refused. One whose
/// liveness timeout merely differs is told which one applies. The bucket's expiry.
async fn check_timings(
    members: &jetstream::kv::Store,
    config: &ClusterConfig,
) -> Result<Duration, ClusterError> {
    let status = members
        .status()
        .await
        .map_err(|e| jetstream_error("the membership bucket's settings", e))?;
    let expiry = status.max_age();
    if expiry.is_zero() || expiry >= config.heartbeat * 2 {
        if expiry != config.liveness {
            tracing::warn!(
                bucket = status.bucket(),
                ?expiry,
                configured = ?config.liveness,
                "the membership bucket keeps the liveness timeout it was created with: give \
                 every node the same timings"
            );
        }
        return Ok(expiry);
    }
    Err(ClusterError::Config(format!(
        "the membership bucket {} expires entries after {expiry:?} (the liveness timeout of \
         the node that created it), less than two of this node's heartbeats ({:?} each): give \
         every node of cluster {:?} the same heartbeat and liveness timeout, or, to change \
         them, stop every node and delete the bucket (nats kv del {})",
        status.bucket(),
        config.heartbeat,
        config.cluster,
        status.bucket(),
    )))
}

/// Refuses to start a second live node under a name already in use: both would take every
/// message sent to that node's IDs. A member entry under this node's key that is renewed while
/// this waits belongs to a running node; one that expires (or is gone) was left by this node's
/// own previous run, killed before the liveness timeout removed it: this waits for it to
/// expire, then joins as any new node.
async fn check_name_free(
    members: &jetstream::kv::Store,
    me: NodeId,
    config: &ClusterConfig,
    expiry: Duration,
) -> Result<(), ClusterError> {
    let live = || async {
        membership::heartbeat(members, me)
            .await
            .map(|entry| entry.map(|(revision, _)| revision))
            .map_err(|e| jetstream_error("this node's membership entry", e))
    };
    let Some(first) = live().await? else {
        return Ok(());
    };
    tracing::info!(
        node = config.node,
        "this node's name has a fresh membership entry: waiting to see whether another node \
         renews it (a node with the same name) or it expires (this node's previous run)"
    );
    let poll = (config.heartbeat / 2).min(Duration::from_millis(100));
    // The entry expires within the bucket's expiry; a live node renews it sooner.
    let deadline = tokio::time::Instant::now() + expiry.max(config.liveness) + config.heartbeat;
    loop {
        tokio::time::sleep(poll).await;
        match live().await? {
            None => return Ok(()),
            Some(revision) if revision != first => {
                return Err(ClusterError::Config(format!(
                    "a node named {:?} is already running in cluster {:?} (it renews its \
                     membership entry): give every node its own name, or stop that one first",
                    config.node, config.cluster
                )));
            }
            Some(_) if tokio::time::Instant::now() >= deadline => return Ok(()),
            Some(_) => {}
        }
    }
}

fn jetstream_error(what: &str, e: impl std::fmt::Display) -> ClusterError {
    ClusterError::JetStream(format!(
        "could not open {what} ({e}): run nats-server with JetStream enabled (nats-server -js)"
    ))
}

/// Logs what happens to the NATS connection: without this, a server that went away left no
/// trace in the log (heartbeats and reads just waited for it to come back).
async fn connection_event(event: async_nats::Event) {
    match event {
        async_nats::Event::Disconnected => tracing::warn!(
            "lost the connection to the NATS server: reconnecting; until then mail for other \
             nodes is refused (Unreachable), state calls time out, and heartbeats wait"
        ),
        async_nats::Event::Connected => tracing::info!("connected to the NATS server"),
        async_nats::Event::SlowConsumer(sid) => tracing::warn!(
            sid,
            "the NATS server dropped messages for this node, which did not take them fast \
             enough (a slow consumer)"
        ),
        other => tracing::warn!(event = %other, "NATS connection event"),
    }
}

/// The largest NATS message the server takes (its `max_payload`; 1 MiB, NATS's default, if
/// it did not say).
pub(crate) fn max_frame(client: &async_nats::Client) -> usize {
    match client.server_info().max_payload {
        0 => 1 << 20,
        n => n,
    }
}

/// The placement behind an `Arc`, as `Options::placement` takes it.
struct Shared(Arc<ClusterPlacement>);

impl<K: std::hash::Hash> Placement<K> for Shared {
    fn locate(&self, id: &K) -> Location {
        self.0.locate(id)
    }
}

/// The membership task's state.
struct Heartbeat<K, M, A> {
    me: NodeId,
    member: bool,
    every: Duration,
    kv: jetstream::kv::Store,
    announce: Bytes,
    placement: Arc<ClusterPlacement>,
    gate: Arc<Gate>,
    hermes: Hermes<K, M, A>,
    client: async_nats::Client,
    released_subject: String,
    release_timeout: Duration,
    /// This node's entry: the revision its next heartbeat expects, and the lease that every
    /// heartbeat written renews.
    own: OwnEntry,
}

impl<K: Key, M: Message, A: hermes_core::App<Id = K, Msg = M>> Heartbeat<K, M, A> {
    async fn run(self) {
        loop {
            tokio::time::sleep(self.every).await;
            self.beat().await;
        }
    }

    /// Announces this node, reads the membership, and hands off what moved.
    async fn beat(&self) {
        if self.member {
            self.announce().await;
        }
        let nodes = match membership::members(&self.kv).await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(%e, "could not read the membership");
                return;
            }
        };
        let Some(view) = membership::apply_view(
            &self.placement,
            &self.gate,
            nodes,
            std::time::Instant::now(),
        ) else {
            return;
        };
        let released = self.hermes.release_moved();
        let (client, subject, timeout, me) = (
            self.client.clone(),
            self.released_subject.clone(),
            self.release_timeout,
            self.me,
        );
        tokio::spawn(async move {
            if tokio::time::timeout(timeout, released).await.is_err() {
                tracing::warn!("receivers that moved to another node are slow to deactivate");
            }
            let notice = Released { node: me.0, view };
            if let Ok(bytes) = postcard::to_allocvec(&notice) {
                let _ = client.publish(subject, Bytes::from(bytes)).await;
            }
        });
    }
}

impl<K: Key, M: Message, A: hermes_core::App<Id = K, Msg = M>> Heartbeat<K, M, A> {
    /// Renews this node's entry, expecting it at the revision this node last wrote. If it is
    /// not, and is gone (it expired while this node could not reach the server, say cut off
    /// past the liveness timeout), the others have removed this node and taken its IDs, and
    /// moved on with their state: this node deactivates every receiver (their saves of state
    /// that the new owners wrote since fail with `Conflict`) before it announces itself again
    /// and waits at the hand-off gate like any joining node. Without this it went on with the
    /// receivers it had before it was cut off, answering from their stale state.
    async fn announce(&self) {
        let key = member_key(self.me);
        // The entry expires at most the bucket's expiry after the server stored it, which is
        // after this.
        let sent = std::time::Instant::now();
        let written = match self.own.expected() {
            None => self
                .kv
                .put(&key, self.announce.clone())
                .await
                .map(Some)
                .map_err(|e| e.to_string()),
            Some(expected) => match self.kv.update(&key, self.announce.clone(), expected).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == jetstream::kv::UpdateErrorKind::WrongLastRevision => Ok(None),
                Err(e) => Err(e.to_string()),
            },
        };
        match written {
            Ok(Some(revision)) => self.own.written(revision, sent),
            Err(e) => tracing::warn!(%e, "heartbeat failed: is the NATS server up?"),
            Ok(None) => match membership::heartbeat(&self.kv, self.me).await {
                Ok(entry) => {
                    let entry =
                        entry.map(|(revision, announce)| (revision, announce == self.announce));
                    if self.own.refused(entry) == Refused::Expired {
                        self.rejoin().await;
                        Box::pin(self.announce()).await;
                    }
                }
                Err(e) => tracing::warn!(%e, "could not read this node's membership entry"),
            },
        }
    }

    /// Leaves the view (every ID is another node's, or nobody's if no other member is known)
    /// and waits until every receiver has been deactivated, at most the release timeout. Alone
    /// too: the others, if any, may have started while this node could not see them and taken
    /// its IDs, and its saves are refused until it has renewed its entry; keeping its
    /// receivers, it answered from their stale state.
    async fn rejoin(&self) {
        membership::drop_out(&self.placement, &self.gate, std::time::Instant::now());
        let released = self.hermes.release_moved();
        if tokio::time::timeout(self.release_timeout, released)
            .await
            .is_err()
        {
            tracing::warn!("receivers are slow to deactivate");
        }
    }
}

/// A running node of a cluster: the [`Hermes`] handle (the same API as on one machine), and
/// the cluster around it.
pub struct Node<K, M, A> {
    hermes: Hermes<K, M, A>,
    me: NodeId,
    name: String,
    member: bool,
    /// How often members read the membership: how long the others may still send here after
    /// this node left.
    heartbeat: Duration,
    placement: Arc<ClusterPlacement>,
    transport: Arc<Transport<K, M, A>>,
    members: jetstream::kv::Store,
    runtime: Option<tokio::runtime::Runtime>,
    tasks: Vec<JoinHandle<()>>,
}

impl<K, M, A> Node<K, M, A>
where
    K: Key + Serialize + DeserializeOwned,
    M: Message + Serialize + DeserializeOwned,
    A: hermes_core::App<Id = K, Msg = M>,
{
    /// The handle: send, ask, schedule, wherever the receiver lives.
    pub fn hermes(&self) -> &Hermes<K, M, A> {
        &self.hermes
    }

    /// This node's number.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The members of the cluster as this node sees them now, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        self.placement.view().to_vec()
    }

    /// Where `id` lives now, as this node sees it.
    pub fn locate(&self, id: &K) -> Location {
        self.placement.locate(id)
    }

    /// Frames this node sent and received, frames it dropped as undecodable, and messages it
    /// passed on to another node.
    pub fn transport_counts(&self) -> (u64, u64, u64, u64) {
        let c = &self.transport.counters;
        (
            c.frames_out.load(Ordering::Relaxed),
            c.frames_in.load(Ordering::Relaxed),
            c.bad_frames.load(Ordering::Relaxed),
            c.forwarded.load(Ordering::Relaxed),
        )
    }

    /// Leaves the cluster: shuts the local Hermes down (every receiver is deactivated, saving
    /// its state), removes this node from the membership (the others take its IDs at once,
    /// not after the liveness timeout), passes on to their new owners the messages the others
    /// still send here before they notice (it waits two heartbeats for them), and closes the
    /// connection. Blocks; call it outside any async runtime.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if self.member {
            // What comes for its IDs while they are deactivated is held for their next owner.
            self.transport.hold();
        }
        // The heartbeat goes on while the receivers are deactivated: it renews the lease under
        // which their saves are taken (a shutdown longer than the liveness timeout had its
        // last saves refused), and is stopped before the purge, so that it does not announce
        // this node again.
        let _ = self.hermes.shutdown();
        if let Some(heartbeat) = self.tasks.pop() {
            heartbeat.abort();
        }
        if self.member {
            let members = self.members.clone();
            let key = member_key(self.me);
            let _ = runtime.block_on(async move {
                tokio::time::timeout(Duration::from_secs(2), members.purge(key)).await
            });
        }
        // The others learn that this node left at their next heartbeat; until then their
        // mail for its IDs still comes here. It is held, and passed on to the new owners once
        // they know (two heartbeats), instead of falling on a subject nobody reads.
        let leaving = self.member && self.transport.leave();
        self.transport.detach();
        if leaving {
            let wait = self.heartbeat.saturating_mul(2);
            runtime.block_on(async { tokio::time::sleep(wait).await });
        }
        self.transport.pass_on();
        // Let the publisher send what is queued (answers, forwarded mail), then stop.
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(50)).await });
        for task in self.tasks.drain(..) {
            task.abort();
        }
        runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

impl<K, M, A> Drop for Node<K, M, A> {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            for task in self.tasks.drain(..) {
                task.abort();
            }
            drop(self.transport.detach());
            runtime.shutdown_background();
        }
    }
}

impl<K, M, A> std::fmt::Debug for Node<K, M, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("id", &self.me)
            .finish_non_exhaustive()
    }
}

/// Used in signatures: what a dead-letter sink is.
pub type DeadLetterSink<K, M> = Arc<dyn Fn(DeadLetter<K, M>) + Send + Sync>;
