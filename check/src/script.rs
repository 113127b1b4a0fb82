//! Scripted receivers: each message names a script of instructions the receiver carries out, and
//! the receiver records everything it did in a shared journal, so the checker can compare what
//! happened with what the reference model says should have happened.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hermes_core::{Activation, Addr, Context, Deactivation, Receiver, Recipient, TimerId};

use crate::plan::{Instr, Target};

/// How many receiver IDs the checker's world has.
pub const IDS: u8 = 8;
/// The ID the factory refuses ([`Activation::Refused`]).
const REFUSED: u8 = 6;
/// The ID the factory fails on ([`Activation::Failed`]).
const FAILING: u8 = 7;

/// A receiver ID in the checker's world: `0..IDS`. The factory refuses ID 6 and fails on ID 7.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(pub(crate) u8);

impl Id {
    /// What the factory does with this ID.
    pub(crate) fn class(self) -> IdClass {
        match self.0 {
            REFUSED => IdClass::Refused,
            FAILING => IdClass::Failing,
            _ => IdClass::Normal,
        }
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.class() {
            IdClass::Normal => write!(f, "#{}", self.0),
            IdClass::Refused => write!(f, "#{}(refused)", self.0),
            IdClass::Failing => write!(f, "#{}(failing)", self.0),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IdClass {
    Normal,
    Refused,
    Failing,
}

/// A message in the checker's world: a unique sequence number and the script the receiver runs.
#[derive(Debug)]
pub struct Msg {
    pub(crate) seq: Seq,
    pub(crate) script: u8,
}

/// The unique number every message gets when it is created.
pub(crate) type Seq = u64;

/// How an activation goes and how the instance's lifecycle hooks behave; chosen when the factory
/// is called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hooks {
    /// The factory panics instead of making an instance. `Router::handle` catches it and fails
    /// the activation (counting the panic); a driver that calls the factory itself catches it.
    pub(crate) factory_panics: bool,
    /// The `activated` hook panics (the activation fails).
    pub(crate) activation_panics: bool,
    /// The `deactivated` hook sends a farewell message: (to, script).
    pub(crate) farewell: Option<(Target, u8)>,
    /// The `deactivated` hook panics after sending (its effects are dropped).
    pub(crate) deactivation_panics: bool,
}

impl Hooks {
    /// Hooks from one byte of input; most bytes give plain hooks.
    pub(crate) fn from_luck(luck: u8) -> Hooks {
        Hooks {
            factory_panics: luck % 13 == 12,
            activation_panics: luck < 10,
            farewell: (luck % 5 == 1).then(|| (Target::from_byte(luck / 5), luck / 3)),
            deactivation_panics: luck % 16 == 15,
        }
    }
}

/// What a scripted receiver did, in order.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    Activated {
        inst: u32,
    },
    Received {
        inst: u32,
        version: u32,
        id: Id,
        addr: Addr,
        seq: Seq,
        now: Instant,
    },
    Sent {
        to: Recipient<Id>,
        seq: Seq,
    },
    Scheduled {
        timer: TimerId,
        to: Id,
        /// `None`: past the end of representable time, never.
        deadline: Option<Instant>,
        seq: Seq,
    },
    Cancelled {
        timer: TimerId,
    },
    Became,
    Stopped,
    IdleTimeout(Duration),
    /// The receiver is about to panic; the effects of the current message or hook are void.
    Panicking,
    Deactivated {
        inst: u32,
        version: u32,
        id: Id,
        why: Deactivation,
    },
}

/// True for the event that starts a handler run (activated, received, deactivated); the events
/// after it, up to the next such event, are what that run did.
pub(crate) fn is_head(e: &Event) -> bool {
    matches!(
        e,
        Event::Activated { .. } | Event::Received { .. } | Event::Deactivated { .. }
    )
}

/// State shared by the checker and every scripted receiver.
pub(crate) struct Shared {
    pub(crate) scripts: Vec<Vec<Instr>>,
    journal: Mutex<Journal>,
}

