//! `Context`: what a receiver can do while it handles a message.
//!
//! Every effect is recorded, not performed: the router applies the effects when the receiver is
//! checked back in. That is what lets a receiver run on another thread, and what makes it
//! testable alone (see [`testkit`](crate::testkit)).

use std::future::Future;
use std::marker::PhantomData;
use std::time::{Duration, Instant};

use hermes_reply::{AskError, Reply};

use crate::task::{Flags, TaskOp};
use crate::{Addr, App, Clock, Key, Kind, Receiver, Recipient, TimerId};

/// A receiver's view of the router while it handles one message or lifecycle hook.
///
/// `K` and `M` are the receiver's ID and message types; `A` is its application, `(K, M)` unless
/// the application has several [kinds](crate::Kinds) (then it names the application, as
/// `Context<'_, AccountId, AccountMsg, Bank>`). Sends are typed by the recipient's ID: a
/// message reaches a kind only as that kind's message type.
pub struct Context<'a, K, M, A: App = (K, M)> {
    pub(crate) id: &'a K,
    pub(crate) addr: Addr,
    pub(crate) clock: &'a dyn Clock,
    pub(crate) effects: &'a mut Effects<A::Id, A::Msg>,
    pub(crate) timer_seq: &'a mut u32,
    /// Where the effects stood before the handler now running recorded its first one, for
    /// undoing what it recorded if it panics. Taken then (`touch`), not before every handler:
    /// most handlers record nothing, and then there is nothing to undo. Outside `effects` so
    /// that a checked-out job does not carry it.
    pub(crate) before: &'a mut Option<Mark>,
    pub(crate) kind: PhantomData<fn() -> M>,
}

