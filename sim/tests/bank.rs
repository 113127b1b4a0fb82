//! Bank transfers under 1000 seeds: money is conserved and every transfer ends exactly once.
//!
//! A transfer goes to the source account, which withdraws and sends a deposit to the target.
//! The deposit leg can fail three ways, and each must give the money back:
//! - the target is frozen: it refunds the source itself;
//! - the target would go over its limit: it refunds the source itself;
//! - the target does not exist: the factory refuses it, the deposit becomes a dead letter, and
//!   the operator (this test) refunds it from the dead letters.
//!
//! Accounts keep their balance in a shared vault (a stand-in for durable state): loaded when an
//! account is activated, saved when it is deactivated. The idle timeout is short, so accounts
//! are deactivated and activated again between transfers, with messages arriving meanwhile.
//!
//! Replay one seed: `HERMES_SIM_SEED=17 cargo test -p hermes-sim --test bank`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_core::{Activation, Config, Context, Deactivation, Receiver};
use hermes_executor::ShardFault;
use hermes_sim::{Reply, Sim};

const ACCOUNTS: u32 = 5;
/// IDs at or above this are not accounts: the factory refuses them.
const NO_SUCH_ACCOUNT: u32 = ACCOUNTS;
const FROZEN: u32 = 4;
const OPENING_BALANCE: i64 = 100;
const LIMIT: i64 = 250;
const TRANSFERS: u64 = 30;
const SEEDS: u64 = 1000;

#[derive(Debug)]
enum Msg {
    Transfer { id: u64, to: u32, amount: i64 },
    Deposit { id: u64, from: u32, amount: i64 },
    Refund { id: u64, amount: i64 },
    Balance(Reply<i64>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Declined,
    Completed,
    Refunded,
}

#[derive(Default)]
struct Bank {
    vault: Mutex<HashMap<u32, i64>>,
    outcomes: Mutex<Vec<(u64, Outcome)>>,
}

impl Bank {
    fn record(&self, id: u64, outcome: Outcome) {
        self.outcomes.lock().unwrap().push((id, outcome));
    }
}

struct Account {
    id: u32,
    balance: i64,
    bank: Arc<Bank>,
}

impl Receiver<u32, Msg> for Account {
    fn receive(&mut self, ctx: &mut Context<'_, u32, Msg>, msg: Msg) {
        match msg {
            Msg::Transfer { id, to, amount } => {
                if self.balance < amount {
                    self.bank.record(id, Outcome::Declined);
                } else {
                    self.balance -= amount;
                    let from = self.id;
                    ctx.send(to, Msg::Deposit { id, from, amount });
                }
            }
            Msg::Deposit { id, from, amount } => {
                if self.id == FROZEN || self.balance + amount > LIMIT {
                    ctx.send(from, Msg::Refund { id, amount });
                } else {
                    self.balance += amount;
                    self.bank.record(id, Outcome::Completed);
                }
            }
            Msg::Refund { id, amount } => {
                self.balance += amount;
                self.bank.record(id, Outcome::Refunded);
            }
            Msg::Balance(reply) => {
                let _ = reply.send(self.balance);
            }
        }
    }

