//! The default Hermes executor: a hand-rolled thread pool with one thread per shard.
//!
//! Each shard thread runs its shard's turns back to back while there is work, and with none
//! watches its inbox for a few tens of microseconds (a reply on its way then costs no sleep and
//! wake-up), then blocks on a wake-up channel until a message arrives or its next timer is due:
//! an idle pool uses no CPU. Receivers run on their shard's thread; one that blocks holds up
//! its shard.
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

use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use hermes_core::{Config, Factory};
use hermes_executor::{Hermes, Key, Message, Options, Runtime, Shard, StartError, Wake, launch};

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
    let threads = Threads::default();
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

/// The shard threads, joined at shutdown.
#[derive(Clone, Default)]
struct Threads(Arc<Mutex<Vec<JoinHandle<()>>>>);

impl Threads {
    fn push(&self, thread: JoinHandle<()>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(thread);
    }
}

impl Runtime for Threads {
    fn join(&self) {
        let threads = std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner));
        for thread in threads {
            if thread.join().is_err() {
                tracing::error!("a shard thread panicked outside any receiver");
            }
        }
    }
}
