//! How to start Hermes, and why starting can fail.

use std::fmt;
use std::sync::Arc;

use hermes_core::{Config, DeadLetter};

/// Called on a shard's thread with every message that could not be delivered.
pub(crate) type DeadLetterSink<K, M> = Arc<dyn Fn(DeadLetter<K, M>) + Send + Sync>;

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
        }
    }

    /// How many shards (single-threaded routers) to run; at least 1. Receivers are placed on
    /// shards by a hash of their ID.
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = shards.clamp(1, u32::MAX as usize);
        self
    }

    /// A name for threads and logs (the pool names its threads `NAME-0`, `NAME-1`, ...).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
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

    /// The name given with [`name`](Options::name).
    pub fn get_name(&self) -> &str {
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
            .finish()
    }
}

/// Why Hermes could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A shard thread could not be spawned.
    Spawn(std::io::Error),
    /// No async runtime to run the shards on.
    NoRuntime,
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
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Spawn(e) => Some(e),
            StartError::NoRuntime => None,
        }
    }
}
