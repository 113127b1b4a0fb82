//! Picks the executor an example runs on: `-- --executor pool|tokio|smol` (default `pool`), or
//! the `HERMES_EXECUTOR` environment variable.
//!
//! An application picks one with a feature (`hermes::pool::start`, `hermes::tokio::start`,
//! `hermes::smol::start`); the examples call the executor crates directly so that one binary
//! can run on all three.

use hermes::{Factory, Hermes, Key, Message, Options};

/// The executor chosen on the command line, with the runtime it needs.
pub enum Executor {
    Pool,
    Tokio(tokio::runtime::Runtime),
    Smol,
}

impl Executor {
    /// Reads `--executor NAME` (or `--executor=NAME`, or `HERMES_EXECUTOR`); exits with a
    /// usage message on an unknown name.
    pub fn from_args() -> Executor {
        let mut name = std::env::var("HERMES_EXECUTOR").unwrap_or_else(|_| "pool".to_owned());
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            if arg == "--executor" {
                name = args.next().unwrap_or_default();
            } else if let Some(value) = arg.strip_prefix("--executor=") {
                name = value.to_owned();
            }
        }
        match name.as_str() {
            "pool" => Executor::Pool,
            "tokio" => match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => Executor::Tokio(runtime),
                Err(e) => exit(&format!("could not start a tokio runtime: {e}")),
            },
            "smol" => Executor::Smol,
            other => exit(&format!(
                "unknown executor {other:?}: pass --executor pool, tokio or smol"
            )),
        }
    }

    /// The executor's name.
    pub fn name(&self) -> &'static str {
        match self {
            Executor::Pool => "pool",
            Executor::Tokio(_) => "tokio",
            Executor::Smol => "smol",
        }
    }

    /// Starts Hermes on this executor.
    pub fn start<K: Key, M: Message>(
        &self,
        options: Options<K, M>,
        factory: impl Factory<K, M>,
    ) -> Hermes<K, M> {
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
    std::process::exit(2)
}
