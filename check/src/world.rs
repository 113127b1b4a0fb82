//! The world: one or two real routers and their models, a driver that handles commands in every
//! order an executor may, a ledger of every message, and the checks run after every step.
//!
//! The driver also runs the tasks receivers start, as an executor's runtime would: it takes them
//! from the routers, polls their futures (any of them, in any order, late or never), gives their
//! outcomes back, and answers or drops the gates of spawned work. What each poll yields is
//! predicted: the answer, `Timeout` once the router expired an ask whose reply was still open
//! (an answer or a drop that came first wins the race), `None` once it aborted the task, or pending (and then a later ready poll requires the task's waker to have been woken).
//! Every future dropped unfinished, and every reply dropped unanswered, is checked against when
//! it should be dropped.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Wake, Waker};
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Addr, Command, Config, Context, Deactivation, DeadLetter, DeadLetterReason, Done,
    Job, Location, Outbound, Recipient, Reply, Router, SendError, SendErrorKind, Stats, Task,
    TaskId, TimerId, panic_message,
};

use crate::kinds::{self, kind_of};
use crate::model::{self, ECmd, End, Kind, MJob, MState, Made, Model, Outcome, Reason, Refusal};
use crate::plan::{Mode, Op, Plan};
use crate::script::{
    self, Answer, Event, FactoryPanicked, Gone, Hooks, Id, IdClass, Msg, Seq, Shared, is_head,
};
use crate::violation::{Broken, Checked, Invariant, broken, ensure};
use crate::{Summary, Tweak};

/// Sends and timers all scripted receivers together may create in one run.
const BUDGET: u32 = 300;
/// Steps the final drain may take before it is declared stuck.
const SETTLE_LIMIT: usize = 100_000;
/// A `luck` byte that gives plain hooks, for the final drain.
pub(crate) const PLAIN_LUCK: u8 = 200;
/// The number of the first outside timer the world numbers itself: just below 2^32, so the
/// numbers soon cross into the bits a timer ID keeps apart from the low 32.
const FIRST_NUMBERED_TIMER: u64 = (1 << 32) - 3;

/// Who sent a message, for the per-sender order check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Sender {
    /// Outside, through router `n`.
    Outside(usize),
    Receiver(Id),
    Timer,
    /// A task's outcome, given back by the driver.
    Task,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Status {
    Pending,
    Delivered,
    Dead,
    /// Created by a handler that then panicked: never sent.
    Void,
    /// A timer's message whose timer was cancelled.
    Cancelled,
    /// A dead letter the router dropped, counted, because nobody polled the ones before it.
    Dropped,
}

/// Every message the world created, and what became of it.
struct Entry {
    sender: Sender,
    to: Recipient<Id>,
    /// A timer's message: its deadline ([`model::NEVER`]: never due).
    deadline: Option<Duration>,
    status: Status,
    /// A task's outcome: the instance it must reach, if any.
    owner: Option<u32>,
}

/// What became of a task's future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fut {
    Alive,
    /// It finished (the world polled its outcome).
    Finished,
    /// Dropped unfinished.
    Dropped,
}

/// What a task waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    /// Nothing: ready at once.
    Ready,
    /// The gate the world answers or drops.
    Gate,
    /// The answer to request `req`, sent to `to`.
    Ask { req: Seq, to: Id },
}

/// What became of a reply (a gate, or an ask's reply).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Open,
    /// Answered; `true` if its asker was still waiting.
    Answered(bool),
    Dropped,
}

/// What the world knows of one task.
struct TaskRec {
    router: usize,
    owner: Id,
    inst: u32,
    /// The handle of the instance that started it.
    addr: Addr,
    work: Work,
    future: Fut,
    /// The gate's fate (spawned work waiting for the world).
    gate: Fate,
    /// The router aborted it.
    aborted: bool,
    /// The waker of its last poll, if that poll was pending.
    waker: Option<Arc<Woken>>,
    /// An ask the router expired while its reply was open: it answers `Timeout` (a reply
    /// answered or dropped first wins the race, and the expiry does nothing).
    timed_out: bool,
}

/// An ask's reply: whose it is, what became of it, and which instance keeps it.
struct ReplyRec {
    task: Seq,
    fate: Fate,
    kept_by: Option<u32>,
}

/// A task's waker: notes that it was woken.
#[derive(Default)]
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// What the world knows of one instance a factory made.
struct InstRec {
    id: Id,
    activated: bool,
    activation_panicked: bool,
    deactivations: u32,
}

enum JobState {
    Out(Job<Id, Msg>),
    Ran(Done<Id, Msg>, Outcome),
    /// Briefly, while the job runs.
    Running,
}

struct InFlight {
    router: usize,
    model: MJob,
    state: JobState,
}

/// What one router call produced.
struct Output {
    commands: Vec<Command>,
    /// `None`: dead letters were not polled this time.
    dead: Option<Vec<DeadLetter<Id, Msg>>>,
    outbound: Vec<(Recipient<Id>, Msg)>,
    /// Cancellations of timers held by another router.
    cancels: Vec<(Location, TimerId)>,
}

/// Work on its way from one router to another.
enum Transit {
    Message(Recipient<Id>, Msg),
    Cancel(TimerId),
}

pub(crate) struct World {
    routers: Vec<Router<Id, Msg>>,
    models: Vec<Model>,
    shared: Arc<Shared>,
    base: Instant,
    now: Duration,
    /// Commands taken from the routers and not handled yet, in the order they came.
    pending: Vec<(usize, Command)>,
    jobs: Vec<InFlight>,
    /// Messages between routers, per destination, oldest first.
    transit: Vec<VecDeque<Transit>>,
    ledger: HashMap<Seq, Entry>,
    /// The last message delivered per (sender, receiver).
    last_from: HashMap<(Sender, Id), Seq>,
    instances: BTreeMap<u32, InstRec>,
    next_inst: u32,
    /// Receivers with a job checked out.
    busy: HashSet<(usize, Id)>,
    /// Outside timers are numbered here and scheduled with `Router::schedule_as`.
    numbered_timers: bool,
    /// Relays on a closing router are free of the budget: only the (small) drain limit ends
    /// them.
    endless_relays: bool,
    /// The final close comes before the final drain.
    close_busy: bool,
    /// Dead letters are polled only on `handle_timeout` (and at the end), not after every call.
    lazy_dead_letters: bool,
    /// Per router, the dead letters expected since the last poll (lazy polling).
    unpolled: Vec<Vec<model::EDead>>,
    /// Per router, `Stats::dead_letters_dropped` at the last poll.
    dropped_seen: Vec<u64>,
    /// The next number of an outside timer, per router, when the world numbers them.
    outside_timers: Vec<u64>,
    /// The routers have kinds.
    kinds: bool,
    /// Every task a receiver started, by number.
    tasks: BTreeMap<Seq, TaskRec>,
    /// Tasks taken from the routers, their futures not finished: (task, handle).
    held: Vec<(Seq, Task<Msg>)>,
    /// Outcomes of finished tasks, not given back yet: (task, ID, outcome).
    finished: Vec<(Seq, TaskId, Msg)>,
    /// The IDs of every task taken, to check they are unique.
    task_ids: HashSet<TaskId>,
    /// Gates not answered or dropped yet: (task, gate).
    gates: Vec<(Seq, Reply<u64>)>,
    /// Every ask's reply, by request.
    replies: HashMap<Seq, ReplyRec>,
    /// Futures and replies that must be dropped by the end of the call in progress.
    to_go: Vec<Gone>,
    pub(crate) summary: Summary,
}

