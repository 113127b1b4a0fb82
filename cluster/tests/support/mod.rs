//! What the cluster's node tests share.

// Each test file uses its own share of these.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use hermes_cluster::Node;
use hermes_core::{App, Message};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The node tests' heartbeat.
pub const HEARTBEAT: Duration = Duration::from_millis(100);

/// The node tests' liveness timeout: many heartbeats, so that a loaded machine (CI runs the
/// workspace's tests at once) that stalls a node's heartbeats for a second or two does not
/// drop a live node from the membership, which moves its IDs in the middle of a test. No test
/// that uses it waits for it: their nodes leave gracefully, which removes them at once.
pub const LIVENESS: Duration = Duration::from_secs(5);

/// How long a test waits for the cluster to settle before it fails as hung: a few liveness
/// timeouts.
pub const SETTLE: Duration = Duration::from_secs(20);

/// Waits (at most `within`) until `done` is true; fails naming `what` otherwise.
pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (at most [`SETTLE`]) until every node of `nodes` sees `n` members.
pub fn wait_members<M>(nodes: &[&Node<u64, M, (u64, M)>], n: usize)
where
    M: Message + Serialize + DeserializeOwned,
    (u64, M): App<Id = u64, Msg = M>,
{
    wait_until(&format!("membership to settle on {n}"), SETTLE, || {
        nodes.iter().all(|node| node.members().len() == n)
    });
}
