//! The broker: start it, find its addresses, shut it down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hermes::store::StoreError;
use hermes::{DeadLetter, DeadLetterReason, Kinds, Options, Settings};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{Config, SessionExpiry};
use crate::packet::{ConnAck, ConnectReturnCode, Packet};
use crate::retained::RetainedStore;
use crate::server::storage::Storage;
use crate::server::{
    BrokerApp, BrokerId, BrokerMsg, ClientId, Counters, Handle, SessionMsg, Shared, conn,
    retained_rx, retained_shard_of, session_rx,
};
use crate::subscriptions::Subscriptions;
use crate::will::CloseReason;

/// A session's mailbox bound: past it, messages from other sessions to it are dead letters
/// (counted as dropped), and connections sending to it wait.
const SESSION_MAILBOX: usize = 16 * 1024;
/// How long a shutdown waits for connections to close and say so to their sessions.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// A running MQTT broker: its listeners accept connections until [`shutdown`](Broker::shutdown).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use hermes_mqtt::{Broker, Config};
///
/// let config = Config { memory: true, listeners: vec!["127.0.0.1:0".parse()?], ..Config::default() };
/// let broker = Broker::start(config).await?;
/// println!("listening on {:?}", broker.local_addrs());
/// let report = broker.shutdown().await?;
/// # Ok(()) }
/// ```
///
/// Start it inside a tokio runtime with the time and I/O drivers (`#[tokio::main]`,
/// `#[tokio::test]`); a multi-thread runtime uses every core.
pub struct Broker {
    addrs: Vec<SocketAddr>,
    shared: Arc<Shared>,
    hermes: Handle,
    accepting: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("addrs", &self.addrs)
            .field("storage", &self.shared.storage)
            .finish_non_exhaustive()
    }
}

/// Why the broker could not start. Each message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Not called inside a tokio runtime.
    #[error(
        "no tokio runtime: start the broker from inside one (#[tokio::main] or Runtime::block_on)"
    )]
    NoRuntime,
    /// Another program listens on this address already.
    #[error(
        "cannot listen on {addr}: the address is in use (stop the program using it, or choose \
         another port with --listen)"
    )]
    AddrInUse {
        /// The address.
        addr: SocketAddr,
    },
    /// The address cannot be listened on.
    #[error(
        "cannot listen on {addr}: {source} (check the address is one of this machine's, and for \
         ports below 1024 that the broker may use them)"
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The data directory cannot be created or written.
    #[error(
        "cannot use the data directory {}: {source} (create it and make it writable by this \
         user, choose another with --data-dir, or run with --memory to store nothing)",
        path.display()
    )]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another broker (or program) has the database open.
    #[error(
        "the database {} is in use by another process (stop the other broker, or give this one \
         another --data-dir)",
        path.display()
    )]
    DataDirInUse {
        /// The database file.
        path: PathBuf,
    },
    /// The store could not be opened or read.
    #[error("cannot load the broker's state: {0}")]
    Store(#[source] StoreError),
}

/// Why a shutdown did not end cleanly. The broker is stopped either way.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShutdownError {
    /// The last writes could not be committed: the state on disk is the last one committed.
    #[error(
        "the last changes could not be stored ({0}): the data directory keeps the state as of \
         the last successful commit; check the disk"
    )]
    Store(#[source] StoreError),
}

/// What the broker counted since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BrokerStats {
    /// Connections accepted.
    pub connections: u64,
    /// Messages published into the broker (client PUBLISHes and wills).
    pub published: u64,
    /// Queued QoS 1 and 2 messages dropped because a session's queue was full.
    pub queue_drops: u64,
    /// QoS 0 messages dropped because their client was behind.
    pub qos0_drops: u64,
    /// Messages between receivers dropped because a session's mailbox was full.
    pub mailbox_drops: u64,
    /// Messages Hermes could not deliver (including the mailbox drops).
    pub dead_letters: u64,
    /// Persistent sessions discarded after `session_expiry` without their client.
    pub expired_sessions: u64,
}

/// What a graceful shutdown did.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Connections that were open, closed by the shutdown (their wills published).
    pub connections_closed: usize,
    /// Connections that had not finished closing after the grace period.
    pub connections_lingering: usize,
    /// The broker's counters, final.
    pub stats: BrokerStats,
    /// Hermes's counters, final.
    pub hermes: hermes::Stats,
}

