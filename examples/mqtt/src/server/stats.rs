//! What the broker counts, and where it shows it: the `$SYS/broker/...` topics (named as
//! Mosquitto names them), a Prometheus `/metrics` endpoint, and a once-a-minute summary of
//! the noisy events that are logged one by one only at debug level.
//!
//! Counters are relaxed atomics. The hot paths do not touch them per packet: a connection's
//! reader counts in locals and adds them once per read from the socket, its writer once per
//! batch written.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::storage::Storage;
use super::throttle;
use super::{Handle, Shared, route_direct};
use crate::message::Message;
use crate::packet::QoS;
use crate::topic::TopicName;

/// The broker's counters and gauges.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Connections accepted (sockets).
    pub(crate) connections: AtomicU64,
    /// Messages published into the broker (client PUBLISHes and wills).
    pub(crate) published: AtomicU64,
    pub(crate) queue_drops: AtomicU64,
    pub(crate) qos0_drops: AtomicU64,
    pub(crate) full_drops: AtomicU64,
    pub(crate) dead_letters: AtomicU64,
    pub(crate) expired_sessions: AtomicU64,
    /// Bytes and packets read from clients, PUBLISH packets among them.
    pub(crate) bytes_received: AtomicU64,
    pub(crate) packets_received: AtomicU64,
    pub(crate) publish_received: AtomicU64,
    /// Bytes and packets written to clients, PUBLISH packets among them.
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) packets_sent: AtomicU64,
    pub(crate) publish_sent: AtomicU64,
    /// Connections closed at once for `max_connections` (global or a listener's).
    pub(crate) refused_limit: AtomicU64,
    /// CONNECTs refused with 0x04 or 0x05.
    pub(crate) refused_auth: AtomicU64,
    /// PUBLISHes dropped by the ACL (or for a `$SYS` topic), and filters refused by it.
    pub(crate) denied_publish: AtomicU64,
    pub(crate) denied_subscribe: AtomicU64,
    /// Connections closed for a protocol error (garbage, no CONNECT first, malformed).
    pub(crate) protocol_errors: AtomicU64,
    /// Connections closed for a failed TLS or WebSocket handshake, or none in time.
    pub(crate) handshake_failures: AtomicU64,
    /// Times a connection's reader waited for `max_publish_rate`.
    pub(crate) publish_throttled: AtomicU64,
    /// Accept errors (out of file descriptors, say).
    pub(crate) accept_errors: AtomicU64,
    /// Clients connected now (CONNECT accepted), and the most at once so far.
    pub(crate) clients_connected: AtomicI64,
    pub(crate) clients_maximum: AtomicI64,
    /// Persistent sessions whose client is away.
    pub(crate) offline_sessions: AtomicI64,
    /// Retained messages held, and the sum of their payloads' sizes: what `max_retained` and
    /// `max_retained_bytes` bound.
    pub(crate) retained: AtomicI64,
    pub(crate) retained_bytes: AtomicI64,
    /// Retained messages not stored for those limits.
    pub(crate) retained_refused: AtomicU64,
    /// Queued messages (of sessions whose client is away or whose in-flight window is full)
    /// submitted to the store. Added with `Release`, after the writes were counted in the
    /// store's unsaved writes, and read with `Acquire`: whoever sees a message counted here
    /// sees its write unsaved or committed (the crash tests wait on both).
    pub(crate) queued_stored: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn gauge(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    /// A client's CONNECT was accepted.
    pub(crate) fn client_connected(&self) {
        let now = self.clients_connected.fetch_add(1, Ordering::Relaxed) + 1;
        self.clients_maximum.fetch_max(now, Ordering::Relaxed);
    }
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn gauge(gauge: &AtomicI64) -> u64 {
    u64::try_from(gauge.load(Ordering::Relaxed)).unwrap_or(0)
}

/// A connection's own counts, added to the shared counters now and then.
#[derive(Debug, Default)]
pub(crate) struct Local {
    pub(crate) bytes: u64,
    pub(crate) packets: u64,
    pub(crate) publishes: u64,
    /// Messages published into the broker (QoS 0 ones the reader routes itself).
    pub(crate) published: u64,
}

impl Local {
    /// Adds what was written to the shared counters.
    pub(crate) fn flush_sent(&mut self, c: &Counters) {
        self.flush(
            [&c.bytes_sent, &c.packets_sent, &c.publish_sent],
            &c.published,
        );
    }

    fn flush(&mut self, [bytes, packets, publishes]: [&AtomicU64; 3], published: &AtomicU64) {
        if self.bytes | self.packets | self.published == 0 {
            return;
        }
        for (counter, n) in [
            (bytes, self.bytes),
            (packets, self.packets),
            (publishes, self.publishes),
            (published, self.published),
        ] {
            if n != 0 {
                Counters::add(counter, n);
            }
        }
        *self = Local::default();
    }
}

/// The counters at one moment, and what is derived from the broker's state.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Snapshot {
    pub(crate) connections: u64,
    pub(crate) bytes_received: u64,
    pub(crate) bytes_sent: u64,
    pub(crate) packets_received: u64,
    pub(crate) packets_sent: u64,
    pub(crate) publish_received: u64,
    pub(crate) publish_sent: u64,
    pub(crate) publish_dropped: u64,
    pub(crate) clients_connected: u64,
    pub(crate) clients_maximum: u64,
    pub(crate) offline_sessions: u64,
    pub(crate) expired_sessions: u64,
    pub(crate) subscriptions: u64,
    pub(crate) retained: u64,
}

