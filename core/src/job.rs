//! Check-out / check-in: a receiver and a batch of its messages, moved out of the router to run
//! anywhere, and the effects they produced, moved back in.
//!
//! [`Router::run`](crate::Router::run) runs the same batch loop ([`run_batch`]) and the same
//! check-in code as `check_out`, [`Job::execute`], `check_in`, only without moving the receiver
//! out and back, so inline and checked-out execution give the same results.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use crate::context::Effects;
use crate::{Addr, Clock, Context, Deactivation, Key, Message, Receiver};

/// A receiver checked out of its router with work to do. It is `Send`: run it on any thread
/// with [`execute`](Job::execute), then hand the [`Done`] back to the same router.
pub struct Job<K, M> {
    pub(crate) addr: Addr,
    pub(crate) id: K,
    pub(crate) receiver: Box<dyn Receiver<K, M>>,
    pub(crate) work: Work<M>,
    pub(crate) effects: Effects<K, M>,
    pub(crate) timer_seq: u32,
}

pub(crate) enum Work<M> {
    /// Handle `batch` in order, after running the `activated` hook if `fresh`. Its first
    /// `outcomes` messages are task outcomes (they come first in a mailbox).
    Run {
        batch: VecDeque<M>,
        fresh: bool,
        outcomes: usize,
    },
    /// Run the `deactivated` hook.
    Deactivate(Deactivation),
}

/// How a job ended.
pub(crate) enum Ending {
    /// Every message handled.
    Finished,
    /// The receiver called `stop`; the rest of the batch was not handled.
    Stopped,
    /// The handler panicked on a message; the rest of the batch was not handled.
    Panicked(Arc<str>),
    /// The `activated` hook panicked; no message was handled.
    ActivationPanicked(Arc<str>),
}

impl Ending {
    /// How many messages a run that handled `handled` took off the front of its batch: the one
    /// a handler panicked on too.
    pub(crate) fn consumed(&self, handled: u64) -> usize {
        handled as usize + usize::from(matches!(self, Ending::Panicked(_)))
    }
}

/// A job that ran: the receiver, unhandled messages and the effects, for
/// [`Router::check_in`](crate::Router::check_in).
pub struct Done<K, M> {
    pub(crate) addr: Addr,
    pub(crate) receiver: Box<dyn Receiver<K, M>>,
    /// Messages of the batch not handled (after stop or a panic), in order.
    pub(crate) rest: VecDeque<M>,
    /// How many of `rest`, at its front, are task outcomes.
    pub(crate) outcomes: usize,
    pub(crate) handled: u64,
    pub(crate) ending: Ending,
    pub(crate) deactivation: bool,
    pub(crate) effects: Effects<K, M>,
    pub(crate) timer_seq: u32,
}

impl<K: Key, M: Message> Job<K, M> {
    /// The receiver this job is for.
    pub fn addr(&self) -> Addr {
        self.addr
    }

    /// The ID of the receiver this job is for.
    pub fn id(&self) -> &K {
        &self.id
    }

    /// Messages this job will handle (0 for a deactivation).
    pub fn len(&self) -> usize {
        match &self.work {
            Work::Run { batch, .. } => batch.len(),
            Work::Deactivate(_) => 0,
        }
    }

    /// True for a deactivation job (no messages).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the receiver on its batch (or its `deactivated` hook), reading the time from
    /// `clock` (an `Instant` for a fixed time). Panics in the receiver are caught; a panicking
    /// message leaves no effects.
    #[must_use = "a Done must be checked back in to its router"]
    pub fn execute(self, clock: impl Clock) -> Done<K, M> {
        let Job {
            addr,
            id,
            mut receiver,
            work,
            mut effects,
            mut timer_seq,
        } = self;
        let mut ctx = Context {
            id: &id,
            addr,
            clock: &clock,
            effects: &mut effects,
            timer_seq: &mut timer_seq,
            kind: std::marker::PhantomData,
        };
        let (rest, outcomes, handled, ending, deactivation) = match work {
            Work::Run {
                mut batch,
                fresh,
                outcomes,
            } => {
                let (handled, ending) =
                    run_batch(&mut receiver, &mut ctx, fresh, || batch.pop_front());
                let outcomes = outcomes.saturating_sub(ending.consumed(handled));
                (batch, outcomes, handled, ending, false)
            }
            Work::Deactivate(why) => {
                let ending = match run_deactivated(&mut *receiver, &mut ctx, why) {
                    Ok(()) => Ending::Finished,
                    Err(panic) => Ending::Panicked(panic),
                };
                (VecDeque::new(), 0, 0, ending, true)
            }
        };
        Done {
            addr,
            receiver,
            rest,
            outcomes,
            handled,
            ending,
            deactivation,
            effects,
            timer_seq,
        }
    }
}

