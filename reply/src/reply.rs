//! Request/reply: a small oneshot that works with every executor, and with none.
//!
//! A request message carries a [`Reply<T>`]; whoever asked holds the matching [`Asked<T>`] and
//! awaits it (it is a `Future`) or blocks on it with a timeout. A receiver may answer at once or
//! keep the `Reply` and answer from a later message. A `Reply` dropped unanswered (the receiver
//! forgot it, panicked, or its message became a dead letter) resolves the asker at once with
//! [`AskError::Dropped`]: an ask never hangs on a lost reply.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::signal::Signal;

/// Why an ask got no answer.
///
/// With the feature `serde` (which `hermes-cluster` turns on) it is `Serialize` and
/// `Deserialize`, so a message that carries an ask's outcome, as
/// `Msg::Answer(Result<T, AskError>)` from `Context::ask` in `hermes-core`, can
/// cross nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[non_exhaustive]
pub enum AskError {
    /// Hermes is shutting down or shut down, so the request was not sent.
    Closed,
    /// The [`Reply`] was dropped unanswered.
    Dropped,
    /// No answer came within the timeout.
    Timeout,
    /// Waiting here would block the thread that has to run the receivers.
    WouldDeadlock,
    /// The receiver, or its shard, is at capacity: the request was not sent.
    Full,
    /// The receiver lives on another node of a cluster that could not be reached.
    Unreachable,
}

impl fmt::Display for AskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AskError::Closed => "hermes is shutting down: it accepts no new requests",
            AskError::Dropped => {
                "the reply was dropped unanswered: the receiver did not answer, panicked, or the \
                 request became a dead letter (no receiver for the ID, factory failed, mailbox \
                 full); check the dead letters"
            }
            AskError::Timeout => {
                "no answer within the timeout: the receiver is slow, blocked or never answers; \
                 raise the timeout or check the receiver"
            }
            AskError::WouldDeadlock => {
                "blocking here would stop the runtime that runs the receivers (a current-thread \
                 runtime, or a receiver's own thread): await the ask instead"
            }
            AskError::Full => {
                "the receiver or its shard is at capacity, so the request was not sent: retry \
                 later, or raise the mailbox or inbox capacity"
            }
            AskError::Unreachable => {
                "the receiver lives on another node that could not be reached (it left the \
                 cluster, or the connection to NATS is down): retry once the cluster is healthy"
            }
        })
    }
}

impl std::error::Error for AskError {}

pub(crate) type Slot<T> = Signal<Result<T, AskError>>;

/// The answering side of a request: put it in a message, answer with [`send`](Reply::send).
///
/// ```
/// use hermes_reply::Reply;
///
/// let (reply, asked) = Reply::new();
/// std::thread::spawn(move || reply.send(42).unwrap());
/// assert_eq!(asked.wait(), Ok(42));
/// ```
pub struct Reply<T> {
    pub(crate) slot: Option<Arc<Slot<T>>>,
    /// Set when this reply was serialized into a message bound for another process: the
    /// answer will come back from there, so dropping this one says nothing.
    pub(crate) forwarded: std::sync::atomic::AtomicBool,
    /// A reply that came from another process: answering sends the answer back there.
    #[cfg(feature = "serde")]
    pub(crate) remote: Option<Box<crate::wire::RemoteReply<T>>>,
}

/// The asking side of a request: a `Future` of the answer, or wait for it with
/// [`wait_timeout`](Asked::wait_timeout).
#[must_use = "an Asked does nothing unless awaited or waited on"]
pub struct Asked<T> {
    slot: Arc<Slot<T>>,
}

impl<T> Reply<T> {
    /// A connected pair: answer through the `Reply`, get the answer from the `Asked`.
    pub fn new() -> (Reply<T>, Asked<T>) {
        let slot = Arc::new(Signal::default());
        (
            Reply {
                slot: Some(Arc::clone(&slot)),
                forwarded: std::sync::atomic::AtomicBool::new(false),
                #[cfg(feature = "serde")]
                remote: None,
            },
            Asked { slot },
        )
    }

    /// Answers the request. Gives the value back if the asker has already given up (dropped
    /// its [`Asked`], or its deadline passed first: then the asker got
    /// [`AskError::Timeout`] and this answer is not taken).
    pub fn send(mut self, value: T) -> Result<(), T> {
        #[cfg(feature = "serde")]
        if let Some(remote) = self.remote.take() {
            return (*remote).answer(value);
        }
        let Some(slot) = self.slot.take() else {
            return Err(value);
        };
        if !Self::wanted(&slot) {
            return Err(value);
        }
        slot.set(Ok(value)).map_err(|answer| match answer {
            Ok(value) => value,
            Err(_) => unreachable!("an answer is given back as it was sent"),
        })
    }

