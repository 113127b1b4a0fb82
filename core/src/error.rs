//! Errors and dead letters.

use std::fmt;
use std::sync::Arc;

use crate::{Addr, FactoryError, Recipient};

/// A send that the router refused; the message is given back.
#[derive(PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError<M> {
    /// The router is closing or closed; it accepts no outside messages.
    Closed(M),
    /// The receiver's bounded mailbox is full; retry later or raise `mailbox_capacity`.
    Full(M),
    /// The handle's receiver is gone, or is of another kind than the message; send by ID
    /// instead.
    Stale(M),
    /// The receiver lives on another node of a cluster that cannot be reached now.
    Unreachable(M),
}

impl<M> SendError<M> {
    /// The message that was not sent.
    pub fn into_inner(self) -> M {
        match self {
            SendError::Closed(m)
            | SendError::Full(m)
            | SendError::Stale(m)
            | SendError::Unreachable(m) => m,
        }
    }

    /// The same error, with the message mapped by `f`.
    pub fn map<N>(self, f: impl FnOnce(M) -> N) -> SendError<N> {
        match self {
            SendError::Closed(m) => SendError::Closed(f(m)),
            SendError::Full(m) => SendError::Full(f(m)),
            SendError::Stale(m) => SendError::Stale(f(m)),
            SendError::Unreachable(m) => SendError::Unreachable(f(m)),
        }
    }

    /// The reason, without the message.
    pub fn kind(&self) -> SendErrorKind {
        match self {
            SendError::Closed(_) => SendErrorKind::Closed,
            SendError::Full(_) => SendErrorKind::Full,
            SendError::Stale(_) => SendErrorKind::Stale,
            SendError::Unreachable(_) => SendErrorKind::Unreachable,
        }
    }
}

/// Why a send was refused, without the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SendErrorKind {
    /// See [`SendError::Closed`].
    Closed,
    /// See [`SendError::Full`].
    Full,
    /// See [`SendError::Stale`].
    Stale,
    /// See [`SendError::Unreachable`].
    Unreachable,
}

impl fmt::Display for SendErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendErrorKind::Closed => "hermes is closed: it accepts no new messages",
            SendErrorKind::Full => {
                "the receiver's mailbox is full: retry later or raise mailbox_capacity"
            }
            SendErrorKind::Stale => {
                "the handle is stale: its receiver is gone (or is of another kind than the \
                 message); send by ID"
            }
            SendErrorKind::Unreachable => {
                "the receiver lives on another node that cannot be reached now: retry once \
                 the cluster is healthy"
            }
        })
    }
}

impl<M> fmt::Debug for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SendError::{:?}(..)", self.kind())
    }
}

impl<M> fmt::Display for SendError<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.kind(), f)
    }
}

impl<M> std::error::Error for SendError<M> {}

/// A message that could not be delivered.
pub struct DeadLetter<K, M> {
    /// Where it was going.
    pub recipient: Recipient<K>,
    /// The message; `None` only when a handler panicked on it (the handler consumed it).
    pub message: Option<M>,
    /// Why it was not delivered.
    pub reason: DeadLetterReason,
}

impl<K: fmt::Debug, M> fmt::Debug for DeadLetter<K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadLetter")
            .field("recipient", &self.recipient)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Why a message became a dead letter.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// The factory has no receiver for the ID.
    NoReceiver,
    /// The factory failed, or the new receiver's `activated` hook panicked.
    FactoryFailed(FactoryError),
    /// The router was closing; the receiver was not live to take it.
    Closed,
    /// The recipient's bounded mailbox was full.
    Full,
    /// The handle was stale, or addressed a receiver of another kind than the message's (or
    /// a task's outcome came back after its receiver instance was gone, or an executor's
    /// placement put the ID on no shard it has).
    Stale,
    /// The handler panicked on this message; the panic's message is kept.
    Panicked(Arc<str>),
    /// The router was closing and had delivered its
    /// [drain limit](crate::Config::drain_limit) of messages.
    DrainLimit,
    /// The recipient lives on another node of a cluster that could not be reached: no
    /// transport, the node left the cluster, or the transport refused the message.
    Unreachable,
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadLetterReason::NoReceiver => f.write_str("the factory has no receiver for this ID"),
            DeadLetterReason::FactoryFailed(e) => write!(f, "activation failed: {e}"),
            DeadLetterReason::Closed => f.write_str("hermes was closing"),
            DeadLetterReason::Full => f.write_str("the recipient's mailbox was full"),
            DeadLetterReason::Stale => f.write_str(
                "the handle was stale (its receiver gone, or of another kind than the message: \
                 send by ID), or placement put the ID on no shard there is (fix the placement)",
            ),
            DeadLetterReason::Panicked(p) => write!(f, "the handler panicked: {p}"),
            DeadLetterReason::DrainLimit => f.write_str(
                "hermes was closing and had delivered its drain limit of messages \
                 (Config::drain_limit): receivers that keep messaging each other stop there",
            ),
            DeadLetterReason::Unreachable => f.write_str(
                "the recipient lives on another node that could not be reached (no transport, \
                 the node left the cluster, or its queue was full): check the cluster's \
                 membership and the NATS connection",
            ),
        }
    }
}

/// A command-handling call that does not fit the receiver's state: a driver bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// No live receiver behind this handle.
    Stale(Addr),
    /// The receiver is not in the state this call needs (e.g. `run` without a `Run` command).
    WrongState(Addr),
    /// A `Done` was checked in to a router it was not checked out from.
    NotCheckedOut(Addr),
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::Stale(a) => write!(f, "{a:?} is stale: handle commands once each"),
            CommandError::WrongState(a) => write!(
                f,
                "{a:?} is not in the state this call needs: act only on the router's commands"
            ),
            CommandError::NotCheckedOut(a) => write!(
                f,
                "{a:?} was not checked out: check work in to the router it came from"
            ),
        }
    }
}

impl std::error::Error for CommandError {}
