//! The codec against hand-written bytes: every packet type on the wire, and each malformed
//! input with its own error.

use bytes::{Bytes, BytesMut};
use hermes_mqtt::codec::{
    BinaryField, DecodeError, EncodeError, MAX_REMAINING_LENGTH, StringField, decode, encode,
    encoded_len,
};
use hermes_mqtt::string::StringError;
use hermes_mqtt::topic::TopicError;
use hermes_mqtt::{
    ConnAck, Connect, ConnectReturnCode, Login, MqttString, Packet, PacketId, PacketType,
    ProtocolVersion, Publish, PublishQos, QoS, SubAck, Subscribe, SubscribeReturnCode, TopicFilter,
    TopicName, Unsubscribe, Will,
};

const MAX: usize = 1 << 20;

fn dec(bytes: &[u8]) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), MAX)
}

fn err(bytes: &[u8]) -> DecodeError {
    match dec(bytes) {
        Err(e) => e,
        other => panic!("{bytes:02x?} decoded to {other:?}"),
    }
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// `packet` encodes to exactly `wire`, and `wire` decodes to `packet`, whole and byte by byte.
fn wire(packet: Packet, wire: &[u8]) {
    let mut buf = BytesMut::new();
    encode(&packet, &mut buf).unwrap();
    assert_eq!(&buf[..], wire, "{packet:?}");
    assert_eq!(encoded_len(&packet), Ok(wire.len()));
    assert_eq!(dec(wire), Ok(Some(packet.clone())));
    let mut buf = BytesMut::new();
    for (i, &byte) in wire.iter().enumerate() {
        buf.extend_from_slice(&[byte]);
        let got = decode(&mut buf, MAX).unwrap();
        if i + 1 < wire.len() {
            assert_eq!(got, None);
        } else {
            assert_eq!(got, Some(packet.clone()));
        }
    }
    assert!(buf.is_empty());
}

/// A CONNECT with `flags` and payload `rest` after a 3.1.1 variable header.
fn connect_bytes(flags: u8, rest: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, flags, 0, 60];
    body.extend_from_slice(rest);
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

#[test]
fn every_packet_type_on_the_wire() {
    // The CONNECT of [3.1.2.11]'s example variable header, with a will and a login.
    let connect = Connect {
        protocol_name: MqttString::from_static("MQTT"),
        protocol_level: 4,
        clean_session: true,
        keep_alive: 10,
        client_id: MqttString::from_static("c"),
        will: Some(Will {
            topic: TopicName::from_static("w"),
            payload: Bytes::from_static(b"x"),
            qos: QoS::AtLeastOnce,
            retain: false,
        }),
        login: Some(Login {
            username: MqttString::from_static("u"),
            password: Some(Bytes::from_static(b"p")),
        }),
    };
    #[rustfmt::skip]
    wire(connect.into(), &[
        0x10, 25,
        0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_1110, 0, 10,
        0, 1, b'c', 0, 1, b'w', 0, 1, b'x', 0, 1, b'u', 0, 1, b'p',
    ]);
    let minimal = Connect {
        clean_session: false,
        keep_alive: 0,
        ..Connect::new(MqttString::from_static(""))
    };
    #[rustfmt::skip]
    wire(minimal.into(), &[0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 0, 0, 0]);
    let will_retained = Connect {
        will: Some(Will {
            topic: TopicName::from_static("w"),
            payload: Bytes::new(),
            qos: QoS::ExactlyOnce,
            retain: true,
        }),
        login: Some(Login {
            username: MqttString::from_static("u"),
            password: None,
        }),
        ..Connect::new(MqttString::from_static("c"))
    };
    #[rustfmt::skip]
    wire(will_retained.into(), &[
        0x10, 21,
        0, 4, b'M', b'Q', b'T', b'T', 4, 0b1011_0110, 0, 60,
        0, 1, b'c', 0, 1, b'w', 0, 0, 0, 1, b'u',
    ]);
    let code = ConnectReturnCode::NotAuthorized;
    let connack = ConnAck {
        session_present: false,
        code,
    };
    wire(connack.into(), &[0x20, 2, 0, 5]);
    let connack = ConnAck {
        session_present: true,
        code: ConnectReturnCode::Accepted,
    };
    wire(connack.into(), &[0x20, 2, 1, 0]);
    let publish = |qos, retain, payload: &'static [u8]| Publish {
        qos,
        retain,
        topic: TopicName::from_static("a/b"),
        payload: Bytes::from_static(payload),
    };
    let qos0 = publish(PublishQos::AtMostOnce, true, b"hi");
    wire(qos0.into(), &[0x31, 7, 0, 3, b'a', b'/', b'b', b'h', b'i']);
    let qos1 = publish(PublishQos::new(QoS::AtLeastOnce, id(10), true), false, b"");
    wire(qos1.into(), &[0x3A, 7, 0, 3, b'a', b'/', b'b', 0, 10]);
    let qos2 = publish(
        PublishQos::new(QoS::ExactlyOnce, id(0x1234), false),
        true,
        b"!",
    );
    wire(
        qos2.into(),
        &[0x35, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'!'],
    );
    wire(Packet::PubAck(id(1)), &[0x40, 2, 0, 1]);
    wire(Packet::PubRec(id(2)), &[0x50, 2, 0, 2]);
    wire(Packet::PubRel(id(3)), &[0x62, 2, 0, 3]);
    wire(Packet::PubComp(id(0xFFFF)), &[0x70, 2, 0xFF, 0xFF]);
    let subscribe = Subscribe {
        packet_id: id(1),
        filters: vec![
            (TopicFilter::from_static("a/+"), QoS::AtLeastOnce),
            (TopicFilter::from_static("#"), QoS::ExactlyOnce),
        ],
    };
    #[rustfmt::skip]
    wire(subscribe.into(), &[0x82, 12, 0, 1, 0, 3, b'a', b'/', b'+', 1, 0, 1, b'#', 2]);
    let suback = SubAck {
        packet_id: id(1),
        return_codes: vec![
            SubscribeReturnCode::Granted(QoS::AtMostOnce),
            SubscribeReturnCode::Failure,
            SubscribeReturnCode::Granted(QoS::ExactlyOnce),
        ],
    };
    wire(suback.into(), &[0x90, 5, 0, 1, 0, 0x80, 2]);
    let unsubscribe = Unsubscribe {
        packet_id: id(7),
        filters: vec![TopicFilter::from_static("a"), TopicFilter::from_static("+")],
    };
    wire(unsubscribe.into(), &[0xA2, 8, 0, 7, 0, 1, b'a', 0, 1, b'+']);
    wire(Packet::UnsubAck(id(7)), &[0xB0, 2, 0, 7]);
    wire(Packet::PingReq, &[0xC0, 0]);
    wire(Packet::PingResp, &[0xD0, 0]);
    wire(Packet::Disconnect, &[0xE0, 0]);
}

