//! The `Receiver` trait: what runs when a message arrives.

use crate::{App, Context};

/// Handles the messages sent to one ID, one at a time.
///
/// Implement it on a struct for state and lifecycle hooks, or pass any
/// `FnMut(&mut Context<K, M>, M) + Send + 'static` closure.
///
/// ```
/// use hermes_core::{Context, Receiver};
///
/// struct Counter(u64);
///
/// impl Receiver<u64, u64> for Counter {
///     fn receive(&mut self, _ctx: &mut Context<'_, u64, u64>, n: u64) {
///         self.0 += n;
///     }
/// }
/// ```
///
/// `A` is the receiver's application: `(K, M)`, unless the application has several
/// [kinds](crate::Kinds), as in `impl Receiver<AccountId, AccountMsg, Bank> for Account`.
pub trait Receiver<K, M, A = (K, M)>: Send + 'static {
    /// Handles one message. Effects (sends, timers, become, stop, spawned work, asks) go
    /// through `ctx`, and happen only if it returns: if it panics, none of them happen, the
    /// message becomes a [`Panicked`](crate::DeadLetterReason::Panicked) dead letter, the
    /// instance is deactivated with [`Deactivation::Panicked`], and the next message for its ID
    /// activates a fresh instance through the factory.
    fn receive(&mut self, ctx: &mut Context<'_, K, M, A>, msg: M)
    where
        A: App;

    /// Runs once, after the factory created this receiver and before its first message. If it
    /// panics, the activation fails: its effects do not happen, the instance is dropped without
    /// its `deactivated` hook, and the messages waiting for this ID become
    /// [`FactoryFailed`](crate::DeadLetterReason::FactoryFailed) dead letters.
    fn activated(&mut self, _ctx: &mut Context<'_, K, M, A>)
    where
        A: App,
    {
    }

    /// Runs once, when this instance is deactivated, after its last message; save durable
    /// state here (unless `why` is [`Deactivation::Panicked`]). If it panics, its effects do not
    /// happen, and the deactivation completes all the same.
    fn deactivated(&mut self, _ctx: &mut Context<'_, K, M, A>, _why: Deactivation)
    where
        A: App,
    {
    }
}

impl<K, M, A, F> Receiver<K, M, A> for F
where
    A: App,
    F: FnMut(&mut Context<'_, K, M, A>, M) + Send + 'static,
{
    fn receive(&mut self, ctx: &mut Context<'_, K, M, A>, msg: M) {
        self(ctx, msg)
    }
}

/// Why a receiver instance is deactivated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Deactivation {
    /// Idle (no messages, not running) for its idle timeout.
    IdleTimeout,
    /// The receiver called [`Context::stop`].
    Stopped,
    /// The router is closing.
    Closing,
    /// The instance panicked while handling a message; its state may be half-updated, so do not
    /// persist it. The next message for its ID activates a fresh instance through the factory.
    Panicked,
    /// The ID now belongs to another node of a cluster (a node joined or left): save the
    /// state, so that the new owner loads it. Messages that arrive meanwhile are forwarded.
    Moved,
}
