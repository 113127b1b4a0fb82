//! Shared test helpers: a scriptable, recording receiver, a configurable factory and a harness
//! that drives a `Router` at a fixed base `Instant` plus Durations (no clock reads, no sleeping).
//!
//! Messages are scripts: `Msg::Note(n)` is just recorded; the other variants make the receiver
//! send, schedule, cancel, become, stop, panic or change its idle timeout, so each test states the
//! behaviour it needs in the message it sends.

#![allow(dead_code)] // each test binary uses a different part of this module

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Addr, Command, Config, Context, Deactivation, DeadLetter, DeadLetterReason,
    Factory, Job, Receiver, Recipient, Router, SendError, Stats, TimerId,
};

/// Receiver IDs in tests.
pub type Id = u32;

/// A message, and the script the receiver follows when it handles it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// Recorded, nothing else.
    Note(u32),
    /// Send the inner message to an ID.
    Send(Id, Box<Msg>),
    /// Send the inner message by handle.
    SendTo(Addr, Box<Msg>),
    /// Schedule the inner message to self.
    Schedule(Duration, Box<Msg>),
    /// Schedule the inner message to another ID.
    ScheduleTo(Id, Duration, Box<Msg>),
    /// Cancel a timer.
    Cancel(TimerId),
    /// Swap the handler for one that records under this name.
    Become(&'static str),
    /// Deactivate after this message.
    Stop,
    /// Panic in the handler.
    Panic,
    /// Override this receiver's idle timeout.
    SetIdle(Duration),
    /// Do each in order.
    All(Vec<Msg>),
}

/// Shorthand for `Msg::Note(n)`.
pub fn note(n: u32) -> Msg {
    Msg::Note(n)
}

/// Shorthand for `Msg::Send(to, inner)`.
pub fn send(to: Id, inner: Msg) -> Msg {
    Msg::Send(to, Box::new(inner))
}

/// Shorthand for `Msg::Schedule(after, inner)`.
pub fn schedule(after: Duration, inner: Msg) -> Msg {
    Msg::Schedule(after, Box::new(inner))
}

/// Milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// What the recording receivers and the factory saw, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The factory created instance `instance` (1-based, per ID) and its `activated` hook ran.
    Activated { id: Id, instance: u32 },
    /// A handler returned from `msg` without panicking.
    Received {
        id: Id,
        instance: u32,
        handler: &'static str,
        msg: Msg,
    },
    /// A timer was scheduled while handling a message.
    Scheduled { id: Id, timer: TimerId, msg: Msg },
    /// The `deactivated` hook ran.
    Deactivated {
        id: Id,
        instance: u32,
        why: Deactivation,
    },
}

/// What the factory does for an ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Create a recording receiver (the default).
    Ready,
    /// `Activation::Refused`.
    Refuse,
    /// `Activation::Failed` with a `LoadError`.
    Fail,
    /// A receiver whose `activated` hook panics.
    PanicOnActivate,
    /// A receiver whose `deactivated` hook panics.
    PanicOnDeactivate,
}

/// The error failing activations carry.
#[derive(Debug)]
pub struct LoadError(pub Id);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "could not load the state of {}", self.0)
    }
}

impl std::error::Error for LoadError {}

/// Panics the tests provoke on purpose; the router catches them. Keeps test output readable.
const PROVOKED: [&str; 3] = [
    "told to panic",
    "activated hook told to panic",
    "deactivated hook told to panic",
];

/// Installs (once) a panic hook that stays quiet about provoked panics.
fn quiet_provoked_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let msg = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
            if !msg.is_some_and(|m| PROVOKED.contains(&m)) {
                default(info);
            }
        }));
    });
}

#[derive(Default)]
struct Shared {
    events: Vec<Event>,
    instances: HashMap<Id, u32>,
    plans: HashMap<Id, Plan>,
    factory_calls: u32,
}

/// The log and the factory's plans, shared by every receiver the factory made.
#[derive(Clone)]
pub struct Recorder(Arc<Mutex<Shared>>);

