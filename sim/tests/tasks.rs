//! Work that completes later under the simulator: `Context::spawn` and `Context::ask` run as
//! seeded steps in virtual time.
//!
//! - spawned work is deterministic per seed: the same seed gives the same trace, to the
//!   nanosecond of simulated time;
//! - an ask that gets no answer times out exactly at its deadline in simulated time;
//! - work in flight is dropped when its receiver stops, panics, or the simulation closes, and
//!   a receiver waiting for work is not deactivated for idleness.
//!
//! A task's future awaits only what Hermes controls (here, replies other receivers answer), so
//! the simulation decides when it is ready.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_core::{Activation, AskError, Config, Context, Deactivation, Kinds, Receiver};
use hermes_sim::{Reply, Sim};

// ---- a loader that reads its state from a slow store, asked meanwhile -----------------------

/// A receiver whose state comes from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct LoaderId(u32);

/// The slow store: answers a fetch after a delay that depends on the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct StoreId;

#[derive(Debug)]
enum LoaderMsg {
    /// Fetches two keys from the store and waits for both.
    Load,
    Loaded(Option<u64>),
    /// What it has loaded so far.
    Value(Reply<Option<u64>>),
}

#[derive(Debug)]
enum StoreMsg {
    Fetch(u64, Reply<u64>),
    /// The answer to a fetch, when its delay is up.
    Answer(u64, Reply<u64>),
}

hermes_core::app! {
    /// Loaders and their store.
    pub app Loading(LoadingId, LoadingMsg) {
        Loader(LoaderId => LoaderMsg),
        Store(StoreId => StoreMsg),
    }
}

/// How long the store takes to answer a fetch of `key`.
fn fetch_delay(key: u64) -> Duration {
    Duration::from_millis(key % 7 * 5 + 1)
}

/// The keys loader `id` fetches.
fn keys(id: LoaderId) -> [u64; 2] {
    let id = u64::from(id.0);
    [id * 3, id * 5 + 1]
}

/// Events as receivers saw them: when (simulated), who, what.
type Trace = Arc<Mutex<Vec<(Instant, String)>>>;

fn loading(trace: &Trace) -> Kinds<Loading> {
    let (loaders, store) = (trace.clone(), trace.clone());
    Kinds::<Loading>::new()
        .kind(move |_: &LoaderId| {
            let trace = loaders.clone();
            let mut value = None;
            Activation::ready(
                move |ctx: &mut Context<'_, LoaderId, LoaderMsg, Loading>, msg| {
                    let event = format!("{:?} {msg:?}", ctx.id());
                    trace.lock().unwrap().push((ctx.now(), event));
                    match msg {
                        LoaderMsg::Load => {
                            let [a, b] = keys(*ctx.id()).map(|key| {
                                let (reply, answer) = Reply::new();
                                ctx.send(StoreId, StoreMsg::Fetch(key, reply));
                                answer
                            });
                            // Two awaits: the task is polled, set aside and woken twice.
                            let both = async move { Some(a.await.ok()? + b.await.ok()?) };
                            ctx.spawn(both, LoaderMsg::Loaded);
                        }
                        LoaderMsg::Loaded(v) => value = v,
                        LoaderMsg::Value(reply) => {
                            let _ = reply.send(value);
                        }
                    }
                },
            )
        })
        .kind(move |_: &StoreId| {
            let trace = store.clone();
            Activation::ready(
                move |ctx: &mut Context<'_, StoreId, StoreMsg, Loading>, msg| match msg {
                    StoreMsg::Fetch(key, reply) => {
                        let event = format!("fetch {key}");
                        trace.lock().unwrap().push((ctx.now(), event));
                        ctx.schedule(fetch_delay(key), StoreMsg::Answer(key * 10, reply));
                    }
                    StoreMsg::Answer(value, reply) => {
                        let _ = reply.send(value);
                    }
                },
            )
        })
}

const LOADERS: u32 = 8;

