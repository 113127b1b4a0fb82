//! Crash safety of durable receivers: a child process with durable counters under load is
//! killed with SIGKILL; after a restart every save acknowledged before the kill is there and no
//! state is torn.
#![cfg(all(unix, feature = "store", feature = "pool"))]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hermes::store::{Codec, Durable, GroupCommitConfig, RedbStore, StateStore, Store};
use hermes::{Activation, Config, Context, Deactivation, Receiver};

const COUNTERS: u64 = 64;
const COUNTER: Codec<Counter> = Codec::new(1);
const CHILD_ENV: &str = "HERMES_CRASH_CHILD_DB";

/// A counter whose every field is derived from `value`, so a torn write would show.
#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
struct Counter {
    value: u64,
    doubled: u64,
    history: Vec<u64>,
}

struct Incr(Durable<Counter>);

impl Receiver<u64, ()> for Incr {
    fn receive(&mut self, ctx: &mut Context<'_, u64, ()>, (): ()) {
        let c = &mut *self.0;
        c.value += 1;
        c.doubled = c.value * 2;
        c.history.push(c.value);
        if c.history.len() > 8 {
            c.history.remove(0);
        }
        let (id, value) = (*ctx.id(), c.value);
        // Acknowledge on stdout only once the save is durable.
        self.0.save(move |saved| {
            if saved.is_ok() {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "ACK {id} {value}");
                let _ = out.flush();
            }
        });
    }

    fn deactivated(&mut self, _: &mut Context<'_, u64, ()>, why: Deactivation) {
        self.0.deactivated(why);
    }
}

fn key(id: u64) -> String {
    format!("counter/{id}")
}

/// The child: counters under load from four threads until it is killed. Not a test of its
/// own: the crash test below runs it in a child process.
#[test]
#[ignore = "the child process of acknowledged_saves_survive_sigkill_and_no_state_is_torn"]
fn crash_child() {
    let path = std::env::var_os(CHILD_ENV).expect("run by the crash test, which sets the path");
    let store = Arc::new(RedbStore::open(path).expect("open store"));
    let states = StateStore::new(store, GroupCommitConfig::default()).expect("start commits");
    let factory = move |id: &u64| match Durable::load(&states, COUNTER, key(*id)) {
        Ok(state) => Activation::ready(Incr(state)),
        Err(e) => Activation::failed(e),
    };
    let hermes = hermes::pool::start(Config::default(), factory).expect("start pool");
    std::thread::scope(|s| {
        for t in 0..4 {
            let hermes = &hermes;
            s.spawn(move || {
                for i in 0u64.. {
                    let _ = hermes.send((i * 7 + t) % COUNTERS, ());
                    if i % 256 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            });
        }
    });
}

#[test]
fn acknowledged_saves_survive_sigkill_and_no_state_is_torn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child test process");
    let stdout = child.stdout.take().unwrap();

    // Read acknowledgements until enough arrived, then kill -9 mid-flight.
    let seen = Arc::new(AtomicU64::new(0));
    let lines = std::thread::spawn({
        let seen = seen.clone();
        move || {
            let mut acked: HashMap<u64, u64> = HashMap::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let mut words = line.split_whitespace();
                if words.next() != Some("ACK") {
                    continue;
                }
                let (Some(id), Some(value)) = (words.next(), words.next()) else {
                    panic!("malformed ack line: {line:?}");
                };
                let (id, value): (u64, u64) = (id.parse().unwrap(), value.parse().unwrap());
                let best = acked.entry(id).or_default();
                *best = (*best).max(value);
                seen.fetch_add(1, Ordering::Relaxed);
            }
            acked
        }
    });
    let give_up = Instant::now() + Duration::from_secs(60);
    while seen.load(Ordering::Relaxed) < 3_000 && Instant::now() < give_up && !lines.is_finished() {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL the child"); // Child::kill sends SIGKILL on Unix
    child.wait().unwrap();
    let acked = lines.join().unwrap();
    let count = seen.load(Ordering::Relaxed);
    assert!(
        count > 0,
        "the child acknowledged no save before it was killed"
    );

    // Restart: open the same file, as a new process would.
    let store = RedbStore::open(&path).expect("the store reopens after a crash");
    for id in 0..COUNTERS {
        let stored = COUNTER
            .load(&store, key(id).as_bytes())
            .expect("no torn state");
        let want = acked.get(&id).copied().unwrap_or(0);
        let got = stored.as_ref().map_or(0, |c| c.value);
        assert!(
            got >= want,
            "counter {id}: acknowledged {want}, found {got} after the crash"
        );
        if let Some(c) = stored {
            assert_eq!(c.doubled, c.value * 2, "counter {id} torn: {c:?}");
            assert_eq!(c.history.last(), Some(&c.value), "counter {id} torn: {c:?}");
        }
    }
    assert!(store.scan_prefix(b"counter/").unwrap().len() as u64 <= COUNTERS);
    eprintln!(
        "{count} acknowledged saves over {} counters survived SIGKILL",
        acked.len()
    );
}
