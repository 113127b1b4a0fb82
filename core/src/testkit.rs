//! Run one receiver alone, with no router, and inspect what it asked for.
//!
//! Receivers talk only through messages, so a test can feed one messages and assert on the
//! sends, timers, become and stop it produced: its dependents are whatever the test says they
//! replied.
//!
//! Work a receiver starts ([`Context::spawn`], [`Context::ask`]) is not run by the probe, and
//! its outcome never comes back by itself: an ask's request shows in [`Outcome::sent`], and a
//! test plays the answer by delivering the message the receiver would get (its
//! `Msg::Answer(Ok(..))` or `Err(AskError::Timeout)`) with [`Probe::deliver`]. To run that work
//! for real, use the inline [`Driver`](crate::Driver) or the simulator.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use hermes_core::{Context, Recipient, testkit::Probe};
//!
//! let echo = |ctx: &mut Context<'_, String, u32>, n: u32| {
//!     ctx.send("peer".to_string(), n + 1);
//!     ctx.schedule(Duration::from_secs(1), 0);
//! };
//! let mut probe = Probe::new("me".to_string(), echo, Instant::now());
//! let out = probe.deliver(41);
//! assert_eq!(out.sent, vec![(Recipient::Id("peer".to_string()), 42)]);
//! assert_eq!(out.scheduled[0].after, Duration::from_secs(1));
//! assert!(!out.stopped);
//! ```

use std::time::{Duration, Instant};

use crate::context::{Effects, TimerOp};
use crate::{Addr, App, Context, Deactivation, Key, Kind, Receiver, Recipient, TimerId};

/// A receiver under test. `A` is its application (`(K, M)` for one kind): what it sends and
/// schedules is reported in the application's ID and message types.
pub struct Probe<K, M: Kind<A, Id = K>, A: App = (K, M)> {
    id: A::Id,
    /// As the router runs it: adapted to the application's messages.
    receiver: Box<dyn Receiver<A::Id, A::Msg>>,
    now: Instant,
    timer_seq: u32,
    effects: Effects<A::Id, A::Msg>,
    kind: std::marker::PhantomData<fn(K, M)>,
}

impl<K, M: Kind<A, Id = K>, A: App> std::fmt::Debug for Probe<K, M, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("id", &self.id)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// What a receiver asked for while handling one message or hook.
#[derive(Debug, PartialEq)]
pub struct Outcome<K, M> {
    /// Messages sent, in order.
    pub sent: Vec<(Recipient<K>, M)>,
    /// Timers scheduled, in order.
    pub scheduled: Vec<Scheduled<K, M>>,
    /// Timers cancelled, in order.
    pub cancelled: Vec<TimerId>,
    /// The receiver replaced its handler (the probe now runs the new one).
    pub became: bool,
    /// The receiver asked to be deactivated.
    pub stopped: bool,
    /// The receiver overrode its idle timeout.
    pub idle_timeout: Option<Duration>,
}

/// A timer a receiver scheduled.
#[derive(Debug, PartialEq)]
pub struct Scheduled<K, M> {
    /// The timer's ID, as the receiver got it.
    pub id: TimerId,
    /// Who gets the message.
    pub to: K,
    /// Delay from the probe's current time (`Duration::MAX`: never).
    pub after: Duration,
    /// The message.
    pub msg: M,
}

impl<K: Key, M: Kind<A, Id = K>, A: App> Probe<K, M, A> {
    /// A probe running `receiver` as ID `id`, with the clock at `now`.
    pub fn new(id: K, receiver: impl Receiver<K, M, A>, now: Instant) -> Self {
        Probe {
            id: M::into_app_id(id),
            receiver: M::adapt(Box::new(receiver)),
            now,
            timer_seq: 0,
            effects: Effects::default(),
            kind: std::marker::PhantomData,
        }
    }

    /// Moves the probe's clock forward; a step too long for an `Instant` (such as
    /// `Duration::MAX`) moves it as far as an `Instant` goes.
    pub fn advance(&mut self, by: Duration) {
        let mut step = by;
        // Halving ends: a zero step always fits.
        while self.now.checked_add(step).is_none() {
            step /= 2;
        }
        self.now += step;
    }

    /// Runs the `activated` hook.
    pub fn activate(&mut self) -> Outcome<A::Id, A::Msg> {
        self.with_context(|r, ctx| r.activated(ctx))
    }

    /// Handles one message. A handler's panic propagates to the test; what it recorded
    /// before panicking is not reported by the next call (the router drops it too).
    pub fn deliver(&mut self, msg: M) -> Outcome<A::Id, A::Msg> {
        let msg = msg.into_app_msg();
        self.with_context(|r, ctx| r.receive(ctx, msg))
    }

    /// Runs the `deactivated` hook.
    pub fn deactivate(&mut self, why: Deactivation) -> Outcome<A::Id, A::Msg> {
        self.with_context(|r, ctx| r.deactivated(ctx, why))
    }

    fn with_context(
        &mut self,
        f: impl FnOnce(&mut dyn Receiver<A::Id, A::Msg>, &mut Context<'_, A::Id, A::Msg>),
    ) -> Outcome<A::Id, A::Msg> {
        // Cleared before, not after, each call: a handler that panicked (and whose panic the
        // test caught) left its effects here; as in the router, they never happen.
        self.effects.clear();
        let mut ctx = Context {
            id: &self.id,
            addr: Addr {
                router: 0,
                index: 0,
                generation: 0,
            },
            clock: &self.now,
            effects: &mut self.effects,
            timer_seq: &mut self.timer_seq,
            before: &mut None,
            kind: std::marker::PhantomData,
        };
        f(&mut *self.receiver, &mut ctx);
        let became = match self.effects.become_.take() {
            Some(next) => {
                self.receiver = next;
                true
            }
            None => false,
        };
        let mut scheduled = Vec::new();
        let mut cancelled = Vec::new();
        for op in self.effects.timers.drain(..) {
            match op {
                TimerOp::Schedule {
                    id,
                    to,
                    deadline,
                    msg,
                } => scheduled.push(Scheduled {
                    id,
                    to,
                    after: deadline
                        .map_or(Duration::MAX, |at| at.saturating_duration_since(self.now)),
                    msg,
                }),
                TimerOp::Cancel(id) => cancelled.push(id),
            }
        }
        Outcome {
            sent: std::mem::take(&mut self.effects.sends),
            scheduled,
            cancelled,
            became,
            stopped: self.effects.stop,
            idle_timeout: self.effects.idle_timeout,
        }
    }
}