#[test]
fn remaining_length_of_two_to_four_bytes() {
    for (payload_len, header) in [
        (0x7F - 5, &[0x30, 0x7F][..]),
        (0x80 - 5, &[0x30, 0x80, 0x01]),
        (16_383 - 5, &[0x30, 0xFF, 0x7F]),
        (16_384 - 5, &[0x30, 0x80, 0x80, 0x01]),
        (2_097_152 - 5, &[0x30, 0x80, 0x80, 0x80, 0x01]),
    ] {
        let publish = Publish {
            qos: PublishQos::AtMostOnce,
            retain: false,
            topic: TopicName::from_static("abc"),
            payload: vec![7; payload_len].into(),
        };
        let mut buf = BytesMut::new();
        encode(&publish.clone().into(), &mut buf).unwrap();
        assert_eq!(&buf[..header.len()], header);
        assert_eq!(decode(&mut buf, 4 << 20), Ok(Some(publish.into())));
    }
    // 3.1.1 does not ask for the shortest encoding (5.0 does); the decoder takes any.
    assert_eq!(dec(&[0xC0, 0x80, 0x00]), Ok(Some(Packet::PingReq)));
}

#[test]
fn remaining_length_over_four_bytes() {
    assert_eq!(
        err(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
        DecodeError::RemainingLengthTooLong
    );
    // The error comes as soon as the fourth byte says that a fifth follows.
    assert_eq!(
        err(&[0x30, 0x80, 0x80, 0x80, 0x80]),
        DecodeError::RemainingLengthTooLong
    );
    assert_eq!(dec(&[0x30, 0x80, 0x80, 0x80]), Ok(None));
}

#[test]
fn size_limit_is_checked_before_reserving() {
    let mut buf = BytesMut::with_capacity(8);
    buf.extend_from_slice(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]);
    let capacity = buf.capacity();
    assert_eq!(
        decode(&mut buf, 1024),
        Err(DecodeError::PacketTooLarge {
            packet_type: PacketType::Publish,
            size: 5 + MAX_REMAINING_LENGTH,
            max: 1024,
        })
    );
    assert_eq!(buf.capacity(), capacity);
    // Within the limit: the decoder reserves the rest of the packet.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x08][..]);
    assert_eq!(decode(&mut buf, 1027), Ok(None));
    assert!(buf.capacity() >= 1027);
    // The limit counts the fixed header.
    let mut buf = BytesMut::from(&[0x30, 0x80, 0x08][..]);
    assert!(matches!(
        decode(&mut buf, 1026),
        Err(DecodeError::PacketTooLarge { .. })
    ));
}

