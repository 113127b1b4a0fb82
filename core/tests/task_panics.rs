//! A future a receiver started that panics: the panic is caught where the task is polled, the
//! task ends without an outcome, and once the driver gives it back (`Router::abandon`) the
//! panic is logged with the receiver's ID and counted, and the receiver stops waiting for it:
//! it goes idle and is deactivated as usual.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Command, Config, Context, Deactivation, Driver, Receiver, Router, Task,
};

#[derive(Debug)]
enum Msg {
    /// Start a future that panics.
    Bad,
    /// Start a future that never finishes, holding the flag (set when it is dropped).
    Hang(Arc<AtomicBool>),
    /// Ask `to`, whose answer's mapping panics.
    BadAsk(u8),
    /// Answer an ask.
    Asked(hermes_core::Reply<u32>),
    Done,
}

struct Worker {
    deactivations: Arc<Mutex<Vec<(u8, Deactivation)>>>,
}

/// Sets its flag when dropped.
struct Dropped(Arc<AtomicBool>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl Receiver<u8, Msg> for Worker {
    fn receive(&mut self, ctx: &mut Context<'_, u8, Msg>, msg: Msg) {
        match msg {
            Msg::Bad => ctx.spawn(
                async { panic!("a future's bug (a deliberate panic in a test)") },
                |()| Msg::Done,
            ),
            Msg::Hang(flag) => {
                let guard = Dropped(flag);
                ctx.spawn(
                    async move {
                        let _guard = guard;
                        std::future::pending::<()>().await
                    },
                    |()| Msg::Done,
                );
            }
            Msg::BadAsk(to) => ctx.ask(to, Msg::Asked, Duration::from_secs(60), |_| -> Msg {
                panic!("a deliberate panic mapping an answer")
            }),
            Msg::Asked(reply) => drop(reply.send(1)),
            Msg::Done => {}
        }
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, u8, Msg>, why: Deactivation) {
        self.deactivations.lock().unwrap().push((*ctx.id(), why));
    }
}

type Deactivations = Arc<Mutex<Vec<(u8, Deactivation)>>>;

fn worker(deactivations: &Deactivations) -> impl Fn(&u8) -> Activation<u8, Msg> + use<> {
    let deactivations = Arc::clone(deactivations);
    move |_: &u8| {
        Activation::ready(Worker {
            deactivations: Arc::clone(&deactivations),
        })
    }
}

fn drive(router: &mut Router<u8, Msg>, factory: &impl hermes_core::Factory<u8, Msg>, now: Instant) {
    while let Some(command) = router.poll_command() {
        router.handle(command, factory, now).unwrap();
    }
}

fn poll(task: &mut Task<Msg>) -> Poll<Option<Msg>> {
    std::pin::Pin::new(task).poll(&mut TaskContext::from_waker(Waker::noop()))
}

/// Every event logged while `f` runs, as "LEVEL field=value ...".
fn logged(f: impl FnOnce()) -> Vec<String> {
    struct Capture(Arc<Mutex<Vec<String>>>);
    impl tracing::Subscriber for Capture {
        fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
            tracing::span::Id::from_u64(1)
        }
        fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
        fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
        fn event(&self, event: &tracing::Event<'_>) {
            let mut line = event.metadata().level().to_string();
            event.record(
                &mut |field: &tracing::field::Field, value: &dyn std::fmt::Debug| {
                    let _ = write!(line, " {}={value:?}", field.name());
                },
            );
            self.0.lock().unwrap().push(line);
        }
        fn enter(&self, _: &tracing::span::Id) {}
        fn exit(&self, _: &tracing::span::Id) {}
    }
    let lines = Arc::new(Mutex::new(Vec::new()));
    tracing::subscriber::with_default(Capture(Arc::clone(&lines)), f);
    lines.lock().unwrap().clone()
}

