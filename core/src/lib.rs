//! The sans-IO routing core of Hermes.
//!
//! A [`Router`] routes messages to receivers addressed by an application ID `K`, like packets to
//! hosts by IP address. It is a deterministic state machine: it never spawns, sleeps, reads a
//! clock or does I/O. Time is an argument; work for the driver comes out of
//! [`poll_command`](Router::poll_command).
//!
//! # Lifecycle of one receiver
//!
//! ```text
//!  (absent) --first message--> Activating --factory--> Idle <--> Scheduled --> Running --+
//!     ^                                                 |                               |
//!     +-- (mailbox empty) -- Deactivating <-- idle timeout, stop, panic, close ---------+
//! ```
//!
//! - [`Command::Activate`]: the driver calls the [`Factory`] and passes the result to
//!   [`Router::activate`]. Messages queue meanwhile.
//! - [`Command::Run`]: the driver runs the receiver on up to a batch of messages, inline with
//!   [`Router::run`] or on another thread with [`Router::check_out`], [`Job::execute`],
//!   [`Router::check_in`]. Both are the same code, so both give the same results.
//! - [`Command::Deactivate`]: the same two ways, running the `deactivated` hook. A message that
//!   arrives meanwhile is kept, and activates a fresh instance afterwards.
//!
//! [`Router::handle`] is the one place where a command becomes work: the executors' shards, the
//! [`Driver`], the simulator and the invariant checker all call it.
//!
//! Commands come out in the order they arose, with one exception: the `Run` of an idle receiver
//! woken by a send of a receiver's run on the same router comes next, ahead of the commands
//! queued before it (a reply does not wait behind a backlog), at most
//! [`Router::NEXT_RUNS`] times in a row while other commands wait.
//!
//! # Time
//!
//! The router never reads a clock: time is an argument. Calls that only bookkeep take an
//! [`Instant`](std::time::Instant); calls that run receivers take a [`Clock`], read when a
//! handler asks for the time or schedules a timer and when a run ends, so a delay counts from
//! when the handler asked for it and idle time from when the receiver went idle. A driver that
//! runs many receivers per turn may defer that last read ([`Router::defer_idle_time`]) and
//! stamp the receivers that went idle once per turn ([`Router::stamp_idle`]): their idle time
//! then starts a little later than their run ended, never sooner. Pass an
//! `Instant` for a clock that stands still, [`SystemClock`] for the real one. Every `Duration`
//! is valid: a deadline past the end of representable time means never ([`deadline`]).
//!
//! # Closing
//!
//! [`Router::close`] refuses outside messages, turns pending timers into dead letters, lets
//! queued messages drain (receivers may still message live receivers), and deactivates every
//! live receiver once: each as soon as its own mailbox is empty (an idle one at once), not
//! after all have drained. So a message sent to a receiver being deactivated or gone (from a
//! `deactivated` hook, say) is a [`Closed`](DeadLetterReason::Closed) dead letter: closing
//! activates no receiver. Closing always finishes: after [`Config::drain_limit`] deliveries it
//! stops draining, and whatever is still queued or sent becomes a dead letter.
//!
//! # Invariants
//!
//! Hold for every sequence of inputs and every order in which a driver handles commands
//! (checked by the `hermes-check` model checker, under `cargo fuzz run router` and seeded tests):
//!
//! 1. Every accepted message is delivered exactly once or reported exactly once as a dead letter.
//! 2. Messages from one sender to one receiver arrive in send order.
//! 3. A receiver runs at most one message at a time (at most one activation checked out).
//! 4. A receiver is deactivated only when not running, with an empty mailbox, after its idle
//!    timeout, or on stop, panic or close; never twice.
//! 5. A timer fires once, never before its deadline; a cancelled timer never fires.
//! 6. After close completes every receiver was deactivated exactly once and no message is
//!    accepted.
//! 7. Stale handles never reach a newer receiver in a reused slot.
//! 8. Receivers with work scheduled or running are at most the receivers with non-empty
//!    mailboxes (work uses resources; idle receivers do not). One exception, while closing: a
//!    receiver whose mailbox the router emptied at its drain limit keeps the one `Run` already
//!    out (a command cannot be taken back), and a receiver activated after that limit gets one
//!    empty `Run`, so that its `activated` hook runs before its `deactivated` hook.
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use hermes_core::{Activation, Config, Context, Driver};
//!
//! #[derive(Debug)]
//! enum Msg { Add(u64), Tick }
//!
//! let mut driver = Driver::new(Config::default(), |_id: &String| {
//!     let mut total = 0;
//!     Activation::ready(move |ctx: &mut Context<'_, String, Msg>, msg| match msg {
//!         Msg::Add(n) => {
//!             total += n;
//!             ctx.schedule(Duration::from_secs(1), Msg::Tick);
//!         }
//!         Msg::Tick => ctx.stop(),
//!     })
//! });
//! let start = Instant::now();
//! driver.send("account-1".into(), Msg::Add(5)).unwrap();
//! driver.run(start);
//! assert_eq!(driver.router().stats().idle, 1);
//! driver.run(start + Duration::from_secs(1)); // the Tick fires; the receiver stops
//! assert_eq!(driver.router().stats().live, 0);
//! ```

#![warn(missing_debug_implementations)]

mod addr;
mod app;
mod clock;
mod command;
mod context;
mod driver;
mod error;
mod factory;
mod idle;
mod job;
mod mailbox;
mod placement;
mod receiver;
mod router;
mod slot;
mod stats;
mod task;
pub mod testkit;
mod timers;

pub use addr::{Addr, Recipient};
pub use app::{App, Kind, KindAdapter, KindTable, Kinds, Settings};
pub use clock::{Clock, SystemClock, deadline};
pub use command::Command;
pub use context::Context;
pub use driver::Driver;
pub use error::{CommandError, DeadLetter, DeadLetterReason, SendError, SendErrorKind};
pub use factory::{Activation, Factory, FactoryError, SharedFactory, share};
pub use hermes_reply::{AskError, Asked, Reply};
pub use job::{Done, Job, panic_message};
pub use placement::{Location, NodeId, Placement, Sharded, id_hash};
pub use receiver::{Deactivation, Receiver};
#[cfg(feature = "fault-injection")]
pub use router::Fault;
pub use router::{Config, Outbound, Pressure, Router};
pub use stats::Stats;
pub use task::{Task, TaskId};
pub use timers::TimerId;

/// What a receiver ID must be: cloneable, hashable (for placement and lookup), printable in
/// logs, and sendable between threads. Implemented for every such type.
pub trait Key: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + 'static {}

impl<T: Clone + Eq + std::hash::Hash + std::fmt::Debug + Send + 'static> Key for T {}

/// What a message must be: sendable between threads. Implemented for every such type.
pub trait Message: Send + 'static {}

impl<T: Send + 'static> Message for T {}

// Properties the executors rely on.
static_assertions::assert_impl_all!(Router<u64, String>: Send);
static_assertions::assert_impl_all!(Job<u64, String>: Send);
static_assertions::assert_impl_all!(Done<u64, String>: Send);
static_assertions::assert_impl_all!(Addr: Copy, Send, Sync);
static_assertions::assert_impl_all!(TimerId: Copy, Send, Sync);
static_assertions::const_assert!(std::mem::size_of::<Addr>() == 12);
static_assertions::const_assert!(std::mem::size_of::<TimerId>() == 16);
static_assertions::const_assert!(std::mem::size_of::<Command>() <= 16);
