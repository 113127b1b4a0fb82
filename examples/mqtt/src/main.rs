//! The `hermes-mqtt` broker binary: a thin command line over [`hermes_mqtt::Broker`].
//!
//! `hermes-mqtt` alone listens on 127.0.0.1:1883 and keeps its data in `./hermes-data`. Flags
//! override the configuration file's keys. SIGINT (Ctrl-C) and SIGTERM shut it down
//! gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hermes_mqtt::config::LogLevel;
use hermes_mqtt::{Broker, Config};
use tracing_subscriber::EnvFilter;

/// An MQTT 3.1.1 broker built on Hermes receivers, with durable sessions.
#[derive(Debug, Parser)]
#[command(name = "hermes-mqtt", version, about)]
struct Cli {
    /// An address to accept MQTT connections on, such as 0.0.0.0:1883 (repeat for several).
    /// Default: 127.0.0.1:1883.
    #[arg(long = "listen", value_name = "ADDR")]
    listen: Vec<SocketAddr>,
    /// Where sessions and retained messages are stored. Default: ./hermes-data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Store nothing: sessions and retained messages do not survive a restart.
    #[arg(long)]
    memory: bool,
    /// A TOML configuration file (see the README's "Configuration" table); flags override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The most detailed log messages written: off, error, warn, info, debug or trace.
    /// Default: the file's `log_level`, else RUST_LOG, else info.
    #[arg(long, value_name = "LEVEL", value_parser = parse_level)]
    log_level: Option<LogLevel>,
}

fn parse_level(s: &str) -> Result<LogLevel, String> {
    let levels = [
        LogLevel::Off,
        LogLevel::Error,
        LogLevel::Warn,
        LogLevel::Info,
        LogLevel::Debug,
        LogLevel::Trace,
    ];
    levels
        .into_iter()
        .find(|l| l.as_str() == s)
        .ok_or_else(|| format!("{s:?} is not a level: give off, error, warn, info, debug or trace"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match &cli.config {
        Some(path) => match Config::load(path) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("hermes-mqtt: {error}");
                return ExitCode::from(2);
            }
        },
        None => Config::default(),
    };
    if !cli.listen.is_empty() {
        config.listeners = cli.listen.clone();
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if cli.memory {
        config.memory = true;
    }
    init_logs(&cli, &config);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hermes-mqtt")
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("hermes-mqtt: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let broker = match Broker::start(config).await {
            Ok(broker) => broker,
            Err(error) => {
                eprintln!("hermes-mqtt: {error}");
                return ExitCode::FAILURE;
            }
        };
        shutdown_signal().await;
        tracing::info!("shutting down");
        match broker.shutdown().await {
            Ok(_) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("hermes-mqtt: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Logs to standard error: `--log-level`, else the configuration file's `log_level` if it
/// has one that is not the default, else `RUST_LOG`, else info.
fn init_logs(cli: &Cli, config: &Config) {
    let filter = match (cli.log_level, std::env::var("RUST_LOG")) {
        (Some(level), _) => EnvFilter::new(level.as_str()),
        (None, Ok(env)) if config.log_level == LogLevel::Info => {
            EnvFilter::try_new(env).unwrap_or_else(|_| EnvFilter::new("info"))
        }
        (None, _) => EnvFilter::new(config.log_level.as_str()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
