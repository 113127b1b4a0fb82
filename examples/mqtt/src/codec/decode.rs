//! The decoder: a fixed header, then the body of each packet type.

use bytes::{Buf, Bytes, BytesMut};

use super::DecodeError;
use super::error::StringField;
use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PacketId, PacketType, Publish, PublishQos,
    QoS, SubAck, Subscribe, SubscribeReturnCode, Unsubscribe, Will,
};
use crate::string::MqttString;
use crate::topic::{TopicFilter, TopicName};

/// The fixed header flags that every packet type but PUBLISH must have [2.2.2].
pub(super) fn required_flags(packet_type: PacketType) -> u8 {
    match packet_type {
        PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
        _ => 0,
    }
}

/// The remaining length of the packet types that have only one.
fn fixed_remaining_length(packet_type: PacketType) -> Option<usize> {
    match packet_type {
        PacketType::ConnAck
        | PacketType::PubAck
        | PacketType::PubRec
        | PacketType::PubRel
        | PacketType::PubComp
        | PacketType::UnsubAck => Some(2),
        PacketType::PingReq | PacketType::PingResp | PacketType::Disconnect => Some(0),
        _ => None,
    }
}

/// Checks the first byte of a packet: its type and flags.
fn packet_type(byte: u8) -> Result<PacketType, DecodeError> {
    let (number, flags) = (byte >> 4, byte & 0x0F);
    let packet_type = PacketType::from_u8(number).ok_or(DecodeError::ReservedPacketType(number))?;
    if packet_type == PacketType::Publish {
        let qos = (flags >> 1) & 0b11;
        if qos == 3 {
            return Err(DecodeError::InvalidPublishQos);
        }
        if qos == 0 && flags & 0b1000 != 0 {
            return Err(DecodeError::DupWithQos0);
        }
    } else if flags != required_flags(packet_type) {
        return Err(DecodeError::InvalidFlags {
            packet_type,
            flags,
            expected: required_flags(packet_type),
        });
    }
    Ok(packet_type)
}

/// Reads a remaining length [2.2.3] from the bytes after the first: `Some((value, its byte
/// count))`, or `None` if more bytes are needed.
fn remaining_length(bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut value = 0;
    for (i, &byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    if bytes.len() >= 4 {
        Err(DecodeError::RemainingLengthTooLong)
    } else {
        Ok(None)
    }
}

/// Decodes the first packet in `buf`, and removes its bytes from there.
///
/// Returns `Ok(None)` while the packet is incomplete; then `buf` keeps its bytes, with room
/// reserved for the rest once the packet's size is known to be at most `max_packet_size` (the
/// whole packet, fixed header included). Returns an error as soon as the bytes so far are
/// malformed, or declare a packet over `max_packet_size`; the connection is then beyond repair
/// (close it), and `buf` may or may not still hold the bad packet. A decoded packet's payload
/// and strings share `buf`'s memory.
///
/// ```
/// use bytes::BytesMut;
/// use hermes_mqtt::codec::{decode, DecodeError};
/// use hermes_mqtt::{Packet, PacketType};
///
/// let mut buf = BytesMut::from(&[0x40, 0x02, 0x00][..]); // PUBACK, one byte short
/// assert_eq!(decode(&mut buf, 1024), Ok(None));
/// buf.extend_from_slice(&[0x07, 0xC0, 0x00]); // its last byte, and a PINGREQ
/// assert_eq!(decode(&mut buf, 1024), Ok(Some(Packet::PubAck(7.try_into().unwrap()))));
/// assert_eq!(decode(&mut buf, 1024), Ok(Some(Packet::PingReq)));
///
/// let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x7F][..]); // a 2 MB PUBLISH
/// let too_large = DecodeError::PacketTooLarge {
///     packet_type: PacketType::Publish,
///     size: 2_097_155,
///     max: 1024,
/// };
/// assert_eq!(decode(&mut buf, 1024), Err(too_large));
/// ```
pub fn decode(buf: &mut BytesMut, max_packet_size: usize) -> Result<Option<Packet>, DecodeError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    let packet_type = packet_type(first)?;
    let Some((remaining_length, length_bytes)) =
        remaining_length(buf.get(1..).unwrap_or_default())?
    else {
        return Ok(None);
    };
    if let Some(expected) = fixed_remaining_length(packet_type)
        && remaining_length != expected
    {
        return Err(DecodeError::InvalidRemainingLength {
            packet_type,
            remaining_length,
            expected,
        });
    }
    let header_len = 1 + length_bytes;
    let size = header_len + remaining_length;
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            packet_type,
            size,
            max: max_packet_size,
        });
    }
    if buf.len() < size {
        // Room for the rest of this packet, now that it is known to be within the limit.
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut body = buf.split_to(size).freeze();
    body.advance(header_len);
    let mut body = Reader { body, packet_type };
    let packet = match packet_type {
        PacketType::Connect => Packet::Connect(Box::new(body.connect()?)),
        PacketType::ConnAck => Packet::ConnAck(body.connack()?),
        PacketType::Publish => Packet::Publish(body.publish(first)?),
        PacketType::PubAck => Packet::PubAck(body.packet_id()?),
        PacketType::PubRec => Packet::PubRec(body.packet_id()?),
        PacketType::PubRel => Packet::PubRel(body.packet_id()?),
        PacketType::PubComp => Packet::PubComp(body.packet_id()?),
        PacketType::Subscribe => Packet::Subscribe(body.subscribe()?),
        PacketType::SubAck => Packet::SubAck(body.suback()?),
        PacketType::Unsubscribe => Packet::Unsubscribe(body.unsubscribe()?),
        PacketType::UnsubAck => Packet::UnsubAck(body.packet_id()?),
        PacketType::PingReq => Packet::PingReq,
        PacketType::PingResp => Packet::PingResp,
        PacketType::Disconnect => Packet::Disconnect,
    };
    body.finish()?;
    Ok(Some(packet))
}

