//! The simulator: routers, a seeded scheduler standing in for an executor, and a virtual clock.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::future::Future;
use std::hash::Hash;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hermes_core::{
    Command, Config, DeadLetter, Done, Factory, Job, Recipient, Router, SendError, Sharded, Stats,
    TimerId,
};

use crate::reply::{self, AskError, Reply};

/// Jobs that may be checked out at once by default: a four-thread executor.
const DEFAULT_WORKERS: usize = 4;
/// Scheduling steps without a quiet moment before the simulation declares a livelock.
const DEFAULT_MAX_STEPS: u64 = 10_000_000;

/// A job checked out of router `.0`, not yet run or run and not yet checked back in.
enum Flight<K, M> {
    Out(usize, Job<K, M>),
    Ran(usize, Done<K, M>),
}

/// One thing the scheduler may do next.
#[derive(Clone, Copy)]
enum Action {
    Command,
    Execute,
    CheckIn,
    Forward,
}

/// A whole Hermes application on one thread, with virtual time and seeded interleavings.
///
/// The simulator plays the executor: it takes the routers' commands in a random order, checks
/// receivers out into a pool of "worker" jobs, runs them and checks them back in at random later
/// points, and moves messages between shards with random delays, all drawn from one seed. Time is
/// virtual: it stands still while there is work, and jumps to the next timer when there is none,
/// so hours of timers take milliseconds. The same seed replays the same run exactly, as long as
/// the receivers are deterministic (no real clocks, threads or unseeded randomness).
///
/// See the [crate docs](crate) for an example.
pub struct Sim<K, M> {
    seed: u64,
    rng: fastrand::Rng,
    config: Config,
    factory: Box<dyn Factory<K, M>>,
    routers: Vec<Router<K, M>>,
    workers: usize,
    max_steps: u64,
    epoch: Instant,
    elapsed: Duration,
    /// Commands taken from the routers, not yet handled: (router, command).
    commands: Vec<(usize, Command)>,
    jobs: Vec<Flight<K, M>>,
    /// Messages between routers, FIFO per (from, to) pair: index `from * n + to`.
    transit: Vec<VecDeque<(Recipient<K>, M)>>,
    dead: Vec<DeadLetter<K, M>>,
    /// Scheduling steps taken so far.
    steps: u64,
}

