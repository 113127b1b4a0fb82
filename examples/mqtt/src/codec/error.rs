//! What can be wrong with bytes to decode, or with a packet to encode.

use std::fmt;

use crate::packet::PacketType;
use crate::string::{MqttString, StringError};
use crate::topic::TopicError;

/// Why bytes are not an MQTT 3.1.1 packet. On any of these the receiver closes the connection
/// [MQTT-4.8.0-1], except
/// [`UnsupportedProtocolLevel`](DecodeError::UnsupportedProtocolLevel), which may first deserve
/// a CONNACK.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Packet type 0 or 15, which are reserved [2.2.1].
    #[error("packet type {0} is reserved [2.2.1]")]
    ReservedPacketType(u8),
    /// Fixed header flags other than the ones the packet type requires [MQTT-2.2.2-1],
    /// [MQTT-2.2.2-2]: 0010 for PUBREL [MQTT-3.6.1-1], SUBSCRIBE [MQTT-3.8.1-1] and
    /// UNSUBSCRIBE [MQTT-3.10.1-1], 0000 for all others but PUBLISH.
    #[error(
        "{packet_type} has fixed header flags {flags:04b}, which must be {expected:04b} [MQTT-2.2.2-1]"
    )]
    InvalidFlags {
        /// The packet's type.
        packet_type: PacketType,
        /// The flags it had.
        flags: u8,
        /// The flags it must have.
        expected: u8,
    },
    /// A remaining length whose fourth byte has the continuation bit [2.2.3].
    #[error("remaining length takes more than 4 bytes [2.2.3]")]
    RemainingLengthTooLong,
    /// A packet over the size limit that the decoder was given.
    #[error("{packet_type} of {size} bytes is over the limit of {max} bytes")]
    PacketTooLarge {
        /// The packet's type.
        packet_type: PacketType,
        /// The packet's whole size, fixed header included.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A packet of fixed size with another remaining length.
    #[error("{packet_type} has remaining length {remaining_length}, which must be {expected}")]
    InvalidRemainingLength {
        /// The packet's type.
        packet_type: PacketType,
        /// The remaining length it had.
        remaining_length: usize,
        /// The remaining length it must have.
        expected: usize,
    },
    /// A field that runs past the end of the packet: lengths that do not add up.
    #[error("{packet_type} ends in the middle of a field")]
    UnexpectedEnd {
        /// The packet's type.
        packet_type: PacketType,
    },
    /// Bytes left after the last field: lengths that do not add up.
    #[error("{packet_type} has {} after its last field", crate::plural_of(*count, "byte", "bytes"))]
    TrailingBytes {
        /// The packet's type.
        packet_type: PacketType,
        /// How many bytes were left.
        count: usize,
    },
    /// A PUBLISH with both QoS bits set [MQTT-3.3.1-4].
    #[error("PUBLISH has QoS 3 (both QoS bits set) [MQTT-3.3.1-4]")]
    InvalidPublishQos,
    /// A QoS 0 PUBLISH with the DUP flag [MQTT-3.3.1-2].
    #[error("PUBLISH has the DUP flag with QoS 0 [MQTT-3.3.1-2]")]
    DupWithQos0,
    /// Packet identifier 0 [MQTT-2.3.1-1].
    #[error("{packet_type} has packet identifier 0 [MQTT-2.3.1-1]")]
    ZeroPacketId {
        /// The packet's type.
        packet_type: PacketType,
    },
    /// A string field that is not a valid MQTT string.
    #[error("{field} in CONNECT: {error}")]
    InvalidString {
        /// Which field.
        field: StringField,
        /// What is wrong.
        error: StringError,
    },
    /// An invalid topic name in a PUBLISH.
    #[error("invalid topic name in PUBLISH: {0}")]
    InvalidTopicName(TopicError),
    /// An invalid will topic in a CONNECT: it is a topic name [3.1.3.2].
    #[error("invalid will topic in CONNECT: {0}")]
    InvalidWillTopic(TopicError),
    /// An invalid topic filter in a SUBSCRIBE or UNSUBSCRIBE.
    #[error("invalid topic filter in {packet_type}: {error}")]
    InvalidTopicFilter {
        /// SUBSCRIBE or UNSUBSCRIBE.
        packet_type: PacketType,
        /// What is wrong.
        error: TopicError,
    },
    /// A SUBSCRIBE without filters [MQTT-3.8.3-3].
    #[error("SUBSCRIBE has no topic filter [MQTT-3.8.3-3]")]
    EmptySubscribe,
    /// An UNSUBSCRIBE without filters [MQTT-3.10.3-2].
    #[error("UNSUBSCRIBE has no topic filter [MQTT-3.10.3-2]")]
    EmptyUnsubscribe,
    /// A SUBACK without return codes: it has one per filter of the SUBSCRIBE, which has at least
    /// one [MQTT-3.9.3-1].
    #[error("SUBACK has no return code [MQTT-3.9.3-1]")]
    EmptySubAck,
    /// A requested QoS byte in a SUBSCRIBE with reserved bits set, or QoS 3 [MQTT-3-8.3-4].
    #[error("SUBSCRIBE requests QoS byte {0:#04x}: reserved bits set or QoS 3 [MQTT-3-8.3-4]")]
    InvalidRequestedQos(u8),
    /// A reserved SUBACK return code [MQTT-3.9.3-2].
    #[error("SUBACK return code {0:#04x} is reserved [MQTT-3.9.3-2]")]
    InvalidSubAckReturnCode(u8),
    /// CONNACK acknowledge flags with reserved bits 7-1 set [3.2.2.1].
    #[error("CONNACK acknowledge flags {0:#04x} set reserved bits 7-1 [3.2.2.1]")]
    InvalidConnAckFlags(u8),
    /// A reserved CONNACK return code, 6 to 255 [3.2.2.3].
    #[error("CONNACK return code {0} is reserved [3.2.2.3]")]
    InvalidConnectReturnCode(u8),
    /// CONNECT with the reserved flag bit 0 set [MQTT-3.1.2-3].
    #[error("CONNECT sets reserved flag bit 0 [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// CONNECT with will QoS or will retain but no will flag [MQTT-3.1.2-11], [MQTT-3.1.2-13],
    /// [MQTT-3.1.2-15].
    #[error(
        "CONNECT sets will QoS or will retain without the will flag [MQTT-3.1.2-11], [MQTT-3.1.2-13], [MQTT-3.1.2-15]"
    )]
    WillFlagsWithoutWill,
    /// CONNECT with will QoS 3 [MQTT-3.1.2-14].
    #[error("CONNECT has will QoS 3 [MQTT-3.1.2-14]")]
    InvalidWillQos,
    /// CONNECT with the password flag but not the user name flag [MQTT-3.1.2-22].
    #[error("CONNECT sets the password flag without the user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    /// CONNECT with a protocol level other than 3 (MQTT 3.1) or 4 (3.1.1): the rest of such a
    /// packet has a layout this decoder does not know, so it stops after the level. The broker
    /// answers CONNACK 0x01 if `name` is an MQTT protocol name [MQTT-3.1.2-2], and otherwise
    /// closes the connection [MQTT-3.1.2-1].
    #[error(
        "CONNECT has protocol {name:?} level {level}, which is not MQTT 3.1 or 3.1.1 [MQTT-3.1.2-2]"
    )]
    UnsupportedProtocolLevel {
        /// The protocol name as sent.
        name: MqttString,
        /// The protocol level as sent.
        level: u8,
    },
}

