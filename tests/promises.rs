//! Documented promises tried through the facade's public API only, as a user reads them: the
//! handle's rustdoc, `Options`, `Config`, `Settings`, `Stats`, the inline `Driver`. Each test
//! that starts Hermes runs on every executor (pool, tokio, smol) in turn. These pin what the
//! executors' conformance suite and the core tests do not: bounds set on public fields, IDs a
//! custom placement puts on no shard, odd thread names, every panic counted, final totals.
#![cfg(feature = "pool")]

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hermes::router::Driver;
use hermes::{
    Activation, AskError, Config, Context, Deactivation, DeadLetter, DeadLetterReason, Hermes,
    Location, Options, Receiver, Recipient, Reply, SendError, Settings, Stats,
};

/// A hang guard only: no test waits this long when it passes.
const GUARD: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Executor {
    Pool,
    Tokio,
    Smol,
}

const EXECUTORS: [Executor; 3] = [Executor::Pool, Executor::Tokio, Executor::Smol];

/// One tokio runtime for every test of this file (it must outlive the shards on it).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_time()
            .build()
            .expect("a tokio runtime")
    })
}

fn start<K: hermes::Key, M: hermes::Message>(
    executor: Executor,
    options: Options<K, M>,
    factory: impl Fn(&K) -> Activation<K, M> + Send + Sync + 'static,
) -> Hermes<K, M> {
    match executor {
        Executor::Pool => hermes::pool::start_with(options, factory).expect("the pool starts"),
        Executor::Tokio => hermes_tokio::start_on(runtime().handle(), options, factory),
        Executor::Smol => hermes_smol::start_with(options, factory),
    }
}

/// Polls `done` until it is true; fails naming `what` after [`GUARD`].
fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < GUARD, "hung waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A dead-letter sink that keeps what a test needs of each letter (and drops its message, so a
/// `Reply` in it is dropped and its ask ends `Dropped`).
type Letters = Arc<Mutex<Vec<(Recipient<u32>, Option<u32>, DeadLetterReason)>>>;

fn sink(letters: &Letters) -> impl Fn(DeadLetter<u32, Msg>) + Send + Sync + 'static {
    let letters = Arc::clone(letters);
    move |letter: DeadLetter<u32, Msg>| {
        let tag = match letter.message {
            Some(Msg::Note(n)) => Some(n),
            _ => None,
        };
        letters
            .lock()
            .unwrap()
            .push((letter.recipient, tag, letter.reason));
    }
}

enum Msg {
    Note(u32),
    Ping(Reply<u32>),
    /// Sends `Note(n)` to `to`.
    Forward(u32, u32),
    Where(Reply<hermes::Addr>),
    Stop,
    Boom,
    SpawnPanic,
}

/// Answers pings with its ID, forwards, stops, panics on `Boom`, starts a future that panics.
fn plain(ctx: &mut Context<'_, u32, Msg>, msg: Msg) {
    match msg {
        Msg::Note(_) => {}
        Msg::Ping(reply) => drop(reply.send(*ctx.id())),
        Msg::Forward(to, n) => ctx.send(to, Msg::Note(n)),
        Msg::Where(reply) => drop(reply.send(ctx.addr())),
        Msg::Stop => ctx.stop(),
        Msg::Boom => panic!("a handler's deliberate panic (a test)"),
        Msg::SpawnPanic => ctx.spawn(
            async { panic!("a spawned future's deliberate panic (a test)") },
            |()| Msg::Note(0),
        ),
    }
}

