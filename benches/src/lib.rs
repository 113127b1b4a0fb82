//! Workloads shared by the benchmarks, and the baseline they are measured against.
//!
//! A workload talks to a [`Dispatch`]: something that accepts messages for IDs and, when driven,
//! hands every queued message to its receiver. [`Routed`] is a Hermes [`Router`] driven inline on
//! the calling thread; [`Baseline`] is the plainest dispatch loop that does the same job — a
//! `VecDeque` per ID in a `HashMap`, a ready queue, a `Box<dyn FnMut>` per ID. Both are fed the
//! same messages in chunks of [`CHUNK`], so the ratio between them is the cost of what the
//! router adds (lifecycle, commands, batches, effects, timers, dead letters, stats).

use std::collections::VecDeque;
use std::hint::black_box;
use std::time::{Duration, Instant};

use hashbrown::HashMap;
use hermes_core::{Activation, Config, Context, Driver, Receiver, Router};

/// Messages are fed in chunks of this many, then the dispatcher is driven until it is idle.
pub const CHUNK: usize = 1024;

/// Accepts messages for IDs and delivers them when driven.
pub trait Dispatch {
    /// Queues `msg` for the receiver `id`, creating the receiver if needed.
    fn send(&mut self, id: u64, msg: u64);
    /// Delivers every queued message.
    fn drive(&mut self);
    /// Messages delivered so far (to check that a workload did its work).
    fn delivered(&self) -> u64;
}

/// A receiver whose state is one counter.
pub struct Counter(u64);

impl Receiver<u64, u64> for Counter {
    fn receive(&mut self, _ctx: &mut Context<'_, u64, u64>, msg: u64) {
        self.0 = self.0.wrapping_add(black_box(msg));
    }
}

/// A receiver with no state at all (zero-sized), for measuring what the router itself costs.
pub struct Stateless;

impl Receiver<u64, u64> for Stateless {
    fn receive(&mut self, _ctx: &mut Context<'_, u64, u64>, msg: u64) {
        black_box(msg);
    }
}

/// Makes the receiver for an ID.
pub type MakeReceiver = fn(&u64) -> Activation<u64, u64>;

/// A Hermes router driven inline: commands are handled as they come, on this thread.
pub struct Routed {
    router: Router<u64, u64>,
    factory: MakeReceiver,
    now: Instant,
}

impl Routed {
    /// A router with `config`; its factory makes a [`Counter`] for every ID.
    pub fn new(config: Config) -> Self {
        Self::with_factory(config, |_| Activation::ready(Counter(0)))
    }

    /// A router with `config` and `factory`.
    pub fn with_factory(config: Config, factory: MakeReceiver) -> Self {
        Routed {
            router: Router::new(config),
            factory,
            now: Instant::now(),
        }
    }

    /// The router, for stats.
    pub fn router(&self) -> &Router<u64, u64> {
        &self.router
    }
}

impl Dispatch for Routed {
    fn send(&mut self, id: u64, msg: u64) {
        if self.router.send(id, msg).is_err() {
            unreachable!("an open, unbounded router accepts every message");
        }
    }

    fn drive(&mut self) {
        while let Some(command) = self.router.poll_command() {
            if self
                .router
                .handle(command, &self.factory, self.now)
                .is_err()
            {
                unreachable!("the router's own commands, handled once each");
            }
        }
    }

    fn delivered(&self) -> u64 {
        self.router.stats().messages_delivered
    }
}

/// A Hermes [`Driver`] (a router plus its factory, every command handled inline): what a custom
/// event loop or a test uses. Driving it is [`Driver::run`], which also fires due timers.
pub struct Driven {
    driver: Driver<u64, u64, MakeReceiver>,
    now: Instant,
}

impl Driven {
    /// A driver with `config`; its factory makes a [`Counter`] for every ID.
    pub fn new(config: Config) -> Self {
        Driven {
            driver: Driver::new(config, |_| Activation::ready(Counter(0))),
            now: Instant::now(),
        }
    }
}

impl Dispatch for Driven {
    fn send(&mut self, id: u64, msg: u64) {
        if self.driver.send(id, msg).is_err() {
            unreachable!("an open router with room accepts every message");
        }
    }