impl Snapshot {
    pub(crate) fn take(shared: &Shared) -> Snapshot {
        let c = &shared.counters;
        let subscriptions = shared
            .index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len();
        Snapshot {
            connections: get(&c.connections),
            bytes_received: get(&c.bytes_received),
            bytes_sent: get(&c.bytes_sent),
            packets_received: get(&c.packets_received),
            packets_sent: get(&c.packets_sent),
            publish_received: get(&c.publish_received),
            publish_sent: get(&c.publish_sent),
            publish_dropped: get(&c.queue_drops) + get(&c.qos0_drops) + get(&c.full_drops),
            clients_connected: gauge(&c.clients_connected),
            clients_maximum: gauge(&c.clients_maximum),
            offline_sessions: gauge(&c.offline_sessions),
            expired_sessions: get(&c.expired_sessions),
            subscriptions: u64::try_from(subscriptions).unwrap_or(u64::MAX),
            retained: gauge(&c.retained),
        }
    }
}

/// Moving averages per minute over 1, 5 and 15 minutes, as Mosquitto's `load` topics.
#[derive(Debug, Clone, Copy, Default)]
struct Load([f64; 3]);

impl Load {
    const WINDOWS: [(f64, &'static str); 3] = [(60.0, "1min"), (300.0, "5min"), (900.0, "15min")];

    /// Adds an interval of `secs` seconds in which `delta` happened.
    fn update(&mut self, delta: u64, secs: f64) {
        if secs <= 0.0 {
            return;
        }
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let per_minute = delta as f64 * 60.0 / secs;
        for (value, (window, _)) in self.0.iter_mut().zip(Self::WINDOWS) {
            let keep = (-secs / window).exp();
            *value = *value * keep + per_minute * (1.0 - keep);
        }
    }
}

/// The `load` topics' state.
#[derive(Debug, Default)]
struct Loads {
    messages_received: Load,
    messages_sent: Load,
    publish_received: Load,
    publish_sent: Load,
    bytes_received: Load,
    bytes_sent: Load,
    connections: Load,
}

impl Loads {
    fn update(&mut self, before: &Snapshot, now: &Snapshot, secs: f64) {
        let d = |a: u64, b: u64| b.saturating_sub(a);
        let b = before;
        self.messages_received
            .update(d(b.packets_received, now.packets_received), secs);
        self.messages_sent
            .update(d(b.packets_sent, now.packets_sent), secs);
        self.publish_received
            .update(d(b.publish_received, now.publish_received), secs);
        self.publish_sent
            .update(d(b.publish_sent, now.publish_sent), secs);
        self.bytes_received
            .update(d(b.bytes_received, now.bytes_received), secs);
        self.bytes_sent
            .update(d(b.bytes_sent, now.bytes_sent), secs);
        self.connections
            .update(d(b.connections, now.connections), secs);
    }
}

/// The `$SYS/broker/...` topics and their values.
fn sys_topics(s: &Snapshot, loads: &Loads, uptime: Duration) -> Vec<(String, String)> {
    let mut topics = vec![
        (
            "version".to_owned(),
            format!("hermes-mqtt version {}", env!("CARGO_PKG_VERSION")),
        ),
        ("uptime".to_owned(), format!("{} seconds", uptime.as_secs())),
        (
            "clients/connected".to_owned(),
            s.clients_connected.to_string(),
        ),
        (
            "clients/disconnected".to_owned(),
            s.offline_sessions.to_string(),
        ),
        (
            "clients/total".to_owned(),
            (s.clients_connected + s.offline_sessions).to_string(),
        ),
        ("clients/maximum".to_owned(), s.clients_maximum.to_string()),
        ("clients/expired".to_owned(), s.expired_sessions.to_string()),
        (
            "messages/received".to_owned(),
            s.packets_received.to_string(),
        ),
        ("messages/sent".to_owned(), s.packets_sent.to_string()),
        (
            "publish/messages/received".to_owned(),
            s.publish_received.to_string(),
        ),
        (
            "publish/messages/sent".to_owned(),
            s.publish_sent.to_string(),
        ),
        (
            "publish/messages/dropped".to_owned(),
            s.publish_dropped.to_string(),
        ),
        ("bytes/received".to_owned(), s.bytes_received.to_string()),
        ("bytes/sent".to_owned(), s.bytes_sent.to_string()),
        (
            "subscriptions/count".to_owned(),
            s.subscriptions.to_string(),
        ),
        ("retained messages/count".to_owned(), s.retained.to_string()),
    ];
    let loads = [
        ("messages/received", &loads.messages_received),
        ("messages/sent", &loads.messages_sent),
        ("publish/received", &loads.publish_received),
        ("publish/sent", &loads.publish_sent),
        ("bytes/received", &loads.bytes_received),
        ("bytes/sent", &loads.bytes_sent),
        ("connections", &loads.connections),
    ];
    for (name, load) in loads {
        for (value, (_, window)) in load.0.iter().zip(Load::WINDOWS) {
            topics.push((format!("load/{name}/{window}"), format!("{value:.2}")));
        }
    }
    topics
}

/// Publishes the `$SYS` topics every `interval` (QoS 0, not retained), until the broker
/// closes.
pub(crate) async fn sys_loop(shared: Arc<Shared>, hermes: Handle, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut loads = Loads::default();
    let mut last = Snapshot::take(&shared);
    let mut last_at = Instant::now();
    let mut messages = Vec::new();
    loop {
        ticker.tick().await;
        if shared.is_closing() {
            return;
        }
        let now = Snapshot::take(&shared);
        let secs = last_at.elapsed().as_secs_f64();
        loads.update(&last, &now, secs);
        last = now;
        last_at = Instant::now();
        for (topic, value) in sys_topics(&now, &loads, shared.started.elapsed()) {
            let Ok(topic) = TopicName::try_from(format!("$SYS/broker/{topic}")) else {
                continue;
            };
            messages.push(Message {
                topic,
                payload: Bytes::from(value),
                qos: QoS::AtMostOnce,
                retain: false,
            });
        }
        if !route_direct(&shared, &hermes, &mut messages).await {
            return;
        }
    }
}

/// Logs, once a minute at info, how many of the noisy events happened (each is logged at
/// debug only): connections closed for garbage, failed handshakes, connections over the
/// limits, accept errors.
pub(crate) async fn summary_loop(shared: Arc<Shared>, every: Duration) {
    let c = &shared.counters;
    let counters = [
        (
            &c.protocol_errors,
            (
                "connection closed for a protocol error",
                "connections closed for protocol errors",
            ),
            " (garbage, malformed packets, no CONNECT first)",
        ),
        (
            &c.handshake_failures,
            (
                "connection closed for a failed or late TLS or WebSocket handshake",
                "connections closed for a failed or late TLS or WebSocket handshake",
            ),
            "",
        ),
        (
            &c.refused_limit,
            (
                "connection closed at once over max_connections",
                "connections closed at once over max_connections",
            ),
            "",
        ),
        (
            &c.refused_auth,
            (
                "CONNECT refused for its credentials",
                "CONNECTs refused for their credentials",
            ),
            "",
        ),
        (
            &c.accept_errors,
            (
                "error accepting connections",
                "errors accepting connections",
            ),
            " (out of file descriptors?)",
        ),
    ];
    let mut seen = counters.map(|(counter, ..)| get(counter));
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if shared.is_closing() {
            return;
        }
        for ((counter, (one, many), why), seen) in counters.iter().zip(seen.iter_mut()) {
            let now = get(counter);
            if now > *seen {
                tracing::info!(
                    "{}{why} in the last {} s (details at debug level)",
                    crate::plural(now - *seen, one, many),
                    every.as_secs()
                );
                *seen = now;
            }
        }
    }
}

/// Logs, once per [`throttle::PERIOD`], how many of the throttled problems (store errors,
/// refused retained messages) happened without a line of their own.
pub(crate) async fn throttle_loop(shared: Arc<Shared>) {
    let mut ticker = tokio::time::interval(throttle::PERIOD);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        shared.log_throttled(Instant::now(), false);
    }
}

