//! tokio-specific behaviour: both runtime flavours, and the blocking forms where they are safe
//! and where they are not.

use std::time::Duration;

use hermes_core::{Activation, Config, Context};
use hermes_executor::{AskError, Options, Reply, StartError, WouldDeadlock};

enum Msg {
    Double(u64, Reply<u64>),
}

fn doubler(_: &u64) -> Activation<u64, Msg> {
    Activation::ready(|_: &mut Context<'_, u64, Msg>, msg| match msg {
        Msg::Double(n, reply) => drop(reply.send(n * 2)),
    })
}

const GUARD: Duration = Duration::from_secs(60);

#[test]
fn start_outside_a_runtime_says_what_to_do() {
    let err = hermes_tokio::start(Config::default(), doubler).unwrap_err();
    assert!(matches!(err, StartError::NoRuntime));
    assert!(err.to_string().contains("start_on"));
}

#[tokio::test(flavor = "current_thread")]
async fn current_thread_runtime_awaits_and_refuses_to_block() {
    let hermes =
        hermes_tokio::start_with(Options::new(Config::default()).shards(2), doubler).unwrap();
    for n in 0..100 {
        assert_eq!(hermes.ask(n, |r| Msg::Double(n, r)).await, Ok(n * 2));
    }
    assert_eq!(
        hermes.ask_blocking(1000, |r| Msg::Double(1000, r), GUARD),
        Err(AskError::WouldDeadlock),
        "blocking here would stop the runtime that runs the shards"
    );
    assert_eq!(
        hermes.shutdown().map(drop),
        Err(WouldDeadlock),
        "shutdown cannot wait here: it starts the shutdown and says so"
    );
    assert!(!hermes.is_accepting());
    let stats = hermes.shutdown_async().await;
    assert_eq!(stats.activations, 100, "the refused ask sent nothing");
    assert_eq!(stats.deactivations, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_thread_runtime_allows_blocking_forms_in_tasks() {
    let hermes = hermes_tokio::start(Config::default(), doubler).unwrap();
    assert_eq!(hermes.ask(3, |r| Msg::Double(3, r)).await, Ok(6));
    // Inside a worker task: block_in_place keeps the runtime going.
    assert_eq!(hermes.ask_blocking(4, |r| Msg::Double(4, r), GUARD), Ok(8));
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.deactivations, 2);
}

#[test]
fn dropping_the_runtime_first_does_not_hang_the_handle() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let hermes = hermes_tokio::start_on(runtime.handle(), Options::new(Config::default()), doubler);
    hermes.send(1, Msg::Double(1, Reply::new().0)).unwrap();
    drop(runtime); // the shard tasks are dropped unrun
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.live, 0);
    assert!(matches!(
        hermes.send(1, Msg::Double(1, Reply::new().0)),
        Err(hermes_core::SendError::Closed(_))
    ));
}

/// Defect: on a current-thread runtime, dropping the last handle inside the runtime skipped
/// every `deactivated` hook (durable saves were lost) and logged nothing. The shards finish on
/// the runtime, or close where the runtime drops them: either way every hook runs.
#[test]
fn current_thread_runtime_runs_every_hook_when_the_handle_is_dropped() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Saver(Arc<AtomicU64>);
    impl hermes_core::Receiver<u64, ()> for Saver {
        fn receive(&mut self, _: &mut Context<'_, u64, ()>, (): ()) {}
        fn deactivated(&mut self, _: &mut Context<'_, u64, ()>, _: hermes_core::Deactivation) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    // Dropped inside the runtime, which then goes on running (the shards finish there), and
    // dropped inside the runtime just before the runtime itself is dropped.
    for keep_running in [true, false] {
        let saved = Arc::new(AtomicU64::new(0));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let hooks = saved.clone();
        runtime.block_on(async move {
            let hermes = hermes_tokio::start_with(
                Options::new(Config::default()).shards(2),
                move |_: &u64| Activation::ready(Saver(hooks.clone())),
            )
            .unwrap();
            for id in 0..5 {
                hermes.send(id, ()).unwrap();
            }
            tokio::task::yield_now().await;
            drop(hermes); // cannot wait here: it starts the shutdown
        });
        if keep_running {
            runtime.block_on(async { tokio::time::sleep(Duration::from_millis(100)).await });
        }
        drop(runtime);
        assert_eq!(
            saved.load(Ordering::SeqCst),
            5,
            "keep running: {keep_running}"
        );
    }
}

/// A runtime without its time driver cannot run the shards (they wait on timers): starting
/// on it says so, instead of shards that die on their first wait and a Hermes that never
/// answers.
#[test]
fn a_runtime_without_timers_is_refused_with_what_to_do() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let error = hermes_tokio::start(Config::default(), doubler).unwrap_err();
    assert!(error.to_string().contains("enable_time"), "{error}");
}