#[test]
fn reserved_packet_types() {
    assert_eq!(err(&[0x00]), DecodeError::ReservedPacketType(0));
    assert_eq!(err(&[0xF0, 0x00]), DecodeError::ReservedPacketType(15));
}

#[test]
fn fixed_header_flags_per_type() {
    for number in 1..=14u8 {
        let packet_type = PacketType::from_u8(number).unwrap();
        if packet_type == PacketType::Publish {
            continue;
        }
        let expected = match packet_type {
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => 0b0010,
            _ => 0,
        };
        for flags in (0..16).filter(|&f| f != expected) {
            // The first byte alone is enough to refuse it.
            assert_eq!(
                err(&[number << 4 | flags]),
                DecodeError::InvalidFlags {
                    packet_type,
                    flags,
                    expected
                }
            );
        }
        assert_eq!(dec(&[number << 4 | expected]), Ok(None));
    }
    let message = err(&[0x60, 2, 0, 1]).to_string();
    assert_eq!(
        message,
        "PUBREL has fixed header flags 0000, which must be 0010 [MQTT-2.2.2-1]"
    );
}

#[test]
fn fixed_size_packets_with_other_lengths() {
    for (bytes, packet_type, expected) in [
        (&[0x20, 3][..], PacketType::ConnAck, 2),
        (&[0x40, 1], PacketType::PubAck, 2),
        (&[0x62, 3], PacketType::PubRel, 2),
        (&[0xB0, 0], PacketType::UnsubAck, 2),
        (&[0xC0, 1], PacketType::PingReq, 0),
        (&[0xD0, 0x80, 0x01], PacketType::PingResp, 0),
        (&[0xE0, 2], PacketType::Disconnect, 0),
    ] {
        let remaining_length = if bytes.len() == 3 {
            128
        } else {
            bytes[1].into()
        };
        let expected = DecodeError::InvalidRemainingLength {
            packet_type,
            remaining_length,
            expected,
        };
        assert_eq!(err(bytes), expected);
    }
}

