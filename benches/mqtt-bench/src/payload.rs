//! The payload of every message the generator publishes: who sent it, its number in its
//! topic's sequence, and when it was written, padded to the size asked for.
//!
//! ```text
//! "HMB1" | publisher: u32 | sequence: u64 | sent at: u64 (ns since the run's epoch) | padding
//! ```

use std::sync::OnceLock;
use std::time::Instant;

use bytes::{BufMut, BytesMut};

/// The bytes every payload starts with.
const MAGIC: [u8; 4] = *b"HMB1";

/// The smallest payload: the stamp without padding.
pub const MIN_SIZE: usize = 24;

/// What a payload says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The publisher's number in the scenario.
    pub publisher: u32,
    /// The message's number in its (publisher, topic) sequence, from 0.
    pub seq: u64,
    /// When it was written: nanoseconds since [`now_ns`]'s epoch.
    pub sent_ns: u64,
}

/// Appends a payload of `size` bytes (at least [`MIN_SIZE`]).
pub fn put(dst: &mut BytesMut, stamp: Stamp, size: usize) {
    dst.put_slice(&MAGIC);
    dst.put_u32(stamp.publisher);
    dst.put_u64(stamp.seq);
    dst.put_u64(stamp.sent_ns);
    dst.put_bytes(0, size.saturating_sub(MIN_SIZE));
}

/// Reads a payload; `None` if it is not one of the generator's.
pub fn read(payload: &[u8]) -> Option<Stamp> {
    if payload.len() < MIN_SIZE || payload[..4] != MAGIC {
        return None;
    }
    let u32_at = |i: usize| {
        payload
            .get(i..i + 4)?
            .try_into()
            .ok()
            .map(u32::from_be_bytes)
    };
    let u64_at = |i: usize| {
        payload
            .get(i..i + 8)?
            .try_into()
            .ok()
            .map(u64::from_be_bytes)
    };
    Some(Stamp {
        publisher: u32_at(4)?,
        seq: u64_at(8)?,
        sent_ns: u64_at(16)?,
    })
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since the process's epoch, on the monotonic clock that every task shares.
pub fn now_ns() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let stamp = Stamp {
            publisher: 7,
            seq: 1 << 40,
            sent_ns: 123_456_789,
        };
        let mut buf = BytesMut::new();
        put(&mut buf, stamp, 64);
        assert_eq!(buf.len(), 64);
        assert_eq!(read(&buf), Some(stamp));
        assert_eq!(read(&buf[..23]), None);
        assert_eq!(read(b"something else entirely"), None);
    }
}