impl<K, M> Sim<K, M>
where
    K: Clone + Eq + Hash + Debug + Send + 'static,
    M: Send + 'static,
{
    /// A simulation of the application `factory` makes, with router `config`, one shard and
    /// four workers; every choice it makes comes from `seed`.
    pub fn new(seed: u64, config: Config, factory: impl Factory<K, M>) -> Self {
        let mut sim = Sim {
            seed,
            rng: fastrand::Rng::with_seed(seed),
            config,
            factory: Box::new(factory),
            routers: Vec::new(),
            workers: DEFAULT_WORKERS,
            max_steps: DEFAULT_MAX_STEPS,
            epoch: Instant::now(),
            elapsed: Duration::ZERO,
            commands: Vec::new(),
            jobs: Vec::new(),
            transit: Vec::new(),
            dead: Vec::new(),
            steps: 0,
        };
        sim.build_routers(1);
        sim
    }

    /// Splits the receivers over `shards` routers, placed by hash of ID as the executors place
    /// them; messages between shards travel with random delays. Call it before sending anything.
    ///
    /// # Panics
    ///
    /// If anything was sent or scheduled already, or `shards` is zero.
    pub fn with_shards(mut self, shards: u32) -> Self {
        assert!(shards > 0, "a simulation needs at least one shard");
        assert!(
            self.stats() == Stats::default(),
            "call with_shards before sending or scheduling anything"
        );
        self.build_routers(shards);
        self
    }

    /// How many jobs may be checked out at once (like executor threads; default 4). One worker
    /// still interleaves receivers, but never runs two at once.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers.max(1);
        self
    }

    /// How many scheduling steps may pass without a quiet moment before the simulation
    /// declares a livelock (default ten million).
    pub fn with_max_steps(mut self, steps: u64) -> Self {
        self.max_steps = steps;
        self
    }

    fn build_routers(&mut self, shards: u32) {
        self.routers = (0..shards)
            .map(|index| {
                if shards == 1 {
                    Router::new(self.config.clone())
                } else {
                    let placement = Sharded {
                        index,
                        count: shards,
                    };
                    Router::placed(self.config.clone(), index, placement)
                }
            })
            .collect();
        let n = self.routers.len();
        self.transit = (0..n * n).map(|_| VecDeque::new()).collect();
    }

    /// The seed this simulation draws every choice from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The simulated time: what receivers see as [`Context::now`](hermes_core::Context::now).
    pub fn now(&self) -> Instant {
        self.epoch + self.elapsed
    }

    /// Simulated time since the simulation started.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    fn shard_of(&self, id: &K) -> usize {
        Sharded::shard_of(id, self.routers.len() as u32) as usize
    }

    // ---- input --------------------------------------------------------------------------------

    /// Sends `msg` from outside to the receiver with ID `to`. It is handled when the
    /// simulation runs.
    pub fn send(&mut self, to: K, msg: M) -> Result<(), SendError<M>> {
        let r = self.shard_of(&to);
        let result = self.routers[r].send(to, msg);
        self.collect(r);
        result
    }

    /// Schedules `msg` for the receiver `to` after `after` of simulated time.
    pub fn schedule(&mut self, to: K, after: Duration, msg: M) -> Result<TimerId, SendError<M>> {
        let r = self.shard_of(&to);
        let deadline = self.now() + after;
        self.routers[r].schedule(to, deadline, msg)
    }

    /// Cancels a timer; true if it was pending (it will never fire).
    pub fn cancel(&mut self, timer: TimerId) -> bool {
        self.routers
            .get_mut(timer.router() as usize)
            .is_some_and(|r| r.cancel(timer))
    }

    /// Sends a request carrying a [`Reply`] made by `make`, and runs the simulation (without
    /// letting time pass) until the answer comes.
    ///
    /// ```
    /// use hermes_core::{Activation, Config, Context};
    /// use hermes_sim::{Reply, Sim};
    ///
    /// let mut sim = Sim::new(1, Config::default(), |_: &&str| {
    ///     Activation::ready(|_: &mut Context<'_, &str, Reply<u32>>, reply: Reply<u32>| {
    ///         reply.send(42)
    ///     })
    /// });
    /// assert_eq!(sim.ask("answer", |reply| reply), Ok(42));
    /// ```
    pub fn ask<T>(&mut self, to: K, make: impl FnOnce(Reply<T>) -> M) -> Result<T, AskError> {
        self.ask_within(to, Duration::ZERO, make)
    }

    /// Like [`ask`](Sim::ask), letting up to `within` of simulated time pass (for receivers that
    /// answer from a timer).
    pub fn ask_within<T>(
        &mut self,
        to: K,
        within: Duration,
        make: impl FnOnce(Reply<T>) -> M,
    ) -> Result<T, AskError> {
        let (reply, answer) = reply::pair();
        self.send(to, make(reply))
            .map_err(|e| AskError::Refused(e.kind()))?;
        self.run_until(within, || answer.try_take())
            .unwrap_or(Err(AskError::NoReply))
    }

    /// Runs the simulation, letting up to `within` of simulated time pass, until `future` is
    /// ready; `None` if it is not by then. Use it for replies that are futures, such as the
    /// executors' `Asked`: the future is polled between steps, never blocked on.
    pub fn wait<F: Future>(&mut self, within: Duration, future: F) -> Option<F::Output> {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(Waker::noop());
        self.run_until(within, || match future.as_mut().poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        })
    }

    // ---- running ------------------------------------------------------------------------------

    /// Takes one scheduling decision (handle a command, run a job, check one in, or deliver a
    /// message between shards), chosen by the seed. False if there was nothing to do now.
    pub fn step(&mut self) -> bool {
        let mut actions = Vec::with_capacity(4);
        if self.commands.iter().any(|c| self.may_take(c.1)) {
            actions.push(Action::Command);
        }
        if self.jobs.iter().any(|j| matches!(j, Flight::Out(..))) {
            actions.push(Action::Execute);
        }
        if self.jobs.iter().any(|j| matches!(j, Flight::Ran(..))) {
            actions.push(Action::CheckIn);
        }
        if self.transit.iter().any(|q| !q.is_empty()) {
            actions.push(Action::Forward);
        }
        if actions.is_empty() {
            return false;
        }
        self.steps += 1;
        match actions[self.rng.usize(..actions.len())] {
            Action::Command => self.take_command(),
            Action::Execute => self.execute(),
            Action::CheckIn => self.check_in(),
            Action::Forward => self.forward(),
        }
        true
    }

    /// True if a worker is free for `command` (activations run on the driver itself).
    fn may_take(&self, command: Command) -> bool {
        matches!(command, Command::Activate(_)) || self.jobs.len() < self.workers
    }

    fn take_command(&mut self) {
        let eligible: Vec<usize> = (0..self.commands.len())
            .filter(|&k| self.may_take(self.commands[k].1))
            .collect();
        let (r, command) = self
            .commands
            .remove(eligible[self.rng.usize(..eligible.len())]);
        let now = self.now();
        let router = &mut self.routers[r];
        match command {
            Command::Activate(_) => router
                .handle(command, &*self.factory, now)
                .expect("the simulator handles each activation once"),
            Command::Run(addr) | Command::Deactivate(addr) => {
                let job = router
                    .check_out(addr)
                    .expect("the simulator checks out each job once");
                self.jobs.push(Flight::Out(r, job));
            }
        }
        self.collect(r);
    }

    /// Picks a random job among those matching `pick`, and removes it.
    fn pick_job(&mut self, pick: impl Fn(&Flight<K, M>) -> bool) -> Flight<K, M> {
        let eligible: Vec<usize> = (0..self.jobs.len())
            .filter(|&k| pick(&self.jobs[k]))
            .collect();
        let k = eligible[self.rng.usize(..eligible.len())];
        self.jobs.swap_remove(k)
    }

    fn execute(&mut self) {
        if let Flight::Out(r, job) = self.pick_job(|j| matches!(j, Flight::Out(..))) {
            let done = job.execute(self.now());
            self.jobs.push(Flight::Ran(r, done));
        }
    }

    fn check_in(&mut self) {
        if let Flight::Ran(r, done) = self.pick_job(|j| matches!(j, Flight::Ran(..))) {
            let now = self.now();
            self.routers[r]
                .check_in(done, now)
                .expect("the simulator checks in each job once, to its router");
            self.collect(r);
        }
    }

    fn forward(&mut self) {
        let busy: Vec<usize> = (0..self.transit.len())
            .filter(|&q| !self.transit[q].is_empty())
            .collect();
        let q = busy[self.rng.usize(..busy.len())];
        if let Some((to, msg)) = self.transit[q].pop_front() {
            let r = q % self.routers.len();
            self.routers[r].forward(to, msg);
            self.collect(r);
        }
    }

    /// Takes router `r`'s commands, dead letters and messages for other shards.
    fn collect(&mut self, r: usize) {
        let n = self.routers.len();
        let router = &mut self.routers[r];
        while let Some(command) = router.poll_command() {
            self.commands.push((r, command));
        }
        self.dead
            .extend(std::iter::from_fn(|| router.poll_dead_letter()));
        while let Some((to, msg)) = router.poll_outbound() {
            let d = match &to {
                Recipient::Addr(a) => a.router() as usize,
                Recipient::Id(id) => Sharded::shard_of(id, n as u32) as usize,
            };
            self.transit[r * n + d].push_back((to, msg));
        }
    }

    /// Fires the timers due now on every router; true if any router had something due.
    fn fire_due(&mut self) -> bool {
        let now = self.now();
        let mut fired = false;
        for r in 0..self.routers.len() {
            if self.routers[r].poll_timeout().is_some_and(|at| at <= now) {
                self.routers[r].handle_timeout(now);
                self.collect(r);
                fired = true;
            }
        }
        fired
    }

    fn next_deadline(&self) -> Option<Duration> {
        self.routers
            .iter()
            .filter_map(Router::poll_timeout)
            .min()
            .map(|at| at.saturating_duration_since(self.epoch))
    }

    /// Runs until `done` says so, letting up to `within` of simulated time pass; the last
    /// answer of `done` (`None` if it never said so).
    fn run_until<T>(&mut self, within: Duration, mut done: impl FnMut() -> Option<T>) -> Option<T> {
        let end = self.elapsed + within;
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
                    self.seed, self.max_steps, self.elapsed
                );
            }
            if self.step() || self.fire_due() {
                continue;
            }
            match self.next_deadline() {
                Some(at) if at <= end => {
                    self.elapsed = self.elapsed.max(at);
                    steps = 0;
                }
                _ => return None,
            }
        }
    }

    /// Runs everything that can run without time passing: commands, jobs, messages between
    /// shards, and timers due now. Returns how many scheduling steps it took.
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
    /// timer to the next, ending exactly `duration` later.
    ///
    /// # Panics
    ///
    /// As [`run_until_quiet`](Sim::run_until_quiet).
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.elapsed + duration;
        self.run_until(duration, || None::<()>);
        self.elapsed = end;
        self.run_until_quiet();
    }

    /// Closes every router and runs until closing is done: queued messages drain, then every
    /// live receiver is deactivated exactly once. Outside sends are refused from now on.
    pub fn close(&mut self) {
        for r in 0..self.routers.len() {
            self.routers[r].close();
            self.collect(r);
        }
        self.run_until_quiet();
    }

    /// True once [`close`](Sim::close) has finished: no receiver is live.
    pub fn is_closed(&self) -> bool {
        self.routers.iter().all(Router::is_closed)
    }

    // ---- output -------------------------------------------------------------------------------

    /// Every message that could not be delivered so far, oldest first.
    pub fn dead_letters(&self) -> &[DeadLetter<K, M>] {
        &self.dead
    }

    /// Takes the dead letters collected so far, e.g. to resend their messages.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter<K, M>> {
        std::mem::take(&mut self.dead)
    }

    /// Counters and receiver counts, summed over the shards.
    pub fn stats(&self) -> Stats {
        let mut total = Stats::default();
        for router in &self.routers {
            total += router.stats();
        }
        total
    }
}
