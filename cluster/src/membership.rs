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
        state.previous = previous;
        state.hash = view_hash(&current);
        state.current = current;
        state.since = Instant::now();
        drop(state);
        self.changed.notify_all();
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
