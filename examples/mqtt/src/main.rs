//! The `hermes-mqtt` broker binary: a thin command line over [`hermes_mqtt::Broker`].
//!
//! `hermes-mqtt` alone listens on 127.0.0.1:1883 and keeps its data in `./hermes-data`. Flags
//! override the configuration file's keys. SIGINT (Ctrl-C) and SIGTERM shut it down
//! gracefully (exit 0); a second signal during the shutdown, half a second or more after the
//! first, exits at once (exit 130). SIGHUP reloads the password and ACL files (and says so,
//! or that there is nothing to reload). `--help` ends with the signals and exit codes.
//! `hermes-mqtt passwd FILE USER` manages a password file.

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand};
use hermes_mqtt::auth::{PasswordFile, hash_password};
use hermes_mqtt::config::{LogLevel, check_listeners};
use hermes_mqtt::{Broker, Config, ListenerConfig};
use tracing_subscriber::EnvFilter;

/// The exit code of a second signal during the shutdown: 128 + SIGINT, as shells do.
const EXIT_SECOND_SIGNAL: i32 = 130;

/// A SIGINT or SIGTERM this soon after the one that started the shutdown counts as that one,
/// delivered twice, rather than a second signal.
const SAME_SIGNAL: std::time::Duration = std::time::Duration::from_millis(500);

/// What `--help` says after the flags: signals and exit codes.
const AFTER_HELP: &str = "\
Signals: SIGINT or SIGTERM shuts down gracefully (clients closed, everything stored); a second
one, half a second or more later, exits at once without storing the last changes. SIGHUP
reloads the password and ACL files (the configuration file and TLS certificates are read at
startup only).

Exit codes: 0 after a graceful shutdown; 1 when the broker cannot start (a busy port, a data
directory or file it cannot use) or the last changes could not be stored; 2 for a bad flag or
configuration file; 130 for a second signal.";

/// An MQTT 3.1.1 broker built on Hermes receivers, with durable sessions.
#[derive(Debug, Parser)]
#[command(
    name = "hermes-mqtt",
    version,
    about,
    args_conflicts_with_subcommands = true,
    after_help = AFTER_HELP
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Run,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Adds a user to a password file (created if need be) or changes their password, which
    /// is read from the terminal (asked twice, not echoed) or from the first line of standard
    /// input; `--delete` removes the user instead.
    Passwd(Passwd),
}

