//! Placement: which IDs a router owns. Messages for IDs it does not own leave it through
//! [`Router::poll_outbound`](crate::Router::poll_outbound), so one abstraction serves several
//! routers in a process (shards) and, later, in a cluster.

use std::hash::{BuildHasher, Hash};

use foldhash::fast::FixedState;

/// Decides which IDs a router owns.
pub trait Placement<K>: Send + 'static {
    /// True if receivers with this ID live on this router.
    fn owns(&self, id: &K) -> bool;
}

/// Owns `index` of `count` shards, by a hash of the ID that is the same in every router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sharded {
    /// This router's shard.
    pub index: u32,
    /// How many shards there are.
    pub count: u32,
}

impl Sharded {
    /// The shard, out of `count`, that owns `id`.
    ///
    /// ```
    /// let shard = hermes_core::Sharded::shard_of(&"sensor-7", 4);
    /// assert!(shard < 4);
    /// assert_eq!(shard, hermes_core::Sharded::shard_of(&"sensor-7", 4));
    /// ```
    pub fn shard_of<K: Hash + ?Sized>(id: &K, count: u32) -> u32 {
        // A fixed seed: every router, thread and process agrees on placement.
        const SEED: u64 = 0x6865_726d_6573_2121;
        let hash = FixedState::with_seed(SEED).hash_one(id);
        // Multiply-shift maps the hash onto 0..count without a division.
        ((u128::from(hash) * u128::from(count.max(1))) >> 64) as u32
    }
}

impl<K: Hash> Placement<K> for Sharded {
    fn owns(&self, id: &K) -> bool {
        Sharded::shard_of(id, self.count) == self.index
    }
}

impl<K, F> Placement<K> for F
where
    F: Fn(&K) -> bool + Send + 'static,
{
    fn owns(&self, id: &K) -> bool {
        self(id)
    }
}