/// `Config::batch_size` and `Config::mailbox_capacity` are public fields: a zero written there
/// bypasses the setters' "at least 1". A batch of zero used to leave every receiver scheduled
/// and never run (asks timed out, shutdown hung); zero now counts as one, as the setters make it.
#[test]
fn zero_bounds_written_to_the_config_fields_count_as_one() {
    for executor in EXECUTORS {
        let mut config = Config::default();
        config.batch_size = 0;
        config.mailbox_capacity = Some(0);
        let hermes = start(executor, Options::new(config).shards(2), |_: &u32| {
            Activation::ready(plain)
        });
        for n in 0..10 {
            hermes.send(n % 3, Msg::Note(n)).unwrap();
        }
        let answer = hermes.ask_blocking(1, Msg::Ping, Duration::from_secs(5));
        if answer != Ok(1) {
            // Dropping a Hermes whose receivers never run would hang this test instead.
            std::mem::forget(hermes);
            panic!("{executor:?}: a receiver with a zero batch never ran: {answer:?}");
        }
        let stats = hermes.shutdown().unwrap();
        assert_eq!(stats.messages_delivered, 11, "{executor:?}");
        assert_eq!(stats.deactivations, 3, "{executor:?}");
    }
}

/// The same for a kind's `Settings::batch_size`, on the inline `Driver`.
#[test]
fn a_zero_batch_written_to_a_kinds_settings_counts_as_one() {
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    struct CounterId(u8);
    enum CounterMsg {
        Add(u64),
        Total(Reply<u64>),
    }
    hermes::app! {
        app Counters(CountersId, CountersMsg) {
            Counter(CounterId => CounterMsg),
        }
    }
    let mut settings = Settings::default();
    settings.batch_size = Some(0);
    let kinds = hermes::Kinds::<Counters>::new().kind_with(settings, |_: &CounterId| {
        let mut total = 0;
        Activation::ready(
            move |_: &mut Context<'_, CounterId, CounterMsg, Counters>, msg| match msg {
                CounterMsg::Add(n) => total += n,
                CounterMsg::Total(reply) => drop(reply.send(total)),
            },
        )
    });
    let mut driver = Driver::new(Config::default(), kinds);
    let now = Instant::now();
    driver.send(CounterId(1), CounterMsg::Add(2)).unwrap();
    driver.send(CounterId(1), CounterMsg::Add(3)).unwrap();
    let (reply, asked) = Reply::new();
    driver.send(CounterId(1), CounterMsg::Total(reply)).unwrap();
    // Bounded, as a hang guard: with a batch of zero, every step ran the receiver on nothing.
    for _ in 0..1000 {
        if driver.step(now).is_none() {
            break;
        }
    }
    assert_eq!(asked.wait_timeout(Duration::ZERO), Ok(5));
    assert_eq!(driver.router().stats().messages_delivered, 3);
}

/// Hermes on two shards, IDs placed by parity except `odd`, placed at `at`; dead letters kept
/// in `letters`.
fn placed(executor: Executor, letters: &Letters, odd: u32, at: Location) -> Hermes<u32, Msg> {
    let options = Options::new(Config::default())
        .shards(2)
        .on_dead_letter(sink(letters))
        .placement(move |&id: &u32| {
            if id == odd {
                at
            } else {
                Location::Shard(id % 2)
            }
        });
    start(executor, options, |_: &u32| Activation::ready(plain))
}

/// The dead letters kept so far, by their messages' tags.
fn sorted(letters: &Letters) -> Vec<(Recipient<u32>, Option<u32>, DeadLetterReason)> {
    let mut seen = letters.lock().unwrap().clone();
    seen.sort_by_key(|(_, tag, _)| *tag);
    seen
}

