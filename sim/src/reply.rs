//! A tiny reply slot: the simulation's request/reply, answered synchronously.

use std::fmt;
use std::sync::{Arc, Mutex};

use hermes_core::SendErrorKind;

/// Why [`Sim::ask`](crate::Sim::ask) got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AskError {
    /// The router refused the request (closed, mailbox full); it was not sent.
    Refused(SendErrorKind),
    /// The [`Reply`] was dropped unanswered (the receiver forgot it or panicked).
    Dropped,
    /// Nothing was left to run (within the time allowed) and no answer came: the request may be
    /// a dead letter (see [`Sim::dead_letters`](crate::Sim::dead_letters)), or the receiver
    /// answers later than the time allowed.
    NoReply,
}

impl fmt::Display for AskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AskError::Refused(kind) => write!(f, "the request was not sent: {kind}"),
            AskError::Dropped => f.write_str(
                "the reply was dropped unanswered: the receiver did not answer or panicked",
            ),
            AskError::NoReply => f.write_str(
                "no answer before the simulation ran out of work: check the dead letters, or \
                 allow simulated time to pass with ask_within",
            ),
        }
    }
}

impl std::error::Error for AskError {}

enum State<T> {
    Waiting,
    Answered(T),
    Dropped,
    Taken,
}

/// The answering side of a [`Sim::ask`](crate::Sim::ask): put it in the request message and
/// answer with [`send`](Reply::send), now or from a later message.
pub struct Reply<T> {
    slot: Arc<Mutex<State<T>>>,
    answered: bool,
}

/// The asking side: the simulation polls it between steps.
pub(crate) struct Answer<T> {
    slot: Arc<Mutex<State<T>>>,
}

/// A connected reply slot.
pub(crate) fn pair<T>() -> (Reply<T>, Answer<T>) {
    let slot = Arc::new(Mutex::new(State::Waiting));
    (
        Reply {
            slot: Arc::clone(&slot),
            answered: false,
        },
        Answer { slot },
    )
}

fn lock<T>(slot: &Mutex<State<T>>) -> std::sync::MutexGuard<'_, State<T>> {
    // A panic never happens while the slot is locked; recover anyway.
    slot.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Reply<T> {
    /// Answers the request.
    pub fn send(mut self, value: T) {
        self.answered = true;
        *lock(&self.slot) = State::Answered(value);
    }
}

impl<T> Drop for Reply<T> {
    fn drop(&mut self) {
        if !self.answered {
            *lock(&self.slot) = State::Dropped;
        }
    }
}

impl<T> fmt::Debug for Reply<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply").finish_non_exhaustive()
    }
}

impl<T> Answer<T> {
    /// The answer, once it came.
    pub(crate) fn try_take(&self) -> Option<Result<T, AskError>> {
        let mut state = lock(&self.slot);
        match std::mem::replace(&mut *state, State::Taken) {
            State::Answered(v) => Some(Ok(v)),
            State::Dropped => Some(Err(AskError::Dropped)),
            other => {
                *state = other;
                None
            }
        }
    }
}