#[test]
fn publish_flags() {
    assert_eq!(err(&[0x36]), DecodeError::InvalidPublishQos);
    assert_eq!(err(&[0x3F]), DecodeError::InvalidPublishQos);
    assert_eq!(err(&[0x38]), DecodeError::DupWithQos0);
    assert_eq!(err(&[0x39]), DecodeError::DupWithQos0);
}

#[test]
fn packet_id_zero() {
    for (bytes, packet_type) in [
        (&[0x32, 5, 0, 1, b'a', 0, 0][..], PacketType::Publish),
        (&[0x40, 2, 0, 0], PacketType::PubAck),
        (&[0x50, 2, 0, 0], PacketType::PubRec),
        (&[0x62, 2, 0, 0], PacketType::PubRel),
        (&[0x70, 2, 0, 0], PacketType::PubComp),
        (&[0x82, 6, 0, 0, 0, 1, b'a', 0], PacketType::Subscribe),
        (&[0x90, 3, 0, 0, 0], PacketType::SubAck),
        (&[0xA2, 5, 0, 0, 0, 1, b'a'], PacketType::Unsubscribe),
        (&[0xB0, 2, 0, 0], PacketType::UnsubAck),
    ] {
        assert_eq!(err(bytes), DecodeError::ZeroPacketId { packet_type });
    }
}

#[test]
fn publish_topic_rules() {
    let topic_err = |topic: &[u8]| {
        let mut bytes = vec![0x30, topic.len() as u8 + 2, 0, topic.len() as u8];
        bytes.extend_from_slice(topic);
        err(&bytes)
    };
    let name = DecodeError::InvalidTopicName;
    assert_eq!(topic_err(b""), name(TopicError::Empty));
    assert_eq!(topic_err(b"a/+"), name(TopicError::WildcardInName));
    assert_eq!(topic_err(b"a/#"), name(TopicError::WildcardInName));
    assert_eq!(topic_err(b"a#b"), name(TopicError::WildcardInName));
    let utf8 = name(TopicError::String(StringError::InvalidUtf8));
    assert_eq!(topic_err(b"a\xFF"), utf8);
    assert_eq!(topic_err(b"\xED\xA0\x80"), utf8, "an encoded surrogate");
    let nul = name(TopicError::String(StringError::NullCharacter));
    assert_eq!(topic_err(b"a\0"), nul);
    // A topic length that runs past the packet.
    assert_eq!(
        err(&[0x30, 3, 0, 5, b'a']),
        DecodeError::UnexpectedEnd {
            packet_type: PacketType::Publish
        }
    );
    // A QoS 1 PUBLISH without room for its packet identifier.
    assert_eq!(
        err(&[0x32, 4, 0, 1, b'a', 0]),
        DecodeError::UnexpectedEnd {
            packet_type: PacketType::Publish
        }
    );
    let message = topic_err(b"a/+").to_string();
    assert_eq!(
        message,
        "invalid topic name in PUBLISH: topic name contains a wildcard '+' or '#' \
         [MQTT-3.3.2-2], [MQTT-4.7.1-1]"
    );
}

#[test]
fn publish_shares_the_buffer() {
    let mut buf = BytesMut::new();
    let payload = vec![42; 1000];
    let publish = Publish {
        qos: PublishQos::AtMostOnce,
        retain: false,
        topic: TopicName::from_static("t"),
        payload: payload.into(),
    };
    encode(&publish.into(), &mut buf).unwrap();
    let range = buf.as_ptr_range();
    let Some(Packet::Publish(decoded)) = decode(&mut buf, MAX).unwrap() else {
        panic!()
    };
    assert!(
        range.contains(&decoded.payload.as_ptr()),
        "payload was copied"
    );
    assert!(
        range.contains(&decoded.topic.as_bytes().as_ptr()),
        "topic was copied"
    );
}

