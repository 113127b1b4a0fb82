//! Packets to bytes and back: a sans-IO, incremental codec.
//!
//! # Decoding
//!
//! [`decode`] takes the bytes read so far from a connection. It returns `Ok(None)` until a
//! whole packet is there, then the packet, removed from the buffer. Its payload and strings are
//! slices of that buffer (`BytesMut::split_to(..).freeze()`), not copies.
//!
//! It rejects every malformed packet with a [`DecodeError`] that says what is wrong and cites
//! the rule, as early as it can: the packet type and flags with the first byte, the size as soon
//! as the remaining length is read, and before anything is allocated for the packet. Its only
//! allocations are:
//!
//! - room for the rest of a packet known to fit `max_packet_size`, reserved in the caller's
//!   buffer (which `BytesMut` may round up as a `Vec` does);
//! - the `Vec` of entries of a SUBSCRIBE, UNSUBSCRIBE or SUBACK, at its exact size: a bounded
//!   multiple of the packet's size, as an entry takes at least 3 bytes on the wire and at most
//!   40 in memory.
//!
//! MQTT 3.1.1 does not require a remaining length in its shortest form (5.0 does), so the
//! decoder accepts any; the encoder writes the shortest.
//!
//! # Encoding
//!
//! [`encode`] appends a packet to a buffer, reserving its exact [`encoded_len`] once.
//! [`encode_publish_header`] writes a PUBLISH without its payload, for a writer that sends the
//! shared payload after it. For every packet that the decoder accepts,
//! `decode(encode(p)) == p`.
//!
//! ```
//! use bytes::BytesMut;
//! use hermes_mqtt::codec::{decode, encode};
//! use hermes_mqtt::Packet;
//!
//! let mut buf = BytesMut::new();
//! encode(&Packet::PingReq, &mut buf).unwrap();
//! assert_eq!(&buf[..], [0xC0, 0x00]);
//!
//! let mut partial = BytesMut::from(&buf[..1]);
//! assert_eq!(decode(&mut partial, 1024), Ok(None));
//! partial.extend_from_slice(&buf[1..]);
//! assert_eq!(decode(&mut partial, 1024), Ok(Some(Packet::PingReq)));
//! assert!(partial.is_empty());
//! ```

mod decode;
mod encode;
mod error;

pub use decode::decode;
pub use encode::{encode, encode_publish_header, encoded_len};
pub use error::{BinaryField, DecodeError, EncodeError, StringField};

/// The largest remaining length [2.2.3]: four bytes of seven bits.
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// The largest packet: a fixed header of five bytes and the largest remaining length.
pub const MAX_PACKET_SIZE: usize = 1 + 4 + MAX_REMAINING_LENGTH;