impl World {
    pub(crate) fn new(plan: &Plan, tweak: Option<&Tweak>) -> World {
        let n: u32 = if plan.two_routers { 2 } else { 1 };
        let mut config = Config::default()
            .idle_timeout(plan.idle_timeout)
            .batch_size(plan.batch_size);
        if let Some(cap) = plan.mailbox_capacity {
            config = config.mailbox_capacity(cap);
        }
        if let Some(limit) = plan.drain_limit {
            config = config.drain_limit(limit);
        }
        if let Some(capacity) = plan.dead_letter_capacity {
            config = config.dead_letter_capacity(capacity);
        }
        let mut routers = Vec::new();
        let mut models = Vec::new();
        for number in 0..n {
            let mut router = if n == 1 {
                Router::new(config.clone())
            } else {
                let placement = move |id: &Id| Location::Shard(model::owner(*id, n));
                Router::placed(config.clone(), number, Arc::new(placement))
            };
            router.use_kinds(plan.kinds.as_deref().map(kinds::table));
            if plan.numbered_timers {
                // As the executors' shards do too; stamped right after each inline run (below),
                // at the run's own time, so the model is the same.
                router.defer_idle_time();
            }
            if let Some(tweak) = tweak {
                tweak(&mut router);
            }
            routers.push(router);
            models.push(Model::new(number, n, &config, plan.kinds.clone()));
        }
        World {
            routers,
            models,
            shared: Shared::new(plan.scripts.clone(), BUDGET, n as usize),
            base: Instant::now(),
            now: Duration::ZERO,
            pending: Vec::new(),
            jobs: Vec::new(),
            transit: (0..n).map(|_| VecDeque::new()).collect(),
            ledger: HashMap::new(),
            last_from: HashMap::new(),
            instances: BTreeMap::new(),
            next_inst: 0,
            busy: HashSet::new(),
            numbered_timers: plan.numbered_timers,
            endless_relays: plan.drain_limit.is_some(),
            close_busy: plan.close_busy,
            lazy_dead_letters: plan.dead_letter_capacity.is_some(),
            unpolled: (0..n).map(|_| Vec::new()).collect(),
            dropped_seen: vec![0; n as usize],
            outside_timers: vec![FIRST_NUMBERED_TIMER; n as usize],
            kinds: plan.kinds.is_some(),
            tasks: BTreeMap::new(),
            held: Vec::new(),
            finished: Vec::new(),
            task_ids: HashSet::new(),
            gates: Vec::new(),
            replies: HashMap::new(),
            to_go: Vec::new(),
            summary: Summary::default(),
        }
    }

    fn at(&self) -> Instant {
        self.base + self.now
    }

    fn pick_router(&self, r: u8) -> usize {
        usize::from(r) % self.routers.len()
    }

    /// A picture of the models, for violation reports.
    pub(crate) fn describe(&self) -> String {
        let mut lines: Vec<String> = self.models.iter().map(Model::describe).collect();
        lines.push(format!(
            "now {:?}; pending commands {:?}; jobs out {:?}",
            self.now,
            self.pending,
            self.jobs
                .iter()
                .map(|j| (j.router, j.model.id))
                .collect::<Vec<_>>()
        ));
        let tasks: Vec<String> = self
            .tasks
            .iter()
            .filter(|(_, t)| t.future == Fut::Alive)
            .map(|(n, t)| format!("#{n} of {:?}/{} {:?}", t.owner, t.inst, t.work))
            .collect();
        lines.push(format!(
            "live futures [{}]; held {:?}; finished {:?}; open gates {:?}",
            tasks.join(", "),
            self.held.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            self.finished.iter().map(|(n, ..)| n).collect::<Vec<_>>(),
            self.gates.iter().map(|(n, _)| n).collect::<Vec<_>>()
        ));
        lines.join("\n")
    }

    // ---- operations ---------------------------------------------------------------------------

    pub(crate) fn step(&mut self, op: Op) -> Checked {
        self.summary.steps += 1;
        self.operate(op)?;
        // Nothing is dropped between router calls but what the world itself drops.
        self.check_gone()
    }

    fn operate(&mut self, op: Op) -> Checked {
        match op {
            Op::Send { router, to, script } => {
                let r = self.pick_router(router);
                self.send_outside(r, Recipient::Id(to), script)
            }
            Op::SendHandle {
                router,
                handle,
                script,
            } => {
                let Some(addr) = self.shared.journal().handle(handle) else {
                    return Ok(());
                };
                let r = self.pick_router(router);
                self.send_outside(r, Recipient::Addr(addr), script)
            }
            Op::Schedule {
                router,
                to,
                after,
                script,
            } => self.schedule_outside(self.pick_router(router), to, after, script),
            Op::Cancel { router, timer } => {
                let Some(id) = self.shared.journal().timer(timer) else {
                    return Ok(());
                };
                let r = self.pick_router(router);
                let got = self.routers[r].cancel(id);
                let expected = self.models[r].cancel(id).is_some();
                ensure!(
                    got == expected,
                    Timers,
                    "router {r} cancel({id:?}) returned {got}; the timer was {}pending",
                    if expected { "" } else { "not " }
                );
                self.observe(r)
            }
            Op::Handle { which, mode, luck } => {
                if self.pending.is_empty() {
                    return Ok(());
                }
                let (r, command) = self.pending.remove(usize::from(which) % self.pending.len());
                self.handle(r, command, mode, luck)
            }
            Op::Execute { which } => {
                let out: Vec<usize> = (0..self.jobs.len())
                    .filter(|&k| matches!(self.jobs[k].state, JobState::Out(_)))
                    .collect();
                if out.is_empty() {
                    return Ok(());
                }
                self.execute(out[usize::from(which) % out.len()])
            }
            Op::CheckIn { which } => {
                if self.jobs.is_empty() {
                    return Ok(());
                }
                self.check_in(usize::from(which) % self.jobs.len())
            }
            Op::Forward { count } => {
                let d = usize::from(count) % self.transit.len();
                for _ in 0..count {
                    self.forward(d)?;
                }
                Ok(())
            }
            Op::Advance { by } => {
                self.now += by;
                Ok(())
            }
            Op::AdvanceToDeadline { early } => {
                if let Some(next) = self.next_deadline() {
                    let target = next.saturating_sub(Duration::from_millis(early.into()));
                    self.now = self.now.max(target);
                }
                Ok(())
            }
            Op::Tick { router } => self.tick(self.pick_router(router)),
            Op::Close { router } => self.close(self.pick_router(router)),
            Op::Misuse { handle, kind } => self.misuse(handle, kind),
            Op::Lookup { handle, to } => self.lookup(handle, to),
            Op::TakeTask { router } => self.take_task(self.pick_router(router)),
            Op::PollTask { which } => match self.held.len() {
                0 => Ok(()),
                n => self.poll_task(usize::from(which) % n),
            },
            Op::Complete { which, stray } => match self.finished.len() {
                0 => Ok(()),
                n => self.complete(usize::from(which) % n, stray),
            },
            Op::Resolve { which, answer } => match self.gates.len() {
                0 => Ok(()),
                n => self.resolve(usize::from(which) % n, answer),
            },
        }
    }

    fn new_seq(&self) -> Seq {
        self.shared.journal().next_seq()
    }

    fn accept(&mut self, seq: Seq, sender: Sender, to: Recipient<Id>, deadline: Option<Duration>) {
        self.summary.messages += 1;
        self.summary.by_handle += u64::from(matches!(to, Recipient::Addr(_)));
        self.summary.timers_never += u64::from(deadline == Some(model::NEVER));
        self.ledger.insert(
            seq,
            Entry {
                sender,
                to,
                deadline,
                status: Status::Pending,
                owner: None,
            },
        );
    }

    fn send_outside(&mut self, r: usize, to: Recipient<Id>, script: u8) -> Checked {
        let seq = self.new_seq();
        let msg = Msg::new(seq, script);
        let got = match to.clone() {
            Recipient::Id(id) => self.routers[r].send(id, msg),
            Recipient::Addr(addr) => self.routers[r].send_to(addr, msg),
        };
        let expected = self.models[r].route(to.clone(), seq, true);
        match (got, expected) {
            (Ok(()), Ok(())) => self.accept(seq, Sender::Outside(r), to, None),
            (Err(e), Err(refusal)) => {
                let kind = e.kind();
                ensure!(
                    e.into_inner().seq == seq,
                    Model,
                    "router {r} refused a send to {to:?} and gave back another message"
                );
                if kind != send_error_kind(refusal) {
                    return Err(Broken {
                        invariant: reason_invariant(refusal.into()),
                        detail: format!(
                            "router {r} refused a send to {to:?} as {kind:?}; the model says \
                             {refusal:?}"
                        ),
                    });
                }
                self.summary.refused += 1;
                self.count_refusal(refusal.into());
            }
            (Ok(()), Err(refusal)) => {
                return Err(Broken {
                    invariant: reason_invariant(refusal.into()),
                    detail: format!(
                        "router {r} accepted an outside send to {to:?} that it must refuse as \
                         {refusal:?}"
                    ),
                });
            }
            (Err(e), Ok(())) => broken!(
                Model,
                "router {r} refused an outside send to {to:?} as {:?}; the model accepts it",
                e.kind()
            ),
        }
        self.observe(r)
    }

