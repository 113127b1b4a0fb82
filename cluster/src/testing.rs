//! A real `nats-server` for tests: started with JetStream on a free loopback port and a
//! temporary store directory, stopped when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that makes a missing `nats-server` a failure instead of a skip
/// (CI sets it).
pub const REQUIRE: &str = "HERMES_REQUIRE_NATS";

/// A `nats-server` child process with JetStream, on `127.0.0.1`.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    jetstream: bool,
    /// The JetStream store directory, kept across restarts.
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts `nats-server -js` on a free loopback port with a temporary store directory, and
    /// waits until it accepts connections. `None` (with a message on stderr) if `nats-server`
    /// is not installed, unless [`REQUIRE`] is set, when that panics: tests call this first
    /// and return on `None`.
    ///
    /// # Panics
    ///
    /// If `nats-server` is missing while [`REQUIRE`] is set, or it does not start.
    pub fn start() -> Option<NatsServer> {
        let found = Command::new("nats-server")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            if std::env::var_os(REQUIRE).is_some() {
                panic!(
                    "nats-server is not installed and {REQUIRE} is set: install it \
                     (apt-get install nats-server)"
                );
            }
            eprintln!(
                "SKIPPED: nats-server is not installed (apt-get install nats-server); set \
                 {REQUIRE}=1 to make this a failure"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("a temporary directory for JetStream");
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            jetstream: true,
            dir,
        };
        server.restart();
        Some(server)
    }

    /// Starts `nats-server` without JetStream (a misconfigured server, for tests of the errors
    /// nodes give there); `None` as [`start`](NatsServer::start).
    ///
    /// # Panics
    ///
    /// As [`start`](NatsServer::start).
    pub fn start_without_jetstream() -> Option<NatsServer> {
        let mut server = NatsServer::start()?;
        server.stop();
        server.jetstream = false;
        server.restart();
        Some(server)
    }

    /// Stops the server (SIGKILL), keeping its port and store directory for
    /// [`restart`](NatsServer::restart).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again (stopping it first if it runs) on the same port and store
    /// directory, and waits until it accepts connections.
    ///
    /// # Panics
    ///
    /// If it does not start listening within 10 s.
    pub fn restart(&mut self) {
        self.stop();
        let mut command = Command::new("nats-server");
        command.args(["-a", "127.0.0.1", "-p", &self.port.to_string()]);
        if self.jetstream {
            command.arg("-js").arg("-sd").arg(self.dir.path());
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not start listening"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}