pub(crate) struct Journal {
    pub(crate) next_seq: Seq,
    /// Sends and timers receivers may still create; bounds every run.
    pub(crate) budget: u32,
    /// Per router: relays there are free of the budget (it is closing under a drain limit,
    /// which is what must end them).
    pub(crate) endless: Vec<bool>,
    pub(crate) events: Vec<Event>,
    /// Every handle seen so far, live or stale.
    pub(crate) handles: Vec<Addr>,
    /// Every timer ID seen so far, pending or not.
    pub(crate) timers: Vec<TimerId>,
}

impl Journal {
    pub(crate) fn next_seq(&mut self) -> Seq {
        self.next_seq += 1;
        self.next_seq
    }

    /// Takes one unit of the budget, unless the send is `free`; false when it is spent.
    fn spend(&mut self, free: bool) -> bool {
        if free {
            return true;
        }
        if self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        true
    }

    pub(crate) fn handle(&self, k: u8) -> Option<Addr> {
        pick(&self.handles, k)
    }

    pub(crate) fn timer(&self, k: u8) -> Option<TimerId> {
        pick(&self.timers, k)
    }
}

/// The `k`-th item counted from the newest, wrapping.
fn pick<T: Copy>(items: &[T], k: u8) -> Option<T> {
    if items.is_empty() {
        return None;
    }
    Some(items[items.len() - 1 - usize::from(k) % items.len()])
}

impl Shared {
    pub(crate) fn new(scripts: Vec<Vec<Instr>>, budget: u32, routers: usize) -> Arc<Shared> {
        Arc::new(Shared {
            scripts,
            journal: Mutex::new(Journal {
                next_seq: 0,
                budget,
                endless: vec![false; routers],
                events: Vec::new(),
                handles: Vec::new(),
                timers: Vec::new(),
            }),
        })
    }

    /// The journal; a scripted panic never happens while it is locked, but stay robust anyway.
    pub(crate) fn journal(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, event: Event) {
        self.journal().events.push(event);
    }

    fn script(&self, k: u8) -> &[Instr] {
        if self.scripts.is_empty() {
            return &[];
        }
        &self.scripts[usize::from(k) % self.scripts.len()]
    }
}

/// What the factory makes of `id`; `inst` numbers the instance if one is made.
pub(crate) fn activation(
    shared: &Arc<Shared>,
    id: Id,
    inst: u32,
    hooks: Hooks,
) -> Activation<Id, Msg> {
    match id.class() {
        IdClass::Refused => Activation::Refused,
        IdClass::Failing => Activation::failed(FactoryFailure),
        IdClass::Normal if hooks.factory_panics => std::panic::panic_any(SCRIPTED_PANIC),
        IdClass::Normal => Activation::ready(Scripted {
            shared: shared.clone(),
            inst,
            version: 0,
            hooks,
        }),
    }
}

/// The factory's error for the failing ID.
#[derive(Debug)]
pub(crate) struct FactoryFailure;

impl fmt::Display for FactoryFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("scripted factory failure")
    }
}

impl std::error::Error for FactoryFailure {}

/// The error a driver that calls the factory itself reports when it panicked: the panic's
/// message.
#[derive(Debug)]
pub(crate) struct FactoryPanicked(pub(crate) std::sync::Arc<str>);

impl fmt::Display for FactoryPanicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the factory panicked: {}", self.0)
    }
}

impl std::error::Error for FactoryPanicked {}

/// The payload of every panic a script asks for; the checker's panic hook keeps these quiet.
pub(crate) const SCRIPTED_PANIC: &str = "hermes-check: scripted panic";

/// A receiver that runs the script each message names and records what it did.
pub(crate) struct Scripted {
    shared: Arc<Shared>,
    inst: u32,
    /// How many times this instance replaced its handler before this one.
    version: u32,
    hooks: Hooks,
}

impl Scripted {
    fn panic(&self) -> ! {
        self.shared.record(Event::Panicking);
        std::panic::panic_any(SCRIPTED_PANIC)
    }

