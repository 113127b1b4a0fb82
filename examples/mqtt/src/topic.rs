//! Topic names and topic filters [MQTT-4.7], and how a filter matches a name.
//!
//! The decoder validates topics: a PUBLISH carries a [`TopicName`], a SUBSCRIBE and an
//! UNSUBSCRIBE carry [`TopicFilter`]s, and a packet with an invalid one is a decode error. In
//! MQTT 3.1.1 both are protocol violations on which the receiver closes the connection
//! [MQTT-4.8.0-1] (a wildcard in a PUBLISH topic [MQTT-3.3.2-2]; a malformed filter breaks
//! [MQTT-4.7.1-2], [MQTT-4.7.1-3] or [MQTT-4.7.3-1]: the SUBACK failure code 0x80 is for filters
//! that are well formed but refused). So the broker never sees an invalid topic, and the types
//! say so.

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;

use crate::string::{MqttString, StringError};

/// The topic level separator.
const SEPARATOR: u8 = b'/';
/// The multi-level wildcard.
const MULTI: &[u8] = b"#";
/// The single-level wildcard.
const SINGLE: &[u8] = b"+";

/// Why a string is not a topic name or not a topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// Not a valid MQTT string.
    #[error(transparent)]
    String(#[from] StringError),
    /// Zero length.
    #[error("topic is empty [MQTT-4.7.3-1]")]
    Empty,
    /// A topic name with '+' or '#'.
    #[error("topic name contains a wildcard '+' or '#' [MQTT-3.3.2-2], [MQTT-4.7.1-1]")]
    WildcardInName,
    /// A '#' that is not a whole level, or not the last level.
    #[error("'#' is not alone in the last level of the topic filter [MQTT-4.7.1-2]")]
    MisplacedMultiLevelWildcard,
    /// A '+' that is not a whole level.
    #[error("'+' does not fill a whole level of the topic filter [MQTT-4.7.1-3]")]
    MisplacedSingleLevelWildcard,
}

/// The levels of a topic: empty levels count, so "/a/" has three [4.7.1.1].
pub(crate) fn levels(topic: &[u8]) -> impl DoubleEndedIterator<Item = &[u8]> {
    topic.split(|&b| b == SEPARATOR)
}

/// The topic of a PUBLISH: at least one character [MQTT-4.7.3-1], no wildcards
/// [MQTT-3.3.2-2], and a valid MQTT string (no U+0000, at most 65535 bytes) [MQTT-4.7.3-2],
/// [MQTT-4.7.3-3].
///
/// ```
/// use hermes_mqtt::TopicName;
///
/// let topic: TopicName = "sport/tennis/player1".parse().unwrap();
/// assert_eq!(topic.levels().count(), 3);
/// assert!("sport/+".parse::<TopicName>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(MqttString);

impl TopicName {
    /// Checks an MQTT string as a topic name.
    pub fn new(s: MqttString) -> Result<Self, TopicError> {
        let bytes = s.as_bytes();
        if bytes.is_empty() {
            return Err(TopicError::Empty);
        }
        if bytes.iter().any(|&b| b == b'+' || b == b'#') {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(s))
    }

    /// Checks raw bytes as a topic name, without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, TopicError> {
        Self::new(MqttString::from_bytes(bytes)?)
    }

    /// Wraps a literal.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid topic name: meant for literals, not for data from the wire.
    #[must_use]
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(MqttString::from_static(s)) {
            Ok(topic) => topic,
            Err(e) => panic!("invalid topic name {s:?}: {e}"),
        }
    }

    /// Whether the topic starts with '$': wildcards at the start of a filter do not match it
    /// [MQTT-4.7.2-1].
    #[must_use]
    pub fn is_system(&self) -> bool {
        self.0.as_bytes().first() == Some(&b'$')
    }

    /// The levels between the '/' separators, empty ones included.
    pub fn levels(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        levels(self.0.as_bytes())
    }

    /// The topic as a string (see [`MqttString::as_str`] for its cost).
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The UTF-8 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The MQTT string.
    #[must_use]
    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }

    /// The MQTT string, by value.
    #[must_use]
    pub fn into_inner(self) -> MqttString {
        self.0
    }

    /// A copy in a buffer of its own, for keeping long (see [`MqttString::to_compact`]).
    #[must_use]
    pub fn to_compact(&self) -> Self {
        Self(self.0.to_compact())
    }
}

/// The topic filter of a subscription: at least one character [MQTT-4.7.3-1], '#' only alone
/// in the last level [MQTT-4.7.1-2], '+' only alone in a level [MQTT-4.7.1-3], and a valid
/// MQTT string.
///
/// ```
/// use hermes_mqtt::{TopicFilter, TopicName};
///
/// let filter: TopicFilter = "sport/+/player1/#".parse().unwrap();
/// assert!(filter.matches(&TopicName::from_static("sport/tennis/player1")));
/// assert!("sport/tennis#".parse::<TopicFilter>().is_err());
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(MqttString);

impl TopicFilter {
    /// Checks an MQTT string as a topic filter.
    pub fn new(s: MqttString) -> Result<Self, TopicError> {
        check_filter(s.as_bytes())?;
        Ok(Self(s))
    }