    fn schedule_outside(&mut self, r: usize, to: Id, after: Duration, script: u8) -> Checked {
        let seq = self.new_seq();
        let deadline = model::deadline(self.base, self.now, after);
        // `None` (a delay past the end of representable time): a timer that never fires.
        let at = self.at().checked_add(after);
        let msg = Msg::new(seq, script);
        let got = if self.numbered_timers {
            let id = TimerId::outside(r as u32, self.outside_timers[r]);
            self.outside_timers[r] += 1;
            self.routers[r].schedule_as(id, to, at, msg).map(|()| id)
        } else {
            self.routers[r].schedule(to, at, msg)
        };
        match got {
            Ok(id) => {
                ensure!(
                    id.router() == r as u32,
                    Timers,
                    "router {r} gave an outside timer the ID {id:?}, which names another router"
                );
                ensure!(
                    !self.models[r].closing,
                    Close,
                    "router {r} accepted an outside timer while closing"
                );
                self.shared.journal().timers.push(id);
                self.models[r].schedule(id, to, deadline, seq);
                self.accept(seq, Sender::Timer, Recipient::Id(to), Some(deadline));
            }
            Err(e) => {
                ensure!(
                    self.models[r].closing && matches!(e, SendError::Closed(_)),
                    Model,
                    "router {r} refused an outside timer as {:?} while open",
                    e.kind()
                );
                self.summary.refused += 1;
            }
        }
        self.observe(r)
    }

    fn handle(&mut self, r: usize, command: Command, mode: Mode, luck: u8) -> Checked {
        let addr = command.addr();
        let Some(i) = self.models[r].slot_by_addr(addr) else {
            broken!(
                Model,
                "router {r} emitted {command:?} for a receiver the model does not know"
            );
        };
        let id = self.models[r].slots[i].id;
        match command {
            Command::Activate(_) => {
                let inst = self.next_inst;
                let hooks = Hooks::from_luck(luck);
                let made = match id.class() {
                    IdClass::Refused => Made::Refused,
                    IdClass::Failing => Made::Failed,
                    // Inside `Router::handle` the router catches the panic and counts it; a
                    // driver that calls the factory itself (below) catches it, as an executor
                    // running factories elsewhere would, and reports a plain failure.
                    IdClass::Normal if hooks.factory_panics => match mode {
                        Mode::Inline => Made::Panicked,
                        Mode::CheckOut => Made::Failed,
                    },
                    IdClass::Normal => {
                        self.next_inst += 1;
                        self.instances.insert(
                            inst,
                            InstRec {
                                id,
                                activated: false,
                                activation_panicked: false,
                                deactivations: 0,
                            },
                        );
                        Made::Ready(inst)
                    }
                };
                let now = self.at();
                let result = match mode {
                    Mode::Inline => {
                        let shared = self.shared.clone();
                        let factory = move |id: &Id| script::activation(&shared, *id, inst, hooks);
                        self.routers[r].handle(command, &factory, now)
                    }
                    Mode::CheckOut => {
                        // As an executor does when it calls the factory on another thread.
                        let activation = catch_unwind(AssertUnwindSafe(|| {
                            script::activation(&self.shared, id, inst, hooks)
                        }))
                        .unwrap_or_else(|panic| {
                            Activation::failed(FactoryPanicked(panic_message(panic)))
                        });
                        self.routers[r].activate(addr, activation)
                    }
                };
                ensure!(
                    result.is_ok(),
                    Model,
                    "router {r} refused to complete its own {command:?}: {result:?}"
                );
                ensure!(
                    self.models[r].activate(addr, made).is_ok(),
                    Model,
                    "the model cannot complete {command:?}"
                );
                self.summary.activations += u64::from(matches!(made, Made::Ready(_)));
                self.summary.factory_panics +=
                    u64::from(hooks.factory_panics && id.class() == IdClass::Normal);
                self.observe(r)
            }
            Command::Run(_) | Command::Deactivate(_) => {
                let Ok(job_model) = self.models[r].check_out(addr) else {
                    broken!(
                        Model,
                        "router {r} emitted {command:?}, but the model has {:?} in state {:?}",
                        id,
                        self.models[r].slots[i].state
                    );
                };
                match mode {
                    Mode::Inline => {
                        self.shared.journal().events.clear();
                        let now = self.at();
                        let refused = |_: &Id| Activation::Refused;
                        let result = self.routers[r].handle(command, &refused, now);
                        if self.routers[r].has_unstamped() {
                            self.routers[r].stamp_idle(now);
                        }
                        ensure!(
                            result.is_ok(),
                            Model,
                            "router {r} refused to run its own {command:?}: {result:?}"
                        );
                        let events = std::mem::take(&mut self.shared.journal().events);
                        let outcome = self.executed(&job_model, &events)?;
                        self.checked_in(r, &job_model, &outcome)
                    }
                    Mode::CheckOut => {
                        let job = match self.routers[r].check_out(addr) {
                            Ok(job) => job,
                            Err(e) => broken!(
                                Model,
                                "router {r} refused to check out its own {command:?}: {e}"
                            ),
                        };
                        ensure!(
                            self.busy.insert((r, id)),
                            OneAtATime,
                            "{id:?} was checked out a second time while a job of it was out"
                        );
                        // Past the drain limit, a `Run` already out finds an empty mailbox.
                        ensure!(
                            job.is_empty() == matches!(command, Command::Deactivate(_))
                                || self.models[r].drained(),
                            Resources,
                            "{command:?} checked out a job of {} messages: work for a receiver \
                             with nothing to do",
                            job.len()
                        );
                        ensure!(
                            job.len() == job_model.len() && job.addr() == addr && *job.id() == id,
                            Model,
                            "check-out of {id:?} gave a job of {} messages for {:?}; the model \
                             expected {} for {addr:?}",
                            job.len(),
                            job.addr(),
                            job_model.len()
                        );
                        self.jobs.push(InFlight {
                            router: r,
                            model: job_model,
                            state: JobState::Out(job),
                        });
                        self.observe(r)
                    }
                }
            }
        }
    }

    /// Runs checked-out job `k` at the current time.
    fn execute(&mut self, k: usize) -> Checked {
        let now = self.at();
        let job = match std::mem::replace(&mut self.jobs[k].state, JobState::Running) {
            JobState::Out(job) => job,
            other => {
                self.jobs[k].state = other;
                return Ok(());
            }
        };
        self.shared.journal().events.clear();
        let done = job.execute(now);
        let events = std::mem::take(&mut self.shared.journal().events);
        let model = self.jobs[k].model.clone();
        let outcome = self.executed(&model, &events)?;
        self.jobs[k].state = JobState::Ran(done, outcome);
        self.check_gone()
    }

    fn check_in(&mut self, k: usize) -> Checked {
        self.execute(k)?;
        let flight = self.jobs.remove(k);
        let JobState::Ran(done, outcome) = flight.state else {
            unreachable!("executed above")
        };
        let r = flight.router;
        let now = self.at();
        let result = self.routers[r].check_in(done, now);
        ensure!(
            result.is_ok(),
            Model,
            "router {r} refused the check-in of a job of {:?}: {result:?}",
            flight.model.id
        );
        self.busy.remove(&(r, flight.model.id));
        self.checked_in(r, &flight.model, &outcome)
    }