impl Default for Recorder {
    fn default() -> Self {
        quiet_provoked_panics();
        Recorder(Arc::default())
    }
}

impl Recorder {
    fn lock(&self) -> MutexGuard<'_, Shared> {
        // A panicking receiver never holds the lock, but don't let one poison every later test step.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, event: Event) {
        self.lock().events.push(event);
    }

    /// Sets what the factory does for `id` from now on.
    pub fn plan(&self, id: Id, plan: Plan) {
        self.lock().plans.insert(id, plan);
    }

    /// Takes the events recorded so far.
    pub fn take(&self) -> Vec<Event> {
        std::mem::take(&mut self.lock().events)
    }

    /// How many times the factory was called.
    pub fn factory_calls(&self) -> u32 {
        self.lock().factory_calls
    }

    /// A factory that creates recording receivers, following the plans.
    pub fn factory(&self) -> impl Factory<Id, Msg, App = (Id, Msg)> + Clone {
        let rec = self.clone();
        move |id: &Id| rec.create(*id)
    }

    /// What the factory makes of `id`.
    pub fn create(&self, id: Id) -> Activation<Id, Msg> {
        let (plan, instance) = {
            let mut shared = self.lock();
            shared.factory_calls += 1;
            let plan = shared.plans.get(&id).cloned().unwrap_or(Plan::Ready);
            let instance = shared.instances.entry(id).or_default();
            if matches!(
                plan,
                Plan::Ready | Plan::PanicOnActivate | Plan::PanicOnDeactivate
            ) {
                *instance += 1;
            }
            (plan, *instance)
        };
        let receiver = Recording {
            id,
            instance,
            handler: "initial",
            rec: self.clone(),
            plan: plan.clone(),
        };
        match plan {
            Plan::Refuse => Activation::Refused,
            Plan::Fail => Activation::failed(LoadError(id)),
            Plan::Ready | Plan::PanicOnActivate | Plan::PanicOnDeactivate => {
                Activation::ready(receiver)
            }
        }
    }
}

/// The receiver the recorder's factory makes: follows each message's script and records it.
pub struct Recording {
    id: Id,
    instance: u32,
    handler: &'static str,
    rec: Recorder,
    plan: Plan,
}

impl Recording {
    fn schedule(&self, ctx: &mut Context<'_, Id, Msg>, to: Id, after: Duration, msg: &Msg) {
        let timer = ctx.schedule_to(to, after, msg.clone());
        self.rec.push(Event::Scheduled {
            id: self.id,
            timer,
            msg: msg.clone(),
        });
    }

    fn follow(&mut self, ctx: &mut Context<'_, Id, Msg>, msg: &Msg) {
        match msg {
            Msg::Note(_) => {}
            Msg::Send(to, inner) => ctx.send(*to, (**inner).clone()),
            Msg::SendTo(to, inner) => ctx.send_to(*to, (**inner).clone()),
            Msg::Schedule(after, inner) => self.schedule(ctx, self.id, *after, inner),
            Msg::ScheduleTo(to, after, inner) => self.schedule(ctx, *to, *after, inner),
            Msg::Cancel(timer) => ctx.cancel(*timer),
            Msg::Become(name) => ctx.become_(Recording {
                id: self.id,
                instance: self.instance,
                handler: name,
                rec: self.rec.clone(),
                plan: self.plan.clone(),
            }),
            Msg::Stop => ctx.stop(),
            Msg::Panic => panic!("{}", PROVOKED[0]),
            Msg::SetIdle(timeout) => ctx.set_idle_timeout(*timeout),
            Msg::All(steps) => steps.iter().for_each(|m| self.follow(ctx, m)),
        }
    }
}

impl Receiver<Id, Msg> for Recording {
    fn receive(&mut self, ctx: &mut Context<'_, Id, Msg>, msg: Msg) {
        assert_eq!(*ctx.id(), self.id, "a receiver got another ID's message");
        self.follow(ctx, &msg);
        self.rec.push(Event::Received {
            id: self.id,
            instance: self.instance,
            handler: self.handler,
            msg,
        });
    }

