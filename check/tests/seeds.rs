//! The checker over many seeded plans, as an ordinary deterministic test: the random workloads
//! of the router's own tests run here (hermes-core's tests keep the targeted ones).
//!
//! Replay one seed: `HERMES_CHECK_SEED=1234 cargo test -p hermes-check --test seeds`.
//! Run more: `HERMES_CHECK_SEEDS=100000 cargo test --release -p hermes-check --test seeds`.

use std::time::Duration;

use hermes_check::{Plan, Summary, check};
use hermes_core::Settings;

/// Seeds checked by default: enough to exercise every feature, quick in a debug build.
const DEFAULT_SEEDS: u64 = 640;
/// Seeds checked by default for each pinned configuration.
const PINNED_SEEDS: u64 = 120;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
    )
}

/// Checks the plans of `seeds` (or the one in `HERMES_CHECK_SEED`), each changed by `adjust`;
/// what they exercised, or `None` when replaying one seed.
fn check_seeds(test: &str, seeds: u64, adjust: impl Fn(Plan) -> Plan) -> Option<Summary> {
    let replay = env_u64("HERMES_CHECK_SEED");
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => (0..env_u64("HERMES_CHECK_SEEDS").unwrap_or(seeds)).collect(),
    };
    let mut total = Summary::default();
    for seed in seeds {
        match check(&adjust(Plan::from_seed(seed))) {
            Ok(summary) => total += summary,
            Err(v) => panic!(
                "seed {seed}: {v}\nreplay with: HERMES_CHECK_SEED={seed} cargo test -p \
                 hermes-check --test seeds {test}"
            ),
        }
    }
    eprintln!("{test}: {total:#?}");
    replay.is_none().then_some(total)
}

#[test]
fn seeded_plans_keep_every_invariant() {
    if let Some(total) = check_seeds("seeded_plans", DEFAULT_SEEDS, |plan| plan) {
        assert_exercises_everything(&total);
    }
}

/// Mailboxes of one or two messages, no idle time and one message per run: a receiver is
/// deactivated as soon as it has nothing to do, sends meet full mailboxes all the time, and
/// messages queue behind every activation and deactivation.
#[test]
fn bounded_mailboxes_with_zero_idle_timeout_keep_every_invariant() {
    for capacity in [1, 2] {
        let total = check_seeds(
            "bounded_mailboxes_with_zero_idle_timeout",
            PINNED_SEEDS,
            |plan| {
                plan.with_idle_timeout(Duration::ZERO)
                    .with_mailbox_capacity(Some(capacity))
                    .with_batch_size(1)
            },
        );
        if let Some(t) = total {
            assert!(t.full > 0, "no mailbox was ever full: {t:#?}");
            assert!(t.idle_deactivations > 0, "nothing went idle: {t:#?}");
        }
    }
}

/// An idle timeout of a few milliseconds, like the timers' delays and the clock's small steps:
/// idle deadlines often fall due in the same call as timers, or at the same instant.
#[test]
fn short_idle_timeouts_keep_every_invariant() {
    let total = check_seeds("short_idle_timeouts", PINNED_SEEDS, |plan| {
        plan.with_idle_timeout(Duration::from_millis(4))
            .with_batch_size(3)
    });
    if let Some(t) = total {
        assert!(t.idle_deactivations > 0 && t.timers_fired > 0, "{t:#?}");
    }
}

/// Three kinds as different as they come: kind 0 (IDs 0, 3, 6) with one-message mailboxes and
/// one message a run, kind 1 (IDs 1, 4, 7) with a 4 ms idle timeout, kind 2 (IDs 2, 5) on the
/// router's settings. Sends and asks between kinds meet full mailboxes, receivers that go idle
/// within milliseconds, and receivers kept live while they wait for their asks.
#[test]
fn kinds_with_their_own_settings_keep_every_invariant() {
    let kinds = [
        Settings::default().mailbox_capacity(1).batch_size(1),
        Settings::default().idle_timeout(Duration::from_millis(4)),
        Settings::default(),
    ];
    let total = check_seeds("kinds_with_their_own_settings", PINNED_SEEDS, |plan| {
        plan.with_kinds(Some(&kinds))
    });
    if let Some(t) = total {
        assert!(t.cross_kind > 0 && t.cross_kind_asks > 0, "{t:#?}");
        assert!(
            t.full > 0 && t.idle_deactivations > 0 && t.spared > 0,
            "{t:#?}"
        );
    }
}

/// Seeds checked by default for each small drain limit.
const DRAIN_SEEDS: u64 = 48;

/// Small drain limits, with the final close coming while work is queued, running and in
/// transit: closing routers stop draining early, and relays that would keep receivers messaging
/// each other forever end there. Closing must still finish, and every message still be accounted
/// for.
#[test]
fn small_drain_limits_keep_every_invariant() {
    for limit in [0, 1, 2, 5, 20] {
        let total = check_seeds("small_drain_limits", DRAIN_SEEDS, |plan| {
            plan.with_drain_limit(Some(limit)).with_close_busy(true)
        });
        if let Some(t) = total {
            assert!(t.drain_limited > 0, "limit {limit} never reached: {t:#?}");
        }
    }
}

/// The plans reach every feature the checker is about; a generator that stopped producing some
/// operation would otherwise make the test pass vacuously.
fn assert_exercises_everything(t: &Summary) {
    let reached = [
        ("deliveries", t.delivered),
        ("dead letters", t.dead_letters),
        ("dead letters dropped unpolled", t.dead_letters_dropped),
        ("refused sends", t.refused),
        ("messages between routers", t.forwarded),
        ("timers cancelled from the other router", t.remote_cancels),
        ("timers fired", t.timers_fired),
        ("timers never due", t.timers_never),
        ("receivers never idle", t.never_idle),
        ("activations", t.activations),
        ("deactivations", t.deactivations),
        ("idle deactivations", t.idle_deactivations),
        ("panics", t.panics),
        ("factory panics", t.factory_panics),
        ("handlers replaced", t.becomes),
        ("receivers stopped", t.stops),
        ("messages by handle", t.by_handle),
        ("full mailboxes", t.full),
        ("stale handles", t.stale),
        ("closes", t.closes),
        ("messages past the drain limit", t.drain_limited),
        ("refused driver mistakes", t.misuses),
        ("messages between kinds", t.cross_kind),
        ("asks between kinds", t.cross_kind_asks),
        (
            "kinds' idle timeouts restored for a next instance",
            t.kind_idle_restored,
        ),
        ("tasks started", t.tasks),
        ("asks", t.asks),
        ("asks answered", t.answers),
        ("asks timed out", t.timeouts),
        ("work and asks left unanswered", t.unanswered),
        ("asks expired by their router", t.expired),
        ("tasks aborted with their instance", t.aborted),
        ("outcomes given back too late (stale)", t.late_outcomes),
        ("outcomes delivered", t.outcomes),
        (
            "outcomes queued ahead of waiting messages",
            t.outcomes_ahead,
        ),
        (
            "outcomes stale because their instance was deactivated first",
            t.stale_outcomes,
        ),
        ("outcomes given to the wrong router", t.stray_outcomes),
        ("tasks woken after a pending poll", t.wakeups),
        ("receivers kept live, waiting for their tasks", t.spared),
    ];
    for (what, count) in reached {
        assert!(count > 0, "no {what} in any plan: {t:#?}");
    }
    assert!(
        t.max_live >= 4,
        "never more than {} receivers live",
        t.max_live
    );
}