#[test]
fn a_panicking_future_ends_without_an_outcome_and_its_receiver_idles_out() {
    let idle = Duration::from_secs(5);
    let now = Instant::now();
    let deactivations = Deactivations::default();
    let factory = worker(&deactivations);
    let mut router = Router::new(Config::default().idle_timeout(idle));
    router.send(7, Msg::Bad).unwrap();
    drive(&mut router, &factory, now);
    let mut task = router.poll_task().expect("the receiver started work");
    // Waiting for its work, the receiver has no idle deadline.
    assert_eq!(router.poll_timeout(), None);
    // The panic is caught inside the task, where it is polled.
    assert!(matches!(poll(&mut task), Poll::Ready(None)));
    assert_eq!(
        router.tasks_in_flight(),
        1,
        "the router learns it from the driver"
    );
    let later = now + Duration::from_secs(1);
    let logs = logged(|| router.abandon(task.id(), later));
    assert_eq!(router.tasks_in_flight(), 0);
    assert_eq!(router.stats().panics, 1);
    let error = logs
        .iter()
        .find(|l| l.starts_with("ERROR"))
        .expect("the panic is logged as an error");
    assert!(error.contains("id=7"), "with the receiver's ID: {error}");
    assert!(error.contains("a deliberate panic in a test"), "{error}");
    // Its idle time starts when the router learned the work was over.
    assert_eq!(router.poll_timeout(), Some(later + idle));
    router.handle_timeout(later + idle);
    drive(&mut router, &factory, later + idle);
    assert_eq!(
        deactivations.lock().unwrap().as_slice(),
        [(7, Deactivation::IdleTimeout)]
    );
    // Once is enough: giving it back again does nothing.
    router.abandon(task.id(), later + idle);
    assert_eq!(router.stats().panics, 1);
    router.close();
    assert!(router.is_closed());
}

#[test]
fn with_a_zero_idle_timeout_the_receiver_is_deactivated_when_its_last_task_panics() {
    let now = Instant::now();
    let deactivations = Deactivations::default();
    let factory = worker(&deactivations);
    let mut router = Router::new(Config::default().idle_timeout(Duration::ZERO));
    router.send(7, Msg::Bad).unwrap();
    router.send(7, Msg::Bad).unwrap();
    drive(&mut router, &factory, now);
    let mut tasks: Vec<Task<Msg>> = std::iter::from_fn(|| router.poll_task()).collect();
    assert_eq!(tasks.len(), 2);
    for task in &mut tasks {
        assert!(matches!(poll(task), Poll::Ready(None)));
    }
    router.abandon(tasks[0].id(), now);
    assert_eq!(
        router.poll_command(),
        None,
        "still waiting for its second task"
    );
    router.abandon(tasks[1].id(), now);
    assert!(matches!(
        router.poll_command(),
        Some(Command::Deactivate(_))
    ));
    assert_eq!(router.stats().panics, 2);
}

#[test]
fn a_driver_that_drops_an_unfinished_task_abandons_it_and_the_future_is_dropped() {
    let now = Instant::now();
    let deactivations = Deactivations::default();
    let factory = worker(&deactivations);
    let mut router = Router::new(Config::default());
    let dropped = Arc::new(AtomicBool::new(false));
    router.send(7, Msg::Hang(Arc::clone(&dropped))).unwrap();
    drive(&mut router, &factory, now);
    let mut task = router.poll_task().unwrap();
    assert!(poll(&mut task).is_pending());
    let id = task.id();
    router.abandon(id, now);
    assert!(
        dropped.load(Ordering::SeqCst),
        "the router dropped the future"
    );
    assert!(matches!(poll(&mut task), Poll::Ready(None)));
    assert_eq!(router.tasks_in_flight(), 0);
    assert_eq!(router.stats().panics, 0, "not a panic");
    assert!(router.poll_timeout().is_some(), "idle time runs again");
}

/// `Driver::run` gives the task back itself: the receiver whose future panicked idles out, and
/// an ask whose `map` panics ends the same way while the asked receiver answers.
#[test]
fn the_inline_driver_gives_a_panicked_task_back() {
    let idle = Duration::from_secs(5);
    let now = Instant::now();
    let deactivations = Deactivations::default();
    let mut driver = Driver::new(Config::default().idle_timeout(idle), worker(&deactivations));
    driver.send(1, Msg::Bad).unwrap();
    driver.send(2, Msg::BadAsk(3)).unwrap();
    driver.run(now);
    let stats = driver.router().stats();
    assert_eq!(stats.panics, 2);
    assert_eq!(driver.router().tasks_in_flight(), 0);
    assert_eq!(driver.poll_timeout(), Some(now + idle));
    driver.run(now + idle);
    let mut gone = deactivations.lock().unwrap().clone();
    gone.sort_unstable_by_key(|&(id, _)| id);
    assert_eq!(
        gone,
        [
            (1, Deactivation::IdleTimeout),
            (2, Deactivation::IdleTimeout),
            (3, Deactivation::IdleTimeout)
        ]
    );
    driver.close(now + idle);
    assert!(driver.router().is_closed());
}