    fn activated(&mut self, _ctx: &mut Context<'_, Id, Msg>) {
        if self.plan == Plan::PanicOnActivate {
            panic!("{}", PROVOKED[1]);
        }
        self.rec.push(Event::Activated {
            id: self.id,
            instance: self.instance,
        });
    }

    fn deactivated(&mut self, _ctx: &mut Context<'_, Id, Msg>, why: Deactivation) {
        self.rec.push(Event::Deactivated {
            id: self.id,
            instance: self.instance,
            why,
        });
        if self.plan == Plan::PanicOnDeactivate {
            panic!("{}", PROVOKED[2]);
        }
    }
}

/// A dead letter, comparable.
#[derive(Clone, Debug, PartialEq)]
pub struct Dead {
    pub to: Recipient<Id>,
    pub msg: Option<Msg>,
    pub reason: DeadLetterReason,
}

impl From<DeadLetter<Id, Msg>> for Dead {
    fn from(d: DeadLetter<Id, Msg>) -> Self {
        Dead {
            to: d.recipient,
            msg: d.message,
            reason: d.reason,
        }
    }
}

/// How the harness runs `Run` and `Deactivate` commands (and `Activate`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `Router::handle`: everything inline, as a single-threaded driver does.
    Inline,
    /// Check every pending command out at once, then execute and check the jobs in, in this
    /// order — as a pool would, with check-ins arriving late. Activations are delayed the same way.
    Delayed(Order),
}

/// The order in which delayed work completes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// First checked out, first checked in.
    Fifo,
    /// Last checked out, first checked in.
    Lifo,
}

/// A router, a recording factory and a clock made of a fixed base plus Durations.
pub struct Harness {
    pub router: Router<Id, Msg>,
    pub rec: Recorder,
    factory: hermes_core::SharedFactory<Id, Msg>,
    t0: Instant,
    pub now: Instant,
    mode: Mode,
}

impl Harness {
    /// A harness that handles every command inline.
    pub fn new(config: Config) -> Self {
        Self::with_mode(config, Mode::Inline)
    }

    /// A harness that handles commands in `mode`.
    pub fn with_mode(config: Config, mode: Mode) -> Self {
        let rec = Recorder::default();
        let t0 = Instant::now();
        Harness {
            router: Router::new(config),
            factory: hermes_core::share(rec.factory()),
            rec,
            t0,
            now: t0,
            mode,
        }
    }

    /// `t0 + offset`.
    pub fn at(&self, offset: Duration) -> Instant {
        self.t0 + offset
    }

    /// Sends from outside.
    pub fn send(&mut self, to: Id, msg: Msg) -> Result<(), SendError<Msg>> {
        self.router.send(to, msg)
    }

    /// Sends from outside; panics if refused.
    pub fn put(&mut self, to: Id, msg: Msg) {
        self.router.send(to, msg).expect("send refused");
    }

    /// The next command.
    pub fn poll(&mut self) -> Option<Command> {
        self.router.poll_command()
    }

    /// The next command, which must be an `Activate`: its handle.
    pub fn expect_activate(&mut self) -> Addr {
        match self.poll() {
            Some(Command::Activate(a)) => a,
            other => panic!("expected Activate, got {other:?}"),
        }
    }

    /// The next command, which must be a `Run`: its handle.
    pub fn expect_run(&mut self) -> Addr {
        match self.poll() {
            Some(Command::Run(a)) => a,
            other => panic!("expected Run, got {other:?}"),
        }
    }

    /// The next command, which must be a `Deactivate`: its handle.
    pub fn expect_deactivate(&mut self) -> Addr {
        match self.poll() {
            Some(Command::Deactivate(a)) => a,
            other => panic!("expected Deactivate, got {other:?}"),
        }
    }

    /// Takes the next command, an `Activate`, and completes it with the recorder's factory.
    pub fn activate_next(&mut self) -> Addr {
        let a = self.expect_activate();
        let id = *self.router.id(a).expect("a live slot");
        self.router
            .activate(a, self.rec.create(id))
            .expect("activate");
        a
    }

