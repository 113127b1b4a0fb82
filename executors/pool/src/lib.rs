//! The default Hermes executor: a hand-rolled thread pool with one thread per shard.
//!
//! Each thread has a home shard ([`Crew`]). It runs its home shard's turns back to back while
//! there is work. When the home shard has none, the thread turns the shards that its last turn
//! sent mail to, if no other thread is running them, instead of waking their threads: two
//! receivers on different shards that talk to each other then run on one thread, without a
//! hand-off between cores per message. With nothing left, it watches its wake-up channel for a
//! few tens of microseconds (an answer on its way then costs no sleep and wake-up), then blocks
//! on it until a message arrives or its next timer is due: an idle pool uses no CPU. While its
//! home shard is busy, a thread wakes the other shards' threads instead, so that independent
//! work keeps every thread busy.
//!
//! Receivers run on any of the pool's threads (`NAME-0`, `NAME-1`, ...), one shard on one
//! thread at a time, so a receiver never runs concurrently with itself or with any receiver of
//! its shard. One that blocks holds up its shard and, while it runs on another shard's thread,
//! that thread's own shard.
//!
//! Work receivers start (`Context::spawn`, `Context::ask`) runs on one more thread,
//! `NAME-tasks`: an [`async_executor::Executor`] driven with [async-io]'s reactor, so futures
//! may use async-io's timers and sockets (and anything runtime-independent); futures that need
//! tokio's reactor belong on the tokio executor. The thread starts with the pool and is joined
//! at shutdown; tasks still running then are dropped. A future must not block that thread:
//! the blocking forms (`ask_blocking`, `shutdown`, ...) refuse there with `WouldDeadlock`, as
//! they do inside a receiver; await `ask` and `shutdown_async` instead.
//!
//! [async-io]: https://docs.rs/async-io
//!
//! ```
//! use std::time::Duration;
//! use hermes_core::{Activation, Config, Context};
//! use hermes_executor::Reply;
//!
//! enum Msg { Add(u64), Total(Reply<u64>) }
//!
//! let hermes = hermes_pool::start(Config::default(), |_id: &String| {
//!     let mut total = 0;
//!     Activation::ready(move |_ctx: &mut Context<'_, String, Msg>, msg| match msg {
//!         Msg::Add(n) => total += n,
//!         Msg::Total(reply) => { let _ = reply.send(total); }
//!     })
//! })?;
//! hermes.send("account-1".into(), Msg::Add(5))?;
//! hermes.send("account-1".into(), Msg::Add(7))?;
//! let total = hermes.ask_blocking("account-1".into(), Msg::Total, Duration::from_secs(5))?;
//! assert_eq!(total, 12);
//! let stats = hermes.shutdown().unwrap(); // drains, runs every `deactivated` hook, joins the threads
//! assert_eq!(stats.deactivations, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_debug_implementations)]

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use hermes_core::{Config, Factory};
use hermes_executor::{
    Crew, Hermes, Key, Message, Options, Runtime, Spawned, StartError, Wake, WouldDeadlock,
};

/// Starts Hermes on one thread per core, with the router `config` and `factory`.
pub fn start<K: Key, M: Message, F: Factory<K, M>>(
    config: Config,
    factory: F,
) -> Result<Hermes<K, M, F::App>, StartError> {
    start_with(Options::new(config), factory)
}

/// Starts Hermes with `options` (shard count, thread names, dead-letter sink): one thread per
/// shard, named `NAME-0`, `NAME-1`, ..., thread `NAME-i` at home on shard `i`.
pub fn start_with<K: Key, M: Message, F: Factory<K, M>>(
    options: Options<K, M>,
    factory: F,
) -> Result<Hermes<K, M, F::App>, StartError> {
    let name = options.thread_name().to_owned();
    let threads = Threads::start(&name)?;
    let (hermes, crew, bells) = Crew::launch(options, factory, threads.clone(), || {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (Bell(tx), rx)
    });
    let shards = bells.len();
    for (home, bell) in bells.into_iter().enumerate() {
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{home}"))
            .spawn({
                let crew = crew.clone();
                move || run(&crew, home, &bell)
            });
        match thread {
            Ok(thread) => threads.push(thread),
            Err(e) => {
                // The shards without a thread close here; dropping `hermes` then shuts down
                // the ones already running.
                for homeless in home..shards {
                    crew.abandon(homeless);
                }
                return Err(StartError::Spawn(e));
            }
        }
    }
    Ok(hermes)
}

/// A pool thread, at home on shard `home`: sleeps on its bell until woken or the deadline
/// (after watching it briefly, see [`Crew::run`]).
fn run<K: Key, M: Message>(crew: &Crew<K, M>, home: usize, bell: &Receiver<()>) {
    crew.run(
        home,
        |deadline| {
            let _ = match deadline {
                Some(deadline) => bell.recv_deadline(deadline).map_err(drop),
                None => bell.recv().map_err(drop),
            };
        },
        || bell.try_recv().is_ok(),
    );
}

/// Wakes a shard thread: a one-slot channel keeps the wake if the thread is not waiting yet.
struct Bell(Sender<()>);

impl Wake for Bell {
    fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

/// The shard threads and the task thread, joined at shutdown.
#[derive(Clone)]
struct Threads(Arc<ThreadsInner>);

struct ThreadsInner {
    shards: Mutex<Vec<JoinHandle<()>>>,
    /// Runs the tasks receivers start, on the task thread.
    tasks: Arc<async_executor::Executor<'static>>,
    /// Closing it stops the task thread.
    stop: async_channel::Sender<()>,
    task_thread: Mutex<Option<JoinHandle<()>>>,
}

impl Threads {
    /// Starts the task thread, `NAME-tasks`.
    fn start(name: &str) -> Result<Threads, StartError> {
        let tasks = Arc::new(async_executor::Executor::new());
        let (stop, stopped) = async_channel::bounded::<()>(1);
        let executor = Arc::clone(&tasks);
        let task_thread = std::thread::Builder::new()
            .name(format!("{name}-tasks"))
            .spawn(move || {
                ON_TASK_THREAD.with(|on| on.set(true));
                // Runs tasks until `stop` closes; tasks still pending are dropped with it.
                let _ = async_io::block_on(executor.run(stopped.recv()));
            })
            .map_err(StartError::Spawn)?;
        Ok(Threads(Arc::new(ThreadsInner {
            shards: Mutex::new(Vec::new()),
            tasks,
            stop,
            task_thread: Mutex::new(Some(task_thread)),
        })))
    }

    fn push(&self, thread: JoinHandle<()>) {
        self.0
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(thread);
    }
}

thread_local! {
    /// True on the task thread.
    static ON_TASK_THREAD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Runtime for Threads {
    fn spawn(&self, task: Spawned) {
        self.0.tasks.spawn(task).detach();
    }

    /// Refused on the task thread, where a blocked future stops every other task (and a
    /// shutdown would wait for itself: it joins that thread), and on a shard thread.
    fn block(&self, wait: &mut dyn FnMut()) -> Result<(), WouldDeadlock> {
        if ON_TASK_THREAD.with(std::cell::Cell::get) || hermes_executor::hosts_shards() {
            return Err(WouldDeadlock);
        }
        wait();
        Ok(())
    }

    fn join(&self) {
        let shards =
            std::mem::take(&mut *self.0.shards.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in shards {
            if thread.join().is_err() {
                tracing::error!("a shard thread panicked outside any receiver");
            }
        }
        self.0.stop.close();
        let task_thread = self
            .0
            .task_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = task_thread
            && thread.join().is_err()
        {
            tracing::error!("the task thread panicked outside any task");
        }
    }
}
