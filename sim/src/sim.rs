//! The simulator: the real shards, a seeded scheduler standing in for the executor's threads,
//! and a virtual clock.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, App, Clock, Config, DeadLetter, Factory, Key, Kind, KindTable, Location, Message,
    Placement, SendError, Stats, TimerId,
};
use hermes_executor::{
    AskError, Hermes, Options, Remote, Reply, Runtime, Shard, Spawned, Turn, Wake, WouldDeadlock,
    launch,
};

/// Scheduling steps without a quiet moment before the simulation declares a livelock.
const DEFAULT_MAX_STEPS: u64 = 10_000_000;

/// The deliberate bug switched on in every shard, if any (feature `fault-injection`).
#[derive(Clone, Copy, Debug, Default)]
struct Fault {
    #[cfg(feature = "fault-injection")]
    shard: Option<hermes_executor::ShardFault>,
}

impl Fault {
    /// `options` with the bug switched on.
    fn inject<K, M>(self, options: Options<K, M>) -> Options<K, M> {
        #[cfg(feature = "fault-injection")]
        if let Some(fault) = self.shard {
            return options.inject_fault(fault);
        }
        options
    }
}

/// A whole Hermes application on one thread, with virtual time and seeded interleavings.
///
/// The simulator runs the same shards as the executors (the same turn, per-turn budgets,
/// carried-over commands, cross-shard mail through the same inboxes, the same park and wake
/// protocol), and plays the executor's threads itself: a seeded scheduler decides which shard
/// that has work takes its next turn. Each seed also picks the shards' turn budgets, small ones
/// for some seeds, so that budget and carry-over paths run. Time is virtual: it stands still
/// while there is work, and jumps to the next deadline when there is none, so hours of timers
/// take milliseconds. The same seed replays the same run exactly, as long as the receivers are
/// deterministic (no real clocks, threads or unseeded randomness).
///
/// See the [crate docs](crate) for an example.
pub struct Sim<K: Key, M: Message, A: App<Id = K, Msg = M> = (K, M)> {
    seed: u64,
    rng: fastrand::Rng,
    config: Config,
    factory: Shared<K, M, A>,
    fault: Fault,
    /// Each shard's inbox capacity, if not the executors' default.
    inbox_capacity: Option<usize>,
    /// Where IDs live and where mail for other nodes goes, for a node of a simulated cluster.
    cluster: Option<Node<K, M>>,
    clock: Arc<VirtualClock>,
    hermes: Hermes<K, M, A>,
    shards: Vec<SimShard<K, M>>,
    /// Where the shards' dead-letter sink puts them, moved to `dead` after every turn.
    sunk: Arc<Mutex<Vec<DeadLetter<K, M>>>>,
    /// The tasks receivers started, polled as scheduling steps.
    tasks: Arc<Mutex<Vec<SimTask>>>,
    dead: Vec<DeadLetter<K, M>>,
    max_steps: u64,
    /// Scheduling steps taken so far.
    steps: u64,
}

/// A node of a simulated cluster: its placement and its transport.
struct Node<K, M> {
    placement: Arc<dyn Placement<K>>,
    remote: Arc<dyn Remote<K, M>>,
}

impl<K, M> Clone for Node<K, M> {
    fn clone(&self) -> Self {
        Node {
            placement: Arc::clone(&self.placement),
            remote: Arc::clone(&self.remote),
        }
    }
}

/// A placement behind an `Arc`, as `Options::placement` takes it.
struct SharedPlacement<K>(Arc<dyn Placement<K>>);

impl<K: 'static> Placement<K> for SharedPlacement<K> {
    fn locate(&self, id: &K) -> Location {
        self.0.locate(id)
    }
}

