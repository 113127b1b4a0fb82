//! Membership: heartbeats in a JetStream key-value bucket whose entries expire, the view every
//! node computes from it, and the hand-off barrier between an old owner and a new one.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures_util::StreamExt;
use hermes_core::{Activation, Factory, Key, KindTable, Message, NodeId, id_hash};
use serde::{Deserialize, Serialize};

use crate::placement::{ClusterPlacement, owner};

/// The bucket key of a node.
pub(crate) fn member_key(node: NodeId) -> String {
    format!("{:016x}", node.0)
}

/// What a node announces about itself.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct Announce {
    pub(crate) name: String,
    pub(crate) id: u64,
}

/// A node finished releasing the IDs it lost in the view with this hash.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(crate) struct Released {
    pub(crate) node: u64,
    pub(crate) view: u64,
}

/// A hash naming a membership view, the same on every node that sees that view.
pub(crate) fn view_hash(members: &[NodeId]) -> u64 {
    id_hash(&members.iter().map(|n| n.0).collect::<Vec<_>>())
}

/// The nodes in the bucket now (keys present; expired ones are gone).
pub(crate) async fn members(kv: &kv::Store) -> Result<Vec<NodeId>, String> {
    let mut keys = kv.keys().await.map_err(|e| e.to_string())?;
    let mut nodes = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.map_err(|e| e.to_string())?;
        match u64::from_str_radix(&key, 16) {
            Ok(id) => nodes.push(NodeId(id)),
            Err(_) => tracing::warn!(key, "ignoring a membership entry that names no node"),
        }
    }
    Ok(nodes)
}

/// Holds back activations of IDs this node gained from a live node until that node says it
/// released them (or the hand-off timeout passes).
pub(crate) struct Gate {
    me: NodeId,
    timeout: Duration,
    state: Mutex<GateState>,
    changed: Condvar,
}

struct GateState {
    /// The view before the latest change.
    previous: Arc<Vec<NodeId>>,
    current: Arc<Vec<NodeId>>,
    hash: u64,
    since: Instant,
    /// Each node's latest release, by view hash.
    released: HashMap<NodeId, u64>,
    /// No view change seen yet: this node has only just started.
    first: bool,
}

impl Gate {
    pub(crate) fn new(me: NodeId, timeout: Duration, view: Arc<Vec<NodeId>>) -> Self {
        Gate {
            me,
            timeout,
            state: Mutex::new(GateState {
                previous: Arc::clone(&view),
                hash: view_hash(&view),
                current: view,
                since: Instant::now(),
                released: HashMap::new(),
                first: true,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The membership changed from `previous` to `current`.
    pub(crate) fn view_changed(&self, previous: Arc<Vec<NodeId>>, current: Arc<Vec<NodeId>>) {
        let mut state = self.lock();
        state.previous = if std::mem::take(&mut state.first) {
            // Just started: before this node joined, the others owned everything, so they
            // are the previous owners to wait for (not this node's view of itself alone).
            let others: Vec<NodeId> = current.iter().copied().filter(|&n| n != self.me).collect();
            Arc::new(others)
        } else {
            previous
        };
        state.hash = view_hash(&current);
        state.current = current;
        state.since = Instant::now();
        drop(state);
        self.changed.notify_all();
    }

    /// This node's first look at the membership is done: later changes are ordinary ones.
    pub(crate) fn settle(&self) {
        self.lock().first = false;
    }

    /// `node` released what it lost in view `view`.
    pub(crate) fn released(&self, node: NodeId, view: u64) {
        self.lock().released.insert(node, view);
        self.changed.notify_all();
    }

    /// Waits until the ID with hash `hash` may be activated here: its previous owner is this
    /// node, gone, or has released it, or the hand-off timeout has passed. True if it had to
    /// give up waiting (the timeout passed).
    pub(crate) fn wait(&self, hash: u64) -> bool {
        let mut state = self.lock();
        loop {
            let previous = owner(hash, &state.previous);
            let blocking = match previous {
                Some(p) if p != self.me && state.current.contains(&p) => {
                    state.released.get(&p) != Some(&state.hash)
                }
                _ => false,
            };
            if !blocking {
                return false;
            }
            let waited = state.since.elapsed();
            if waited >= self.timeout {
                tracing::warn!(
                    timeout = ?self.timeout,
                    "the previous owner did not release an ID in time: activating it anyway \
                     (its saves are compare-and-set, so a stale owner cannot overwrite it)"
                );
                return true;
            }
            state = self
                .changed
                .wait_timeout(state, self.timeout - waited)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// The application's factory behind the hand-off gate.
pub(crate) struct Gated<F> {
    pub(crate) inner: F,
    pub(crate) gate: Arc<Gate>,
    pub(crate) placement: Arc<ClusterPlacement>,
}

impl<K: Key, M: Message, F: Factory<K, M>> Factory<K, M> for Gated<F> {
    type App = F::App;

    fn create(&self, id: &K) -> Activation<K, M> {
        let hash = id_hash(id);
        if self.placement.owner_of(hash) == Some(self.placement.me()) {
            self.gate.wait(hash);
        }
        self.inner.create(id)
    }

    fn kinds(&self) -> Option<KindTable<K>> {
        self.inner.kinds()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = NodeId(1);
    const B: NodeId = NodeId(2);
    const C: NodeId = NodeId(3);

    /// A hash that `members` gives to `node`.
    fn owned_by(node: NodeId, members: &[NodeId]) -> u64 {
        (0..).find(|h| owner(*h, members) == Some(node)).unwrap()
    }

    #[test]
    fn a_joining_node_waits_for_the_previous_owner_to_release() {
        let gate = Arc::new(Gate::new(A, Duration::from_secs(5), Arc::new(vec![A])));
        let all = Arc::new(vec![A, B, C]);
        gate.view_changed(Arc::new(vec![A]), Arc::clone(&all));
        gate.settle();
        // Was B's (of B and C), is A's now: wait for B.
        let hash = (0..)
            .find(|h| owner(*h, &[B, C]) == Some(B) && owner(*h, &all) == Some(A))
            .unwrap();
        let releaser = {
            let gate = Arc::clone(&gate);
            let view = view_hash(&all);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                gate.released(C, view); // not the one A waits for
                std::thread::sleep(Duration::from_millis(50));
                gate.released(B, view);
            })
        };
        let start = Instant::now();
        assert!(!gate.wait(hash), "released in time");
        assert!(start.elapsed() >= Duration::from_millis(90));
        releaser.join().unwrap();
    }

    #[test]
    fn no_wait_for_a_gone_owner_and_a_timeout_otherwise() {
        let gate = Gate::new(A, Duration::from_millis(50), Arc::new(vec![A]));
        gate.settle();
        // C left: its IDs are A's or B's now, and nobody waits for C.
        gate.view_changed(Arc::new(vec![A, B, C]), Arc::new(vec![A, B]));
        assert!(!gate.wait(owned_by(C, &[A, B, C])));
        // A's own IDs never wait.
        assert!(!gate.wait(owned_by(A, &[A, B, C])));
        // Joining while B never releases: the wait times out.
        let joining = Gate::new(A, Duration::from_millis(50), Arc::new(vec![A]));
        joining.view_changed(Arc::new(vec![A]), Arc::new(vec![A, B]));
        let hash = (0..)
            .find(|h| owner(*h, &[B]) == Some(B) && owner(*h, &[A, B]) == Some(A))
            .unwrap();
        let start = Instant::now();
        assert!(joining.wait(hash), "times out without B's release");
        assert!(start.elapsed() >= Duration::from_millis(45));
    }
}
