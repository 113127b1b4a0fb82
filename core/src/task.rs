//! Work that completes later: a future a receiver started, whose outcome comes back to it as a
//! message.
//!
//! The router never runs futures. A receiver records one with [`Context::spawn`] or
//! [`Context::ask`]; the router hands it out as a [`Task`] ([`Router::poll_task`]); the driver
//! runs it on whatever runtime it has and gives the message back with [`Router::complete`]
//! (or, if it ended without one, says so with [`Router::abandon`]).
//!
//! What becomes of an outcome, and of a future that panics, is on [`Task`].
//!
//! [`Context::spawn`]: crate::Context::spawn
//! [`Context::ask`]: crate::Context::ask
//! [`Router::poll_task`]: crate::Router::poll_task
//! [`Router::complete`]: crate::Router::complete
//! [`Router::abandon`]: crate::Router::abandon

use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Instant;

use hermes_reply::Expiry;

use crate::Addr;

/// A boxed future of a message, as receivers record them.
pub(crate) type BoxFuture<M> = Pin<Box<dyn Future<Output = M> + Send>>;

/// Identifies a task: the receiver instance it belongs to, and a number unique on its router.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId {
    pub(crate) owner: Addr,
    pub(crate) seq: u64,
}

impl TaskId {
    /// The receiver instance the task's outcome goes to; its [`router`](Addr::router) is the
    /// router to give the outcome back to.
    pub fn owner(self) -> Addr {
        self.owner
    }
}

const RUNNING: u8 = 0;
const ABORTED: u8 = 1;

/// What the router can tell a task from outside its future: it is aborted (its receiver is
/// gone), and the waker to make it notice.
pub(crate) struct Flags {
    state: AtomicU8,
    waker: Mutex<Option<Waker>>,
}

impl Flags {
    pub(crate) fn new() -> Arc<Flags> {
        Arc::new(Flags {
            state: AtomicU8::new(RUNNING),
            waker: Mutex::new(None),
        })
    }

    fn set(&self, from: u8, to: u8) {
        if self
            .state
            .compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            let waker = self
                .waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(waker) = waker {
                waker.wake();
            }
        }
    }

    fn abort(&self) {
        self.set(RUNNING, ABORTED);
    }

    fn is(&self, state: u8) -> bool {
        self.state.load(Ordering::Acquire) == state
    }

    fn register(&self, waker: &Waker) {
        let mut slot = self.waker.lock().unwrap_or_else(PoisonError::into_inner);
        if !slot.as_ref().is_some_and(|w| w.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }
}

/// A task as a receiver records it: its future (already mapped to the receiver's message), the
/// flags it shares with the router, and, for an ask, the deadline.
pub(crate) struct TaskOp<M> {
    pub(crate) flags: Arc<Flags>,
    pub(crate) future: BoxFuture<M>,
    /// An ask's deadline (`None` inside: never), and the handle that ends it with `Timeout`.
    pub(crate) deadline: Option<(Option<Instant>, Expiry)>,
}

/// A task as the router and the runtime share it: its flags, and its future, which the router
/// takes out and drops when it aborts the task, so that work in flight is dropped with its
/// receiver, on the spot, whatever the runtime does (a future being polled then is dropped by
/// its poller as that poll returns).
pub(crate) struct Shared<M> {
    flags: Arc<Flags>,
    future: Mutex<Option<BoxFuture<M>>>,
    /// What the future panicked with, once it did (caught where it was polled).
    panic: OnceLock<Arc<str>>,
}

impl<M> Shared<M> {
    pub(crate) fn new(flags: Arc<Flags>, future: BoxFuture<M>) -> Arc<Shared<M>> {
        Arc::new(Shared {
            flags,
            future: Mutex::new(Some(future)),
            panic: OnceLock::new(),
        })
    }

    /// What the future panicked with, if it did.
    pub(crate) fn panic(&self) -> Option<&Arc<str>> {
        self.panic.get()
    }

