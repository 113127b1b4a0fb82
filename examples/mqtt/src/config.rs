//! The broker's configuration, from a TOML file.
//!
//! Every key is optional; an empty file is [`Config::default()`]. An unknown key is an error
//! (a misspelt key would otherwise be silently ignored), and so is a value of the wrong type or
//! out of range; both name the key and its line. The keys, their defaults and meanings are in
//! the README's "Configuration" table and on the fields of [`Config`].
//!
//! ```
//! use std::time::Duration;
//! use hermes_mqtt::config::{Config, SessionExpiry};
//!
//! let config = Config::from_toml(r#"
//!     listeners = ["0.0.0.0:1883", "[::]:1883"]
//!     max_inflight = 10
//!     session_expiry = "1d"
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
    /// The addresses to accept MQTT connections on (TCP). Default: `["127.0.0.1:1883"]`, this
    /// machine only; `"0.0.0.0:1883"` takes connections from anywhere. At least one.
    #[serde(deserialize_with = "listeners")]
    pub listeners: Vec<SocketAddr>,
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
    /// Default: 20. 1 to 65535.
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
    /// How long a new connection may take to send its CONNECT before it is closed
    /// [MQTT-3.1.0-1]: a duration such as `"10s"`. Default: 10 seconds. At least 1 ms.
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
    /// Whether a client may connect without a user name. Default: true. With `false`, a
    /// CONNECT without one is refused with CONNACK 0x05 (not authorized).
    pub allow_anonymous: bool,
    /// User names and their passwords, as a TOML table `[users]`: a CONNECT with a user name
    /// must carry its password, or it is refused with CONNACK 0x04 (bad user name or
    /// password). Default: none, and then every user name is accepted. The passwords are in
    /// plain text: keep the file readable only by the broker's user.
    pub users: std::collections::BTreeMap<String, String>,
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

    /// The configuration in `toml`.
    pub fn from_toml(toml: &str) -> Result<Self, ConfigError> {
        toml::from_str(toml).map_err(|e| ConfigError::from_toml(toml, &e))
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

    /// Whether a CONNECT with `login` may connect: `Err` with the CONNACK return code that
    /// refuses it (0x05 without a user name when `allow_anonymous` is false, 0x04 for a user
    /// name that `users` does not have with this password).
    pub fn authenticate(
        &self,
        login: Option<&crate::packet::Login>,
    ) -> Result<(), crate::packet::ConnectReturnCode> {
        use crate::packet::ConnectReturnCode;
        let Some(login) = login else {
            return if self.allow_anonymous {
                Ok(())
            } else {
                Err(ConnectReturnCode::NotAuthorized)
            };
        };
        if self.users.is_empty() {
            return Ok(());
        }
        let known = self.users.get(login.username.as_str());
        match (known, &login.password) {
            (Some(expected), Some(given)) if expected.as_bytes() == &given[..] => Ok(()),
            _ => Err(ConnectReturnCode::BadUserNameOrPassword),
        }
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
            listeners: vec![SocketAddr::from(([127, 0, 0, 1], 1883))],
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
            allow_anonymous: true,
            users: std::collections::BTreeMap::new(),
            log_level: LogLevel::Info,
        }
    }
}

fn listeners<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let listeners = Vec::<String>::deserialize(d)?;
    if listeners.is_empty() {
        return Err(D::Error::custom(
            "no address: give at least one, such as \"127.0.0.1:1883\"",
        ));
    }
    let address = |s: &String| {
        s.parse().map_err(|_| {
            D::Error::custom(format_args!(
                "{s:?} is not an IP address and port, such as \"127.0.0.1:1883\" or \"[::1]:1883\""
            ))
        })
    };
    listeners.iter().map(address).collect()
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
            Some(key) => Self::Key {
                key: key.to_owned(),
                line,
                message,
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
        if let Self::Key { file, .. } | Self::Syntax { file, .. } = &mut self {
            *file = Some(path.to_owned());
        }
        self
    }
}

/// The key that `line` assigns, if it is a `key = value` line.
fn key_of_line(line: &str) -> Option<&str> {
    let (key, _) = line.split_once('=')?;
    let key = key.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    (!key.is_empty() && key.chars().all(bare)).then_some(key)
}

#[cfg(test)]
mod tests;