    /// True while the asker is still waiting (it has not timed out or dropped its `Asked`).
    pub fn is_wanted(&self) -> bool {
        #[cfg(feature = "serde")]
        if self.remote.is_some() {
            // The asker is on another node: it decides when the answer comes too late.
            return true;
        }
        self.slot.as_ref().is_some_and(Self::wanted)
    }

    fn wanted(slot: &Arc<Slot<T>>) -> bool {
        Arc::strong_count(slot) > 1
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        #[cfg(feature = "serde")]
        if let Some(remote) = self.remote.take() {
            if !*self.forwarded.get_mut() {
                (*remote).dropped();
            }
            return;
        }
        if *self.forwarded.get_mut() {
            // Serialized into a message for another process: the answer comes from there.
            return;
        }
        if let Some(slot) = self.slot.take() {
            // Already answered or expired: nothing to say.
            let _ = slot.set(Err(AskError::Dropped));
        }
    }
}

/// Ends an ask with [`AskError::Timeout`] unless an answer came first: the deadline's side of
/// a race with [`Reply::send`], decided once, so a reply is never accepted for an asker that
/// was told it timed out. Get one with [`Asked::expiry`]; it keeps nothing alive.
#[derive(Clone)]
pub struct Expiry(Weak<dyn Expire>);

/// A slot an [`Expiry`] can end.
trait Expire: Send + Sync {
    fn expire(&self) -> bool;
}

impl<T: Send> Expire for Slot<T> {
    fn expire(&self) -> bool {
        self.set(Err(AskError::Timeout)).is_ok()
    }
}

impl Expiry {
    /// Ends the ask with `Timeout` if it has no answer yet; true if it did.
    pub fn expire(&self) -> bool {
        self.0.upgrade().is_some_and(|slot| slot.expire())
    }
}

impl fmt::Debug for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expiry").finish_non_exhaustive()
    }
}

impl<T> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("wanted", &self.is_wanted())
            .finish()
    }
}

impl<T> Asked<T> {
    /// An ask that failed before it was sent.
    pub fn failed(error: AskError) -> Self {
        let slot = Arc::new(Signal::default());
        let _ = slot.set(Err(error));
        Asked { slot }
    }

    /// A handle that ends this ask with [`AskError::Timeout`] unless the answer comes first:
    /// for whoever keeps the deadline (the router, for asks between receivers).
    pub fn expiry(&self) -> Expiry
    where
        T: Send + 'static,
    {
        let slot: Arc<dyn Expire> = self.slot.clone();
        Expiry(Arc::downgrade(&slot))
    }

    /// Blocks until the answer comes, or `timeout` passes ([`AskError::Timeout`]).
    ///
    /// Do not call this on a thread that runs receivers (inside a receiver, or a current-thread
    /// async runtime that drives Hermes): await the `Asked` there instead.
    pub fn wait_timeout(self, timeout: Duration) -> Result<T, AskError> {
        let deadline = Instant::now().checked_add(timeout);
        self.wait_until(deadline)
    }

    /// Blocks until the answer comes. It always comes: a dropped [`Reply`] answers with
    /// [`AskError::Dropped`]. Prefer [`wait_timeout`](Asked::wait_timeout) as a hang guard.
    pub fn wait(self) -> Result<T, AskError> {
        self.wait_until(None)
    }

    fn wait_until(self, deadline: Option<Instant>) -> Result<T, AskError> {
        self.slot
            .wait(deadline, Option::take)
            .unwrap_or(Err(AskError::Timeout))
    }
}

impl<T> Future for Asked<T> {
    type Output = Result<T, AskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.slot.poll(cx, Option::take)
    }
}

impl<T> fmt::Debug for Asked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Asked").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_arrives() {
        let (reply, asked) = Reply::new();
        assert!(reply.is_wanted());
        reply.send("hi").unwrap();
        assert_eq!(asked.wait_timeout(Duration::from_secs(5)), Ok("hi"));
    }

    #[test]
    fn dropped_reply_resolves_at_once() {
        let (reply, asked) = Reply::<u8>::new();
        let t = std::thread::spawn(move || asked.wait());
        drop(reply);
        assert_eq!(t.join().unwrap(), Err(AskError::Dropped));
    }

    #[test]
    fn timeout_and_gone_asker() {
        let (reply, asked) = Reply::<u8>::new();
        assert_eq!(
            asked.wait_timeout(Duration::from_millis(1)),
            Err(AskError::Timeout)
        );
        assert!(!reply.is_wanted());
        assert_eq!(reply.send(7), Err(7));
    }

    #[test]
    fn failed_ask_resolves_with_its_error() {
        assert_eq!(
            Asked::<u8>::failed(AskError::Closed).wait(),
            Err(AskError::Closed)
        );
    }

    #[test]
    fn errors_say_what_to_do() {
        assert!(AskError::Timeout.to_string().contains("raise the timeout"));
        assert!(AskError::Dropped.to_string().contains("dead letters"));
    }
}
