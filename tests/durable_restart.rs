//! Durable receivers through the public API, on every executor: state saved by the
//! `deactivated` hook at shutdown (and at an idle timeout) is loaded by the next process's
//! factory from the same redb file, whichever executor each run uses; a receiver that panicked
//! does not save its half-updated state.
#![cfg(all(feature = "store", feature = "pool"))]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hermes::store::{Codec, Durable, GroupCommitConfig, RedbStore, StateStore};
use hermes::{Activation, Config, Context, Deactivation, Hermes, Options, Receiver, Reply};

const GUARD: Duration = Duration::from_secs(60);
const TALLY: Codec<Tally> = Codec::new(1);

#[derive(serde::Serialize, serde::Deserialize, Default, Debug, PartialEq)]
struct Tally {
    total: u64,
}

enum Msg {
    Add(u64),
    /// Adds, then panics: the addition must not be saved.
    AddThenPanic(u64),
    Total(Reply<u64>),
}

struct Account(Durable<Tally>);

impl Receiver<u64, Msg> for Account {
    fn receive(&mut self, _: &mut Context<'_, u64, Msg>, msg: Msg) {
        match msg {
            Msg::Add(n) => self.0.total += n,
            Msg::AddThenPanic(n) => {
                self.0.total += n;
                panic!("half-updated (a deliberate panic in a test)");
            }
            Msg::Total(reply) => drop(reply.send(self.0.total)),
        }
    }

    fn deactivated(&mut self, _: &mut Context<'_, u64, Msg>, why: Deactivation) {
        self.0.deactivated(why);
    }
}

#[derive(Clone, Copy, Debug)]
enum Executor {
    Pool,
    Tokio,
    Smol,
}

/// One "process": opens the store at `path`, starts Hermes on `executor`, runs `work`, shuts
/// down, and flushes the store.
fn run(path: &Path, executor: Executor, config: Config, work: impl FnOnce(&Hermes<u64, Msg>)) {
    let store = Arc::new(RedbStore::open(path).expect("the store opens"));
    let states = StateStore::new(store, GroupCommitConfig::default()).expect("group commit");
    let s = Arc::clone(&states);
    let factory = move |id: &u64| match Durable::load(&s, TALLY, format!("tally/{id}")) {
        Ok(state) => Activation::ready(Account(state)),
        Err(e) => Activation::failed(e),
    };
    let options = Options::new(config).shards(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("a tokio runtime");
    let hermes = match executor {
        Executor::Pool => hermes::pool::start_with(options, factory).expect("the pool starts"),
        Executor::Tokio => hermes_tokio::start_on(runtime.handle(), options, factory),
        Executor::Smol => hermes_smol::start_with(options, factory),
    };
    work(&hermes);
    hermes
        .shutdown()
        .expect("shutdown from a plain thread waits");
    states.shutdown().expect("every save is durable");
}

fn total(hermes: &Hermes<u64, Msg>, id: u64) -> u64 {
    hermes
        .ask_blocking(id, Msg::Total, GUARD)
        .expect("the account answers")
}

#[test]
fn state_survives_restarts_across_every_executor() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tallies.redb");
    let runs = [
        Executor::Pool,
        Executor::Tokio,
        Executor::Smol,
        Executor::Pool,
    ];
    for (round, executor) in runs.into_iter().enumerate() {
        let round = round as u64;
        run(&path, executor, Config::default(), |hermes| {
            for id in 0..20 {
                assert_eq!(total(hermes, id), round * id, "{executor:?}, ID {id}");
                hermes.send(id, Msg::Add(id)).unwrap();
            }
        });
    }
}

#[test]
fn idle_deactivation_saves_and_a_panicked_instance_does_not() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("tallies.redb");
    let quick = Config::default().idle_timeout(Duration::from_millis(20));
    run(&path, Executor::Pool, quick, |hermes| {
        hermes.send(1, Msg::Add(5)).unwrap();
        // Idles out (saving 5), then a fresh instance loads it.
        let start = std::time::Instant::now();
        while hermes.stats().deactivations == 0 {
            assert!(start.elapsed() < GUARD, "hung waiting for the idle timeout");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(total(hermes, 1), 5);
        hermes.send(1, Msg::AddThenPanic(100)).unwrap();
        assert_eq!(
            total(hermes, 1),
            5,
            "the fresh instance loaded the last save"
        );
    });
    run(&path, Executor::Tokio, Config::default(), |hermes| {
        assert_eq!(total(hermes, 1), 5);
    });
}
