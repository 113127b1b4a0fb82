//! Bank accounts as durable receivers: deposits, withdrawals, balances by ask, and transfers
//! that lose no money when one side refuses.
//!
//! Each account's state lives in an embedded redb file and survives restarts: run it twice and
//! the second run starts from the first run's balances.
//!
//! ```text
//! cargo run --example bank                          # state in target/hermes-bank.redb
//! cargo run --example bank                          # again: balances kept
//! cargo run --example bank -- --db /tmp/bank.redb   # or HERMES_BANK=/tmp/bank.redb
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hermes::store::{Codec, Durable, GroupCommitConfig, RedbStore, StateStore, StoreError};
use hermes::{Activation, Config, Context, Deactivation, Receiver, Reply};
use serde::{Deserialize, Serialize};

type Id = String;

/// What an account keeps across restarts.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Account {
    balance: u64,
    closed: bool,
    next_transfer: u64,
    /// Money on its way out: debited here, not yet credited there.
    in_flight: BTreeMap<u64, Outgoing>,
}

#[derive(Serialize, Deserialize, Debug)]
struct Outgoing {
    to: Id,
    amount: u64,
}

const ACCOUNT: Codec<Account> = Codec::new(1);

#[derive(Debug, Clone, PartialEq)]
enum BankError {
    InsufficientFunds { balance: u64, wanted: u64 },
    Closed(Id),
    Store(String),
}

impl fmt::Display for BankError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BankError::InsufficientFunds { balance, wanted } => {
                write!(f, "insufficient funds: balance {balance}, wanted {wanted}")
            }
            BankError::Closed(id) => write!(f, "account {id} is closed"),
            BankError::Store(e) => write!(f, "could not save: {e}"),
        }
    }
}

type Answer<T> = Reply<Result<T, BankError>>;

enum Msg {
    Deposit(u64, Answer<u64>),
    Withdraw(u64, Answer<u64>),
    Balance(Reply<u64>),
    Close(Answer<u64>),
    Transfer {
        to: Id,
        amount: u64,
        done: Answer<()>,
    },
    /// Leg two of a transfer, sent account to account.
    Credit {
        from: Id,
        transfer: u64,
        amount: u64,
    },
    /// Leg three: the receiving account's verdict.
    Credited {
        transfer: u64,
        ok: bool,
    },
}

struct Teller {
    state: Durable<Account>,
    /// Callers waiting for a transfer's outcome (not durable: replies die with the process).
    waiting: HashMap<u64, Answer<()>>,
}

impl Teller {
    /// Saves, then answers once the state is durable.
    fn save_then<T: Send + 'static>(&mut self, answer: Answer<T>, value: T) {
        self.state.save(move |saved| {
            let _ = answer.send(saved.map(|()| value).map_err(store_error));
        });
    }
}

fn store_error(e: StoreError) -> BankError {
    BankError::Store(e.to_string())
}

impl Receiver<Id, Msg> for Teller {
    fn receive(&mut self, ctx: &mut Context<'_, Id, Msg>, msg: Msg) {
        match msg {
            Msg::Balance(reply) => {
                let _ = reply.send(self.state.balance);
            }
            Msg::Deposit(_, answer) | Msg::Withdraw(_, answer) if self.state.closed => {
                let _ = answer.send(Err(BankError::Closed(ctx.id().clone())));
            }
            Msg::Deposit(amount, answer) => {
                self.state.balance += amount;
                let balance = self.state.balance;
                self.save_then(answer, balance);
            }
            Msg::Withdraw(amount, answer) => match self.state.balance.checked_sub(amount) {
                None => {
                    let balance = self.state.balance;
                    let _ = answer.send(Err(BankError::InsufficientFunds {
                        balance,
                        wanted: amount,
                    }));
                }
                Some(left) => {
                    self.state.balance = left;
                    self.save_then(answer, left);
                }
            },
            Msg::Close(answer) => {
                self.state.closed = true;
                let balance = self.state.balance;
                self.save_then(answer, balance);
            }
            Msg::Transfer { to, amount, done } => {
                if self.state.balance < amount {
                    let balance = self.state.balance;
                    let _ = done.send(Err(BankError::InsufficientFunds {
                        balance,
                        wanted: amount,
                    }));
                    return;
                }
                let account = &mut *self.state;
                account.balance -= amount;
                let transfer = account.next_transfer;
                account.next_transfer += 1;
                account.in_flight.insert(
                    transfer,
                    Outgoing {
                        to: to.clone(),
                        amount,
                    },
                );
                self.waiting.insert(transfer, done);
                let from = ctx.id().clone();
                ctx.send(
                    to,
                    Msg::Credit {
                        from,
                        transfer,
                        amount,
                    },
                );
            }
            Msg::Credit {
                from,
                transfer,
                amount,
            } => {
                let ok = !self.state.closed;
                if ok {
                    self.state.balance += amount;
                }
                ctx.send(from, Msg::Credited { transfer, ok });
            }
            Msg::Credited { transfer, ok } => {
                let Some(out) = self.state.in_flight.remove(&transfer) else {
                    return; // answered already
                };
                let done = self.waiting.remove(&transfer);
                if ok {
                    if let Some(done) = done {
                        self.save_then(done, ());
                    }
                } else {
                    self.state.balance += out.amount; // refund: no money lost
                    if let Some(done) = done {
                        let _ = done.send(Err(BankError::Closed(out.to)));
                    }
                }
            }
        }
    }