/// Loaders load at staggered times over two shards; returns the trace, with times as
/// simulated time since the start.
fn load_all(seed: u64) -> Vec<(Duration, String)> {
    let trace = Trace::default();
    let mut sim = Sim::new(seed, Config::default(), loading(&trace)).with_shards(2);
    let start = sim.now();
    for n in 0..LOADERS {
        let at = Duration::from_millis(u64::from(n % 3) * 4);
        sim.schedule(LoaderId(n), at, LoaderMsg::Load).unwrap();
    }
    // Meanwhile each loader answers, with nothing loaded yet.
    sim.run_for(Duration::from_millis(1));
    for n in 0..LOADERS {
        let before = sim.ask(LoaderId(n), LoaderMsg::Value);
        assert_eq!(
            before,
            Ok(None),
            "seed {seed}: loader {n} answers while loading"
        );
    }
    sim.run_for(Duration::from_secs(1));
    for n in 0..LOADERS {
        let [a, b] = keys(LoaderId(n));
        let loaded = sim.ask(LoaderId(n), LoaderMsg::Value);
        assert_eq!(loaded, Ok(Some((a + b) * 10)), "seed {seed}: loader {n}");
    }
    assert!(sim.dead_letters().is_empty(), "seed {seed}");
    let trace = trace.lock().unwrap();
    let trace: Vec<_> = trace
        .iter()
        .map(|(at, e)| (*at - start, e.clone()))
        .collect();
    // Each load came back exactly when the slower of its two fetches was answered: tasks run
    // in virtual time, as steps that let no time pass.
    for n in 0..LOADERS {
        let me = format!("{:?} ", LoaderId(n));
        let at = |what: &str| {
            let event = format!("{me}{what}");
            let found = trace.iter().find(|(_, e)| *e == event);
            found.map(|(at, _)| *at).expect("the event happened")
        };
        let slower = keys(LoaderId(n)).map(fetch_delay).into_iter().max();
        let [a, b] = keys(LoaderId(n));
        let loaded = at(&format!("Loaded(Some({}))", (a + b) * 10));
        assert_eq!(
            loaded,
            at("Load") + slower.unwrap(),
            "seed {seed}: loader {n}"
        );
    }
    trace
}

#[test]
fn spawned_work_is_deterministic_per_seed() {
    let mut distinct = std::collections::HashSet::new();
    for seed in 0..40 {
        let trace = load_all(seed);
        assert_eq!(trace, load_all(seed), "seed {seed}: a replay differs");
        distinct.insert(trace);
    }
    // The seed decides the interleaving: the test explores more than one.
    assert!(distinct.len() > 1, "every seed gave the same trace");
}

// ---- asks between receivers, in virtual time -------------------------------------------------

#[derive(Debug)]
enum Msg {
    /// Ask receiver `to` with `timeout`; record the answer and when it came.
    Ask {
        to: u32,
        timeout: Duration,
    },
    /// The question. Receiver `SILENT` keeps the reply unanswered; `LATE` answers after
    /// `LATE_BY`; `RUDE` drops it; the others answer at once.
    Question(Reply<u32>),
    Answer(Result<u32, AskError>),
    LateAnswer(Reply<u32>),
}

const SILENT: u32 = 1;
const LATE: u32 = 2;
const RUDE: u32 = 3;
const PROMPT: u32 = 4;
const LATE_BY: Duration = Duration::from_millis(400);

/// Every answer the asker got, and when (simulated).
type Answers = Arc<Mutex<Vec<(Result<u32, AskError>, Instant)>>>;
/// Whether the late answerer's `Reply::send` said the answer was taken.
type Taken = Arc<Mutex<Vec<bool>>>;

