//! The checker over many seeded plans, as an ordinary deterministic test.
//!
//! Replay one seed: `HERMES_CHECK_SEED=1234 cargo test -p hermes-check --test seeds`.
//! Run more: `HERMES_CHECK_SEEDS=100000 cargo test --release -p hermes-check --test seeds`.

use hermes_check::{Summary, check_seed};

/// Seeds checked by default: enough to exercise every feature, quick in a debug build.
const DEFAULT_SEEDS: u64 = 800;

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name} must be a number, not {value:?}")),
    )
}

#[test]
fn seeded_plans_keep_every_invariant() {
    let replay = env_u64("HERMES_CHECK_SEED");
    let seeds: Vec<u64> = match replay {
        Some(seed) => vec![seed],
        None => (0..env_u64("HERMES_CHECK_SEEDS").unwrap_or(DEFAULT_SEEDS)).collect(),
    };
    let mut total = Summary::default();
    for seed in seeds {
        match check_seed(seed) {
            Ok(summary) => total += summary,
            Err(v) => panic!(
                "seed {seed}: {v}\nreplay with: HERMES_CHECK_SEED={seed} cargo test -p hermes-check --test seeds"
            ),
        }
    }
    eprintln!("{total:#?}");
    if replay.is_none() {
        assert_exercises_everything(&total);
    }
}

/// The plans reach every feature the checker is about; a generator that stopped producing some
/// operation would otherwise make the test pass vacuously.
fn assert_exercises_everything(t: &Summary) {
    let reached = [
        ("deliveries", t.delivered),
        ("dead letters", t.dead_letters),
        ("refused sends", t.refused),
        ("messages between routers", t.forwarded),
        ("timers fired", t.timers_fired),
        ("activations", t.activations),
        ("deactivations", t.deactivations),
        ("panics", t.panics),
        ("closes", t.closes),
        ("refused driver mistakes", t.misuses),
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