#[test]
fn several_packets_in_one_buffer() {
    let mut buf = BytesMut::from(&[0xC0, 0, 0x40, 2, 0, 9, 0xE0][..]);
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PingReq)));
    assert_eq!(decode(&mut buf, MAX), Ok(Some(Packet::PubAck(id(9)))));
    assert_eq!(decode(&mut buf, MAX), Ok(None));
    assert_eq!(&buf[..], [0xE0]);
}

#[test]
fn subscribe_rules() {
    use PacketType::Subscribe as S;
    assert_eq!(err(&[0x82, 2, 0, 1]), DecodeError::EmptySubscribe);
    let filter = |error| DecodeError::InvalidTopicFilter {
        packet_type: S,
        error,
    };
    let one = |f: &[u8], qos: u8| {
        let mut bytes = vec![0x82, f.len() as u8 + 5, 0, 1, 0, f.len() as u8];
        bytes.extend_from_slice(f);
        bytes.push(qos);
        dec(&bytes)
    };
    assert_eq!(one(b"", 0), Err(filter(TopicError::Empty)));
    assert_eq!(
        one(b"a#", 0),
        Err(filter(TopicError::MisplacedMultiLevelWildcard))
    );
    assert_eq!(
        one(b"#/a", 0),
        Err(filter(TopicError::MisplacedMultiLevelWildcard))
    );
    assert_eq!(
        one(b"a+/b", 0),
        Err(filter(TopicError::MisplacedSingleLevelWildcard))
    );
    let utf8 = filter(TopicError::String(StringError::InvalidUtf8));
    assert_eq!(one(b"\xC0\x80", 0), Err(utf8));
    // Requested QoS: 3, or any reserved bit [MQTT-3-8.3-4].
    for byte in [3, 4, 0x80, 0x81, 0xFC] {
        assert_eq!(one(b"a", byte), Err(DecodeError::InvalidRequestedQos(byte)));
    }
    assert!(matches!(one(b"a/+/#", 2), Ok(Some(Packet::Subscribe(_)))));
    // A filter length that runs past the packet, a missing QoS byte, a stray byte.
    let end = DecodeError::UnexpectedEnd { packet_type: S };
    assert_eq!(err(&[0x82, 6, 0, 1, 0, 9, b'a', 0]), end);
    assert_eq!(err(&[0x82, 5, 0, 1, 0, 1, b'a']), end);
    assert_eq!(err(&[0x82, 7, 0, 1, 0, 1, b'a', 0, 0]), end);
    assert_eq!(err(&[0x82, 1, 0]), end);
}

#[test]
fn unsubscribe_rules() {
    use PacketType::Unsubscribe as U;
    assert_eq!(err(&[0xA2, 2, 0, 1]), DecodeError::EmptyUnsubscribe);
    let error = TopicError::MisplacedSingleLevelWildcard;
    let expected = DecodeError::InvalidTopicFilter {
        packet_type: U,
        error,
    };
    assert_eq!(err(&[0xA2, 6, 0, 1, 0, 2, b'+', b'a']), expected);
    let end = DecodeError::UnexpectedEnd { packet_type: U };
    assert_eq!(err(&[0xA2, 5, 0, 1, 0, 2, b'a']), end);
    assert_eq!(err(&[0xA2, 6, 0, 1, 0, 1, b'a', 0]), end);
}

#[test]
fn suback_rules() {
    assert_eq!(err(&[0x90, 2, 0, 1]), DecodeError::EmptySubAck);
    for code in [3, 0x7F, 0x81, 0xFF] {
        assert_eq!(
            err(&[0x90, 4, 0, 1, 0, code]),
            DecodeError::InvalidSubAckReturnCode(code)
        );
    }
}

#[test]
fn connack_rules() {
    assert_eq!(err(&[0x20, 2, 2, 0]), DecodeError::InvalidConnAckFlags(2));
    assert_eq!(
        err(&[0x20, 2, 0x80, 0]),
        DecodeError::InvalidConnAckFlags(0x80)
    );
    for code in [6, 0x80, 0xFF] {
        assert_eq!(
            err(&[0x20, 2, 0, code]),
            DecodeError::InvalidConnectReturnCode(code)
        );
    }
}

