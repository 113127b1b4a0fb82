//! The `--executor pool|tokio|smol` flag (default `pool`, or the `HERMES_EXECUTOR` environment
//! variable) that an example flattens into its own `Args`, and the executor it picks.
//!
//! An application picks one with a feature (`hermes::pool::start`, `hermes::tokio::start`,
//! `hermes::smol::start`); the examples call the executor crates directly so that one binary
//! can run on all three.

use clap::ValueEnum;
use hermes::{Factory, Hermes, Key, Message, Options};

/// The executor flag: `#[command(flatten)] executor: executor::ExecutorArg` in an `Args`.
#[derive(clap::Args, Debug)]
pub struct ExecutorArg {
    /// The executor the shards run on
    #[arg(
        long = "executor",
        value_name = "NAME",
        value_enum,
        env = "HERMES_EXECUTOR",
        default_value_t = Name::Pool
    )]
    name: Name,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Name {
    /// The hand-rolled thread pool: one thread per shard
    Pool,
    /// One tokio task per shard, on a multi-thread runtime
    Tokio,
    /// One smol task per shard
    Smol,
}

/// The chosen executor, with the runtime it needs.
pub enum Executor {
    Pool,
    Tokio(tokio::runtime::Runtime),
    Smol,
}

impl ExecutorArg {
    /// The chosen executor; for tokio, starts its runtime.
    pub fn build(self) -> Executor {
        match self.name {
            Name::Pool => Executor::Pool,
            Name::Tokio => match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => Executor::Tokio(runtime),
                Err(e) => exit(&format!("could not start a tokio runtime: {e}")),
            },
            Name::Smol => Executor::Smol,
        }
    }
}

impl Executor {
    /// The executor's name.
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Pool => "pool",
            Executor::Tokio(_) => "tokio",
            Executor::Smol => "smol",
        }
    }

    /// Starts Hermes on this executor.
    pub fn start<K: Key, M: Message, F: Factory<K, M>>(
        &self,
        options: Options<K, M>,
        factory: F,
    ) -> Hermes<K, M, F::App> {
        match self {
            Executor::Pool => hermes_pool::start_with(options, factory)
                .unwrap_or_else(|e| exit(&format!("could not start the pool: {e}"))),
            Executor::Tokio(runtime) => hermes_tokio::start_on(runtime.handle(), options, factory),
            Executor::Smol => hermes_smol::start_with(options, factory),
        }
    }
}

fn exit(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(1)
}
