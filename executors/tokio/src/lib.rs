//! Runs Hermes on tokio: one task per shard.
//!
//! Each shard is a task that turns while it has work, yielding to the runtime between turns,
//! and with none awaits a [`Notify`] or its next timer (`tokio::time`). Works on the
//! multi-thread and the current-thread runtime; the runtime needs its time driver
//! (`enable_time()` or `enable_all()`, as `#[tokio::main]` has).
//!
//! Receivers run inline in their shard's task: a receiver that blocks (on I/O, a lock, a
//! blocking ask) holds up its shard and a runtime worker. Hand slow work to
//! `spawn_blocking` and send the result back as a message.
//!
//! From async code use [`Hermes::ask`] (`.await`) and [`Hermes::shutdown_async`]; the blocking
//! forms work outside the runtime, and inside a multi-thread runtime via `block_in_place`, but
//! refuse with [`WouldDeadlock`] inside a current-thread runtime, where they would stop the very
//! runtime that runs the shards (`shutdown` starts the shutdown before it refuses).
//!
//! ```
//! use hermes_core::{Activation, Config, Context};
//! use hermes_executor::Reply;
//!
//! enum Msg { Greet(String, Reply<String>) }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let hermes = hermes_tokio::start(Config::default(), |_id: &u32| {
//!         Activation::ready(|ctx: &mut Context<'_, u32, Msg>, msg| match msg {
//!             Msg::Greet(name, reply) => {
//!                 let _ = reply.send(format!("hello {name}, from {}", ctx.id()));
//!             }
//!         })
//!     })?;
//!     let answer = hermes.ask(7, |reply| Msg::Greet("ann".into(), reply)).await?;
//!     assert_eq!(answer, "hello ann, from 7");
//!     let stats = hermes.shutdown_async().await;
//!     assert_eq!(stats.deactivations, 1);
//!     Ok(())
//! }
//! ```

#![warn(missing_debug_implementations)]

use std::sync::Arc;
use std::time::Instant;

use hermes_core::{Config, Factory};
use hermes_executor::{
    Hermes, Key, Message, Options, Runtime, Shard, Spawned, StartError, Wake, WouldDeadlock, launch,
};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::Notify;

/// Starts Hermes on the current tokio runtime, with the router `config` and `factory`.
/// [`StartError::NoRuntime`] outside a runtime: use [`start_on`] there;
/// [`StartError::NoTimers`] on a runtime without its time driver.
pub fn start<K: Key, M: Message, F: Factory<K, M>>(
    config: Config,
    factory: F,
) -> Result<Hermes<K, M, F::App>, StartError> {
    start_with(Options::new(config), factory)
}

/// Starts Hermes with `options` on the current tokio runtime.
pub fn start_with<K: Key, M: Message, F: Factory<K, M>>(
    options: Options<K, M>,
    factory: F,
) -> Result<Hermes<K, M, F::App>, StartError> {
    let handle = Handle::try_current().map_err(|_| StartError::NoRuntime)?;
    if !has_timers(&handle) {
        return Err(StartError::NoTimers);
    }
    Ok(start_on(&handle, options, factory))
}

/// Starts Hermes with `options` on the runtime behind `handle`: one task per shard.
///
/// # Panics
///
/// If the runtime has no time driver (built without `enable_time()` or `enable_all()`), with
/// [`StartError::NoTimers`]'s message: its shards could not wait for their timers.
pub fn start_on<K: Key, M: Message, F: Factory<K, M>>(
    handle: &Handle,
    options: Options<K, M>,
    factory: F,
) -> Hermes<K, M, F::App> {
    assert!(has_timers(handle), "{}", StartError::NoTimers);
    let (hermes, shards) = launch(options, factory, Tokio(handle.clone()), || {
        let bell = Arc::new(Notify::new());
        (Bell(Arc::clone(&bell)), bell)
    });
    for (shard, bell) in shards {
        // The task ends on its own at shutdown; the handle learns of it when the shard drops.
        drop(handle.spawn(run(shard, bell)));
    }
    hermes
}

/// True if the runtime behind `handle` has its time driver. tokio has no query for it, but
/// makes a timer without it panic at once (tokio's panic message is printed, then caught).
fn has_timers(handle: &Handle) -> bool {
    let _entered = handle.enter();
    std::panic::catch_unwind(|| drop(tokio::time::sleep(std::time::Duration::ZERO))).is_ok()
}

/// A shard task: awaits the bell or the next deadline when there is nothing to do.
async fn run<K: Key, M: Message>(shard: Shard<K, M>, bell: Arc<Notify>) {
    let park = |deadline: Option<Instant>| {
        let bell = Arc::clone(&bell);
        async move {
            match deadline {
                Some(deadline) => {
                    let deadline = tokio::time::Instant::from_std(deadline);
                    let _ = tokio::time::timeout_at(deadline, bell.notified()).await;
                }
                None => bell.notified().await,
            }
        }
    };
    shard.run_async(tokio::task::yield_now, park).await;
}

/// Wakes a shard task; `Notify` keeps one permit if the task is not waiting yet.
struct Bell(Arc<Notify>);

impl Wake for Bell {
    fn wake(&self) {
        self.0.notify_one();
    }
}

/// Blocking from tokio: fine outside the runtime, `block_in_place` on a multi-thread worker,
/// refused on a current-thread runtime (it would stop the shards). Tasks receivers start are
/// tokio tasks on the same runtime.
struct Tokio(Handle);

impl Runtime for Tokio {
    fn spawn(&self, task: Spawned) {
        drop(self.0.spawn(task));
    }

    fn block(&self, wait: &mut dyn FnMut()) -> Result<(), WouldDeadlock> {
        let Ok(handle) = Handle::try_current() else {
            wait();
            return Ok(());
        };
        match handle.runtime_flavor() {
            RuntimeFlavor::MultiThread if tokio::task::try_id().is_some() => {
                tokio::task::block_in_place(wait);
                Ok(())
            }
            RuntimeFlavor::MultiThread => {
                wait();
                Ok(())
            }
            _ => Err(WouldDeadlock),
        }
    }
}