/// `Options::placement`: "Every ID must be placed on a shard `0..shards`; one placed elsewhere
/// is a dead letter." It used to be a dead letter only from inside; from outside, `send`,
/// `try_send` and `schedule` refused it as `Stale` ("send by ID", though it was), `send_all`
/// as `Closed` ("hermes is closed", though it was not), and an ask failed `Closed`. Every way
/// in now makes it a `Stale` dead letter with its message, as the doc says.
#[test]
fn an_id_placed_on_no_shard_is_a_stale_dead_letter_from_every_way_in() {
    const NOWHERE: u32 = 99;
    for executor in EXECUTORS {
        let letters = Letters::default();
        let hermes = placed(executor, &letters, NOWHERE, Location::Shard(7));
        hermes.send(NOWHERE, Msg::Note(1)).unwrap();
        hermes.try_send(NOWHERE, Msg::Note(2)).unwrap();
        hermes
            .send_all([(NOWHERE, Msg::Note(3)), (1, Msg::Note(4))])
            .unwrap();
        hermes
            .schedule(NOWHERE, Duration::from_millis(1), Msg::Note(5))
            .unwrap();
        hermes.send(1, Msg::Forward(NOWHERE, 6)).unwrap();
        assert_eq!(
            hermes.ask_blocking(NOWHERE, Msg::Ping, GUARD),
            Err(AskError::Dropped),
            "{executor:?}: the request is a dead letter, its reply dropped with it"
        );
        // A handle from a Hermes with more shards names a shard this one does not have.
        let wide = start(
            executor,
            Options::new(Config::default())
                .shards(4)
                .placement(|_: &u32| Location::Shard(3)),
            |_: &u32| Activation::ready(plain),
        );
        let far = wide.ask_blocking(5, Msg::Where, GUARD).unwrap();
        wide.shutdown().unwrap();
        hermes.send_to(far, Msg::Note(7)).unwrap();

        eventually("seven dead letters", || letters.lock().unwrap().len() == 7);
        let seen = sorted(&letters);
        let expected: Vec<_> = [None, Some(1), Some(2), Some(3), Some(5), Some(6)]
            .into_iter()
            .map(|tag| (Recipient::Id(NOWHERE), tag, DeadLetterReason::Stale))
            .chain([(Recipient::Addr(far), Some(7), DeadLetterReason::Stale)])
            .collect();
        assert_eq!(seen, expected, "{executor:?}");
        let stats = hermes.shutdown().unwrap();
        assert_eq!(stats.dead_letters, 7, "{executor:?}");
        // Note(4), the forward and the ping: only to receivers that exist.
        assert_eq!(stats.messages_delivered, 2, "{executor:?}");
    }
}

/// `Options::name` is "a name for threads and logs"; a NUL byte in it used to panic inside
/// `hermes::pool::start_with` (std refuses such thread names). It is left out instead.
#[test]
fn a_name_with_a_nul_byte_still_starts_the_pool() {
    let options = Options::new(Config::default()).shards(2).name("tri\0al");
    assert_eq!(options.thread_name(), "trial");
    let hermes = hermes::pool::start_with(options, |_: &u32| Activation::ready(plain))
        .expect("the pool starts");
    assert_eq!(hermes.ask_blocking(4, Msg::Ping, GUARD), Ok(4));
    hermes.shutdown().unwrap();
}

/// `Options`: at least one shard, an inbox of at least one message, a turn budget of at
/// least one of each; with all of them at their least, every message sent from outside still
/// arrives, in order, the senders waiting for room.
#[test]
fn options_at_their_least_still_deliver_everything_in_order() {
    for executor in EXECUTORS {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let options = Options::new(Config::default().mailbox_capacity(1))
            .shards(0)
            .inbox_capacity(0)
            .turn_budget(0, 0);
        assert_eq!(options.shard_count(), 1);
        let s = Arc::clone(&seen);
        let hermes = start(executor, options, move |_: &u32| {
            let s = Arc::clone(&s);
            Activation::ready(move |ctx: &mut Context<'_, u32, Msg>, msg| match msg {
                Msg::Note(n) => s.lock().unwrap().push((*ctx.id(), n)),
                other => plain(ctx, other),
            })
        });
        assert_eq!(hermes.shard_count(), 1);
        let senders: Vec<_> = (0..2)
            .map(|id| {
                let hermes = hermes.clone();
                std::thread::spawn(move || {
                    for n in 0..200 {
                        hermes.send(id, Msg::Note(n)).unwrap();
                    }
                })
            })
            .collect();
        for sender in senders {
            sender.join().unwrap();
        }
        let stats = hermes.shutdown().unwrap();
        assert_eq!(stats.messages_delivered, 400, "{executor:?}");
        let seen = seen.lock().unwrap();
        for id in 0..2 {
            let notes: Vec<u32> = seen.iter().filter(|s| s.0 == id).map(|s| s.1).collect();
            assert_eq!(notes, (0..200).collect::<Vec<_>>(), "{executor:?}, ID {id}");
        }
    }
}

