//! The `hermes-mqtt` binary: `passwd`, graceful shutdown on SIGTERM (exit 0, everything
//! stored), a second signal exiting at once, and configuration errors naming the key or file.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hermes_mqtt::QoS;
use hermes_mqtt::auth::{PasswordFile, verify_password};
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_hermes-mqtt");

/// How long a broker process may take to start or to exit: generous, since a debug build on a
/// loaded machine starts slowly; a second-signal exit is checked against its own bound.
const PROCESS_TIMEOUT: Duration = Duration::from_secs(30);

/// A configuration file with cheap argon2 parameters, for `passwd --config`.
fn cheap_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("cheap.toml");
    std::fs::write(
        &path,
        "argon2_memory_kib = 8\nargon2_iterations = 1\nargon2_parallelism = 1\n",
    )
    .unwrap();
    path
}

fn passwd(dir: &Path, args: &[&str], stdin: &str) -> (bool, String) {
    let mut child = Command::new(BIN)
        .arg("passwd")
        .arg("--config")
        .arg(cheap_config(dir))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn passwd_adds_changes_and_deletes_users() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    let f = file.to_str().unwrap();
    let (ok, err) = passwd(dir.path(), &[f, "alice"], "wonderland\n");
    assert!(ok, "{err}");
    let (ok, err) = passwd(dir.path(), &[f, "bob"], "builder\r\n");
    assert!(ok, "{err}");
    let loaded = PasswordFile::load(&file).unwrap();
    assert!(verify_password(b"wonderland", loaded.get("alice").unwrap()));
    assert!(verify_password(b"builder", loaded.get("bob").unwrap()));
    assert!(
        loaded
            .get("alice")
            .unwrap()
            .starts_with("$argon2id$v=19$m=8,t=1,p=1$")
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "readable by its owner only");
    }
    // A new password for alice.
    let (ok, _) = passwd(dir.path(), &[f, "alice"], "looking glass\n");
    assert!(ok);
    let loaded = PasswordFile::load(&file).unwrap();
    assert!(verify_password(
        b"looking glass",
        loaded.get("alice").unwrap()
    ));
    // Delete.
    let (ok, _) = passwd(dir.path(), &["--delete", f, "bob"], "");
    assert!(ok);
    assert_eq!(
        PasswordFile::load(&file)
            .unwrap()
            .users()
            .collect::<Vec<_>>(),
        ["alice"]
    );
    // Errors say what is wrong, and change nothing.
    let (ok, err) = passwd(dir.path(), &["--delete", f, "carol"], "");
    assert!(!ok && err.contains("\"carol\" is not in"), "{err}");
    let (ok, err) = passwd(dir.path(), &[f, "carol"], "\n");
    assert!(!ok && err.contains("empty"), "{err}");
    let (ok, err) = passwd(dir.path(), &[f, "a:b"], "pw\n");
    assert!(!ok && err.contains("user name"), "{err}");
}

/// A broker process, its log read to the end; killed when dropped, so that no test leaves a
/// broker running behind it.
struct Process {
    child: Child,
    addr: SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// The thread that reads the log; joined once the process has exited, so that the log
    /// then has its last lines (a test that read it at once missed them, 1 run in 20).
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Process {
    fn start(args: &[&str]) -> Process {
        let mut command = Command::new(BIN);
        command.args(args);
        Self::spawn(command)
    }

    /// [`Process::start`] with a command of the caller's (a shell that `exec`s the broker).
    fn spawn(mut command: Command) -> Process {
        let mut child = command
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = std::sync::Arc::clone(&log);
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Logged before the address is sent, so that the log has it once started.
                lines.lock().unwrap().push(line.clone());
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let end = rest.find([' ', ',', ';']).unwrap_or(rest.len());
                    if let Ok(addr) = rest[..end].parse::<SocketAddr>() {
                        let _ = tx.send(addr);
                    }
                }
            }
        });
        let Ok(addr) = rx.recv_timeout(PROCESS_TIMEOUT) else {
            let _ = child.kill();
            panic!("the broker did not start: {:?}", log.lock().unwrap());
        };
        Process {
            child,
            addr,
            log,
            reader: Some(reader),
        }
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit, at most `within`: its code.
    fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its stderr is closed: the reader ends once it has read the rest.
                if let Some(reader) = self.reader.take() {
                    reader.join().unwrap();
                }
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("still running: {:?}", self.log.lock().unwrap());
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// SIGTERM stores everything and exits 0; the next start loads it and says how much.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stores_everything_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ];
    let mut broker = Process::start(&args);
    let t = unique("term/t");
    let mut client = TestBroker::at(broker.addr).connect(&unique("c")).await;
    client.publish(&t, b"kept", QoS::AtLeastOnce, true).await;
    let (mut persistent, _) = TestBroker::at(broker.addr)
        .connect_persistent("term-sub")
        .await;
    persistent
        .subscribe_one(&format!("{t}/q"), QoS::AtLeastOnce)
        .await;
    broker.signal("TERM");
    assert_eq!(
        broker.exit_code(PROCESS_TIMEOUT),
        Some(0),
        "{}",
        broker.log()
    );
    // The final counters, each a field an operator can grep for, not one Debug blob.
    let log = broker.log();
    let stopped = log
        .lines()
        .find(|line| line.contains("hermes-mqtt stopped"))
        .unwrap_or_else(|| panic!("no \"hermes-mqtt stopped\" line: {log}"));
    for field in [
        " connections_closed=2",
        " connections=2",
        " published=1",
        " retained=1",
        " store_errors=0",
    ] {
        assert!(stopped.contains(field), "{field:?} not in {stopped:?}");
    }
    assert!(!stopped.contains("BrokerStats"), "{stopped}");

    let broker = Process::start(&args);
    // In words that agree with the numbers, not "1 persistent sessions".
    assert!(
        broker
            .log()
            .contains("(1 persistent session, 1 retained message loaded)"),
        "{}",
        broker.log()
    );
    let mut again = TestBroker::at(broker.addr).connect(&unique("c")).await;
    again.subscribe_one(&t, QoS::AtLeastOnce).await;
    assert_eq!(&again.recv_publish().await.payload[..], b"kept");
    let (_, present) = TestBroker::at(broker.addr)
        .connect_persistent("term-sub")
        .await;
    assert!(present, "the persistent session was stored");
}

