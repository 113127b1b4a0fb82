//! Placement across nodes: rendezvous hashing over the membership, local shards under it.

use std::hash::Hash;
use std::sync::{Arc, PoisonError, RwLock};

use hermes_core::{Location, NodeId, Placement, id_hash};

/// The node that owns an ID with hash `hash` among `members`, by rendezvous (highest random
/// weight) hashing: every node computes the same owner from the same membership, and when a
/// node joins or leaves only the IDs it gains or loses move. `None` if there are no members.
///
/// ```
/// use hermes_cluster::owner;
/// use hermes_core::NodeId;
///
/// let members = [NodeId(1), NodeId(2), NodeId(3)];
/// let before = owner(42, &members).unwrap();
/// // Removing another node never moves this ID.
/// let others: Vec<_> = members.iter().copied().filter(|&n| n != before).collect();
/// let rest: Vec<_> = members.iter().copied().filter(|&n| n != others[0]).collect();
/// assert_eq!(owner(42, &rest), Some(before));
/// ```
pub fn owner(hash: u64, members: &[NodeId]) -> Option<NodeId> {
    members
        .iter()
        .copied()
        .max_by_key(|node| (weight(hash, *node), *node))
}

/// A well-mixed weight of (ID hash, node): splitmix64 of their combination.
fn weight(hash: u64, node: NodeId) -> u64 {
    let mut z = hash ^ node.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The number of a node with this name: what placement and subjects use.
pub fn node_id(name: &str) -> NodeId {
    NodeId(id_hash(name))
}

/// Where an ID lives in the cluster: its owner by [`owner`] over the current membership, and
/// on this node, its shard.
pub(crate) struct ClusterPlacement {
    me: NodeId,
    member: bool,
    shards: u32,
    view: RwLock<Arc<Vec<NodeId>>>,
}

impl ClusterPlacement {
    pub(crate) fn new(me: NodeId, member: bool, shards: u32) -> Self {
        let view = if member { vec![me] } else { Vec::new() };
        ClusterPlacement {
            me,
            member,
            shards: shards.max(1),
            view: RwLock::new(Arc::new(view)),
        }
    }

    /// The current membership, sorted.
    pub(crate) fn view(&self) -> Arc<Vec<NodeId>> {
        Arc::clone(&self.view.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the membership; a member always counts itself in. True if it changed.
    pub(crate) fn set_view(&self, mut members: Vec<NodeId>) -> bool {
        if self.member && !members.contains(&self.me) {
            members.push(self.me);
        }
        members.sort_unstable();
        members.dedup();
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        if **view == members {
            return false;
        }
        *view = Arc::new(members);
        true
    }

    /// This node left the cluster: the view without it, so that what still arrives here is
    /// passed on to the new owners. False (and nothing changed) if no other member is known.
    pub(crate) fn leave(&self) -> bool {
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        let others: Vec<NodeId> = view.iter().copied().filter(|&n| n != self.me).collect();
        if others.is_empty() {
            return false;
        }
        *view = Arc::new(others);
        true
    }

    /// This node's membership entry expired: the view without it (empty if no other member is
    /// known), so that it owns no ID and releases every receiver, until a view read after it
    /// announced itself again ([`set_view`](ClusterPlacement::set_view)) counts it in. Until
    /// then, alone, every ID is nobody's: messages for them are `Unreachable` dead letters.
    pub(crate) fn drop_out(&self) {
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        let others: Vec<NodeId> = view.iter().copied().filter(|&n| n != self.me).collect();
        *view = Arc::new(others);
    }

    /// The owner of `hash` in `members` (the current view if `None`).
    pub(crate) fn owner_of(&self, hash: u64) -> Option<NodeId> {
        owner(
            hash,
            &self.view.read().unwrap_or_else(PoisonError::into_inner),
        )
    }

    pub(crate) fn me(&self) -> NodeId {
        self.me
    }
}

/// A node that owns nothing: what a client's placement answers with no members at all.
pub(crate) const NOBODY: NodeId = NodeId(0);

impl<K: Hash> Placement<K> for ClusterPlacement {
    fn locate(&self, id: &K) -> Location {
        let hash = id_hash(id);
        match self.owner_of(hash) {
            Some(node) if node == self.me => {
                // Multiply-shift onto the local shards, from the bits rendezvous did not use.
                let local = hash.rotate_left(32);
                Location::Shard(((u128::from(local) * u128::from(self.shards)) >> 64) as u32)
            }
            Some(node) => Location::Node(node),
            None => Location::Node(NOBODY),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A node that left owns nothing by its own view: every ID is another member's.
    #[test]
    fn a_node_that_left_places_every_id_on_the_others() {
        let p = ClusterPlacement::new(NodeId(1), true, 2);
        assert!(!p.leave(), "alone, there is nobody to pass mail on to");
        p.set_view(vec![NodeId(2), NodeId(3)]);
        assert!(p.leave());
        assert_eq!(*p.view(), [NodeId(2), NodeId(3)]);
        for i in 0..1000u32 {
            match p.locate(&i) {
                Location::Node(n) => assert!(n == NodeId(2) || n == NodeId(3)),
                other => panic!("{i} placed here after leaving: {other:?}"),
            }
        }
    }

    /// A node whose entry expired owns nothing, alone too, until its next view.
    #[test]
    fn a_node_that_dropped_out_owns_nothing_until_its_next_view() {
        let p = ClusterPlacement::new(NodeId(1), true, 2);
        p.drop_out();
        assert!(p.view().is_empty());
        assert_eq!(p.locate(&1u32), Location::Node(NOBODY));
        assert!(
            p.set_view(vec![]),
            "the next view counts this node in again"
        );
        assert_eq!(*p.view(), [NodeId(1)]);
        p.set_view(vec![NodeId(2)]);
        p.drop_out();
        assert_eq!(*p.view(), [NodeId(2)]);
    }

    #[test]
    fn rendezvous_moves_only_what_it_must() {
        let three = [NodeId(11), NodeId(22), NodeId(33)];
        let two = [NodeId(11), NodeId(22)];
        let mut moved = 0;
        for hash in 0..10_000u64 {
            let h = id_hash(&hash);
            let before = owner(h, &three).unwrap();
            let after = owner(h, &two).unwrap();
            if before != NodeId(33) {
                assert_eq!(before, after, "an ID of a surviving node moved");
            } else {
                moved += 1;
            }
        }
        // About a third each.
        assert!((2_800..3_900).contains(&moved), "{moved}");
    }

    #[test]
    fn placement_answers_shard_for_own_ids() {
        let p = ClusterPlacement::new(NodeId(1), true, 4);
        assert!(p.set_view(vec![NodeId(2)]));
        let mut local = 0;
        for i in 0..1000u32 {
            match p.locate(&i) {
                Location::Shard(s) => {
                    assert!(s < 4);
                    local += 1;
                }
                Location::Node(n) => assert_eq!(n, NodeId(2)),
                _ => unreachable!(),
            }
        }
        assert!((350..650).contains(&local), "{local}");
        let client = ClusterPlacement::new(NodeId(9), false, 1);
        assert_eq!(client.locate(&1u32), Location::Node(NOBODY));
    }
}