/// A receiver whose hooks panic when told to (by its ID).
struct Hooks {
    panic_in_activated: bool,
    panic_in_deactivated: bool,
}

impl Receiver<u32, Msg> for Hooks {
    fn receive(&mut self, ctx: &mut Context<'_, u32, Msg>, msg: Msg) {
        plain(ctx, msg);
    }

    fn activated(&mut self, _: &mut Context<'_, u32, Msg>) {
        assert!(
            !self.panic_in_activated,
            "an activated hook's deliberate panic (a test)"
        );
    }

    fn deactivated(&mut self, _: &mut Context<'_, u32, Msg>, _: Deactivation) {
        assert!(
            !self.panic_in_deactivated,
            "a deactivated hook's deliberate panic (a test)"
        );
    }
}

/// `Stats::panics`: "Panics caught: in handlers, lifecycle hooks and factories, and in futures
/// receivers started"; `Stats::activations` counts an instance whose `activated` hook panicked
/// and `deactivations` never does; `Hermes::stats` after shutdown gives the final totals, and
/// so does every later `shutdown`.
#[test]
fn stats_count_every_kind_of_panic_and_keep_the_final_totals() {
    for executor in EXECUTORS {
        let letters = Letters::default();
        let options = Options::new(Config::default())
            .shards(2)
            .on_dead_letter(sink(&letters));
        let hermes = start(executor, options, |&id: &u32| match id {
            0 => panic!("a factory's deliberate panic (a test)"),
            id => Activation::ready(Hooks {
                panic_in_activated: id == 1,
                panic_in_deactivated: id == 2,
            }),
        });
        // The factory and `activated` fail the activation: the request is a dead letter.
        assert_eq!(
            hermes.ask_blocking(0, Msg::Ping, GUARD),
            Err(AskError::Dropped)
        );
        assert_eq!(
            hermes.ask_blocking(1, Msg::Ping, GUARD),
            Err(AskError::Dropped)
        );
        assert_eq!(hermes.ask_blocking(2, Msg::Ping, GUARD), Ok(2));
        hermes.send(2, Msg::Stop).unwrap(); // `deactivated` panics; it completes all the same
        hermes.send(3, Msg::Boom).unwrap();
        hermes.send(4, Msg::SpawnPanic).unwrap();
        eventually("five panics", || hermes.stats().panics == 5);
        eventually("two deactivations", || hermes.stats().deactivations == 2);

        let totals = hermes.shutdown().unwrap();
        assert_eq!(totals.panics, 5, "{executor:?}");
        assert_eq!(totals.activations, 4, "{executor:?}: 1, 2, 3 and 4");
        assert_eq!(totals.deactivations, 3, "{executor:?}: 2, 3 and 4");
        assert_eq!(totals.dead_letters, 3, "{executor:?}");
        assert_eq!((totals.live, totals.timers_pending), (0, 0), "{executor:?}");
        assert_eq!(hermes.stats(), totals, "{executor:?}");
        assert_eq!(hermes.shutdown(), Ok(totals), "{executor:?}");
        let mut reasons: Vec<String> = letters
            .lock()
            .unwrap()
            .iter()
            .map(|(to, _, reason)| format!("{to:?}: {}", reason_name(reason)))
            .collect();
        reasons.sort();
        assert_eq!(
            reasons,
            [
                "Id(0): FactoryFailed",
                "Id(1): FactoryFailed",
                "Id(3): Panicked"
            ],
            "{executor:?}"
        );
    }
}