impl<K, M> Done<K, M> {
    /// The receiver this work was for.
    pub fn addr(&self) -> Addr {
        self.addr
    }
}

impl<K: std::fmt::Debug, M> std::fmt::Debug for Job<K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("addr", &self.addr)
            .field("id", &self.id)
            .field(
                "messages",
                &match &self.work {
                    Work::Run { batch, .. } => batch.len(),
                    Work::Deactivate(_) => 0,
                },
            )
            .finish_non_exhaustive()
    }
}

impl<K, M> std::fmt::Debug for Done<K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Done")
            .field("addr", &self.addr)
            .field("handled", &self.handled)
            .field("deactivation", &self.deactivation)
            .finish_non_exhaustive()
    }
}

/// Runs `receiver` on the messages `next` yields (after its `activated` hook if `fresh`), until
/// they run out, it stops, or it panics. Returns how many it handled and how it ended. The one
/// loop behind both [`Job::execute`] and the router's inline run.
pub(crate) fn run_batch<K: Key, M: Message>(
    receiver: &mut Box<dyn Receiver<K, M>>,
    ctx: &mut Context<'_, K, M>,
    fresh: bool,
    mut next: impl FnMut() -> Option<M>,
) -> (u64, Ending) {
    let mut handled = 0;
    if fresh {
        if let Err(why) = guarded(ctx, |ctx| receiver.activated(ctx)) {
            return (0, Ending::ActivationPanicked(why));
        }
        if let Some(next) = ctx.effects.become_.take() {
            *receiver = next;
        }
    }
    while let Some(msg) = next() {
        if let Err(why) = guarded(ctx, |ctx| receiver.receive(ctx, msg)) {
            return (handled, Ending::Panicked(why));
        }
        handled += 1;
        if let Some(next) = ctx.effects.become_.take() {
            *receiver = next;
        }
        if ctx.effects.stop {
            return (handled, Ending::Stopped);
        }
    }
    (handled, Ending::Finished)
}

/// Runs the `deactivated` hook; a panic in it is logged, its effects dropped, and returned.
pub(crate) fn run_deactivated<K: Key, M: Message>(
    receiver: &mut dyn Receiver<K, M>,
    ctx: &mut Context<'_, K, M>,
    why: Deactivation,
) -> Result<(), Arc<str>> {
    let result = guarded(ctx, |ctx| receiver.deactivated(ctx, why));
    if let Err(panic) = &result {
        tracing::warn!(addr = ?ctx.addr, %panic, "deactivated hook panicked; its effects are dropped");
    }
    ctx.effects.become_ = None;
    result
}

/// Runs `f`, catching a panic; on panic, the effects `f` recorded are rolled back.
fn guarded<K: Key, M: Message>(
    ctx: &mut Context<'_, K, M>,
    f: impl FnOnce(&mut Context<'_, K, M>),
) -> Result<(), Arc<str>> {
    let mark = ctx.effects.mark();
    match catch_unwind(AssertUnwindSafe(|| f(ctx))) {
        Ok(()) => Ok(()),
        Err(payload) => {
            ctx.effects.rollback(mark);
            Err(panic_message(payload))
        }
    }
}

/// The message a caught panic carried (`panic!("...")`), for logs and dead letters.
///
/// ```
/// let caught = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
/// assert_eq!(&*hermes_core::panic_message(caught), "boom 7");
/// ```
pub fn panic_message(payload: Box<dyn Any + Send>) -> Arc<str> {
    if let Some(s) = payload.downcast_ref::<&str>() {
        Arc::from(*s)
    } else if let Some(s) = payload.downcast_ref::<String>() {
        Arc::from(s.as_str())
    } else {
        Arc::from("non-string panic payload")
    }
}