    fn resolve(&self, ctx: &Context<'_, Id, Msg>, target: Target) -> Option<Recipient<Id>> {
        match target {
            Target::Id(id) => Some(Recipient::Id(id)),
            Target::Me => Some(Recipient::Addr(ctx.addr())),
            Target::Handle(k) => self.shared.journal().handle(k).map(Recipient::Addr),
        }
    }

    /// Sends a message naming `script` to `target`; `free` of the budget if `relay` and the
    /// receiver's router is [endless](Journal::endless).
    fn send(&self, ctx: &mut Context<'_, Id, Msg>, target: Target, script: u8, relay: bool) {
        let Some(to) = self.resolve(ctx, target) else {
            return;
        };
        let seq = {
            let mut j = self.shared.journal();
            let free = relay && j.endless[ctx.addr().router() as usize];
            if !j.spend(free) {
                return;
            }
            let seq = j.next_seq();
            j.events.push(Event::Sent {
                to: to.clone(),
                seq,
            });
            seq
        };
        let msg = Msg { seq, script };
        match to {
            Recipient::Id(id) => ctx.send(id, msg),
            Recipient::Addr(addr) => ctx.send_to(addr, msg),
        }
    }

    /// Carries out one instruction of `script`, the script of the message being handled.
    fn run(&mut self, ctx: &mut Context<'_, Id, Msg>, instr: Instr, script: u8) {
        match instr {
            Instr::Send { to, script } => self.send(ctx, to, script, false),
            Instr::Relay { to } => self.send(ctx, to, script, true),
            Instr::Schedule { to, after, script } => {
                let to = to.unwrap_or(*ctx.id());
                let mut j = self.shared.journal();
                if !j.spend(false) {
                    return;
                }
                let seq = j.next_seq();
                let timer = ctx.schedule_to(to, after, Msg { seq, script });
                j.timers.push(timer);
                let deadline = ctx.now().checked_add(after);
                j.events.push(Event::Scheduled {
                    timer,
                    to,
                    deadline,
                    seq,
                });
            }
            Instr::Cancel { timer } => {
                let mut j = self.shared.journal();
                if let Some(timer) = j.timer(timer) {
                    ctx.cancel(timer);
                    j.events.push(Event::Cancelled { timer });
                }
            }
            Instr::Become => {
                ctx.become_(Scripted {
                    shared: self.shared.clone(),
                    inst: self.inst,
                    version: self.version + 1,
                    hooks: self.hooks,
                });
                self.shared.record(Event::Became);
            }
            Instr::Stop => {
                ctx.stop();
                self.shared.record(Event::Stopped);
            }
            Instr::Panic => self.panic(),
            Instr::IdleTimeout { after } => {
                ctx.set_idle_timeout(after);
                self.shared.record(Event::IdleTimeout(after));
            }
        }
    }
}

impl Receiver<Id, Msg> for Scripted {
    fn activated(&mut self, _ctx: &mut Context<'_, Id, Msg>) {
        self.shared.record(Event::Activated { inst: self.inst });
        if self.hooks.activation_panics {
            self.panic();
        }
    }

    fn receive(&mut self, ctx: &mut Context<'_, Id, Msg>, msg: Msg) {
        self.shared.record(Event::Received {
            inst: self.inst,
            version: self.version,
            id: *ctx.id(),
            addr: ctx.addr(),
            seq: msg.seq,
            now: ctx.now(),
        });
        let shared = self.shared.clone();
        for &instr in shared.script(msg.script) {
            self.run(ctx, instr, msg.script);
        }
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, Id, Msg>, why: Deactivation) {
        self.shared.record(Event::Deactivated {
            inst: self.inst,
            version: self.version,
            id: *ctx.id(),
            why,
        });
        if let Some((to, script)) = self.hooks.farewell {
            self.send(ctx, to, script, false);
        }
        if self.hooks.deactivation_panics {
            self.panic();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_drain_uses_plain_hooks() {
        let plain = Hooks {
            factory_panics: false,
            activation_panics: false,
            farewell: None,
            deactivation_panics: false,
        };
        assert_eq!(Hooks::from_luck(crate::world::PLAIN_LUCK), plain);
    }
}
