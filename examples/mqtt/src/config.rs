//! The broker's configuration, from a TOML file.
//!
//! Every key is optional; an empty file is [`Config::default()`]. An unknown key is an error
//! (a misspelt key would otherwise be silently ignored), and so is a value of the wrong type or
//! out of range; both name the key and its line, and a value of the wrong kind says, in
//! words, what the key takes and what the file gives ([`ConfigError::WrongKind`]: "expected
//! a whole number, 0 or more, but the file gives the string \"ten\""). The keys, their defaults and meanings are in
//! the README's "Configuration" table and on the fields of [`Config`].
//!
//! ```
//! use std::time::Duration;
//! use hermes_mqtt::config::{Config, SessionExpiry};
//!
//! let config = Config::from_toml(r#"
//!     max_inflight = 10
//!     session_expiry = "1d"
//!
//!     [[listeners]]
//!     address = "0.0.0.0:1883"
//!
//!     [[listeners]]
//!     address = "0.0.0.0:8080"
//!     kind = "ws"
//! "#).unwrap();
//! assert_eq!(config.listeners.len(), 2);
//! assert_eq!(config.session_expiry, SessionExpiry::After(Duration::from_secs(86_400)));
//! assert_eq!(config.max_queued, Config::default().max_queued);
//!
//! let err = Config::from_toml("max_inflight = 0").unwrap_err();
//! assert!(err.to_string().contains("`max_inflight`"), "{err}");
//! ```

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU16;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::codec::MAX_PACKET_SIZE;
use crate::session::Limits;

