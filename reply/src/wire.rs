//! Replies that cross a process boundary (feature `serde`).
//!
//! A [`Reply<T>`](crate::Reply) inside a message bound for another node cannot travel as
//! itself: its asker waits in this process. Serialized, it becomes a *token*: the origin
//! node's number and a number the local [`Exchange`] handed out when it parked the real
//! reply. On the other node the token deserializes to a reply whose
//! [`send`](crate::Reply::send) encodes the answer ([postcard](https://docs.rs/postcard)) and
//! hands it to that node's `Exchange`, which carries it back; dropped unanswered, it sends
//! [`AskError::Dropped`] back instead. An answer that never comes is the asker's timeout.
//!
//! Serializing or deserializing a `Reply` needs an `Exchange`: the transport installs one
//! with [`with_exchange`] around its encoding and decoding. Outside of it, a `Reply` does not
//! serialize (an error, never a panic).

use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{AskError, Reply};

/// Answers a parked reply with bytes from another node (`Err` if the reply came back as an
/// error or the answer was dropped there).
pub type Deliver = Box<dyn FnOnce(Result<Vec<u8>, AskError>) + Send>;

/// Carries replies between nodes: the cluster's transport implements it.
pub trait Exchange: Send + Sync + 'static {
    /// A local reply is leaving in a message: keep `deliver` (which answers the asker) until
    /// the answer comes back, and return `(this node, token)` to name it.
    fn park(&self, deliver: Deliver) -> (u64, u64);

    /// A reply whose asker is on node `origin` was answered (or dropped) here: send `answer`
    /// back to it.
    fn answer(&self, origin: u64, token: u64, answer: Result<Vec<u8>, AskError>);
}

thread_local! {
    static EXCHANGE: RefCell<Option<Arc<dyn Exchange>>> = const { RefCell::new(None) };
}

/// Runs `f` (the transport's encoding or decoding of messages) with `exchange` as the one
/// replies serialize through.
pub fn with_exchange<R>(exchange: &Arc<dyn Exchange>, f: impl FnOnce() -> R) -> R {
    let previous = EXCHANGE.with(|e| e.borrow_mut().replace(Arc::clone(exchange)));
    let result = f();
    EXCHANGE.with(|e| *e.borrow_mut() = previous);
    result
}

fn current() -> Option<Arc<dyn Exchange>> {
    EXCHANGE.with(|e| e.borrow().clone())
}

/// What a reply looks like on the wire.
#[derive(Serialize, Deserialize)]
struct Token {
    origin: u64,
    token: u64,
}

/// A reply whose asker is on another node.
pub(crate) struct RemoteReply<T> {
    exchange: Arc<dyn Exchange>,
    origin: u64,
    token: u64,
    encode: fn(&T) -> Result<Vec<u8>, postcard::Error>,
}

impl<T> RemoteReply<T> {
    pub(crate) fn answer(self, value: T) -> Result<(), T> {
        match (self.encode)(&value) {
            Ok(bytes) => {
                self.exchange.answer(self.origin, self.token, Ok(bytes));
                Ok(())
            }
            Err(_) => {
                // The asker learns its answer was lost rather than waiting for its timeout.
                self.exchange
                    .answer(self.origin, self.token, Err(AskError::Dropped));
                Err(value)
            }
        }
    }

    pub(crate) fn dropped(self) {
        self.exchange
            .answer(self.origin, self.token, Err(AskError::Dropped));
    }
}

impl<T> Serialize for Reply<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        if let Some(remote) = &self.remote {
            // Passed on again: the asker stays where it is.
            self.forwarded.store(true, Ordering::Relaxed);
            return Token {
                origin: remote.origin,
                token: remote.token,
            }
            .serialize(serializer);
        }
        let Some(exchange) = current() else {
            return Err(S::Error::custom(
                "a Reply serializes only inside a cluster transport (hermes_reply::wire::\
                 with_exchange): send it through Hermes",
            ));
        };
        let Some(slot) = self.slot.clone() else {
            return Err(S::Error::custom("this Reply was already answered"));
        };
        let deliver: Deliver = Box::new(move |answer| {
            let answer = match answer {
                Ok(bytes) => postcard::from_bytes::<T>(&bytes).map_err(|_| AskError::Dropped),
                Err(e) => Err(e),
            };
            let _ = slot.set(answer);
        });
        let (origin, token) = exchange.park(deliver);
        self.forwarded.store(true, Ordering::Relaxed);
        Token { origin, token }.serialize(serializer)
    }
}

impl<'de, T> Deserialize<'de> for Reply<T>
where
    T: Serialize + DeserializeOwned + Send + 'static,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let Token { origin, token } = Token::deserialize(deserializer)?;
        let Some(exchange) = current() else {
            return Err(D::Error::custom(
                "a Reply deserializes only inside a cluster transport \
                 (hermes_reply::wire::with_exchange)",
            ));
        };
        Ok(Reply {
            slot: None,
            forwarded: std::sync::atomic::AtomicBool::new(false),
            remote: Some(Box::new(RemoteReply {
                exchange,
                origin,
                token,
                encode: |value| postcard::to_allocvec(value),
            })),
        })
    }
}

impl<T> fmt::Debug for RemoteReply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteReply")
            .field("origin", &self.origin)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// Two "nodes" in one process: parked replies by token, answers delivered directly.
    #[derive(Default)]
    struct Loopback {
        parked: Mutex<HashMap<u64, Deliver>>,
        next: Mutex<u64>,
    }

    impl Exchange for Loopback {
        fn park(&self, deliver: Deliver) -> (u64, u64) {
            let mut next = self.next.lock().unwrap();
            *next += 1;
            self.parked.lock().unwrap().insert(*next, deliver);
            (1, *next)
        }
        fn answer(&self, _origin: u64, token: u64, answer: Result<Vec<u8>, AskError>) {
            if let Some(deliver) = self.parked.lock().unwrap().remove(&token) {
                deliver(answer);
            }
        }
    }

    #[test]
    fn a_reply_crosses_and_answers() {
        let exchange: Arc<dyn Exchange> = Arc::new(Loopback::default());
        let (reply, asked) = Reply::<u32>::new();
        let bytes = with_exchange(&exchange, || postcard::to_allocvec(&reply)).unwrap();
        drop(reply); // the original is forwarded: dropping it answers nothing
        let remote: Reply<u32> = with_exchange(&exchange, || postcard::from_bytes(&bytes)).unwrap();
        assert!(remote.is_wanted());
        remote.send(42).unwrap();
        assert_eq!(
            asked.wait_timeout(std::time::Duration::from_secs(1)),
            Ok(42)
        );
    }

    #[test]
    fn a_remote_reply_dropped_answers_dropped() {
        let exchange: Arc<dyn Exchange> = Arc::new(Loopback::default());
        let (reply, asked) = Reply::<u32>::new();
        let bytes = with_exchange(&exchange, || postcard::to_allocvec(&reply)).unwrap();
        drop(reply);
        let remote: Reply<u32> = with_exchange(&exchange, || postcard::from_bytes(&bytes)).unwrap();
        drop(remote);
        assert_eq!(asked.wait(), Err(AskError::Dropped));
    }

    #[test]
    fn no_exchange_is_an_error_not_a_panic() {
        let (reply, _asked) = Reply::<u32>::new();
        assert!(postcard::to_allocvec(&reply).is_err());
        assert!(postcard::from_bytes::<Reply<u32>>(&[1, 2]).is_err());
    }
}