impl Broker {
    /// Starts a broker: opens the store (unless `config.memory`), loads persistent sessions and
    /// retained messages, binds every listener (port 0 picks a free port; see
    /// [`local_addrs`](Broker::local_addrs)), and accepts connections.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        let storage = if config.memory {
            None
        } else {
            Some(open_storage(&config.data_dir)?)
        };
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for &addr in &config.listeners {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| listen_error(addr, e))?;
            listeners.push(listener);
        }
        let addrs = listeners
            .iter()
            .zip(&config.listeners)
            .map(|(l, &addr)| l.local_addr().unwrap_or(addr))
            .collect::<Vec<_>>();

        let shards = std::thread::available_parallelism().map_or(1, usize::from);
        let retained_shards = u16::try_from(shards).unwrap_or(u16::MAX).max(1);
        let now = SystemTime::now();
        let mut index = Subscriptions::new();
        let mut expiry_timers = Vec::new();
        let mut preloaded: Vec<Option<RetainedStore>> = (0..retained_shards)
            .map(|_| Some(RetainedStore::new()))
            .collect();
        let mut sessions_loaded = 0;
        if let Some(storage) = &storage {
            for stored in storage.scan_sessions().map_err(StartError::Store)? {
                let since = stored
                    .offline_since_ms
                    .map(|ms| UNIX_EPOCH + Duration::from_millis(ms))
                    .unwrap_or(now);
                let remaining = match config.session_expiry {
                    SessionExpiry::Never => None,
                    SessionExpiry::After(expiry) => {
                        let away = now.duration_since(since).unwrap_or_default();
                        Some(expiry.saturating_sub(away))
                    }
                };
                if remaining.is_some_and(|r| r.is_zero()) {
                    tracing::debug!(client_id = %stored.client_id, "a stored session expired while the broker was stopped");
                    storage
                        .purge_session(&stored.client_id)
                        .map_err(StartError::Store)?;
                    continue;
                }
                let client = ClientId(Arc::from(stored.client_id.as_str()));
                for (filter, qos) in &stored.subscriptions {
                    index.subscribe(filter, client.clone(), *qos);
                }
                if let Some(remaining) = remaining {
                    expiry_timers.push((client, remaining));
                }
                sessions_loaded += 1;
            }
            for message in storage.load_retained().map_err(StartError::Store)? {
                let shard = retained_shard_of(message.topic.as_bytes(), retained_shards);
                if let Some(Some(store)) = preloaded.get_mut(usize::from(shard)) {
                    store.on_publish(&message);
                }
            }
        }
        let retained: usize = preloaded.iter().flatten().map(RetainedStore::len).sum();

        let shared = Arc::new(Shared::new(
            config,
            storage,
            index,
            retained_shards,
            preloaded,
        ));
        let kinds = Kinds::<BrokerApp>::new()
            .kind_with(
                Settings::default().mailbox_capacity(SESSION_MAILBOX),
                session_rx::factory(Arc::clone(&shared)),
            )
            .kind_with(
                Settings::default().idle_timeout(Duration::MAX),
                retained_rx::factory(Arc::clone(&shared)),
            );
        let sink = Arc::clone(&shared);
        let options = Options::<BrokerId, BrokerMsg>::new(hermes::Config::default())
            .shards(shards)
            .name("hermes-mqtt")
            .on_dead_letter(move |letter| dead_letter(&sink, letter));
        let hermes: Handle = hermes::tokio::start_on(&runtime, options, kinds);
        // HERMES: timers are not durable; the stored sessions' expiry timers are set again.
        for (client, remaining) in expiry_timers {
            if let Err(error) = hermes.schedule(client, remaining, SessionMsg::ExpiryCheck) {
                tracing::warn!(error = %error.kind(), "cannot schedule a stored session's expiry");
            }
        }
        let accepting = listeners
            .into_iter()
            .map(|listener| {
                let shared = Arc::clone(&shared);
                let hermes = hermes.clone();
                runtime.spawn(accept_loop(listener, shared, hermes))
            })
            .collect();
        let data = match &shared.storage {
            Some(storage) => storage.path().display().to_string(),
            None => "memory only (nothing survives a restart)".to_owned(),
        };
        let listening: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        tracing::info!(
            "hermes-mqtt listening on {}; data in {data} ({sessions_loaded} persistent sessions, \
             {retained} retained messages loaded)",
            listening.join(", ")
        );
        Ok(Broker {
            addrs,
            shared,
            hermes,
            accepting,
        })
    }

    /// The addresses the broker listens on, in the order of `config.listeners` (with the port
    /// chosen for port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// The broker's counters so far.
    pub fn stats(&self) -> BrokerStats {
        let c = &self.shared.counters;
        let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        BrokerStats {
            connections: get(&c.connections),
            published: get(&c.published),
            queue_drops: get(&c.queue_drops),
            qos0_drops: get(&c.qos0_drops),
            mailbox_drops: get(&c.full_drops),
            dead_letters: get(&c.dead_letters),
            expired_sessions: get(&c.expired_sessions),
        }
    }

    /// Shuts the broker down gracefully: stops accepting connections, closes every connection
    /// (publishing their wills: a connection the server closes did not send DISCONNECT
    /// [MQTT-3.1.2-8]), lets the sessions handle what is queued for them, stores every change,
    /// and stops Hermes. Persistent sessions and retained messages are then all on disk.
    pub async fn shutdown(mut self) -> Result<ShutdownReport, ShutdownError> {
        for task in self.accepting.drain(..) {
            task.abort();
        }
        let connections_closed = self.shared.close_all();
        let connections_lingering = self.shared.connections_ended(CLOSE_GRACE).await;
        if connections_lingering > 0 {
            tracing::warn!(
                connections_lingering,
                "some connections did not close in time"
            );
        }
        let hermes = self.hermes.shutdown_async().await;
        let shared = Arc::clone(&self.shared);
        let stored = tokio::task::spawn_blocking(move || match &shared.storage {
            Some(storage) => storage.shutdown(),
            None => Ok(()),
        })
        .await
        .unwrap_or(Ok(()));
        let stats = self.stats();
        tracing::info!(connections_closed, ?stats, "hermes-mqtt stopped");
        stored.map_err(ShutdownError::Store)?;
        Ok(ShutdownReport {
            connections_closed,
            connections_lingering,
            stats,
            hermes,
        })
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        for task in &self.accepting {
            task.abort();
        }
        self.shared.close_all();
    }
}