/// The broker's configuration. See the README's "Configuration" table.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where clients connect: a list of listeners, each a TCP, TLS, WebSocket or WebSocket
    /// over TLS one with its own settings ([`ListenerConfig`]). In TOML, `[[listeners]]`
    /// tables, or plain `"address:port"` strings for TCP listeners. Default: one TCP listener
    /// on `127.0.0.1:1883`, this machine only. At least one.
    #[serde(deserialize_with = "listeners")]
    pub listeners: Vec<ListenerConfig>,
    /// Where sessions and retained messages are stored. Default: `./hermes-data`.
    pub data_dir: PathBuf,
    /// Keep everything in memory, store nothing: sessions and retained messages do not survive
    /// a restart, and `data_dir` is not used. Default: false.
    pub memory: bool,
    /// The largest packet accepted from a client, in bytes, fixed header included; a client
    /// that sends a larger one is disconnected. Default: 1 MiB (1048576). At most 268435460
    /// (the largest remaining length, 268435455, and a 5-byte fixed header).
    #[serde(deserialize_with = "max_packet_size")]
    pub max_packet_size: usize,
    /// How many outgoing QoS 1 and 2 messages a session may have unacknowledged at once.
    /// Default: 100 (rumqttd's sample configuration; Mosquitto's is 20). Each one in flight
    /// is a shared message, not a copy. 1 to 65535.
    pub max_inflight: NonZeroU16,
    /// How many QoS 1 and 2 messages a session may queue, for the in-flight window or for its
    /// client to come back; when full, the oldest is dropped. Default: 1000. 0 queues nothing.
    pub max_queued: usize,
    /// How long a persistent session is kept while its client is away: a duration such as
    /// `"2h"`, `"30m"`, `"1d"` or `"1h30m"`, or `"never"` to keep it until its client cleans it.
    /// Default: `"2h"`.
    pub session_expiry: SessionExpiry,
    /// A client that sends nothing for its keep alive times this factor is disconnected.
    /// Default: 1.5, as the specification says [MQTT-3.1.2-24]. 1 to 100.
    #[serde(deserialize_with = "keep_alive_grace")]
    pub keep_alive_grace: f64,
    /// How long a new connection may take to finish its TLS and WebSocket handshakes and send
    /// its CONNECT before it is closed [MQTT-3.1.0-1]: a duration such as `"10s"`. Default: 10
    /// seconds. At least 1 ms.
    #[serde(deserialize_with = "connect_timeout")]
    pub connect_timeout: Duration,
    /// How many QoS 0 messages may wait to be written to one slow client; past that, new
    /// ones for it are dropped (and counted). QoS 1 and 2 messages are bounded by
    /// `max_inflight` and `max_queued` instead. Default: 1000. At least 1.
    #[serde(deserialize_with = "at_least_one")]
    pub max_qos0_backlog: usize,
    /// How many subscriptions one session may hold; a SUBSCRIBE for more is refused filter
    /// by filter with return code 0x80 [MQTT-3.9.3]. Default: 10000. At least 1.
    #[serde(deserialize_with = "at_least_one")]
    pub max_subscriptions: usize,
    /// How many retained messages the broker keeps, over all topics. When it has that many, a
    /// retained PUBLISH on a topic without one is delivered to subscribers and acknowledged,
    /// but not retained (counted, and logged at most once per 10 s); replacing or clearing a
    /// topic's retained message still works. Default: 1000000. 0 means no limit.
    pub max_retained: usize,
    /// How many bytes of payload the retained messages may hold in all. A retained PUBLISH
    /// that would take them past it is not retained, as with `max_retained`; if it was to
    /// replace a topic's retained message with a larger one, that topic's old message is
    /// removed (never kept as if it were current). Default: 1 GiB (1073741824). 0 means no
    /// limit.
    pub max_retained_bytes: usize,
    /// How many connections the broker holds at once, over all listeners (handshakes
    /// included); one more is accepted and closed at once, and counted. Each listener may have
    /// a lower limit of its own ([`ListenerConfig::max_connections`]). Default: 100000. 0 means
    /// no limit.
    pub max_connections: usize,
    /// How many PUBLISH packets per second one connection may send; past that (and its
    /// `publish_burst`), the broker stops reading the connection until it may send again
    /// (TCP flow control then slows the client down; nothing is dropped). Default: 0, no limit.
    pub max_publish_rate: u32,
    /// How many PUBLISH packets a connection may send at once above `max_publish_rate` (the
    /// token bucket's size). Default: 0, which means one second's worth (`max_publish_rate`).
    pub publish_burst: u32,
    /// TCP keepalive probes on idle connections, so that the connections of vanished clients
    /// that set no MQTT keep alive (0) are found and closed: the idle time before the first
    /// probe, such as `"1m"`, or `"off"`. Default: `"1m"` (a dead peer is found about 2.5
    /// minutes later).
    #[serde(deserialize_with = "tcp_keepalive")]
    pub tcp_keepalive: Option<Duration>,
    /// Whether a client may connect without a user name. Default: true, so that the broker
    /// works with no configuration at all; set it to false, with a `password_file`, for
    /// anything reachable from other machines. With `false`, a CONNECT without a user name is
    /// refused with CONNACK 0x05 (not authorized).
    pub allow_anonymous: bool,
    /// A password file (`user:argon2-hash` lines, managed with `hermes-mqtt passwd FILE
    /// USER`): a CONNECT with a user name must carry that user's password, or it is refused
    /// with CONNACK 0x04. Default: none; then a user name proves nothing, so it is accepted
    /// only where anonymous clients are (and refused with 0x05 otherwise).
    pub password_file: Option<PathBuf>,
    /// An access control list file ([`crate::acl`]): who may publish and subscribe to what.
    /// Default: none, everyone may do everything.
    pub acl_file: Option<PathBuf>,
    /// The argon2id memory cost, in KiB, of the hashes that `hermes-mqtt passwd` writes.
    /// Default: 19456 (19 MiB, OWASP's recommendation). At least 8.
    #[serde(deserialize_with = "argon2_memory")]
    pub argon2_memory_kib: u32,
    /// The argon2id time cost (passes) of the hashes that `hermes-mqtt passwd` writes.
    /// Default: 2. At least 1.
    #[serde(deserialize_with = "at_least_one_u32")]
    pub argon2_iterations: u32,
    /// The argon2id parallelism (lanes) of the hashes that `hermes-mqtt passwd` writes.
    /// Default: 1. 1 to 255.
    #[serde(deserialize_with = "argon2_parallelism")]
    pub argon2_parallelism: u32,
    /// How long, in microseconds, a runtime worker stays awake (polling its sockets without
    /// sleeping) after the last read or accept, so that a packet that comes soon after is
    /// handled without the CPU going to sleep and being woken again. Costs up to this much
    /// CPU after each burst of traffic, nothing while the broker is idle. Default: 50; 0:
    /// off (the worker sleeps as soon as it has nothing to do).
    pub idle_spin_us: u32,
    /// How often the broker publishes its `$SYS/broker/...` topics (as Mosquitto names them):
    /// a duration such as `"10s"`, or `"0s"` to publish none. Default: `"10s"`.
    #[serde(deserialize_with = "duration")]
    pub sys_interval: Duration,
    /// An address (IP and port) to serve Prometheus metrics on, at `GET /metrics` over plain
    /// HTTP, such as `"127.0.0.1:9883"`. Default: none, no metrics listener.
    #[serde(deserialize_with = "optional_address")]
    pub metrics_address: Option<SocketAddr>,
    /// The most detailed log messages written. Default: `"info"`.
    pub log_level: LogLevel,
}

