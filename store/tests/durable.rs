//! Durable receivers driven by the inline core driver.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Config, Context, Deactivation, DeadLetterReason, Driver, Receiver, Recipient,
};
use hermes_store::{
    Codec, Durable, GroupCommitConfig, MemoryStore, RedbStore, StateStore, Store, StoreError,
};

const COUNT: Codec<u64> = Codec::new(1);

enum Msg {
    Add(u64),
    AddAndSave(u64, mpsc::Sender<Result<(), StoreError>>),
    Panic,
    Stop,
}

struct Counter(Durable<u64>);

impl Receiver<String, Msg> for Counter {
    fn receive(&mut self, ctx: &mut Context<'_, String, Msg>, msg: Msg) {
        match msg {
            Msg::Add(n) => *self.0 += n,
            Msg::AddAndSave(n, done) => {
                *self.0 += n;
                self.0.save(move |r| drop(done.send(r)));
            }
            Msg::Panic => {
                *self.0 += 1000;
                panic!("counter panics on purpose");
            }
            Msg::Stop => ctx.stop(),
        }
    }

    fn deactivated(&mut self, _: &mut Context<'_, String, Msg>, why: Deactivation) {
        self.0.deactivated(why);
    }
}

fn driver(
    states: &Arc<StateStore>,
    codec: Codec<u64>,
) -> Driver<String, Msg, impl hermes_core::Factory<String, Msg, App = (String, Msg)>> {
    let states = states.clone();
    Driver::new(Config::default(), move |id: &String| {
        match Durable::load(&states, codec, format!("count/{id}")) {
            Ok(state) => Activation::ready(Counter(state)),
            Err(e) => Activation::failed(e),
        }
    })
}

fn send_all(
    d: &mut Driver<String, Msg, impl hermes_core::Factory<String, Msg, App = (String, Msg)>>,
    msgs: Vec<(&str, Msg)>,
) {
    for (to, msg) in msgs {
        assert!(d.send(to.to_string(), msg).is_ok(), "the router is open");
    }
    d.run(Instant::now());
}

#[test]
fn state_survives_deactivation_and_a_new_process_on_redb() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.redb");
    {
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
        let states = StateStore::new(store, GroupCommitConfig::default()).unwrap();
        let mut d = driver(&states, COUNT);
        send_all(
            &mut d,
            vec![("a", Msg::Add(2)), ("b", Msg::Add(7)), ("a", Msg::Stop)],
        );
        // `a` was deactivated by stop and saved; the next message re-activates it from the store.
        send_all(&mut d, vec![("a", Msg::Add(3))]);
        d.close(Instant::now()); // deactivates a and b, saving both
        assert_eq!(d.router().stats().deactivations, 3);
        states.shutdown().unwrap();
    }
    let store: Arc<dyn Store> = Arc::new(RedbStore::open(&path).unwrap());
    let states = StateStore::new(store, GroupCommitConfig::default()).unwrap();
    assert_eq!(states.load(&COUNT, b"count/a").unwrap(), Some(5));
    assert_eq!(states.load(&COUNT, b"count/b").unwrap(), Some(7));
}

#[test]
fn reactivation_before_the_commit_loads_the_unacknowledged_save() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    // A long interval keeps the save waiting in the group.
    let config = GroupCommitConfig::default().interval(Duration::from_secs(30));
    let states = StateStore::new(store.clone(), config).unwrap();
    let mut d = driver(&states, COUNT);
    send_all(
        &mut d,
        vec![("a", Msg::Add(4)), ("a", Msg::Stop), ("a", Msg::Add(1))],
    );
    assert_eq!(store.get(b"count/a").unwrap(), None, "not committed yet");
    assert_eq!(states.load(&COUNT, b"count/a").unwrap(), Some(4));
    d.close(Instant::now());
    states.flush().unwrap();
    assert_eq!(COUNT.load(store.as_ref(), b"count/a").unwrap(), Some(5));
}

#[test]
fn save_acknowledges_only_once_durable() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let states = StateStore::new(store.clone(), GroupCommitConfig::default()).unwrap();
    let mut d = driver(&states, COUNT);
    let (tx, rx) = mpsc::channel();
    send_all(&mut d, vec![("a", Msg::AddAndSave(9, tx))]);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("acknowledged")
        .unwrap();
    assert_eq!(COUNT.load(store.as_ref(), b"count/a").unwrap(), Some(9));
}

#[test]
fn a_panicking_receiver_does_not_save_its_half_updated_state() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let states = StateStore::new(store.clone(), GroupCommitConfig::default()).unwrap();
    let mut d = driver(&states, COUNT);
    send_all(&mut d, vec![("a", Msg::Add(1)), ("a", Msg::Stop)]);
    send_all(&mut d, vec![("a", Msg::Add(1)), ("a", Msg::Panic)]);
    let dead = d
        .poll_dead_letter()
        .expect("the panicking message is a dead letter");
    assert!(matches!(dead.reason, DeadLetterReason::Panicked(_)));
    states.flush().unwrap();
    assert_eq!(COUNT.load(store.as_ref(), b"count/a").unwrap(), Some(1));
}

#[test]
fn state_from_an_incompatible_schema_fails_the_activation_with_a_clear_error() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    Codec::<u64>::new(2)
        .save(store.as_ref(), b"count/a", &1)
        .unwrap();
    let states = StateStore::new(store, GroupCommitConfig::default()).unwrap();
    let mut d = driver(&states, COUNT);
    send_all(&mut d, vec![("a", Msg::Add(1))]);
    let dead = d.poll_dead_letter().expect("dead letter");
    assert_eq!(dead.recipient, Recipient::Id("a".to_string()));
    let DeadLetterReason::FactoryFailed(error) = dead.reason else {
        panic!("expected FactoryFailed, got {:?}", dead.reason);
    };
    let text = error.to_string();
    assert!(text.contains("count/a") && text.contains('2'), "{text}");
}
