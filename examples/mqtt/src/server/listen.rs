//! The listeners: binding each configured one (TLS certificates loaded first, so a bad file is
//! a startup error naming it), accepting within the connection limits, and the TLS and
//! WebSocket handshakes, each connection in a task of its own, before the connection's
//! reader and writer take over ([`conn::serve`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::link::{Link, Outbox};
use super::stats::Counters;
use super::{Handle, Shared, conn, ws};
use crate::config::{ListenerConfig, ListenerKind};

/// A TLS certificate or key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The file cannot be read, or holds no PEM item of the kind.
    #[error(
        "the TLS {what} file {}: {message} (give a PEM file: the certificate chain for `cert`, \
         the server's certificate first, and its private key for `key`)",
        path.display()
    )]
    File {
        /// "certificate" or "key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair.
    #[error(
        "the TLS certificate {} and key {} do not make a server identity: {message} (check \
         that the key is the certificate's)",
        cert.display(),
        key.display()
    )]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        message: String,
    },
}

/// Builds the TLS acceptor of a listener from its PEM files.
pub(crate) fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let file_error = |what, path: &Path, message: String| TlsError::File {
        what,
        path: path.to_owned(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_error("certificate", cert, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_error("certificate", cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(file_error(
            "certificate",
            cert,
            "no CERTIFICATE in it".to_owned(),
        ));
    }
    let private_key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("key", key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pair_error = |message: String| TlsError::Pair {
        cert: cert.to_owned(),
        key: key.to_owned(),
        message,
    };
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| pair_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, private_key)
        .map_err(|e| pair_error(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// How many connections a listener (or the broker) holds, and its limit (0: none).
#[derive(Debug, Default)]
pub(crate) struct ConnLimit {
    active: AtomicUsize,
    max: usize,
}

impl ConnLimit {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            active: AtomicUsize::new(0),
            max,
        })
    }

    /// Takes a place, if there is one; the place is given back when the guard drops.
    pub(crate) fn try_take(self: &Arc<Self>) -> Option<Place> {
        let taken = self.active.fetch_add(1, Ordering::AcqRel);
        if self.max != 0 && taken >= self.max {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Place(Arc::clone(self)))
    }

    /// Connections held now.
    pub(crate) fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }
}

/// A connection's place under a limit.
#[derive(Debug)]
pub(crate) struct Place(Arc<ConnLimit>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A bound listener, ready to accept.
pub(crate) struct Bound {
    pub(crate) listener: TcpListener,
    pub(crate) config: ListenerConfig,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) addr: SocketAddr,
}

/// What one accepted connection needs for its handshakes.
struct Accepted {
    stream: TcpStream,
    peer: SocketAddr,
    kind: ListenerKind,
    tls: Option<TlsAcceptor>,
    path: Arc<str>,
    places: (Place, Place),
    /// The socket has the listener's options: none to set.
    inherited: bool,
}

/// The longest period of the keep-alive sweep ([`keep_alive_sweep`]): a silent connection is
/// closed at most this long after its 1.5 keep alives [MQTT-3.1.2-24].
const SWEEP_PERIOD: Duration = Duration::from_millis(500);

/// The sweep's period: [`SWEEP_PERIOD`], or less with a short `connect_timeout` (half of it,
/// at least 10 ms).
pub(crate) fn sweep_period(connect_timeout: Duration) -> Duration {
    (connect_timeout / 2).clamp(Duration::from_millis(10), SWEEP_PERIOD)
}

/// The keep-alive sweep: every [`sweep_period`], wakes the readers whose wait for a packet is
/// overdue (keep alive, or the CONNECT's `connect_timeout`), each of which closes its
/// connection (publishing the will, after a keep alive). One task for the broker instead of
/// a timer in every connection: an idle connection keeps no timer (about 110 bytes) and no
/// writer task, and a connection that keeps sending costs a clock read per read, not a timer
/// reset.
pub(crate) async fn keep_alive_sweep(shared: Arc<Shared>) {
    let mut ticks = tokio::time::interval(sweep_period(shared.config.connect_timeout));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = shared.stamp(Instant::now());
        let mut nudged = 0;
        for shard in 0..shared.conn_shards() {
            nudged += shared.sweep_shard(shard, now);
            // One map at a time, each lock held over a few hundred connections at most, with
            // the thread given back between them: the pass blocks neither connects nor the
            // tasks on this thread for the whole walk.
            tokio::task::yield_now().await;
        }
        if nudged > 0 {
            tracing::trace!(nudged, "keep-alive sweep: overdue readers woken");
        }
    }
}