impl Config {
    /// The default of [`Config::max_packet_size`]: 1 MiB.
    pub const DEFAULT_MAX_PACKET_SIZE: usize = 1 << 20;
    /// The default of [`Config::session_expiry`]: 2 hours.
    pub const DEFAULT_SESSION_EXPIRY: SessionExpiry =
        SessionExpiry::After(Duration::from_secs(2 * 60 * 60));
    /// The default of [`Config::keep_alive_grace`]: 1.5 [MQTT-3.1.2-24].
    pub const DEFAULT_KEEP_ALIVE_GRACE: f64 = 1.5;
    /// The default of [`Config::connect_timeout`]: 10 seconds.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default of [`Config::max_qos0_backlog`]: 1000 messages.
    pub const DEFAULT_MAX_QOS0_BACKLOG: usize = 1000;
    /// The default of [`Config::max_subscriptions`]: 10000 per session.
    pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 10_000;
    /// The default of [`Config::max_retained`]: 1000000 messages.
    pub const DEFAULT_MAX_RETAINED: usize = 1_000_000;
    /// The default of [`Config::max_retained_bytes`]: 1 GiB.
    pub const DEFAULT_MAX_RETAINED_BYTES: usize = 1 << 30;
    /// The default of [`Config::max_connections`]: 100000.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
    /// The default of [`Config::tcp_keepalive`]: the first probe after a minute idle.
    pub const DEFAULT_TCP_KEEPALIVE: Duration = Duration::from_secs(60);
    /// The default of [`Config::idle_spin_us`]: 50 µs.
    pub const DEFAULT_IDLE_SPIN_US: u32 = 50;
    /// The default of [`Config::sys_interval`]: 10 seconds, as Mosquitto's.
    pub const DEFAULT_SYS_INTERVAL: Duration = Duration::from_secs(10);

    /// The configuration in `toml`, [validated](Config::validate).
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(toml).map_err(|e| ConfigError::from_toml(toml, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what the keys say together (each key's own range is checked as it is read):
    /// the metrics listener is not at a listener's address (port 0, a free port each,
    /// aside). [`Broker::start`](crate::Broker::start) checks it too, before it binds
    /// anything, so a configuration built in code gets the same
    /// [`ConfigError::MetricsOnListener`].
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(address) = self.metrics_address
            && address.port() != 0
            && self.listeners.iter().any(|l| l.address == address)
        {
            return Err(ConfigError::MetricsOnListener { address });
        }
        Ok(())
    }

    /// The configuration in the TOML file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let toml = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&toml).map_err(|e| e.in_file(path))
    }

    /// The limits of each session.
    #[must_use]
    pub fn session_limits(&self) -> Limits {
        Limits {
            max_inflight: self.max_inflight,
            max_queued: self.max_queued,
        }
    }

    /// The argon2id parameters for new password hashes.
    #[must_use]
    pub fn hash_params(&self) -> crate::auth::HashParams {
        crate::auth::HashParams {
            memory_kib: self.argon2_memory_kib,
            iterations: self.argon2_iterations,
            parallelism: self.argon2_parallelism,
        }
    }

    /// The token bucket of `max_publish_rate` and `publish_burst`: PUBLISH packets per
    /// second, and how many at once; `None` without a rate.
    #[must_use]
    pub fn publish_rate(&self) -> Option<(u32, u32)> {
        if self.max_publish_rate == 0 {
            return None;
        }
        let burst = if self.publish_burst == 0 {
            self.max_publish_rate
        } else {
            self.publish_burst
        };
        Some((self.max_publish_rate, burst))
    }

    /// How long a connection whose CONNECT asked for a keep alive of `keep_alive` seconds may
    /// send nothing before the broker closes it as if the network had failed
    /// [MQTT-3.1.2-24]; `None` for 0, which turns keep alive off [3.1.2.10].
    #[must_use]
    pub fn keep_alive_timeout(&self, keep_alive: u16) -> Option<Duration> {
        if keep_alive == 0 {
            return None;
        }
        let secs = f64::from(keep_alive) * self.keep_alive_grace;
        Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listeners: vec![ListenerConfig::tcp(SocketAddr::from((
                [127, 0, 0, 1],
                1883,
            )))],
            data_dir: PathBuf::from("./hermes-data"),
            memory: false,
            max_packet_size: Self::DEFAULT_MAX_PACKET_SIZE,
            max_inflight: Limits::DEFAULT_MAX_INFLIGHT,
            max_queued: Limits::DEFAULT_MAX_QUEUED,
            session_expiry: Self::DEFAULT_SESSION_EXPIRY,
            keep_alive_grace: Self::DEFAULT_KEEP_ALIVE_GRACE,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            max_qos0_backlog: Self::DEFAULT_MAX_QOS0_BACKLOG,
            max_subscriptions: Self::DEFAULT_MAX_SUBSCRIPTIONS,
            max_retained: Self::DEFAULT_MAX_RETAINED,
            max_retained_bytes: Self::DEFAULT_MAX_RETAINED_BYTES,
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_publish_rate: 0,
            publish_burst: 0,
            tcp_keepalive: Some(Self::DEFAULT_TCP_KEEPALIVE),
            allow_anonymous: true,
            password_file: None,
            acl_file: None,
            argon2_memory_kib: crate::auth::HashParams::DEFAULT.memory_kib,
            argon2_iterations: crate::auth::HashParams::DEFAULT.iterations,
            argon2_parallelism: crate::auth::HashParams::DEFAULT.parallelism,
            idle_spin_us: Self::DEFAULT_IDLE_SPIN_US,
            sys_interval: Self::DEFAULT_SYS_INTERVAL,
            metrics_address: None,
            log_level: LogLevel::Info,
        }
    }
}

