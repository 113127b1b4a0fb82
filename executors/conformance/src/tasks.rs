//! Work that completes later (`Context::spawn`) and asks between receivers (`Context::ask`):
//! outcomes come back as messages, the shard never blocks, and what happens to work in flight
//! when its receiver goes away.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_core::{Activation, AskError, Config, Context, Deactivation, Receiver};
use hermes_executor::{Options, Reply};

use crate::{HANG_GUARD, Harness, eventually};

/// Sets its flag when dropped: tells whether a task's future was dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

enum Loader {
    /// Start loading: the value comes when the test answers the reply it is handed.
    Load(Reply<Reply<u64>>),
    /// Start work that never finishes, holding the flag.
    Hang(Arc<AtomicBool>),
    Loaded(u64),
    Value(Reply<Option<u64>>),
    Stop,
}

struct LoaderReceiver {
    value: Option<u64>,
    deactivations: Arc<Mutex<Vec<Deactivation>>>,
}

impl Receiver<u64, Loader> for LoaderReceiver {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Loader>, msg: Loader) {
        match msg {
            Loader::Load(handoff) => {
                let (reply, answer) = Reply::new();
                let _ = handoff.send(reply);
                ctx.spawn(answer, |answer| Loader::Loaded(answer.unwrap_or(0)));
            }
            Loader::Hang(flag) => {
                let guard = Dropped(flag);
                ctx.spawn(
                    async move {
                        let _guard = guard;
                        std::future::pending::<()>().await
                    },
                    |()| Loader::Loaded(0),
                );
            }
            Loader::Loaded(v) => self.value = Some(v),
            Loader::Value(reply) => {
                let _ = reply.send(self.value);
            }
            Loader::Stop => ctx.stop(),
        }
    }

    fn deactivated(&mut self, _: &mut Context<'_, u64, Loader>, why: Deactivation) {
        self.deactivations.lock().unwrap().push(why);
    }
}

/// A receiver starts work whose outcome comes back to it as a message; meanwhile it keeps
/// answering other messages, and it is not deactivated for idleness while it waits.
pub fn spawned_work_comes_back_as_a_message<H: Harness>(h: &H) {
    let deactivations = Arc::new(Mutex::new(Vec::new()));
    let seen = deactivations.clone();
    let config = Config::default().idle_timeout(Duration::from_millis(30));
    let hermes = h.start(Options::new(config).shards(2), move |_: &u64| {
        Activation::ready(LoaderReceiver {
            value: None,
            deactivations: seen.clone(),
        })
    });
    let reply = hermes
        .ask_blocking(1, Loader::Load, HANG_GUARD)
        .expect("the receiver hands over the reply its work waits for");
    // Waiting, it still answers, one message at a time.
    assert_eq!(hermes.ask_blocking(1, Loader::Value, HANG_GUARD), Ok(None));
    // Longer than its idle timeout: waiting for work is not idleness.
    std::thread::sleep(Duration::from_millis(150));
    assert!(
        deactivations.lock().unwrap().is_empty(),
        "deactivated while waiting"
    );
    reply.send(42).unwrap();
    eventually("the outcome", || {
        hermes.ask_blocking(1, Loader::Value, HANG_GUARD) == Ok(Some(42))
    });
    // Once the work is back, idle time counts again.
    eventually("the idle deactivation", || {
        deactivations.lock().unwrap().as_slice() == [Deactivation::IdleTimeout]
    });
    let stats = hermes.shutdown().unwrap();
    assert_eq!(
        stats.activations, 1,
        "the outcome reached the instance that waited"
    );
}

/// Work in flight is dropped, and never delivered, when its receiver stops; shutdown does not
/// wait for work in flight.
pub fn work_in_flight_is_dropped_with_its_receiver<H: Harness>(h: &H) {
    let deactivations = Arc::new(Mutex::new(Vec::new()));
    let seen = deactivations.clone();
    let hermes = h.start(Options::new(Config::default()).shards(2), move |_: &u64| {
        Activation::ready(LoaderReceiver {
            value: None,
            deactivations: seen.clone(),
        })
    });
    let stopped = Arc::new(AtomicBool::new(false));
    hermes.send(1, Loader::Hang(stopped.clone())).unwrap();
    hermes.send(1, Loader::Stop).unwrap();
    eventually("the stopped receiver's work to be dropped", || {
        stopped.load(Ordering::SeqCst)
    });
    let closing = Arc::new(AtomicBool::new(false));
    hermes.send(2, Loader::Hang(closing.clone())).unwrap();
    assert_eq!(hermes.ask_blocking(2, Loader::Value, HANG_GUARD), Ok(None));
    let stats = hermes.shutdown().unwrap();
    assert!(
        closing.load(Ordering::SeqCst),
        "shutdown dropped the work in flight"
    );
    assert_eq!(stats.deactivations, 2);
    assert_eq!(stats.messages_delivered, 4, "no outcome was delivered");
}