/// Accepts connections on `bound` until the broker shuts down.
pub(crate) async fn accept_loop(bound: Bound, shared: Arc<Shared>, hermes: Handle) {
    let limit = ConnLimit::new(bound.config.max_connections);
    let path: Arc<str> = Arc::from(bound.config.path.as_str());
    let kind = bound.config.kind;
    let inherited = listener_options(&bound.listener, shared.config.tcp_keepalive);
    loop {
        let (stream, peer) = match bound.listener.accept().await {
            Ok(accepted) => {
                shared.spin.poke();
                accepted
            }
            Err(error) => {
                // Out of file descriptors, say: wait for some to be freed. Logged at most
                // once a minute (the summary counts them).
                Counters::add(&shared.counters.accept_errors, 1);
                if shared
                    .accept_error_log
                    .note(std::time::Instant::now(), String::new)
                    .is_some()
                {
                    tracing::warn!(%error, listener = %bound.addr, "cannot accept a connection (raise the file descriptor limit, or lower max_connections)");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let global = shared.conn_limit.try_take();
        let own = limit.try_take();
        let (Some(global), Some(own)) = (global, own) else {
            Counters::add(&shared.counters.refused_limit, 1);
            tracing::debug!(%peer, listener = %bound.addr, "over max_connections: closed");
            drop(stream);
            continue;
        };
        let Some((link, outbox)) = shared.register() else {
            return;
        };
        tracing::debug!(conn = link.conn(), %peer, listener = %bound.addr, kind = %kind, "accepted");
        let accepted = Accepted {
            stream,
            peer,
            kind,
            tls: bound.tls.clone(),
            path: Arc::clone(&path),
            places: (global, own),
            inherited,
        };
        let shared = Arc::clone(&shared);
        let hermes = hermes.clone();
        // A plain TCP connection has no handshake: its task is only as large as its reader
        // (the handshakes' futures are larger, and a task is as large as its future).
        if kind == ListenerKind::Tcp {
            tokio::spawn(serve_tcp(accepted, link, outbox, shared, hermes));
        } else {
            tokio::spawn(handshake(accepted, link, outbox, shared, hermes));
        }
    }
}

/// Serves a plain TCP connection: the future of its task (a plain function that returns it,
/// so that the future does not keep this function's arguments as well as the reader's).
fn serve_tcp(
    accepted: Accepted,
    link: Link,
    outbox: Outbox,
    shared: Arc<Shared>,
    hermes: Handle,
) -> impl Future<Output = ()> + Send {
    let Accepted {
        stream,
        places,
        inherited,
        ..
    } = accepted;
    let deadline = socket_options(&stream, &shared, inherited);
    let (read, write) = stream.into_split();
    conn::serve(read, write, deadline, link, outbox, shared, hermes, places)
}

/// Sets an accepted socket's options, unless it has the listener's (`inherited`); returns
/// when its CONNECT is due (`connect_timeout`).
fn socket_options(stream: &TcpStream, shared: &Shared, inherited: bool) -> Instant {
    let now = Instant::now();
    let deadline = now
        .checked_add(shared.config.connect_timeout)
        .unwrap_or(now + Duration::from_secs(3600));
    if !inherited {
        let socket = socket2::SockRef::from(stream);
        let _ = socket.set_tcp_nodelay(true);
        if let Some(idle) = shared.config.tcp_keepalive {
            let _ = socket.set_tcp_keepalive(&keepalive(idle));
        }
    }
    deadline
}

/// TCP keepalive probes after `idle` without traffic, then every 10 s.
fn keepalive(idle: Duration) -> socket2::TcpKeepalive {
    socket2::TcpKeepalive::new()
        .with_time(idle)
        .with_interval(Duration::from_secs(10))
}

/// Sets the accepted sockets' options (`TCP_NODELAY`, TCP keepalive) on the listening socket:
/// on Linux an accepted socket has its listener's, so that accepting costs no system call per
/// option (four per connection). Whether they are inherited so (Linux, and all set).
fn listener_options(listener: &TcpListener, tcp_keepalive: Option<Duration>) -> bool {
    if !cfg!(target_os = "linux") {
        return false;
    }
    let socket = socket2::SockRef::from(listener);
    let nodelay = socket.set_tcp_nodelay(true).is_ok();
    let keepalive =
        tcp_keepalive.is_none_or(|idle| socket.set_tcp_keepalive(&keepalive(idle)).is_ok());
    nodelay && keepalive
}

/// The listen backlog: connections the kernel completes before the broker accepts them (at
/// most `net.core.somaxconn`). A burst of connects beyond it has SYNs dropped, each retried
/// by the client a second later: with 256 connects in flight and tokio's default of 128 the
/// connect rate fell from 27k/s to 8k/s (BENCHMARKS.md, run M). Mosquitto listens with 100.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a TCP listener on `addr` (`SO_REUSEADDR`, as tokio's own bind) with
/// [`LISTEN_BACKLOG`].
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The most file descriptors [`reserve_fds`] makes room for: a table of 64k entries is
/// 512 KiB of kernel memory.
const MAX_RESERVED_FDS: u64 = 1 << 16;

/// Sizes the process's file descriptor table, once at start, for `max_connections`
/// connections (0: no limit), within the open-file limit (`RLIMIT_NOFILE`) and
/// [`MAX_RESERVED_FDS`]: the size it got (Linux's `FDSize`), or `None` where nothing was done.
///
/// Linux grows the table as descriptors are opened, doubling it; in a process of several
/// threads each growth waits for an RCU grace period (`synchronize_rcu`, several
/// milliseconds), inside the `accept4` that needed it, with the runtime's worker blocked.
/// A fresh broker taking its first 10,000 connections grew it 9 times, stalling every
/// connection in flight for 6 ms at a time (60 ms in a 0.36 s burst; BENCHMARKS.md, run M).
/// Grown once here, by a descriptor taken at the top of the range and closed at once, the
/// table never shrinks. A single-threaded broker (Mosquitto) grows it without the wait.
#[cfg(target_os = "linux")]
pub(crate) fn reserve_fds(max_connections: usize) -> Option<u64> {
    use rustix::process::{Resource, getrlimit};
    let limit = getrlimit(Resource::Nofile)
        .current
        .unwrap_or(MAX_RESERVED_FDS);
    let wanted = match max_connections {
        0 => MAX_RESERVED_FDS,
        // Room for the listeners, the store, the logs.
        n => (n as u64).saturating_add(64),
    };
    let top = limit.min(wanted).min(MAX_RESERVED_FDS).checked_sub(1)?;
    let top = rustix::fd::RawFd::try_from(top).ok()?;
    let stdin = std::io::stdin();
    // F_DUPFD: the lowest free descriptor at `top` or above (none that is open is replaced),
    // closed when dropped.
    match rustix::io::fcntl_dupfd_cloexec(std::os::fd::AsFd::as_fd(&stdin), top) {
        Ok(fd) => drop(fd),
        Err(error) => {
            tracing::debug!(%error, top, "cannot size the file descriptor table");
            return None;
        }
    }
    let size = fd_table_size();
    tracing::debug!(top, size, "file descriptor table sized");
    size
}

/// Elsewhere the table is left as it is.
#[cfg(not(target_os = "linux"))]
pub(crate) fn reserve_fds(_max_connections: usize) -> Option<u64> {
    None
}

/// The size of this process's file descriptor table (`FDSize` in /proc/self/status).
#[cfg(target_os = "linux")]
fn fd_table_size() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("FDSize:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Why a handshake did not finish.
enum Failed {
    Timeout,
    Closed,
    Error(String),
}

/// Runs the connection's TLS and WebSocket handshakes (within `connect_timeout`, like its
/// CONNECT), then serves it.
async fn handshake(
    accepted: Accepted,
    link: Link,
    outbox: Outbox,
    shared: Arc<Shared>,
    hermes: Handle,
) {
    let Accepted {
        stream,
        peer,
        kind,
        tls,
        path,
        places,
        inherited,
    } = accepted;
    let deadline = socket_options(&stream, &shared, inherited);
    let max_message = shared.config.max_packet_size.saturating_add(64 * 1024);
    let conn = link.conn();
    // Each step is bounded by the deadline, and ends at once when the broker closes.
    macro_rules! step {
        ($future:expr) => {{
            let result = tokio::select! {
                result = tokio::time::timeout_at(deadline, $future) => match result {
                    Ok(Ok(done)) => Ok(done),
                    Ok(Err(error)) => Err(Failed::Error(error.to_string())),
                    Err(_) => Err(Failed::Timeout),
                },
                () = link.closed() => Err(Failed::Closed),
            };
            match result {
                Ok(done) => done,
                Err(failed) => {
                    handshake_failed(&shared, conn, peer, kind, &failed);
                    drop(outbox);
                    shared.unregister(conn);
                    return;
                }
            }
        }};
    }
    match (kind, tls) {
        (ListenerKind::Tcp, _) => {
            // Served by `serve_tcp`, spawned instead of this; as it would be.
            let (read, write) = stream.into_split();
            conn::serve(read, write, deadline, link, outbox, shared, hermes, places).await;
        }
        (ListenerKind::Ws, _) => {
            let io = step!(ws::accept(stream, &path, max_message));
            let (read, write) = tokio::io::split(io);
            conn::serve(read, write, deadline, link, outbox, shared, hermes, places).await;
        }
        (ListenerKind::Tls, Some(acceptor)) => {
            let stream = step!(acceptor.accept(stream));
            let (read, write) = tokio::io::split(stream);
            conn::serve(read, write, deadline, link, outbox, shared, hermes, places).await;
        }
        (ListenerKind::Wss, Some(acceptor)) => {
            let stream = step!(acceptor.accept(stream));
            let io = step!(ws::accept(stream, &path, max_message));
            let (read, write) = tokio::io::split(io);
            conn::serve(read, write, deadline, link, outbox, shared, hermes, places).await;
        }
        (ListenerKind::Tls | ListenerKind::Wss, None) => {
            // Bound listeners of these kinds always have an acceptor.
            tracing::error!(conn, "a TLS listener without its certificate; closing");
            drop(outbox);
            shared.unregister(conn);
        }
    }
}

fn handshake_failed(
    shared: &Shared,
    conn: u64,
    peer: SocketAddr,
    kind: ListenerKind,
    failed: &Failed,
) {
    match failed {
        Failed::Closed => {
            tracing::debug!(conn, %peer, "broker closing: handshake abandoned");
        }
        Failed::Timeout => {
            Counters::add(&shared.counters.handshake_failures, 1);
            tracing::debug!(conn, %peer, %kind, "no handshake within connect_timeout; closed");
        }
        Failed::Error(error) => {
            Counters::add(&shared.counters.handshake_failures, 1);
            tracing::debug!(conn, %peer, %kind, %error, "handshake failed; closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An accepted socket, and whether it has `TCP_NODELAY`, TCP keepalive, and the keepalive's
    /// idle time and interval.
    async fn accepted_options(listener: &TcpListener) -> (bool, bool, Duration, Duration) {
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).await.unwrap();
        let (stream, _) = listener.accept().await.unwrap();
        let socket = socket2::SockRef::from(&stream);
        let options = (
            socket.tcp_nodelay().unwrap(),
            socket.keepalive().unwrap(),
            socket.tcp_keepalive_time().unwrap(),
            socket.tcp_keepalive_interval().unwrap(),
        );
        drop(client);
        options
    }

    /// Connections beyond tokio's default backlog (128) complete while none is accepted: a
    /// burst of connects does not have its SYNs dropped.
    #[tokio::test]
    async fn the_backlog_holds_a_burst_of_connects() {
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        if somaxconn.is_some_and(|max| max < 300) {
            return; // The kernel caps any backlog below the burst.
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..300 {
            // Bounded, not timed: a dropped SYN is retried after 1 s, then 3 s, and the
            // queue stays full while nothing is accepted.
            connecting.spawn(tokio::time::timeout(
                Duration::from_secs(5),
                TcpStream::connect(addr),
            ));
        }
        let mut clients = Vec::new();
        while let Some(done) = connecting.join_next().await {
            match done.unwrap() {
                Ok(Ok(stream)) => clients.push(stream),
                Ok(Err(error)) => panic!("connect failed: {error}"),
                Err(_) => panic!("a connect was not completed: its SYN dropped"),
            }
        }
        assert_eq!(clients.len(), 300);
        drop(listener);
    }

    /// The table is sized for the connections, within the open-file limit, and nothing is
    /// left open.
    #[cfg(target_os = "linux")]
    #[test]
    fn reserve_fds_grows_the_table_and_leaves_nothing_open() {
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let size = reserve_fds(3000).expect("sized");
        assert!(size >= 3064.min(limit), "FDSize {size}");
        assert_eq!(fd_table_size(), Some(size));
        // The descriptor taken at the top (the other tests open far fewer) is closed.
        let top = 3064.min(limit) - 1;
        assert!(
            std::fs::read_link(format!("/proc/self/fd/{top}")).is_err(),
            "descriptor {top} left open"
        );
        // Never more than the open-file limit allows: asking for more is no error.
        let size = reserve_fds(usize::MAX - 1).expect("sized");
        assert!(size >= MAX_RESERVED_FDS.min(limit), "FDSize {size}");
    }

    /// On Linux an accepted socket has the options set on its listener, so that accepting
    /// sets none: the check that `listener_options`'s `true` is so.
    #[tokio::test]
    async fn accepted_sockets_have_the_listeners_options() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        // Without them first: the defaults differ from what is set below.
        let (nodelay, keepalive, _, _) = accepted_options(&listener).await;
        assert!(!nodelay && !keepalive);
        let idle = Duration::from_secs(123);
        let inherited = listener_options(&listener, Some(idle));
        assert_eq!(inherited, cfg!(target_os = "linux"));
        let options = accepted_options(&listener).await;
        // Where they are not inherited, `socket_options` sets them on each socket.
        if inherited {
            assert_eq!(options, (true, true, idle, Duration::from_secs(10)));
        }
    }
}