    /// Checks raw bytes as a topic filter, without copying them.
    pub fn from_bytes(bytes: Bytes) -> Result<Self, TopicError> {
        Self::new(MqttString::from_bytes(bytes)?)
    }

    /// Wraps a literal.
    ///
    /// # Panics
    ///
    /// If `s` is not a valid topic filter: meant for literals, not for data from the wire.
    #[must_use]
    pub fn from_static(s: &'static str) -> Self {
        match Self::new(MqttString::from_static(s)) {
            Ok(filter) => filter,
            Err(e) => panic!("invalid topic filter {s:?}: {e}"),
        }
    }

    /// Whether this filter matches `topic` (see [`matches()`]).
    #[must_use]
    pub fn matches(&self, topic: &TopicName) -> bool {
        matches(self, topic)
    }

    /// Whether the filter has a wildcard.
    #[must_use]
    pub fn has_wildcards(&self) -> bool {
        self.levels().any(|level| level == MULTI || level == SINGLE)
    }

    /// The levels between the '/' separators, empty ones included.
    pub fn levels(&self) -> impl DoubleEndedIterator<Item = &[u8]> {
        levels(self.0.as_bytes())
    }

    /// The filter as a string (see [`MqttString::as_str`] for its cost).
    #[must_use]
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The UTF-8 bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The MQTT string.
    #[must_use]
    pub fn as_mqtt_string(&self) -> &MqttString {
        &self.0
    }

    /// The MQTT string, by value.
    #[must_use]
    pub fn into_inner(self) -> MqttString {
        self.0
    }

    /// A copy in a buffer of its own, for keeping long (see [`MqttString::to_compact`]).
    #[must_use]
    pub fn to_compact(&self) -> Self {
        Self(self.0.to_compact())
    }
}

fn check_filter(bytes: &[u8]) -> Result<(), TopicError> {
    if bytes.is_empty() {
        return Err(TopicError::Empty);
    }
    let mut rest = levels(bytes).peekable();
    while let Some(level) = rest.next() {
        if level.contains(&b'#') && (level != MULTI || rest.peek().is_some()) {
            return Err(TopicError::MisplacedMultiLevelWildcard);
        }
        if level.contains(&b'+') && level != SINGLE {
            return Err(TopicError::MisplacedSingleLevelWildcard);
        }
    }
    Ok(())
}

/// Whether `filter` matches `topic`, as in [4.7]:
///
/// - levels compare byte for byte, with no normalization [MQTT-4.7.3-4];
/// - '+' matches exactly one level, which may be empty [4.7.1.3];
/// - '#' matches its parent level and any number of levels below: "sport/#" matches "sport"
///   [4.7.1.2];
/// - a filter that starts with a wildcard does not match a topic that starts with '$'
///   [MQTT-4.7.2-1].
///
/// ```
/// use hermes_mqtt::topic::{matches, TopicFilter, TopicName};
///
/// let f = TopicFilter::from_static;
/// let t = TopicName::from_static;
/// assert!(matches(&f("sport/#"), &t("sport")));
/// assert!(matches(&f("+/+"), &t("/finance")));
/// assert!(!matches(&f("+"), &t("/finance")));
/// assert!(!matches(&f("#"), &t("$SYS/uptime")));
/// ```
#[must_use]
pub fn matches(filter: &TopicFilter, topic: &TopicName) -> bool {
    let wildcard_first = matches!(filter.as_bytes().first(), Some(b'+' | b'#'));
    if topic.is_system() && wildcard_first {
        return false;
    }
    let mut filter_levels = filter.levels();
    let mut topic_levels = topic.levels();
    loop {
        match (filter_levels.next(), topic_levels.next()) {
            (Some(MULTI), _) => return true,
            (Some(SINGLE), Some(_)) => {}
            (Some(f), Some(t)) if f == t => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

macro_rules! string_impls {
    ($ty:ident, $what:literal) => {
        impl FromStr for $ty {
            type Err = TopicError;
            fn from_str(s: &str) -> Result<Self, TopicError> {
                Self::new(MqttString::try_from(s)?)
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = TopicError;
            fn try_from(s: &str) -> Result<Self, TopicError> {
                s.parse()
            }
        }

        impl TryFrom<String> for $ty {
            type Error = TopicError;
            fn try_from(s: String) -> Result<Self, TopicError> {
                Self::new(MqttString::try_from(s)?)
            }
        }

        impl TryFrom<MqttString> for $ty {
            type Error = TopicError;
            fn try_from(s: MqttString) -> Result<Self, TopicError> {
                Self::new(s)
            }
        }

        impl From<$ty> for MqttString {
            fn from(topic: $ty) -> MqttString {
                topic.0
            }
        }

        impl AsRef<[u8]> for $ty {
            fn as_ref(&self) -> &[u8] {
                self.0.as_bytes()
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($what, "({:?})"), self.0)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

string_impls!(TopicName, "TopicName");
string_impls!(TopicFilter, "TopicFilter");