impl<'a, K, M, A> Context<'a, K, M, A>
where
    A: App,
    K: Key,
    M: Kind<A, Id = K>,
{
    /// The ID this receiver serves.
    pub fn id(&self) -> &K {
        self.id
    }

    /// A handle to this receiver, for peers that reply often (skips hashing the ID).
    pub fn addr(&self) -> Addr {
        self.addr
    }

    /// The current time, from the clock the driver passed in: the real time on the executors,
    /// the virtual time under simulation, a fixed instant in a test that passes one.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Sends `msg` to the receiver with ID `to`, of any kind of this application (the message's
    /// type decides the kind, and so the ID's type), activating it if needed.
    pub fn send<T: Kind<A>>(&mut self, to: T::Id, msg: T) {
        let to = Recipient::Id(T::into_app_id(to));
        self.touch();
        self.effects.sends.push((to, msg.into_app_msg()));
    }

    /// Sends `msg` by handle to a receiver of this kind. If the handle is stale, or is a
    /// receiver's of another kind (handles are not typed by kind), the message becomes a
    /// [`Stale`](crate::DeadLetterReason::Stale) dead letter.
    pub fn send_to(&mut self, to: Addr, msg: M) {
        self.touch();
        self.effects
            .sends
            .push((Recipient::Addr(to), msg.into_app_msg()));
    }

    /// Delivers `msg` to this receiver after `after` (counted from now, when the handler asks),
    /// re-activating it if it was deactivated. A delay too long to represent never fires.
    pub fn schedule(&mut self, after: Duration, msg: M) -> TimerId {
        let to = self.id.clone();
        self.schedule_to(to, after, msg)
    }

    /// Delivers `msg` to the receiver `to` (of any kind) after `after` (counted from now). The
    /// timer is held by this receiver's router; [`cancel`](Context::cancel) works from any
    /// receiver.
    pub fn schedule_to<T: Kind<A>>(&mut self, to: T::Id, after: Duration, msg: T) -> TimerId {
        let id = TimerId::new(self.addr, *self.timer_seq);
        *self.timer_seq = self.timer_seq.wrapping_add(1);
        let deadline = crate::deadline(self.now(), after);
        self.touch();
        self.effects.timers.push(TimerOp::Schedule {
            id,
            to: T::into_app_id(to),
            deadline,
            msg: msg.into_app_msg(),
        });
        id
    }

    /// Cancels a timer, wherever it is held; a cancelled timer never fires. Unknown or fired
    /// timers are ignored.
    pub fn cancel(&mut self, timer: TimerId) {
        self.touch();
        self.effects.timers.push(TimerOp::Cancel(timer));
    }

    /// Replaces this receiver's handler from the next message on. The instance stays the
    /// same: `next`'s [`activated`](Receiver::activated) hook does not run, and the old
    /// handler is dropped without its [`deactivated`](Receiver::deactivated) hook; the hook
    /// that runs when the instance is deactivated, once, is the handler's current then (so
    /// state saved on deactivation must move to the new handler).
    pub fn become_(&mut self, next: impl Receiver<K, M, A>) {
        self.touch();
        self.effects.become_ = Some(M::adapt(Box::new(next)));
    }

    /// Deactivates this receiver after the current message. Messages still queued activate a
    /// fresh instance afterwards, but not the outcomes of this instance's work: those are
    /// `Stale` dead letters (see [`spawn`](Context::spawn)).
    pub fn stop(&mut self) {
        self.touch();
        self.effects.stop = true;
    }

    /// Starts `future` and gives its outcome back to this receiver as the message
    /// `map(outcome)`, without blocking the shard: the receiver handles other messages
    /// meanwhile, one at a time as always. The future runs on the executor's runtime (tokio's,
    /// smol's, the pool's own), under the simulator's seeded scheduler, or inline in
    /// [`Driver::run`](crate::Driver::run).
    ///
    /// The outcome goes to this instance only, and is handled next: it is queued ahead of the
    /// messages waiting for this receiver, behind outcomes that came back before it. If this
    /// instance is deactivated first (stopped, panicked, closing), the future is dropped
    /// unfinished, and an outcome that came back too late, or was still queued, becomes a
    /// [`Stale`](crate::DeadLetterReason::Stale) dead letter: it never reaches a next instance.
    /// While work is in flight the receiver is not deactivated for idleness. A future that
    /// panics gives no outcome and is not retried: the panic is caught where the future is
    /// polled, logged with this receiver's ID and counted in
    /// [`Stats::panics`](crate::Stats::panics), other work goes on, and the receiver stops
    /// waiting for it (it can go idle) without being told; catch panics inside the future to
    /// turn them into a message. Like every effect, nothing starts if the handler panics. The
    /// future is dropped where it is: a guard meant to say so belongs outside an `async` block (created inside, it exists
    /// only once the future is first polled, and a future dropped before that leaves no trace).
    pub fn spawn<T, F>(&mut self, future: F, map: impl FnOnce(T) -> M + Send + 'static)
    where
        F: Future<Output = T> + Send + 'static,
    {
        let future = async move { map(future.await).into_app_msg() };
        self.touch();
        self.effects.tasks.push(TaskOp {
            flags: Flags::new(),
            future: Box::pin(future),
            deadline: None,
        });
    }

    /// Asks the receiver `to` (of any kind) with the request `make` builds around a [`Reply`],
    /// and gives the answer back to this receiver as the message `map(answer)`: never blocking
    /// the shard, so two receivers asking each other cannot deadlock.
    ///
    /// The answer is `Err` with [`AskError::Timeout`] if none comes within `timeout` (then the
    /// answerer's `Reply::send` fails too: exactly one side wins), and with
    /// [`AskError::Dropped`] if the request is dropped unanswered (the receiver did not answer,
    /// or the request became a dead letter that was dropped; a dead-letter sink that keeps
    /// letters, as the simulator's does, keeps the request, and the ask then times out). As
    /// with [`spawn`](Context::spawn), the answer reaches this instance only, and is handled
    /// next; if `map` panics, the answer is lost as a panicking spawned future's outcome is.
    ///
    /// A [`Reply`] is answered at once, while this handler's own sends go out when the run
    /// ends: an asker may see the answer before messages the answerer sent just before it.
    pub fn ask<T: Kind<A>, R: Send + 'static>(
        &mut self,
        to: T::Id,
        make: impl FnOnce(Reply<R>) -> T,
        timeout: Duration,
        map: impl FnOnce(Result<R, AskError>) -> M + Send + 'static,
    ) {
        let (reply, asked) = Reply::new();
        self.send(to, make(reply));
        let expiry = asked.expiry();
        let future = async move { map(asked.await).into_app_msg() };
        self.touch();
        self.effects.tasks.push(TaskOp {
            flags: Flags::new(),
            future: Box::pin(future),
            deadline: Some((crate::deadline(self.now(), timeout), expiry)),
        });
    }

    /// This handler is about to record an effect: if it is its first, notes where the effects
    /// stood before it.
    #[inline]
    fn touch(&mut self) {
        if self.before.is_none() {
            *self.before = Some(self.effects.mark());
        }
    }

    /// Overrides the router's idle timeout for this receiver (until it is deactivated), in whole
    /// milliseconds; 2^32 − 2 ms (about 49.7 days) or more means never.
    pub fn set_idle_timeout(&mut self, timeout: Duration) {
        self.touch();
        self.effects.idle_timeout = Some(timeout);
    }
}