fn reason_name(reason: &DeadLetterReason) -> &'static str {
    match reason {
        DeadLetterReason::FactoryFailed(_) => "FactoryFailed",
        DeadLetterReason::Panicked(_) => "Panicked",
        DeadLetterReason::Closed => "Closed",
        DeadLetterReason::Stale => "Stale",
        _ => "other",
    }
}

/// `Stats::timers_pending`: "User timers scheduled and not yet fired or cancelled", from
/// outside and from receivers; at shutdown the ones still pending are `Closed` dead letters
/// with their messages, and none is left pending.
#[test]
fn timers_pending_counts_timers_until_they_fire_or_are_cancelled() {
    const HOUR: Duration = Duration::from_secs(3600);
    for executor in EXECUTORS {
        let letters = Letters::default();
        let options = Options::new(Config::default())
            .shards(2)
            .on_dead_letter(sink(&letters));
        let fired = Arc::new(Mutex::new(Vec::new()));
        let f = Arc::clone(&fired);
        let hermes = start(executor, options, move |_: &u32| {
            let f = Arc::clone(&f);
            Activation::ready(move |ctx: &mut Context<'_, u32, Msg>, msg| match msg {
                Msg::Note(n) => f.lock().unwrap().push(n),
                Msg::Forward(_, n) => {
                    ctx.schedule(HOUR, Msg::Note(n));
                    ctx.schedule(Duration::from_millis(1), Msg::Note(n + 1));
                }
                other => plain(ctx, other),
            })
        });
        let kept = hermes.schedule(1, HOUR, Msg::Note(1)).unwrap();
        let cancelled = hermes.schedule(2, HOUR, Msg::Note(2)).unwrap();
        hermes.schedule(3, Duration::ZERO, Msg::Note(3)).unwrap();
        hermes.send(4, Msg::Forward(0, 40)).unwrap();
        hermes.cancel(cancelled);
        eventually("the short timers", || fired.lock().unwrap().len() == 2);
        eventually("two timers pending", || hermes.stats().timers_pending == 2);
        let stats = hermes.shutdown().unwrap();
        assert_eq!(stats.timers_pending, 0, "{executor:?}");
        let mut fired = fired.lock().unwrap().clone();
        fired.sort();
        assert_eq!(fired, [3, 41], "{executor:?}");
        assert_eq!(
            sorted(&letters),
            [
                (Recipient::Id(1), Some(1), DeadLetterReason::Closed),
                (Recipient::Id(4), Some(40), DeadLetterReason::Closed),
            ],
            "{executor:?}"
        );
        hermes.cancel(kept); // after shutdown: ignored, no panic
    }
}

/// `Driver` (`Config::dead_letter_capacity`): a router driven by hand keeps that many dead
/// letters until they are polled, in order, and counts the rest in `dead_letters_dropped`.
#[test]
fn the_driver_keeps_dead_letters_up_to_its_capacity_and_counts_the_rest() {
    let mut driver = Driver::new(Config::default().dead_letter_capacity(2), |_: &u32| {
        Activation::<u32, Msg>::Refused
    });
    for n in 0..5 {
        driver.send(n, Msg::Note(n)).unwrap();
    }
    driver.run(Instant::now());
    let mut kept = Vec::new();
    while let Some(letter) = driver.poll_dead_letter() {
        let tag = match letter.message {
            Some(Msg::Note(n)) => n,
            _ => panic!("a dead letter keeps its message"),
        };
        assert_eq!(letter.reason, DeadLetterReason::NoReceiver);
        kept.push(tag);
    }
    assert_eq!(kept, [0, 1]);
    let stats = driver.router().stats();
    assert_eq!((stats.dead_letters, stats.dead_letters_dropped), (5, 3));
}

