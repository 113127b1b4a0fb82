//! Runs Hermes on smol: one task per shard, on smol's global executor or an
//! [`Executor`] you drive.
//!
//! Each shard is a task that turns while it has work, yielding between turns, and with none
//! awaits a one-slot wake-up channel or its next timer ([`smol::Timer`]). Receivers run inline
//! in their shard's task: a receiver that blocks holds up its shard and an executor thread.
//!
//! smol's global executor runs on `SMOL_THREADS` threads (1 unless set): all shards then share
//! one thread. For shards in parallel, set `SMOL_THREADS` or use [`start_on`] with an executor
//! you run on several threads.
//!
//! The blocking forms ([`Hermes::ask_blocking`], [`Hermes::shutdown`]) are for threads that do
//! not run the executor; from tasks, await [`Hermes::ask`] and [`Hermes::shutdown_async`].
//!
//! ```
//! use std::time::Duration;
//! use hermes_core::{Activation, Config, Context};
//! use hermes_executor::Reply;
//!
//! enum Msg { Ping(Reply<&'static str>) }
//!
//! let hermes = hermes_smol::start(Config::default(), |_id: &u8| {
//!     Activation::ready(|_ctx: &mut Context<'_, u8, Msg>, msg| match msg {
//!         Msg::Ping(reply) => { let _ = reply.send("pong"); }
//!     })
//! });
//! let pong = smol::block_on(hermes.ask(1, Msg::Ping))?;
//! assert_eq!(pong, "pong");
//! assert_eq!(hermes.ask_blocking(2, Msg::Ping, Duration::from_secs(5))?, "pong");
//! let stats = smol::block_on(hermes.shutdown_async());
//! assert_eq!(stats.deactivations, 2);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_debug_implementations)]

use std::sync::Arc;
use std::time::Instant;

use hermes_core::{Config, Factory};
use hermes_executor::{
    Hermes, Key, Message, Options, Runtime, Shard, Spawned, Wake, WouldDeadlock, launch,
};
use smol::channel::{Receiver, Sender};
use smol::{Executor, Timer};

/// Starts Hermes on smol's global executor, with the router `config` and `factory`.
pub fn start<K: Key, M: Message, F: Factory<K, M>>(
    config: Config,
    factory: F,
) -> Hermes<K, M, F::App> {
    start_with(Options::new(config), factory)
}

/// Starts Hermes with `options` on smol's global executor.
pub fn start_with<K: Key, M: Message, F: Factory<K, M>>(
    options: Options<K, M>,
    factory: F,
) -> Hermes<K, M, F::App> {
    spawn(
        options,
        factory,
        Arc::new(|task| smol::spawn(task).detach()),
    )
}

/// Starts Hermes with `options` on `executor`, which you run (`executor.run(..)` on your
/// threads). Hermes makes progress only while the executor is run.
///
/// Hermes cannot tell that a thread runs `executor` until a shard has run there: from then on
/// the blocking forms (`send` to a full receiver, `ask_blocking`, `shutdown`) refuse on it
/// (`Full`, [`WouldDeadlock`]) instead of waiting. A task of yours that comes first on its
/// thread must await the async forms instead (and call `shutdown_async` before it drops the
/// last handle, whose drop otherwise waits for the shutdown): a blocking form there blocks the
/// thread, and an executor run on that one thread stops (an `ask_blocking` then ends at its
/// timeout).
pub fn start_on<K: Key, M: Message, F: Factory<K, M>>(
    executor: &Arc<Executor<'static>>,
    options: Options<K, M>,
    factory: F,
) -> Hermes<K, M, F::App> {
    let executor = Arc::clone(executor);
    spawn(
        options,
        factory,
        Arc::new(move |task| executor.spawn(task).detach()),
    )
}

/// Puts a task on the executor: the shards, and the work receivers start.
type Spawn = Arc<dyn Fn(Spawned) + Send + Sync>;

fn spawn<K, M, F>(options: Options<K, M>, factory: F, spawn: Spawn) -> Hermes<K, M, F::App>
where
    K: Key,
    M: Message,
    F: Factory<K, M>,
{
    let (hermes, shards) = launch(options, factory, Smol(Arc::clone(&spawn)), || {
        let (tx, rx) = smol::channel::bounded(1);
        (Bell(tx), rx)
    });
    for (shard, bell) in shards {
        spawn(Box::pin(run(shard, bell)));
    }
    hermes
}

/// A shard task: awaits the bell or the next deadline when there is nothing to do.
async fn run<K: Key, M: Message>(shard: Shard<K, M>, bell: Receiver<()>) {
    let park = |deadline: Option<Instant>| {
        let bell = bell.clone();
        async move {
            let rung = async {
                let _ = bell.recv().await;
            };
            match deadline {
                Some(deadline) => {
                    let due = async {
                        Timer::at(deadline).await;
                    };
                    smol::future::or(rung, due).await;
                }
                None => rung.await,
            }
        }
    };
    shard.run_async(smol::future::yield_now, park).await;
}

/// Wakes a shard task: a one-slot channel keeps the wake if the task is not waiting yet.
struct Bell(Sender<()>);

impl Wake for Bell {
    fn wake(&self) {
        let _ = self.0.try_send(());
    }
}

/// Blocking is refused on a thread that runs shard tasks, and on a thread of smol's global
/// executor (named `smol-N`): with one such thread (smol's default), blocking it would stop the
/// shards, and a shard task may not have run there yet to say so. Tasks receivers start run
/// on the same executor as the shards.
struct Smol(Spawn);

impl Runtime for Smol {
    fn spawn(&self, task: Spawned) {
        (self.0)(task);
    }

    fn block(&self, wait: &mut dyn FnMut()) -> Result<(), WouldDeadlock> {
        let global = std::thread::current()
            .name()
            .is_some_and(|name| name.starts_with("smol-"));
        if global || hermes_executor::hosts_shards() {
            return Err(WouldDeadlock);
        }
        wait();
        Ok(())
    }
}
