//! `mqtt-bench`: a load generator for MQTT 3.1.1 brokers that verifies every delivery.
//!
//! Each scenario prints one JSON line (its result, with `"ok"`: whether every check passed),
//! then the same as a table. The exit code is 0 when the checks passed, 1 when they did not,
//! 2 when the run could not be done (bad arguments, timeout).
//!
//! See `mqtt-bench --help` and examples/mqtt/BENCHMARKS.md.

mod client;
mod flow;
mod payload;
mod procfs;
mod report;
mod scenarios;
mod verify;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use crate::client::Target;
use crate::scenarios::Common;

/// A load generator for MQTT 3.1.1 brokers: throughput, fan-out, fan-in, latency, idle
/// connections, reconnects and persistent sessions, every delivery verified (lost,
/// duplicated, out of order).
#[derive(Debug, Parser)]
#[command(name = "mqtt-bench", version, about)]
struct Cli {
    /// The broker's address.
    #[arg(long, global = true, default_value = "127.0.0.1:1883")]
    addr: SocketAddr,
    /// The broker's name, echoed in the results.
    #[arg(long, global = true, default_value = "broker")]
    broker: String,
    /// The broker's process id: its RSS (/proc/PID/status) is read where a scenario measures
    /// memory (conns, sessions).
    #[arg(long, global = true)]
    broker_pid: Option<u32>,
    /// Tokio worker threads; 1 runs everything on one thread (a current-thread runtime).
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    /// The whole scenario's timeout, in seconds.
    #[arg(long, global = true, default_value_t = 300.0)]
    timeout: f64,
    /// Seconds a connection may take to connect (and subscribe).
    #[arg(long, global = true, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds without progress that end the wait for the last acknowledgements and
    /// deliveries once publishing stopped; what has not arrived then is lost.
    #[arg(long, global = true, default_value_t = 5.0)]
    drain: f64,
    /// Connections set up at once at most.
    #[arg(long, global = true, default_value_t = 64)]
    connect_concurrency: usize,
    /// The keep alive asked for, in seconds (rumqttd refuses 0). No PINGREQ is sent: runs
    /// are shorter.
    #[arg(long, global = true, default_value_t = 600)]
    keep_alive: u16,
    /// With a broker on loopback, connect from many source addresses (127.x.y.z), so that
    /// many connections and earlier runs' TIME_WAIT never exhaust the ephemeral ports.
    #[arg(long, global = true, default_value_t = true, action = ArgAction::Set)]
    spread_sources: bool,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// N publishers, each to its own subscriber on its own topic: delivered messages/s.
    Pairs(scenarios::PairsArgs),
    /// One publisher to many subscribers on a wildcard filter: delivered messages/s.
    Fanout(scenarios::FanoutArgs),
    /// Many publishers to one subscriber on a wildcard filter: delivered messages/s.
    Fanin(scenarios::FaninArgs),
    /// A fixed rate: latency percentiles (HDR histogram) from the payload's timestamp.
    Latency(scenarios::LatencyArgs),
    /// Many idle connections: connect rate and broker memory per connection.
    Conns(scenarios::ConnsArgs),
    /// Persistent sessions with queued messages reconnect at once: time to drain them all.
    Reconnect(scenarios::ReconnectArgs),
    /// Many connected persistent sessions and a fixed rate over them: RSS and latency.
    Sessions(scenarios::SessionsArgs),
    /// After a broker restart: time until it answers and every session is back.
    Restore(scenarios::RestoreArgs),
}

impl Scenario {
    fn name(&self) -> &'static str {
        match self {
            Self::Pairs(_) => "pairs",
            Self::Fanout(_) => "fanout",
            Self::Fanin(_) => "fanin",
            Self::Latency(_) => "latency",
            Self::Conns(_) => "conns",
            Self::Reconnect(_) => "reconnect",
            Self::Sessions(_) => "sessions",
            Self::Restore(_) => "restore",
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = if cli.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("mqtt-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let salt = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 ^ u64::from(std::process::id()) << 32)
        .unwrap_or(0);
    let common = Common {
        target: Target {
            addr: cli.addr,
            spread_sources: cli.spread_sources,
            salt,
            keep_alive: cli.keep_alive,
        },
        connect_timeout: Duration::from_secs_f64(cli.connect_timeout.max(0.001)),
        drain: Duration::from_secs_f64(cli.drain.max(0.001)),
        connect_concurrency: cli.connect_concurrency.max(1),
        broker_pid: cli.broker_pid,
    };
    let name = cli.scenario.name();
    let timeout = Duration::from_secs_f64(cli.timeout.max(0.001));
    let result = runtime.block_on(async {
        let run = async {
            match &cli.scenario {
                Scenario::Pairs(args) => scenarios::pairs(&common, args).await,
                Scenario::Fanout(args) => scenarios::fanout(&common, args).await,
                Scenario::Fanin(args) => scenarios::fanin(&common, args).await,
                Scenario::Latency(args) => scenarios::latency(&common, args).await,
                Scenario::Conns(args) => scenarios::conns(&common, args).await,
                Scenario::Reconnect(args) => scenarios::reconnect(&common, args).await,
                Scenario::Sessions(args) => scenarios::sessions(&common, args).await,
                Scenario::Restore(args) => scenarios::restore(&common, args).await,
            }
        };
        tokio::time::timeout(timeout, run).await
    });
    let code = match result {
        Ok(Ok(report)) => {
            report.print(&cli.broker);
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok(Err(usage)) => {
            let mut report = report::Report::new(name);
            report.fail(usage);
            report.print(&cli.broker);
            ExitCode::from(2)
        }
        Err(_) => {
            let mut report = report::Report::new(name);
            report.fail(format!("timed out after {} s", cli.timeout));
            report.print(&cli.broker);
            ExitCode::from(2)
        }
    };
    // Connections of a timed-out run may still be open: do not wait for their tasks.
    runtime.shutdown_background();
    code
}
