//! How a node joins a cluster.

use std::time::Duration;

use crate::ClusterError;

/// The longest timing a node keeps (2^32 − 1 ms, about 49.7 days): a longer one counts as
/// this, so that deadlines computed from it (and multiples of it) stay representable.
const LONGEST: Duration = Duration::from_millis(u32::MAX as u64);

/// How a node joins a cluster: the NATS server, the cluster's name, the node's name, and the
/// timings of membership.
///
/// ```
/// use std::time::Duration;
/// use hermes_cluster::ClusterConfig;
///
/// let config = ClusterConfig::new("nats://127.0.0.1:4222", "bank", "a")
///     .heartbeat(Duration::from_millis(250))
///     .liveness_timeout(Duration::from_secs(2));
/// assert_eq!(config.node_name(), "a");
/// ```
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub(crate) nats_url: String,
    pub(crate) cluster: String,
    pub(crate) node: String,
    pub(crate) heartbeat: Duration,
    pub(crate) liveness: Duration,
    pub(crate) handoff_timeout: Duration,
    pub(crate) member: bool,
    pub(crate) outbound_capacity: usize,
    pub(crate) shards: usize,
    pub(crate) store_timeout: Duration,
}

impl ClusterConfig {
    /// A member node named `node` of the cluster `cluster`, on the NATS server at `nats_url`
    /// (with JetStream). Names are letters, digits, `-` and `_`; a node's name is unique in
    /// its cluster ([`Cluster::connect`](crate::Cluster::connect) refuses the name of a running
    /// node).
    pub fn new(
        nats_url: impl Into<String>,
        cluster: impl Into<String>,
        node: impl Into<String>,
    ) -> Self {
        ClusterConfig {
            nats_url: nats_url.into(),
            cluster: cluster.into(),
            node: node.into(),
            heartbeat: Duration::from_millis(500),
            liveness: Duration::from_secs(3),
            handoff_timeout: Duration::from_secs(2),
            member: true,
            outbound_capacity: 65_536,
            shards: std::thread::available_parallelism().map_or(1, usize::from),
            store_timeout: Duration::from_secs(5),
        }
    }

    /// How often the node announces itself (default 500 ms), and looks at the membership. At
    /// least 10 ms; at most about 49.7 days, as every timing here (longer counts as that).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.clamp(Duration::from_millis(10), LONGEST);
        self
    }

    /// How long after its last heartbeat a node is removed from the membership, and its IDs
    /// move to the others (default 3 s; at least two heartbeats). Shorter fails over faster;
    /// too short removes nodes that are only slow (they then lose their receivers, whose
    /// stale saves fail: safe, but churn). The membership bucket keeps the timeout of the node
    /// that created it; a node whose heartbeat it would expire is refused at connect.
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.liveness = timeout.min(LONGEST);
        self
    }

    /// How long a node that gained IDs from a live node waits for that node to release them
    /// (deactivate them and save their state) before it activates them anyway (default 2 s).
    pub fn handoff_timeout(mut self, timeout: Duration) -> Self {
        self.handoff_timeout = timeout.min(LONGEST);
        self
    }

    /// A client node: it sends, asks and gets answers, but owns no IDs and does not appear in
    /// the membership (a load generator, a gateway, a test driver). Clients are not checked
    /// for unique names: replicas may share one, each then receives the others' answers too
    /// (and ignores them: ask tokens start at random per process), so distinct names halve
    /// that traffic.
    pub fn client(mut self) -> Self {
        self.member = false;
        self
    }

    /// How many frames for other nodes may wait to be published (default 65,536); past it,
    /// messages to other nodes are dead letters (`Full`).
    pub fn outbound_capacity(mut self, capacity: usize) -> Self {
        self.outbound_capacity = capacity.max(1);
        self
    }

    /// How many local shards run this node's receivers (default: one per core).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.max(1);
        self
    }

    /// How long one JetStream key-value operation of the [`KvStore`](crate::KvStore) may
    /// take before it fails (default 5 s). Once the connection to the server has been down
    /// for this long, operations fail at once (until it is back), so that a node stopping
    /// while the server is gone does not wait this long for each receiver's save.
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout.min(LONGEST);
        self
    }

    /// The node's name.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// The cluster's name.
    pub fn cluster_name(&self) -> &str {
        &self.cluster
    }

    pub(crate) fn validate(&self) -> Result<(), ClusterError> {
        for (what, name) in [("cluster", &self.cluster), ("node", &self.node)] {
            let ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(ClusterError::Config(format!(
                    "the {what} name {name:?} must be 1 to 64 letters, digits, '-' or '_' (it \
                     names NATS subjects and a JetStream bucket)"
                )));
            }
        }
        if self.liveness < self.heartbeat * 2 {
            return Err(ClusterError::Config(format!(
                "the liveness timeout ({:?}) must be at least two heartbeats ({:?} each): \
                 otherwise healthy nodes are removed",
                self.liveness, self.heartbeat
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any `Duration` is a valid timing: one too long to represent is kept as the longest,
    /// and the checks and deadlines made from it do not overflow.
    #[test]
    fn every_duration_is_a_valid_timing() {
        let config = ClusterConfig::new("nats://127.0.0.1:4222", "c", "a")
            .heartbeat(Duration::MAX)
            .liveness_timeout(Duration::MAX)
            .handoff_timeout(Duration::MAX)
            .store_timeout(Duration::MAX);
        assert!(
            config.validate().is_err(),
            "the liveness is not two heartbeats"
        );
        let config = config.heartbeat(LONGEST / 2);
        assert!(config.validate().is_ok());
        let _ = std::time::Instant::now() + config.handoff_timeout.max(Duration::from_secs(1)) * 5;
        let _ = std::time::Instant::now() + config.liveness + config.store_timeout;
    }
}