    /// Checks a job in after executing it now.
    pub fn finish(&mut self, job: Job<Id, Msg>) {
        let done = job.execute(self.now);
        self.router.check_in(done, self.now).expect("check in");
    }

    /// Handles commands until none is left (in the harness's mode).
    pub fn settle(&mut self) {
        match self.mode {
            Mode::Inline => {
                while let Some(c) = self.poll() {
                    self.router
                        .handle(c, &*self.factory, self.now)
                        .expect("router rejected its own command");
                }
            }
            Mode::Delayed(order) => self.settle_delayed(order),
        }
    }

    fn settle_delayed(&mut self, order: Order) {
        enum Pending {
            Activate(Addr, Activation<Id, Msg>),
            Job(Job<Id, Msg>),
        }
        loop {
            // Take every command out now; complete them only after all were taken.
            let mut wave = VecDeque::new();
            while let Some(c) = self.poll() {
                let pending = match c {
                    Command::Activate(a) => {
                        let id = *self.router.id(a).expect("activate for a live slot");
                        Pending::Activate(a, self.factory.create(&id))
                    }
                    Command::Run(a) | Command::Deactivate(a) => {
                        let job = self.router.check_out(a).expect("check out");
                        // Work is scheduled only for receivers with messages (invariant 8).
                        assert_eq!(job.is_empty(), matches!(c, Command::Deactivate(_)));
                        // Checked out: the router must not offer this receiver again.
                        assert_eq!(
                            self.router.check_out(a).err(),
                            Some(hermes_core::CommandError::WrongState(a))
                        );
                        Pending::Job(job)
                    }
                };
                wave.push_back(pending);
            }
            if wave.is_empty() {
                return;
            }
            while let Some(p) = match order {
                Order::Fifo => wave.pop_front(),
                Order::Lifo => wave.pop_back(),
            } {
                match p {
                    Pending::Activate(a, activation) => {
                        self.router.activate(a, activation).expect("activate")
                    }
                    Pending::Job(job) => {
                        let done = job.execute(self.now);
                        self.router.check_in(done, self.now).expect("check in");
                    }
                }
            }
        }
    }

    /// Moves the clock to `t0 + offset`, fires what is due and settles.
    pub fn advance_to(&mut self, offset: Duration) {
        let to = self.t0 + offset;
        assert!(to >= self.now, "the harness clock only moves forward");
        self.now = to;
        self.router.handle_timeout(self.now);
        self.settle();
    }

    /// Moves the clock forward by `by`, fires what is due and settles.
    pub fn advance(&mut self, by: Duration) {
        let offset = self.now - self.t0 + by;
        self.advance_to(offset);
    }

    /// Closes and settles.
    pub fn close(&mut self) {
        self.router.close();
        self.settle();
    }

    /// Takes the dead letters so far.
    pub fn dead(&mut self) -> Vec<Dead> {
        std::iter::from_fn(|| self.router.poll_dead_letter())
            .map(Dead::from)
            .collect()
    }

    pub fn stats(&self) -> Stats {
        self.router.stats()
    }

    /// Takes the events so far.
    pub fn events(&self) -> Vec<Event> {
        self.rec.take()
    }

    /// Takes the events so far and keeps only the messages received, as (id, msg).
    pub fn received(&self) -> Vec<(Id, Msg)> {
        received(&self.events())
    }
}

/// The timers scheduled, in order.
pub fn timers_scheduled(events: &[Event]) -> Vec<TimerId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Scheduled { timer, .. } => Some(*timer),
            _ => None,
        })
        .collect()
}

/// Keeps only the messages received, as (id, msg).
pub fn received(events: &[Event]) -> Vec<(Id, Msg)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Received { id, msg, .. } => Some((*id, msg.clone())),
            _ => None,
        })
        .collect()
}

/// Checks that no value occurs twice.
pub fn assert_unique<T: std::fmt::Debug>(items: impl IntoIterator<Item = T>) {
    let mut seen = HashSet::new();
    for item in items {
        assert!(seen.insert(format!("{item:?}")), "{item:?} occurs twice");
    }
}