/// `Driver::close` (and the core's "Closing"): refuses outside sends with the message back,
/// turns pending timers into `Closed` dead letters, lets queued messages drain, and runs every
/// live receiver's `deactivated` hook once, with `Closing`, after its queued messages.
#[test]
fn driver_close_drains_then_deactivates_every_receiver_once() {
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    struct Logged(Arc<Mutex<Vec<String>>>, u32);
    impl Receiver<u32, Msg> for Logged {
        fn receive(&mut self, ctx: &mut Context<'_, u32, Msg>, msg: Msg) {
            if let Msg::Note(n) = msg {
                self.0.lock().unwrap().push(format!("{} got {n}", self.1));
                if n == 0 {
                    ctx.schedule(Duration::from_secs(60), Msg::Note(100));
                }
            }
        }
        fn deactivated(&mut self, _: &mut Context<'_, u32, Msg>, why: Deactivation) {
            self.0.lock().unwrap().push(format!("{} {why:?}", self.1));
        }
    }
    let l = Arc::clone(&log);
    let mut driver = Driver::new(Config::default(), move |&id: &u32| {
        Activation::ready(Logged(Arc::clone(&l), id))
    });
    let now = Instant::now();
    driver.send(1, Msg::Note(0)).unwrap();
    driver.run(now);
    driver.send(1, Msg::Note(1)).unwrap();
    driver.send(2, Msg::Note(2)).unwrap();
    driver.close(now);
    // Each receiver's queued messages, then its one `Closing` hook.
    let log = log.lock().unwrap();
    for (id, got) in [(1, &["1 got 0", "1 got 1"][..]), (2, &["2 got 2"][..])] {
        let own: Vec<&str> = log
            .iter()
            .map(String::as_str)
            .filter(|line| line.starts_with(&format!("{id} ")))
            .collect();
        let closing = format!("{id} Closing");
        let expected: Vec<&str> = got.iter().copied().chain([closing.as_str()]).collect();
        assert_eq!(own, expected);
    }
    let stats = driver.router().stats();
    assert_eq!(
        (stats.live, stats.deactivations, stats.timers_pending),
        (0, 2, 0)
    );
    let letter = driver.poll_dead_letter().expect("the pending timer");
    assert_eq!(letter.reason, DeadLetterReason::Closed);
    assert!(matches!(letter.message, Some(Msg::Note(100))));
    match driver.send(3, Msg::Note(3)) {
        Err(SendError::Closed(Msg::Note(3))) => {}
        other => panic!("a send after close is refused with its message: {other:?}"),
    }
}

/// `Driver::poll_timeout` says when `run` has timers to fire: a receiver's timer fires at its
/// deadline, not a nanosecond before; then the idle timeout, counted from when the receiver
/// went idle, deactivates it at that instant.
#[test]
fn the_driver_fires_timers_and_idles_out_exactly_when_poll_timeout_says() {
    let whys: Arc<Mutex<Vec<Deactivation>>> = Arc::default();
    struct Ticker(Arc<Mutex<Vec<Deactivation>>>, u32);
    impl Receiver<u32, Msg> for Ticker {
        fn receive(&mut self, ctx: &mut Context<'_, u32, Msg>, msg: Msg) {
            match msg {
                Msg::Stop => drop(ctx.schedule(Duration::from_secs(10), Msg::Note(1))),
                Msg::Note(_) => self.1 += 1,
                _ => {}
            }
        }
        fn deactivated(&mut self, _: &mut Context<'_, u32, Msg>, why: Deactivation) {
            assert_eq!(self.1, 1, "the timer fired once before the deactivation");
            self.0.lock().unwrap().push(why);
        }
    }
    let w = Arc::clone(&whys);
    let idle = Duration::from_secs(60);
    let mut driver = Driver::new(Config::default().idle_timeout(idle), move |_: &u32| {
        Activation::ready(Ticker(Arc::clone(&w), 0))
    });
    let start = Instant::now();
    driver.send(7, Msg::Stop).unwrap();
    driver.run(start);
    let due = start + Duration::from_secs(10);
    assert_eq!(driver.poll_timeout(), Some(due));
    driver.run(due - Duration::from_nanos(1));
    assert_eq!(
        driver.router().stats().timers_pending,
        1,
        "not a nanosecond early"
    );
    driver.run(due);
    assert_eq!(driver.router().stats().timers_pending, 0);
    assert_eq!(driver.poll_timeout(), Some(due + idle));
    driver.run(due + idle - Duration::from_nanos(1));
    assert_eq!(driver.router().stats().live, 1, "not idle long enough yet");
    driver.run(due + idle);
    assert_eq!(*whys.lock().unwrap(), [Deactivation::IdleTimeout]);
    assert_eq!(driver.router().stats().live, 0);
    assert_eq!(driver.poll_timeout(), None);
}

