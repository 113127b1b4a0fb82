//! `arbitrary::Arbitrary` for the packets (feature `arbitrary`): every value it builds is one
//! that the decoder accepts, so `decode(encode(p)) == p` can be checked on it. The fuzz target
//! `mqtt_codec` and the round-trip test below use it.

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::Bytes;

use crate::packet::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, PacketId, Publish, PublishQos, QoS, SubAck,
    Subscribe, SubscribeReturnCode, Unsubscribe, Will,
};
use crate::string::{MAX_STRING_LEN, MqttString};
use crate::topic::{TopicFilter, TopicName};

/// Text without U+0000 and the characters in `drop`, cut to at most `MAX_STRING_LEN` bytes.
fn text(u: &mut Unstructured<'_>, drop: &[char]) -> Result<String> {
    let mut s = String::arbitrary(u)?;
    s.retain(|c| c != '\0' && !drop.contains(&c));
    let mut end = s.len().min(MAX_STRING_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    Ok(s)
}

/// Binary data of at most `MAX_STRING_LEN` bytes.
fn binary(u: &mut Unstructured<'_>) -> Result<Bytes> {
    let mut v = Vec::<u8>::arbitrary(u)?;
    v.truncate(MAX_STRING_LEN);
    Ok(v.into())
}

fn packet_id(u: &mut Unstructured<'_>) -> Result<PacketId> {
    Ok(PacketId::new(u16::arbitrary(u)?).unwrap_or(PacketId::MIN))
}

/// Picks one of `values`.
fn one_of<T: Copy>(u: &mut Unstructured<'_>, values: &[T]) -> Result<T> {
    u.choose(values).copied()
}

impl<'a> Arbitrary<'a> for QoS {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        one_of(u, &[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }
}

impl<'a> Arbitrary<'a> for MqttString {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        MqttString::try_from(text(u, &[])?).map_err(|_| arbitrary::Error::IncorrectFormat)
    }
}

impl<'a> Arbitrary<'a> for TopicName {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut s = text(u, &['+', '#'])?;
        if s.is_empty() {
            s.push('t');
        }
        TopicName::try_from(s).map_err(|_| arbitrary::Error::IncorrectFormat)
    }
}

impl<'a> Arbitrary<'a> for TopicFilter {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut levels = Vec::new();
        for _ in 0..u.int_in_range(1..=6)? {
            levels.push(match u.int_in_range(0..=3)? {
                0 => "+".to_owned(),
                _ => text(u, &['+', '#', '/'])?,
            });
        }
        if bool::arbitrary(u)? {
            levels.push("#".to_owned());
        }
        let mut s = levels.join("/");
        if s.is_empty() || s.len() > MAX_STRING_LEN {
            s = "f".to_owned();
        }
        TopicFilter::try_from(s).map_err(|_| arbitrary::Error::IncorrectFormat)
    }
}

impl<'a> Arbitrary<'a> for PublishQos {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(PublishQos::new(
            QoS::arbitrary(u)?,
            packet_id(u)?,
            bool::arbitrary(u)?,
        ))
    }
}

impl<'a> Arbitrary<'a> for Publish {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Publish {
            qos: PublishQos::arbitrary(u)?,
            retain: bool::arbitrary(u)?,
            topic: TopicName::arbitrary(u)?,
            payload: Vec::<u8>::arbitrary(u)?.into(),
        })
    }
}

impl<'a> Arbitrary<'a> for Will {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Will {
            topic: TopicName::arbitrary(u)?,
            payload: binary(u)?,
            qos: QoS::arbitrary(u)?,
            retain: bool::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Login {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Login {
            username: MqttString::arbitrary(u)?,
            password: if bool::arbitrary(u)? {
                Some(binary(u)?)
            } else {
                None
            },
        })
    }
}