fn listeners<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ListenerConfig>, D::Error> {
    let listeners = Vec::<ListenerConfig>::deserialize(d)?;
    check_listeners(&listeners).map_err(D::Error::custom)?;
    Ok(listeners)
}

/// Checks a list of listeners as the `listeners` key (or `--listen` given several times) must
/// be: at least one, each at an address of its own (port 0, a free port each, aside).
pub fn check_listeners(listeners: &[ListenerConfig]) -> Result<(), String> {
    if listeners.is_empty() {
        return Err(
            "no listener: give at least one, such as [[listeners]] address = \"127.0.0.1:1883\""
                .to_owned(),
        );
    }
    for (i, listener) in listeners.iter().enumerate() {
        let port = listener.address.port();
        if port != 0 && listeners[..i].iter().any(|l| l.address == listener.address) {
            return Err(format!(
                "{} is given twice: each listener needs an address of its own",
                listener.address
            ));
        }
    }
    Ok(())
}

fn tcp_keepalive<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim() == "off" {
        return Ok(None);
    }
    let idle = parse_duration(&s).map_err(D::Error::custom)?;
    if idle < Duration::from_secs(1) {
        return Err(D::Error::custom(
            "give at least \"1s\" (the kernel counts whole seconds), or \"off\"",
        ));
    }
    Ok(Some(idle))
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)
}

fn optional_address<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parse_address(&String::deserialize(d)?)
        .map(Some)
        .map_err(D::Error::custom)
}

fn parse_address(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| {
        format!("{s:?} is not an IP address and port, such as \"127.0.0.1:1883\" or \"[::1]:1883\"")
    })
}

fn argon2_memory<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let kib = u32::deserialize(d)?;
    if kib < 8 {
        return Err(D::Error::custom(format_args!(
            "{kib} is out of range: argon2 needs at least 8 KiB (19456 is the recommended cost)"
        )));
    }
    Ok(kib)
}

fn argon2_parallelism<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let lanes = u32::deserialize(d)?;
    if !(1..=255).contains(&lanes) {
        return Err(D::Error::custom(format_args!(
            "{lanes} is out of range: give 1 to 255 lanes"
        )));
    }
    Ok(lanes)
}

fn at_least_one_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = u32::deserialize(d)?;
    if n == 0 {
        return Err(D::Error::custom("0 is out of range: give at least 1"));
    }
    Ok(n)
}

fn max_packet_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let size = usize::deserialize(d)?;
    if !(2..=MAX_PACKET_SIZE).contains(&size) {
        return Err(D::Error::custom(format_args!(
            "{size} is not a packet size: give 2 to {MAX_PACKET_SIZE} bytes"
        )));
    }
    Ok(size)
}

