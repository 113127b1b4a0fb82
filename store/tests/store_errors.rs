//! What a durable receiver sees when its store fails: a failed read fails the activation (the
//! messages become `FactoryFailed` dead letters naming the key, and the next message tries
//! again); a failed save is reported to its acknowledgement, a later load finds the last
//! committed state (not the failed one), and the in-memory state is no longer dirty, so a
//! `deactivated` hook does not retry it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use hermes_core::{Activation, Config, Context, Deactivation, DeadLetterReason, Driver, Receiver};
use hermes_store::{
    Batch, Codec, Durable, Entries, GroupCommitConfig, MemoryStore, Operation, StateStore, Store,
    StoreError,
};

const COUNT: Codec<u64> = Codec::new(1);

/// A memory store whose reads or writes fail while switched to.
#[derive(Default)]
struct Flaky {
    inner: MemoryStore,
    fail_reads: AtomicBool,
    fail_writes: AtomicBool,
}

impl Flaky {
    fn check(&self, failing: &AtomicBool, op: Operation, key: &[u8]) -> Result<(), StoreError> {
        if failing.load(Ordering::SeqCst) {
            return Err(StoreError::other(
                op,
                Some(key),
                "disk on fire (a test failure)",
            ));
        }
        Ok(())
    }
}

impl Store for Flaky {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.check(&self.fail_reads, Operation::Get, key)?;
        self.inner.get(key)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.check(&self.fail_writes, Operation::Put, key)?;
        self.inner.put(key, value)
    }
    fn delete(&self, key: &[u8]) -> Result<(), StoreError> {
        self.check(&self.fail_writes, Operation::Delete, key)?;
        self.inner.delete(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries, StoreError> {
        self.check(&self.fail_reads, Operation::Scan, prefix)?;
        self.inner.scan_prefix(prefix)
    }
    fn write_batch(&self, batch: Batch) -> Result<(), StoreError> {
        self.check(&self.fail_writes, Operation::WriteBatch, b"")?;
        self.inner.write_batch(batch)
    }
}

enum Msg {
    Add(u64, mpsc::Sender<u64>),
    Save(mpsc::Sender<(Result<(), StoreError>, bool)>),
    Stop,
}

struct Counter(Durable<u64>);

impl Receiver<String, Msg> for Counter {
    fn receive(&mut self, ctx: &mut Context<'_, String, Msg>, msg: Msg) {
        match msg {
            Msg::Add(n, seen) => {
                *self.0 += n;
                let _ = seen.send(*self.0);
            }
            Msg::Save(done) => {
                let (tx, rx) = mpsc::channel();
                self.0.save(move |r| drop(tx.send(r)));
                // Only for this test: wait for the acknowledgement inside the handler.
                let result = rx.recv().expect("the acknowledgement");
                let _ = done.send((result, self.0.is_dirty()));
            }
            Msg::Stop => ctx.stop(),
        }
    }

    fn deactivated(&mut self, _: &mut Context<'_, String, Msg>, why: Deactivation) {
        self.0.deactivated(why);
    }
}

/// A driver whose factory loads counters from a [`Flaky`] store.
type TestDriver =
    Driver<String, Msg, Box<dyn Fn(&String) -> Activation<String, Msg> + Send + Sync>>;

fn setup() -> (Arc<Flaky>, Arc<StateStore>, TestDriver) {
    let flaky = Arc::new(Flaky::default());
    let states = StateStore::new(flaky.clone(), GroupCommitConfig::default()).unwrap();
    let s = Arc::clone(&states);
    let factory = move |id: &String| match Durable::load(&s, COUNT, format!("count/{id}")) {
        Ok(state) => Activation::ready(Counter(state)),
        Err(e) => Activation::failed(e),
    };
    let driver = Driver::new(Config::default(), Box::new(factory) as Box<_>);
    (flaky, states, driver)
}

#[test]
fn a_failed_read_fails_the_activation_and_the_next_message_tries_again() {
    let (flaky, _states, mut driver) = setup();
    flaky.fail_reads.store(true, Ordering::SeqCst);
    let (seen, added) = mpsc::channel();
    driver.send("a".into(), Msg::Add(1, seen.clone())).unwrap();
    driver.run(Instant::now());
    let letter = driver
        .router_mut()
        .poll_dead_letter()
        .expect("a dead letter");
    let DeadLetterReason::FactoryFailed(error) = &letter.reason else {
        panic!("{:?}", letter.reason)
    };
    let text = error.to_string();
    assert!(
        text.contains("count/a") && text.contains("disk on fire"),
        "{text}"
    );
    assert!(
        letter.message.is_some(),
        "the message comes back in the dead letter"
    );
    assert!(added.try_recv().is_err());

    flaky.fail_reads.store(false, Ordering::SeqCst);
    driver.send("a".into(), Msg::Add(2, seen)).unwrap();
    driver.run(Instant::now());
    assert_eq!(added.try_recv(), Ok(2), "the next message activates it");
}

#[test]
fn a_failed_save_is_reported_and_the_last_committed_state_is_loaded() {
    let (flaky, states, mut driver) = setup();
    let (seen, added) = mpsc::channel();
    let (saved, save_results) = mpsc::channel();
    driver.send("a".into(), Msg::Add(5, seen.clone())).unwrap();
    driver.send("a".into(), Msg::Save(saved.clone())).unwrap();
    driver.run(Instant::now());
    assert!(matches!(save_results.try_recv(), Ok((Ok(()), false))));

    flaky.fail_writes.store(true, Ordering::SeqCst);
    driver.send("a".into(), Msg::Add(3, seen.clone())).unwrap();
    driver.send("a".into(), Msg::Save(saved)).unwrap();
    driver.run(Instant::now());
    let (result, dirty) = save_results.try_recv().expect("the save's result");
    let error = result.expect_err("the save failed");
    assert!(error.to_string().contains("disk on fire"), "{error}");
    assert!(!dirty, "a save counts once submitted, whatever its outcome");
    assert_eq!(
        states.load(&COUNT, b"count/a").unwrap(),
        Some(5),
        "not the failed 8"
    );

    // Stopped now: the state is not dirty, so the hook does not save again, and even if it did
    // the store still fails. The next instance loads the last committed state.
    driver.send("a".into(), Msg::Stop).unwrap();
    driver.run(Instant::now());
    states.flush().ok();
    flaky.fail_writes.store(false, Ordering::SeqCst);
    driver.send("a".into(), Msg::Add(1, seen)).unwrap();
    driver.run(Instant::now());
    assert_eq!(added.try_iter().last(), Some(6), "5 committed, plus 1");
    assert_eq!(driver.router().stats().activations, 2);
}
