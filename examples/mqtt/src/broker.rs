//! The broker: start it, find its addresses, shut it down.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hermes::store::StoreError;
use hermes::{DeadLetter, DeadLetterReason, Kinds, Options, Settings};
use tokio::task::JoinHandle;

use crate::acl::{AclError, AclFile};
use crate::auth::{AuthError, PasswordFile};
use crate::config::{Config, SessionExpiry};
use crate::packet::{ConnAck, ConnectReturnCode, Packet};
use crate::plural_of;
use crate::retained::RetainedStore;
use crate::server::auth::Authenticator;
use crate::server::listen::{self, Bound};
use crate::server::storage::Storage;
use crate::server::{
    BrokerApp, BrokerId, BrokerMsg, ClientId, Counters, Handle, SessionMsg, Shared, retained_rx,
    retained_shard_of, session_rx, spin, stats,
};

pub use crate::server::listen::TlsError;

/// How often the noisy events (garbage, failed handshakes...) are summed up in the log.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);
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
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    hermes: Handle,
    /// The accept loops, the metrics listener, the `$SYS` and summary tasks.
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
         another port: with --listen, or in the configuration file's `listeners`)"
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
    /// A TLS listener's certificate or key cannot be used.
    #[error("listener {addr}: {source}")]
    Tls {
        /// The listener's address.
        addr: SocketAddr,
        /// What is wrong with its files.
        #[source]
        source: TlsError,
    },
    /// The password file cannot be used.
    #[error("{0}")]
    Passwords(#[source] AuthError),
    /// The ACL file cannot be used.
    #[error("{0}")]
    Acl(#[source] AclError),
    /// The configuration does not hold together ([`Config::validate`]): nothing was bound.
    #[error("{0}")]
    Config(#[source] crate::config::ConfigError),
    /// The metrics address cannot be listened on.
    #[error(
        "cannot serve metrics on {addr}: {source} (choose another metrics_address, or remove it)"
    )]
    Metrics {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
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
    /// Messages Hermes could not deliver (including the mailbox drops); not the offline
    /// sessions' expiry timers that the shutdown drops (they are set again at the next start).
    pub dead_letters: u64,
    /// Persistent sessions discarded after `session_expiry` without their client.
    pub expired_sessions: u64,
    /// Clients connected now (CONNECT accepted).
    pub clients_connected: u64,
    /// Bytes read from clients, and written to them.
    pub bytes_received: u64,
    /// Bytes written to clients.
    pub bytes_sent: u64,
    /// MQTT packets read from clients.
    pub packets_received: u64,
    /// MQTT packets written to clients.
    pub packets_sent: u64,
    /// Connections closed at once for `max_connections`.
    pub refused_max_connections: u64,
    /// CONNECTs refused with CONNACK 0x04 or 0x05.
    pub refused_auth: u64,
    /// PUBLISHes dropped by the ACL (or for a `$SYS` topic), acknowledged all the same.
    pub denied_publishes: u64,
    /// SUBSCRIBE filters refused by the ACL (return code 0x80).
    pub denied_subscriptions: u64,
    /// Connections closed for a protocol error (garbage, malformed packets).
    pub protocol_errors: u64,
    /// Connections closed for a failed or late TLS or WebSocket handshake.
    pub handshake_failures: u64,
    /// Times a connection's reader waited for `max_publish_rate`.
    pub publish_throttled: u64,
    /// Persistent sessions whose client is away.
    pub offline_sessions: u64,
    /// Retained messages held.
    pub retained: u64,
    /// The sum of the retained messages' payload sizes, in bytes.
    pub retained_bytes: u64,
    /// Retained messages not stored because `max_retained` or `max_retained_bytes` was
    /// reached (they were delivered to subscribers and acknowledged all the same).
    pub retained_refused: u64,
    /// Writes to the store that failed (a full disk, say): what they held is not on disk.
    pub store_errors: u64,
    /// Queued QoS 1 and 2 messages (of sessions whose client is away, or whose in-flight
    /// window is full) submitted to the store; 0 with `memory`.
    pub queued_stored: u64,
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
    /// Starts a broker: checks the configuration ([`Config::validate`]), opens the store (unless `config.memory`), loads persistent sessions and
    /// retained messages, binds every listener (port 0 picks a free port; see
    /// [`local_addrs`](Broker::local_addrs)), and accepts connections.
    pub async fn start(config: Config) -> Result<Broker, StartError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        config.validate().map_err(StartError::Config)?;
        let storage = if config.memory {
            None
        } else {
            Some(open_storage(&config.data_dir)?)
        };
        let (auth, acl) = load_access(&config).await?;
        // Every certificate first: a bad file is reported before any port is taken.
        let mut acceptors = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let addr = listener.address;
            acceptors.push(match (&listener.cert, &listener.key) {
                (Some(cert), Some(key)) if listener.kind.is_tls() => Some(
                    listen::tls_acceptor(cert, key)
                        .map_err(|source| StartError::Tls { addr, source })?,
                ),
                _ => None,
            });
        }
        // Before the first connection: a table grown while connections come blocks them all.
        listen::reserve_fds(config.max_connections);
        let mut bound = Vec::with_capacity(config.listeners.len());
        for (listener, tls) in config.listeners.iter().zip(acceptors) {
            let addr = listener.address;
            let tcp = listen::bind(addr).map_err(|e| listen_error(addr, e))?;
            bound.push(Bound {
                addr: tcp.local_addr().unwrap_or(addr),
                listener: tcp,
                config: listener.clone(),
                tls,
            });
        }
        let addrs: Vec<SocketAddr> = bound.iter().map(|b| b.addr).collect();
        let metrics = match config.metrics_address {
            Some(addr) => Some(
                stats::bind_metrics(addr)
                    .await
                    .map_err(|source| StartError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let metrics_addr = metrics
            .as_ref()
            .and_then(|listener| listener.local_addr().ok());

        let shards = std::thread::available_parallelism().map_or(1, usize::from);
        let retained_shards = u16::try_from(shards).unwrap_or(u16::MAX).max(1);
        let now = SystemTime::now();
        let mut index = Subscriptions::new();
        let mut expiry_timers = Vec::new();
        let mut preloaded: Vec<Option<RetainedStore>> = (0..retained_shards)
            .map(|_| Some(RetainedStore::new()))
            .collect();
        let mut sessions_loaded: usize = 0;
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
                let client = ClientId::new(stored.client_id.as_str());
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
        let retained_bytes: usize = preloaded
            .iter()
            .flatten()
            .map(RetainedStore::payload_bytes)
            .sum();
        warn_over_retained_limits(&config, retained, retained_bytes);

        let shared = Arc::new(Shared::new(
            config,
            storage,
            index,
            retained_shards,
            preloaded,
            auth,
            acl,
        ));
        let counters = &shared.counters;
        Counters::gauge(
            &counters.retained,
            i64::try_from(retained).unwrap_or(i64::MAX),
        );
        Counters::gauge(
            &counters.retained_bytes,
            i64::try_from(retained_bytes).unwrap_or(i64::MAX),
        );
        Counters::gauge(
            &counters.offline_sessions,
            i64::try_from(sessions_loaded).unwrap_or(i64::MAX),
        );
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
        // "ADDR (URL)": the address first, as scripts read it.
        let urls: Vec<String> = bound
            .iter()
            .map(|b| format!("{} ({})", b.addr, b.config.url(b.addr)))
            .collect();
        let mut accepting: Vec<JoinHandle<()>> = bound
            .into_iter()
            .map(|bound| {
                let shared = Arc::clone(&shared);
                let hermes = hermes.clone();
                runtime.spawn(listen::accept_loop(bound, shared, hermes))
            })
            .collect();
        if let Some(listener) = metrics {
            accepting.push(runtime.spawn(stats::metrics_loop(
                listener,
                Arc::clone(&shared),
                hermes.clone(),
            )));
        }
        let sys_interval = shared.config.sys_interval;
        if !sys_interval.is_zero() {
            accepting.push(runtime.spawn(stats::sys_loop(
                Arc::clone(&shared),
                hermes.clone(),
                sys_interval,
            )));
        }
        accepting.push(runtime.spawn(stats::summary_loop(Arc::clone(&shared), SUMMARY_INTERVAL)));
        accepting.push(runtime.spawn(listen::keep_alive_sweep(Arc::clone(&shared))));
        accepting.push(runtime.spawn(stats::throttle_loop(Arc::clone(&shared))));
        accepting.push(runtime.spawn({
            let shared = Arc::clone(&shared);
            let spin = Arc::clone(&shared.spin);
            async move { spin::run(spin, || shared.activity()).await }
        }));
        let data = match &shared.storage {
            Some(storage) => storage.path().display().to_string(),
            None => "memory only (nothing survives a restart)".to_owned(),
        };
        let metrics = metrics_addr
            .map(|addr| format!("; metrics at http://{addr}/metrics"))
            .unwrap_or_default();
        tracing::info!(
            "hermes-mqtt listening on {}{metrics}; data in {data} ({}, {} loaded)",
            urls.join(", "),
            plural_of(sessions_loaded, "persistent session", "persistent sessions"),
            plural_of(retained, "retained message", "retained messages"),
        );
        Ok(Broker {
            addrs,
            metrics_addr,
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

    /// The address of the Prometheus metrics listener (`metrics_address`), with the port
    /// chosen for port 0.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The Prometheus text exposition of the broker's metrics, as `GET /metrics` serves it.
    pub fn metrics_text(&self) -> String {
        stats::prometheus(&self.shared, &self.hermes.stats())
    }

    /// The broker's counters so far.
    pub fn stats(&self) -> BrokerStats {
        let c = &self.shared.counters;
        let get = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        let gauge = |n: &std::sync::atomic::AtomicI64| {
            u64::try_from(n.load(Ordering::Relaxed)).unwrap_or(0)
        };
        BrokerStats {
            connections: get(&c.connections),
            published: get(&c.published),
            queue_drops: get(&c.queue_drops),
            qos0_drops: get(&c.qos0_drops),
            mailbox_drops: get(&c.full_drops),
            dead_letters: get(&c.dead_letters),
            expired_sessions: get(&c.expired_sessions),
            clients_connected: gauge(&c.clients_connected),
            bytes_received: get(&c.bytes_received),
            bytes_sent: get(&c.bytes_sent),
            packets_received: get(&c.packets_received),
            packets_sent: get(&c.packets_sent),
            refused_max_connections: get(&c.refused_limit),
            refused_auth: get(&c.refused_auth),
            denied_publishes: get(&c.denied_publish),
            denied_subscriptions: get(&c.denied_subscribe),
            protocol_errors: get(&c.protocol_errors),
            handshake_failures: get(&c.handshake_failures),
            publish_throttled: get(&c.publish_throttled),
            offline_sessions: gauge(&c.offline_sessions),
            retained: gauge(&c.retained),
            retained_bytes: gauge(&c.retained_bytes),
            retained_refused: get(&c.retained_refused),
            store_errors: self.shared.storage.as_ref().map_or(0, Storage::errors),
            queued_stored: c.queued_stored.load(Ordering::Acquire),
        }
    }

    /// Reads the password file and the ACL file again (SIGHUP in the binary): new connections
    /// are checked against them; connected clients keep the rules they connected with. On an
    /// error (a file that cannot be read or has a bad line) nothing changes.
    ///
    /// Without either file configured there is nothing to read: that is logged, and nothing
    /// changes. The configuration file and TLS certificates are read at startup only.
    pub async fn reload(&self) -> Result<(), StartError> {
        let config = &self.shared.config;
        let files: Vec<String> = [
            ("the password file", &config.password_file),
            ("the ACL file", &config.acl_file),
        ]
        .into_iter()
        .filter_map(|(what, path)| Some(format!("{what} {}", path.as_ref()?.display())))
        .collect();
        if files.is_empty() {
            tracing::info!(
                "reload: nothing to reload, as no password_file or acl_file is configured (the \
                 configuration file and TLS certificates are read at startup only: restart the \
                 broker to change them)"
            );
            return Ok(());
        }
        let (auth, acl) = load_access(config).await?;
        self.shared.replace_access(auth, acl);
        tracing::info!(
            "reloaded {}: new connections are checked against them (the configuration file \
             and TLS certificates are read at startup only)",
            files.join(" and ")
        );
        Ok(())
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
        self.shared.log_throttled(std::time::Instant::now(), true);
        let stats = self.stats();
        log_stopped(connections_closed, &stats);
        stored.map_err(ShutdownError::Store)?;
        Ok(ShutdownReport {
            connections_closed,
            connections_lingering,
            stats,
            hermes,
        })
    }
}

/// The last line of a shutdown: each counter a field of its own (`published=12
/// store_errors=0`), as an operator greps or a log pipeline indexes them, not one Debug blob.
/// The fields are `BrokerStats`'s, destructured: a counter added to it and not here does not
/// compile.
fn log_stopped(connections_closed: usize, stats: &BrokerStats) {
    macro_rules! log_fields {
        ($($field:ident),* $(,)?) => {{
            let BrokerStats { $($field),* } = *stats;
            tracing::info!(connections_closed, $($field),*, "hermes-mqtt stopped");
        }};
    }
    log_fields!(
        connections,
        published,
        queue_drops,
        qos0_drops,
        mailbox_drops,
        dead_letters,
        expired_sessions,
        clients_connected,
        bytes_received,
        bytes_sent,
        packets_received,
        packets_sent,
        refused_max_connections,
        refused_auth,
        denied_publishes,
        denied_subscriptions,
        protocol_errors,
        handshake_failures,
        publish_throttled,
        offline_sessions,
        retained,
        retained_bytes,
        retained_refused,
        store_errors,
        queued_stored,
    );
}

/// Warns when the store holds more retained messages than `max_retained` or
/// `max_retained_bytes` allow (the limits were lowered): all are kept, and new topics are
/// refused until enough are cleared.
fn warn_over_retained_limits(config: &Config, count: usize, bytes: usize) {
    let over = |limit: usize, held: usize| limit != 0 && held > limit;
    if over(config.max_retained, count) || over(config.max_retained_bytes, bytes) {
        tracing::warn!(
            "the store holds {} ({bytes} bytes of payload), over max_retained ({}) or \
             max_retained_bytes ({}): all are kept, and retained messages on new topics are \
             not retained until enough are cleared",
            plural_of(count, "retained message", "retained messages"),
            config.max_retained,
            config.max_retained_bytes
        );
    }
}

/// Reads the password file and the ACL file, and builds the authenticator (whose stand-in
/// hash is computed on a blocking thread).
async fn load_access(config: &Config) -> Result<(Authenticator, Option<AclFile>), StartError> {
    let passwords = match &config.password_file {
        Some(path) => Some(PasswordFile::load(path).map_err(StartError::Passwords)?),
        None => None,
    };
    let acl = match &config.acl_file {
        Some(path) => Some(AclFile::load(path).map_err(StartError::Acl)?),
        None => None,
    };
    if !config.allow_anonymous && passwords.is_none() {
        tracing::warn!(
            "allow_anonymous is false and there is no password_file: every client will be \
             refused (CONNACK 0x05); add users with `hermes-mqtt passwd FILE USER`"
        );
    }
    let params = config.hash_params();
    let allow_anonymous = config.allow_anonymous;
    let auth =
        tokio::task::spawn_blocking(move || Authenticator::new(allow_anonymous, passwords, params))
            .await
            .map_err(|e| StartError::Passwords(AuthError::Hash(e.to_string())))?
            .map_err(StartError::Passwords)?;
    Ok((auth, acl))
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
        StoreError::Open { path, source } => {
            let kind = source
                .downcast_ref::<std::io::Error>()
                .map_or(std::io::ErrorKind::Other, std::io::Error::kind);
            if kind == std::io::ErrorKind::InvalidData {
                // The file is there but is not a store (redb's magic number): not a question
                // of the directory's permissions.
                return StartError::Store(StoreError::Open { path, source });
            }
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

/// Hermes's dead letters: counted; an Attach that could not be delivered (the session could
/// not be loaded) is answered CONNACK 0x03 [3.2.2.3].
fn dead_letter(shared: &Shared, letter: DeadLetter<BrokerId, BrokerMsg>) {
    if let (Some(BrokerMsg::Session(SessionMsg::ExpiryCheck)), DeadLetterReason::Closed) =
        (&letter.message, &letter.reason)
    {
        // Hermes drops its pending timers when it closes: an offline session's expiry, set
        // again from the store at the next start. Nothing is lost, so nothing is counted.
        tracing::trace!(recipient = ?letter.recipient, "expiry timer dropped at shutdown");
        return;
    }
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
        Some(BrokerMsg::Session(
            SessionMsg::Deliver { .. } | SessionMsg::DeliverMany(..) | SessionMsg::DeliverFrames(_),
        )) if letter.reason == DeadLetterReason::Full => {
            tracing::debug!(recipient = ?letter.recipient, "session mailbox full: message dropped");
        }
        _ => tracing::debug!(recipient = ?letter.recipient, reason = ?letter.reason, "dead letter"),
    }
}