/// The virtual clock of a simulation, to share between the simulations of the nodes of a
/// simulated cluster ([`Sim::with_clock`]), so that they all see the same time. Only its
/// owner moves it ([`SimClock::advance_to`]).
///
/// ```
/// use std::time::Duration;
/// use hermes_core::{Activation, Config, Context};
/// use hermes_sim::{Sim, SimClock};
///
/// let node = |_: &u32| Activation::ready(|_: &mut Context<'_, u32, ()>, _: ()| {});
/// let clock = SimClock::new();
/// let a = Sim::new(1, Config::default(), node).with_clock(clock.clone());
/// let b = Sim::new(2, Config::default(), node).with_clock(clock.clone());
/// clock.advance_to(Duration::from_secs(5));
/// assert_eq!((a.elapsed(), b.elapsed()), (clock.elapsed(), clock.elapsed()));
/// clock.advance_to(Duration::from_secs(1)); // never backwards
/// assert_eq!(a.now(), clock.at(Duration::from_secs(5)));
/// ```
#[derive(Clone, Debug)]
pub struct SimClock(Arc<VirtualClock>);

impl SimClock {
    /// The furthest a clock goes: about 584 years of simulated time (`u64::MAX` nanoseconds).
    /// Later times are clamped to it, so no simulated time overflows.
    pub const MAX: Duration = Duration::from_nanos(u64::MAX);

    /// A clock at zero.
    pub fn new() -> Self {
        SimClock(Arc::new(VirtualClock {
            epoch: Instant::now(),
            elapsed: AtomicU64::new(0),
        }))
    }

    /// Simulated time since the clock started.
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }

    /// The simulated instant: what receivers see as `Context::now`.
    pub fn now(&self) -> Instant {
        self.0.now()
    }

    /// The instant `elapsed` after the clock's start (at most [`SimClock::MAX`] after it).
    pub fn at(&self, elapsed: Duration) -> Instant {
        self.0.epoch + elapsed.min(SimClock::MAX)
    }

    /// Moves the clock to `elapsed` since its start (at most [`SimClock::MAX`]); never
    /// backwards (an earlier time is ignored).
    pub fn advance_to(&self, elapsed: Duration) {
        if elapsed > self.0.elapsed() {
            self.0.set(elapsed);
        }
    }
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock::new()
    }
}

/// One thing the scheduler may do next.
#[derive(Clone, Copy)]
enum Step {
    Shard(usize),
    Task(usize),
}

/// One shard and what the scheduler knows about it.
struct SimShard<K: Key, M: Message> {
    /// `None` once it has exited (and been dropped, as an executor drops it).
    shard: Option<Shard<K, M>>,
    /// Rung by a push to the shard's inbox while it is parked.
    bell: Arc<AtomicBool>,
    /// What its last turn said.
    last: Turn,
}

/// The virtual clock: the epoch plus simulated nanoseconds, shared with the handle (for
/// `Hermes::schedule`) and passed to every turn.
#[derive(Debug)]
struct VirtualClock {
    epoch: Instant,
    elapsed: AtomicU64,
}

impl VirtualClock {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.elapsed.load(Ordering::Relaxed))
    }

    fn set(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.elapsed.store(nanos, Ordering::Relaxed);
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Instant {
        self.epoch + self.elapsed()
    }
}

/// A task a receiver started, and whether it was woken since it was last polled.
struct SimTask {
    future: Spawned,
    woken: Arc<Woken>,
}

/// A task's waker: marks it ready to be polled.
struct Woken(AtomicBool);

impl std::task::Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The handle's view of the simulated executor: virtual time, no thread to block on, and
/// tasks kept for the scheduler to poll.
struct SimRuntime(Arc<VirtualClock>, Arc<Mutex<Vec<SimTask>>>);

impl Runtime for SimRuntime {
    fn spawn(&self, future: Spawned) {
        let woken = Arc::new(Woken(AtomicBool::new(true)));
        self.1
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(SimTask { future, woken });
    }

    fn block(&self, _wait: &mut dyn FnMut()) -> Result<(), WouldDeadlock> {
        // Everything runs on the simulation's thread: waiting here would wait forever.
        Err(WouldDeadlock)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }
}

struct Bell(Arc<AtomicBool>);