    /// Checks what a job's receiver did; the job ran just now.
    fn executed(&mut self, job: &MJob, events: &[Event]) -> Checked<Outcome> {
        for (k, e) in events.iter().enumerate() {
            match *e {
                Event::Received {
                    id,
                    addr,
                    seq,
                    now,
                    inst,
                    ..
                } => {
                    ensure!(
                        now == self.at(),
                        Timers,
                        "{id:?} handled #{seq} with ctx.now() {:?} at {:?}: timers it schedules \
                         would be due at the wrong time",
                        now.saturating_duration_since(self.base),
                        self.now
                    );
                    let now = self.now;
                    // A message its handler panicked on is reported as a dead letter at check-in.
                    let panicked = events[k + 1..]
                        .iter()
                        .take_while(|e| !is_head(e))
                        .any(|e| matches!(e, Event::Panicking));
                    self.delivered((id, addr, inst), seq, now, panicked)?;
                }
                Event::Deactivated { inst, why, .. } => {
                    let Some(rec) = self.instances.get_mut(&inst) else {
                        broken!(Model, "the deactivated hook ran on unknown instance {inst}");
                    };
                    ensure!(
                        rec.activated,
                        Deactivation,
                        "instance {inst} of {:?} was deactivated ({why:?}) before its activated \
                         hook ran",
                        rec.id
                    );
                    ensure!(
                        rec.deactivations == 0,
                        Deactivation,
                        "instance {inst} of {:?} was deactivated twice (now {why:?})",
                        rec.id
                    );
                    rec.deactivations += 1;
                    self.summary.deactivations += 1;
                    self.summary.idle_deactivations += u64::from(why == Deactivation::IdleTimeout);
                }
                _ => {}
            }
        }
        let outcome = model::interpret(job, events, self.base)?;
        self.job_tasks(job, events)?;
        if let Some(rec) = self.instances.get_mut(&job.inst) {
            if outcome.activated {
                ensure!(
                    !rec.activated,
                    Model,
                    "the activated hook of instance {} of {:?} ran twice",
                    job.inst,
                    job.id
                );
                rec.activated = true;
            }
            if outcome.end == End::ActivationPanicked {
                rec.activation_panicked = true;
            }
        }
        if matches!(outcome.end, End::Panicked(_) | End::ActivationPanicked) {
            self.summary.panics += 1;
        }
        self.summary.becomes += u64::from(outcome.version - job.version);
        self.summary.stops += u64::from(outcome.end == End::Stopped);
        self.summary.never_idle += u64::from(
            outcome
                .idle
                .is_some_and(|d| model::idle_override(d) == model::NEVER),
        );
        Ok(outcome)
    }

    /// The tasks a job started, and the replies it answered, kept or dropped (see
    /// [`Event`]): recorded, and the futures and replies it dropped expected gone.
    fn job_tasks(&mut self, job: &MJob, events: &[Event]) -> Checked {
        let mut heads = events
            .iter()
            .enumerate()
            .filter(|(_, e)| is_head(e))
            .map(|(k, _)| k)
            .peekable();
        while let Some(start) = heads.next() {
            let end = heads.peek().copied().unwrap_or(events.len());
            let effects = &events[start + 1..end];
            let void = effects.iter().any(|e| matches!(e, Event::Panicking));
            // A request handled without being answered or kept: its reply goes with it.
            if let Event::Received { seq, .. } = events[start]
                && self.replies.contains_key(&seq)
                && !effects.iter().any(|e| {
                    matches!(e, Event::Answered { req, .. } | Event::Kept { req } if *req == seq)
                })
            {
                self.to_go.push(Gone::Reply(seq));
            }
            for e in effects {
                match *e {
                    Event::Spawned { task, gate } => {
                        let work = if gate { Work::Gate } else { Work::Ready };
                        self.new_task(task, job, work, void);
                    }
                    Event::Asked { task, req, to, .. } => {
                        self.new_task(task, job, Work::Ask { req, to }, void);
                        self.summary.asks += u64::from(!void);
                        self.replies.insert(
                            req,
                            ReplyRec {
                                task,
                                fate: Fate::Open,
                                kept_by: None,
                            },
                        );
                        if void {
                            // Its request was never sent: dropped with the handler's effects.
                            self.to_go.push(Gone::Reply(req));
                        }
                    }
                    Event::Answered { req, ok } => {
                        let task = self.open_reply(req, Fate::Answered(ok))?;
                        let asker = &self.tasks[&task];
                        // Its asker waits unless its future is gone or its deadline won.
                        ensure!(
                            ok == (asker.future == Fut::Alive && !asker.timed_out),
                            Model,
                            "{:?} answered #{req} and its asker (task #{task} of {:?}) was \
                             {}waiting; its future is {:?}{}",
                            job.id,
                            asker.owner,
                            if ok { "" } else { "not " },
                            asker.future,
                            if asker.timed_out { ", timed out" } else { "" }
                        );
                    }
                    Event::Kept { req } => {
                        if let Some(reply) = self.replies.get_mut(&req) {
                            reply.kept_by = Some(job.inst);
                        }
                    }
                    _ => {}
                }
            }
        }
        let gates = std::mem::take(&mut self.shared.journal().gates);
        self.gates.extend(gates);
        Ok(())
    }

    /// Settles the open reply of request `req` as `fate` (answered or dropped: once); its
    /// asker's task.
    fn open_reply(&mut self, req: Seq, fate: Fate) -> Checked<Seq> {
        match self.replies.get_mut(&req) {
            Some(reply) if reply.fate == Fate::Open => {
                reply.fate = fate;
                reply.kept_by = None;
                Ok(reply.task)
            }
            Some(reply) => broken!(
                ExactlyOnce,
                "the reply of #{req} was {fate:?} after it was {:?}",
                reply.fate
            ),
            None => broken!(
                Model,
                "the reply of #{req}, which no ask sent, was {fate:?}"
            ),
        }
    }

    /// A task a job started; `void` if its handler panicked (its future is dropped now).
    fn new_task(&mut self, task: Seq, job: &MJob, work: Work, void: bool) {
        if void {
            self.to_go.push(Gone::Future(task));
        }
        self.tasks.insert(
            task,
            TaskRec {
                router: job.addr.router() as usize,
                owner: job.id,
                inst: job.inst,
                addr: job.addr,
                work,
                future: Fut::Alive,
                gate: Fate::Open,
                aborted: false,
                waker: None,
                timed_out: false,
            },
        );
    }

    /// The ledger's side of a delivery: exactly once, to the right receiver (and a task's
    /// outcome to the instance that started it), in sender order, never before a timer's
    /// deadline.
    fn delivered(
        &mut self,
        (id, addr, inst): (Id, Addr, u32),
        seq: Seq,
        now: Duration,
        panicked: bool,
    ) -> Checked {
        let Some(entry) = self.ledger.get_mut(&seq) else {
            broken!(
                ExactlyOnce,
                "{id:?} received #{seq}, which was never accepted (rolled back or refused)"
            );
        };
        match entry.status {
            Status::Pending => {}
            Status::Cancelled => {
                broken!(Timers, "{id:?} received #{seq}, whose timer was cancelled")
            }
            status if entry.deadline.is_some() => {
                broken!(
                    Timers,
                    "timer message #{seq} fired again after it was {status:?}"
                )
            }
            status => broken!(
                ExactlyOnce,
                "{id:?} received #{seq}, which was already {status:?}"
            ),
        }
        match entry.to {
            Recipient::Id(to) => ensure!(
                to == id,
                ExactlyOnce,
                "#{seq} for {to:?} was delivered to {id:?}"
            ),
            Recipient::Addr(to) => ensure!(
                to == addr,
                StaleHandles,
                "#{seq}, sent by handle {to:?}, reached {id:?} at {addr:?}"
            ),
        }
        if let Some(deadline) = entry.deadline {
            ensure!(
                now >= deadline,
                Timers,
                "timer message #{seq} for {id:?} was handled at {now:?}, before its deadline \
                 {deadline:?}"
            );
        }
        if let Some(owner) = entry.owner {
            ensure!(
                inst == owner,
                StaleHandles,
                "the outcome #{seq} of a task instance {owner} of {id:?} started reached \
                 instance {inst}"
            );
            self.summary.outcomes += u64::from(!panicked);
        }
        if !panicked {
            entry.status = Status::Delivered;
            self.summary.delivered += 1;
            if let Sender::Receiver(from) = entry.sender
                && self.kinds
                && kind_of(from) != kind_of(id)
            {
                self.summary.cross_kind += 1;
                self.summary.cross_kind_asks += u64::from(self.replies.contains_key(&seq));
            }
        }
        // Timers fire, and tasks finish, in their own order.
        if !matches!(entry.sender, Sender::Timer | Sender::Task) {
            let sender = entry.sender;
            if let Some(&last) = self.last_from.get(&(sender, id)) {
                ensure!(
                    seq > last,
                    SenderOrder,
                    "{id:?} received #{seq} from {sender:?} after #{last}, which was sent later"
                );
            }
            self.last_from.insert((sender, id), seq);
        }
        Ok(())
    }