/// A broker process with a client that reads none of the tens of megabytes sent to it: its
/// writer is blocked, so a graceful shutdown waits for it (up to its grace period).
async fn broker_with_a_stuck_client() -> (Process, Raw) {
    let broker = Process::start(&["--listen", "127.0.0.1:0", "--memory"]);
    let t = unique("stuck/t");
    let mut stuck = TestBroker::at(broker.addr).connect(&unique("stuck")).await;
    stuck.subscribe_one(&t, QoS::AtMostOnce).await;
    let mut publisher = TestBroker::at(broker.addr).connect(&unique("p")).await;
    let payload = vec![7u8; 512 * 1024];
    for _ in 0..60 {
        publisher
            .publish(&t, &payload, QoS::AtMostOnce, false)
            .await;
    }
    (broker, stuck)
}

/// While a shutdown waits for a client that reads nothing, a second signal exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_exits_at_once() {
    let (mut broker, stuck) = broker_with_a_stuck_client().await;
    broker.signal("INT");
    // Later than 500 ms: a signal sooner than that counts as the first delivered twice.
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    broker.signal("TERM");
    let code = broker.exit_code(PROCESS_TIMEOUT);
    assert_eq!(code, Some(130), "{}", broker.log());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(stuck);
}

/// `timeout 60 hermes-mqtt`, when the time is up, sends SIGTERM to the broker and then to its
/// process group: the same request twice within microseconds. That is one shutdown (graceful,
/// everything stored), not a second signal; one sent later still exits at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_delivered_twice_at_once_is_one_shutdown() {
    let (mut broker, stuck) = broker_with_a_stuck_client().await;
    // The second one a little after the first, so that the broker has taken the first (two
    // signals pending at once are one to the runtime); well within the broker's 500 ms.
    let pid = broker.child.id().to_string();
    let status = Command::new("sh")
        .args(["-c", "kill -TERM $0; sleep 0.02; kill -TERM $0", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the duplicate signal ended the graceful shutdown: {}",
        broker.log()
    );
    broker.signal("INT");
    assert_eq!(
        broker.exit_code(PROCESS_TIMEOUT),
        Some(130),
        "{}",
        broker.log()
    );
    drop(stuck);
}