    fn drive(&mut self) {
        self.driver.run(self.now);
    }

    fn delivered(&self) -> u64 {
        self.driver.router().stats().messages_delivered
    }
}

/// One ID's entry in the baseline: its queue and its handler.
struct Entry {
    queue: VecDeque<u64>,
    handler: Box<dyn FnMut(u64)>,
}

/// The baseline: a `VecDeque` per ID in a `HashMap`, a queue of IDs with messages, and a
/// `Box<dyn FnMut>` handler per ID. With `remove_when_empty`, an entry is dropped as soon as its
/// queue is drained (the counterpart of a zero idle timeout).
pub struct Baseline {
    entries: HashMap<u64, Entry>,
    ready: VecDeque<u64>,
    remove_when_empty: bool,
    make_handler: fn() -> Box<dyn FnMut(u64)>,
    delivered: u64,
}

impl Baseline {
    /// An empty baseline whose handlers are counters, like [`Counter`].
    pub fn new(remove_when_empty: bool) -> Self {
        Self::with_handler(remove_when_empty, || {
            let mut total = 0u64;
            Box::new(move |msg| total = total.wrapping_add(black_box(msg)))
        })
    }

    /// An empty baseline whose handlers `make_handler` makes.
    pub fn with_handler(
        remove_when_empty: bool,
        make_handler: fn() -> Box<dyn FnMut(u64)>,
    ) -> Self {
        Baseline {
            entries: HashMap::new(),
            ready: VecDeque::new(),
            remove_when_empty,
            make_handler,
            delivered: 0,
        }
    }
}

impl Dispatch for Baseline {
    fn send(&mut self, id: u64, msg: u64) {
        let make_handler = self.make_handler;
        let entry = self.entries.entry(id).or_insert_with(|| Entry {
            queue: VecDeque::new(),
            handler: make_handler(),
        });
        if entry.queue.is_empty() {
            self.ready.push_back(id);
        }
        entry.queue.push_back(msg);
    }

    fn drive(&mut self) {
        while let Some(id) = self.ready.pop_front() {
            let Some(entry) = self.entries.get_mut(&id) else {
                continue;
            };
            while let Some(msg) = entry.queue.pop_front() {
                (entry.handler)(msg);
                self.delivered += 1;
            }
            if self.remove_when_empty {
                self.entries.remove(&id);
            }
        }
    }

    fn delivered(&self) -> u64 {
        self.delivered
    }
}

/// Sends `messages` to one receiver, in chunks, driving after each.
pub fn one_receiver(d: &mut impl Dispatch, messages: u64) {
    for start in (0..messages).step_by(CHUNK) {
        for msg in start..(start + CHUNK as u64).min(messages) {
            d.send(0, msg);
        }
        d.drive();
    }
}

/// Sends `messages` to one receiver one at a time, driving after each: every message finds the
/// receiver idle (the router's full lifecycle step per message, as in request/response).
pub fn one_each(d: &mut impl Dispatch, messages: u64) {
    for msg in 0..messages {
        d.send(0, msg);
        d.drive();
    }
}

/// Sends `per_receiver` messages to each of `receivers` IDs, round-robin, in chunks, driving
/// after each.
pub fn round_robin(d: &mut impl Dispatch, receivers: u64, per_receiver: u64) {
    let mut in_chunk = 0;
    for round in 0..per_receiver {
        for id in 0..receivers {
            d.send(id, round);
            in_chunk += 1;
            if in_chunk == CHUNK {
                d.drive();
                in_chunk = 0;
            }
        }
    }
    d.drive();
}

/// Sends one message to each of `ids` fresh IDs starting at `first`, in chunks, driving after
/// each: with receivers removed when idle, every ID is created, delivered to and removed.
pub fn churn(d: &mut impl Dispatch, first: u64, ids: u64) {
    for start in (first..first + ids).step_by(CHUNK) {
        for id in start..(start + CHUNK as u64).min(first + ids) {
            d.send(id, id);
        }
        d.drive();
    }
}

/// A router configured for churn: receivers are deactivated as soon as their mailbox is empty.
pub fn churn_config() -> Config {
    Config::default().idle_timeout(Duration::ZERO)
}
