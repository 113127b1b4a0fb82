//! The seam to a cluster's transport: where messages for receivers on other nodes go.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hermes_core::{DeadLetterReason, NodeId};
use hermes_reply::Signal;

/// Takes messages for receivers that placement puts on another node
/// ([`Location::Node`](hermes_core::Location::Node)) to that node: the cluster's transport
/// (`hermes-cluster`). Set it with [`Options::remote`](crate::Options::remote); without one,
/// such messages are dead letters ([`DeadLetterReason::Unreachable`]).
///
/// Called on a shard's thread once per destination node per turn (a batch in send order), and
/// on the sender's thread for messages from the handle. It must not block: queue the batch and
/// return.
pub trait Remote<K, M>: Send + Sync + 'static {
    /// Takes the messages of `batch` (receivers' IDs and messages, in send order) for `node`,
    /// leaving `batch` empty. On `Err`, the messages left in `batch` are not sent: they become
    /// dead letters with that reason (from a shard) or a refused send (from the handle).
    fn deliver(&self, node: NodeId, batch: &mut Vec<(K, M)>) -> Result<(), DeadLetterReason>;
}

/// A hand-off in progress: counts the shards that still have receivers placed on another node.
pub(crate) struct Release {
    left: AtomicUsize,
    pub(crate) done: Signal<()>,
}

impl Release {
    pub(crate) fn new(shards: usize) -> Arc<Self> {
        let release = Arc::new(Release {
            left: AtomicUsize::new(shards),
            done: Signal::default(),
        });
        if shards == 0 {
            let _ = release.done.set(());
        }
        release
    }

    /// One shard has released everything that moved.
    pub(crate) fn arrive(&self) {
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.done.set(());
        }
    }
}
