//! The wire format between nodes: postcard-encoded frames on one NATS subject per node.
//!
//! ```text
//! Frame { version: u8 = 1, from: u64 (NodeId), items: [bytes] }      one NATS message
//! Item  = Message { to: K, msg: M, hops: u8 }                          a send to an ID there
//!       | Answer  { token: u64, answer: Ok(bytes) | Err(code) }        an ask's answer coming home
//! ```
//!
//! Items are encoded one by one inside the frame, so that one item that does not decode (a
//! node running another version of the application, a corrupted payload) is dropped and
//! logged alone. A [`Reply`](hermes_reply::Reply) inside a message is a token (origin node,
//! number), see [`hermes_reply::wire`].

use hermes_reply::AskError;
use serde::{Deserialize, Serialize};

/// The format version this build writes and reads.
pub(crate) const VERSION: u8 = 1;

/// Most hops a message makes between nodes whose views of the membership disagree, before it
/// is a dead letter.
pub(crate) const MAX_HOPS: u8 = 8;

/// Most bytes a frame adds to its items' (version, sender, item count).
pub(crate) const FRAME_OVERHEAD: usize = 16;

/// Most bytes an item adds in a frame (its length).
pub(crate) const ITEM_OVERHEAD: usize = 5;

/// One NATS message.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) struct Frame {
    pub(crate) version: u8,
    pub(crate) from: u64,
    pub(crate) items: Vec<Vec<u8>>,
}

/// One item of a frame.
#[derive(Serialize, Deserialize)]
pub(crate) enum Item<K, M> {
    Message {
        to: K,
        msg: M,
        hops: u8,
    },
    Answer {
        token: u64,
        answer: Result<Vec<u8>, u8>,
    },
}

/// An ask's error as a byte on the wire.
pub(crate) fn error_code(e: AskError) -> u8 {
    match e {
        AskError::Closed => 1,
        AskError::Dropped => 2,
        AskError::Timeout => 3,
        AskError::Full => 5,
        AskError::Unreachable => 6,
        _ => 2,
    }
}

/// An ask's error from its byte; unknown codes read as `Dropped`.
pub(crate) fn ask_error(code: u8) -> AskError {
    match code {
        1 => AskError::Closed,
        3 => AskError::Timeout,
        5 => AskError::Full,
        6 => AskError::Unreachable,
        _ => AskError::Dropped,
    }
}
