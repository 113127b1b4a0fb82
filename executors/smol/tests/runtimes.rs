//! smol-specific behaviour: the blocking forms where they would stop the shards.

use std::time::{Duration, Instant};

use hermes_core::{Activation, Config, Context};
use hermes_executor::{AskError, Reply};

enum Msg {
    Double(u64, Reply<u64>),
}

fn doubler(_: &u64) -> Activation<u64, Msg> {
    Activation::ready(|_: &mut Context<'_, u64, Msg>, msg| match msg {
        Msg::Double(n, reply) => drop(reply.send(n * 2)),
    })
}

/// Defect: `ask_blocking` called from a task on smol's global executor waited out its whole
/// timeout (the task's thread was the one the shards needed) and returned `Timeout`.
#[test]
fn ask_blocking_from_a_task_refuses_at_once() {
    let hermes = hermes_smol::start(Config::default(), doubler);
    let h = hermes.clone();
    let (answer, waited) = smol::block_on(smol::spawn(async move {
        // Awaiting works; blocking here would stop the executor's thread.
        assert_eq!(h.ask(1, |r| Msg::Double(1, r)).await, Ok(2));
        let start = Instant::now();
        let answer = h.ask_blocking(2, |r| Msg::Double(2, r), Duration::from_secs(30));
        (answer, start.elapsed())
    }));
    assert_eq!(answer, Err(AskError::WouldDeadlock));
    assert!(waited < Duration::from_secs(5), "refused after {waited:?}");
    // From a thread that does not run the executor, blocking is fine.
    assert_eq!(
        hermes.ask_blocking(3, |r| Msg::Double(3, r), Duration::from_secs(30)),
        Ok(6)
    );
    // IDs 1 and 3: the refused ask sent nothing to 2.
    assert_eq!(hermes.shutdown().unwrap().deactivations, 2);
}