fn askers(answers: &Answers, taken: &Taken) -> impl Fn(&u32) -> Activation<u32, Msg> + use<> {
    let (answers, taken) = (answers.clone(), taken.clone());
    move |&id: &u32| {
        let (answers, taken) = (answers.clone(), taken.clone());
        let mut kept = Vec::new();
        Activation::ready(move |ctx: &mut Context<'_, u32, Msg>, msg| match msg {
            Msg::Ask { to, timeout } => ctx.ask(to, Msg::Question, timeout, Msg::Answer),
            Msg::Question(reply) => match id {
                SILENT => kept.push(reply),
                LATE => {
                    ctx.schedule(LATE_BY, Msg::LateAnswer(reply));
                }
                RUDE => drop(reply),
                _ => {
                    let _ = reply.send(id * 100);
                }
            },
            Msg::LateAnswer(reply) => taken.lock().unwrap().push(reply.send(id * 100).is_ok()),
            Msg::Answer(answer) => answers.lock().unwrap().push((answer, ctx.now())),
        })
    }
}

#[test]
fn an_unanswered_ask_times_out_exactly_at_its_deadline() {
    let timeout = Duration::from_millis(250);
    for seed in 0..50 {
        let (answers, taken) = (Answers::default(), Taken::default());
        let sim = Sim::new(seed, Config::default(), askers(&answers, &taken));
        let mut sim = sim.with_shards(1 + (seed % 3) as u32);
        // Asked at an odd moment, so that the deadline falls between round numbers.
        sim.run_for(Duration::from_micros(1_234_567));
        let asked_at = sim.now();
        for to in [SILENT, LATE, RUDE, PROMPT] {
            sim.send(0, Msg::Ask { to, timeout }).unwrap();
        }
        sim.run_for(timeout - Duration::from_nanos(1));
        let mut got = answers.lock().unwrap().clone();
        got.sort_by_key(|(answer, _)| format!("{answer:?}"));
        // At once: the prompt answer, and the dropped reply.
        let at_once = vec![
            (Err(AskError::Dropped), asked_at),
            (Ok(PROMPT * 100), asked_at),
        ];
        assert_eq!(got, at_once, "seed {seed}: before the deadline");

        sim.run_for(Duration::from_nanos(1));
        let got = answers.lock().unwrap().split_off(2);
        let deadline = asked_at + timeout;
        let timed_out = vec![(Err(AskError::Timeout), deadline); 2];
        assert_eq!(
            got, timed_out,
            "seed {seed}: the silent and the late one, at the deadline"
        );

        // The late answer comes after its asker gave up: refused, and not delivered.
        sim.run_for(LATE_BY);
        assert_eq!(*taken.lock().unwrap(), [false], "seed {seed}");
        assert_eq!(answers.lock().unwrap().len(), 2, "seed {seed}");
        assert!(sim.dead_letters().is_empty(), "seed {seed}");
    }
}

/// An answer sent at the very moment the ask expires: if `Reply::send` says it was taken
/// (`Ok`), the asker gets it; if the asker got `Timeout`, `send` said so (`Err`). An application
/// that rolls back when `send` fails, and not otherwise, loses nothing.
#[test]
fn an_answer_taken_at_the_deadline_is_not_reported_as_a_timeout() {
    let mut lost = Vec::new();
    for seed in 0..50 {
        let (answers, taken) = (Answers::default(), Taken::default());
        let mut sim = Sim::new(seed, Config::default(), askers(&answers, &taken));
        sim.send(
            0,
            Msg::Ask {
                to: LATE,
                timeout: LATE_BY,
            },
        )
        .unwrap();
        sim.run_for(2 * LATE_BY);
        let taken = taken.lock().unwrap()[0];
        let answer = answers.lock().unwrap()[0].0;
        if taken && answer == Err(AskError::Timeout) {
            lost.push(seed);
        }
    }
    assert!(
        lost.is_empty(),
        "answers taken but reported as timeouts, seeds {lost:?}"
    );
}

// ---- work in flight when its receiver goes away ----------------------------------------------

