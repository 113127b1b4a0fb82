//! The conformance suite every Hermes executor passes, written once.
//!
//! An executor's test file implements [`Harness`] (how to start Hermes on it, and which threads
//! run its shards) and instantiates every test with [`conformance_tests!`]:
//!
//! ```ignore
//! struct Pool(String);
//! impl hermes_conformance::Harness for Pool { /* start with hermes_pool::start_with */ }
//! hermes_conformance::conformance_tests!(Pool::new());
//! ```
//!
//! Timeouts in the suite are hang guards only, generous for a loaded machine; no test asserts
//! speed. The one resource check (an idle Hermes uses no CPU) measures CPU time of the threads
//! that run the shards, not wall time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hermes_core::Factory;
use hermes_executor::{Hermes, Key, Message, Options};

pub mod backpressure;
pub mod kinds;
pub mod lifecycle;
mod regressions;
pub mod suite;
pub mod tasks;
pub mod user;

/// How to run Hermes on the executor under test.
pub trait Harness {
    /// Starts Hermes with `options` and `factory`. Its shards must run on threads whose names
    /// start with [`threads`](Harness::threads) followed by `-`.
    fn start<K: Key, M: Message, F: Factory<K, M>>(
        &self,
        options: Options<K, M>,
        factory: F,
    ) -> Hermes<K, M, F::App>;

    /// The name prefix of the threads that run this harness's shards (and nothing else).
    fn threads(&self) -> &str;
}

/// A thread-name prefix no other harness in this process uses (short: Linux keeps 15 bytes).
pub fn unique_name() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("hx{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// How long any wait in the suite may take before the test fails as hung.
pub const HANG_GUARD: Duration = Duration::from_secs(60);

/// Polls `done` until it is true; panics naming `what` if it is not within [`HANG_GUARD`].
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < HANG_GUARD, "hung waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Instantiates every test of [`suite`] as a `#[test]`, each with a fresh harness from
/// `$harness` (an expression evaluated once per test).
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr) => {
        $crate::conformance_tests!(@tests $harness;
            per_sender_order,
            send_all_in_order_and_refused_after_shutdown,
            one_message_at_a_time,
            activation_on_first_message,
            idle_deactivation_and_reactivation,
            become_swaps_the_handler,
            heartbeat_at_a_fixed_period,
            cancelled_timers_never_fire,
            ask_and_late_reply,
            dropped_reply_and_ask_timeout,
            shutdown_drains_and_deactivates_every_receiver_once,
            dropping_the_handle_shuts_down,
            panics_are_contained,
            dead_letters_are_observed,
            million_messages_none_lost_none_duplicated,
            cross_shard_sends,
            idle_hermes_uses_no_cpu,
            timer_counts_from_when_the_handler_asks,
            idle_time_counts_from_when_the_receiver_went_idle,
            cancel_works_across_shards,
            duration_max_means_never,
            shutdown_returns_after_everything_is_dropped,
            shutdown_finishes_despite_endless_continuations,
            shutdown_from_a_receiver_starts_it_and_returns,
            kinds_send_ask_and_schedule_between_each_other,
            each_kind_has_its_own_mailbox_capacity,
            spawned_work_comes_back_as_a_message,
            work_in_flight_is_dropped_with_its_receiver,
            asks_between_receivers_answer_or_time_out,
            try_send_is_refused_at_capacity_and_nothing_admitted_is_lost,
            a_fast_producer_waits_for_a_slow_receiver,
            hooks_run_in_order_with_each_reason,
            messages_during_deactivation_activate_a_fresh_instance,
            timers_outlive_become_and_deactivation,
            a_panicking_handler_leaves_no_effects,
            every_way_in_is_refused_after_shutdown,
            blocking_forms_refuse_inside_a_receiver,
            a_late_answer_to_a_timed_out_ask_is_given_back,
            sends_while_closing_to_receivers_not_live_are_closed_dead_letters,
            send_inside_a_receiver_answers_full_instead_of_waiting,
            context_asks_end_once_dropped_or_timed_out,
            ask_blocking_waits_at_most_its_timeout_in_all,
            mail_to_an_overfull_shard_is_full_dead_letters,
            a_shorter_idle_timeout_applies_to_its_instance_only,
            a_zero_idle_timeout_deactivates_when_the_mailbox_is_empty,
            become_hands_the_deactivated_hook_to_the_new_handler,
            stop_in_the_activated_hook,
            a_later_instance_cancels_an_earlier_instances_timer,
            timers_scheduled_while_closing_are_closed_dead_letters,
            asks_end_dropped_when_the_reply_dies_with_its_receiver,
            a_handle_of_another_kind_is_a_dead_letter_not_a_panic,
            a_panicking_dead_letter_sink_is_contained,
            become_in_the_activated_hook,
            a_burst_of_dead_letters_all_reach_the_sink,
            a_panicking_spawned_future_ends_without_an_outcome,
            a_spawned_future_that_blocks_on_shutdown_does_not_hang
        );
    };
    (@tests $harness:expr; $($test:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                let harness = $harness;
                $crate::suite::$test(&harness);
            }
        )*
    };
}
