//! Application messages: what a PUBLISH carries, without the packet identifier and DUP flag
//! that belong to one hop.
//!
//! A [`Message`] is cheap to clone: its topic and payload are [`Bytes`], so a message routed to
//! many sessions is shared, not copied. The two ways a message goes out to a subscriber are
//! [`Message::forwarded`] and [`Message::retained_for`]; they take the message by value, so
//! that a router clones it once per subscriber and no more.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::packet::{PacketId, Publish, PublishQos, QoS, Will};
use crate::topic::TopicName;

/// An application message: topic, payload, QoS and RETAIN flag.
///
/// ```
/// use bytes::Bytes;
/// use hermes_mqtt::{Message, QoS, TopicName};
///
/// let published = Message {
///     topic: TopicName::from_static("sensors/1/temperature"),
///     payload: Bytes::from_static(b"21.5"),
///     qos: QoS::ExactlyOnce,
///     retain: true,
/// };
/// // To a subscriber granted QoS 1, through its established subscription.
/// let out = published.forwarded(QoS::AtLeastOnce);
/// assert_eq!((out.qos, out.retain), (QoS::AtLeastOnce, false));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The topic name.
    pub topic: TopicName,
    /// The application message; may be empty.
    pub payload: Bytes,
    /// The QoS it was published with, or will be sent with.
    pub qos: QoS,
    /// The RETAIN flag.
    pub retain: bool,
}

impl Message {
    /// The message as sent to a subscriber through an established subscription granted
    /// `granted`: at the lower of the two QoS [MQTT-3.8.4-6], [3.3.5], and with RETAIN 0
    /// whatever the publisher set [MQTT-3.3.1-9].
    #[must_use]
    pub fn forwarded(self, granted: QoS) -> Self {
        self.outgoing(granted, false)
    }

    /// The message as sent because a subscription granted `granted` was just made (or
    /// replaced, [MQTT-3.8.4-3]) and this is a retained message matching it: at the lower of
    /// the two QoS [MQTT-3.8.4-6], and with RETAIN 1 [MQTT-3.3.1-8].
    #[must_use]
    pub fn retained_for(self, granted: QoS) -> Self {
        self.outgoing(granted, true)
    }

    fn outgoing(self, granted: QoS, retain: bool) -> Self {
        Self {
            qos: self.qos.min(granted),
            retain,
            ..self
        }
    }

    /// A copy whose topic and payload have buffers of their own. A decoded message is a slice
    /// of the buffer its packet was read into and keeps all of it alive; compact a message
    /// before keeping it long (the retained store does).
    #[must_use]
    pub fn compact(&self) -> Self {
        Self {
            topic: self.topic.to_compact(),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
        }
    }

    /// The PUBLISH that carries this message at its QoS. `packet_id` is used for QoS 1 and 2
    /// only; `dup` is set only for them too [MQTT-3.3.1-2].
    #[must_use]
    pub fn to_publish(&self, packet_id: PacketId, dup: bool) -> Publish {
        Publish {
            qos: PublishQos::new(self.qos, packet_id, dup),
            retain: self.retain,
            topic: self.topic.clone(),
            payload: self.payload.clone(),
        }
    }

    /// The PUBLISH that carries this message at QoS 0 (no packet identifier, DUP 0
    /// [MQTT-4.3.1-1]), whatever its `qos` field says.
    #[must_use]
    pub fn to_publish_qos0(&self) -> Publish {
        Publish {
            qos: PublishQos::AtMostOnce,
            retain: self.retain,
            topic: self.topic.clone(),
            payload: self.payload.clone(),
        }
    }
}

/// The message of a PUBLISH received: its DUP flag and packet identifier are dropped, as they
/// are not propagated [MQTT-3.3.1-3].
impl From<Publish> for Message {
    fn from(publish: Publish) -> Self {
        Self {
            topic: publish.topic,
            payload: publish.payload,
            qos: publish.qos.qos(),
            retain: publish.retain,
        }
    }
}

/// The message a will publishes: its topic, payload, QoS and retain flag [MQTT-3.1.2-16],
/// [MQTT-3.1.2-17].
impl From<Will> for Message {
    fn from(will: Will) -> Self {
        Self {
            topic: will.topic,
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
        }
    }
}

/// A message whose topic and payload are slices of one buffer, as a decoded one's are.
#[cfg(test)]
pub(crate) fn decoded_like(topic: &str, payload: &str) -> Message {
    let buffer = Bytes::from(format!("{topic}{payload}"));
    Message {
        topic: TopicName::from_bytes(buffer.slice(..topic.len())).unwrap(),
        payload: buffer.slice(topic.len()..),
        qos: QoS::AtLeastOnce,
        retain: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QOS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

    fn message(qos: QoS, retain: bool) -> Message {
        Message {
            topic: TopicName::from_static("a/b"),
            payload: Bytes::from_static(b"payload"),
            qos,
            retain,
        }
    }

    /// [MQTT-3.8.4-6]: the QoS sent is the minimum of the published QoS and the granted QoS;
    /// the table of every pair.
    #[test]
    fn qos_downgrade_table_mqtt_3_8_4_6() {
        let expected = [
            // granted:  0       1       2       (published QoS by row)
            [QoS::AtMostOnce, QoS::AtMostOnce, QoS::AtMostOnce],
            [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtLeastOnce],
            [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce],
        ];
        for (published, row) in QOS.iter().zip(expected) {
            for (granted, want) in QOS.iter().zip(row) {
                let m = message(*published, false);
                let forwarded = m.clone().forwarded(*granted);
                assert_eq!(forwarded.qos, want, "{published:?} {granted:?}");
                assert_eq!(
                    m.retained_for(*granted).qos,
                    want,
                    "{published:?} {granted:?}"
                );
            }
        }
    }

    /// [MQTT-3.3.1-9]: forwarding clears RETAIN; [MQTT-3.3.1-8]: a retained message sent for a
    /// new subscription has RETAIN 1.
    #[test]
    fn retain_flag_mqtt_3_3_1_8_and_9() {
        for retain in [false, true] {
            let m = message(QoS::AtLeastOnce, retain);
            assert!(!m.clone().forwarded(QoS::ExactlyOnce).retain);
            assert!(m.retained_for(QoS::ExactlyOnce).retain);
        }
    }

    /// [MQTT-3.3.1-3]: the DUP flag of an incoming PUBLISH is not propagated.
    #[test]
    fn dup_is_not_propagated_mqtt_3_3_1_3() {
        let id = PacketId::MIN;
        let incoming = message(QoS::AtLeastOnce, false).to_publish(id, true);
        assert!(incoming.qos.dup());
        let m = Message::from(incoming);
        assert!(!m.to_publish(id, false).qos.dup());
    }

    #[test]
    fn qos0_publish_has_no_id_and_no_dup_mqtt_4_3_1_1() {
        let m = message(QoS::ExactlyOnce, true);
        let p = m.to_publish_qos0();
        assert_eq!(p.qos, PublishQos::AtMostOnce);
        assert!(p.retain);
        let p = message(QoS::AtMostOnce, false).to_publish(PacketId::MIN, true);
        assert_eq!(p.qos, PublishQos::AtMostOnce);
    }

    #[test]
    fn compact_copies_and_shares_nothing() {
        let m = decoded_like("a/b", "payload");
        let c = m.compact();
        assert_eq!(c, m);
        assert_ne!(c.payload.as_ptr(), m.payload.as_ptr());
    }
}
