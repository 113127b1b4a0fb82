//! The checker has teeth: each deliberate bug the router can switch on (hermes-core's
//! `fault-injection` feature, enabled for these tests only) is caught within a few seeds, as a
//! violation of the invariant that bug breaks.

use hermes_check::{Checker, Invariant, Plan, Violation};
use hermes_core::Fault;

/// A fault must be caught within this many seeds.
const SEEDS: u64 = 50;

/// The first seed whose plan catches `fault`, and the violation.
fn first_catch(fault: Fault) -> (u64, Violation) {
    let checker = Checker::new().tweak_routers(move |router| router.inject_fault(fault));
    for seed in 0..SEEDS {
        if let Err(v) = checker.check(&Plan::from_seed(seed)) {
            return (seed, v);
        }
    }
    panic!("{fault:?} was not caught in {SEEDS} seeds: the checker has lost its teeth");
}

fn assert_caught(fault: Fault, expected: &[Invariant]) {
    let (seed, v) = first_catch(fault);
    eprintln!("{fault:?} caught at seed {seed}: {v}");
    assert!(
        expected.contains(&v.invariant),
        "{fault:?} was caught at seed {seed} as invariant {}, not {expected:?}: {v}",
        v.invariant
    );
}

#[test]
fn a_message_dropped_on_check_in_is_caught() {
    assert_caught(Fault::DropOnCheckIn, &[Invariant::ExactlyOnce]);
}

#[test]
fn a_receiver_deactivated_with_a_non_empty_mailbox_is_caught() {
    assert_caught(Fault::DeactivateNonEmpty, &[Invariant::Deactivation]);
}

#[test]
fn a_timer_fired_early_is_caught() {
    assert_caught(
        Fault::EarlyTimer,
        &[Invariant::Timers, Invariant::Deactivation],
    );
}

#[test]
fn a_handle_not_checked_for_generation_is_caught() {
    assert_caught(Fault::NoGenerationCheck, &[Invariant::StaleHandles]);
}

#[test]
fn the_same_seeds_pass_without_faults() {
    for seed in 0..SEEDS {
        if let Err(v) = Checker::new().check(&Plan::from_seed(seed)) {
            panic!("seed {seed} fails without any fault: {v}");
        }
    }
}
