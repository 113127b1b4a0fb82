//! The will of a connection [3.1.2.5]: the message a CONNECT asks the broker to publish if the
//! connection ends without a DISCONNECT.
//!
//! Rules:
//!
//! - It is kept with the network connection once the CONNECT is accepted [MQTT-3.1.2-8]
//!   ([`LastWill::from_connect`]; a refused CONNECT has no will).
//! - It is published when the connection closes for any reason but a DISCONNECT
//!   [MQTT-3.1.2-8]: an I/O error or network failure, a connection closed without DISCONNECT,
//!   keep alive expiry [MQTT-3.1.2-24], a protocol error [MQTT-4.8.0-1], and also when the
//!   server closes it, another connection with the same client identifier taking over
//!   [MQTT-3.1.4-2] or the server shutting down ([`CloseReason`]).
//! - A DISCONNECT deletes it, unpublished [MQTT-3.1.2-10], [MQTT-3.14.4-3]
//!   ([`LastWill::on_disconnect`]).
//! - It is published once at most, and then removed [MQTT-3.1.2-10]
//!   ([`LastWill::on_close`] takes it).
//! - It is published with its QoS, and retained if and only if its Will Retain flag is set
//!   [MQTT-3.1.2-16], [MQTT-3.1.2-17]: the message is published into the broker like a client's
//!   PUBLISH, so the retained store applies its RETAIN flag as for any other.
//!
//! ```
//! use bytes::Bytes;
//! use hermes_mqtt::will::{CloseReason, LastWill};
//! use hermes_mqtt::{Connect, MqttString, QoS, TopicName, Will};
//!
//! let mut connect = Connect::new(MqttString::from_static("sensor-1"));
//! connect.will = Some(Will {
//!     topic: TopicName::from_static("sensors/1/status"),
//!     payload: Bytes::from_static(b"offline"),
//!     qos: QoS::AtLeastOnce,
//!     retain: true,
//! });
//! let mut will = LastWill::from_connect(&connect);
//! let message = will.on_close(CloseReason::KeepAliveTimeout).unwrap();
//! assert!(message.retain);
//! assert_eq!(will.on_close(CloseReason::NetworkError), None); // once at most
//! ```

use serde::{Deserialize, Serialize};

use crate::message::Message;
use crate::packet::Connect;

/// Why a connection closed. More reasons may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent DISCONNECT [3.14]: the one case that does not publish the will.
    Disconnect,
    /// An I/O error or network failure, or the client closed the connection without a
    /// DISCONNECT.
    NetworkError,
    /// No packet from the client within one and a half times its keep alive [MQTT-3.1.2-24].
    KeepAliveTimeout,
    /// The server closed the connection because of a protocol error [MQTT-4.8.0-1].
    ProtocolError,
    /// A new connection with the same client identifier took over [MQTT-3.1.4-2].
    TakenOver,
    /// The server closed the connection for another reason, such as shutting down.
    ServerClosed,
}

impl CloseReason {
    /// Whether a connection that closed for this reason publishes its will [MQTT-3.1.2-8].
    #[must_use]
    pub fn publishes_will(self) -> bool {
        self != Self::Disconnect
    }
}

/// The will of one connection, if it has one, until it is published or deleted. Boxed: most
/// connections have none, and a session keeps this for its connection's whole life (a
/// pointer, not the message's 72 bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWill(Option<Box<Message>>);

impl LastWill {
    /// The will of an accepted CONNECT [MQTT-3.1.2-8], with its QoS and retain flag
    /// [MQTT-3.1.2-16], [MQTT-3.1.2-17]; none if its Will Flag is 0. Copied into buffers of its
    /// own ([`Message::compact`]), as it lives as long as the connection.
    #[must_use]
    pub fn from_connect(connect: &Connect) -> Self {
        let will = connect.will.as_ref();
        Self(will.map(|will| Box::new(Message::from(will.clone()).compact())))
    }

    /// The will message, while there is one.
    #[must_use]
    pub fn message(&self) -> Option<&Message> {
        self.0.as_deref()
    }

    /// The client sent DISCONNECT: the will is deleted without being published
    /// [MQTT-3.1.2-10], [MQTT-3.14.4-3].
    pub fn on_disconnect(&mut self) {
        self.0 = None;
    }

    /// The connection closed for `reason`: the message to publish into the broker, if there is
    /// a will and `reason` publishes it. The will is gone after this either way
    /// [MQTT-3.1.2-10].
    #[must_use]
    pub fn on_close(&mut self, reason: CloseReason) -> Option<Message> {
        let message = self.0.take()?;
        reason.publishes_will().then_some(*message)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::packet::{QoS, Will};
    use crate::string::MqttString;
    use crate::topic::TopicName;

    const REASONS: [CloseReason; 6] = [
        CloseReason::Disconnect,
        CloseReason::NetworkError,
        CloseReason::KeepAliveTimeout,
        CloseReason::ProtocolError,
        CloseReason::TakenOver,
        CloseReason::ServerClosed,
    ];

    fn connect(qos: QoS, retain: bool) -> Connect {
        let mut connect = Connect::new(MqttString::from_static("c"));
        connect.will = Some(Will {
            topic: TopicName::from_static("clients/c/status"),
            payload: Bytes::from_static(b"gone"),
            qos,
            retain,
        });
        connect
    }

    /// [MQTT-3.1.2-8]: every close but a DISCONNECT publishes the will.
    #[test]
    fn published_on_every_abnormal_close_mqtt_3_1_2_8() {
        for reason in REASONS {
            let mut will = LastWill::from_connect(&connect(QoS::AtLeastOnce, false));
            let published = will.on_close(reason);
            assert_eq!(published.is_some(), reason != CloseReason::Disconnect);
            assert_eq!(will.message(), None, "{reason:?}: removed once closed");
        }
    }

    /// [MQTT-3.1.2-10], [MQTT-3.14.4-3]: a DISCONNECT deletes the will, and nothing publishes
    /// it after that.
    #[test]
    fn never_published_after_disconnect_mqtt_3_1_2_10() {
        for reason in REASONS {
            let mut will = LastWill::from_connect(&connect(QoS::ExactlyOnce, true));
            will.on_disconnect();
            assert_eq!(will.on_close(reason), None, "{reason:?}");
        }
    }

    /// [MQTT-3.1.2-10]: published once at most.
    #[test]
    fn published_once_mqtt_3_1_2_10() {
        let mut will = LastWill::from_connect(&connect(QoS::AtMostOnce, false));
        assert!(will.on_close(CloseReason::NetworkError).is_some());
        assert_eq!(will.on_close(CloseReason::NetworkError), None);
    }

    /// [MQTT-3.1.2-16], [MQTT-3.1.2-17]: published with its QoS, retained iff Will Retain.
    #[test]
    fn qos_and_retain_flag_mqtt_3_1_2_16_and_17() {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            for retain in [false, true] {
                let mut will = LastWill::from_connect(&connect(qos, retain));
                let message = will.on_close(CloseReason::ProtocolError).unwrap();
                assert_eq!((message.qos, message.retain), (qos, retain));
                assert_eq!(message.topic.as_str(), "clients/c/status");
                assert_eq!(&message.payload[..], b"gone");
            }
        }
    }

    #[test]
    fn no_will_flag_no_will() {
        let mut will = LastWill::from_connect(&Connect::new(MqttString::from_static("c")));
        assert_eq!(will.message(), None);
        assert_eq!(will.on_close(CloseReason::NetworkError), None);
        assert_eq!(LastWill::default(), will);
    }
}
