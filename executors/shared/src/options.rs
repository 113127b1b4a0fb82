//! How to start Hermes, and why starting can fail.

use std::fmt;
use std::sync::Arc;

use hermes_core::{Config, DeadLetter, Placement, Sharded};

/// Called on a shard's thread with every message that could not be delivered.
pub(crate) type DeadLetterSink<K, M> = Arc<dyn Fn(DeadLetter<K, M>) + Send + Sync>;

/// How much a shard does per turn before it looks at its inbox and timers again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Commands handled per turn, so that receivers messaging each other on one shard cannot
    /// starve everything else.
    pub(crate) commands: usize,
    /// Inbox items taken per turn, so that a stream from outside cannot starve the receivers.
    pub(crate) inbox: usize,
    /// Inbox items taken per turn while the router still has commands left from the last
    /// turn: a backlog waits in the inbox (whose memory is freed as it drains) rather than in
    /// the router (whose queues keep their largest size), and the inbox still makes progress.
    pub(crate) busy_inbox: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Budget {
            commands: 256,
            inbox: 1024,
            busy_inbox: 64,
        }
    }
}

/// A deliberate bug in the shard loop, switched on with `Options::inject_fault` (feature
/// `fault-injection`), for proving that the simulator, which runs the real shards, catches it.
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShardFault {
    /// A command left over when a turn's budget runs out is forgotten: its receiver never runs
    /// again.
    ForgetCarry,
    /// Mail for other shards is dropped instead of pushed to their inboxes.
    LoseOutgoing,
}

/// Options for starting Hermes on any executor.
///
/// ```
/// use hermes_core::Config;
/// use hermes_executor::Options;
///
/// let options = Options::<String, u32>::new(Config::default())
///     .shards(2)
///     .name("broker")
///     .on_dead_letter(|letter| eprintln!("undeliverable: {letter:?}"));
/// assert_eq!(options.shard_count(), 2);
/// ```
pub struct Options<K, M> {
    pub(crate) config: Config,
    pub(crate) shards: usize,
    pub(crate) name: String,
    pub(crate) dead_letters: Option<DeadLetterSink<K, M>>,
    pub(crate) placement: Option<Arc<dyn Placement<K>>>,
    pub(crate) budget: Budget,
    pub(crate) fault: Option<ShardFault>,
    pub(crate) inbox_capacity: usize,
    pub(crate) remote: Option<Arc<dyn crate::Remote<K, M>>>,
}

