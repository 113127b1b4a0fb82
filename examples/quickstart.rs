//! A short tour of Hermes: bank accounts as receivers on the inline driver.
//!
//! Each account is a receiver, created by the factory on its first message. It loads its balance
//! when activated and saves it when deactivated (here to an in-memory map standing in for a
//! database). Accounts transfer money by sending each other messages, get a statement from a
//! timer, are deactivated when idle, come back on their next message, and are all deactivated
//! exactly once when Hermes closes. Time is simulated, so the tour takes milliseconds.
//!
//! Run it with `cargo run --release --example quickstart`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes::router::Driver;
use hermes::{Activation, Config, Context, Deactivation, Receiver};

/// What an account understands.
#[derive(Debug)]
enum Msg {
    Deposit(u64),
    /// Move money to another account.
    Transfer {
        to: String,
        amount: u64,
    },
    /// Money arriving from another account.
    Credit {
        from: String,
        amount: u64,
    },
    /// A timer: print a statement.
    Statement,
}

/// Balances of deactivated accounts: a stand-in for durable state.
type Store = Arc<Mutex<BTreeMap<String, u64>>>;

struct Account {
    name: String,
    balance: u64,
    store: Store,
}

impl Receiver<String, Msg> for Account {
    fn receive(&mut self, ctx: &mut Context<'_, String, Msg>, msg: Msg) {
        let me = &self.name;
        match msg {
            Msg::Deposit(amount) => {
                self.balance += amount;
                println!("  {me:<5} deposits {amount}; balance {}", self.balance);
            }
            Msg::Transfer { to, amount } if amount <= self.balance => {
                self.balance -= amount;
                println!("  {me:<5} sends {amount} to {to}; balance {}", self.balance);
                ctx.send(
                    to,
                    Msg::Credit {
                        from: me.clone(),
                        amount,
                    },
                );
            }
            Msg::Transfer { to, amount } => {
                let balance = self.balance;
                println!("  {me:<5} cannot send {amount} to {to}: balance is {balance}");
            }
            Msg::Credit { from, amount } => {
                self.balance += amount;
                println!(
                    "  {me:<5} gets {amount} from {from}; balance {}",
                    self.balance
                );
            }
            Msg::Statement => println!("  {me:<5} statement: balance {}", self.balance),
        }
    }

    fn activated(&mut self, ctx: &mut Context<'_, String, Msg>) {
        let saved = self.store.lock().expect("store").get(&self.name).copied();
        self.balance = saved.unwrap_or(0);
        println!(
            "  {:<5} activated, balance loaded: {}",
            self.name, self.balance
        );
        ctx.schedule(MONTH, Msg::Statement);
    }

    fn deactivated(&mut self, _ctx: &mut Context<'_, String, Msg>, why: Deactivation) {
        let mut store = self.store.lock().expect("store");
        store.insert(self.name.clone(), self.balance);
        println!(
            "  {:<5} deactivated ({why:?}), balance saved: {}",
            self.name, self.balance
        );
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const MONTH: Duration = Duration::from_secs(30 * 24 * 3600);

fn main() {
    println!("Hermes quickstart: bank accounts as receivers, on the inline driver.");
    let store = Store::default();
    // The factory makes the receiver for an ID on its first message; only "acct-" IDs exist.
    let factory = {
        let store = store.clone();
        move |id: &String| match id.strip_prefix("acct-") {
            Some(name) => Activation::ready(Account {
                name: name.to_string(),
                balance: 0,
                store: store.clone(),
            }),
            None => Activation::Refused,
        }
    };
    // Accounts with nothing to do for two months are deactivated.
    let mut hermes = Driver::new(Config::default().idle_timeout(2 * MONTH), factory);
    let start = Instant::now();
    let day = |now: Instant| (now - start).as_secs() / DAY.as_secs();
    let acct = |name: &str| format!("acct-{name}");
    let transfer = |to: &str, amount| Msg::Transfer {
        to: acct(to),
        amount,
    };

    println!("\nDay 0: the first message for an ID activates its receiver.");
    hermes.send(acct("alice"), Msg::Deposit(500)).unwrap();
    hermes.send(acct("bob"), Msg::Deposit(100)).unwrap();
    hermes.run(start);

    println!("\nDay 1: transfers are messages between receivers.");
    hermes.send(acct("alice"), transfer("bob", 200)).unwrap();
    hermes.send(acct("carol"), transfer("alice", 999)).unwrap();
    hermes.send("mallory".to_string(), Msg::Deposit(1)).unwrap();
    hermes.run(start + DAY);
    while let Some(dead) = hermes.poll_dead_letter() {
        println!("  dead letter for {:?}: {}", dead.recipient, dead.reason);
    }

    println!("\nDay 2:");
    hermes.send(acct("bob"), transfer("carol", 250)).unwrap();
    hermes.run(start + 2 * DAY);

    println!("\nThe next months: statement timers fire, then idle accounts are deactivated.");
    let mut now = start + 2 * DAY;
    while let Some(next) = hermes.poll_timeout() {
        now = next;
        println!(" day {}:", day(now));
        hermes.run(now);
    }
    let stats = hermes.router().stats();
    println!(
        "  live accounts: {}; saved: {:?}",
        stats.live,
        store.lock().expect("store")
    );

    println!(
        "\nDay {}: a message for a deactivated account activates it again.",
        day(now)
    );
    hermes.send(acct("bob"), Msg::Deposit(10)).unwrap();
    hermes.run(now);

    println!("\nClose: drain, then deactivate every live account exactly once.");
    hermes.close(now);
    while let Some(dead) = hermes.poll_dead_letter() {
        println!("  dead letter for {:?}: {}", dead.recipient, dead.reason);
    }

    let s = hermes.router().stats();
    println!(
        "\nDone: {} messages delivered, {} activations, {} deactivations, {} dead letters.",
        s.messages_delivered, s.activations, s.deactivations, s.dead_letters
    );
}
