//! The fourteen control packets of MQTT 3.1.1 [2.2.1], as types that cannot hold what the
//! protocol forbids where that is cheap to say: packet identifiers are non-zero
//! [MQTT-2.3.1-1], a QoS 0 PUBLISH has no packet identifier and no DUP [MQTT-2.3.1-5],
//! [MQTT-3.3.1-2], a password needs a user name [MQTT-3.1.2-22], topics are validated.

use std::fmt;
use std::num::NonZeroU16;

use bytes::Bytes;

use crate::string::MqttString;
use crate::topic::{TopicFilter, TopicName};

/// A packet identifier: never 0 [MQTT-2.3.1-1].
pub type PacketId = NonZeroU16;

/// A quality of service level [4.3]. Ordered: the higher, the stronger the guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// QoS 0: at most once delivery.
    #[default]
    AtMostOnce = 0,
    /// QoS 1: at least once delivery.
    AtLeastOnce = 1,
    /// QoS 2: exactly once delivery.
    ExactlyOnce = 2,
}

impl QoS {
    /// The QoS with number `n`; `None` for 3 and above.
    #[must_use]
    pub const fn from_u8(n: u8) -> Option<Self> {
        match n {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// The type of a control packet: the high four bits of its first byte [2.2.1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)] // The names are the specification's.
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
}

impl PacketType {
    /// The type numbered `n`; `None` for the reserved 0 and 15 and for anything over 15.
    #[must_use]
    pub const fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            _ => return None,
        })
    }

    /// The specification's name, e.g. "PUBREL".
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A control packet of MQTT 3.1.1. Not `#[non_exhaustive]`: 3.1.1 has exactly these
/// fourteen, and a broker's `match` should say what it does with each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Client request to connect [3.1]. Boxed: it is by far the largest packet and comes once
    /// per connection, and every packet moved through the broker's queues is the size of the
    /// largest variant.
    Connect(Box<Connect>),
    /// Connect acknowledgment [3.2].
    ConnAck(ConnAck),
    /// Publish message [3.3].
    Publish(Publish),
    /// Publish acknowledgment, QoS 1 [3.4].
    PubAck(PacketId),
    /// Publish received, QoS 2 part 1 [3.5].
    PubRec(PacketId),
    /// Publish release, QoS 2 part 2 [3.6].
    PubRel(PacketId),
    /// Publish complete, QoS 2 part 3 [3.7].
    PubComp(PacketId),
    /// Subscribe to topics [3.8].
    Subscribe(Subscribe),
    /// Subscribe acknowledgment [3.9].
    SubAck(SubAck),
    /// Unsubscribe from topics [3.10].
    Unsubscribe(Unsubscribe),
    /// Unsubscribe acknowledgment [3.11].
    UnsubAck(PacketId),
    /// Ping request [3.12].
    PingReq,
    /// Ping response [3.13].
    PingResp,
    /// Client is disconnecting [3.14].
    Disconnect,
}

impl Packet {
    /// The packet's type.
    #[must_use]
    pub fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect => PacketType::Disconnect,
        }
    }
}

/// A protocol version whose CONNECT this crate decodes: same layout, different name and level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProtocolVersion {
    /// MQTT 3.1: protocol name "MQIsdp", level 3.
    V31,
    /// MQTT 3.1.1: protocol name "MQTT", level 4 [MQTT-3.1.2-1], [3.1.2.2].
    V311,
}

impl ProtocolVersion {
    /// The protocol name a CONNECT of this version carries.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::V31 => "MQIsdp",
            Self::V311 => "MQTT",
        }
    }

    /// The protocol level a CONNECT of this version carries.
    #[must_use]
    pub const fn level(self) -> u8 {
        match self {
            Self::V31 => 3,
            Self::V311 => 4,
        }
    }

    /// The version that a CONNECT's protocol name and level ask for, if it is one of these.
    #[must_use]
    pub fn from_name_and_level(name: &[u8], level: u8) -> Option<Self> {
        [Self::V311, Self::V31]
            .into_iter()
            .find(|v| v.name().as_bytes() == name && v.level() == level)
    }
}