/// `Options::remote`: without a transport, an ID that placement puts on another node is
/// refused from outside with `SendError::Unreachable` (the message back; an ask fails
/// `Unreachable`), and a send from a receiver, or a timer, is an `Unreachable` dead letter with
/// its message. `Hermes::release_moved` on a single process has nothing to hand off.
#[test]
fn an_id_on_another_node_without_a_transport_is_unreachable() {
    const REMOTE: u32 = 9;
    for executor in EXECUTORS {
        let letters = Letters::default();
        let hermes = placed(
            executor,
            &letters,
            REMOTE,
            Location::Node(hermes::NodeId(3)),
        );
        match hermes.send(REMOTE, Msg::Note(1)) {
            Err(SendError::Unreachable(Msg::Note(1))) => {}
            other => panic!("{executor:?}: {other:?}"),
        }
        match hermes.send_all([(REMOTE, Msg::Note(2))]) {
            Err(SendError::Unreachable(refused)) => assert_eq!(refused.len(), 1),
            other => panic!("{executor:?}: {other:?}"),
        }
        assert_eq!(
            hermes.ask_blocking(REMOTE, Msg::Ping, GUARD),
            Err(AskError::Unreachable)
        );
        hermes.send(1, Msg::Forward(REMOTE, 3)).unwrap();
        hermes
            .schedule(REMOTE, Duration::ZERO, Msg::Note(4))
            .unwrap();
        assert!(hermes.release_moved().wait_timeout(GUARD));
        eventually("two dead letters", || letters.lock().unwrap().len() == 2);
        let seen = sorted(&letters);
        let unreachable = |tag| {
            (
                Recipient::Id(REMOTE),
                Some(tag),
                DeadLetterReason::Unreachable,
            )
        };
        assert_eq!(seen, [unreachable(3), unreachable(4)], "{executor:?}");
        hermes.shutdown().unwrap();
    }
}

/// `Context::stop` in the `activated` hook: "the activating message is still handled, then
/// `Stopped`" (conformance `stop_in_the_activated_hook`). A first message whose handler then
/// recorded any effect (a send, a timer) used to panic on a debug assertion inside the router
/// ("a handler starts before any stop"): the message became a `Panicked` dead letter and its
/// effects were lost. Now it is handled, its effects happen, and the instance stops.
#[test]
fn a_stop_in_the_activated_hook_keeps_the_first_messages_effects() {
    struct StopsAtOnce(Arc<Mutex<Vec<String>>>);
    impl Receiver<u32, Msg> for StopsAtOnce {
        fn activated(&mut self, ctx: &mut Context<'_, u32, Msg>) {
            if *ctx.id() == 1 {
                ctx.stop();
            }
        }
        fn receive(&mut self, ctx: &mut Context<'_, u32, Msg>, msg: Msg) {
            match msg {
                Msg::Note(n) => self.0.lock().unwrap().push(format!("{} got {n}", ctx.id())),
                other => plain(ctx, other),
            }
        }
        fn deactivated(&mut self, ctx: &mut Context<'_, u32, Msg>, why: Deactivation) {
            self.0.lock().unwrap().push(format!("{} {why:?}", ctx.id()));
        }
    }
    for executor in EXECUTORS {
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let l = Arc::clone(&log);
        let hermes = start(
            executor,
            Options::new(Config::default()).shards(2),
            move |_| Activation::ready(StopsAtOnce(Arc::clone(&l))),
        );
        hermes.send(1, Msg::Forward(2, 7)).unwrap();
        eventually("the forwarded note", || {
            log.lock().unwrap().iter().any(|l| l == "2 got 7")
        });
        eventually("the stop", || hermes.stats().deactivations == 1);
        let stats = hermes.shutdown().unwrap();
        assert_eq!((stats.panics, stats.dead_letters), (0, 0), "{executor:?}");
        let mut log = log.lock().unwrap().clone();
        log.sort();
        assert_eq!(log, ["1 Stopped", "2 Closing", "2 got 7"], "{executor:?}");
    }
}

