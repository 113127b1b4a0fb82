//! The encoder: the exact size first, then the bytes, in one reservation.

use bytes::{BufMut, BytesMut};

use super::decode::required_flags;
use super::error::BinaryField;
use super::{EncodeError, MAX_REMAINING_LENGTH};
use crate::packet::{Connect, Packet, PacketId, PacketType, Publish};
use crate::string::MAX_STRING_LEN;

/// The bytes a remaining length takes [2.2.3].
fn length_len(remaining_length: usize) -> usize {
    match remaining_length {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// A length-prefixed field's size.
fn prefixed(len: usize) -> usize {
    2 + len
}

fn check_binary(field: BinaryField, len: usize) -> Result<(), EncodeError> {
    if len > MAX_STRING_LEN {
        return Err(EncodeError::FieldTooLong { field, len });
    }
    Ok(())
}

fn connect_len(c: &Connect) -> Result<usize, EncodeError> {
    let mut len = prefixed(c.protocol_name.len()) + 1 + 1 + 2 + prefixed(c.client_id.len());
    if let Some(will) = &c.will {
        check_binary(BinaryField::WillPayload, will.payload.len())?;
        len += prefixed(will.topic.as_bytes().len()) + prefixed(will.payload.len());
    }
    if let Some(login) = &c.login {
        len += prefixed(login.username.len());
        if let Some(password) = &login.password {
            check_binary(BinaryField::Password, password.len())?;
            len += prefixed(password.len());
        }
    }
    Ok(len)
}

/// A PUBLISH's variable header: topic, and packet identifier for QoS 1 and 2.
fn publish_header_len(p: &Publish) -> usize {
    prefixed(p.topic.as_bytes().len()) + if p.qos.packet_id().is_some() { 2 } else { 0 }
}

/// The remaining length of `packet`, checked against what MQTT can express.
fn remaining_length(packet: &Packet) -> Result<usize, EncodeError> {
    let packet_type = packet.packet_type();
    let empty = || Err(EncodeError::Empty { packet_type });
    let len = match packet {
        Packet::Connect(c) => connect_len(c)?,
        Packet::Publish(p) => publish_header_len(p) + p.payload.len(),
        Packet::Subscribe(s) if s.filters.is_empty() => return empty(),
        Packet::Subscribe(s) => {
            let filters = s.filters.iter();
            2 + filters
                .map(|(f, _)| prefixed(f.as_bytes().len()) + 1)
                .sum::<usize>()
        }
        Packet::SubAck(s) if s.return_codes.is_empty() => return empty(),
        Packet::SubAck(s) => 2 + s.return_codes.len(),
        Packet::Unsubscribe(u) if u.filters.is_empty() => return empty(),
        Packet::Unsubscribe(u) => {
            2 + u
                .filters
                .iter()
                .map(|f| prefixed(f.as_bytes().len()))
                .sum::<usize>()
        }
        Packet::ConnAck(_)
        | Packet::PubAck(_)
        | Packet::PubRec(_)
        | Packet::PubRel(_)
        | Packet::PubComp(_)
        | Packet::UnsubAck(_) => 2,
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => 0,
    };
    if len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge {
            packet_type,
            remaining_length: len,
        });
    }
    Ok(len)
}

/// The size of `packet` on the wire, fixed header included; an error if it cannot be encoded.
pub fn encoded_len(packet: &Packet) -> Result<usize, EncodeError> {
    let len = remaining_length(packet)?;
    Ok(1 + length_len(len) + len)
}

fn put_fixed_header(dst: &mut BytesMut, first: u8, mut remaining_length: usize) {
    dst.put_u8(first);
    loop {
        // The low seven bits; the high bit says more bytes follow.
        let byte = (remaining_length % 128) as u8;
        remaining_length /= 128;
        if remaining_length == 0 {
            dst.put_u8(byte);
            return;
        }
        dst.put_u8(byte | 0x80);
    }
}

/// Writes a length-prefixed field whose length has been checked.
fn put_prefixed(dst: &mut BytesMut, bytes: &[u8]) {
    debug_assert!(bytes.len() <= MAX_STRING_LEN);
    dst.put_u16(bytes.len() as u16);
    dst.put_slice(bytes);
}

fn first_byte(packet_type: PacketType, flags: u8) -> u8 {
    (packet_type as u8) << 4 | flags
}

fn publish_first_byte(p: &Publish) -> u8 {
    let flags = u8::from(p.qos.dup()) << 3 | (p.qos.qos() as u8) << 1 | u8::from(p.retain);
    first_byte(PacketType::Publish, flags)
}