impl<K, M> Options<K, M> {
    /// Options with the router `config`, one shard per available core, name `hermes`, and dead
    /// letters only counted in [`Stats`](hermes_core::Stats) (and logged at debug level).
    pub fn new(config: Config) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Options {
            config,
            shards: cores,
            name: "hermes".to_owned(),
            dead_letters: None,
            placement: None,
            budget: Budget::default(),
            fault: None,
            inbox_capacity: 65_536,
            remote: None,
        }
    }

    /// Hands messages for receivers on other nodes of a cluster to `remote`, the cluster's
    /// transport (see [`Remote`](crate::Remote)); set by `hermes-cluster`. Without it, a
    /// message for an ID that placement puts on a [`Location::Node`](hermes_core::Location::Node)
    /// is refused from outside ([`SendError::Unreachable`](hermes_core::SendError::Unreachable),
    /// the message back) and a dead letter from a receiver or a timer
    /// ([`Unreachable`](hermes_core::DeadLetterReason::Unreachable)).
    pub fn remote(mut self, remote: Arc<dyn crate::Remote<K, M>>) -> Self {
        self.remote = Some(remote);
        self
    }

    /// How many messages from outside each shard's inbox holds before senders wait (default
    /// 65,536; at least 1): [`Hermes::send`](crate::Hermes::send) blocks, `send_async` awaits,
    /// `try_send` returns `Full`. Mail from receivers on other shards, which comes as one batch
    /// per shard per turn, is taken whole while the inbox holds less than twice that; at twice
    /// that, it is dead letters (`Full`), as for a full mailbox.
    pub fn inbox_capacity(mut self, capacity: usize) -> Self {
        self.inbox_capacity = capacity.max(1);
        self
    }

    /// How much a shard does per turn before it looks at its inbox and its timers again: at
    /// most `commands` commands (default 256) and `inbox` messages from its inbox (default
    /// 1024). Lower is fairer between receivers and outside senders; higher costs less per
    /// message. Both at least 1.
    pub fn turn_budget(mut self, commands: usize, inbox: usize) -> Self {
        let inbox = inbox.max(1);
        self.budget = Budget {
            commands: commands.max(1),
            inbox,
            busy_inbox: inbox.min(Budget::default().busy_inbox),
        };
        self
    }

    /// Places receivers on shards with `placement` instead of by a hash of their ID
    /// ([`Sharded`]). Every ID must be placed on a shard `0..shards`: a message for an ID
    /// placed elsewhere, whether sent from outside or by a receiver, is a
    /// [`Stale`](hermes_core::DeadLetterReason::Stale) dead letter with its message (the
    /// handle does not refuse it).
    pub fn placement(mut self, placement: impl Placement<K>) -> Self {
        self.placement = Some(Arc::new(placement));
        self
    }

    /// Switches on a deliberate bug in every shard (tests of the simulator only).
    #[cfg(feature = "fault-injection")]
    pub fn inject_fault(mut self, fault: ShardFault) -> Self {
        self.fault = Some(fault);
        self
    }

    /// The placement shards and handle use: the one given, or [`Sharded`] over the shards.
    pub(crate) fn take_placement(&mut self) -> Arc<dyn Placement<K>>
    where
        K: std::hash::Hash,
    {
        self.placement
            .take()
            .unwrap_or_else(|| Arc::new(Sharded::new(self.shards as u32)))
    }

    /// How many shards (single-threaded routers) to run; at least 1. Receivers are placed on
    /// shards by a hash of their ID.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, u32::MAX as usize);
        self
    }

    /// A name for threads and logs (the pool names its threads `NAME-0`, `NAME-1`, ...).
    /// A NUL byte, which no thread name may hold, is left out.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        let mut name = name.into();
        name.retain(|c| c != '\0');
        self.name = name;
        self
    }

    /// Calls `sink` on the shard's thread with every dead letter. Keep it short: it runs
    /// between receivers. A panic in it is caught and logged.
    pub fn on_dead_letter(
        mut self,
        sink: impl Fn(DeadLetter<K, M>) + Send + Sync + 'static,
    ) -> Self {
        self.dead_letters = Some(Arc::new(sink));
        self
    }

    /// The number of shards Hermes will run.
    pub fn shard_count(&self) -> usize {
        self.shards
    }

    /// The name given with [`name`](Options::name), for threads and logs.
    pub fn thread_name(&self) -> &str {
        &self.name
    }

    /// The router configuration every shard uses.
    pub fn config(&self) -> &Config {
        &self.config
    }
}

impl<K, M> fmt::Debug for Options<K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("config", &self.config)
            .field("shards", &self.shards)
            .field("name", &self.name)
            .field("dead_letters", &self.dead_letters.is_some())
            .field("placement", &self.placement.is_some())
            .field("budget", &self.budget)
            .field("inbox_capacity", &self.inbox_capacity)
            .field("remote", &self.remote.is_some())
            .finish()
    }
}

/// Why Hermes could not start.
///
/// The message includes the cause's, so [`source`](std::error::Error::source) is `None`: an
/// error reporter that prints the chain shows the cause once.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A shard thread could not be spawned (the message includes the I/O error's).
    Spawn(std::io::Error),
    /// No async runtime to run the shards on.
    NoRuntime,
    /// The async runtime has no timers (tokio's time driver is off), and the shards wait on
    /// timers.
    NoTimers,
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spawn(e) => write!(
                f,
                "could not spawn a shard thread ({e}): lower the shard count or the process's \
                 thread usage"
            ),
            StartError::NoRuntime => f.write_str(
                "no async runtime here: start Hermes from inside the runtime, or pass its handle \
                 explicitly (start_on)",
            ),
            StartError::NoTimers => f.write_str(
                "the async runtime has no timers, which the shards wait on: build it with its \
                 time driver (tokio: enable_time() or enable_all(), as #[tokio::main] does)",
            ),
        }
    }
}

/// No source: the message includes the cause's (see [`StartError`]).
impl std::error::Error for StartError {}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::StartError;

    #[test]
    fn a_spawn_error_shows_its_cause_once() {
        let e = StartError::Spawn(std::io::Error::other("out of threads (a test's cause)"));
        let shown = e.to_string();
        assert_eq!(shown.matches("a test's cause").count(), 1, "{shown}");
        assert!(shown.contains("lower the shard count"), "{shown}");
        assert!(
            e.source().is_none(),
            "a chain reporter would print the cause twice"
        );
    }
}
