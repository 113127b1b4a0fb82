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

mod addr;
mod command;
mod context;
mod driver;
mod error;
mod factory;
mod job;
mod placement;
mod receiver;
mod router;
mod slot;
mod stats;
pub mod testkit;
mod timers;

pub use addr::{Addr, Recipient};
pub use command::Command;
pub use context::Context;
pub use driver::Driver;
pub use error::{CommandError, DeadLetter, DeadLetterReason, SendError, SendErrorKind};
pub use factory::{Activation, Factory, FactoryError};
pub use job::{Done, Job, panic_message};
pub use placement::{Placement, Sharded};
pub use receiver::{Deactivation, Receiver};
#[cfg(feature = "fault-injection")]
pub use router::Fault;
pub use router::{Config, Router};
pub use stats::Stats;
pub use timers::TimerId;

// Properties the executors rely on.
static_assertions::assert_impl_all!(Router<u64, String>: Send);
static_assertions::assert_impl_all!(Job<u64, String>: Send);
static_assertions::assert_impl_all!(Done<u64, String>: Send);
static_assertions::assert_impl_all!(Addr: Copy, Send, Sync);
static_assertions::assert_impl_all!(TimerId: Copy, Send, Sync);
static_assertions::const_assert!(std::mem::size_of::<Addr>() == 12);
static_assertions::const_assert!(std::mem::size_of::<TimerId>() == 16);
static_assertions::const_assert!(std::mem::size_of::<Command>() <= 16);
