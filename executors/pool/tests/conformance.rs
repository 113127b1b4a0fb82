//! The conformance suite on the thread pool.

use hermes_conformance::{Harness, conformance_tests, unique_name};
use hermes_core::Factory;
use hermes_executor::{Hermes, Key, Message, Options};

/// Starts each Hermes with threads named after this harness.
struct Pool(String);

impl Harness for Pool {
    fn start<K: Key, M: Message, F: Factory<K, M>>(
        &self,
        options: Options<K, M>,
        factory: F,
    ) -> Hermes<K, M, F::App> {
        hermes_pool::start_with(options.name(&self.0), factory).expect("the pool starts")
    }

    fn threads(&self) -> &str {
        &self.0
    }
}

conformance_tests!(Pool(unique_name()));