/// The Prometheus text exposition of the broker's metrics, and of its Hermes runtime's.
pub(crate) fn prometheus(shared: &Shared, hermes: &hermes::Stats) -> String {
    let s = Snapshot::take(shared);
    let c = &shared.counters;
    let mut out = String::with_capacity(4096);
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP hermes_mqtt_{name} {help}");
        let _ = writeln!(out, "# TYPE hermes_mqtt_{name} {kind}");
        let _ = writeln!(out, "hermes_mqtt_{name} {value}");
    };
    metric(
        "uptime_seconds",
        "gauge",
        "Seconds since the broker started.",
        shared.started.elapsed().as_secs(),
    );
    metric(
        "clients_connected",
        "gauge",
        "Clients connected now.",
        s.clients_connected,
    );
    metric(
        "clients_maximum",
        "gauge",
        "The most clients connected at once.",
        s.clients_maximum,
    );
    metric(
        "sessions_offline",
        "gauge",
        "Persistent sessions whose client is away.",
        s.offline_sessions,
    );
    metric(
        "subscriptions",
        "gauge",
        "Subscriptions held (filter and session pairs).",
        s.subscriptions,
    );
    metric(
        "retained_messages",
        "gauge",
        "Retained messages held.",
        s.retained,
    );
    metric(
        "retained_bytes",
        "gauge",
        "The sum of the retained messages' payload sizes, in bytes.",
        gauge(&c.retained_bytes),
    );
    metric(
        "connections_open",
        "gauge",
        "Connections open now (handshakes included).",
        u64::try_from(shared.conn_limit.active()).unwrap_or(u64::MAX),
    );
    metric(
        "connections_total",
        "counter",
        "Connections accepted.",
        s.connections,
    );
    let counters: [(&str, &str, &AtomicU64); 18] = [
        (
            "bytes_received_total",
            "Bytes read from clients.",
            &c.bytes_received,
        ),
        (
            "bytes_sent_total",
            "Bytes written to clients.",
            &c.bytes_sent,
        ),
        (
            "packets_received_total",
            "MQTT packets read from clients.",
            &c.packets_received,
        ),
        (
            "packets_sent_total",
            "MQTT packets written to clients.",
            &c.packets_sent,
        ),
        (
            "publish_received_total",
            "PUBLISH packets read from clients.",
            &c.publish_received,
        ),
        (
            "publish_sent_total",
            "PUBLISH packets written to clients.",
            &c.publish_sent,
        ),
        (
            "messages_published_total",
            "Messages published into the broker (client PUBLISHes and wills).",
            &c.published,
        ),
        (
            "queue_drops_total",
            "Queued QoS 1 and 2 messages dropped for a full session queue.",
            &c.queue_drops,
        ),
        (
            "qos0_drops_total",
            "QoS 0 messages dropped for a client that is behind.",
            &c.qos0_drops,
        ),
        (
            "mailbox_drops_total",
            "Messages dropped for a full session mailbox.",
            &c.full_drops,
        ),
        (
            "expired_sessions_total",
            "Persistent sessions discarded after session_expiry.",
            &c.expired_sessions,
        ),
        (
            "connections_refused_limit_total",
            "Connections closed at once over max_connections.",
            &c.refused_limit,
        ),
        (
            "connect_refused_auth_total",
            "CONNECTs refused with 0x04 or 0x05.",
            &c.refused_auth,
        ),
        (
            "acl_denied_publish_total",
            "PUBLISHes dropped by the ACL or for a $SYS topic.",
            &c.denied_publish,
        ),
        (
            "acl_denied_subscribe_total",
            "Topic filters refused by the ACL (SUBACK 0x80).",
            &c.denied_subscribe,
        ),
        (
            "protocol_errors_total",
            "Connections closed for a protocol error.",
            &c.protocol_errors,
        ),
        (
            "handshake_failures_total",
            "Connections closed for a failed TLS or WebSocket handshake.",
            &c.handshake_failures,
        ),
        (
            "retained_refused_total",
            "Retained messages not stored for max_retained or max_retained_bytes (still delivered).",
            &c.retained_refused,
        ),
    ];
    for (name, help, counter) in counters {
        metric(name, "counter", help, get(counter));
    }
    metric(
        "publish_throttled_total",
        "counter",
        "Times a connection waited for max_publish_rate.",
        get(&c.publish_throttled),
    );
    metric(
        "store_errors_total",
        "counter",
        "Writes to the store that failed (a full disk, say): what they held is not on disk.",
        shared.storage.as_ref().map_or(0, Storage::errors),
    );
    metric(
        "queued_messages_stored_total",
        "counter",
        "Queued QoS 1 and 2 messages (client away, or in-flight window full) submitted to the store.",
        c.queued_stored.load(Ordering::Acquire),
    );
    metric(
        "store_unsaved_writes",
        "gauge",
        "Writes to the store not yet committed: what a crash now would lose.",
        shared.storage.as_ref().map_or(0, Storage::unsaved),
    );
    let count = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    metric(
        "hermes_receivers_live",
        "gauge",
        "Hermes receivers (sessions, retained shards) in memory.",
        count(hermes.live),
    );
    metric(
        "hermes_messages_delivered_total",
        "counter",
        "Messages Hermes delivered to receivers.",
        hermes.messages_delivered,
    );
    metric(
        "hermes_activations_total",
        "counter",
        "Receivers Hermes activated (sessions loaded or created).",
        hermes.activations,
    );
    metric(
        "hermes_dead_letters_total",
        "counter",
        "Messages Hermes could not deliver.",
        hermes.dead_letters,
    );
    metric(
        "hermes_panics_total",
        "counter",
        "Receiver handlers that panicked.",
        hermes.panics,
    );
    out
}

