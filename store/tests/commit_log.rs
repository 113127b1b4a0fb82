//! What the group committer logs when its store fails: one ERROR line for a run of failed
//! commits (each write's acknowledgement carries the error), not one per commit, and a WARN
//! line when commits succeed again. Its own test binary: it installs a global subscriber.

mod support;
use support::Probe;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use hermes_store::{GroupCommit, GroupCommitConfig};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Records the level of every event from hermes-store.
#[derive(Clone, Default)]
struct Levels(Arc<Mutex<Vec<Level>>>);

impl<S: Subscriber> Layer<S> for Levels {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if event.metadata().target().starts_with("hermes_store") {
            self.0.lock().unwrap().push(*event.metadata().level());
        }
    }
}

impl Levels {
    fn take(&self, level: Level) -> usize {
        let mut seen = self.0.lock().unwrap();
        let n = seen.iter().filter(|l| **l == level).count();
        seen.clear();
        n
    }
}

#[test]
fn a_run_of_failed_commits_logs_one_error_and_recovery_one_warning() {
    let levels = Levels::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(levels.clone()))
        .unwrap();
    let store = Probe::new();
    let gc = GroupCommit::start(store.clone(), GroupCommitConfig::new()).unwrap();

    store.fail.store(true, Ordering::SeqCst);
    for i in 0..20 {
        gc.put(format!("k{i}"), "v", |_| {});
        // One transaction each: flush waits for it.
        gc.flush().unwrap_err();
    }
    assert_eq!(gc.stats().failed_commits, 20);
    assert_eq!(
        levels.take(Level::ERROR),
        1,
        "one ERROR line for 20 failed commits"
    );

    store.fail.store(false, Ordering::SeqCst);
    gc.put("after", "v", |_| {});
    gc.flush().unwrap();
    assert_eq!(
        levels.take(Level::WARN),
        1,
        "one WARN line when commits succeed again"
    );

    // A new run of failures is reported again.
    store.fail.store(true, Ordering::SeqCst);
    gc.put("again", "v", |_| {});
    gc.flush().unwrap_err();
    assert_eq!(levels.take(Level::ERROR), 1);
}
