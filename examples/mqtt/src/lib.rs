//! hermes-mqtt: an MQTT 3.1.1 broker built on Hermes receivers.
//!
//! [`Broker::start`] runs it (the `hermes-mqtt` binary is a command line over it); the
//! crate's README explains how it is built, its backpressure and what survives a crash.
//!
//! The rest of this library is its protocol layer: pure, sans-IO pieces that the broker's receivers use,
//! following the OASIS MQTT Version 3.1.1 specification. Doc comments cite its normative
//! statements as [MQTT-x.y.z-n] and its sections as [x.y.z].
//!
//! - [`packet`]: the fourteen control packets as types ([`Packet`]).
//! - [`codec`]: an incremental decoder that rejects malformed input with a typed
//!   [`DecodeError`](codec::DecodeError), and the encoder.
//! - [`topic`]: validated [`TopicName`]s and [`TopicFilter`]s, and how a filter matches a
//!   name. The decoder validates topics, so a decoded packet's topics are valid.
//! - [`subscriptions`]: the subscription index that fans a PUBLISH out to its subscribers.
//! - [`string`]: MQTT's UTF-8 strings ([`MqttString`]).
//!
//! And the broker's logic, as sans-IO state machines that its Hermes receivers drive:
//!
//! - [`message`]: application messages ([`Message`]), and how one goes out to a subscriber.
//! - [`session`]: one client's [`Session`]: subscriptions, QoS 1 and 2 flows both ways,
//!   in-flight window, queue, redelivery, and its [`SessionState`] to persist.
//! - [`retained`]: the [`RetainedStore`] of retained messages, matched by topic filter.
//! - [`will`]: a connection's will ([`LastWill`]) and when it is published.
//! - [`config`]: the broker's [`Config`], from TOML, and its [`ListenerConfig`]s.
//! - [`auth`]: the password file and its argon2id hashes.
//! - [`acl`]: the access control list file: who may publish and subscribe to what.
//!
//! Payloads and strings are [`bytes::Bytes`]: a decoded packet shares the buffer it was read
//! into, and a message sent to many subscribers is shared, not copied.
//!
//! ```
//! use bytes::BytesMut;
//! use hermes_mqtt::codec::{decode, encode};
//! use hermes_mqtt::{Packet, QoS, Subscribe, TopicFilter};
//!
//! let subscribe = Packet::Subscribe(Subscribe {
//!     packet_id: 1.try_into().unwrap(),
//!     filters: vec![(TopicFilter::from_static("sensors/+/temperature"), QoS::AtLeastOnce)],
//! });
//! let mut wire = BytesMut::new();
//! encode(&subscribe, &mut wire).unwrap();
//! assert_eq!(decode(&mut wire, 64 * 1024), Ok(Some(subscribe)));
//! ```

pub mod acl;
pub mod auth;
mod broker;
pub mod codec;
pub mod config;
pub mod message;
pub mod packet;
pub mod retained;
pub mod session;
pub mod string;
pub mod subscriptions;
pub mod topic;
pub mod will;

mod persist;
mod server;

#[cfg(any(test, feature = "arbitrary"))]
mod arbitrary;

pub use broker::{Broker, BrokerStats, ShutdownError, ShutdownReport, StartError};
pub use config::{Config, ListenerConfig, ListenerKind};
pub use message::Message;
pub use packet::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PacketId, PacketType, ProtocolVersion,
    Publish, PublishQos, QoS, SubAck, Subscribe, SubscribeReturnCode, Unsubscribe, Will,
};
pub use retained::RetainedStore;
pub use session::{Session, SessionState};
pub use string::MqttString;
pub use subscriptions::Subscriptions;
pub use topic::{TopicFilter, TopicName};
pub use will::LastWill;

/// `n` and the noun that goes with it, for logs and messages: "1 session", "2 sessions",
/// "0 sessions".
pub(crate) fn plural(n: impl Into<u64>, one: &str, many: &str) -> String {
    let n = n.into();
    format!("{n} {}", if n == 1 { one } else { many })
}

/// [`plural`] of a `usize`.
pub(crate) fn plural_of(n: usize, one: &str, many: &str) -> String {
    plural(u64::try_from(n).unwrap_or(u64::MAX), one, many)
}

#[cfg(test)]
mod tests {
    #[test]
    fn plurals() {
        assert_eq!(super::plural(1u64, "session", "sessions"), "1 session");
        assert_eq!(super::plural(0u64, "session", "sessions"), "0 sessions");
        assert_eq!(super::plural_of(2, "byte", "bytes"), "2 bytes");
    }
}

/// The README's code blocks, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
