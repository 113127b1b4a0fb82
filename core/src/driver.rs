//! A single-threaded driver that handles every command inline: for custom event loops and tests.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Instant;

use crate::{
    Clock, Command, Config, DeadLetter, Factory, Key, Kind, Message, Router, SendError, Task,
};

/// A [`Router`] plus its factory, handling every command on the calling thread.
///
/// Poll the dead letters now and then ([`poll_dead_letter`](Driver::poll_dead_letter)): the
/// router keeps at most [`Config::dead_letter_capacity`] of them, and counts the ones it drops
/// in [`Stats::dead_letters_dropped`](crate::Stats::dead_letters_dropped).
///
/// Work that receivers start ([`Context::spawn`](crate::Context::spawn),
/// [`Context::ask`](crate::Context::ask)) runs inline too: [`run`](Driver::run) polls it on
/// the calling thread and gives each outcome back to its receiver, so an ask between receivers
/// is answered within the same `run`, and one that is not ends with `Timeout` on the first
/// `run` at or after its deadline ([`poll_timeout`](Driver::poll_timeout) says when). The
/// driver has no waker of its own: a future waiting on something outside Hermes (I/O, another
/// thread) is polled again on the next `run`, so call `run` once that may have finished, or
/// use an executor. A task whose future panics ends without an outcome, as on an executor
/// (see [`Task`]): other work goes on, and its receiver stops waiting for it.
///
/// ```
/// use std::time::Instant;
/// use hermes_core::{Activation, Config, Context, Driver};
///
/// let mut driver = Driver::new(Config::default(), |_id: &u32| {
///     Activation::ready(|ctx: &mut Context<'_, u32, &'static str>, msg| {
///         assert_eq!(msg, "hello");
///         ctx.stop();
///     })
/// });
/// driver.send(7, "hello").unwrap();
/// driver.run(Instant::now());
/// assert_eq!(driver.router().stats().deactivations, 1);
/// ```
pub struct Driver<K, M, F> {
    router: Router<K, M>,
    factory: F,
    /// Work receivers started that has not finished, in the order it was started.
    tasks: Vec<Task<M>>,
}

impl<K, M, F> Driver<K, M, F>
where
    K: Key,
    M: Message,
    F: Factory<K, M>,
{
    /// A driver over a new router.
    pub fn new(config: Config, factory: F) -> Self {
        let mut router = Router::new(config);
        router.use_kinds(factory.kinds());
        Driver {
            router,
            factory,
            tasks: Vec::new(),
        }
    }

    /// The router, to read stats or poll dead letters.
    pub fn router(&self) -> &Router<K, M> {
        &self.router
    }

    /// The router, to send by handle, schedule or cancel.
    pub fn router_mut(&mut self) -> &mut Router<K, M> {
        &mut self.router
    }

    /// Queues `msg` for `to` (of any kind of the factory's application); it is handled on the
    /// next [`run`](Driver::run). A refused message is given back in the application's type.
    pub fn send<T: Kind<F::App>>(&mut self, to: T::Id, msg: T) -> Result<(), SendError<M>> {
        self.router.send(T::into_app_id(to), msg.into_app_msg())
    }

    /// Handles the next pending command, reading the time from `clock` (an `Instant` for a fixed
    /// time), and returns it, or `None` if there is none. Work receivers started is run by
    /// [`run`](Driver::run), not here.
    pub fn step(&mut self, clock: impl Clock) -> Option<Command> {
        let command = self.router.poll_command()?;
        if let Err(e) = self.router.handle(command, &self.factory, &clock) {
            // Commands come from this router and are handled once each, so this is a bug.
            unreachable!("inline driver mishandled {command:?}: {e}");
        }
        Some(command)
    }

    /// Fires the timers due now, then handles commands and polls the work receivers started
    /// (giving back each outcome, which makes more commands) until neither has anything left,
    /// reading the time from `clock` (an `Instant` for a fixed time). Returns how many
    /// commands were handled.
    pub fn run(&mut self, clock: impl Clock) -> usize {
        self.router.handle_timeout(clock.now());
        let mut handled = 0;
        loop {
            while self.step(&clock).is_some() {
                handled += 1;
            }
            if !self.poll_tasks(&clock) {
                return handled;
            }
        }
    }

    /// Polls every unfinished task once, in the order they were started, and gives the
    /// outcomes back to the router. True if any task finished (or was found aborted).
    fn poll_tasks(&mut self, clock: &impl Clock) -> bool {
        while let Some(task) = self.router.poll_task() {
            self.tasks.push(task);
        }
        let mut cx = TaskContext::from_waker(Waker::noop());
        let mut finished = false;
        let mut i = 0;
        while i < self.tasks.len() {
            // A panic in the task's future is caught inside `Task::poll`.
            if let Poll::Ready(outcome) = Pin::new(&mut self.tasks[i]).poll(&mut cx) {
                let id = self.tasks.remove(i).id();
                match outcome {
                    Some(msg) => self.router.complete(id, msg, clock.now()),
                    None => self.router.abandon(id, clock.now()),
                }
                finished = true;
            } else {
                i += 1;
            }
        }
        finished
    }

    /// Closes the router and runs until every receiver is deactivated.
    pub fn close(&mut self, clock: impl Clock) {
        self.router.close();
        self.run(clock);
        debug_assert!(self.router.is_closed());
    }

    /// The next undeliverable message.
    #[must_use = "a dead letter is the only report of an undeliverable message"]
    pub fn poll_dead_letter(&mut self) -> Option<DeadLetter<K, M>> {
        self.router.poll_dead_letter()
    }

    /// The next time [`run`](Driver::run) has timers to fire.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.router.poll_timeout()
    }
}

impl<K, M, F> fmt::Debug for Driver<K, M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("router", &self.router)
            .field("tasks", &self.tasks.len())
            .finish_non_exhaustive()
    }
}