    /// The ledger's and the model's side of a check-in.
    fn checked_in(&mut self, r: usize, job: &MJob, outcome: &Outcome) -> Checked {
        for (to, seq) in &outcome.sends {
            self.accept(*seq, Sender::Receiver(job.id), to.clone(), None);
        }
        for op in &outcome.timers {
            if let model::TimerOpM::Schedule {
                to, deadline, seq, ..
            } = *op
            {
                self.accept(seq, Sender::Timer, Recipient::Id(to), Some(deadline));
            }
        }
        for seq in &outcome.void {
            self.ledger.insert(
                *seq,
                Entry {
                    sender: Sender::Receiver(job.id),
                    to: Recipient::Id(job.id),
                    deadline: None,
                    status: Status::Void,
                    owner: None,
                },
            );
        }
        match job.work {
            model::MWork::Run { .. } => self.summary.tasks += outcome.tasks.len() as u64,
            // The instance is dropped, and the replies it kept with it.
            model::MWork::Deactivate { .. } => {
                for (&req, reply) in &self.replies {
                    if reply.fate == Fate::Open && reply.kept_by == Some(job.inst) {
                        self.to_go.push(Gone::Reply(req));
                    }
                }
            }
        }
        ensure!(
            self.models[r].check_in(job, outcome, self.now).is_ok(),
            Model,
            "the model cannot check in the job of {:?}",
            job.id
        );
        self.observe(r)
    }

    fn forward(&mut self, d: usize) -> Checked {
        let (to, msg) = match self.transit[d].pop_front() {
            None => return Ok(()),
            Some(Transit::Message(to, msg)) => (to, msg),
            Some(Transit::Cancel(id)) => {
                let got = self.routers[d].cancel(id);
                let expected = self.models[d].cancel(id).is_some();
                ensure!(
                    got == expected,
                    Timers,
                    "router {d} cancel({id:?}) from another router returned {got}; the timer \
                     was {}pending",
                    if expected { "" } else { "not " }
                );
                self.summary.remote_cancels += u64::from(got);
                return self.observe(d);
            }
        };
        let seq = msg.seq;
        self.routers[d].forward(to.clone(), msg);
        self.models[d].route_inside(to, seq);
        self.summary.forwarded += 1;
        self.observe(d)
    }

    // ---- tasks --------------------------------------------------------------------------------

    /// Takes the next task router `r` hands out, against the model's.
    fn take_task(&mut self, r: usize) -> Checked {
        let got = self.routers[r].poll_task();
        let expected = self.models[r].take_task();
        let (task, handle) = match (expected, got) {
            (None, None) => return Ok(()),
            (Some(task), Some(handle)) => (task, handle),
            (expected, got) => broken!(
                Model,
                "router {r} handed out {:?} as its next task; the model expects task {expected:?}",
                got.map(|t| t.id())
            ),
        };
        let id = handle.id();
        let rec = &self.tasks[&task];
        ensure!(
            id.owner() == rec.addr,
            StaleHandles,
            "router {r} handed out task #{task} of {:?} at {:?} as {id:?}, owned by another \
             receiver",
            rec.owner,
            rec.addr
        );
        ensure!(
            self.task_ids.insert(id),
            Model,
            "router {r} handed out {id:?} twice"
        );
        self.held.push((task, handle));
        Ok(())
    }

    /// What polling task `task` must yield now: pending, `None` (aborted), or its outcome.
    fn predict(&self, task: Seq) -> Poll<Option<Answer>> {
        let rec = &self.tasks[&task];
        if rec.aborted {
            return Poll::Ready(None);
        }
        let fate = match rec.work {
            Work::Ready => return Poll::Ready(Some(Answer::Value(task))),
            Work::Gate => (rec.gate, task),
            Work::Ask { .. } if rec.timed_out => return Poll::Ready(Some(Answer::Timeout)),
            Work::Ask { req, .. } => (self.replies[&req].fate, req),
        };
        match fate {
            (Fate::Open, _) => Poll::Pending,
            (Fate::Answered(_), value) => Poll::Ready(Some(Answer::Value(value))),
            (Fate::Dropped, _) => Poll::Ready(Some(Answer::Dropped)),
        }
    }

    /// Polls the `k`-th task held, as a runtime would.
    fn poll_task(&mut self, k: usize) -> Checked {
        let task = self.held[k].0;
        let expected = self.predict(task);
        let rec = self.tasks.get_mut(&task).expect("a held task is known");
        if let Some(waker) = rec.waker.take()
            && expected.is_ready()
        {
            ensure!(
                waker.0.load(Ordering::SeqCst),
                Model,
                "task #{task} of {:?} is ready to yield {expected:?}, but its waker was not \
                 woken since it was last polled: a runtime would never poll it again",
                rec.owner
            );
            self.summary.wakeups += 1;
        }
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = std::task::Context::from_waker(&waker);
        let got = std::pin::Pin::new(&mut self.held[k].1).poll(&mut cx);
        let rec = self.tasks.get_mut(&task).expect("a held task is known");
        let id = self.held[k].1.id();
        match (got, expected) {
            (Poll::Pending, Poll::Pending) => {
                rec.waker = Some(woken);
                return Ok(());
            }
            (Poll::Ready(None), Poll::Ready(None)) => {}
            (Poll::Ready(Some(msg)), Poll::Ready(Some(answer)))
                if msg.seq == task && msg.answer == Some(answer) =>
            {
                rec.future = Fut::Finished;
                match (rec.work, answer) {
                    (Work::Ask { .. }, Answer::Value(_)) => self.summary.answers += 1,
                    (_, Answer::Timeout) => self.summary.timeouts += 1,
                    (_, Answer::Dropped) => self.summary.unanswered += 1,
                    _ => {}
                }
                self.finished.push((task, id, msg));
            }
            (got, expected) => {
                let got = got.map(|o| o.map(|m| (m.seq, m.answer)));
                return Err(Broken {
                    invariant: match expected {
                        // A task of a deactivated instance that still yields its outcome.
                        Poll::Ready(None) => Invariant::Deactivation,
                        Poll::Ready(Some(Answer::Timeout)) | Poll::Pending
                            if matches!(got, Poll::Ready(Some((_, Some(Answer::Timeout))))) =>
                        {
                            Invariant::Timers
                        }
                        _ => Invariant::Model,
                    },
                    detail: format!(
                        "task #{task} of {:?} ({:?}, {id:?}) yielded {got:?} when polled; the \
                         model expects {expected:?}",
                        rec.owner, rec.work
                    ),
                });
            }
        }
        let (_, handle) = self.held.remove(k);
        drop(handle);
        Ok(())
    }

    /// Gives the `k`-th finished outcome back to its router, or, if `stray` and there are two,
    /// to the other one, which must refuse it.
    fn complete(&mut self, k: usize, stray: bool) -> Checked {
        let (task, id, msg) = self.finished.remove(k);
        let rec = &self.tasks[&task];
        let stray = stray && self.routers.len() > 1;
        let r = if stray { 1 - rec.router } else { rec.router };
        let seq = msg.seq;
        self.summary.messages += 1;
        self.ledger.insert(
            seq,
            Entry {
                sender: Sender::Task,
                to: Recipient::Addr(rec.addr),
                deadline: None,
                status: Status::Pending,
                owner: Some(rec.inst),
            },
        );
        self.summary.late_outcomes +=
            u64::from(!stray && !self.models[r].tasks.contains_key(&task));
        self.summary.stray_outcomes += u64::from(stray);
        let now = self.at();
        self.routers[r].complete(id, msg, now);
        self.models[r].complete(task, rec.addr, seq);
        self.observe(r)
    }

    /// Answers (or drops) the `k`-th open gate.
    fn resolve(&mut self, k: usize, answer: bool) -> Checked {
        let (task, gate) = self.gates.remove(k);
        let rec = self.tasks.get_mut(&task).expect("a gate's task is known");
        if answer {
            let ok = gate.send(task).is_ok();
            ensure!(
                ok == (rec.future == Fut::Alive),
                Deactivation,
                "the gate of task #{task} of {:?} was answered {}, but its future is {:?}",
                rec.owner,
                if ok { "and taken" } else { "in vain" },
                rec.future
            );
            rec.gate = Fate::Answered(ok);
        } else {
            drop(gate);
            rec.gate = Fate::Dropped;
        }
        Ok(())
    }

    /// True if some task work is left for the driver: a task to take, a held task whose poll
    /// would not be pending, or an outcome to give back. Does the first such piece of work.
    fn run_a_task(&mut self) -> Checked<bool> {
        for r in 0..self.routers.len() {
            if self.models[r].tasks_out_len() > 0 {
                self.take_task(r)?;
                return Ok(true);
            }
        }
        if let Some(k) = (0..self.held.len()).find(|&k| self.predict(self.held[k].0).is_ready()) {
            self.poll_task(k)?;
            return Ok(true);
        }
        if !self.finished.is_empty() {
            self.complete(0, false)?;
            return Ok(true);
        }
        Ok(false)
    }

