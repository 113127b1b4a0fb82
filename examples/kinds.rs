//! A bank with three kinds of receivers: accounts, transfers and a ledger.
//!
//! A transfer is a receiver of its own, one per transfer ID. It asks the source account to
//! withdraw (`ctx.ask`, with a timeout), then asks the target account to deposit, and gives the
//! money back when the deposit fails. Asks never block a shard: the answer comes back to the
//! transfer as a message. The ledger hears how each transfer ended.
//!
//! A timed-out ask tells the asker nothing about whether the request was applied: the answer
//! may only be late. So a transfer that gives up on an answer *voids* the request: the account
//! undoes what the transfer did there, if it did anything, and refuses that transfer from then
//! on. Messages from one receiver to another arrive in send order, so the void always arrives
//! after the request it voids. A deposit is held, not spendable, until the transfer confirms
//! it: otherwise a deposit voided late could have been spent already. Account 4 sits at a
//! remote branch whose answers come later than the transfers wait, to show this.
//! (`sim/tests/kinds.rs` runs the same protocol under 500 seeds of the simulator.)
//!
//! Kinds have their own settings: transfers are deactivated after 50 ms idle, accounts after
//! the default five minutes. A transfer waiting for an answer is not idle, however long it
//! waits.
//!
//! ```text
//! cargo run --example kinds                      # the thread pool
//! cargo run --example kinds -- --executor tokio
//! cargo run --example kinds -- --executor smol
//! ```

#[path = "support/book.rs"]
mod book;
#[path = "support/executor.rs"]
mod executor;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use book::{Answer, Book, Entry};
use clap::Parser;
use hermes::{
    Activation, AskError, Config, Context, Deactivation, Kinds, Options, Receiver, Reply, Settings,
};

/// How long a transfer waits for an account's answer.
const ASK_TIMEOUT: Duration = Duration::from_millis(200);
/// How late the remote branch's answers come.
const BRANCH_DELAY: Duration = Duration::from_millis(300);
/// Transfers are deactivated after this long idle.
const TRANSFER_IDLE: Duration = Duration::from_millis(50);

