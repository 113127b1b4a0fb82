//! A bank of three kinds (accounts, transfers, a ledger) under 500 seeds: transfers ask accounts
//! with timeouts (`Context::ask`), money is conserved and every transfer ends exactly once.
//!
//! A transfer is a receiver per transfer ID. It asks the source account to withdraw, then the
//! target to deposit, each with a timeout, and tells the ledger how it ended. What can go wrong:
//! - the source has not got the money: declined;
//! - the target is closed: the withdrawal is voided (refunded);
//! - the target does not exist: the deposit is a dead letter, its reply is dropped unanswered
//!   (`AskError::Dropped`), the withdrawal is voided;
//! - an account at the remote branch answers after a delay drawn per transfer, sometimes after
//!   the ask's deadline, sometimes exactly at it: a timed-out ask says nothing of whether the
//!   request was applied, so the transfer voids it there (and the withdrawal, if that was the
//!   deposit). A void undoes what the transfer did at the account, if anything, and refuses
//!   the transfer there from then on; it follows the request in send order, so it cannot
//!   overtake it.
//!
//! Accounts keep their state in a vault (a stand-in for durable state) and have a short idle
//! timeout, so they are deactivated and activated again between requests. Transfers have an
//! idle timeout far shorter than the asks' timeouts: one deactivated while waiting would never
//! end, which this test would catch.
//!
//! Replay one seed: `HERMES_SIM_SEED=17 cargo test -p hermes-sim --test kinds`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[path = "../../examples/support/book.rs"]
mod book;

use book::{Answer, Book, Entry};
use hermes_core::{
    Activation, AskError, Config, Context, Deactivation, DeadLetterReason, Kinds, Receiver,
    Recipient, Settings,
};
use hermes_sim::{Reply, Sim};