fn put_publish_header(dst: &mut BytesMut, p: &Publish) {
    put_prefixed(dst, p.topic.as_bytes());
    if let Some(id) = p.qos.packet_id() {
        dst.put_u16(id.get());
    }
}

/// Appends `packet` to `dst`, reserving its exact size once. Nothing is written on error.
pub fn encode(packet: &Packet, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let len = remaining_length(packet)?;
    dst.reserve(1 + length_len(len) + len);
    let packet_type = packet.packet_type();
    let first = match packet {
        Packet::Publish(p) => publish_first_byte(p),
        _ => first_byte(packet_type, required_flags(packet_type)),
    };
    put_fixed_header(dst, first, len);
    let id = |dst: &mut BytesMut, id: &PacketId| dst.put_u16(id.get());
    match packet {
        Packet::Connect(c) => put_connect(dst, c),
        Packet::ConnAck(c) => {
            dst.put_u8(u8::from(c.session_present));
            dst.put_u8(c.code as u8);
        }
        Packet::Publish(p) => {
            put_publish_header(dst, p);
            dst.put_slice(&p.payload);
        }
        Packet::PubAck(p)
        | Packet::PubRec(p)
        | Packet::PubRel(p)
        | Packet::PubComp(p)
        | Packet::UnsubAck(p) => id(dst, p),
        Packet::Subscribe(s) => {
            id(dst, &s.packet_id);
            for (filter, qos) in &s.filters {
                put_prefixed(dst, filter.as_bytes());
                dst.put_u8(*qos as u8);
            }
        }
        Packet::SubAck(s) => {
            id(dst, &s.packet_id);
            for code in &s.return_codes {
                dst.put_u8(code.to_u8());
            }
        }
        Packet::Unsubscribe(u) => {
            id(dst, &u.packet_id);
            for filter in &u.filters {
                put_prefixed(dst, filter.as_bytes());
            }
        }
        Packet::PingReq | Packet::PingResp | Packet::Disconnect => {}
    }
    Ok(())
}

fn put_connect(dst: &mut BytesMut, c: &Connect) {
    put_prefixed(dst, c.protocol_name.as_bytes());
    dst.put_u8(c.protocol_level);
    let mut flags = u8::from(c.clean_session) << 1;
    if let Some(will) = &c.will {
        flags |= 0b0000_0100 | (will.qos as u8) << 3 | u8::from(will.retain) << 5;
    }
    if let Some(login) = &c.login {
        flags |= 0b1000_0000 | u8::from(login.password.is_some()) << 6;
    }
    dst.put_u8(flags);
    dst.put_u16(c.keep_alive);
    put_prefixed(dst, c.client_id.as_bytes());
    if let Some(will) = &c.will {
        put_prefixed(dst, will.topic.as_bytes());
        put_prefixed(dst, &will.payload);
    }
    if let Some(login) = &c.login {
        put_prefixed(dst, login.username.as_bytes());
        if let Some(password) = &login.password {
            put_prefixed(dst, password);
        }
    }
}

/// Appends all of a PUBLISH but its payload to `dst`: the fixed header (whose remaining length
/// counts the payload), the topic and the packet identifier. The caller sends the payload after
/// it, e.g. with a vectored write or [`bytes::Buf::chain`], so that a message fanned out to many
/// subscribers is never copied for each.
///
/// ```
/// use bytes::{Buf, Bytes, BytesMut};
/// use hermes_mqtt::codec::{encode, encode_publish_header};
/// use hermes_mqtt::{Packet, Publish, PublishQos, TopicName};
///
/// let publish = Publish {
///     qos: PublishQos::AtMostOnce,
///     retain: false,
///     topic: TopicName::from_static("a/b"),
///     payload: Bytes::from_static(b"hello"),
/// };
/// let mut header = BytesMut::new();
/// encode_publish_header(&publish, &mut header).unwrap();
/// let mut wire = header.freeze().chain(publish.payload.clone());
///
/// let mut whole = BytesMut::new();
/// encode(&Packet::Publish(publish), &mut whole).unwrap();
/// assert_eq!(wire.copy_to_bytes(wire.remaining()), whole);
/// ```
pub fn encode_publish_header(publish: &Publish, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let header_len = publish_header_len(publish);
    let len = header_len + publish.payload.len();
    if len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::PacketTooLarge {
            packet_type: PacketType::Publish,
            remaining_length: len,
        });
    }
    dst.reserve(1 + length_len(len) + header_len);
    put_fixed_header(dst, publish_first_byte(publish), len);
    put_publish_header(dst, publish);
    Ok(())
}