/// The body of one packet, read front to back. Each field is a slice of the packet's buffer.
struct Reader {
    body: Bytes,
    packet_type: PacketType,
}

impl Reader {
    fn end(&self) -> DecodeError {
        DecodeError::UnexpectedEnd {
            packet_type: self.packet_type,
        }
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        if self.body.is_empty() {
            return Err(self.end());
        }
        Ok(self.body.get_u8())
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        if self.body.len() < 2 {
            return Err(self.end());
        }
        Ok(self.body.get_u16())
    }

    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.body.len() < len {
            return Err(self.end());
        }
        Ok(self.body.split_to(len))
    }

    /// A length-prefixed field [1.5.3]: a string's or binary data's bytes.
    fn prefixed(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    fn string(&mut self, field: StringField) -> Result<MqttString, DecodeError> {
        MqttString::from_bytes(self.prefixed()?)
            .map_err(|error| DecodeError::InvalidString { field, error })
    }

    fn packet_id(&mut self) -> Result<PacketId, DecodeError> {
        PacketId::new(self.u16()?).ok_or(DecodeError::ZeroPacketId {
            packet_type: self.packet_type,
        })
    }

    fn topic_filter(&mut self) -> Result<TopicFilter, DecodeError> {
        TopicFilter::from_bytes(self.prefixed()?).map_err(|error| DecodeError::InvalidTopicFilter {
            packet_type: self.packet_type,
            error,
        })
    }

    /// How many entries of a SUBSCRIBE or UNSUBSCRIBE payload there are: a length-prefixed
    /// filter and `extra` bytes each. Checks only that the lengths add up, so that the `Vec` of
    /// entries is allocated once, at its exact size.
    fn count_entries(&self, extra: usize) -> Result<usize, DecodeError> {
        let mut rest: &[u8] = &self.body;
        let mut count = 0;
        while let [hi, lo, tail @ ..] = rest {
            let len = usize::from(u16::from_be_bytes([*hi, *lo])) + extra;
            rest = tail.get(len..).ok_or_else(|| self.end())?;
            count += 1;
        }
        if rest.is_empty() {
            Ok(count)
        } else {
            Err(self.end())
        }
    }

    fn finish(self) -> Result<(), DecodeError> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                packet_type: self.packet_type,
                count: self.body.len(),
            })
        }
    }

    /// CONNECT [3.1].
    fn connect(&mut self) -> Result<Connect, DecodeError> {
        let protocol_name = self.string(StringField::ProtocolName)?;
        let protocol_level = self.u8()?;
        if protocol_level != 3 && protocol_level != 4 {
            return Err(DecodeError::UnsupportedProtocolLevel {
                name: protocol_name,
                level: protocol_level,
            });
        }
        let flags = self.u8()?;
        if flags & 0b0000_0001 != 0 {
            return Err(DecodeError::ConnectReservedFlag);
        }
        let clean_session = flags & 0b0000_0010 != 0;
        let will_flag = flags & 0b0000_0100 != 0;
        let will_qos = (flags >> 3) & 0b11;
        let will_retain = flags & 0b0010_0000 != 0;
        let password_flag = flags & 0b0100_0000 != 0;
        let username_flag = flags & 0b1000_0000 != 0;
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(DecodeError::WillFlagsWithoutWill);
        }
        let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::InvalidWillQos)?;
        if password_flag && !username_flag {
            return Err(DecodeError::PasswordWithoutUsername);
        }
        let keep_alive = self.u16()?;
        // The payload's fields come in this order [MQTT-3.1.3-1].
        let client_id = self.string(StringField::ClientId)?;
        let will = if will_flag {
            let topic =
                TopicName::from_bytes(self.prefixed()?).map_err(DecodeError::InvalidWillTopic)?;
            Some(Will {
                topic,
                payload: self.prefixed()?,
                qos: will_qos,
                retain: will_retain,
            })
        } else {
            None
        };
        let login = if username_flag {
            Some(Login {
                username: self.string(StringField::Username)?,
                password: if password_flag {
                    Some(self.prefixed()?)
                } else {
                    None
                },
            })
        } else {
            None
        };
        Ok(Connect {
            protocol_name,
            protocol_level,
            clean_session,
            keep_alive,
            client_id,
            will,
            login,
        })
    }

    /// CONNACK [3.2].
    fn connack(&mut self) -> Result<ConnAck, DecodeError> {
        let flags = self.u8()?;
        if flags & 0b1111_1110 != 0 {
            return Err(DecodeError::InvalidConnAckFlags(flags));
        }
        let code = self.u8()?;
        Ok(ConnAck {
            session_present: flags != 0,
            code: ConnectReturnCode::from_u8(code)
                .ok_or(DecodeError::InvalidConnectReturnCode(code))?,
        })
    }

    /// PUBLISH [3.3], whose first byte `packet_type` has checked.
    fn publish(&mut self, first: u8) -> Result<Publish, DecodeError> {
        let topic =
            TopicName::from_bytes(self.prefixed()?).map_err(DecodeError::InvalidTopicName)?;
        let qos = match (first >> 1) & 0b11 {
            0 => PublishQos::AtMostOnce,
            qos => PublishQos::new(
                QoS::from_u8(qos).ok_or(DecodeError::InvalidPublishQos)?,
                self.packet_id()?,
                first & 0b1000 != 0,
            ),
        };
        Ok(Publish {
            qos,
            retain: first & 0b0001 != 0,
            topic,
            payload: std::mem::take(&mut self.body),
        })
    }

    /// SUBSCRIBE [3.8].
    fn subscribe(&mut self) -> Result<Subscribe, DecodeError> {
        let packet_id = self.packet_id()?;
        let count = self.count_entries(1)?;
        if count == 0 {
            return Err(DecodeError::EmptySubscribe);
        }
        let mut filters = Vec::with_capacity(count);
        while !self.body.is_empty() {
            let filter = self.topic_filter()?;
            let requested = self.u8()?;
            // Bits 7-2 are reserved, and QoS 3 is not one [MQTT-3-8.3-4].
            let qos = QoS::from_u8(requested).ok_or(DecodeError::InvalidRequestedQos(requested))?;
            filters.push((filter, qos));
        }
        Ok(Subscribe { packet_id, filters })
    }

    /// SUBACK [3.9].
    fn suback(&mut self) -> Result<SubAck, DecodeError> {
        let packet_id = self.packet_id()?;
        if self.body.is_empty() {
            return Err(DecodeError::EmptySubAck);
        }
        let return_codes = self
            .body
            .iter()
            .map(|&code| {
                SubscribeReturnCode::from_u8(code).ok_or(DecodeError::InvalidSubAckReturnCode(code))
            })
            .collect::<Result<_, _>>()?;
        self.body.clear();
        Ok(SubAck {
            packet_id,
            return_codes,
        })
    }

    /// UNSUBSCRIBE [3.10].
    fn unsubscribe(&mut self) -> Result<Unsubscribe, DecodeError> {
        let packet_id = self.packet_id()?;
        let count = self.count_entries(0)?;
        if count == 0 {
            return Err(DecodeError::EmptyUnsubscribe);
        }
        let mut filters = Vec::with_capacity(count);
        while !self.body.is_empty() {
            filters.push(self.topic_filter()?);
        }
        Ok(Unsubscribe { packet_id, filters })
    }
}
