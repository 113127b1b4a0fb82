//! Scripted receivers: each message names a script of instructions the receiver carries out, and
//! the receiver records everything it did in a shared journal, so the checker can compare what
//! happened with what the reference model says should have happened.
//!
//! Work that completes later is scripted too. A receiver spawns a future that is ready at once,
//! or one that waits on a gate the world answers (or drops) when the plan says, and asks other
//! receivers (or itself): the request carries a [`Reply`], which the asked receiver answers,
//! keeps to answer later, or drops. Every task's future holds a guard, and every request's reply
//! a box, that note in the journal when they are dropped unfinished: the world checks that
//! futures are dropped exactly when the router should drop them, and learns what each asker
//! will be answered.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Addr, AskError, Context, Deactivation, Receiver, Recipient, Reply, TimerId,
};

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

/// A message in the checker's world: a unique sequence number and the script the receiver runs;
/// a task's outcome carries what its future answered, and an ask's request the reply.
#[derive(Debug)]
pub struct Msg {
    pub(crate) seq: Seq,
    pub(crate) script: u8,
    /// A task's outcome: what its future answered.
    pub(crate) answer: Option<Answer>,
    /// An ask's request: the reply the asked receiver answers, keeps or drops.
    pub(crate) reply: Option<ReplyBox>,
}

impl Msg {
    /// A plain message.
    pub(crate) fn new(seq: Seq, script: u8) -> Msg {
        Msg {
            seq,
            script,
            answer: None,
            reply: None,
        }
    }
}

/// The unique number every message gets when it is created. A task is numbered by its outcome
/// message, made when the task is started; an ask's reply by its request.
pub(crate) type Seq = u64;

/// What a task's future answered: the value (a gate's or a ready future's: the task's number;
/// an ask's: the request's number), or why there is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    Value(u64),
    /// The gate or the reply was dropped unanswered.
    Dropped,
    /// The router expired the ask at its deadline.
    Timeout,
    /// Any other error: never expected.
    Other,
}

impl From<Result<u64, AskError>> for Answer {
    fn from(r: Result<u64, AskError>) -> Answer {
        match r {
            Ok(v) => Answer::Value(v),
            Err(AskError::Dropped) => Answer::Dropped,
            Err(AskError::Timeout) => Answer::Timeout,
            Err(_) => Answer::Other,
        }
    }
}

/// Something the journal notes when it is dropped unfinished.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Gone {
    /// The future of task `Seq`, before it finished.
    Future(Seq),
    /// The reply of request `Seq`, unanswered.
    Reply(Seq),
}

/// An ask's reply, as its request carries it: notes in the journal if it is dropped unanswered
/// (which answers the asker `AskError::Dropped`).
pub(crate) struct ReplyBox {
    req: Seq,
    reply: Option<Reply<u64>>,
    shared: Arc<Shared>,
}

impl ReplyBox {
    /// Answers with the request's number; true if the asker was still waiting.
    fn answer(mut self) -> (Seq, bool) {
        let reply = self.reply.take();
        (self.req, reply.is_some_and(|r| r.send(self.req).is_ok()))
    }
}

impl Drop for ReplyBox {
    fn drop(&mut self) {
        if self.reply.is_some() {
            self.shared.journal().gone.push(Gone::Reply(self.req));
        }
    }
}

impl fmt::Debug for ReplyBox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply(#{})", self.req)
    }
}

/// Held by a task's future (in the closure that maps its outcome to a message): notes in the
/// journal if the future is dropped before it finished.
struct FutureGuard {
    task: Seq,
    shared: Arc<Shared>,
    finished: bool,
}

impl FutureGuard {
    /// The future finished: its outcome becomes message `task`.
    fn outcome(mut self, script: u8, answer: Answer) -> Msg {
        self.finished = true;
        Msg {
            answer: Some(answer),
            ..Msg::new(self.task, script)
        }
    }
}

impl Drop for FutureGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.journal().gone.push(Gone::Future(self.task));
        }
    }
}

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
    /// The `deactivated` hook spawns work, which has no instance to come back to.
    pub(crate) hook_spawns: bool,
}