    fn next_deadline(&self) -> Option<Duration> {
        self.routers
            .iter()
            .filter_map(Router::poll_timeout)
            .min()
            .map(|at| at.saturating_duration_since(self.base))
    }

    fn tick(&mut self, r: usize) -> Checked {
        let now = self.at();
        self.routers[r].handle_timeout(now);
        let output = self.drain(r, true);
        let deactivated: HashSet<Addr> = output
            .commands
            .iter()
            .filter(|c| Kind::of(**c) == Kind::Deactivate)
            .map(|c| c.addr())
            .collect();
        self.models[r].handle_timeout(self.now, |a| deactivated.contains(&a));
        self.summary.timers_fired += self.models[r].expect.fired as u64;
        self.summary.spared += self.models[r].expect.spared as u64;
        self.compare(r, output)
    }

    fn close(&mut self, r: usize) -> Checked {
        if self.endless_relays {
            self.shared.journal().endless[r] = true;
        }
        self.routers[r].close();
        self.models[r].close();
        ensure!(
            self.routers[r].is_closing(),
            Close,
            "router {r} is not closing after close()"
        );
        self.summary.closes += 1;
        self.observe(r)
    }

    /// A driver mistake: the router must refuse it and change nothing.
    fn misuse(&mut self, handle: u8, kind: u8) -> Checked {
        let Some(addr) = self.shared.journal().handle(handle) else {
            return Ok(());
        };
        let r = addr.router() as usize;
        if r >= self.routers.len() {
            return Ok(());
        }
        let model = &self.models[r];
        let slot = model.slot_by_addr(addr).map(|i| model.slots[i].state);
        let now = self.at();
        let (what, accepted) = match kind % 3 {
            0 if !model.can_check_out(addr) => {
                ("check_out", self.routers[r].check_out(addr).is_ok())
            }
            1 if !model.can_check_out(addr) => ("run", self.routers[r].run(addr, now).is_ok()),
            2 if slot != Some(MState::Activating) => {
                let dummy = Activation::ready(|_: &mut Context<'_, Id, Msg>, _: Msg| {});
                ("activate", self.routers[r].activate(addr, dummy).is_ok())
            }
            _ => return Ok(()),
        };
        self.summary.misuses += 1;
        if accepted {
            match slot {
                None => broken!(
                    StaleHandles,
                    "router {r} accepted {what}({addr:?}) for a stale handle"
                ),
                Some(MState::Running | MState::Deactivating { out: true, .. }) => broken!(
                    OneAtATime,
                    "router {r} accepted {what}({addr:?}) while that receiver was checked out"
                ),
                Some(state) => broken!(
                    Model,
                    "router {r} accepted {what}({addr:?}) for a receiver in state {state:?} \
                     with no command out for it"
                ),
            }
        }
        self.observe(r)
    }

    fn lookup(&mut self, handle: u8, to: Id) -> Checked {
        if let Some(addr) = self.shared.journal().handle(handle)
            && let Some(router) = self.routers.get(addr.router() as usize)
        {
            let model = &self.models[addr.router() as usize];
            let expected = model.slot_by_addr(addr).map(|i| model.slots[i].id);
            let got = router.id(addr).copied();
            if got != expected {
                ensure!(
                    expected.is_some(),
                    StaleHandles,
                    "id({addr:?}) is {got:?} for a stale handle"
                );
                broken!(
                    Model,
                    "id({addr:?}) is {got:?}; the model says {expected:?}"
                );
            }
        }
        let r = model::owner(to, self.routers.len() as u32) as usize;
        let model = &self.models[r];
        let expected = model.slot_by_id(to).and_then(|i| model.slots[i].addr);
        let got = self.routers[r].addr(&to);
        ensure!(
            got == expected,
            Model,
            "router {r} addr({to:?}) is {got:?}; the model says {expected:?}"
        );
        Ok(())
    }

    // ---- checks after every router call -------------------------------------------------------

    /// Takes router `r`'s outputs; its dead letters only if `dead` or the world polls them after
    /// every call.
    fn drain(&mut self, r: usize, dead: bool) -> Output {
        let router = &mut self.routers[r];
        let poll = dead || !self.lazy_dead_letters;
        let mut output = Output {
            commands: std::iter::from_fn(|| router.poll_command()).collect(),
            dead: poll.then(|| std::iter::from_fn(|| router.poll_dead_letter()).collect()),
            outbound: Vec::new(),
            cancels: Vec::new(),
        };
        while let Some((location, outbound)) = router.poll_outbound() {
            match outbound {
                Outbound::Message(to, msg) => output.outbound.push((to, msg)),
                Outbound::Cancel(id) => output.cancels.push((location, id)),
                _ => unreachable!("hermes-check knows every outbound kind"),
            }
        }
        output
    }

    /// Collects what router `r` output and compares it with its model.
    fn observe(&mut self, r: usize) -> Checked {
        let output = self.drain(r, false);
        self.compare(r, output)
    }

    fn compare(&mut self, r: usize, output: Output) -> Checked {
        let expect = std::mem::take(&mut self.models[r].expect);
        let stats = self.routers[r].stats();
        let model_stats = self.models[r].stats();
        ensure!(
            stats.timers_pending == model_stats.timers_pending,
            Timers,
            "router {r} has {} timers pending; the model {} (a timer fired early, late, twice, \
             or after its cancel)",
            stats.timers_pending,
            model_stats.timers_pending
        );
        for seq in &expect.cancelled {
            if let Some(e) = self.ledger.get_mut(seq) {
                e.status = Status::Cancelled;
            }
        }
        ensure!(
            self.routers[r].tasks_in_flight() == self.models[r].tasks.len(),
            Model,
            "router {r} has {} tasks in flight; the model {}",
            self.routers[r].tasks_in_flight(),
            self.models[r].tasks.len()
        );
        // Aborted and discarded tasks: their futures, if not finished, are dropped in this call.
        for &task in expect.aborted.iter().chain(&expect.discarded) {
            let Some(rec) = self.tasks.get_mut(&task) else {
                broken!(
                    Model,
                    "the model dropped task #{task}, which no receiver started"
                );
            };
            rec.aborted = true;
            if rec.future == Fut::Alive {
                self.to_go.push(Gone::Future(task));
                self.summary.aborted += u64::from(expect.aborted.contains(&task));
            }
        }
        self.summary.expired += expect.expired.len() as u64;
        self.summary.stale_outcomes += expect.stale_outcomes as u64;
        self.summary.outcomes_ahead += expect.outcomes_ahead as u64;
        // An expiry ends an ask only if its reply is still open (replies dropped in this call
        // are seen below, after it: only `handle_timeout` expires asks, and it drops no reply).
        for task in &expect.expired {
            if let Some(rec) = self.tasks.get_mut(task)
                && let Work::Ask { req, .. } = rec.work
            {
                rec.timed_out = self.replies.get(&req).is_some_and(|r| r.fate == Fate::Open);
            }
        }
        self.summary.kind_idle_restored += expect.restored as u64;
        let mut expected_dead = std::mem::take(&mut self.unpolled[r]);
        expected_dead.extend(expect.dead);
        match output.dead {
            Some(dead) => {
                self.models[r].polled_dead_letters();
                let dropped = stats
                    .dead_letters_dropped
                    .saturating_sub(self.dropped_seen[r]);
                self.dropped_seen[r] = stats.dead_letters_dropped;
                self.compare_dead(r, dead, expected_dead, dropped, &stats, &model_stats)?;
            }
            None => self.unpolled[r] = expected_dead,
        }
        self.compare_outbound(r, output.outbound, expect.outbound)?;
        self.compare_cancels(r, output.cancels, expect.outbound_cancels)?;
        for (field, got, want) in [
            (
                "messages_routed",
                stats.messages_routed,
                model_stats.messages_routed,
            ),
            (
                "messages_forwarded",
                stats.messages_forwarded,
                model_stats.messages_forwarded,
            ),
            (
                "messages_delivered",
                stats.messages_delivered,
                model_stats.messages_delivered,
            ),
            ("dead_letters", stats.dead_letters, model_stats.dead_letters),
        ] {
            ensure!(
                got == want,
                ExactlyOnce,
                "router {r} counts {field} = {got}; the model {want} (a message lost or duplicated)"
            );
        }
        self.compare_commands(r, output.commands, expect.commands)?;
        // Re-read: assigning new handles does not change counts, but keep the check exact.
        let model_stats = self.models[r].stats();
        ensure!(
            stats.deactivations == model_stats.deactivations,
            Deactivation,
            "router {r} counts {} deactivations; the model {}",
            stats.deactivations,
            model_stats.deactivations
        );
        ensure!(
            stats == model_stats,
            Model,
            "router {r} stats {stats:?}; the model {model_stats:?}"
        );
        let with_work = self.models[r].with_work();
        ensure!(
            stats.scheduled + stats.running <= with_work,
            Resources,
            "router {r} has {} receivers scheduled or running but only {with_work} with messages",
            stats.scheduled + stats.running
        );
        ensure!(
            self.routers[r].is_closed() == self.models[r].is_closed(),
            Close,
            "router {r} is_closed() = {}; the model says {}",
            self.routers[r].is_closed(),
            self.models[r].is_closed()
        );
        self.summary.max_live = self.summary.max_live.max(stats.live);
        self.check_gone()
    }

    /// The futures and replies dropped unfinished since the last look, against those that had
    /// to go: a task's future exactly when the world expects it (rolled back with its handler,
    /// discarded with the `deactivated` hook that started it, aborted with its instance), a
    /// reply when its request was handled without being answered or kept, with the instance that
    /// kept it, or with its request as a dead letter.
    fn check_gone(&mut self) -> Checked {
        let gone = std::mem::take(&mut self.shared.journal().gone);
        let mut expected = std::mem::take(&mut self.to_go);
        for g in gone {
            if let Some(k) = expected.iter().position(|e| *e == g) {
                expected.swap_remove(k);
            } else if let Gone::Future(task) = g {
                let state = self.tasks.get(&task).map(|t| (t.owner, t.inst, t.future));
                broken!(
                    Deactivation,
                    "the future of task #{task} (of {state:?}) was dropped unfinished, which \
                     the model does not expect: its instance was not deactivated"
                );
            } else if let Gone::Reply(req) = g {
                // Otherwise only a dead letter drops a request with its reply: reported and
                // dropped by the world, or dropped by the router past the dead-letter capacity
                // (lazily polled plans learn that later).
                let status = self.ledger.get(&req).map(|e| e.status);
                ensure!(
                    matches!(status, Some(Status::Dead | Status::Dropped))
                        || self.lazy_dead_letters && status == Some(Status::Pending),
                    ExactlyOnce,
                    "the reply of request #{req} was dropped while the request was {status:?}"
                );
            }
            match g {
                Gone::Future(task) => {
                    if let Some(t) = self.tasks.get_mut(&task) {
                        t.future = Fut::Dropped;
                    }
                }
                Gone::Reply(req) => {
                    self.open_reply(req, Fate::Dropped)?;
                }
            }
        }
        if let Some(g) = expected.first() {
            match *g {
                Gone::Future(task) => {
                    let t = &self.tasks[&task];
                    broken!(
                        Deactivation,
                        "the future of task #{task} of {:?} (instance {}) is still alive; it \
                         should have been dropped{}",
                        t.owner,
                        t.inst,
                        if t.aborted {
                            " when its instance was deactivated"
                        } else {
                            " with the handler that started it"
                        }
                    )
                }
                Gone::Reply(req) => broken!(
                    ExactlyOnce,
                    "the reply of request #{req} should have been dropped by now (the request \
                     was handled without an answer, or its instance is gone)"
                ),
            }
        }
        Ok(())
    }

    /// Dead letters polled from router `r` against those expected since the last poll, of which
    /// `dropped` were dropped for want of room (the ones not polled).
    fn compare_dead(
        &mut self,
        r: usize,
        dead: Vec<DeadLetter<Id, Msg>>,
        mut expected: Vec<model::EDead>,
        dropped: u64,
        stats: &Stats,
        model_stats: &Stats,
    ) -> Checked {
        for letter in dead {
            let reason = reason_of(&letter.reason);
            let found = match &letter.message {
                Some(msg) => expected.iter().position(|e| e.seq == msg.seq),
                None => expected
                    .iter()
                    .position(|e| e.reason == Reason::Panicked && e.to == letter.recipient),
            };
            let Some(k) = found else {
                let what = letter
                    .message
                    .as_ref()
                    .map_or("a panicked message".to_string(), |m| format!("#{}", m.seq));
                let status = letter
                    .message
                    .as_ref()
                    .and_then(|m| self.ledger.get(&m.seq))
                    .map(|e| e.status);
                broken!(
                    ExactlyOnce,
                    "router {r} reported {what} for {:?} as a dead letter ({reason:?}) that the \
                     model does not expect (ledger: {status:?})",
                    letter.recipient
                );
            };
            let e = expected.remove(k);
            if e.reason != reason || e.to != letter.recipient {
                return Err(Broken {
                    invariant: reason_invariant(e.reason),
                    detail: format!(
                        "router {r} reported #{} as a dead letter for {:?} ({reason:?}); the \
                         model expects {:?} ({:?})",
                        e.seq, letter.recipient, e.to, e.reason
                    ),
                });
            }
            self.dead_letter(e.seq, Status::Dead)?;
            self.summary.dead_letters += 1;
            self.count_refusal(reason);
        }
        if expected.len() as u64 == dropped {
            for e in expected {
                self.dead_letter(e.seq, Status::Dropped)?;
                self.summary.dead_letters_dropped += 1;
            }
            return Ok(());
        }
        ensure!(
            (expected.len() as u64) > dropped,
            ExactlyOnce,
            "router {r} dropped {dropped} dead letters; only {} went unreported",
            expected.len()
        );
        if let Some(e) = expected.first() {
            let accepted = stats.messages_routed + stats.messages_forwarded;
            let should = model_stats.messages_routed + model_stats.messages_forwarded;
            if accepted > should {
                return Err(Broken {
                    invariant: reason_invariant(e.reason),
                    detail: format!(
                        "router {r} accepted #{} for {:?}, which it must refuse as a dead letter \
                         ({:?})",
                        e.seq, e.to, e.reason
                    ),
                });
            }
            broken!(
                ExactlyOnce,
                "router {r} lost #{} for {:?}: the model expects a dead letter ({:?}), the \
                 router reported none and did not route it",
                e.seq,
                e.to,
                e.reason
            );
        }
        Ok(())
    }

    /// The ledger's side of a dead letter, reported (`Dead`) or dropped unpolled (`Dropped`):
    /// exactly once.
    fn dead_letter(&mut self, seq: Seq, status: Status) -> Checked {
        let Some(entry) = self.ledger.get_mut(&seq) else {
            broken!(ExactlyOnce, "dead letter #{seq} was never accepted");
        };
        ensure!(
            entry.status == Status::Pending,
            ExactlyOnce,
            "#{seq} became a dead letter ({status:?}) after it was {:?}",
            entry.status
        );
        entry.status = status;
        Ok(())
    }

    /// Counts a message refused or reported for a reason the summary shows.
    fn count_refusal(&mut self, reason: Reason) {
        match reason {
            Reason::Full => self.summary.full += 1,
            Reason::Stale => self.summary.stale += 1,
            Reason::DrainLimit => self.summary.drain_limited += 1,
            _ => {}
        }
    }

    fn compare_outbound(
        &mut self,
        r: usize,
        outbound: Vec<(Recipient<Id>, Msg)>,
        expected: Vec<(Recipient<Id>, Seq)>,
    ) -> Checked {
        let got: Vec<(Recipient<Id>, Seq)> =
            outbound.iter().map(|(to, m)| (to.clone(), m.seq)).collect();
        ensure!(
            got == expected,
            ExactlyOnce,
            "router {r} sent {got:?} to other routers; the model expects {expected:?}"
        );
        let n = self.routers.len() as u32;
        for (to, msg) in outbound {
            let d = match &to {
                Recipient::Addr(a) => a.router(),
                Recipient::Id(id) => model::owner(*id, n),
            };
            ensure!(
                d < n && d as usize != r,
                Model,
                "router {r} sent {to:?} out, to router {d}"
            );
            self.transit[d as usize].push_back(Transit::Message(to, msg));
        }
        Ok(())
    }

    /// Cancellations router `r` sent out, against the model's; passes them on.
    fn compare_cancels(
        &mut self,
        r: usize,
        got: Vec<(Location, TimerId)>,
        expected: Vec<TimerId>,
    ) -> Checked {
        let ids: Vec<TimerId> = got.iter().map(|(_, id)| *id).collect();
        ensure!(
            ids == expected,
            Timers,
            "router {r} sent cancellations {ids:?} out; the model expects {expected:?}"
        );
        for (location, id) in got {
            ensure!(
                location == Location::Shard(id.router()) && id.router() as usize != r,
                Model,
                "router {r} sent the cancellation of {id:?} to {location:?}"
            );
            self.transit[id.router() as usize].push_back(Transit::Cancel(id));
        }
        Ok(())
    }

    fn compare_commands(
        &mut self,
        r: usize,
        got: Vec<Command>,
        mut expected: Vec<ECmd>,
    ) -> Checked {
        for command in got {
            let kind = Kind::of(command);
            let addr = command.addr();
            let mut found = expected
                .iter()
                .position(|e| e.kind == kind && e.addr == Some(addr));
            if found.is_none() && kind == Kind::Activate {
                let id = self.routers[r].id(addr).copied();
                found = expected
                    .iter()
                    .position(|e| e.kind == kind && e.addr.is_none() && Some(e.id) == id);
                if let (Some(_), Some(id)) = (found, id) {
                    self.models[r].assign(id, addr)?;
                    self.shared.journal().handles.push(addr);
                }
            }
            let Some(k) = found else {
                let model = &self.models[r];
                let state = model.slot_by_addr(addr).map(|i| &model.slots[i]);
                let what = format!(
                    "router {r} emitted {command:?}, which the model does not expect \
                     (model: {state:?})"
                );
                return Err(match (kind, state.map(|s| s.state)) {
                    (Kind::Deactivate, _) => Broken {
                        invariant: Invariant::Deactivation,
                        detail: what,
                    },
                    (Kind::Run, Some(MState::Running)) => Broken {
                        invariant: Invariant::OneAtATime,
                        detail: what,
                    },
                    _ => Broken {
                        invariant: Invariant::Model,
                        detail: what,
                    },
                });
            };
            expected.remove(k);
            self.pending.push((r, command));
        }
        if let Some(e) = expected.first() {
            let invariant = match e.kind {
                Kind::Deactivate => Invariant::Deactivation,
                _ => Invariant::Model,
            };
            return Err(Broken {
                invariant,
                detail: format!(
                    "router {r} did not emit {:?} for {:?} at {:?}, which the model expects",
                    e.kind, e.id, e.addr
                ),
            });
        }
        Ok(())
    }

    // ---- the end ------------------------------------------------------------------------------

    /// Handles everything outstanding, oldest first, and lets time run until nothing is left.
    pub(crate) fn settle(&mut self) -> Checked {
        for _ in 0..SETTLE_LIMIT {
            if !self.jobs.is_empty() {
                self.check_in(0)?;
            } else if !self.pending.is_empty() {
                let (r, command) = self.pending.remove(0);
                self.handle(r, command, Mode::Inline, PLAIN_LUCK)?;
            } else if let Some(d) = (0..self.transit.len()).find(|&d| !self.transit[d].is_empty()) {
                self.forward(d)?;
            } else if self.run_a_task()? {
                self.check_gone()?;
            } else if let Some(next) = self.next_deadline() {
                self.now = self.now.max(next);
                for r in 0..self.routers.len() {
                    self.tick(r)?;
                }
            } else {
                return Ok(());
            }
        }
        broken!(
            Model,
            "the world did not settle in {SETTLE_LIMIT} steps (a livelock)"
        )
    }

    /// Drains (unless the plan closes busy), closes every router, drains again, and checks the
    /// close rules and the ledger.
    pub(crate) fn finish(&mut self) -> Checked {
        if !self.close_busy {
            self.settle()?;
        }
        for r in 0..self.routers.len() {
            self.close(r)?;
        }
        self.settle()?;
        for r in 0..self.routers.len() {
            let output = self.drain(r, true);
            self.compare(r, output)?;
        }
        for (r, router) in self.routers.iter().enumerate() {
            ensure!(
                router.is_closed(),
                Close,
                "router {r} did not finish closing: {:?}",
                router.stats()
            );
            ensure!(
                router.tasks_in_flight() == 0,
                Close,
                "router {r} closed with {} tasks in flight, of instances it deactivated",
                router.tasks_in_flight()
            );
        }
        self.finish_tasks()?;
        for (seq, entry) in &self.ledger {
            ensure!(
                entry.status != Status::Pending,
                ExactlyOnce,
                "#{seq} from {:?} to {:?} was accepted but never delivered nor reported as a \
                 dead letter",
                entry.sender,
                entry.to
            );
        }
        for (n, rec) in &self.instances {
            if rec.activation_panicked {
                ensure!(
                    rec.deactivations == 0,
                    Deactivation,
                    "instance {n} of {:?} failed to activate but was deactivated",
                    rec.id
                );
            } else {
                ensure!(
                    rec.activated && rec.deactivations == 1,
                    Close,
                    "after close, instance {n} of {:?} was activated: {}, deactivated {} times",
                    rec.id,
                    rec.activated,
                    rec.deactivations
                );
            }
        }
        // The settle ended with no deadline left; a late `handle_timeout` must agree that nothing
        // is due after close (the model expects no output).
        self.now += Duration::from_secs(3600);
        for r in 0..self.routers.len() {
            self.tick(r)?;
        }
        for r in 0..self.routers.len() {
            let seq = self.new_seq();
            let got = self.routers[r].send(Id(0), Msg::new(seq, 0));
            ensure!(
                matches!(got, Err(SendError::Closed(_))),
                Close,
                "router {r} answered a send after close with {got:?}"
            );
            let now = self.at();
            let got = self.routers[r].schedule(Id(0), now, Msg::new(seq, 0));
            ensure!(
                matches!(got, Err(SendError::Closed(_))),
                Close,
                "router {r} answered a timer after close with {:?}",
                got.map(|_| ())
            );
            self.observe(r)?;
        }
        Ok(())
    }
}

impl World {
    /// After close: every task was taken, polled to its end and its outcome given back; no
    /// future is left alive, and no reply is left unanswered and undropped.
    fn finish_tasks(&mut self) -> Checked {
        ensure!(
            self.held.is_empty() && self.finished.is_empty(),
            Close,
            "after close, tasks {:?} are still pending and outcomes {:?} not given back",
            self.held.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            self.finished.iter().map(|(n, ..)| n).collect::<Vec<_>>()
        );
        for (task, rec) in &self.tasks {
            ensure!(
                rec.future != Fut::Alive,
                Close,
                "after close, the future of task #{task} of {:?} (instance {}) is still alive",
                rec.owner,
                rec.inst
            );
        }
        // Gates of futures long gone: answering them finds nobody waiting.
        for (task, gate) in std::mem::take(&mut self.gates) {
            ensure!(
                gate.send(task).is_err(),
                Close,
                "after close, the gate of task #{task} still has a future waiting"
            );
        }
        for (req, reply) in &self.replies {
            ensure!(
                reply.fate != Fate::Open,
                ExactlyOnce,
                "after close, the reply of request #{req} was neither answered nor dropped \
                 (kept by {:?})",
                reply.kept_by
            );
            if reply.fate == Fate::Dropped
                && let Some(entry) = self.ledger.get(req)
            {
                // Its request was handled, or became a dead letter (and went with it).
                ensure!(
                    entry.status != Status::Pending,
                    ExactlyOnce,
                    "the reply of request #{req} was dropped, but the request is still pending"
                );
            }
        }
        self.check_gone()
    }
}

fn reason_of(reason: &DeadLetterReason) -> Reason {
    match reason {
        DeadLetterReason::NoReceiver => Reason::NoReceiver,
        DeadLetterReason::FactoryFailed(_) => Reason::FactoryFailed,
        DeadLetterReason::Closed => Reason::Closed,
        DeadLetterReason::Full => Reason::Full,
        DeadLetterReason::Stale => Reason::Stale,
        DeadLetterReason::Panicked(_) => Reason::Panicked,
        DeadLetterReason::DrainLimit => Reason::DrainLimit,
        _ => unreachable!("hermes-check knows every dead-letter reason"),
    }
}

fn send_error_kind(r: Refusal) -> SendErrorKind {
    match r {
        Refusal::Closed => SendErrorKind::Closed,
        Refusal::Full => SendErrorKind::Full,
        Refusal::Stale => SendErrorKind::Stale,
    }
}

/// The invariant a router breaks when it does not refuse a message the model refuses for
/// `reason`.
fn reason_invariant(reason: Reason) -> Invariant {
    match reason {
        Reason::Closed => Invariant::Close,
        Reason::Stale => Invariant::StaleHandles,
        _ => Invariant::ExactlyOnce,
    }
}