fn keep_alive_grace<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let factor = f64::deserialize(d)?;
    if !(1.0..=100.0).contains(&factor) {
        return Err(D::Error::custom(format_args!(
            "{factor} is out of range: give a factor from 1 to 100 (the specification's is 1.5)"
        )));
    }
    Ok(factor)
}

fn connect_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let timeout = parse_duration(&String::deserialize(d)?).map_err(D::Error::custom)?;
    if timeout.is_zero() {
        return Err(D::Error::custom(
            "0 would close every connection at once: give a duration such as \"10s\"",
        ));
    }
    Ok(timeout)
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    let n = usize::deserialize(d)?;
    if n == 0 {
        return Err(D::Error::custom("0 is out of range: give at least 1"));
    }
    Ok(n)
}

/// How long a persistent session is kept while its client is away [4.1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionExpiry {
    /// Discarded this long after its client went away. `0s` discards it at once, which makes
    /// every session end with its connection.
    After(Duration),
    /// Kept until a client connects with its client identifier and a clean session.
    Never,
}

impl SessionExpiry {
    /// The duration, or `None` for never.
    #[must_use]
    pub fn duration(self) -> Option<Duration> {
        match self {
            Self::After(d) => Some(d),
            Self::Never => None,
        }
    }
}

impl FromStr for SessionExpiry {
    type Err = DurationError;

    /// `"never"`, or a duration as [`parse_duration`] reads it.
    fn from_str(s: &str) -> Result<Self, DurationError> {
        if s.trim() == "never" {
            return Ok(Self::Never);
        }
        parse_duration(s).map(Self::After)
    }
}

impl fmt::Display for SessionExpiry {
    /// As [`FromStr`] reads it: `"never"`, or the duration in whole units, such as `"2h"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self::After(d) = self else {
            return f.write_str("never");
        };
        let ms = d.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let units = [
            ("d", 86_400_000),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1000),
        ];
        match units.iter().find(|(_, n)| ms % n == 0) {
            Some((unit, n)) => write!(f, "{}{unit}", ms / n),
            None => write!(f, "{ms}ms"),
        }
    }
}

impl<'de> Deserialize<'de> for SessionExpiry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// A duration that [`parse_duration`] cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{input:?} is not a duration: write numbers with units d, h, m, s or ms, such as \"2h\", \
     \"30s\" or \"1h30m\" (or \"never\" where that is allowed)"
)]
pub struct DurationError {
    /// What was given.
    pub input: String,
}

/// Reads a duration written as numbers with units, such as `"2h"`, `"30s"`, `"1h30m"` or
/// `"1d 12h"`: `d` (days), `h`, `m`, `s` and `ms`, each number a whole one.
///
/// ```
/// use std::time::Duration;
/// use hermes_mqtt::config::parse_duration;
///
/// assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
/// assert!(parse_duration("90").is_err()); // which unit?
/// ```
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = || DurationError {
        input: input.to_owned(),
    };
    let mut rest = input.trim();
    if rest.is_empty() {
        return Err(err());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(digits);
        let number: u64 = number.parse().map_err(|_| err())?;
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let ms_per_unit = match unit {
            "d" => 86_400_000,
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1000,
            "ms" => 1,
            _ => return Err(err()),
        };
        let ms = number.checked_mul(ms_per_unit).ok_or_else(err)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(err)?;
        rest = after.trim_start();
    }
    Ok(total)
}

/// How much the broker logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// And what happens in general: listeners, connections refused.
    Info,
    /// And each connection and session event.
    Debug,
    /// And each packet.
    Trace,
}

impl LogLevel {
    /// The level's name, as in the configuration (and as `tracing` and `RUST_LOG` spell it).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A line of a text file (the password file, the ACL file) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}line {line}: {message}", file_prefix(file.as_deref()))]
pub struct LineError {
    /// The file, when read from one.
    pub file: Option<PathBuf>,
    /// The line, from 1.
    pub line: usize,
    /// What is wrong.
    pub message: String,
}

impl LineError {
    /// Line `line` is wrong for `message`.
    #[must_use]
    pub fn new(line: usize, message: String) -> Self {
        Self {
            file: None,
            line,
            message,
        }
    }