impl Wake for Bell {
    fn wake(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The application's factory, shared so the simulation can be rebuilt with more shards.
struct Shared<K, M, A> {
    create: hermes_core::SharedFactory<K, M>,
    kinds: Option<KindTable<K>>,
    app: std::marker::PhantomData<fn() -> A>,
}

impl<K, M, A> Clone for Shared<K, M, A> {
    fn clone(&self) -> Self {
        Shared {
            create: Arc::clone(&self.create),
            kinds: self.kinds.clone(),
            app: std::marker::PhantomData,
        }
    }
}

impl<K: Key, M: Message, A: App<Id = K, Msg = M>> Factory<K, M> for Shared<K, M, A> {
    type App = A;

    fn create(&self, id: &K) -> Activation<K, M> {
        (self.create)(id)
    }

    fn kinds(&self) -> Option<KindTable<K>> {
        self.kinds.clone()
    }
}

impl<K: Key, M: Message> Sim<K, M> {
    /// A simulation of the application `factory` makes, with router `config` and one shard;
    /// every choice it makes comes from `seed`.
    pub fn new<F: Factory<K, M>>(seed: u64, config: Config, factory: F) -> Sim<K, M, F::App> {
        Sim::build(seed, config, factory)
    }
}

impl<K: Key, M: Message, A: App<Id = K, Msg = M>> Sim<K, M, A> {
    fn build<F: Factory<K, M, App = A>>(seed: u64, config: Config, factory: F) -> Self {
        let clock = Arc::new(VirtualClock {
            epoch: Instant::now(),
            elapsed: AtomicU64::new(0),
        });
        let factory = Shared {
            kinds: factory.kinds(),
            create: hermes_core::share(factory),
            app: std::marker::PhantomData,
        };
        let sunk = Arc::new(Mutex::new(Vec::new()));
        let mut rng = fastrand::Rng::with_seed(seed);
        let fault = Fault::default();
        let tasks = Arc::new(Mutex::new(Vec::new()));
        let (hermes, shards) = Self::launch(
            &mut rng, &config, &factory, &clock, &sunk, &tasks, 1, fault, None, None,
        );
        Sim {
            seed,
            rng,
            config,
            factory,
            fault,
            inbox_capacity: None,
            cluster: None,
            clock,
            hermes,
            shards,
            sunk,
            tasks,
            dead: Vec::new(),
            max_steps: DEFAULT_MAX_STEPS,
            steps: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn launch(
        rng: &mut fastrand::Rng,
        config: &Config,
        factory: &Shared<K, M, A>,
        clock: &Arc<VirtualClock>,
        sunk: &Arc<Mutex<Vec<DeadLetter<K, M>>>>,
        tasks: &Arc<Mutex<Vec<SimTask>>>,
        shards: u32,
        fault: Fault,
        inbox_capacity: Option<usize>,
        cluster: Option<Node<K, M>>,
    ) -> (Hermes<K, M, A>, Vec<SimShard<K, M>>) {
        let sink = Arc::clone(sunk);
        let mut options = Options::new(config.clone())
            .shards(shards as usize)
            .name("sim")
            .on_dead_letter(move |letter| {
                sink.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(letter);
            });
        // Half the seeds run with tiny turn budgets, so that carried-over commands and inbox
        // backlogs happen in small tests too.
        if rng.bool() {
            options = options.turn_budget(rng.usize(1..=4), rng.usize(1..=4));
        }
        options = fault.inject(options);
        if let Some(capacity) = inbox_capacity {
            options = options.inbox_capacity(capacity);
        }
        if let Some(node) = cluster {
            options = options
                .placement(SharedPlacement(node.placement))
                .remote(node.remote);
        }
        let runtime = SimRuntime(Arc::clone(clock), Arc::clone(tasks));
        let (hermes, shards) = launch(options, factory.clone(), runtime, || {
            let bell = Arc::new(AtomicBool::new(false));
            (Bell(Arc::clone(&bell)), bell)
        });
        let shards = shards
            .into_iter()
            .map(|(shard, bell)| SimShard {
                shard: Some(shard),
                bell,
                last: Turn::Busy,
            })
            .collect();
        (hermes, shards)
    }

    fn relaunch(&mut self, shards: u32) {
        assert!(
            self.stats() == Stats::default() && self.steps == 0,
            "configure the simulation before sending or scheduling anything"
        );
        let mut rng = fastrand::Rng::with_seed(self.seed);
        let (hermes, list) = Self::launch(
            &mut rng,
            &self.config,
            &self.factory,
            &self.clock,
            &self.sunk,
            &self.tasks,
            shards,
            self.fault,
            self.inbox_capacity,
            self.cluster.clone(),
        );
        // The old shards are dropped (closing inline, with nothing in them) before the new run.
        self.shards = list;
        self.hermes = hermes;
        self.rng = rng;
    }

    /// Splits the receivers over `shards` shards, placed as the executors place them; mail
    /// between shards goes through their inboxes. Call it before sending anything.
    ///
    /// # Panics
    ///
    /// If anything was sent or scheduled already, or `shards` is zero.
    pub fn with_shards(mut self, shards: u32) -> Self {
        assert!(shards > 0, "a simulation needs at least one shard");
        self.relaunch(shards);
        self
    }

    /// Switches on a deliberate bug in every shard, to show that a test under the simulator
    /// catches it. Call it before [`with_shards`](Sim::with_shards) and before sending anything.
    #[cfg(feature = "fault-injection")]
    pub fn with_fault(mut self, fault: hermes_executor::ShardFault) -> Self {
        self.fault.shard = Some(fault);
        let shards = self.shards.len() as u32;
        self.relaunch(shards);
        self
    }

    /// Each shard's inbox holds `capacity` messages from outside (see
    /// `Options::inbox_capacity`). Call it before sending anything.
    pub fn with_inbox_capacity(mut self, capacity: usize) -> Self {
        self.inbox_capacity = Some(capacity);
        let shards = self.shards.len() as u32;
        self.relaunch(shards);
        self
    }

    /// Runs this simulation as one node of a simulated cluster: `placement` says where every
    /// ID lives (a local shard, which must be below the simulation's shard count, or another
    /// node), and `remote` takes the mail for other nodes, as a cluster's transport does. Call
    /// it before [`with_shards`](Sim::with_shards) and before sending anything.
    pub fn with_node(
        mut self,
        placement: Arc<dyn Placement<K>>,
        remote: Arc<dyn Remote<K, M>>,
    ) -> Self {
        self.cluster = Some(Node { placement, remote });
        let shards = self.shards.len() as u32;
        self.relaunch(shards);
        self
    }

    /// Runs on `clock`, shared with other simulations (the nodes of a simulated cluster);
    /// only its owner moves it. Call it before sending anything.
    pub fn with_clock(mut self, clock: SimClock) -> Self {
        self.clock = clock.0;
        let shards = self.shards.len() as u32;
        self.relaunch(shards);
        self
    }

    /// How many scheduling steps may pass without a quiet moment before the simulation
    /// declares a livelock (default ten million).
    pub fn with_max_steps(mut self, steps: u64) -> Self {
        self.max_steps = steps;
        self
    }

    /// The seed this simulation draws every choice from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The simulated time: what receivers see as [`Context::now`](hermes_core::Context::now).
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Simulated time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }

    /// The application's handle, as the executors return it: code written against
    /// [`Hermes`] runs under the simulation. Its blocking forms (`ask_blocking`, `shutdown`)
    /// refuse with `WouldDeadlock`: await its futures with [`wait`](Sim::wait).
    pub fn handle(&self) -> &Hermes<K, M, A> {
        &self.hermes
    }

    // ---- input --------------------------------------------------------------------------------

    /// Sends `msg` from outside to the receiver with ID `to` (of the message's kind). It is
    /// handled when the simulation runs.
    pub fn send<T: Kind<A>>(&mut self, to: T::Id, msg: T) -> Result<(), SendError<T>> {
        self.hermes.send(to, msg)
    }

    /// Schedules `msg` for the receiver `to` after `after` of simulated time.
    pub fn schedule<T: Kind<A>>(
        &mut self,
        to: T::Id,
        after: Duration,
        msg: T,
    ) -> Result<TimerId, SendError<T>> {
        self.hermes.schedule(to, after, msg)
    }

    /// Cancels a timer: it will not fire unless it is already due.
    pub fn cancel(&mut self, timer: TimerId) {
        self.hermes.cancel(timer);
    }

    /// Sends a request carrying a [`Reply`] made by `make`, and runs the simulation (without
    /// letting time pass) until the answer comes; [`AskError::Timeout`] if it does not.
    ///
    /// ```
    /// use hermes_core::{Activation, Config, Context};
    /// use hermes_executor::Reply;
    /// use hermes_sim::Sim;
    ///
    /// let mut sim = Sim::new(1, Config::default(), |_: &&str| {
    ///     Activation::ready(|_: &mut Context<'_, &'static str, Reply<u32>>, reply: Reply<u32>| {
    ///         let _ = reply.send(42);
    ///     })
    /// });
    /// assert_eq!(sim.ask("answer", |reply| reply), Ok(42));
    /// ```
    pub fn ask<T: Kind<A>, R>(
        &mut self,
        to: T::Id,
        make: impl FnOnce(Reply<R>) -> T,
    ) -> Result<R, AskError> {
        self.ask_within(to, Duration::ZERO, make)
    }

    /// Like [`ask`](Sim::ask), letting up to `within` of simulated time pass (for receivers that
    /// answer from a timer).
    pub fn ask_within<T: Kind<A>, R>(
        &mut self,
        to: T::Id,
        within: Duration,
        make: impl FnOnce(Reply<R>) -> T,
    ) -> Result<R, AskError> {
        let asked = self.hermes.ask(to, make);
        self.wait(within, asked).unwrap_or(Err(AskError::Timeout))
    }

    /// Runs the simulation, letting up to `within` of simulated time pass, until `future` is
    /// ready; `None` if it is not by then. Use it for answers that are futures, such as
    /// `Hermes::ask` and `Hermes::shutdown_async`: the future is polled between steps, never
    /// blocked on.
    pub fn wait<F: Future>(&mut self, within: Duration, future: F) -> Option<F::Output> {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        self.run_until(within, || match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    }

    // ---- running ------------------------------------------------------------------------------

    /// Takes one scheduling step, chosen by the seed among what can run now: a turn of a shard
    /// that has work, or a poll of a task a receiver started that was woken. False if nothing
    /// could run.
    pub fn step(&mut self) -> bool {
        let now = self.clock.now();
        let shards = (0..self.shards.len()).filter(|&s| self.shards[s].is_ready(now));
        let tasks = self.lock_tasks();
        let woken = (0..tasks.len()).filter(|&t| tasks[t].woken.0.load(Ordering::Relaxed));
        let ready: Vec<Step> = shards
            .map(Step::Shard)
            .chain(woken.map(Step::Task))
            .collect();
        drop(tasks);
        if ready.is_empty() {
            return false;
        }
        self.steps += 1;
        match ready[self.rng.usize(..ready.len())] {
            Step::Shard(s) => self.turn(s),
            Step::Task(t) => self.poll_task(t),
        }
        let sunk = std::mem::take(&mut *self.sunk.lock().unwrap_or_else(PoisonError::into_inner));
        self.dead.extend(sunk);
        true
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<SimTask>> {
        self.tasks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One turn of shard `s`.
    fn turn(&mut self, s: usize) {
        let shard = &mut self.shards[s];
        shard.bell.store(false, Ordering::Relaxed);
        if let Some(running) = &mut shard.shard {
            shard.last = running.turn(&*self.clock);
            if shard.last == Turn::Exit {
                // As an executor does: a shard that exited is dropped.
                shard.shard = None;
            }
        }
    }

    /// Polls task `t` once; it stays if it is not finished. A panic in a receiver's future is
    /// caught inside it, as on the executors (the same shard code wraps it): the task ends
    /// without an outcome, and its receiver stops waiting for it.
    fn poll_task(&mut self, t: usize) {
        // Out of the list while it runs: polling may start more tasks.
        let mut task = self.lock_tasks().remove(t);
        task.woken.0.store(false, Ordering::Relaxed);
        let waker = Waker::from(Arc::clone(&task.woken));
        let mut cx = Context::from_waker(&waker);
        if task.future.as_mut().poll(&mut cx).is_pending() {
            let mut tasks = self.lock_tasks();
            let at = t.min(tasks.len());
            tasks.insert(at, task);
        }
    }

    /// The earliest deadline of a parked shard (a timer, an idle timeout), as simulated time
    /// since the start: when there is next something to do if nothing arrives before.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.shards
            .iter()
            .filter_map(|s| match s.last {
                Turn::Park(deadline) if s.shard.is_some() => deadline,
                _ => None,
            })
            .min()
            .map(|at| at.saturating_duration_since(self.clock.epoch))
    }

    /// Runs until `done` says so, letting up to `within` of simulated time pass; the last
    /// answer of `done` (`None` if it never said so).
    fn run_until<T>(&mut self, within: Duration, mut done: impl FnMut() -> Option<T>) -> Option<T> {
        let end = self.end(within);
        let mut steps = 0u64;
        loop {
            if let Some(v) = done() {
                return Some(v);
            }
            steps += 1;
            if steps > self.max_steps {
                panic!(
                    "hermes-sim (seed {}): no quiet moment in {} steps at {:?} of simulated \
                     time: receivers keep sending to each other without time passing; raise \
                     Sim::with_max_steps if the workload is really that large",
                    self.seed,
                    self.max_steps,
                    self.elapsed()
                );
            }
            if self.step() {
                continue;
            }
            match self.next_deadline() {
                Some(at) if at <= end => {
                    self.clock.set(self.elapsed().max(at));
                    steps = 0;
                }
                _ => return None,
            }
        }
    }

    /// Runs everything that can run without time passing: turns of every shard with work,
    /// including timers due now. Returns how many scheduling steps it took.
    ///
    /// # Panics
    ///
    /// If the application never becomes quiet (receivers sending to each other forever
    /// without time passing), after [`with_max_steps`](Sim::with_max_steps) steps.
    pub fn run_until_quiet(&mut self) -> u64 {
        let before = self.steps;
        self.run_until(Duration::ZERO, || None::<()>);
        self.steps - before
    }

    /// Runs for `duration` of simulated time: everything runs, and the clock jumps from one
    /// deadline to the next, ending exactly `duration` later. Time past [`SimClock::MAX`] is
    /// not reached: `run_for(Duration::MAX)` runs every timer due before it (a periodic one as
    /// many times as fit) and stops the clock there.
    ///
    /// # Panics
    ///
    /// As [`run_until_quiet`](Sim::run_until_quiet).
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.end(duration);
        self.run_until(duration, || None::<()>);
        self.clock.set(end);
        self.run_until_quiet();
    }

    /// The simulated time `within` from now, clamped to [`SimClock::MAX`].
    fn end(&self, within: Duration) -> Duration {
        self.elapsed().saturating_add(within).min(SimClock::MAX)
    }

    /// Shuts the application down as `Hermes::shutdown` does, and runs until every shard has
    /// finished: outside sends are refused, queued messages drain (up to
    /// [`Config::drain_limit`]), then every live receiver is deactivated exactly once.
    pub fn close(&mut self) {
        let finished = self.hermes.shutdown_async();
        if self.wait(Duration::ZERO, finished).is_none() {
            tracing::warn!(seed = self.seed, "hermes-sim: close did not finish");
        }
    }

    /// True once [`close`](Sim::close) has finished: every shard has exited.
    pub fn is_closed(&self) -> bool {
        self.shards.iter().all(|s| s.shard.is_none())
    }

    // ---- output -------------------------------------------------------------------------------

    /// Every message that could not be delivered so far, oldest first. Kept until taken: a
    /// [`Reply`] inside one is not dropped meanwhile, so its asker waits (and an ask times out)
    /// where an executor without a dead-letter sink would drop it at once (`Dropped`).
    pub fn dead_letters(&self) -> &[DeadLetter<K, M>] {
        &self.dead
    }

    /// Takes the dead letters collected so far, e.g. to resend their messages.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter<K, M>> {
        std::mem::take(&mut self.dead)
    }

    /// Counters and receiver counts, summed over the shards.
    pub fn stats(&self) -> Stats {
        self.hermes.stats()
    }
}

impl<K: Key, M: Message> SimShard<K, M> {
    /// True if a turn now would have something to do.
    fn is_ready(&self, now: Instant) -> bool {
        if self.shard.is_none() {
            return false;
        }
        match self.last {
            Turn::Busy => true,
            Turn::Park(deadline) => {
                self.bell.load(Ordering::Relaxed) || deadline.is_some_and(|at| at <= now)
            }
            Turn::Exit => false,
        }
    }
}

impl<K: Key, M: Message, A: App<Id = K, Msg = M>> fmt::Debug for Sim<K, M, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("seed", &self.seed)
            .field("shards", &self.shards.len())
            .field("elapsed", &self.elapsed())
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}