#[derive(Debug, Args)]
struct Passwd {
    /// The password file (`password_file` in the configuration).
    file: PathBuf,
    /// The user name.
    user: String,
    /// Remove the user instead.
    #[arg(long, short = 'D')]
    delete: bool,
    /// A configuration file whose argon2_memory_kib, argon2_iterations and
    /// argon2_parallelism set the hash's cost. Default: the defaults of those keys.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

/// Running the broker.
#[derive(Debug, Args)]
struct Run {
    /// An IP address and port to accept MQTT connections on over TCP, such as 0.0.0.0:1883
    /// or [::]:1883; repeat it for several (each address once). Replaces every listener of
    /// the configuration file (TLS and WebSocket ones included). Default: the file's
    /// listeners, else 127.0.0.1:1883.
    #[arg(long = "listen", value_name = "ADDR", value_parser = ListenerConfig::from_str)]
    listen: Vec<ListenerConfig>,
    /// The password file (overrides `password_file`).
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
    /// The ACL file (overrides `acl_file`).
    #[arg(long, value_name = "FILE")]
    acl_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (overrides `metrics_address`).
    #[arg(long, value_name = "ADDR")]
    metrics_address: Option<SocketAddr>,
    /// Where sessions and retained messages are stored (overrides `data_dir`; not used with
    /// --memory). Default: ./hermes-data.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Store nothing: sessions and retained messages do not survive a restart (sets
    /// `memory`).
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
    match cli.command {
        Some(Command::Passwd(passwd)) => self::passwd(&passwd),
        None => run(&cli.run),
    }
}

/// `hermes-mqtt passwd`.
fn passwd(args: &Passwd) -> ExitCode {
    match passwd_inner(args) {
        Ok(message) => {
            eprintln!("{message}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("hermes-mqtt passwd: {message}");
            ExitCode::FAILURE
        }
    }
}

fn passwd_inner(args: &Passwd) -> Result<String, String> {
    let params = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?.hash_params(),
        None => Config::default().hash_params(),
    };
    let mut file = if args.file.exists() {
        PasswordFile::load(&args.file).map_err(|e| e.to_string())?
    } else {
        PasswordFile::default()
    };
    let path = args.file.display();
    if args.delete {
        if !file.remove(&args.user) {
            return Err(format!("{:?} is not in {path}", args.user));
        }
        file.save(&args.file).map_err(|e| e.to_string())?;
        return Ok(format!("removed {:?} from {path}", args.user));
    }
    let password = read_password()?;
    let hash = hash_password(password.as_bytes(), params).map_err(|e| e.to_string())?;
    file.set(&args.user, hash).map_err(|e| e.to_string())?;
    file.save(&args.file).map_err(|e| e.to_string())?;
    Ok(format!("set the password of {:?} in {path}", args.user))
}

/// The new password: asked twice on a terminal, else the first line of standard input.
fn read_password() -> Result<String, String> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        let again = rpassword::prompt_password("Password again: ")
            .map_err(|e| format!("cannot read the password: {e}"))?;
        if first != again {
            return Err("the passwords differ: nothing changed".to_owned());
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("cannot read the password from standard input: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_owned()
    };
    if password.is_empty() {
        return Err("the password is empty: nothing changed".to_owned());
    }
    Ok(password)
}

/// Runs the broker until a signal.
fn run(cli: &Run) -> ExitCode {
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
    let replaced = if cli.listen.is_empty() {
        None
    } else {
        if let Err(error) = check_listeners(&cli.listen) {
            eprintln!("hermes-mqtt: --listen: {error}");
            return ExitCode::from(2);
        }
        let file = std::mem::replace(&mut config.listeners, cli.listen.clone());
        let declared = file != Config::default().listeners;
        cli.config
            .as_ref()
            .filter(|_| declared)
            .map(|path| (path, file))
    };
    if let Some(file) = &cli.password_file {
        config.password_file = Some(file.clone());
    }
    if let Some(file) = &cli.acl_file {
        config.acl_file = Some(file.clone());
    }
    if let Some(addr) = cli.metrics_address {
        config.metrics_address = Some(addr);
    }
    if let Some(dir) = &cli.data_dir {
        config.data_dir = dir.clone();
    }
    if cli.memory {
        config.memory = true;
    }
    if let Err(error) = config.validate() {
        eprintln!("hermes-mqtt: {error}");
        return ExitCode::from(2);
    }
    init_logs(cli, &config);
    if config.memory && cli.data_dir.is_some() {
        tracing::warn!("--data-dir is not used: with `memory` the broker stores nothing");
    }
    if let Some((path, file)) = replaced {
        let urls: Vec<String> = file.iter().map(|l| l.url(l.address)).collect();
        tracing::info!(
            "--listen replaces the listeners of {} ({})",
            path.display(),
            urls.join(", ")
        );
    }

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
        // Listening for the signals before the broker starts: one sent as soon as it
        // listens (by a test, a service manager) shuts it down rather than killing it.
        let mut signals = Signals::new();
        let broker = match Broker::start(config).await {
            Ok(broker) => broker,
            Err(error) => {
                eprintln!("hermes-mqtt: {error}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_shutdown(&broker, &mut signals).await;
        tracing::info!("shutting down (a second SIGINT or SIGTERM exits at once)");
        let first = std::time::Instant::now();
        tokio::spawn(async move {
            // A signal right after the first is the same request delivered twice (`timeout`
            // signals the broker and then its process group), not an operator insisting.
            signals.shutdown().await;
            while first.elapsed() < SAME_SIGNAL {
                signals.shutdown().await;
            }
            eprintln!(
                "hermes-mqtt: second signal: exiting at once, without storing the last changes"
            );
            std::process::exit(EXIT_SECOND_SIGNAL);
        });
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
/// has one that is not the default, else `RUST_LOG`, else info. Coloured only on a terminal
/// (and then not with `NO_COLOR` set): a log file or journald gets plain text.
fn init_logs(cli: &Run, config: &Config) {
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
        .with_ansi(
            std::io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        )
        .init();
}

/// Waits for SIGINT or SIGTERM; meanwhile, SIGHUP reloads the password and ACL files.
async fn wait_for_shutdown(broker: &Broker, signals: &mut Signals) {
    loop {
        tokio::select! {
            () = signals.stop.wait() => return,
            () = signals.hup.wait() => {
                if let Err(error) = broker.reload().await {
                    tracing::error!("SIGHUP: {error}; the files in use are kept");
                }
            }
        }
    }
}

/// The signals the broker answers, listened for from before it starts.
struct Signals {
    /// SIGINT and SIGTERM.
    stop: Stop,
    /// SIGHUP.
    hup: Hup,
}

/// SIGINT and SIGTERM.
struct Stop {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

/// SIGHUP.
struct Hup {
    #[cfg(unix)]
    hup: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                stop: Stop {
                    term: signal(SignalKind::terminate()).ok(),
                    int: signal(SignalKind::interrupt()).ok(),
                },
                hup: Hup {
                    hup: signal(SignalKind::hangup()).ok(),
                },
            }
        }
        #[cfg(not(unix))]
        {
            Self {
                stop: Stop {},
                hup: Hup {},
            }
        }
    }

    /// Resolves on SIGINT or SIGTERM.
    async fn shutdown(&mut self) {
        self.stop.wait().await;
    }
}

impl Stop {
    /// Resolves on SIGINT or SIGTERM.
    async fn wait(&mut self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<&mut tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        if signal.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            if self.term.is_none() && self.int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                () = next(self.term.as_mut()) => {}
                () = next(self.int.as_mut()) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

impl Hup {
    /// Resolves on SIGHUP; never where there is none.
    async fn wait(&mut self) {
        #[cfg(unix)]
        if let Some(hup) = self.hup.as_mut()
            && hup.recv().await.is_some()
        {
            return;
        }
        std::future::pending::<()>().await;
    }
}