#[test]
fn connect_flag_rules() {
    let client = [0, 1, b'c'];
    assert_eq!(
        err(&connect_bytes(0b0000_0011, &client)),
        DecodeError::ConnectReservedFlag
    );
    let without_will = DecodeError::WillFlagsWithoutWill;
    assert_eq!(
        err(&connect_bytes(0b0000_1000, &client)),
        without_will,
        "will QoS 1"
    );
    assert_eq!(
        err(&connect_bytes(0b0001_0000, &client)),
        without_will,
        "will QoS 2"
    );
    assert_eq!(
        err(&connect_bytes(0b0010_0000, &client)),
        without_will,
        "will retain"
    );
    let will = [0, 1, b'c', 0, 1, b'w', 0, 0];
    assert_eq!(
        err(&connect_bytes(0b0001_1100, &will)),
        DecodeError::InvalidWillQos
    );
    assert!(dec(&connect_bytes(0b0011_0100, &will)).unwrap().is_some());
    let password = DecodeError::PasswordWithoutUsername;
    assert_eq!(
        err(&connect_bytes(0b0100_0000, &[0, 1, b'c', 0, 1, b'p'])),
        password
    );
}

#[test]
fn connect_payload_rules() {
    use PacketType::Connect as C;
    let end = DecodeError::UnexpectedEnd { packet_type: C };
    // No client identifier; a will flag without will fields; a user name flag without one.
    assert_eq!(err(&connect_bytes(0, &[])), end);
    assert_eq!(err(&connect_bytes(0b0000_0100, &[0, 1, b'c'])), end);
    assert_eq!(err(&connect_bytes(0b1000_0000, &[0, 1, b'c'])), end);
    assert_eq!(
        err(&connect_bytes(0b1100_0000, &[0, 1, b'c', 0, 1, b'u'])),
        end
    );
    let trailing = DecodeError::TrailingBytes {
        packet_type: C,
        count: 2,
    };
    assert_eq!(err(&connect_bytes(0, &[0, 1, b'c', 0, 1])), trailing);
    let invalid = |field, error| DecodeError::InvalidString { field, error };
    let client_id = StringField::ClientId;
    assert_eq!(
        err(&connect_bytes(0, &[0, 2, b'c', 0xFF])),
        invalid(client_id, StringError::InvalidUtf8)
    );
    assert_eq!(
        err(&connect_bytes(0, &[0, 3, 0xED, 0xBF, 0xBF])),
        invalid(client_id, StringError::InvalidUtf8),
        "an encoded surrogate U+DFFF"
    );
    assert_eq!(
        err(&connect_bytes(0, &[0, 2, b'c', 0])),
        invalid(client_id, StringError::NullCharacter)
    );
    assert_eq!(
        err(&connect_bytes(0b1000_0000, &[0, 1, b'c', 0, 1, 0])),
        invalid(StringField::Username, StringError::NullCharacter)
    );
    assert_eq!(
        err(&connect_bytes(
            0b0000_0100,
            &[0, 1, b'c', 0, 3, b'a', b'/', b'#', 0, 0]
        )),
        DecodeError::InvalidWillTopic(TopicError::WildcardInName)
    );
    assert_eq!(
        err(&connect_bytes(0b0000_0100, &[0, 1, b'c', 0, 0, 0, 0])),
        DecodeError::InvalidWillTopic(TopicError::Empty)
    );
    // A non-character is allowed [1.5.3].
    let Some(Packet::Connect(c)) = dec(&connect_bytes(0, &[0, 3, 0xEF, 0xBF, 0xBF])).unwrap()
    else {
        panic!()
    };
    assert_eq!(c.client_id, "\u{FFFF}");
    let message = err(&connect_bytes(0, &[0, 2, b'c', 0])).to_string();
    assert_eq!(
        message,
        "client identifier in CONNECT: string contains the null character U+0000 [MQTT-1.5.3-2]"
    );
}