/// Opens the store in `dir`, creating the directory.
fn open_storage(dir: &std::path::Path) -> Result<Storage, StartError> {
    std::fs::create_dir_all(dir).map_err(|source| StartError::DataDir {
        path: dir.to_owned(),
        source,
    })?;
    Storage::open(dir).map_err(|error| match error {
        StoreError::AlreadyOpen { path } => StartError::DataDirInUse { path },
        StoreError::Open { source, .. } => {
            let kind = source
                .downcast_ref::<std::io::Error>()
                .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
            StartError::DataDir {
                path: dir.to_owned(),
                source: std::io::Error::new(kind, source.to_string()),
            }
        }
        other => StartError::Store(other),
    })
}

fn listen_error(addr: SocketAddr, source: std::io::Error) -> StartError {
    match source.kind() {
        std::io::ErrorKind::AddrInUse => StartError::AddrInUse { addr },
        _ => StartError::Listen { addr, source },
    }
}

/// Accepts connections on `listener` until the broker shuts down.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, hermes: Handle) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of file descriptors, say: wait for some to be freed.
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some((link, outbox)) = shared.register() else {
            return;
        };
        tracing::debug!(conn = link.conn(), %peer, "accepted");
        let shared = Arc::clone(&shared);
        let hermes = hermes.clone();
        tokio::spawn(conn::serve(stream, peer, link, outbox, shared, hermes));
    }
}

/// Hermes's dead letters: counted; an Attach that could not be delivered (the session could
/// not be loaded) is answered CONNACK 0x03 [3.2.2.3].
fn dead_letter(shared: &Shared, letter: DeadLetter<BrokerId, BrokerMsg>) {
    let counters = &shared.counters;
    Counters::add(&counters.dead_letters, 1);
    if letter.reason == DeadLetterReason::Full {
        Counters::add(&counters.full_drops, 1);
    }
    match letter.message {
        Some(BrokerMsg::Session(SessionMsg::Attach { link, .. })) => {
            tracing::warn!(recipient = ?letter.recipient, reason = ?letter.reason, "a session could not take its connection: CONNACK 0x03");
            link.send(Packet::ConnAck(ConnAck {
                session_present: false,
                code: ConnectReturnCode::ServerUnavailable,
            }));
            link.close(CloseReason::ServerClosed);
        }
        Some(BrokerMsg::Session(SessionMsg::Deliver { .. }))
            if letter.reason == DeadLetterReason::Full =>
        {
            tracing::debug!(recipient = ?letter.recipient, "session mailbox full: message dropped");
        }
        _ => tracing::debug!(recipient = ?letter.recipient, reason = ?letter.reason, "dead letter"),
    }
}