    fn deactivated(&mut self, _: &mut Context<'_, Id, Msg>, why: Deactivation) {
        self.state.deactivated(why); // saves if changed
    }
}

/// Durable bank accounts: deposits, transfers and balances kept across runs.
#[derive(Parser)]
struct Args {
    /// The redb file that keeps the accounts
    #[arg(long, value_name = "PATH", env = "HERMES_BANK", default_value_os_t = default_db())]
    db: PathBuf,
}

fn default_db() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/hermes-bank.redb")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = Args::parse().db;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let store = Arc::new(RedbStore::open(&path)?);
    let states = StateStore::new(store, GroupCommitConfig::default())?;
    let factory = {
        let states = states.clone();
        move |id: &Id| match Durable::load(&states, ACCOUNT, format!("account/{id}")) {
            Ok(state) => Activation::ready(Teller {
                state,
                waiting: HashMap::new(),
            }),
            Err(e) => Activation::failed(e),
        }
    };
    let bank = hermes::pool::start(Config::default(), factory)?;
    let wait = Duration::from_secs(5);
    let names = ["alice", "bob", "carol"].map(String::from);
    let balances = |label: &str| -> Result<u64, Box<dyn std::error::Error>> {
        let mut total = 0;
        print!("{label:>7}:");
        for name in &names {
            let balance = bank.ask_blocking(name.clone(), Msg::Balance, wait)?;
            total += balance;
            print!("  {name} {balance:>5}");
        }
        println!("  | total {total}");
        Ok(total)
    };

    println!("state in {}", path.display());
    let before = balances("before")?;

    let deposit =
        |who: &str, amount| bank.ask_blocking(who.into(), |a| Msg::Deposit(amount, a), wait);
    println!("alice deposits 100: {:?}", deposit("alice", 100)?);
    println!("bob deposits 50:    {:?}", deposit("bob", 50)?);
    let withdraw = bank.ask_blocking("alice".into(), |a| Msg::Withdraw(10_000, a), wait)?;
    println!("alice withdraws 10000: {}", show(&withdraw));
    let transfer = |from: &str, to: &str, amount| {
        bank.ask_blocking(
            from.into(),
            |done| Msg::Transfer {
                to: to.into(),
                amount,
                done,
            },
            wait,
        )
    };
    println!(
        "alice -> bob 30:   {}",
        show(&transfer("alice", "bob", 30)?)
    );
    println!(
        "carol closes:      {:?}",
        bank.ask_blocking("carol".into(), Msg::Close, wait)?
    );
    println!(
        "bob -> carol 20:   {} (refunded)",
        show(&transfer("bob", "carol", 20)?)
    );

    let after = balances("after")?;
    assert_eq!(
        after,
        before + 150,
        "transfers moved money; they never made or lost any"
    );

    let stats = bank.shutdown().unwrap(); // every account is deactivated: its state is saved
    states.shutdown()?;
    println!(
        "shut down: {} activations, {} deactivations; run me again: the balances are kept",
        stats.activations, stats.deactivations
    );
    Ok(())
}

fn show<T: fmt::Debug>(r: &Result<T, BankError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("refused: {e}"),
    }
}
