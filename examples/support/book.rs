//! An account's book of transfers: withdrawals taken at once, deposits held until the transfer
//! confirms them, and voids that undo either. Plain state, no Hermes: `examples/kinds.rs` runs
//! it in account receivers, and `sim/tests/kinds.rs` runs the same under 500 seeds.
//!
//! Why deposits are held: a transfer voids a deposit when its ask timed out, and a timed-out
//! ask says nothing of whether the deposit was applied. Had the account let the money be spent
//! meanwhile, the void could not take it back.

use std::collections::HashMap;
use std::hash::Hash;

/// Why an account refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    InsufficientFunds,
    /// The account takes no deposits.
    Closed,
    /// The transfer was voided here: it may do nothing more.
    Voided,
}

/// An account's answer to a withdrawal or a deposit.
pub type Answer = Result<(), Refusal>;

/// What a transfer did at an account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Withdrew(u64),
    /// A deposit held until confirmed: not spendable.
    Holding(u64),
    Confirmed,
    Voided,
}

/// An account's balance, and what each transfer (by ID `T`) did to it.
#[derive(Clone, Debug)]
pub struct Book<T> {
    pub balance: u64,
    /// Takes no deposits.
    pub closed: bool,
    entries: HashMap<T, Entry>,
}

impl<T: Copy + Eq + Hash> Book<T> {
    pub fn new(balance: u64, closed: bool) -> Self {
        Book {
            balance,
            closed,
            entries: HashMap::new(),
        }
    }

    /// Takes `amount` off the balance at once, if it is there.
    pub fn withdraw(&mut self, transfer: T, amount: u64) -> Answer {
        if self.entries.contains_key(&transfer) {
            return Err(Refusal::Voided);
        }
        let balance = self.balance.checked_sub(amount);
        self.balance = balance.ok_or(Refusal::InsufficientFunds)?;
        self.entries.insert(transfer, Entry::Withdrew(amount));
        Ok(())
    }

    /// Holds `amount` for the account until [`confirm`](Book::confirm).
    pub fn deposit(&mut self, transfer: T, amount: u64) -> Answer {
        if self.entries.contains_key(&transfer) {
            return Err(Refusal::Voided);
        }
        if self.closed {
            return Err(Refusal::Closed);
        }
        self.entries.insert(transfer, Entry::Holding(amount));
        Ok(())
    }

    /// Adds a held deposit to the balance; what the transfer's entry was.
    pub fn confirm(&mut self, transfer: T) -> Option<Entry> {
        let entry = self.entries.get(&transfer).copied();
        if let Some(Entry::Holding(amount)) = entry {
            self.balance += amount;
            self.entries.insert(transfer, Entry::Confirmed);
        }
        entry
    }

    /// Undoes what the transfer did here (puts a withdrawal back, drops a held deposit) and
    /// refuses it from now on; what its entry was.
    pub fn void(&mut self, transfer: T) -> Option<Entry> {
        let entry = self.entries.insert(transfer, Entry::Voided);
        if let Some(Entry::Withdrew(amount)) = entry {
            self.balance += amount;
        }
        entry
    }

    /// Money held for deposits not confirmed yet.
    pub fn holding(&self) -> u64 {
        let held = self.entries.values().map(|entry| match entry {
            Entry::Holding(amount) => *amount,
            _ => 0,
        });
        held.sum()
    }
}
