//! What the cluster's node tests share.

use std::time::{Duration, Instant};

use hermes_cluster::Node;
use hermes_core::{App, Message};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Waits (at most 10 s) until every node of `nodes` sees `n` members.
pub fn wait_members<M>(nodes: &[&Node<u64, M, (u64, M)>], n: usize)
where
    M: Message + Serialize + DeserializeOwned,
    (u64, M): App<Id = u64, Msg = M>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|node| node.members().len() != n) {
        assert!(
            Instant::now() < deadline,
            "membership did not settle on {n}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
