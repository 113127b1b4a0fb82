//! Hermes routes messages to receivers addressed by application IDs.
//!
//! A receiver is created by a factory when the first message for its ID arrives, handles one
//! message at a time, can swap its handler ([`Context::become_`]), can keep durable state
//! ([`store`]), gets timed messages ([`Context::schedule`]), and is deactivated when idle. Only
//! receivers with work use a thread or task.
//!
//! Start Hermes on an executor and use the [`Hermes`] handle it returns; every executor
//! returns the same handle and passes the same conformance suite:
//!
//! | feature | executor | start with |
//! | --- | --- | --- |
//! | `pool` (default) | one parked thread per shard | [`pool::start`] |
//! | `tokio` | one tokio task per shard | `tokio::start` (inside a runtime) or `tokio::start_on` |
//! | `smol` | one smol task per shard | `smol::start` (global executor) or `smol::start_on` |
//! | `sim` (default) | the same shards under a seeded scheduler and virtual time | [`sim::Sim::new`] |
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
//! let stats = hermes.shutdown().unwrap(); // drains, runs every `deactivated` hook, joins
//! assert_eq!(stats.deactivations, 1);
//! # }
//! ```
//!
//! To drive receivers from your own event loop instead, embed the sans-IO [`router::Router`]
//! (or the inline [`router::Driver`]); see the [`router`] module.

#![warn(missing_debug_implementations)]

pub use hermes_core::{
    Activation, Addr, App, Deactivation, DeadLetter, DeadLetterReason, Factory, FactoryError, Key,
    Kind, Kinds, Location, Message, NodeId, Placement, Receiver, Recipient, SendError,
    SendErrorKind, Settings, Sharded, Stats, TimerId, app,
};
pub use hermes_core::{Config, Context};
pub use hermes_executor::{
    AskError, Asked, Finished, Hermes, Options, Reply, StartError, WouldDeadlock,
};

/// The sans-IO core, for embedding Hermes in your own event loop: the
/// [`Router`](router::Router) state machine, its commands and pollers, an inline
/// [`Driver`](router::Driver), and the [`testkit`](router::testkit) for testing one receiver
/// alone. The router never reads a clock, spawns or does I/O; see [`hermes_core`] for its
/// lifecycle, time model and invariants.
pub mod router {
    pub use hermes_core::{
        Clock, Command, CommandError, Done, Driver, Job, KindAdapter, KindTable, Outbound, Router,
        SharedFactory, SystemClock, deadline, panic_message, share, testkit,
    };
}

/// Building blocks for writing another executor: [`launch`](executor::launch) splits Hermes
/// into shards, each run in a loop of [`Shard::turn`](executor::Shard::turn); see
/// [`hermes_executor`].
pub mod executor {
    pub use hermes_executor::{
        Runtime, Shard, Shards, Turn, Wake, WouldDeadlock, hosts_shards, launch,
    };
}

/// The hand-rolled thread pool (feature `pool`, on by default).
///
/// One thread per shard. A thread runs its home shard's turns back to back while there is
/// work; when there is none, it turns the shards its last turn sent mail to (if no other thread
/// is running them) instead of waking their threads, so two receivers on different shards that
/// talk to each other run on one thread. Then it watches its wake-up channel for a few tens of
/// microseconds, and sleeps until a message arrives or its next timer is due: an idle pool uses
/// no CPU. Receivers run on any of the pool's threads, one shard on one thread at a time; one
/// that blocks holds up its shard. The futures receivers start run on one more thread, where
/// the blocking forms refuse with [`WouldDeadlock`] (await `ask` and `shutdown_async` there).
/// [`Hermes::shutdown`] joins the threads.
#[cfg(feature = "pool")]
pub mod pool {
    #[doc(inline)]
    pub use hermes_pool::{start, start_with};
}

/// Shards as tokio tasks (feature `tokio`).
///
/// One task per shard on the current runtime ([`start`](tokio::start)) or the one behind a
/// handle ([`start_on`](tokio::start_on)); the runtime needs its time driver. From async code
/// use `ask(..).await` and `shutdown_async().await`: the blocking forms refuse with
/// [`WouldDeadlock`] on a current-thread runtime. If the runtime drops the shards before a
/// shutdown, they close where they are dropped, running every `deactivated` hook.
#[cfg(feature = "tokio")]
pub mod tokio {
    #[doc(inline)]
    pub use hermes_tokio::{start, start_on, start_with};
}

/// Shards as smol tasks (feature `smol`).
///
/// One task per shard on smol's global executor ([`start`](smol::start)) or an executor you
/// run ([`start_on`](smol::start_on)). The global executor runs on `SMOL_THREADS` threads (1
/// unless set). The blocking forms refuse with [`WouldDeadlock`] on the global executor's
/// threads, and on a thread of an executor you run once it has run a shard; from a task on your
/// executor that may be first on its thread, await the async forms (`ask(..).await`,
/// `send_async`, `shutdown_async`): a blocking form there blocks that thread.
#[cfg(feature = "smol")]
pub mod smol {
    #[doc(inline)]
    pub use hermes_smol::{start, start_on, start_with};
}

/// Durable receiver state (feature `store`, on by default): a [`Store`](store::Store) trait,
/// an in-memory store and the embedded redb store, group commit, and
/// [`Durable`](store::Durable) to load a receiver's serde state on activation and save it on
/// deactivation.
#[cfg(feature = "store")]
pub mod store {
    #[doc(inline)]
    pub use hermes_store::*;
}

/// Deterministic simulation (feature `sim`, on by default).
///
/// [`Sim`](sim::Sim) runs a whole application on one thread: the same shards as the
/// executors, a seeded scheduler deciding which shard turns next, and virtual time that jumps
/// to the next timer when nothing else can run. The same seed replays the same run; requests
/// use the same [`Reply`] as production code.
///
/// ```
/// use std::time::Duration;
/// use hermes::{Activation, Config, Context, Reply, sim::Sim};
///
/// enum Msg { Tick, Ticks(Reply<u64>) }
///
/// let mut sim = Sim::new(7, Config::default(), |_id: &&str| {
///     let mut ticks = 0;
///     Activation::ready(move |ctx: &mut Context<'_, &'static str, Msg>, msg| match msg {
///         Msg::Tick => {
///             ticks += 1;
///             ctx.schedule(Duration::from_secs(10), Msg::Tick);
///         }
///         Msg::Ticks(reply) => { let _ = reply.send(ticks); }
///     })
/// });
/// sim.send("heart", Msg::Tick).unwrap();
/// sim.run_for(Duration::from_secs(3 * 3600)); // three simulated hours, in milliseconds
/// assert_eq!(sim.ask("heart", Msg::Ticks), Ok(1 + 3 * 360));
/// ```
#[cfg(feature = "sim")]
pub mod sim {
    #[doc(inline)]
    pub use hermes_sim::{Sim, SimClock};
}

/// Hermes across machines (feature `cluster`): nodes on NATS with the same [`Hermes`] handle,
/// placement by rendezvous hashing over the membership, hand-off when nodes join and leave, and
/// durable state on JetStream key-value with compare-and-set; see [`hermes_cluster`].
#[cfg(feature = "cluster")]
pub mod cluster {
    #[doc(inline)]
    pub use hermes_cluster::*;
}

/// The README's code blocks, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