/// CONNECT [3.1].
///
/// The decoder returns the protocol name and level as the client sent them (for levels 3 and 4,
/// whose CONNECT it knows; see
/// [`DecodeError::UnsupportedProtocolLevel`](crate::codec::DecodeError::UnsupportedProtocolLevel)
/// for others). The broker decides: [`Connect::protocol_version`] is `None` for a version it
/// does not speak, and then it answers CONNACK
/// [`UnacceptableProtocolVersion`](ConnectReturnCode::UnacceptableProtocolVersion) if the name
/// is an MQTT one [MQTT-3.1.2-2], and otherwise closes the connection [MQTT-3.1.2-1].
///
/// ```
/// use hermes_mqtt::{Connect, MqttString, ProtocolVersion};
///
/// let connect = Connect::new(MqttString::from_static("client-1"));
/// assert_eq!(connect.protocol_version(), Some(ProtocolVersion::V311));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The protocol name: "MQTT" for 3.1.1, "MQIsdp" for 3.1.
    pub protocol_name: MqttString,
    /// The protocol level: 4 for 3.1.1, 3 for 3.1.
    pub protocol_level: u8,
    /// Start a new session, and drop it at disconnect [3.1.2.4].
    pub clean_session: bool,
    /// The keep alive interval in seconds; 0 turns it off [3.1.2.10].
    pub keep_alive: u16,
    /// The client identifier; may be empty [MQTT-3.1.3-6].
    pub client_id: MqttString,
    /// The will message, if the will flag is set.
    pub will: Option<Will>,
    /// The user name and password, if the user name flag is set.
    pub login: Option<Login>,
}

impl Connect {
    /// A 3.1.1 CONNECT with a clean session, a keep alive of 60 s, no will and no login.
    #[must_use]
    pub fn new(client_id: MqttString) -> Self {
        Self {
            protocol_name: MqttString::from_static(ProtocolVersion::V311.name()),
            protocol_level: ProtocolVersion::V311.level(),
            clean_session: true,
            keep_alive: 60,
            client_id,
            will: None,
            login: None,
        }
    }

    /// The version asked for, or `None` for a protocol name and level this crate does not speak.
    #[must_use]
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        ProtocolVersion::from_name_and_level(self.protocol_name.as_bytes(), self.protocol_level)
    }
}

/// The will message of a CONNECT [3.1.2.5]: published when the connection ends without a
/// DISCONNECT. Its topic is a topic name, validated like a PUBLISH's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// The topic to publish on.
    pub topic: TopicName,
    /// The message; at most 65535 bytes (a two-byte length prefix).
    pub payload: Bytes,
    /// The QoS to publish at.
    pub qos: QoS,
    /// Whether to publish it retained.
    pub retain: bool,
}

/// The user name and optional password of a CONNECT [3.1.3.4], [3.1.3.5].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name.
    pub username: MqttString,
    /// The password: binary data of at most 65535 bytes.
    pub password: Option<Bytes>,
}

/// CONNACK [3.2].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server had a session for the client; must be false when refusing
    /// [MQTT-3.2.2-4] and with a clean session [MQTT-3.2.2-1].
    pub session_present: bool,
    /// The answer to the CONNECT.
    pub code: ConnectReturnCode,
}

/// The return code of a CONNACK [3.2.2.3]. Codes 6 to 255 are reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnectReturnCode {
    /// 0x00: connection accepted.
    Accepted = 0,
    /// 0x01: the server does not support the protocol level [MQTT-3.1.2-2].
    UnacceptableProtocolVersion = 1,
    /// 0x02: the client identifier is valid UTF-8 but not allowed [MQTT-3.1.3-9].
    IdentifierRejected = 2,
    /// 0x03: the MQTT service is unavailable.
    ServerUnavailable = 3,
    /// 0x04: the user name or password is malformed.
    BadUserNameOrPassword = 4,
    /// 0x05: the client is not authorized to connect.
    NotAuthorized = 5,
}

impl ConnectReturnCode {
    /// The code numbered `n`; `None` for the reserved 6 to 255.
    #[must_use]
    pub const fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            0 => Self::Accepted,
            1 => Self::UnacceptableProtocolVersion,
            2 => Self::IdentifierRejected,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            _ => return None,
        })
    }
}

/// The QoS of a PUBLISH together with what only QoS 1 and 2 carry: the packet identifier
/// [MQTT-2.3.1-5] and the DUP flag [MQTT-3.3.1-2].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PublishQos {
    /// QoS 0: no packet identifier, DUP 0.
    AtMostOnce,
    /// QoS 1.
    AtLeastOnce {
        /// The packet identifier.
        packet_id: PacketId,
        /// Whether this may be a redelivery [MQTT-3.3.1-1].
        dup: bool,
    },
    /// QoS 2.
    ExactlyOnce {
        /// The packet identifier.
        packet_id: PacketId,
        /// Whether this may be a redelivery [MQTT-3.3.1-1].
        dup: bool,
    },
}

impl PublishQos {
    /// `qos` with a packet identifier and DUP flag, which QoS 0 drops.
    #[must_use]
    pub fn new(qos: QoS, packet_id: PacketId, dup: bool) -> Self {
        match qos {
            QoS::AtMostOnce => Self::AtMostOnce,
            QoS::AtLeastOnce => Self::AtLeastOnce { packet_id, dup },
            QoS::ExactlyOnce => Self::ExactlyOnce { packet_id, dup },
        }
    }