/// A store that cannot take the writes (the file may not grow: a full disk, as far as redb can
/// tell): the broker goes on; the first failed write is logged at once and the others are
/// counted (`store_errors`) and summed up, not logged one by one; the graceful shutdown says
/// that changes are not on disk and exits 1, not 0 as if everything had been stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_after_failed_writes_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = Command::new("bash");
    // 300 KiB at most per file; SIGXFSZ ignored, so that a write past it fails with EFBIG.
    command.args([
        "-c",
        "trap '' XFSZ; ulimit -f 300; exec \"$0\" \"$@\"",
        BIN,
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let mut broker = Process::spawn(command);
    let mut client = TestBroker::at(broker.addr).connect(&unique("c")).await;
    let payload = vec![b'x'; 60_000];
    let base = unique("full");
    for i in 0..30 {
        client
            .publish(&format!("{base}/{i}"), &payload, QoS::AtLeastOnce, true)
            .await;
    }
    // The shutdown commits (or fails to) every write submitted before it: no wait needed.
    broker.signal("TERM");
    assert_eq!(
        broker.exit_code(PROCESS_TIMEOUT),
        Some(1),
        "{}",
        broker.log()
    );
    let log = broker.log();
    assert!(log.contains("could not be stored"), "{log}");
    // What the broker's own lines say failed adds up to the count, in a few lines.
    let (mut lines, mut said) = (0, 0);
    for line in log.lines().filter(|l| l.contains("ERROR hermes_mqtt::")) {
        lines += 1;
        let number = |s: &str| s.parse::<u64>().unwrap_or_else(|_| panic!("{line}"));
        if let Some((before, _)) = line.split_once(" more failed store write") {
            said += number(before.rsplit(' ').next().unwrap());
        } else {
            assert!(line.contains("Store errors are counted in"), "{line}");
            said += 1;
            if let Some((before, _)) = line.split_once(" more before it") {
                said += number(before.rsplit(' ').next().unwrap());
            }
        }
    }
    let counted = log
        .split(" store_errors=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .map(|n| n.parse::<u64>().unwrap())
        .unwrap_or_else(|| panic!("no store_errors in {log}"));
    assert!(counted >= 20, "most of the 30 writes fail: {log}");
    assert_eq!(said, counted, "{log}");
    assert!(lines <= 3, "not one line per failed write: {log}");
}

fn run(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_errors_name_the_key_or_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let typo = write("typo.toml", "max_inflite = 5\n");
    let (code, err) = run(&["--config", &typo]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("`max_inflite`") && err.contains("typo.toml"),
        "{err}"
    );

    let users = write("users.toml", "[users]\nalice = \"secret\"\n");
    let (code, err) = run(&["--config", &users]);
    assert_eq!(code, Some(2));
    assert!(err.contains("hermes-mqtt passwd FILE USER"), "{err}");

    let tls = write(
        "tls.toml",
        "[[listeners]]\naddress = \"127.0.0.1:0\"\nkind = \"tls\"\n\
         cert = \"/nonexistent/fullchain.pem\"\nkey = \"/nonexistent/key.pem\"\n",
    );
    let (code, err) = run(&["--config", &tls, "--memory"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/fullchain.pem"), "{err}");

    let acl = write("acl.toml", "acl_file = \"/nonexistent/acl\"\n");
    let (code, err) = run(&["--config", &acl, "--memory", "--listen", "127.0.0.1:0"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("/nonexistent/acl"), "{err}");

    // The metrics listener at a listener's address: said before anything is bound.
    let metrics = write("metrics.toml", "metrics_address = \"127.0.0.1:1\"\n");
    let (code, err) = run(&["--config", &metrics, "--memory", "--listen", "127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is also a listener's"), "{err}");
}

/// `--help` tells an operator the signals and exit codes.
#[test]
fn help_says_the_signals_and_exit_codes() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "SIGTERM",
        "SIGHUP",
        "Exit codes",
        "130",
        "repeat it for several",
    ] {
        assert!(help.contains(needle), "{needle}: {help}");
    }
}

/// Flags override the file: `--listen` replaces its listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_override_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "memory = true\nlisteners = [\"192.0.2.1:1\"]\n").unwrap();
    let mut broker = Process::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let client = TestBroker::at(broker.addr).connect(&unique("c")).await;
    client.disconnect().await;
    broker.signal("TERM");
    assert_eq!(broker.exit_code(PROCESS_TIMEOUT), Some(0));
}

/// Clients sending garbage are closed without a log line each at the default level (only a
/// summary once a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_does_not_flood_the_log() {
    let mut broker =
        Process::start(&["--listen", "127.0.0.1:0", "--memory", "--log-level", "info"]);
    for i in 0..40u8 {
        let mut raw = Raw::open(broker.addr).await;
        raw.send_bytes_lossy(&[0x10 | (i % 3), 0xff, 0xff, 0xff, 0xff, 0xff])
            .await;
        raw.expect_closed().await;
    }
    // Nor does an ordinary client.
    let client = TestBroker::at(broker.addr).connect(&unique("c")).await;
    client.disconnect().await;
    let lines_before_stop = broker.log.lock().unwrap().len();
    broker.signal("TERM");
    assert_eq!(broker.exit_code(PROCESS_TIMEOUT), Some(0));
    assert!(
        lines_before_stop <= 2,
        "only the start's lines: {}",
        broker.log()
    );
}

/// The example configuration runs as it is (on other ports here): TCP and WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_configuration_runs() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("hermes-mqtt.toml");
    let mut config = hermes_mqtt::Config::load(&example).unwrap();
    config.memory = true;
    for listener in &mut config.listeners {
        listener.address.set_port(0);
    }
    let broker = hermes_mqtt::Broker::start(config).await.unwrap();
    let [tcp, ws] = broker.local_addrs()[..] else {
        panic!("two listeners")
    };
    let client = TestBroker::at(tcp).connect(&unique("c")).await;
    client.disconnect().await;
    let stream = tokio::net::TcpStream::connect(ws).await.unwrap();
    let mut client = support::streams::ws_handshake(stream, &format!("ws://{ws}/mqtt")).await;
    client.connect(&unique("w")).await;
    broker.shutdown().await.unwrap();
}

