//! Deterministic simulation for Hermes applications.
//!
//! [`Sim`] runs a whole application of receivers (your factory) on one thread, playing the
//! executor itself: a seeded scheduler decides which ready receiver runs next, how many run "at
//! once" (checked out to workers), when their results are checked back in, and when messages
//! between shards arrive. Time is virtual: it stands still while there is work and jumps to the
//! next timer when there is none, so a test covers hours of timeouts and heartbeats in
//! milliseconds, with no sleeping and no flakiness. Run a test under many seeds to explore
//! interleavings; when one fails, its seed replays exactly the same run.
//!
//! ```
//! use std::time::Duration;
//! use hermes_core::{Activation, Config, Context};
//! use hermes_sim::{Reply, Sim};
//!
//! enum Msg {
//!     Add(u64),
//!     Tick,
//!     Total(Reply<u64>),
//! }
//!
//! let mut sim = Sim::new(42, Config::default(), |_id: &&str| {
//!     let mut total = 0;
//!     Activation::ready(move |ctx: &mut Context<'_, &str, Msg>, msg| match msg {
//!         Msg::Add(n) => total += n,
//!         Msg::Tick => {
//!             total += 1;
//!             ctx.schedule(Duration::from_secs(60), Msg::Tick);
//!         }
//!         Msg::Total(reply) => reply.send(total),
//!     })
//! });
//! sim.send("counter", Msg::Tick).unwrap();
//! sim.send("counter", Msg::Add(10)).unwrap();
//! sim.run_for(Duration::from_secs(3600)); // an hour of ticks, in well under a millisecond
//! assert_eq!(sim.ask("counter", Msg::Total), Ok(10 + 61));
//! assert_eq!(sim.elapsed(), Duration::from_secs(3600));
//! ```
//!
//! Observe an application through [`Sim::ask`] (a request carrying this crate's [`Reply`]),
//! through [`Sim::wait`] (any reply that is a future, such as the executors' `Asked`), through
//! [`Sim::dead_letters`] and [`Sim::stats`], or by letting receivers write to shared state in
//! the test.
//!
//! Determinism holds as long as the receivers are deterministic: they read time only from
//! [`Context::now`](hermes_core::Context::now), and use no threads, real clocks or unseeded
//! randomness.

mod reply;
mod sim;

pub use reply::{AskError, Reply};
pub use sim::Sim;