impl<K: std::fmt::Debug, M, A: App> std::fmt::Debug for Context<'_, K, M, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("id", self.id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A timer operation recorded by a receiver.
pub(crate) enum TimerOp<K, M> {
    Schedule {
        id: TimerId,
        to: K,
        deadline: Option<Instant>,
        msg: M,
    },
    Cancel(TimerId),
}

/// Everything a receiver asked for while handling messages, in order.
pub(crate) struct Effects<K, M> {
    pub(crate) sends: Vec<(Recipient<K>, M)>,
    pub(crate) timers: Vec<TimerOp<K, M>>,
    pub(crate) tasks: Vec<TaskOp<M>>,
    pub(crate) become_: Option<Box<dyn Receiver<K, M>>>,
    pub(crate) stop: bool,
    pub(crate) idle_timeout: Option<Duration>,
}

/// Where the effects stood before a message, so a panicking message leaves no effects. `stop`
/// is set when a mark is taken only by an `activated` hook that stopped before the first
/// message (a batch ends at the message that sets it).
pub(crate) struct Mark {
    sends: usize,
    timers: usize,
    tasks: usize,
    idle_timeout: Option<Duration>,
    stop: bool,
}

impl<K, M> Default for Effects<K, M> {
    fn default() -> Self {
        Effects {
            sends: Vec::new(),
            timers: Vec::new(),
            tasks: Vec::new(),
            become_: None,
            stop: false,
            idle_timeout: None,
        }
    }
}

impl<K, M> Effects<K, M> {
    /// Where the effects stand, before a handler records its first effect.
    #[inline]
    pub(crate) fn mark(&self) -> Mark {
        Mark {
            sends: self.sends.len(),
            timers: self.timers.len(),
            tasks: self.tasks.len(),
            idle_timeout: self.idle_timeout,
            stop: self.stop,
        }
    }

    /// Nothing recorded: nothing to apply.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.sends.is_empty() && self.only_sends()
    }

    /// One send recorded, and nothing else.
    #[inline]
    pub(crate) fn is_one_send(&self) -> bool {
        self.sends.len() == 1 && self.only_sends()
    }

    /// Nothing recorded but sends.
    #[inline(always)]
    fn only_sends(&self) -> bool {
        self.timers.is_empty()
            && self.tasks.is_empty()
            && self.become_.is_none()
            && !self.stop
            && self.idle_timeout.is_none()
    }

    /// Forgets everything recorded since `mark`.
    pub(crate) fn rollback(&mut self, mark: Mark) {
        self.sends.truncate(mark.sends);
        self.timers.truncate(mark.timers);
        self.tasks.truncate(mark.tasks);
        self.become_ = None;
        self.stop = mark.stop;
        self.idle_timeout = mark.idle_timeout;
    }

    #[inline]
    pub(crate) fn clear(&mut self) {
        self.sends.clear();
        self.timers.clear();
        self.tasks.clear();
        self.become_ = None;
        self.stop = false;
        self.idle_timeout = None;
    }
}