enum Asker {
    /// Ask `to` to double `n`, with `timeout`; the answer is recorded.
    Ask {
        to: u64,
        n: u64,
        timeout: Duration,
    },
    /// Ask the peer, and answer the peer's ask (two receivers asking each other).
    AskPeer(u64),
    Double(u64, Reply<u64>),
    Answer(Result<u64, AskError>),
    Answers(Reply<Vec<Result<u64, AskError>>>),
}

fn asker(_: &u64) -> Activation<u64, Asker> {
    let mut answers = Vec::new();
    Activation::ready(move |ctx: &mut Context<'_, u64, Asker>, msg| match msg {
        Asker::Ask { to, n, timeout } => {
            ctx.ask(to, |r| Asker::Double(n, r), timeout, Asker::Answer);
        }
        Asker::AskPeer(peer) => {
            let n = *ctx.id();
            ctx.ask(peer, |r| Asker::Double(n, r), HANG_GUARD, Asker::Answer);
        }
        Asker::Double(n, reply) => {
            let _ = reply.send(n * 2);
        }
        Asker::Answer(answer) => answers.push(answer),
        Asker::Answers(reply) => {
            let _ = reply.send(answers.clone());
        }
    })
}

fn answers_of(hermes: &hermes_executor::Hermes<u64, Asker>, id: u64) -> Vec<Result<u64, AskError>> {
    hermes.ask_blocking(id, Asker::Answers, HANG_GUARD).unwrap()
}

/// A receiver asks another (on another shard, or its own) and gets the answer as a message;
/// two receivers asking each other at once do not deadlock; an unanswered ask times out.
pub fn asks_between_receivers_answer_or_time_out<H: Harness>(h: &H) {
    let hermes = h.start(Options::new(Config::default()).shards(2), asker);
    let long = HANG_GUARD;
    for to in [2, 3, 4, 5] {
        hermes
            .send(
                1,
                Asker::Ask {
                    to,
                    n: to,
                    timeout: long,
                },
            )
            .unwrap();
    }
    eventually("four answers", || answers_of(&hermes, 1).len() == 4);
    let mut answers = answers_of(&hermes, 1);
    answers.sort_by_key(|a| a.unwrap_or(0));
    assert_eq!(answers, [Ok(4), Ok(6), Ok(8), Ok(10)]);

    // Each asks the other, at the same time.
    hermes.send(10, Asker::AskPeer(11)).unwrap();
    hermes.send(11, Asker::AskPeer(10)).unwrap();
    eventually("both answers", || {
        answers_of(&hermes, 10) == [Ok(20)] && answers_of(&hermes, 11) == [Ok(22)]
    });

    // An ask whose reply is kept and never answered times out.
    let counter = Arc::new(AtomicU64::new(0));
    let c = counter.clone();
    let silent = h.start(
        Options::new(Config::default()).shards(2),
        move |id: &u64| {
            if *id == 99 {
                c.fetch_add(1, Ordering::SeqCst);
                let mut kept = Vec::new();
                Activation::ready(move |_: &mut Context<'_, u64, Asker>, msg| {
                    if let Asker::Double(_, reply) = msg {
                        kept.push(reply);
                    }
                })
            } else {
                asker(id)
            }
        },
    );
    let timeout = Duration::from_millis(100);
    silent
        .send(
            1,
            Asker::Ask {
                to: 99,
                n: 1,
                timeout,
            },
        )
        .unwrap();
    eventually("the timeout", || {
        answers_of(&silent, 1) == [Err(AskError::Timeout)]
    });
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    silent.shutdown().unwrap();
    hermes.shutdown().unwrap();
}