/// A string field of a CONNECT, for [`DecodeError::InvalidString`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StringField {
    /// The protocol name [3.1.2.1].
    ProtocolName,
    /// The client identifier [MQTT-3.1.3-4].
    ClientId,
    /// The user name [MQTT-3.1.3-11].
    Username,
}

impl fmt::Display for StringField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ProtocolName => "protocol name",
            Self::ClientId => "client identifier",
            Self::Username => "user name",
        })
    }
}

/// Why a packet cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The packet would be longer than a remaining length can say: 268,435,455 bytes [2.2.3].
    #[error(
        "{packet_type} would have remaining length {remaining_length}, over the 268435455 MQTT can express [2.2.3]"
    )]
    PacketTooLarge {
        /// The packet's type.
        packet_type: PacketType,
        /// Its remaining length.
        remaining_length: usize,
    },
    /// A binary field over 65535 bytes, which its two-byte length prefix cannot say [1.5.3].
    #[error("{field} is {len} bytes, over the 65535 its length prefix can hold")]
    FieldTooLong {
        /// Which field.
        field: BinaryField,
        /// Its length.
        len: usize,
    },
    /// A SUBSCRIBE, SUBACK or UNSUBSCRIBE without entries, which the protocol forbids
    /// [MQTT-3.8.3-3], [MQTT-3.9.3-1], [MQTT-3.10.3-2].
    #[error("{packet_type} has no entries")]
    Empty {
        /// The packet's type.
        packet_type: PacketType,
    },
}

/// A binary field of a CONNECT, for [`EncodeError::FieldTooLong`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BinaryField {
    /// The will message [3.1.3.3].
    WillPayload,
    /// The password [3.1.3.5].
    Password,
}

impl fmt::Display for BinaryField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::WillPayload => "will message",
            Self::Password => "password",
        })
    }
}