    /// The same error, in `path`.
    #[must_use]
    pub fn in_file(self, path: &Path) -> Self {
        Self {
            file: Some(path.to_owned()),
            ..self
        }
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error(
        "cannot read the configuration file {}: {source} (check the path and its permissions)",
        path.display()
    )]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key that the configuration does not have, or a bad value for one.
    #[error(
        "{}line {line}, `{key}`: {message} (the keys and their values are in the \
         \"Configuration\" table of the hermes-mqtt README)",
        file_prefix(file.as_deref())
    )]
    Key {
        /// The key.
        key: String,
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        message: String,
        /// The file, when loaded from one.
        file: Option<PathBuf>,
    },
    /// A value of the wrong kind for its key: a string where a number goes, a number out of
    /// the key's range, and so on.
    #[error(
        "{}line {line}, `{key}`: expected {expected}, but the file gives {given} (the keys and \
         their values are in the \"Configuration\" table of the hermes-mqtt README)",
        file_prefix(file.as_deref())
    )]
    WrongKind {
        /// The key.
        key: String,
        /// The line, from 1.
        line: usize,
        /// What the key takes, in words: "a whole number from 1 to 65535", "true or false".
        expected: String,
        /// What the file gives, in words: `the string "ten"`, "the number -1".
        given: String,
        /// The file, when loaded from one.
        file: Option<PathBuf>,
    },
    /// The metrics listener (`metrics_address`) at the address of a listener: both cannot
    /// listen there.
    #[error(
        "the metrics address {address} is also a listener's: give metrics_address \
         (--metrics-address) a port of its own"
    )]
    MetricsOnListener {
        /// The address.
        address: SocketAddr,
    },
    /// Not valid TOML.
    #[error(
        "{}line {line}: not valid TOML: {message} (fix the syntax there)",
        file_prefix(file.as_deref())
    )]
    Syntax {
        /// The line, from 1.
        line: usize,
        /// What is wrong.
        message: String,
        /// The file, when loaded from one.
        file: Option<PathBuf>,
    },
}

fn file_prefix(file: Option<&Path>) -> String {
    file.map(|f| format!("{}: ", f.display()))
        .unwrap_or_default()
}

impl ConfigError {
    /// The error of `toml` for `e`: the key whose value (or name) is at the error's place.
    fn from_toml(toml: &str, e: &toml::de::Error) -> Self {
        let start = e.span().map_or(0, |span| span.start);
        let before = toml.get(..start).unwrap_or(toml);
        let line = before.matches('\n').count() + 1;
        let message = e.message().trim().to_owned();
        // The line of the error, whole, and those before it, last first: the key is on the
        // nearest that starts with `key =` (a value can span lines, as an array does).
        let line_end = toml
            .get(start..)
            .and_then(|s| s.find('\n'))
            .map_or(toml.len(), |i| start + i);
        let lines = toml.get(..line_end).unwrap_or(toml).lines().rev();
        match lines.take(line).find_map(key_of_line) {
            Some(key) if let Some((expected, given)) = wrong_kind(&message) => Self::WrongKind {
                key: key.to_owned(),
                line,
                expected,
                given,
                file: None,
            },
            Some(key) => Self::Key {
                message: if key == "users" && message.contains("unknown field") {
                    USERS_REMOVED.to_owned()
                } else {
                    message
                },
                key: key.to_owned(),
                line,
                file: None,
            },
            None => Self::Syntax {
                line,
                message,
                file: None,
            },
        }
    }

    fn in_file(mut self, path: &Path) -> Self {
        if let Self::Key { file, .. } | Self::WrongKind { file, .. } | Self::Syntax { file, .. } =
            &mut self
        {
            *file = Some(path.to_owned());
        }
        self
    }
}

/// Serde's "invalid type: string \"ten\", expected usize" (or "invalid value: ...") in the
/// words of someone editing the file: what the key takes and what the file gives, such as
/// ("a whole number, 0 or more", `the string "ten"`). `None` for other messages.
fn wrong_kind(message: &str) -> Option<(String, String)> {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))?;
    let (given, expected) = rest.rsplit_once(", expected ")?;
    let expected = match expected.trim() {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number, 0 or more".to_owned(),
        "a nonzero u16" => "a whole number from 1 to 65535".to_owned(),
        "isize" | "i64" | "i32" | "i16" | "i8" => "a whole number".to_owned(),
        "f64" | "f32" => "a number".to_owned(),
        "a boolean" => "true or false".to_owned(),
        "a string" => "a string, in quotes".to_owned(),
        "a sequence" => "a list, in brackets: [...]".to_owned(),
        "path string" => "a path, in quotes".to_owned(),
        other => other.to_owned(),
    };
    // Serde's `Unexpected`: `string "ten"`, "integer `-1`", "floating point `1.5`",
    // "boolean `true`", "sequence", "map", ...
    let quoted = |s: &str| s.trim().trim_matches('`').to_owned();
    let given = if let Some(s) = given.strip_prefix("string ") {
        format!("the string {s}")
    } else if let Some(n) = given
        .strip_prefix("integer ")
        .or_else(|| given.strip_prefix("floating point "))
    {
        format!("the number {}", quoted(n))
    } else if let Some(b) = given.strip_prefix("boolean ") {
        quoted(b)
    } else {
        match given {
            "sequence" => "a list".to_owned(),
            "map" => "a table".to_owned(),
            other => other.to_owned(),
        }
    };
    Some((expected, given))
}

