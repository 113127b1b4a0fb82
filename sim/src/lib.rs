//! Deterministic simulation for Hermes applications.
//!
//! [`Sim`] runs a whole application of receivers (your factory) on one thread. It runs the very
//! shards the executors run (the same turn loop, budgets, inboxes and park/wake protocol) and
//! plays the executor's threads itself: a seeded scheduler decides which shard with work turns
//! next, which decides when mail between shards is taken and in what interleaving receivers on
//! different shards run. Every interleaving it explores is one an executor can produce. Time is
//! virtual: it stands still while there is work and jumps to the next timer when there is none,
//! so a test covers hours of timeouts and heartbeats in milliseconds, with no sleeping and no
//! flakiness. Run a test under many seeds to explore interleavings; when one fails, its seed
//! replays exactly the same run.
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
//!     Activation::ready(move |ctx: &mut Context<'_, &'static str, Msg>, msg| match msg {
//!         Msg::Add(n) => total += n,
//!         Msg::Tick => {
//!             total += 1;
//!             ctx.schedule(Duration::from_secs(60), Msg::Tick);
//!         }
//!         Msg::Total(reply) => { let _ = reply.send(total); }
//!     })
//! });
//! sim.send("counter", Msg::Tick).unwrap();
//! sim.send("counter", Msg::Add(10)).unwrap();
//! sim.run_for(Duration::from_secs(3600)); // an hour of ticks, in well under a millisecond
//! assert_eq!(sim.ask("counter", Msg::Total), Ok(10 + 61));
//! assert_eq!(sim.elapsed(), Duration::from_secs(3600));
//! ```
//!
//! Observe an application through [`Sim::ask`] (a request carrying the same [`Reply`] the
//! executors use, so production message types work unchanged), through [`Sim::wait`] (any
//! future, such as `Hermes::ask` on [`Sim::handle`]), through
//! [`Sim::dead_letters`] and [`Sim::stats`], or by letting receivers write to shared state in
//! the test.
//!
//! Determinism holds as long as the receivers are deterministic: they read time only from
//! [`Context::now`](hermes_core::Context::now), and use no threads, real clocks or unseeded
//! randomness.

#![warn(missing_debug_implementations)]

mod sim;

pub use hermes_executor::{AskError, Reply};
pub use sim::{Sim, SimClock};