/// The accounts that exist, their opening balances, and how they behave.
const ACCOUNTS: [(AccountId, u64, Branch); 4] = [
    (AccountId(1), 100, Branch::Local),
    (AccountId(2), 50, Branch::Local),
    (AccountId(3), 20, Branch::Closed),
    (AccountId(4), 40, Branch::Remote),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Branch {
    /// Answers at once.
    Local,
    /// Takes no deposits.
    Closed,
    /// Applies requests at once, but its answers arrive `BRANCH_DELAY` later.
    Remote,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct AccountId(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct TransferId(u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct LedgerId;

enum AccountMsg {
    Withdraw {
        transfer: TransferId,
        amount: u64,
        reply: Reply<Answer>,
    },
    /// Held for the account, not spendable, until the transfer confirms it.
    Deposit {
        transfer: TransferId,
        amount: u64,
        reply: Reply<Answer>,
    },
    /// Adds a held deposit to the balance.
    Confirm(TransferId),
    /// Undoes what `transfer` did here, if anything, and refuses it from now on.
    Void(TransferId),
    /// The remote branch's answer, arriving late.
    Late {
        transfer: TransferId,
        reply: Reply<Answer>,
        answer: Answer,
    },
}

enum TransferMsg {
    Start {
        from: AccountId,
        to: AccountId,
        amount: u64,
        done: Reply<Report>,
    },
    Withdrawn(Result<Answer, AskError>),
    Deposited(Result<Answer, AskError>),
}

enum LedgerMsg {
    Ended(TransferId, Outcome),
}

hermes::app! {
    /// The bank: accounts, transfers between them, and a ledger.
    pub app Bank(BankId, BankMsg) {
        Account(AccountId => AccountMsg),
        Transfer(TransferId => TransferMsg),
        Ledger(LedgerId => LedgerMsg),
    }
}

/// How a transfer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Outcome {
    /// The money moved.
    Completed,
    /// The source refused the withdrawal: nothing moved.
    Declined,
    /// The withdrawal went through but the deposit did not: the money went back.
    Refunded,
    /// The source did not answer in time: the withdrawal was voided.
    Cancelled,
}

/// What a transfer tells whoever started it.
struct Report {
    outcome: Outcome,
    story: Vec<String>,
}

/// What the accounts and the ledger leave behind when they are deactivated.
#[derive(Default)]
struct Books {
    /// Each account's balance, and what it still held for unconfirmed deposits.
    balances: BTreeMap<AccountId, (u64, u64)>,
    /// Every transfer's ending, as the ledger heard it.
    ended: Vec<(TransferId, Outcome)>,
}

type Shared = Arc<Mutex<Books>>;

struct Account {
    book: Book<TransferId>,
    branch: Branch,
    books: Shared,
}

impl Account {
    fn answer(
        &self,
        ctx: &mut Context<'_, AccountId, AccountMsg, Bank>,
        transfer: TransferId,
        reply: Reply<Answer>,
        answer: Answer,
    ) {
        if self.branch == Branch::Remote {
            let late = AccountMsg::Late {
                transfer,
                reply,
                answer,
            };
            ctx.schedule(BRANCH_DELAY, late);
        } else {
            let _ = reply.send(answer);
        }
    }
}

impl Receiver<AccountId, AccountMsg, Bank> for Account {
    fn receive(&mut self, ctx: &mut Context<'_, AccountId, AccountMsg, Bank>, msg: AccountMsg) {
        let me = ctx.id().0;
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
                self.book.confirm(transfer);
            }
            AccountMsg::Void(transfer) => match self.book.void(transfer) {
                Some(Entry::Withdrew(amount)) => {
                    let t = transfer.0;
                    println!("  (account {me}: put back the {amount} withdrawn by transfer {t})");
                }
                Some(Entry::Holding(amount)) => {
                    let t = transfer.0;
                    println!("  (account {me}: dropped the {amount} held for transfer {t})");
                }
                _ => {}
            },
            AccountMsg::Late {
                transfer,
                reply,
                answer,
            } => {
                if reply.send(answer).is_err() {
                    println!(
                        "  (account {me}: its answer to transfer {} came {BRANCH_DELAY:?} late; \
                         the transfer had given up)",
                        transfer.0
                    );
                }
            }
        }
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, AccountId, AccountMsg, Bank>, _: Deactivation) {
        let (balance, held) = (self.book.balance, self.book.holding());
        let mut books = self.books.lock().unwrap();
        books.balances.insert(*ctx.id(), (balance, held));
    }
}

/// A transfer in progress.
struct Running {
    from: AccountId,
    to: AccountId,
    amount: u64,
    done: Reply<Report>,
    story: Vec<String>,
}

struct Transfer {
    running: Option<Running>,
}

impl Transfer {
    fn finish(&mut self, ctx: &mut Context<'_, TransferId, TransferMsg, Bank>, outcome: Outcome) {
        let Some(t) = self.running.take() else {
            return;
        };
        ctx.send(LedgerId, LedgerMsg::Ended(*ctx.id(), outcome));
        let _ = t.done.send(Report {
            outcome,
            story: t.story,
        });
    }
}

impl Receiver<TransferId, TransferMsg, Bank> for Transfer {
    fn receive(&mut self, ctx: &mut Context<'_, TransferId, TransferMsg, Bank>, msg: TransferMsg) {
        let transfer = *ctx.id();
        match msg {
            TransferMsg::Start {
                from,
                to,
                amount,
                done,
            } => {
                if self.running.is_some() {
                    return; // started already: `done` is dropped, its asker told so
                }
                let withdraw = |reply| AccountMsg::Withdraw {
                    transfer,
                    amount,
                    reply,
                };
                ctx.ask(from, withdraw, ASK_TIMEOUT, TransferMsg::Withdrawn);
                self.running = Some(Running {
                    from,
                    to,
                    amount,
                    done,
                    story: Vec::new(),
                });
            }
            TransferMsg::Withdrawn(answer) => {
                let Some(t) = &mut self.running else { return };
                let (from, to, amount) = (t.from.0, t.to, t.amount);
                match answer {
                    Ok(Ok(())) => {
                        t.story
                            .push(format!("withdrew {amount} from account {from}"));
                        let deposit = |reply| AccountMsg::Deposit {
                            transfer,
                            amount,
                            reply,
                        };
                        ctx.ask(to, deposit, ASK_TIMEOUT, TransferMsg::Deposited);
                    }
                    Ok(Err(refusal)) => {
                        t.story.push(format!("account {from} refused: {refusal:?}"));
                        self.finish(ctx, Outcome::Declined);
                    }
                    Err(e) => {
                        // Perhaps withdrawn, perhaps not: void it.
                        t.story
                            .push(format!("no answer from account {from} ({e:?}); voided"));
                        ctx.send(t.from, AccountMsg::Void(transfer));
                        self.finish(ctx, Outcome::Cancelled);
                    }
                }
            }
            TransferMsg::Deposited(answer) => {
                let Some(t) = &mut self.running else { return };
                let (from, to, amount) = (t.from, t.to.0, t.amount);
                match answer {
                    Ok(Ok(())) => {
                        t.story.push(format!("deposited {amount} to account {to}"));
                        ctx.send(t.to, AccountMsg::Confirm(transfer));
                        self.finish(ctx, Outcome::Completed);
                        return;
                    }
                    Ok(Err(refusal)) => {
                        t.story.push(format!("account {to} refused: {refusal:?}"));
                    }
                    Err(AskError::Timeout) => {
                        // Perhaps deposited, perhaps not: void it there too.
                        t.story
                            .push(format!("no answer from account {to} in time; voided"));
                        ctx.send(t.to, AccountMsg::Void(transfer));
                    }
                    Err(e) => {
                        // Dropped unanswered: an account answers every request it applies, so
                        // here the account does not exist (the request was a dead letter).
                        t.story
                            .push(format!("account {to} did not take it ({e:?})"));
                    }
                }
                // Voiding the withdrawal gives the money back.
                t.story
                    .push(format!("refunded {amount} to account {}", from.0));
                ctx.send(from, AccountMsg::Void(transfer));
                self.finish(ctx, Outcome::Refunded);
            }
        }
    }
}

fn bank(books: Shared) -> Kinds<Bank> {
    let ledger_books = books.clone();
    Kinds::<Bank>::new()
        .kind(move |id: &AccountId| {
            match ACCOUNTS.iter().find(|(account, ..)| account == id) {
                // Accounts stay live for the whole run (the default idle timeout is five
                // minutes); examples/bank.rs shows durable ones.
                Some(&(_, balance, branch)) => Activation::ready(Account {
                    book: Book::new(balance, branch == Branch::Closed),
                    branch,
                    books: books.clone(),
                }),
                None => Activation::Refused, // no such account: its messages are dead letters
            }
        })
        .kind_with(
            Settings::default().idle_timeout(TRANSFER_IDLE),
            |_: &TransferId| Activation::ready(Transfer { running: None }),
        )
        .kind(move |_: &LedgerId| {
            let books = ledger_books.clone();
            Activation::ready(
                move |_: &mut Context<'_, LedgerId, LedgerMsg, Bank>, msg| match msg {
                    LedgerMsg::Ended(transfer, outcome) => {
                        books.lock().unwrap().ended.push((transfer, outcome));
                    }
                },
            )
        })
}