/// Serves `GET /metrics` on `listener` until the broker closes: one request per connection,
/// answered and closed.
pub(crate) async fn metrics_loop(listener: TcpListener, shared: Arc<Shared>, hermes: Handle) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        if shared.is_closing() {
            return;
        }
        let shared = Arc::clone(&shared);
        let stats = hermes.stats();
        tokio::spawn(async move {
            let answered =
                tokio::time::timeout(METRICS_TIMEOUT, answer(stream, &shared, &stats)).await;
            if !matches!(answered, Ok(Ok(()))) {
                tracing::debug!(%peer, "metrics request failed or timed out");
            }
        });
    }
}

const METRICS_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST: usize = 8 * 1024;

async fn answer(
    mut stream: TcpStream,
    shared: &Shared,
    hermes: &hermes::Stats,
) -> std::io::Result<()> {
    let mut request = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        request.extend_from_slice(buf.get(..n).unwrap_or_default());
        if request.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "",
                false,
            )
            .await;
        }
    }
    let line = request.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => {
            let body = prometheus(shared, hermes);
            respond(&mut stream, "200 OK", &body, method == "HEAD").await
        }
        ("GET" | "HEAD", _) => {
            respond(
                &mut stream,
                "404 Not Found",
                "metrics are at /metrics\n",
                false,
            )
            .await
        }
        _ => respond(&mut stream, "405 Method Not Allowed", "use GET\n", false).await,
    }
}

async fn respond(
    stream: &mut TcpStream,
    status: &str,
    body: &str,
    head: bool,
) -> std::io::Result<()> {
    let content_type = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if !head {
        response.push_str(body);
    }
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Binds the metrics listener.
pub(crate) async fn bind_metrics(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
