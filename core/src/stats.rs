//! Counters a router keeps about itself.

use std::ops::AddAssign;

/// A snapshot of a router's receivers and counters. Add snapshots to total several shards.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Receivers holding a slot: every state below.
    pub live: usize,
    /// Waiting for the factory.
    pub activating: usize,
    /// Live, nothing queued, not running.
    pub idle: usize,
    /// Messages queued, waiting to run (a `Run` command is out).
    pub scheduled: usize,
    /// Checked out, handling messages.
    pub running: usize,
    /// Being deactivated.
    pub deactivating: usize,
    /// Messages accepted into a mailbox.
    pub messages_routed: u64,
    /// Messages for receivers on other routers, handed out by `poll_outbound`.
    pub messages_forwarded: u64,
    /// Messages a handler returned from without panicking.
    pub messages_delivered: u64,
    /// Receivers created by the factory (not refusals or failures). One whose `activated` hook
    /// panicked counts here and never in `deactivations`: it is dropped without its
    /// `deactivated` hook, its messages `FactoryFailed` dead letters.
    pub activations: u64,
    /// Receiver instances deactivated (their hook ran).
    pub deactivations: u64,
    /// Messages reported as dead letters.
    pub dead_letters: u64,
    /// Dead letters dropped because nobody polled them (see
    /// [`Config::dead_letter_capacity`](crate::Config::dead_letter_capacity)).
    pub dead_letters_dropped: u64,
    /// Panics caught: in handlers, lifecycle hooks and factories, and in futures receivers
    /// started (counted when the driver gives the task back, see [`Task`](crate::Task)).
    pub panics: u64,
    /// User timers scheduled and not yet fired or cancelled.
    pub timers_pending: usize,
}

impl AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.live += o.live;
        self.activating += o.activating;
        self.idle += o.idle;
        self.scheduled += o.scheduled;
        self.running += o.running;
        self.deactivating += o.deactivating;
        self.messages_routed += o.messages_routed;
        self.messages_delivered += o.messages_delivered;
        self.messages_forwarded += o.messages_forwarded;
        self.activations += o.activations;
        self.deactivations += o.deactivations;
        self.dead_letters += o.dead_letters;
        self.dead_letters_dropped += o.dead_letters_dropped;
        self.panics += o.panics;
        self.timers_pending += o.timers_pending;
    }
}