/// Sets its flag when dropped: tells whether a task's future was dropped.
struct Guard(Arc<AtomicBool>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

enum Work {
    /// Starts work that waits for `Reply` the test holds, keeping the flag's guard.
    Start(Arc<AtomicBool>, Reply<Reply<u32>>),
    Done(u32),
    Stop,
    Panic,
}

/// Records each receiver's deactivations and the outcomes it got.
type Log = Arc<Mutex<Vec<(u32, String)>>>;

struct Worker {
    log: Log,
}

impl Receiver<u32, Work> for Worker {
    fn receive(&mut self, ctx: &mut Context<'_, u32, Work>, msg: Work) {
        match msg {
            Work::Start(flag, handoff) => {
                let guard = Guard(flag);
                let (reply, answer) = Reply::new();
                let _ = handoff.send(reply);
                let work = async move {
                    let _guard = guard;
                    answer.await.unwrap_or(0)
                };
                ctx.spawn(work, Work::Done);
            }
            Work::Done(n) => self
                .log
                .lock()
                .unwrap()
                .push((*ctx.id(), format!("done {n}"))),
            Work::Stop => ctx.stop(),
            Work::Panic => panic!("a worker panics with work in flight"),
        }
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, u32, Work>, why: Deactivation) {
        self.log
            .lock()
            .unwrap()
            .push((*ctx.id(), format!("{why:?}")));
    }
}

#[test]
fn work_in_flight_is_dropped_with_its_receiver() {
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for seed in 0..20 {
        let log = Log::default();
        let workers = log.clone();
        let config = Config::default().idle_timeout(Duration::from_millis(10));
        let sim = Sim::new(seed, config, move |_: &u32| {
            Activation::ready(Worker {
                log: workers.clone(),
            })
        });
        let mut sim = sim.with_shards(2);
        let flags: Vec<Arc<AtomicBool>> = (0..5).map(|_| Arc::default()).collect();
        let mut replies = Vec::new();
        for (id, flag) in (0..).zip(&flags) {
            let start = |handoff| Work::Start(flag.clone(), handoff);
            replies.push(sim.ask(id, start).expect("the work started"));
        }

        // Waiting for work is not idleness: a hundred idle timeouts pass, nobody goes.
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.stats().live, 5, "seed {seed}");
        assert!(log.lock().unwrap().is_empty(), "seed {seed}");

        // 0 gets its outcome, then goes idle.
        replies.remove(0).send(7).unwrap();
        sim.run_for(Duration::from_millis(20));
        assert!(
            flags[0].load(Ordering::SeqCst),
            "seed {seed}: finished work is dropped"
        );
        let expected = [(0, "done 7".to_owned()), (0, "IdleTimeout".to_owned())];
        assert_eq!(*log.lock().unwrap(), expected, "seed {seed}");
        log.lock().unwrap().clear();

        // 1 stops and 2 panics with work in flight: the work is dropped on the spot, and its
        // outcome, answered now, never delivered.
        sim.send(1, Work::Stop).unwrap();
        sim.send(2, Work::Panic).unwrap();
        sim.run_until_quiet();
        assert!(
            flags[1].load(Ordering::SeqCst),
            "seed {seed}: dropped at stop"
        );
        assert!(
            flags[2].load(Ordering::SeqCst),
            "seed {seed}: dropped at panic"
        );
        for reply in replies.drain(..2) {
            assert_eq!(reply.send(1), Err(1), "seed {seed}: nobody waits for it");
        }
        sim.run_for(Duration::from_millis(20));

        // 3 and 4 still wait; closing drops their work.
        assert!(!flags[3].load(Ordering::SeqCst) && !flags[4].load(Ordering::SeqCst));
        sim.close();
        assert!(sim.is_closed(), "seed {seed}");
        assert!(flags[3].load(Ordering::SeqCst) && flags[4].load(Ordering::SeqCst));
        let mut log = log.lock().unwrap().clone();
        log.sort();
        let expected = [
            (1, "Stopped"),
            (2, "Panicked"),
            (3, "Closing"),
            (4, "Closing"),
        ];
        let expected: Vec<_> = expected.map(|(id, why)| (id, why.to_owned())).into();
        assert_eq!(log, expected, "seed {seed}: no outcome was delivered");
    }
    std::panic::set_hook(quiet);
}