impl<'a> Arbitrary<'a> for Connect {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        // The decoder knows the layout of levels 3 and 4, and keeps any name with them.
        let (protocol_name, protocol_level) = match u.int_in_range(0..=2)? {
            0 => (MqttString::from_static("MQTT"), 4),
            1 => (MqttString::from_static("MQIsdp"), 3),
            _ => (MqttString::arbitrary(u)?, one_of(u, &[3, 4])?),
        };
        Ok(Connect {
            protocol_name,
            protocol_level,
            clean_session: bool::arbitrary(u)?,
            keep_alive: u16::arbitrary(u)?,
            client_id: MqttString::arbitrary(u)?,
            will: Option::<Will>::arbitrary(u)?,
            login: Option::<Login>::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for ConnectReturnCode {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let code = u.int_in_range(0..=5)?;
        ConnectReturnCode::from_u8(code).ok_or(arbitrary::Error::IncorrectFormat)
    }
}

impl<'a> Arbitrary<'a> for ConnAck {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(ConnAck {
            session_present: bool::arbitrary(u)?,
            code: ConnectReturnCode::arbitrary(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for SubscribeReturnCode {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match Option::<QoS>::arbitrary(u)? {
            Some(qos) => SubscribeReturnCode::Granted(qos),
            None => SubscribeReturnCode::Failure,
        })
    }
}

/// One or more `T`.
fn non_empty<'a, T: Arbitrary<'a>>(u: &mut Unstructured<'a>) -> Result<Vec<T>> {
    let mut v = vec![T::arbitrary(u)?];
    for item in u.arbitrary_iter::<T>()? {
        v.push(item?);
    }
    Ok(v)
}

impl<'a> Arbitrary<'a> for Subscribe {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Subscribe {
            packet_id: packet_id(u)?,
            filters: non_empty(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for SubAck {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(SubAck {
            packet_id: packet_id(u)?,
            return_codes: non_empty(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Unsubscribe {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(Unsubscribe {
            packet_id: packet_id(u)?,
            filters: non_empty(u)?,
        })
    }
}

impl<'a> Arbitrary<'a> for Packet {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        Ok(match u.int_in_range(0..=13)? {
            0 => Packet::Connect(Box::new(Connect::arbitrary(u)?)),
            1 => Packet::ConnAck(ConnAck::arbitrary(u)?),
            2 => Packet::Publish(Publish::arbitrary(u)?),
            3 => Packet::PubAck(packet_id(u)?),
            4 => Packet::PubRec(packet_id(u)?),
            5 => Packet::PubRel(packet_id(u)?),
            6 => Packet::PubComp(packet_id(u)?),
            7 => Packet::Subscribe(Subscribe::arbitrary(u)?),
            8 => Packet::SubAck(SubAck::arbitrary(u)?),
            9 => Packet::Unsubscribe(Unsubscribe::arbitrary(u)?),
            10 => Packet::UnsubAck(packet_id(u)?),
            11 => Packet::PingReq,
            12 => Packet::PingResp,
            _ => Packet::Disconnect,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::codec::{MAX_PACKET_SIZE, decode, encode, encoded_len};

    /// splitmix64: a small deterministic source of test inputs.
    fn next(state: &mut u64) -> u64 {
        *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// decode(encode(p)) == p on generated packets, decoded whole and from every cut point.
    #[test]
    fn round_trip_generated_packets() {
        let mut state = 42;
        let mut seen = [0usize; 15];
        for _ in 0..3000 {
            let len = (next(&mut state) % 600) as usize;
            let input: Vec<u8> = (0..len).map(|_| next(&mut state) as u8).collect();
            let Ok(packet) = Packet::arbitrary(&mut Unstructured::new(&input)) else {
                continue;
            };
            seen[packet.packet_type() as usize] += 1;
            let mut wire = BytesMut::new();
            encode(&packet, &mut wire).unwrap();
            assert_eq!(encoded_len(&packet).unwrap(), wire.len());
            for cut in [0, 1, 2, wire.len() / 2, wire.len() - 1]
                .into_iter()
                .filter(|&c| c < wire.len())
            {
                let mut partial = BytesMut::from(&wire[..cut]);
                assert_eq!(
                    decode(&mut partial, MAX_PACKET_SIZE),
                    Ok(None),
                    "{packet:?}"
                );
                partial.extend_from_slice(&wire[cut..]);
                let decoded = decode(&mut partial, MAX_PACKET_SIZE);
                assert_eq!(decoded, Ok(Some(packet.clone())));
                assert!(partial.is_empty());
            }
        }
        // Every packet type came up.
        assert!(seen[1..].iter().all(|&n| n > 50), "{seen:?}");
    }
}
