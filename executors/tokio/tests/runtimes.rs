//! tokio-specific behaviour: both runtime flavours, and the blocking forms where they are safe
//! and where they are not.

use std::time::Duration;

use hermes_core::{Activation, Config, Context};
use hermes_executor::{AskError, Options, Reply, StartError};

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
        hermes.ask_blocking(1, |r| Msg::Double(1, r), GUARD),
        Err(AskError::WouldDeadlock),
        "blocking here would stop the runtime that runs the shards"
    );
    let stats = hermes.shutdown_async().await;
    assert_eq!(stats.activations, 100);
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
