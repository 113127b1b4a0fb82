//! Address handles: a route cache that skips hashing the ID.

use std::fmt;

/// A handle to the slot of a live receiver: slot index plus generation.
///
/// Sending by handle skips hashing the ID. A handle goes stale when its receiver's slot is freed
/// (the receiver was deactivated with nothing queued); a stale handle is rejected, never delivered
/// to a newer receiver that reuses the slot. Get one with [`Router::addr`](crate::Router::addr)
/// or [`Context::addr`](crate::Context::addr).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Addr {
    pub(crate) router: u32,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl Addr {
    /// The router (shard) the receiver lives on.
    pub fn router(self) -> u32 {
        self.router
    }

    /// The slot index (for logs and sharding; not an identity).
    pub fn index(self) -> u32 {
        self.index
    }

    /// The generation of the slot this handle was issued for.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

impl fmt::Debug for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Addr({}:{}v{})",
            self.router, self.index, self.generation
        )
    }
}

/// Where a message goes: a receiver ID, or a handle to a live receiver.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Recipient<K> {
    /// The receiver with this ID; it is activated if it is not live.
    Id(K),
    /// The live receiver behind this handle; rejected if the handle is stale.
    Addr(Addr),
}
