//! Hermes across machines: a cluster of nodes on [NATS](https://nats.io), with the same API as
//! one machine, and receivers that survive a node's death.
//!
//! Hermes builds no transport, membership or consensus of its own: nodes talk over a NATS
//! server (core NATS subjects for messages, JetStream key-value buckets for membership and
//! durable state). A node joins by naming a NATS URL, a cluster name and its own name, and gets
//! the same [`Hermes`](hermes_executor::Hermes) handle, receivers, kinds, timers, asks and
//! durable state as on one machine.
//!
//! ```no_run
//! use std::time::Duration;
//! use hermes_cluster::{Cluster, ClusterConfig};
//! use hermes_core::{Activation, Config, Context, Reply};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! enum Msg { Deposit(u64), Balance(Reply<u64>) }
//!
//! let cluster = Cluster::connect(ClusterConfig::new("nats://127.0.0.1:4222", "bank", "a"))?;
//! let node = cluster.start(Config::default(), |_id: &String| {
//!     let mut balance = 0;
//!     Activation::ready(move |_ctx: &mut Context<'_, String, Msg>, msg| match msg {
//!         Msg::Deposit(n) => balance += n,
//!         Msg::Balance(reply) => { let _ = reply.send(balance); }
//!     })
//! })?;
//! // "alice" lives on one node of the cluster; this works from any of them.
//! node.hermes().send("alice".into(), Msg::Deposit(42))?;
//! let balance = node.hermes().ask_blocking("alice".into(), Msg::Balance, Duration::from_secs(5));
//! node.shutdown();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See the crate's README (`cluster/README.md`) for the architecture, the wire format and the
//! guarantees, in full; in brief:
//!
//! - **Placement.** Every ID has one owner among the members: rendezvous hashing of the ID
//!   over the membership ([`owner`]), then the owner's local shards. A node joining or leaving
//!   moves only the IDs it gains or loses.
//! - **Transport.** One subject per node, `hermes.{cluster}.node.{id}`; a shard's mail for a
//!   node in one turn is one frame (postcard; several if it exceeds the server's
//!   `max_payload`), published in order by one task per node, so messages from one sender to
//!   one receiver keep their order while the membership is stable.
//!   Asks cross nodes: a [`Reply`](hermes_core::Reply) travels as a token and the answer comes
//!   back over NATS.
//! - **Membership.** Heartbeats are puts to a JetStream key-value bucket whose entries expire
//!   after the liveness timeout; every node reads the bucket each heartbeat. A node that stops
//!   heartbeating drops out; one that leaves gracefully deletes its entry. A node that finds
//!   its entry expired when it reaches the server again (it was cut off) drops its receivers
//!   and joins again.
//! - **Hand-off.** On a membership change, every node deactivates the receivers it lost
//!   (their `deactivated` hooks save their state) and announces it; a node that gained an ID
//!   from a live node waits for every other member's announcement (or the hand-off timeout)
//!   before activating it. Messages that reach the old owner meanwhile are forwarded.
//! - **State.** [`KvStore`], a [`Store`](hermes_store::Store) on a JetStream key-value bucket,
//!   with compare-and-set on revisions: a stale owner's save fails
//!   ([`StoreError::Conflict`](hermes_store::StoreError::Conflict)) instead of overwriting the
//!   new owner's; and a member writes only within the liveness timeout of its last heartbeat
//!   (a lease), so a node cut off cannot save stale state once the others may have moved on.
//! - **Simulation.** With feature `sim`, `sim::ClusterSim` runs several nodes with their
//!   real shards and the cluster's real decisions (placement, hand-off gate, forwarding,
//!   compare-and-set) over a simulated NATS, membership and state bucket, with message delays,
//!   crashes, partitions and pauses, all from one seed: a failing run replays.
//!
//! Tests start a real `nats-server` (Debian package `nats-server`) and are skipped, with a
//! message, where it is not installed, unless `HERMES_REQUIRE_NATS=1` (set by CI).

#![warn(missing_debug_implementations)]

mod config;
mod membership;
mod node;
mod placement;
#[cfg(feature = "sim")]
pub mod sim;
mod store;
mod transport;
mod wire;

pub mod testing;

pub use config::ClusterConfig;
pub use node::{Cluster, DeadLetterSink, Node};
pub use placement::{node_id, owner};
pub use store::KvStore;

use std::fmt;

/// A random number, different in every process and call (std's hasher keys, the process id
/// and the time): ask tokens' start, a node's instance number.
pub(crate) fn random_u64() -> u64 {
    use std::hash::BuildHasher;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    std::collections::hash_map::RandomState::new().hash_one((std::process::id(), now))
}

/// Why a node could not join its cluster.
///
/// The message includes the cause's, so [`source`](std::error::Error::source) is `None`: an
/// error reporter that prints the chain shows the cause once.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClusterError {
    /// The configuration is not usable; the message says what to change.
    Config(String),
    /// The NATS server could not be reached.
    Connect(String),
    /// JetStream (the key-value buckets) is not available.
    JetStream(String),
    /// The local Hermes could not start (the message includes its error's).
    Start(hermes_executor::StartError),
}

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClusterError::Config(m) | ClusterError::Connect(m) | ClusterError::JetStream(m) => {
                f.write_str(m)
            }
            ClusterError::Start(e) => write!(f, "the node's Hermes could not start: {e}"),
        }
    }
}

/// No source: the message includes the cause's (see [`ClusterError`]).
impl std::error::Error for ClusterError {}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::ClusterError;

    #[test]
    fn a_start_error_shows_its_cause_once() {
        let cause = std::io::Error::other("out of threads (a test's cause)");
        let e = ClusterError::Start(hermes_executor::StartError::Spawn(cause));
        let shown = e.to_string();
        assert_eq!(shown.matches("a test's cause").count(), 1, "{shown}");
        assert!(
            e.source().is_none(),
            "a chain reporter would print the cause twice"
        );
    }
}