impl Hooks {
    /// Hooks from one byte of input; most bytes give plain hooks.
    pub(crate) fn from_luck(luck: u8) -> Hooks {
        Hooks {
            factory_panics: luck % 13 == 12,
            activation_panics: luck < 10,
            farewell: (luck % 5 == 1).then(|| (Target::from_byte(luck / 5), luck / 3)),
            deactivation_panics: luck % 16 == 15,
            hook_spawns: luck % 7 == 2,
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
    /// Started work: its future is ready at once, or (`gate`) waits for the world.
    Spawned {
        task: Seq,
        gate: bool,
    },
    /// Asked `to` with request `req` (recorded as sent just before).
    Asked {
        task: Seq,
        req: Seq,
        to: Id,
        /// `None`: past the end of representable time, never.
        deadline: Option<Instant>,
    },
    /// Answered the reply of request `req`; `ok`: its asker was still waiting.
    Answered {
        req: Seq,
        ok: bool,
    },
    /// Kept the reply of request `req`, to answer later.
    Kept {
        req: Seq,
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
    /// Futures and replies dropped unfinished, in order, since the world last looked.
    pub(crate) gone: Vec<Gone>,
    /// The gates of spawned work, for the world to answer or drop: (task, gate).
    pub(crate) gates: Vec<(Seq, Reply<u64>)>,
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
                gone: Vec::new(),
                gates: Vec::new(),
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
            kept: Arc::default(),
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
    /// Replies kept to answer later, oldest first: the instance's, shared by its handlers, and
    /// dropped with it.
    kept: Arc<Mutex<VecDeque<ReplyBox>>>,
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
        let msg = Msg::new(seq, script);
        match to {
            Recipient::Id(id) => ctx.send(id, msg),
            Recipient::Addr(addr) => ctx.send_to(addr, msg),
        }
    }

    /// Starts work whose outcome names `script`: ready at once, or (`gate`) when the world
    /// answers or drops its gate.
    fn spawn(&self, ctx: &mut Context<'_, Id, Msg>, gate: bool, script: u8) {
        let (guard, asked) = {
            let mut j = self.shared.journal();
            if !j.spend(false) {
                return;
            }
            let task = j.next_seq();
            j.events.push(Event::Spawned { task, gate });
            let asked = gate.then(|| {
                let (reply, asked) = Reply::new();
                j.gates.push((task, reply));
                asked
            });
            let guard = FutureGuard {
                task,
                shared: self.shared.clone(),
                finished: false,
            };
            (guard, asked)
        };
        let value = guard.task;
        let map = move |r: Result<u64, AskError>| guard.outcome(script, r.into());
        match asked {
            Some(asked) => ctx.spawn(asked, map),
            None => ctx.spawn(std::future::ready(Ok(value)), map),
        }
    }

    /// Asks `to` with a request naming `script`; the answer comes back naming `reply_script`.
    fn ask(
        &self,
        ctx: &mut Context<'_, Id, Msg>,
        to: Id,
        (script, reply_script): (u8, u8),
        timeout: Duration,
    ) {
        let (guard, req) = {
            let mut j = self.shared.journal();
            if !j.spend(false) {
                return;
            }
            let task = j.next_seq();
            let req = j.next_seq();
            j.events.push(Event::Sent {
                to: Recipient::Id(to),
                seq: req,
            });
            j.events.push(Event::Asked {
                task,
                req,
                to,
                deadline: ctx.now().checked_add(timeout),
            });
            let guard = FutureGuard {
                task,
                shared: self.shared.clone(),
                finished: false,
            };
            (guard, req)
        };
        let shared = self.shared.clone();
        let make = move |reply| Msg {
            reply: Some(ReplyBox {
                req,
                reply: Some(reply),
                shared,
            }),
            ..Msg::new(req, script)
        };
        let map = move |r: Result<u64, AskError>| guard.outcome(reply_script, r.into());
        ctx.ask(to, make, timeout, map);
    }

    /// Answers `reply` and notes it.
    fn answer(&self, reply: ReplyBox) {
        let (req, ok) = reply.answer();
        self.shared.record(Event::Answered { req, ok });
    }

    /// Carries out one instruction of `script`, the script of the message being handled, whose
    /// reply (an ask's request) is `reply`.
    fn run(
        &mut self,
        ctx: &mut Context<'_, Id, Msg>,
        instr: Instr,
        script: u8,
        reply: &mut Option<ReplyBox>,
    ) {
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
                let timer = ctx.schedule_to(to, after, Msg::new(seq, script));
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
                    kept: self.kept.clone(),
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
            Instr::Spawn { gate, script } => self.spawn(ctx, gate, script),
            Instr::Ask {
                to,
                script: request,
                reply_script,
                timeout,
            } => {
                let to = to.unwrap_or(*ctx.id());
                self.ask(ctx, to, (request, reply_script), timeout);
            }
            Instr::Answer => {
                if let Some(reply) = reply.take() {
                    self.answer(reply);
                }
            }
            Instr::Keep => {
                if let Some(reply) = reply.take() {
                    self.shared.record(Event::Kept { req: reply.req });
                    self.kept
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back(reply);
                }
            }
            Instr::AnswerKept => {
                let kept = self
                    .kept
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .pop_front();
                if let Some(reply) = kept {
                    self.answer(reply);
                }
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

    fn receive(&mut self, ctx: &mut Context<'_, Id, Msg>, mut msg: Msg) {
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
            self.run(ctx, instr, msg.script, &mut msg.reply);
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
        if self.hooks.hook_spawns {
            self.spawn(ctx, true, 0);
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
            hook_spawns: false,
        };
        assert_eq!(Hooks::from_luck(crate::world::PLAIN_LUCK), plain);
    }
}