/// What the asked side does with a request in [`context_asks_end_once_dropped_or_timed_out`].
enum Peer {
    /// Ask `to` with `Hold`, `Drop` or `Stop`, with this timeout; the answer comes back as
    /// `Answer`.
    Ask(u64, &'static str, Duration),
    Answer(&'static str, Result<u64, AskError>),
    /// Keep the reply.
    Hold(Reply<u64>),
    /// Drop the reply unanswered.
    Drop(Reply<u64>),
    /// Keep the reply and stop: the instance goes, and the reply with it.
    Stop(Reply<u64>),
    /// Answer every held reply with 9; report how many answers were given back.
    Release(Reply<usize>),
}

/// `Context::ask` ends exactly once: `Dropped` when the asked receiver drops the reply, stops
/// holding it, or has no receiver at all (the request is a dead letter); `Timeout` at the
/// deadline, after which the asked side's `Reply::send` gives the answer back.
pub fn context_asks_end_once_dropped_or_timed_out<H: Harness>(h: &H) {
    const ASKER: u64 = 1;
    const NOBODY: u64 = 99;
    type Answers = Arc<Mutex<Vec<(&'static str, Result<u64, AskError>)>>>;
    let answers: Answers = Arc::default();
    let a = Arc::clone(&answers);
    let hermes = h.start(
        Options::new(Config::default()).shards(2),
        move |&id: &u64| {
            if id == NOBODY {
                return Activation::Refused;
            }
            let answers = Arc::clone(&a);
            let mut held = Vec::new();
            Activation::ready(move |ctx: &mut Context<'_, u64, Peer>, msg| match msg {
                Peer::Ask(to, what, timeout) => {
                    let make = match what {
                        "hold" => Peer::Hold,
                        "drop" => Peer::Drop,
                        _ => Peer::Stop,
                    };
                    ctx.ask(to, make, timeout, move |answer| Peer::Answer(what, answer));
                }
                Peer::Answer(what, answer) => answers.lock().unwrap().push((what, answer)),
                Peer::Hold(reply) => held.push(reply),
                Peer::Drop(reply) => drop(reply),
                Peer::Stop(reply) => {
                    held.push(reply);
                    ctx.stop();
                }
                Peer::Release(report) => {
                    let back = held.drain(..).filter_map(|r| r.send(9).err()).count();
                    let _ = report.send(back);
                }
            })
        },
    );
    let answers_now = || answers.lock().unwrap().clone();
    for (to, what) in [(2, "drop"), (3, "stop"), (NOBODY, "nobody")] {
        hermes.send(ASKER, Peer::Ask(to, what, HANG_GUARD)).unwrap();
        eventually(what, || answers_now().len() == 1);
        assert_eq!(answers_now(), [(what, Err(AskError::Dropped))]);
        answers.lock().unwrap().clear();
    }
    let quick = Duration::from_millis(20);
    hermes.send(ASKER, Peer::Ask(4, "hold", quick)).unwrap();
    eventually("the timeout", || answers_now().len() == 1);
    assert_eq!(answers_now(), [("hold", Err(AskError::Timeout))]);
    assert_eq!(
        hermes.ask_blocking(4, Peer::Release, HANG_GUARD),
        Ok(1),
        "the late answer was given back"
    );
    std::thread::sleep(quick);
    assert_eq!(answers_now().len(), 1, "the ask ended once");
    hermes.shutdown().unwrap();
}

/// A future a receiver started that calls the blocking `Hermes::shutdown` neither hangs nor
/// stops the shards: where blocking would stop the tasks or the shards (the pool's task
/// thread, a thread of the async runtime that runs the shards) it is refused with
/// `WouldDeadlock` after starting the shutdown; elsewhere it waits, and the shutdown, which
/// aborts that very task, does not wait for the poll in progress.
pub fn a_spawned_future_that_blocks_on_shutdown_does_not_hang<H: Harness>(h: &H) {
    type Slot = Arc<Mutex<Option<hermes_executor::Hermes<u64, u64>>>>;
    let handle: Slot = Arc::default();
    let returned: Arc<Mutex<Option<Result<u64, hermes_executor::WouldDeadlock>>>> = Arc::default();
    let (slot, seen) = (Arc::clone(&handle), Arc::clone(&returned));
    let hermes = h.start(Options::new(Config::default()).shards(2), move |_: &u64| {
        let (slot, seen) = (Arc::clone(&slot), Arc::clone(&seen));
        Activation::ready(move |ctx: &mut Context<'_, u64, u64>, _: u64| {
            let hermes = slot.lock().unwrap().clone();
            let seen = Arc::clone(&seen);
            ctx.spawn(
                async move {
                    if let Some(hermes) = hermes {
                        let stats = hermes.shutdown().map(|s| s.deactivations);
                        *seen.lock().unwrap() = Some(stats);
                    }
                },
                |()| 0,
            );
        })
    });
    *handle.lock().unwrap() = Some(hermes.clone());
    hermes.send(1, 0).unwrap();
    eventually("the future's shutdown to return", || {
        returned.lock().unwrap().is_some()
    });
    let got = returned.lock().unwrap().take().unwrap();
    assert!(matches!(got, Ok(1) | Err(_)), "{got:?}");
    handle.lock().unwrap().take();
    let stats = hermes.shutdown().unwrap();
    assert_eq!((stats.activations, stats.deactivations), (1, 1));
}
