//! The conformance suite on tokio: each test gets its own multi-thread runtime with two
//! workers, and drives Hermes from outside it (blocking asks, shutdown) as a thread would.

use hermes_conformance::{Harness, conformance_tests, unique_name};
use hermes_core::Factory;
use hermes_executor::{Hermes, Key, Message, Options};

struct Tokio {
    name: String,
    runtime: tokio::runtime::Runtime,
}

impl Tokio {
    fn new() -> Self {
        let name = unique_name();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(format!("{name}-w"))
            .enable_time()
            .build()
            .expect("a tokio runtime");
        Tokio { name, runtime }
    }
}

impl Harness for Tokio {
    fn start<K: Key, M: Message, F: Factory<K, M>>(
        &self,
        options: Options<K, M>,
        factory: F,
    ) -> Hermes<K, M, F::App> {
        hermes_tokio::start_on(self.runtime.handle(), options, factory)
    }

    fn threads(&self) -> &str {
        &self.name
    }
}

conformance_tests!(Tokio::new());
