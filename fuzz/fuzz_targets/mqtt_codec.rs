//! The MQTT codec of hermes-mqtt. The first input byte picks a mode:
//!
//! - even: the rest is raw bytes from a client, fed to `decode` in pieces under a small size
//!   limit. Decoding must not panic; each call's peak allocation must stay within the limit's
//!   bound (a counting global allocator measures it); a decoded packet must encode to the same
//!   bytes it came from; and decoding piece by piece into one buffer must give what decoding
//!   each prefix afresh gives.
//! - odd: the rest drives `Arbitrary` to build a valid packet, which must come back from
//!   `decode(encode(p))`, also when its bytes arrive in two pieces.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use arbitrary::{Arbitrary, Unstructured};
use bytes::BytesMut;
use hermes_mqtt::codec::{DecodeError, MAX_PACKET_SIZE, decode, encode, encoded_len};
use hermes_mqtt::{Packet, QoS, TopicFilter};
use libfuzzer_sys::fuzz_target;

/// Counts the bytes allocated through Rust and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Both blocks may be live while the bytes move.
            grew(new_size);
            LIVE.fetch_sub(layout.size(), Relaxed);
        }
        new
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns how far the allocated bytes peaked above where they started.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.load(Relaxed);
    PEAK.store(start, Relaxed);
    let out = f();
    (out, PEAK.load(Relaxed).saturating_sub(start))
}

/// Bookkeeping of the allocator and of `BytesMut` (the shared header of a split buffer).
const SLACK: usize = 512;

/// The most one `decode` call may allocate under limit `max`, given a buffer whose capacity is
/// its length: room for the rest of the packet, which a `Vec` may double, and the entries of a
/// SUBSCRIBE, UNSUBSCRIBE or SUBACK, each at least 3 bytes on the wire.
fn allocation_bound(max: usize) -> usize {
    2 * max + max / 3 * size_of::<(TopicFilter, QoS)>() + SLACK
}

/// The bytes after the fixed header.
fn body(packet: &[u8]) -> &[u8] {
    let length_bytes = packet.iter().skip(1).take_while(|&&b| b & 0x80 != 0).count() + 1;
    &packet[1 + length_bytes..]
}

/// One decode call's outcome, comparable across the two ways of feeding the decoder.
type Outcome = Result<Packet, DecodeError>;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        raw(mode, data);
    } else {
        round_trip(data);
    }
});

fn raw(mode: u8, data: &[u8]) {
    let Some((&piece, data)) = data.split_first() else {
        return;
    };
    // A small limit, so that declared lengths often go past it.
    let max = 2 + usize::from(mode >> 1) * 32;
    let piece = 1 + usize::from(piece);
    let fresh = decode_afresh(data, piece, max);
    let reused = decode_reusing(data, piece, max);
    assert_eq!(fresh, reused, "piece by piece into one buffer");
}

/// Feeds `data` by `piece` bytes, decoding each time from a new buffer that holds exactly the
/// undecoded bytes, so that the allocation of every call can be bounded.
fn decode_afresh(data: &[u8], piece: usize, max: usize) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut pending = Vec::new();
    for chunk in data.chunks(piece) {
        pending.extend_from_slice(chunk);
        loop {
            let mut buf = BytesMut::with_capacity(pending.len());
            buf.extend_from_slice(&pending);
            let (result, growth) = peak_growth(|| decode(&mut buf, max));
            let bound = match result {
                Ok(None) => 2 * max + SLACK,
                _ => allocation_bound(max),
            };
            assert!(growth <= bound, "decode allocated {growth} bytes, limit {max}: {result:?}");
            match result {
                Ok(None) => {
                    assert_eq!(buf.len(), pending.len());
                    break;
                }
                Ok(Some(packet)) => {
                    let consumed = pending.len() - buf.len();
                    let frame = &pending[..consumed];
                    assert!(consumed <= max);
                    check_encoding(&packet, frame);
                    pending.drain(..consumed);
                    outcomes.push(Ok(packet));
                }
                Err(e) => {
                    if let DecodeError::PacketTooLarge { size, max: m, .. } = e {
                        assert!(size > max && m == max);
                    }
                    outcomes.push(Err(e));
                    return outcomes;
                }
            }
        }
    }
    outcomes
}

/// Feeds `data` by `piece` bytes into one buffer, as a connection would.
fn decode_reusing(data: &[u8], piece: usize, max: usize) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    let mut buf = BytesMut::new();
    for chunk in data.chunks(piece) {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&mut buf, max) {
                Ok(None) => break,
                Ok(Some(packet)) => outcomes.push(Ok(packet)),
                Err(e) => {
                    outcomes.push(Err(e));
                    return outcomes;
                }
            }
        }
    }
    outcomes
}

/// A decoded packet encodes to the bytes it came from (but for a remaining length that was not
/// in its shortest form, which 3.1.1 allows), and decodes back to itself.
fn check_encoding(packet: &Packet, frame: &[u8]) {
    let mut wire = BytesMut::new();
    encode(packet, &mut wire).expect("a decoded packet encodes");
    assert_eq!(encoded_len(packet), Ok(wire.len()));
    assert_eq!(wire[0], frame[0], "first byte of {packet:?}");
    assert_eq!(body(&wire), body(frame), "body of {packet:?}");
    assert_eq!(decode(&mut wire, MAX_PACKET_SIZE), Ok(Some(packet.clone())));
}

fn round_trip(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let Ok(packet) = Packet::arbitrary(&mut u) else {
        return;
    };
    let mut wire = BytesMut::new();
    encode(&packet, &mut wire).expect("a generated packet encodes");
    let len = wire.len();
    assert_eq!(encoded_len(&packet), Ok(len));
    // Too large for a limit one byte short.
    let mut short = wire.clone();
    assert!(matches!(
        decode(&mut short, len - 1),
        Err(DecodeError::PacketTooLarge { .. })
    ));
    // In two pieces.
    let cut = u.int_in_range(0..=len - 1).unwrap_or(0);
    let mut buf = BytesMut::from(&wire[..cut]);
    assert_eq!(decode(&mut buf, len), Ok(None));
    buf.extend_from_slice(&wire[cut..]);
    assert_eq!(decode(&mut buf, len), Ok(Some(packet)));
    assert!(buf.is_empty());
}