const SEEDS: u64 = 500;
const TRANSFERS: u32 = 24;
/// Accounts `0..ACCOUNTS` exist; `ACCOUNTS` does not.
const ACCOUNTS: u32 = 5;
const CLOSED: AccountId = AccountId(3);
const REMOTE: AccountId = AccountId(4);
const OPENING_BALANCE: u64 = 100;
const ASK_TIMEOUT: Duration = Duration::from_millis(50);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct AccountId(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TransferId(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LedgerId;

#[derive(Debug)]
enum AccountMsg {
    /// Takes `amount` off the balance at once.
    Withdraw {
        transfer: TransferId,
        amount: u64,
        reply: Reply<Answer>,
    },
    /// Holds `amount` for the account until the transfer confirms it (it may void it instead).
    Deposit {
        transfer: TransferId,
        amount: u64,
        reply: Reply<Answer>,
    },
    /// Adds a held deposit to the balance.
    Confirm(TransferId),
    /// Undoes what the transfer did here (puts a withdrawal back, drops a held deposit), if
    /// anything, and refuses the transfer from now on.
    Void(TransferId),
    /// The remote branch's answer, late.
    Late(Reply<Answer>, Answer),
}

#[derive(Debug)]
enum TransferMsg {
    Start {
        from: AccountId,
        to: AccountId,
        amount: u64,
    },
    Withdrawn(Result<Answer, AskError>),
    Deposited(Result<Answer, AskError>),
}

#[derive(Debug)]
enum LedgerMsg {
    Ended(TransferId, Outcome),
}

hermes_core::app! {
    /// The bank.
    pub app Bank(BankId, BankMsg) {
        Account(AccountId => AccountMsg),
        Transfer(TransferId => TransferMsg),
        Ledger(LedgerId => LedgerMsg),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Outcome {
    Completed,
    Declined,
    Refunded,
    Cancelled,
}

/// What the receivers share with the test.
#[derive(Default)]
struct World {
    seed: u64,
    /// Accounts' books while they are not active.
    vault: Mutex<HashMap<AccountId, Book<TransferId>>>,
    /// Every transfer's ending, as the ledger heard it.
    ended: Mutex<Vec<(TransferId, Outcome)>>,
    /// Answers the remote branch gave after their asker had given up.
    late_and_unwanted: AtomicU64,
    /// Voids that undid an applied request.
    undone: AtomicU64,
}

impl World {
    /// The remote branch's delay for a transfer's request: 0 to 100 ms in steps of 10,
    /// across the ask's 50 ms timeout, and sometimes exactly at it.
    fn remote_delay(&self, transfer: TransferId) -> Duration {
        let n = self.seed.wrapping_mul(31) ^ u64::from(transfer.0).wrapping_mul(17);
        Duration::from_millis(n % 11 * 10)
    }
}

struct Account {
    book: Book<TransferId>,
    world: Arc<World>,
}

impl Account {
    fn answer(
        &self,
        ctx: &mut Context<'_, AccountId, AccountMsg, Bank>,
        transfer: TransferId,
        reply: Reply<Answer>,
        answer: Answer,
    ) {
        if *ctx.id() == REMOTE {
            let delay = self.world.remote_delay(transfer);
            ctx.schedule(delay, AccountMsg::Late(reply, answer));
        } else {
            let awaited = reply.send(answer);
            awaited.expect("a local account answers long before the deadline");
        }
    }
}

impl Receiver<AccountId, AccountMsg, Bank> for Account {
    fn receive(&mut self, ctx: &mut Context<'_, AccountId, AccountMsg, Bank>, msg: AccountMsg) {
        let id = *ctx.id();
        match msg {
            AccountMsg::Withdraw {
                transfer,
                amount,
                reply,
            } => {
                let answer = self.book.withdraw(transfer, amount);
                self.answer(ctx, transfer, reply, answer);
            }
            AccountMsg::Deposit {
                transfer,
                amount,
                reply,
            } => {
                let answer = self.book.deposit(transfer, amount);
                self.answer(ctx, transfer, reply, answer);
            }
            AccountMsg::Confirm(transfer) => {
                let entry = self.book.confirm(transfer);
                let held = matches!(entry, Some(Entry::Holding(_)));
                assert!(
                    held,
                    "{transfer:?} confirmed at {id:?}, where it is {entry:?}"
                );
            }
            AccountMsg::Void(transfer) => {
                match self.book.void(transfer) {
                    Some(Entry::Withdrew(_) | Entry::Holding(_)) => {}
                    None | Some(Entry::Voided) => return,
                    Some(Entry::Confirmed) => panic!("{transfer:?} voided after its confirmation"),
                }
                self.world.undone.fetch_add(1, Ordering::Relaxed);
            }
            AccountMsg::Late(reply, answer) => {
                if reply.send(answer).is_err() {
                    self.world.late_and_unwanted.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    fn deactivated(
        &mut self,
        ctx: &mut Context<'_, AccountId, AccountMsg, Bank>,
        why: Deactivation,
    ) {
        assert_ne!(why, Deactivation::Panicked, "accounts never panic");
        let mut vault = self.world.vault.lock().unwrap();
        vault.insert(*ctx.id(), self.book.clone());
    }
}

struct Running {
    from: AccountId,
    to: AccountId,
    amount: u64,
}

struct Transfer {
    running: Option<Running>,
    world: Arc<World>,
}

impl Transfer {
    fn finish(&mut self, ctx: &mut Context<'_, TransferId, TransferMsg, Bank>, outcome: Outcome) {
        self.running = None;
        ctx.send(LedgerId, LedgerMsg::Ended(*ctx.id(), outcome));
    }
}

impl Receiver<TransferId, TransferMsg, Bank> for Transfer {
    fn receive(&mut self, ctx: &mut Context<'_, TransferId, TransferMsg, Bank>, msg: TransferMsg) {
        let transfer = *ctx.id();
        match msg {
            TransferMsg::Start { from, to, amount } => {
                assert!(self.running.is_none(), "{transfer:?} started twice");
                let withdraw = |reply| AccountMsg::Withdraw {
                    transfer,
                    amount,
                    reply,
                };
                ctx.ask(from, withdraw, ASK_TIMEOUT, TransferMsg::Withdrawn);
                self.running = Some(Running { from, to, amount });
            }
            TransferMsg::Withdrawn(answer) => {
                let Some(t) = &self.running else {
                    panic!("{transfer:?}: an answer for a transfer not running: {answer:?}")
                };
                match answer {
                    Ok(Ok(())) => {
                        let amount = t.amount;
                        let deposit = |reply| AccountMsg::Deposit {
                            transfer,
                            amount,
                            reply,
                        };
                        ctx.ask(t.to, deposit, ASK_TIMEOUT, TransferMsg::Deposited);
                    }
                    Ok(Err(_)) => self.finish(ctx, Outcome::Declined),
                    Err(_) => {
                        ctx.send(t.from, AccountMsg::Void(transfer));
                        self.finish(ctx, Outcome::Cancelled);
                    }
                }
            }
            TransferMsg::Deposited(answer) => {
                let Some(t) = &self.running else {
                    panic!("{transfer:?}: an answer for a transfer not running: {answer:?}")
                };
                match answer {
                    Ok(Ok(())) => {
                        ctx.send(t.to, AccountMsg::Confirm(transfer));
                        return self.finish(ctx, Outcome::Completed);
                    }
                    Ok(Err(_)) => {}
                    Err(AskError::Timeout) => ctx.send(t.to, AccountMsg::Void(transfer)),
                    // The deposit was a dead letter: never applied.
                    Err(AskError::Dropped) => assert_eq!(t.to, AccountId(ACCOUNTS)),
                    Err(e) => panic!("{transfer:?}: unexpected {e:?}"),
                }
                ctx.send(t.from, AccountMsg::Void(transfer));
                self.finish(ctx, Outcome::Refunded);
            }
        }
    }

    fn deactivated(
        &mut self,
        ctx: &mut Context<'_, TransferId, TransferMsg, Bank>,
        why: Deactivation,
    ) {
        let seed = self.world.seed;
        assert!(
            self.running.is_none(),
            "seed {seed}: {:?} deactivated ({why:?}) while running",
            ctx.id()
        );
    }
}

fn bank(world: &Arc<World>) -> Kinds<Bank> {
    let (accounts, transfers, ledger) = (world.clone(), world.clone(), world.clone());
    Kinds::<Bank>::new()
        .kind_with(
            Settings::default().idle_timeout(Duration::from_millis(20)),
            move |id: &AccountId| {
                if id.0 >= ACCOUNTS {
                    return Activation::Refused;
                }
                let vault = accounts.vault.lock().unwrap();
                let book = vault.get(id).cloned();
                let book = book.unwrap_or_else(|| Book::new(OPENING_BALANCE, *id == CLOSED));
                Activation::ready(Account {
                    book,
                    world: accounts.clone(),
                })
            },
        )
        .kind_with(
            // Far shorter than an ask's timeout: waiting is not idleness.
            Settings::default().idle_timeout(Duration::from_millis(1)),
            move |_: &TransferId| {
                Activation::ready(Transfer {
                    running: None,
                    world: transfers.clone(),
                })
            },
        )
        .kind(move |_: &LedgerId| {
            let world = ledger.clone();
            Activation::ready(
                move |_: &mut Context<'_, LedgerId, LedgerMsg, Bank>, msg| match msg {
                    LedgerMsg::Ended(transfer, outcome) => {
                        world.ended.lock().unwrap().push((transfer, outcome));
                    }
                },
            )
        })
}

/// What one seed's run did.
#[derive(Default)]
struct Tally {
    outcomes: HashMap<Outcome, u64>,
    late_and_unwanted: u64,
    undone: u64,
}

fn run(seed: u64) -> Tally {
    let world = Arc::new(World {
        seed,
        ..World::default()
    });
    let sim = Sim::new(seed, Config::default(), bank(&world));
    let mut sim = sim.with_shards(1 + (seed % 3) as u32);
    let mut rng = fastrand::Rng::with_seed(seed);
    for n in 0..TRANSFERS {
        let from = AccountId(rng.u32(..ACCOUNTS));
        let to = AccountId(rng.u32(..=ACCOUNTS)); // sometimes the account that does not exist
        let amount = rng.u64(1..=90);
        let at = Duration::from_millis(rng.u64(..300));
        let start = TransferMsg::Start { from, to, amount };
        sim.schedule(TransferId(n), at, start).unwrap();
    }
    sim.run_for(Duration::from_secs(2));

    // The only dead letters: deposits to the account that does not exist, and the voids that
    // follow them. The simulation keeps dead letters (and so the deposits' replies) until they
    // are taken, so those deposits time out rather than fail as dropped.
    for letter in sim.take_dead_letters() {
        assert_eq!(letter.reason, DeadLetterReason::NoReceiver, "seed {seed}");
        let nowhere = Recipient::Id(BankId::Account(AccountId(ACCOUNTS)));
        assert_eq!(letter.recipient, nowhere, "seed {seed}");
        let expected = matches!(
            letter.message,
            Some(BankMsg::Account(
                AccountMsg::Deposit { .. } | AccountMsg::Void(_)
            ))
        );
        assert!(expected, "seed {seed}: {letter:?}");
    }
    sim.close();
    assert!(sim.is_closed(), "seed {seed}");
    assert!(
        sim.dead_letters().is_empty(),
        "seed {seed}: {:?}",
        sim.dead_letters()
    );

    // Every transfer ended exactly once.
    let mut ended = world.ended.lock().unwrap().clone();
    ended.sort_by_key(|&(id, _)| id);
    let ids: Vec<TransferId> = ended.iter().map(|&(id, _)| id).collect();
    let expected: Vec<TransferId> = (0..TRANSFERS).map(TransferId).collect();
    assert_eq!(
        ids, expected,
        "seed {seed}: each transfer ends exactly once"
    );

    // Money is conserved: every account was deactivated at close, into the vault, and every
    // deposit was confirmed or voided.
    let vault = world.vault.lock().unwrap();
    let mut total = 0;
    for a in 0..ACCOUNTS {
        let Some(account) = vault.get(&AccountId(a)) else {
            total += OPENING_BALANCE;
            continue;
        };
        assert_eq!(account.holding(), 0, "seed {seed}: {a} holds deposits");
        total += account.balance;
    }
    assert_eq!(
        total,
        u64::from(ACCOUNTS) * OPENING_BALANCE,
        "seed {seed}: money was created or destroyed; replay with HERMES_SIM_SEED={seed}"
    );
    let mut tally = Tally {
        late_and_unwanted: world.late_and_unwanted.load(Ordering::Relaxed),
        undone: world.undone.load(Ordering::Relaxed),
        ..Tally::default()
    };
    for (_, outcome) in ended {
        *tally.outcomes.entry(outcome).or_default() += 1;
    }
    tally
}

#[test]
fn transfers_between_kinds_conserve_money_under_every_interleaving() {
    let replay = std::env::var("HERMES_SIM_SEED").ok();
    let seeds: Vec<u64> = match &replay {
        Some(seed) => vec![seed.parse().expect("HERMES_SIM_SEED must be a number")],
        None => (0..SEEDS).collect(),
    };
    let mut all = Tally::default();
    for seed in seeds {
        let tally = run(seed);
        for (outcome, n) in tally.outcomes {
            *all.outcomes.entry(outcome).or_default() += n;
        }
        all.late_and_unwanted += tally.late_and_unwanted;
        all.undone += tally.undone;
    }
    if replay.is_none() {
        // Every path was taken, so the test does not pass vacuously.
        for outcome in [
            Outcome::Completed,
            Outcome::Declined,
            Outcome::Refunded,
            Outcome::Cancelled,
        ] {
            assert!(all.outcomes.get(&outcome) > Some(&0), "no {outcome:?}");
        }
        assert!(all.late_and_unwanted > 0, "no answer came too late");
        assert!(all.undone > 0, "no void undid an applied request");
    }
}