    /// The receiver is gone: makes the task end without an outcome, and drops the future now,
    /// or, if it is being polled, leaves that to its poller, as soon as the poll returns: the
    /// router never waits for a poll (which may be blocked on Hermes itself: a future calling
    /// `Hermes::shutdown`).
    pub(crate) fn abort(&self) {
        self.flags.abort();
        // Pairs with the fence in `Task::poll`: either the poller, after its poll, sees the
        // flag, or this sees the future unlocked.
        fence(Ordering::SeqCst);
        let future = match self.future.try_lock() {
            Ok(mut slot) => slot.take(),
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner().take(),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        drop(future);
    }

    /// Drops the future, if it is still here (the task was aborted while it was polled).
    fn drop_future(&self) {
        let future = self
            .future
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(future);
    }
}

/// Work a receiver started ([`Context::spawn`](crate::Context::spawn),
/// [`Context::ask`](crate::Context::ask)), for the driver to run: a `Future` whose output is the
/// message for [`Router::complete`](crate::Router::complete), or `None` if the task ended
/// without one: it was aborted (its receiver is gone), or its future panicked. Give a `None`
/// back with [`Router::abandon`](crate::Router::abandon) (for an aborted task it does nothing).
///
/// - A panic in the future is caught here, where it is polled, whatever runs it: the future is
///   dropped, the task ends with `None`, and [`Router::abandon`](crate::Router::abandon) logs
///   the panic with the receiver's ID and counts it in [`Stats::panics`](crate::Stats::panics).
///   The receiver is not told (there is no outcome to map into its message): it stops waiting
///   for that work, so it can go idle and be deactivated as usual. A receiver that must know
///   catches panics inside its future and maps them into its own message.
/// - The outcome reaches the instance that started the work, and only it, and it is handled
///   next: [`Router::complete`](crate::Router::complete) queues it at the front of that
///   instance's mailbox, behind the outcomes given back before it (outcomes keep the order they
///   came back in) and ahead of every other message not yet taken by a run. A full mailbox does
///   not refuse it.
/// - If that instance is deactivated first (stopped, panicked, closing), its tasks are aborted
///   (a task then finishes with `None` when next polled). An outcome that arrives after that, or
///   while the instance's deactivation is under way, or that is still queued when it stops or
///   panics, is a dead letter ([`Stale`](crate::DeadLetterReason::Stale)): it never activates or
///   reaches a next instance of the ID. Messages sent by ID go to the next instance as always
///   ([`Context::stop`](crate::Context::stop)).
/// - A [`TaskId`] is for its own router ([`TaskId::owner`] names it): another router refuses
///   the outcome as a `Stale` dead letter and leaves its own tasks as they are.
/// - A receiver waiting for work is not deactivated for idleness: its idle time starts when it
///   has handled the outcome of its last task (or when its last task was given back without
///   one, [`Router::abandon`](crate::Router::abandon)).
/// - Closing aborts every task, so work in flight never holds up a shutdown.
///
/// ```
/// # use std::time::Instant;
/// use hermes_core::{Activation, Config, Context, Router};
///
/// enum Msg { Load, Loaded(u64) }
///
/// let factory = |_: &u8| {
///     let mut value = 0;
///     Activation::ready(move |ctx: &mut Context<'_, u8, Msg>, msg| match msg {
///         Msg::Load => ctx.spawn(async { 42 }, Msg::Loaded),
///         Msg::Loaded(v) => value = v,
///     })
/// };
/// let now = Instant::now();
/// let mut router = Router::new(Config::default());
/// router.send(1, Msg::Load).unwrap();
/// while let Some(c) = router.poll_command() { router.handle(c, &factory, now).unwrap(); }
/// let task = router.poll_task().expect("the receiver started work");
/// let id = task.id();
/// // A real driver spawns it on its runtime; this future is ready at once.
/// let msg = futures_lite_block_on(task).expect("not aborted");
/// router.complete(id, msg, now);
/// while let Some(c) = router.poll_command() { router.handle(c, &factory, now).unwrap(); }
/// assert_eq!(router.stats().messages_delivered, 2);
/// # fn futures_lite_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     let mut f = std::pin::pin!(f);
/// #     let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
/// #     loop { if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) { return v; } }
/// # }
/// ```
#[must_use = "a task does nothing unless run, and its outcome must go back to the router"]
pub struct Task<M> {
    pub(crate) id: TaskId,
    pub(crate) shared: Arc<Shared<M>>,
}

impl<M> Task<M> {
    /// Which task this is, for [`Router::complete`](crate::Router::complete).
    pub fn id(&self) -> TaskId {
        self.id
    }
}

impl<M> Future for Task<M> {
    type Output = Option<M>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<M>> {
        let shared = &self.shared;
        if shared.flags.is(ABORTED) {
            shared.drop_future();
            return Poll::Ready(None);
        }
        shared.flags.register(cx.waker());
        let polled = {
            let mut slot = shared.future.lock().unwrap_or_else(PoisonError::into_inner);
            let Some(future) = slot.as_mut() else {
                return Poll::Ready(None);
            };
            match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
                Ok(Poll::Ready(msg)) => {
                    *slot = None;
                    Poll::Ready(Some(msg))
                }
                Ok(Poll::Pending) => Poll::Pending,
                Err(payload) => {
                    // Never polled again: dropped now, and the task ends without an outcome.
                    *slot = None;
                    let _ = shared.panic.set(crate::panic_message(payload));
                    Poll::Ready(None)
                }
            }
        };
        // Aborted during the poll, the router left the future to this poller (see
        // `Shared::abort`, whose fence this pairs with).
        fence(Ordering::SeqCst);
        if shared.flags.is(ABORTED) {
            shared.drop_future();
            return Poll::Ready(None);
        }
        polled
    }
}

impl<M> fmt::Debug for Task<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Task")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}
