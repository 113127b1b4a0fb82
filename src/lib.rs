//! Hermes routes messages to receivers addressed by application IDs.
//!
//! This facade re-exports [`hermes_core`] (receivers, context, factories, the sans-IO
//! [`Router`]), the handle every executor returns ([`Hermes`], with [`Reply`] for
//! request/reply), and, by feature, the executors:
//!
//! | feature | executor | start with |
//! | --- | --- | --- |
//! | `pool` (default) | one parked thread per shard | [`pool::start`] |
//! | `tokio` | one tokio task per shard | `tokio::start` (inside a runtime) or `tokio::start_on` |
//! | `smol` | one smol task per shard | `smol::start` (global executor) or `smol::start_on` |
//!
//! Every executor passes the same conformance suite and returns the same [`Hermes`] handle.
//!
//! ```
//! # #[cfg(feature = "pool")] {
//! use std::time::Duration;
//! use hermes::{Activation, Config, Context, Reply};
//!
//! enum Msg { Deposit(u64), Balance(Reply<u64>) }
//!
//! let hermes = hermes::pool::start(Config::default(), |_id: &String| {
//!     let mut balance = 0;
//!     Activation::ready(move |_ctx: &mut Context<'_, String, Msg>, msg| match msg {
//!         Msg::Deposit(n) => balance += n,
//!         Msg::Balance(reply) => { let _ = reply.send(balance); }
//!     })
//! }).unwrap();
//! hermes.send("alice".into(), Msg::Deposit(30)).unwrap();
//! hermes.send("alice".into(), Msg::Deposit(12)).unwrap();
//! let balance = hermes.ask_blocking("alice".into(), Msg::Balance, Duration::from_secs(5));
//! assert_eq!(balance, Ok(42));
//! let stats = hermes.shutdown(); // drains, runs every `deactivated` hook, joins the threads
//! assert_eq!(stats.deactivations, 1);
//! # }
//! ```

pub use hermes_core::*;
pub use hermes_executor::{
    AskError, Asked, Finished, Hermes, Key, Message, Options, Reply, StartError,
};

/// Building blocks for writing another executor: see [`hermes_executor`].
pub mod executor {
    pub use hermes_executor::{Runtime, Shard, Shards, Turn, Wake, WouldDeadlock, launch};
}

/// The hand-rolled thread pool (feature `pool`, on by default): see [`hermes_pool`].
#[cfg(feature = "pool")]
pub mod pool {
    pub use hermes_pool::{start, start_with};
}

/// Shards as tokio tasks (feature `tokio`): see [`hermes_tokio`].
#[cfg(feature = "tokio")]
pub mod tokio {
    pub use hermes_tokio::{start, start_on, start_with};
}

/// Shards as smol tasks (feature `smol`): see [`hermes_smol`].
#[cfg(feature = "smol")]
pub mod smol {
    pub use hermes_smol::{start, start_on, start_with};
}

/// Durable receiver state (feature `store`, on by default): see [`hermes_store`].
#[cfg(feature = "store")]
pub mod store {
    pub use hermes_store::*;
}

/// Deterministic simulation (feature `sim`): see [`hermes_sim`].
#[cfg(feature = "sim")]
pub use hermes_sim as sim;

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
