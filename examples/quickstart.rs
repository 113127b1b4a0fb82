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

use clap::Parser;
use hermes::router::Driver;
use hermes::{Activation, Config, Context, Deactivation, DeadLetter, Receiver, Recipient};

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

/// Balances of deactivated accounts, by account ID: a stand-in for durable state.
type Store = Arc<Mutex<BTreeMap<String, u64>>>;

struct Account {
    balance: u64,
    store: Store,
}

impl Receiver<String, Msg> for Account {
    fn receive(&mut self, ctx: &mut Context<'_, String, Msg>, msg: Msg) {
        let me = ctx.id().clone();
        match msg {
            Msg::Deposit(amount) => {
                self.balance += amount;
                println!("  {me:<10} deposits {amount}; balance {}", self.balance);
            }
            Msg::Transfer { to, amount } if amount <= self.balance => {
                self.balance -= amount;
                println!(
                    "  {me:<10} sends {amount} to {to}; balance {}",
                    self.balance
                );
                ctx.send(to, Msg::Credit { from: me, amount });
            }
            Msg::Transfer { to, amount } => {
                let balance = self.balance;
                println!("  {me:<10} cannot send {amount} to {to}: balance is {balance}");
            }
            Msg::Credit { from, amount } => {
                self.balance += amount;
                println!(
                    "  {me:<10} gets {amount} from {from}; balance {}",
                    self.balance
                );
            }
            Msg::Statement => println!("  {me:<10} statement: balance {}", self.balance),
        }
    }

    fn activated(&mut self, ctx: &mut Context<'_, String, Msg>) {
        let me = ctx.id();
        match self.store.lock().expect("store").get(me) {
            Some(&saved) => {
                self.balance = saved;
                println!("  {me:<10} activated; saved balance loaded: {saved}");
            }
            None => println!("  {me:<10} activated; new account, balance 0"),
        }
        ctx.schedule(MONTH, Msg::Statement);
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, String, Msg>, why: Deactivation) {
        let me = ctx.id();
        let mut store = self.store.lock().expect("store");
        store.insert(me.clone(), self.balance);
        let why = match why {
            Deactivation::IdleTimeout => "idle for two months",
            Deactivation::Closing => "at close",
            _ => "other",
        };
        println!(
            "  {me:<10} deactivated ({why}); balance saved: {}",
            self.balance
        );
    }
}

const DAY: Duration = Duration::from_secs(24 * 3600);
const MONTH: Duration = Duration::from_secs(30 * 24 * 3600);

/// A short tour of Hermes: bank accounts as receivers, in simulated time.
#[derive(Parser)]
struct Args {}

fn main() {
    Args::parse(); // no arguments: `--help` prints the usage, anything else is an error
    println!("Hermes quickstart: bank accounts as receivers, on the inline driver.");
    let store = Store::default();
    // The factory makes the receiver for an ID on its first message; only "acct-" IDs exist.
    let factory = {
        let store = store.clone();
        move |id: &String| {
            if id.starts_with("acct-") {
                Activation::ready(Account {
                    balance: 0,
                    store: store.clone(),
                })
            } else {
                Activation::Refused
            }
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

    println!(
        "\nDay 1: receivers send each other messages; a message no receiver takes is a dead letter."
    );
    hermes.send(acct("alice"), transfer("bob", 200)).unwrap();
    hermes.send(acct("carol"), transfer("alice", 999)).unwrap();
    hermes.send("mallory".to_string(), Msg::Deposit(1)).unwrap();
    hermes.run(start + DAY);
    while let Some(dead) = hermes.poll_dead_letter() {
        print_dead_letter(dead);
    }

    println!("\nDay 2:");
    hermes.send(acct("bob"), transfer("carol", 250)).unwrap();
    hermes.run(start + 2 * DAY);

    println!(
        "\nMonths pass with no messages: statement timers fire, idle accounts are deactivated."
    );
    let mut now = start + 2 * DAY;
    while let Some(next) = hermes.poll_timeout() {
        now = next;
        println!("Day {}:", day(now));
        hermes.run(now);
    }
    let live = hermes.router().stats().live;
    println!("  live accounts: {live}; saved balances: {}", saved(&store));

    println!(
        "\nStill day {}: a message for a deactivated account activates it again.",
        day(now)
    );
    hermes.send(acct("bob"), Msg::Deposit(10)).unwrap();
    hermes.run(now);

    println!(
        "\nClose: deliver what is queued, deactivate each live account once, drop pending timers."
    );
    hermes.close(now);
    while let Some(dead) = hermes.poll_dead_letter() {
        print_dead_letter(dead);
    }
    println!("  saved balances: {}", saved(&store));

    let s = hermes.router().stats();
    println!(
        "\nDone: {} messages delivered (timers included), {} activations, {} deactivations, \
         {} dead letters.",
        s.messages_delivered, s.activations, s.deactivations, s.dead_letters
    );
}

/// Says what a dead letter was and why Hermes could not deliver it.
fn print_dead_letter(dead: DeadLetter<String, Msg>) {
    let to = match dead.recipient {
        Recipient::Id(id) => id,
        Recipient::Addr(addr) => format!("{addr:?}"),
    };
    let what = match dead.message {
        Some(Msg::Deposit(amount)) => format!("deposit of {amount} not delivered"),
        Some(Msg::Statement) => "pending statement timer dropped".to_string(),
        Some(msg) => format!("{msg:?} not delivered"),
        None => "message not delivered".to_string(),
    };
    println!("  {to:<10} dead letter: {what} ({})", dead.reason);
}

/// The saved balances, by account ID, and their total.
fn saved(store: &Store) -> String {
    let store = store.lock().expect("store");
    let balances: Vec<String> = store.iter().map(|(id, b)| format!("{id} {b}")).collect();
    let total: u64 = store.values().sum();
    format!("{} (total {total})", balances.join(", "))
}
