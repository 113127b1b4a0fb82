//! Several kinds of receivers in one Hermes: typed sends and asks between kinds and from
//! outside, timers to another kind, and each kind's own settings.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_core::{
    Activation, Config, Context, Deactivation, DeadLetterReason, Kinds, Receiver, Settings,
};
use hermes_executor::{Options, Reply};

use crate::{HANG_GUARD, Harness, eventually};

/// An account, by number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccountId(pub u32);

/// What accounts take.
#[derive(Debug)]
pub enum AccountMsg {
    /// Adds to the balance, and tells the ledger.
    Deposit(u64),
    /// Answers the balance.
    Balance(Reply<u64>),
    /// Sent by the ledger's timer.
    Audited,
    /// Answers how many times the ledger audited this account.
    Audits(Reply<u64>),
    /// Answers this account's handle.
    Whereabouts(Reply<hermes_core::Addr>),
}

/// The ledger: one per branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LedgerId(pub u8);

/// What ledgers take.
#[derive(Debug)]
pub enum LedgerMsg {
    /// An account's deposit.
    Deposited(AccountId, u64),
    /// Answers the total of deposits seen.
    Total(Reply<u64>),
    /// Sends a ledger's message to this handle (a bug: it is an account's).
    Misdirect(hermes_core::Addr),
}

hermes_core::app! {
    /// A bank with two kinds: accounts and ledgers.
    pub app Bank(BankId, BankMsg) {
        Account(AccountId => AccountMsg),
        Ledger(LedgerId => LedgerMsg),
    }
}

struct Account {
    id: AccountId,
    balance: u64,
    audits: u64,
    hooks: Arc<Mutex<Vec<(String, Deactivation)>>>,
}

impl Receiver<AccountId, AccountMsg, Bank> for Account {
    fn receive(&mut self, ctx: &mut Context<'_, AccountId, AccountMsg, Bank>, msg: AccountMsg) {
        match msg {
            AccountMsg::Deposit(n) => {
                self.balance += n;
                // To another kind: the message's type picks the kind and the ID's type.
                ctx.send(LedgerId(0), LedgerMsg::Deposited(self.id, n));
            }
            AccountMsg::Balance(reply) => {
                let _ = reply.send(self.balance);
            }
            AccountMsg::Audited => self.audits += 1,
            AccountMsg::Audits(reply) => {
                let _ = reply.send(self.audits);
            }
            AccountMsg::Whereabouts(reply) => {
                let _ = reply.send(ctx.addr());
            }
        }
    }

    fn deactivated(
        &mut self,
        ctx: &mut Context<'_, AccountId, AccountMsg, Bank>,
        why: Deactivation,
    ) {
        self.hooks
            .lock()
            .unwrap()
            .push((format!("{:?}", ctx.id()), why));
    }
}

fn bank(hooks: Arc<Mutex<Vec<(String, Deactivation)>>>, ledger_idle: Duration) -> Kinds<Bank> {
    Kinds::new()
        .kind(move |id: &AccountId| {
            Activation::ready(Account {
                id: *id,
                balance: 0,
                audits: 0,
                hooks: hooks.clone(),
            })
        })
        .kind_with(
            Settings::default()
                .idle_timeout(ledger_idle)
                .mailbox_capacity(10_000),
            |_: &LedgerId| {
                let mut total = 0;
                Activation::ready(
                    move |ctx: &mut Context<'_, LedgerId, LedgerMsg, Bank>, msg| match msg {
                        LedgerMsg::Deposited(account, n) => {
                            total += n;
                            // A timer for a receiver of another kind.
                            ctx.schedule_to(account, Duration::from_millis(1), AccountMsg::Audited);
                        }
                        LedgerMsg::Total(reply) => {
                            let _ = reply.send(total);
                        }
                        LedgerMsg::Misdirect(addr) => {
                            ctx.send_to(addr, LedgerMsg::Deposited(AccountId(9), 2));
                        }
                    },
                )
            },
        )
}

/// Two kinds in one Hermes: sends between kinds, asks to each kind from outside, timers from
/// one kind to another, each kind's own idle timeout.
pub fn kinds_send_ask_and_schedule_between_each_other<H: Harness>(h: &H) {
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let options = Options::new(Config::default()).shards(2);
    let hermes = h.start(options, bank(hooks.clone(), Duration::from_millis(50)));
    for account in 0..10 {
        hermes
            .send(AccountId(account), AccountMsg::Deposit(10))
            .unwrap();
        hermes
            .schedule(
                AccountId(account),
                Duration::from_millis(1),
                AccountMsg::Deposit(1),
            )
            .unwrap();
    }
    eventually("the ledger to see every deposit", || {
        hermes.ask_blocking(LedgerId(0), LedgerMsg::Total, HANG_GUARD) == Ok(110)
    });
    for account in 0..10 {
        let balance = hermes.ask_blocking(AccountId(account), AccountMsg::Balance, HANG_GUARD);
        assert_eq!(balance, Ok(11));
        eventually("the ledger's audits", || {
            hermes.ask_blocking(AccountId(account), AccountMsg::Audits, HANG_GUARD) == Ok(2)
        });
    }
    // The ledger's own 50 ms idle timeout (accounts keep the default five minutes).
    eventually("the ledger to go idle", || hermes.stats().live == 10);
    let stats = hermes.shutdown().unwrap();
    assert_eq!(stats.activations, 11, "ten accounts and the ledger");
    assert_eq!(
        stats.deactivations, 11,
        "the ledger for idleness, the accounts at close"
    );
    assert_eq!(stats.dead_letters, 0);
    let hooks = hooks.lock().unwrap();
    assert_eq!(hooks.len(), 10);
    assert!(hooks.iter().all(|(_, why)| *why == Deactivation::Closing));
}

