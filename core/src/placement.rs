//! Placement: where an ID lives. Every part of Hermes that needs to know (a router deciding
//! whether a message is its own, the handle choosing a shard, the simulator) asks one
//! [`Placement`]; nothing else hashes IDs. A location is a shard of this process, or another
//! node of a cluster (`hermes-cluster`), whose transport takes the message there.

use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;

/// Where receivers with a given ID live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Location {
    /// Shard (router) `n` of this process.
    Shard(u32),
    /// Another node of a cluster: the executor hands the message to its transport (see
    /// `hermes_executor::Remote`); without one, the message is a dead letter
    /// ([`Unreachable`](crate::DeadLetterReason::Unreachable)).
    Node(NodeId),
}

/// A node of a cluster, as placement names it: a number every node agrees on (the cluster
/// derives it from the node's name). Nodes are not shards: a router never owns a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

/// Answers "where does this ID live". Shared by every router, handle and simulator of one
/// application, so they all agree.
pub trait Placement<K>: Send + Sync + 'static {
    /// Where receivers with this ID live. The same ID must always get the same answer.
    fn locate(&self, id: &K) -> Location;
}

/// Spreads IDs over `count` shards by a hash of the ID that is the same in every router,
/// thread and process.
///
/// ```
/// use hermes_core::{Location, Placement, Sharded};
///
/// let placement = Sharded::new(4);
/// let Location::Shard(shard) = placement.locate(&"sensor-7") else { unreachable!() };
/// assert!(shard < 4);
/// assert_eq!(placement.locate(&"sensor-7"), Location::Shard(shard));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sharded {
    count: u32,
}

impl Sharded {
    /// Placement over `count` shards (at least one).
    pub fn new(count: u32) -> Self {
        Sharded {
            count: count.max(1),
        }
    }

    /// How many shards IDs are spread over.
    pub fn count(self) -> u32 {
        self.count
    }

    /// The shard, out of `count`, that owns `id`.
    pub fn shard_of<K: Hash + ?Sized>(self, id: &K) -> u32 {
        if self.count == 1 {
            return 0;
        }
        // Multiply-shift maps the hash onto 0..count without a division.
        ((u128::from(id_hash(id)) * u128::from(self.count)) >> 64) as u32
    }
}

/// A hash of `id` that every router, thread and process agrees on (a fixed seed): what
/// placement divides IDs by, and how drivers name receivers to each other cheaply.
///
/// ```
/// assert_eq!(hermes_core::id_hash("sensor-7"), hermes_core::id_hash("sensor-7"));
/// ```
pub fn id_hash<K: Hash + ?Sized>(id: &K) -> u64 {
    const SEED: u64 = 0x6865_726d_6573_2121;
    FixedState::with_seed(SEED).hash_one(id)
}

impl<K: Hash> Placement<K> for Sharded {
    #[inline]
    fn locate(&self, id: &K) -> Location {
        Location::Shard(self.shard_of(id))
    }
}

impl<K, F> Placement<K> for F
where
    F: Fn(&K) -> Location + Send + Sync + 'static,
{
    fn locate(&self, id: &K) -> Location {
        self(id)
    }
}