/// `Hermes::send`: "Where this thread must not block (inside a receiver, on a thread of the
/// async runtime that runs the shards) it does not wait: it returns `SendError::Full`", and so
/// for `send_timeout` and `send_all`; `ask_blocking` and `shutdown` refuse with
/// `WouldDeadlock` there (the shutdown begun); `schedule` is refused `Full` at a full inbox
/// wherever it is called; the async forms await room. Pinned on a tokio
/// current-thread runtime, and on a smol executor of one's own (`start_on`) run on one thread,
/// once that thread has run the shards (see `hermes_smol::start_on`).
#[test]
fn blocking_forms_on_a_thread_that_runs_the_shards_do_not_wait() {
    async fn trial(hermes: Hermes<u32, Msg>, executor: &str) -> Stats {
        assert_eq!(hermes.ask(1, Msg::Ping).await, Ok(1), "{executor}");
        hermes.try_send(1, Msg::Note(1)).unwrap(); // the inbox (capacity 1) is full now
        assert!(
            matches!(
                hermes.send(1, Msg::Note(2)),
                Err(SendError::Full(Msg::Note(2)))
            ),
            "{executor}"
        );
        let timer = hermes.schedule(1, Duration::ZERO, Msg::Note(6));
        assert!(
            matches!(timer, Err(SendError::Full(Msg::Note(6)))),
            "{executor}: a timer is refused at a full inbox"
        );
        let late = hermes.send_timeout(1, Msg::Note(3), Duration::from_millis(10));
        assert!(matches!(late, Err(SendError::Full(_))), "{executor}");
        match hermes.send_all([(1, Msg::Note(4))]) {
            Err(SendError::Full(refused)) => assert_eq!(refused.len(), 1, "{executor}"),
            other => panic!("{executor}: {other:?}"),
        }
        assert_eq!(
            hermes.ask_blocking(1, Msg::Ping, GUARD),
            Err(AskError::WouldDeadlock),
            "{executor}"
        );
        assert!(
            hermes.send_async(1, Msg::Note(5)).await.is_ok(),
            "{executor}"
        );
        assert_eq!(hermes.shutdown(), Err(hermes::WouldDeadlock), "{executor}");
        assert!(!hermes.is_accepting(), "{executor}: the shutdown has begun");
        hermes.shutdown_async().await
    }
    let options = || Options::new(Config::default()).shards(1).inbox_capacity(1);
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let stats = tokio.block_on(async {
        let hermes = hermes_tokio::start_with(options(), |_: &u32| Activation::ready(plain));
        trial(hermes.unwrap(), "tokio").await
    });
    assert_eq!(
        stats.messages_delivered, 3,
        "tokio: the ask, Note(1), Note(5)"
    );

    let executor = Arc::new(smol::Executor::new());
    let hermes = hermes_smol::start_on(&executor, options(), |_: &u32| Activation::ready(plain));
    let stats = smol::block_on(executor.run(trial(hermes, "smol")));
    assert_eq!(
        stats.messages_delivered, 3,
        "smol: the ask, Note(1), Note(5)"
    );
}