/// What replaced the plain-text `users` table.
const USERS_REMOVED: &str = "`users` (plain-text passwords in the configuration) is no longer \
     supported: put each user in a password file with `hermes-mqtt passwd FILE USER` (it asks \
     for the password and stores a salted argon2 hash), set `password_file = \"FILE\"`, and \
     remove the [users] table";

/// The key that `line` assigns, if it is a `key = value` line, or the table that a `[key]`
/// or `[[key]]` header starts.
fn key_of_line(line: &str) -> Option<&str> {
    let header = line.trim().trim_start_matches('[').trim_end_matches(']');
    if line.trim().starts_with('[') {
        let header = header.trim();
        let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
        return (!header.is_empty() && header.chars().all(bare)).then_some(header);
    }
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    (!key.is_empty() && key.chars().all(bare)).then_some(key)
}

/// How clients reach a listener. More transports may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum ListenerKind {
    /// MQTT over plain TCP (port 1883 by convention).
    Tcp,
    /// MQTT over TLS (port 8883 by convention); needs `cert` and `key`.
    Tls,
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`), as browser clients such as
    /// MQTT.js connect: `ws://host:8080/mqtt`.
    Ws,
    /// MQTT over WebSocket over TLS: `wss://host:8081/mqtt`; needs `cert` and `key`.
    Wss,
}

impl ListenerKind {
    /// The kind's name, as in the configuration.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::Ws => "ws",
            Self::Wss => "wss",
        }
    }

    /// Whether the kind needs a certificate and key.
    #[must_use]
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::Wss)
    }

    /// Whether the kind speaks WebSocket.
    #[must_use]
    pub fn is_websocket(self) -> bool {
        matches!(self, Self::Ws | Self::Wss)
    }
}

impl fmt::Display for ListenerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One listener: an address, how clients speak to it, and its own limits. In TOML, a
/// `[[listeners]]` table:
///
/// ```toml
/// [[listeners]]
/// address = "0.0.0.0:8883"     # required
/// kind = "tls"                 # "tcp" (the default), "tls", "ws" or "wss"
/// cert = "/etc/hermes-mqtt/fullchain.pem"  # tls and wss: the PEM certificate chain
/// key = "/etc/hermes-mqtt/key.pem"         # tls and wss: the PEM private key
/// path = "/mqtt"               # ws and wss: the HTTP path (the default)
/// max_connections = 1000       # this listener's own limit (default 0: only the global one)
/// ```
///
/// A plain string, `"0.0.0.0:1883"`, is a TCP listener.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// The IP address and port to listen on; port 0 picks a free one.
    pub address: SocketAddr,
    /// How clients speak to it.
    pub kind: ListenerKind,
    /// For `tls` and `wss`: the PEM file of the certificate chain, the server's certificate
    /// first. Relative paths are from the broker's working directory.
    pub cert: Option<PathBuf>,
    /// For `tls` and `wss`: the PEM file of the private key (PKCS #8, PKCS #1 or SEC1).
    pub key: Option<PathBuf>,
    /// For `ws` and `wss`: the HTTP path clients connect to; other paths are answered 404.
    /// Default: `/mqtt`.
    pub path: String,
    /// How many connections this listener holds at once; one more is accepted and closed at
    /// once. Default: 0, only the broker's `max_connections`.
    pub max_connections: usize,
}

impl ListenerConfig {
    /// The default WebSocket path.
    pub const DEFAULT_PATH: &'static str = "/mqtt";

    /// A plain TCP listener on `address`.
    #[must_use]
    pub fn tcp(address: SocketAddr) -> Self {
        Self {
            address,
            kind: ListenerKind::Tcp,
            cert: None,
            key: None,
            path: Self::DEFAULT_PATH.to_owned(),
            max_connections: 0,
        }
    }

