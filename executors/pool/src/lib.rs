//! The default Hermes executor: a hand-rolled thread pool with one thread per shard.
//!
//! Each shard thread runs its shard's turns back to back while there is work, and with none
//! watches its inbox for a few tens of microseconds (a reply on its way then costs no sleep and
//! wake-up), then blocks on a wake-up channel until a message arrives or its next timer is due:
//! an idle pool uses no CPU. Receivers run on their shard's thread; one that blocks holds up
//! its shard.
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
    Hermes, Key, Message, Options, Runtime, Shard, Spawned, StartError, Wake, WouldDeadlock, launch,
};

/// Starts Hermes on one thread per core, with the router `config` and `factory`.
pub fn start<K: Key, M: Message, F: Factory<K, M>>(
    config: Config,
    factory: F,
) -> Result<Hermes<K, M, F::App>, StartError> {
    start_with(Options::new(config), factory)
}

/// Starts Hermes with `options` (shard count, thread names, dead-letter sink): one thread per
/// shard, named `NAME-0`, `NAME-1`, ...
pub fn start_with<K: Key, M: Message, F: Factory<K, M>>(
    options: Options<K, M>,
    factory: F,
) -> Result<Hermes<K, M, F::App>, StartError> {
    let name = options.thread_name().to_owned();
    let threads = Threads::start(&name)?;
    let (hermes, shards) = launch(options, factory, threads.clone(), || {
        let (tx, rx) = crossbeam_channel::bounded(1);
        (Bell(tx), rx)
    });
    for (shard, bell) in shards {
        let thread = std::thread::Builder::new()
            .name(format!("{name}-{}", shard.index()))
            .spawn(move || run(shard, &bell))
            // Dropping `hermes` shuts down the shards already running; the rest never start.
            .map_err(StartError::Spawn)?;
        threads.push(thread);
    }
    Ok(hermes)
}

/// A shard thread: sleeps on the bell until woken or the deadline (after watching its inbox
/// briefly, see [`Shard::run_blocking`]).
fn run<K: Key, M: Message>(shard: Shard<K, M>, bell: &Receiver<()>) {
    shard.run_blocking(|deadline| {
        let _ = match deadline {
            Some(deadline) => bell.recv_deadline(deadline).map_err(drop),
            None => bell.recv().map_err(drop),
        };
    });
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