    /// The QoS level.
    #[must_use]
    pub fn qos(self) -> QoS {
        match self {
            Self::AtMostOnce => QoS::AtMostOnce,
            Self::AtLeastOnce { .. } => QoS::AtLeastOnce,
            Self::ExactlyOnce { .. } => QoS::ExactlyOnce,
        }
    }

    /// The packet identifier, for QoS 1 and 2.
    #[must_use]
    pub fn packet_id(self) -> Option<PacketId> {
        match self {
            Self::AtMostOnce => None,
            Self::AtLeastOnce { packet_id, .. } | Self::ExactlyOnce { packet_id, .. } => {
                Some(packet_id)
            }
        }
    }

    /// The DUP flag; always false for QoS 0.
    #[must_use]
    pub fn dup(self) -> bool {
        match self {
            Self::AtMostOnce => false,
            Self::AtLeastOnce { dup, .. } | Self::ExactlyOnce { dup, .. } => dup,
        }
    }
}

/// PUBLISH [3.3]. Cloning it shares the topic and payload (reference counts, no copy), so one
/// message can go to many subscribers; a decoded one shares the buffer it was read into.
///
/// ```
/// use bytes::Bytes;
/// use hermes_mqtt::{Publish, PublishQos, QoS, TopicName};
///
/// let publish = Publish {
///     qos: PublishQos::new(QoS::AtLeastOnce, 7.try_into().unwrap(), false),
///     retain: false,
///     topic: TopicName::from_static("sensors/1/temperature"),
///     payload: Bytes::from_static(b"21.5"),
/// };
/// assert_eq!(publish.qos.qos(), QoS::AtLeastOnce);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// QoS, packet identifier and DUP flag.
    pub qos: PublishQos,
    /// The RETAIN flag [3.3.1.3].
    pub retain: bool,
    /// The topic name.
    pub topic: TopicName,
    /// The application message; may be empty.
    pub payload: Bytes,
}

/// SUBSCRIBE [3.8]: at least one filter [MQTT-3.8.3-3].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The packet identifier.
    pub packet_id: PacketId,
    /// The topic filters with the QoS requested for each.
    pub filters: Vec<(TopicFilter, QoS)>,
}

/// The return code for one filter of a SUBSCRIBE [3.9.3].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscribeReturnCode {
    /// 0x00, 0x01, 0x02: success, with the maximum QoS granted.
    Granted(QoS),
    /// 0x80: failure.
    Failure,
}

impl SubscribeReturnCode {
    /// The byte on the wire.
    #[must_use]
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Granted(qos) => qos as u8,
            Self::Failure => 0x80,
        }
    }

    /// The code for byte `n`; `None` for the reserved ones [MQTT-3.9.3-2].
    #[must_use]
    pub fn from_u8(n: u8) -> Option<Self> {
        match n {
            0x80 => Some(Self::Failure),
            n => QoS::from_u8(n).map(Self::Granted),
        }
    }
}

/// SUBACK [3.9]: one return code per filter of the SUBSCRIBE, in order [MQTT-3.9.3-1].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The SUBSCRIBE's packet identifier [MQTT-2.3.1-7].
    pub packet_id: PacketId,
    /// One code per filter.
    pub return_codes: Vec<SubscribeReturnCode>,
}

/// UNSUBSCRIBE [3.10]: at least one filter [MQTT-3.10.3-2].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// The packet identifier.
    pub packet_id: PacketId,
    /// The filters to unsubscribe from.
    pub filters: Vec<TopicFilter>,
}

macro_rules! packet_from {
    ($($ty:ident),*) => {$(
        impl From<$ty> for Packet {
            fn from(p: $ty) -> Packet {
                Packet::$ty(p)
            }
        }
    )*};
}

packet_from!(ConnAck, Publish, Subscribe, SubAck, Unsubscribe);

impl From<Connect> for Packet {
    fn from(connect: Connect) -> Packet {
        Packet::Connect(Box::new(connect))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every packet through the broker's queues is the size of the largest variant: the rare
    /// CONNECT is boxed so that this is a PUBLISH's size, not a CONNECT's.
    #[test]
    fn a_packet_is_the_size_of_a_publish_not_of_a_connect() {
        let packet = std::mem::size_of::<Packet>();
        let publish = std::mem::size_of::<Publish>();
        assert!(
            packet <= publish + 8,
            "Packet is {packet} bytes, Publish {publish}"
        );
        assert!(std::mem::size_of::<Connect>() > 2 * packet);
    }
}