/// Transfers between accounts, each one a receiver asking accounts with timeouts.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    executor: executor::ExecutorArg,
}

fn main() {
    let executor = Args::parse().executor.build();
    let books = Shared::default();
    let hermes = executor.start(
        Options::new(Config::default()).shards(2),
        bank(books.clone()),
    );
    println!("{}: six transfers at once", executor.name());
    let transfers = [
        (1, 2, 30),  // completes
        (2, 3, 500), // declined: account 2 has not got 500
        (1, 3, 20),  // refunded: account 3 is closed
        (1, 5, 10),  // refunded: there is no account 5
        (2, 4, 25),  // refunded: the branch answers too late, so the deposit is voided
        (4, 1, 5),   // cancelled: the branch answers too late, so the withdrawal is voided
    ];
    let start = Instant::now();
    let asked: Vec<_> = transfers
        .iter()
        .enumerate()
        .map(|(n, &(from, to, amount))| {
            let id = TransferId(n as u32 + 1);
            let start = |done| TransferMsg::Start {
                from: AccountId(from),
                to: AccountId(to),
                amount,
                done,
            };
            (id, (from, to, amount), hermes.ask(id, start))
        })
        .collect();
    let mut outcomes = BTreeMap::new();
    for (id, (from, to, amount), asked) in asked {
        let report = asked
            .wait_timeout(Duration::from_secs(10))
            .expect("every transfer reports how it ended");
        println!(
            "transfer {}: {amount} from account {from} to account {to}: {} => {:?}",
            id.0,
            report.story.join(", "),
            report.outcome
        );
        *outcomes.entry(report.outcome).or_insert(0) += 1;
    }
    println!("all six ended after {:.0?}", start.elapsed());

    // Long enough for the branch's late answers, and for idle transfers to be deactivated.
    std::thread::sleep(BRANCH_DELAY);
    let live = hermes.stats().live;
    println!(
        "receivers live now: {live} (4 accounts and the ledger; transfers went after \
         {TRANSFER_IDLE:?} idle, though the ones waiting {ASK_TIMEOUT:?} for the branch were \
         not idle while they waited)"
    );
    let stats = hermes.shutdown().unwrap();
    println!(
        "shutdown: {} receivers deactivated; dead letters: {} (the deposit for account 5, \
         which does not exist)",
        stats.deactivations, stats.dead_letters
    );

    let books = books.lock().unwrap();
    for (account, &(balance, held)) in &books.balances {
        println!("account {}: {balance}", account.0);
        assert_eq!(held, 0, "every deposit was confirmed or voided");
    }
    let opening: u64 = ACCOUNTS.iter().map(|&(_, balance, _)| balance).sum();
    let closing: u64 = books.balances.values().map(|&(balance, _)| balance).sum();
    assert_eq!(closing, opening, "money was created or destroyed");
    println!("money conserved: {opening} at the start, {closing} at the end");
    let mut ended: Vec<TransferId> = books.ended.iter().map(|&(id, _)| id).collect();
    ended.sort();
    let expected: Vec<TransferId> = (1..=transfers.len() as u32).map(TransferId).collect();
    assert_eq!(ended, expected, "every transfer ends exactly once");
    println!("the ledger saw each transfer end exactly once: {outcomes:?}");
}