#[test]
fn connect_protocol_names_and_levels() {
    let with = |name: &[u8], level: u8| {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&[level, 0b10, 0, 60, 0, 1, b'c']);
        let mut bytes = vec![0x10, body.len() as u8];
        bytes.extend(body);
        dec(&bytes)
    };
    let version = |name, level| match with(name, level) {
        Ok(Some(Packet::Connect(c))) => c.protocol_version(),
        other => panic!("{other:?}"),
    };
    assert_eq!(version(b"MQTT", 4), Some(ProtocolVersion::V311));
    assert_eq!(version(b"MQIsdp", 3), Some(ProtocolVersion::V31));
    // Known layout, unknown version: decoded as sent, for the broker to refuse.
    assert_eq!(version(b"MQTT", 3), None);
    assert_eq!(version(b"HTTP", 4), None);
    // Other levels: the rest of the packet may not follow the 3.1.1 layout (an MQTT 5 CONNECT
    // has properties), so the decoder stops at the level and says what it saw.
    assert_eq!(
        with(b"MQTT", 5),
        Err(DecodeError::UnsupportedProtocolLevel {
            name: MqttString::from_static("MQTT"),
            level: 5
        })
    );
    let mqtt5 = [
        0x10, 17, 0, 4, b'M', b'Q', b'T', b'T', 5, 0b10, 0, 60, 3, 0x21, 0, 10, 0, 1, b'c',
    ];
    assert!(matches!(
        err(&mqtt5[..]),
        DecodeError::UnsupportedProtocolLevel { level: 5, .. }
    ));
    assert_eq!(
        with(b"MQ\0", 4),
        Err(DecodeError::InvalidString {
            field: StringField::ProtocolName,
            error: StringError::NullCharacter
        })
    );
}

#[test]
fn encode_refuses_what_cannot_be_sent() {
    let empty = |packet: Packet| {
        let packet_type = packet.packet_type();
        let mut buf = BytesMut::new();
        assert_eq!(
            encode(&packet, &mut buf),
            Err(EncodeError::Empty { packet_type })
        );
        assert!(buf.is_empty());
    };
    empty(
        Subscribe {
            packet_id: id(1),
            filters: vec![],
        }
        .into(),
    );
    empty(
        Unsubscribe {
            packet_id: id(1),
            filters: vec![],
        }
        .into(),
    );
    empty(
        SubAck {
            packet_id: id(1),
            return_codes: vec![],
        }
        .into(),
    );
    let long = Bytes::from(vec![0; 65_536]);
    let mut connect = Connect::new(MqttString::from_static("c"));
    connect.login = Some(Login {
        username: MqttString::from_static("u"),
        password: Some(long.clone()),
    });
    let too_long = |field| EncodeError::FieldTooLong { field, len: 65_536 };
    assert_eq!(
        encoded_len(&connect.clone().into()),
        Err(too_long(BinaryField::Password))
    );
    connect.login = None;
    connect.will = Some(Will {
        topic: TopicName::from_static("w"),
        payload: long,
        qos: QoS::AtMostOnce,
        retain: false,
    });
    assert_eq!(
        encoded_len(&connect.into()),
        Err(too_long(BinaryField::WillPayload))
    );
    // Zeroed memory that is never touched: the check only reads the length.
    let publish = Publish {
        qos: PublishQos::AtMostOnce,
        retain: false,
        topic: TopicName::from_static("t"),
        payload: vec![0; MAX_REMAINING_LENGTH - 2].into(),
    };
    assert_eq!(
        encoded_len(&publish.into()),
        Err(EncodeError::PacketTooLarge {
            packet_type: PacketType::Publish,
            remaining_length: MAX_REMAINING_LENGTH + 1,
        })
    );
}