/// A kind's own mailbox capacity: mail from a receiver to a full ledger is a `Full` dead
/// letter, and while a ledger's mailbox stays full, an outside `try_send` to it is refused
/// with `Full` (and `send` waits), while accounts (the router's capacity) take everything.
pub fn each_kind_has_its_own_mailbox_capacity<H: Harness>(h: &H) {
    let full = Arc::new(Mutex::new(0u64));
    let counted = full.clone();
    // One command per turn: a slow ledger's backlog outlasts its shard's turn.
    let options = Options::new(Config::default())
        .shards(1)
        .turn_budget(1, 1024)
        .on_dead_letter(move |letter| {
            if letter.reason == DeadLetterReason::Full {
                *counted.lock().unwrap() += 1;
            }
        });
    let entered = Arc::new(Mutex::new(0u64));
    let e = entered.clone();
    let kinds = Kinds::<Bank>::new()
        .kind(|_: &AccountId| {
            Activation::ready(|ctx: &mut Context<'_, AccountId, AccountMsg, Bank>, msg| {
                if let AccountMsg::Deposit(n) = msg {
                    // A burst at the ledger, in one handler: it queues them all at once.
                    for i in 0..n {
                        ctx.send(LedgerId(1), LedgerMsg::Deposited(*ctx.id(), i));
                    }
                }
            })
        })
        .kind_with(
            Settings::default().mailbox_capacity(10).batch_size(1),
            move |_: &LedgerId| {
                let e = e.clone();
                Activation::ready(move |_: &mut Context<'_, LedgerId, LedgerMsg, Bank>, msg| {
                    if let LedgerMsg::Deposited(..) = msg {
                        *e.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(2));
                    }
                })
            },
        );
    let hermes = h.start(options, kinds);
    hermes.send(AccountId(1), AccountMsg::Deposit(50)).unwrap();
    eventually("the burst", || *entered.lock().unwrap() == 10);
    assert_eq!(
        *full.lock().unwrap(),
        40,
        "the burst beyond the ledger's ten"
    );
    // From outside: admitted in one batch (past the capacity, so nothing admitted is lost),
    // then the full ledger refuses a `try_send`.
    let entries = (0..30).map(|n| (LedgerId(1), LedgerMsg::Deposited(AccountId(2), n)));
    hermes.send_all(entries).unwrap();
    let mut taken = 0;
    eventually("the ledger to be full", || {
        match hermes.try_send(LedgerId(1), LedgerMsg::Deposited(AccountId(3), 0)) {
            Ok(()) => {
                taken += 1;
                false
            }
            Err(e) => matches!(e, hermes_core::SendError::Full(_)),
        }
    });
    // `send` waits for room, then goes through.
    hermes
        .send(LedgerId(1), LedgerMsg::Deposited(AccountId(4), 0))
        .unwrap();
    let stats = hermes.shutdown().unwrap();
    assert_eq!(
        *full.lock().unwrap(),
        40,
        "nothing from outside was refused"
    );
    assert_eq!(stats.messages_delivered, 1 + 10 + 30 + taken + 1);
}

/// A handle (`Addr`) is not typed by kind, so a message of one kind sent by the handle of a
/// receiver of another kind compiles: it is a `Stale` dead letter with its message (as for a
/// handle that no longer addresses a receiver of its kind), from outside
/// (`Hermes::send_to`) and from a receiver (`Context::send_to`), and the receiver it addressed
/// is unharmed: not panicked, its state kept.
pub fn a_handle_of_another_kind_is_a_dead_letter_not_a_panic<H: Harness>(h: &H) {
    let hooks = Arc::default();
    let letters: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = Arc::clone(&letters);
    let options = Options::new(Config::default()).shards(2).on_dead_letter(
        move |d: hermes_core::DeadLetter<BankId, BankMsg>| {
            l.lock()
                .unwrap()
                .push(format!("{:?} {:?}", d.reason, d.message));
        },
    );
    let hermes = h.start(options, bank(Arc::clone(&hooks), HANG_GUARD));
    // The account's handle, as a peer that replies often would keep it.
    let account = hermes
        .ask_blocking(AccountId(2), AccountMsg::Whereabouts, HANG_GUARD)
        .unwrap();
    hermes.send(AccountId(2), AccountMsg::Deposit(7)).unwrap();
    // A ledger's message to the account's handle, from outside.
    hermes
        .send_to(account, LedgerMsg::Deposited(AccountId(9), 1))
        .unwrap();
    // And from a ledger, which got the account's handle in a message.
    hermes
        .send(LedgerId(0), LedgerMsg::Misdirect(account))
        .unwrap();
    let stale = || {
        let letters = letters.lock().unwrap();
        letters
            .iter()
            .filter(|l| l.starts_with("Stale"))
            .cloned()
            .collect::<Vec<_>>()
    };
    eventually("two dead letters", || stale().len() == 2);
    assert_eq!(
        stale(),
        ["Stale Some(Ledger(..))", "Stale Some(Ledger(..))"]
    );
    assert_eq!(
        hermes.ask_blocking(AccountId(2), AccountMsg::Balance, HANG_GUARD),
        Ok(7),
        "the account kept its state"
    );
    hermes.shutdown().unwrap();
    // (The ledger's audit timer may still be pending at shutdown: a `Closed` dead letter.)
    assert_eq!(stale().len(), 2);
    assert!(
        hooks
            .lock()
            .unwrap()
            .iter()
            .all(|(_, why)| *why == Deactivation::Closing),
        "{:?}",
        hooks.lock().unwrap()
    );
}