    fn deactivated(&mut self, _ctx: &mut Context<'_, u32, Msg>, why: Deactivation) {
        assert_ne!(why, Deactivation::Panicked, "accounts never panic");
        self.bank
            .vault
            .lock()
            .unwrap()
            .insert(self.id, self.balance);
    }
}

/// What one seed's run did.
#[derive(Default)]
struct Report {
    total: i64,
    declined: usize,
    completed: usize,
    refunded: usize,
    /// Deposits refunded by the operator from the dead letters.
    rescued: usize,
}

/// Runs one seed's workload.
fn run(seed: u64) -> Report {
    run_with(seed, None)
}

/// Runs one seed's workload on shards with a deliberate bug, if any.
fn run_with(seed: u64, fault: Option<ShardFault>) -> Report {
    let bank = Arc::new(Bank::default());
    let vault = bank.clone();
    let config = Config::default().idle_timeout(Duration::from_millis(20));
    let mut sim = Sim::new(seed, config, move |&id: &u32| {
        if id >= NO_SUCH_ACCOUNT {
            return Activation::Refused;
        }
        let balance = *vault
            .vault
            .lock()
            .unwrap()
            .get(&id)
            .unwrap_or(&OPENING_BALANCE);
        Activation::ready(Account {
            id,
            balance,
            bank: vault.clone(),
        })
    });
    if let Some(fault) = fault {
        sim = sim.with_fault(fault);
    }
    let mut sim = sim.with_shards(1 + (seed % 3) as u32);

    // The workload, also from the seed: transfers at random times over 200 ms.
    let mut rng = fastrand::Rng::with_seed(seed);
    for id in 0..TRANSFERS {
        let from = rng.u32(..ACCOUNTS);
        let to = rng.u32(..=ACCOUNTS); // sometimes the account that does not exist
        let amount = rng.i64(1..=80);
        let at = Duration::from_millis(rng.u64(..200));
        sim.schedule(from, at, Msg::Transfer { id, to, amount })
            .unwrap();
    }
    sim.run_for(Duration::from_secs(1));

    // The operator refunds deposits that could not be delivered.
    let mut report = Report::default();
    for letter in sim.take_dead_letters() {
        match letter.message {
            Some(Msg::Deposit { id, from, amount }) => {
                sim.send(from, Msg::Refund { id, amount }).unwrap();
                report.rescued += 1;
            }
            other => panic!("seed {seed}: unexpected dead letter {other:?}"),
        }
    }
    sim.run_for(Duration::from_secs(1));
    assert!(sim.dead_letters().is_empty(), "seed {seed}: refunds failed");

    // Every transfer ended exactly once.
    let mut outcomes = bank.outcomes.lock().unwrap().clone();
    outcomes.sort_by_key(|&(id, _)| id);
    let ids: Vec<u64> = outcomes.iter().map(|&(id, _)| id).collect();
    assert_eq!(
        ids,
        (0..TRANSFERS).collect::<Vec<_>>(),
        "seed {seed}: every transfer must end exactly once: {outcomes:?}"
    );
    let count = |o| outcomes.iter().filter(|&&(_, x)| x == o).count();
    report.declined = count(Outcome::Declined);
    report.completed = count(Outcome::Completed);
    report.refunded = count(Outcome::Refunded);

    // Accounts were deactivated between transfers, so state went through the vault.
    assert!(
        sim.stats().deactivations > 0,
        "seed {seed}: no deactivation"
    );
    report.total = (0..ACCOUNTS)
        .map(|a| sim.ask(a, Msg::Balance).expect("every account answers"))
        .sum();
    sim.close();
    assert!(sim.is_closed());
    report
}

#[test]
fn transfers_conserve_money_under_every_interleaving() {
    let replay = std::env::var("HERMES_SIM_SEED").ok();
    let seeds: Vec<u64> = match &replay {
        Some(seed) => vec![seed.parse().expect("HERMES_SIM_SEED must be a number")],
        None => (0..SEEDS).collect(),
    };
    let mut all = Report::default();
    for seed in seeds {
        let report = run(seed);
        assert_eq!(
            report.total,
            i64::from(ACCOUNTS) * OPENING_BALANCE,
            "seed {seed}: money was created or destroyed; replay with HERMES_SIM_SEED={seed}"
        );
        all.declined += report.declined;
        all.completed += report.completed;
        all.refunded += report.refunded;
        all.rescued += report.rescued;
    }
    if replay.is_none() {
        // Every path was taken, so the test is not passing vacuously.
        assert!(
            all.declined > 0 && all.completed > 0,
            "no declined or completed transfer"
        );
        assert!(
            all.refunded > all.rescued,
            "no refund by a frozen or full account"
        );
        assert!(all.rescued > 0, "no deposit rescued from the dead letters");
    }
}

/// The simulator runs the executors' own shard loop: a bug in its per-turn budget (a command
/// carried over to the next turn forgotten) or in its flush (mail for other shards lost) breaks
/// this test within a few seeds.
#[test]
fn a_bug_in_the_shard_loop_is_caught() {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let caught: Vec<_> = [ShardFault::ForgetCarry, ShardFault::LoseOutgoing]
        .into_iter()
        .map(|fault| {
            let seed = (0..100)
                .find(|&seed| std::panic::catch_unwind(|| run_with(seed, Some(fault))).is_err());
            (fault, seed)
        })
        .collect();
    std::panic::set_hook(quiet);
    for (fault, seed) in caught {
        assert!(seed.is_some(), "{fault:?} went unnoticed in 100 seeds");
    }
}