    /// A TLS listener on `address` with the PEM certificate chain `cert` and key `key`.
    #[must_use]
    pub fn tls(address: SocketAddr, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            kind: ListenerKind::Tls,
            cert: Some(cert.into()),
            key: Some(key.into()),
            ..Self::tcp(address)
        }
    }

    /// A WebSocket listener on `address`, at path `/mqtt`.
    #[must_use]
    pub fn ws(address: SocketAddr) -> Self {
        Self {
            kind: ListenerKind::Ws,
            ..Self::tcp(address)
        }
    }

    /// A WebSocket over TLS listener on `address`, at path `/mqtt`.
    #[must_use]
    pub fn wss(address: SocketAddr, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        Self {
            kind: ListenerKind::Wss,
            ..Self::tls(address, cert, key)
        }
    }

    /// This listener with its own connection limit.
    #[must_use]
    pub fn with_max_connections(mut self, max_connections: usize) -> Self {
        self.max_connections = max_connections;
        self
    }

    /// This listener with another WebSocket path.
    #[must_use]
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = path.into();
        self
    }

    /// Checks that the fields fit together: a certificate and key for the TLS kinds only, a
    /// path starting with `/` for the WebSocket kinds.
    pub fn validate(&self) -> Result<(), String> {
        let kind = self.kind;
        if kind.is_tls() {
            for (name, value) in [("cert", &self.cert), ("key", &self.key)] {
                if value.is_none() {
                    return Err(format!(
                        "a {kind:?} listener needs `{name}`, the path of a PEM file",
                        kind = kind.as_str()
                    ));
                }
            }
        } else if self.cert.is_some() || self.key.is_some() {
            return Err(format!(
                "`cert` and `key` are for \"tls\" and \"wss\" listeners, not {:?}: set `kind`, \
                 or remove them",
                kind.as_str()
            ));
        }
        if !self.path.starts_with('/') {
            return Err(format!(
                "`path` {:?} must start with '/', such as \"/mqtt\"",
                self.path
            ));
        }
        Ok(())
    }

    /// The URL scheme of the kind and this address, for logs: `mqtt://`, `mqtts://`, `ws://`
    /// or `wss://`.
    #[must_use]
    pub fn url(&self, address: SocketAddr) -> String {
        match self.kind {
            ListenerKind::Tcp => format!("mqtt://{address}"),
            ListenerKind::Tls => format!("mqtts://{address}"),
            ListenerKind::Ws => format!("ws://{address}{}", self.path),
            ListenerKind::Wss => format!("wss://{address}{}", self.path),
        }
    }
}

impl FromStr for ListenerConfig {
    type Err = String;

    /// An address, `"127.0.0.1:1883"`: a TCP listener.
    fn from_str(s: &str) -> Result<Self, String> {
        parse_address(s).map(Self::tcp)
    }
}

impl From<SocketAddr> for ListenerConfig {
    fn from(address: SocketAddr) -> Self {
        Self::tcp(address)
    }
}

/// A `[[listeners]]` table as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenerTable {
    address: String,
    #[serde(default)]
    kind: Option<ListenerKind>,
    #[serde(default)]
    cert: Option<PathBuf>,
    #[serde(default)]
    key: Option<PathBuf>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    max_connections: usize,
}

impl<'de> Deserialize<'de> for ListenerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = ListenerConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a listener table (address, kind, ...) or an address string")
            }

            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<ListenerConfig, E> {
                s.parse().map_err(E::custom)
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<ListenerConfig, A::Error> {
                let table =
                    ListenerTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                let address = parse_address(&table.address).map_err(A::Error::custom)?;
                let path_given = table.path.is_some();
                let listener = ListenerConfig {
                    address,
                    kind: table.kind.unwrap_or(ListenerKind::Tcp),
                    cert: table.cert,
                    key: table.key,
                    path: table
                        .path
                        .unwrap_or_else(|| ListenerConfig::DEFAULT_PATH.to_owned()),
                    max_connections: table.max_connections,
                };
                if path_given && !listener.kind.is_websocket() {
                    return Err(A::Error::custom(
                        "`path` is for \"ws\" and \"wss\" listeners: set `kind`, or remove it",
                    ));
                }
                listener.validate().map_err(A::Error::custom)?;
                Ok(listener)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests;