/// SIGHUP reloads the password file: a user added since the start can connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_password_file() {
    let dir = tempfile::tempdir().unwrap();
    let passwords = password_file(dir.path(), &[("alice", "a-pass")]);
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "memory = true\nallow_anonymous = false\npassword_file = {:?}\n",
            passwords.to_str().unwrap()
        ),
    )
    .unwrap();
    let mut broker = Process::start(&[
        "--config",
        config.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
    ]);
    let mqtt = TestBroker::at(broker.addr);
    let bob = |id: &str| {
        let mut connect = connect_packet(id);
        connect.login = Some(hermes_mqtt::Login {
            username: hermes_mqtt::MqttString::from_static("bob"),
            password: Some(bytes::Bytes::from_static(b"b-pass")),
        });
        connect
    };
    let (_, ack) = mqtt.raw_connect(bob(&unique("b"))).await;
    assert_eq!(
        ack.code,
        hermes_mqtt::ConnectReturnCode::BadUserNameOrPassword
    );
    password_file(dir.path(), &[("alice", "a-pass"), ("bob", "b-pass")]);
    broker.signal("HUP");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (_, ack) = mqtt.raw_connect(bob(&unique("b"))).await;
        if ack.code == hermes_mqtt::ConnectReturnCode::Accepted {
            break;
        }
        assert!(Instant::now() < deadline, "not reloaded: {}", broker.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.signal("TERM");
    assert_eq!(broker.exit_code(PROCESS_TIMEOUT), Some(0));
    let log = broker.log();
    assert!(log.contains("reloaded the password file"), "{log}");
}

/// SIGHUP without a password or ACL file says there was nothing to reload (not that files
/// were reloaded), at info level, and the broker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_without_files_says_there_is_nothing_to_reload() {
    let mut broker = Process::start(&["--listen", "127.0.0.1:0", "--memory"]);
    broker.signal("HUP");
    let deadline = Instant::now() + TIMEOUT;
    while !broker.log().contains("nothing to reload") {
        assert!(Instant::now() < deadline, "{}", broker.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let client = TestBroker::at(broker.addr).connect(&unique("c")).await;
    client.disconnect().await;
    broker.signal("TERM");
    assert_eq!(broker.exit_code(PROCESS_TIMEOUT), Some(0));
    let log = broker.log();
    let line = log
        .lines()
        .find(|l| l.contains("nothing to reload"))
        .unwrap();
    assert!(line.contains(" INFO "), "{line}");
    assert!(!log.contains("reloaded"), "{log}");
}

/// `--listen` given several times listens on each address; an address given twice, or one
/// that is not an IP address and port, is a usage error (exit 2) that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_given_several_times_listens_on_each() {
    let mut broker = Process::start(&[
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--listen",
        "127.0.0.1:0",
        "--memory",
    ]);
    let line = broker
        .log()
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap()
        .to_owned();
    let addrs: Vec<SocketAddr> = line
        .split("mqtt://")
        .skip(1)
        .map(|rest| rest[..rest.find(')').unwrap()].parse().unwrap())
        .collect();
    assert_eq!(addrs.len(), 3, "{line}");
    for &addr in &addrs {
        let client = TestBroker::at(addr).connect(&unique("c")).await;
        client.disconnect().await;
    }
    broker.signal("TERM");
    assert_eq!(broker.exit_code(PROCESS_TIMEOUT), Some(0));

    let (code, err) = run(&[
        "--listen",
        "127.0.0.1:1",
        "--listen",
        "127.0.0.1:1",
        "--memory",
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("127.0.0.1:1 is given twice"), "{err}");
    let (code, err) = run(&["--listen", "localhost:1883", "--memory"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("not an IP address and port"), "{err}");
}

/// The log goes to standard error as plain text when that is not a terminal (a file, a pipe,
/// journald): no ANSI colour codes in it ([`Process::start`] leaves `NO_COLOR` unset).
#[test]
fn the_log_has_no_colour_codes_when_not_on_a_terminal() {
    let broker = Process::start(&["--listen", "127.0.0.1:0", "--memory"]);
    let log = broker.log();
    assert!(log.contains(" INFO ") && !log.contains('\x1b'), "{log:?}");
}
