//! What every Hermes executor shares, written once.
//!
//! - [`Hermes`]: the handle users get from every executor (`send`, `schedule`, `ask`,
//!   `shutdown`, `stats`), the same type whichever executor runs the receivers.
//! - [`Reply`] / [`Asked`]: request/reply, a small oneshot that works with any executor or none.
//! - [`Options`]: shard count, router [`Config`](hermes_core::Config), dead-letter sink.
//! - For executor authors: [`launch`] splits Hermes into [`Shard`]s; an executor runs each in a
//!   loop of [`Shard::turn`], parking when told ([`Turn::Park`]) until its [`Wake`] fires or the
//!   deadline passes. That loop is all an executor adds: the routing, sharding, cross-shard
//!   batching, timers, dead letters and close are here. [`Crew`] is that loop for a pool of
//!   threads that may run each other's shards (the pool executor's).
//!
//! # How it runs
//!
//! Hermes runs `N` shards, each a single-threaded [`Router`](hermes_core::Router) that owns the
//! receivers whose ID hashes to it ([`Sharded`](hermes_core::Sharded)). Receivers run inline on
//! their shard, one message at a time; a receiver that blocks holds up its shard. A message for
//! another shard goes to that shard's inbox, in one batch per destination per turn. A shard
//! with no work parks until a message arrives or its next timer is due: idle Hermes uses no CPU.
//!
//! Shutdown refuses new messages, closes every router (queued messages drain, every live
//! receiver is deactivated once with its hook run), and finishes when every shard has closed.
//! A message that reaches a shard that has already closed becomes a dead letter: nothing is
//! dropped silently.
//!
//! # Example: a minimal executor
//!
//! A real executor parks a thread or task; this one turns every shard on the calling thread.
//!
//! ```
//! use hermes_core::{Activation, Config, Context, SystemClock};
//! use hermes_executor::{launch, Options, Reply, Runtime, Turn, Wake};
//!
//! struct NoBell;
//! impl Wake for NoBell { fn wake(&self) {} }
//! struct Inline;
//! impl Runtime for Inline {
//!     fn spawn(&self, _task: hermes_executor::Spawned) {
//!         unreachable!("no receiver here starts work")
//!     }
//! }
//!
//! enum Msg { Add(u64), Get(Reply<u64>) }
//!
//! let options = Options::new(Config::default()).shards(2);
//! let (hermes, shards) = launch(options, |_id: &u32| {
//!     let mut total = 0;
//!     Activation::ready(move |_ctx: &mut Context<'_, u32, Msg>, msg| match msg {
//!         Msg::Add(n) => total += n,
//!         Msg::Get(reply) => { let _ = reply.send(total); }
//!     })
//! }, Inline, || (NoBell, ()));
//! let mut shards: Vec<_> = shards.into_iter().map(|(shard, ())| shard).collect();
//!
//! hermes.send(7, Msg::Add(2)).unwrap();
//! hermes.send(7, Msg::Add(3)).unwrap();
//! let asked = hermes.ask(7, Msg::Get);
//! let finished = hermes.shutdown_async();
//! while shards.iter_mut().any(|s| s.turn(&SystemClock) != Turn::Exit) {}
//! drop(shards); // a finished shard is dropped: that ends its thread or task
//! assert_eq!(asked.wait(), Ok(5));
//! assert_eq!(finished.wait().deactivations, 1);
//! ```

#![warn(missing_debug_implementations)]

mod crew;
mod handle;
mod inbox;
mod options;
mod remote;
mod shard;

pub use crew::{Crew, Crewed};
pub use handle::{
    Finished, Hermes, Launched, Refused, Released, Runtime, Shards, Spawned, WouldDeadlock, launch,
};
pub use hermes_reply::{AskError, Asked, Reply};
pub use inbox::Wake;
#[cfg(feature = "fault-injection")]
pub use options::ShardFault;
pub use options::{Options, StartError};
pub use remote::Remote;
pub use shard::{Shard, Turn, hosts_shards};

pub use hermes_core::{Key, Message};
