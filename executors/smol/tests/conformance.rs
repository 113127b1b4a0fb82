//! The conformance suite on smol: each test gets its own executor, run by two named threads,
//! and drives Hermes from outside it (blocking asks, shutdown) as a thread would.

use std::sync::Arc;
use std::thread::JoinHandle;

use hermes_conformance::{Harness, conformance_tests, unique_name};
use hermes_core::Factory;
use hermes_executor::{Hermes, Key, Message, Options};
use smol::Executor;
use smol::channel::Sender;

struct Smol {
    name: String,
    executor: Arc<Executor<'static>>,
    stop: Sender<()>,
    threads: Vec<JoinHandle<()>>,
}

impl Smol {
    fn new() -> Self {
        let name = unique_name();
        let executor = Arc::new(Executor::new());
        let (stop, stopped) = smol::channel::bounded::<()>(1);
        let threads = (0..2)
            .map(|i| {
                let (executor, stopped) = (Arc::clone(&executor), stopped.clone());
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || {
                        smol::block_on(executor.run(async {
                            let _ = stopped.recv().await;
                        }))
                    })
                    .expect("an executor thread")
            })
            .collect();
        Smol {
            name,
            executor,
            stop,
            threads,
        }
    }
}

impl Drop for Smol {
    fn drop(&mut self) {
        self.stop.close();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Harness for Smol {
    fn start<K: Key, M: Message, F: Factory<K, M>>(
        &self,
        options: Options<K, M>,
        factory: F,
    ) -> Hermes<K, M, F::App> {
        hermes_smol::start_on(&self.executor, options, factory)
    }

    fn threads(&self) -> &str {
        &self.name
    }
}

conformance_tests!(Smol::new());
