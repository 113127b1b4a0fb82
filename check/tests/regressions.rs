//! Router bugs the checker found, each pinned down as a small deterministic scenario.
//!
//! Fixed ones pass. Open ones are `#[ignore]`d, with "OPEN router bug" in the reason and the
//! doc comment saying what is wrong; run them with
//! `cargo test -p hermes-check --test regressions -- --ignored`. None is open now.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_core::{
    Activation, Command, Config, Context, Deactivation, DeadLetterReason, Factory, Receiver, Router,
};

#[derive(Debug)]
enum Msg {
    Nop,
    Stop,
    /// Sets a long idle timeout for this instance.
    Linger,
}

fn factory(_id: &u8) -> Activation<u8, Msg> {
    Activation::ready(|ctx: &mut Context<'_, u8, Msg>, msg| match msg {
        Msg::Nop => {}
        Msg::Stop => ctx.stop(),
        Msg::Linger => ctx.set_idle_timeout(Duration::from_secs(7)),
    })
}

/// Handles every command inline at `now`; returns them.
fn drive(router: &mut Router<u8, Msg>, now: Instant) -> Vec<Command> {
    let mut seen = Vec::new();
    while let Some(command) = router.poll_command() {
        router
            .handle(command, &factory, now)
            .expect("commands are handled once each");
        seen.push(command);
    }
    seen
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// An idle check that comes due in the same `handle_timeout` call as a timer message for its
/// receiver is judged as of its own deadline. Before the fix it was judged as of the call's
/// `now`, so a receiver that was idle for only 90 ms of its 100 ms timeout when the timer
/// message arrived was deactivated anyway, and activated again for the message.
#[test]
fn an_idle_check_is_judged_at_its_own_deadline() {
    let t0 = Instant::now();
    let mut router = Router::new(Config::default().idle_timeout(ms(100)));
    router.send(1, Msg::Nop).unwrap();
    drive(&mut router, t0); // idle from 0 ms: an idle check is armed for 100 ms
    router.send(1, Msg::Nop).unwrap();
    drive(&mut router, t0 + ms(60)); // idle again from 60 ms: deadline 160 ms
    router.schedule(1, t0 + ms(150), Msg::Nop).unwrap();

    // One late call covers the old check (100 ms), the timer (150 ms) and the deadline (160 ms).
    router.handle_timeout(t0 + ms(200));
    let addr = router.addr(&1).unwrap();
    assert_eq!(router.poll_command(), Some(Command::Run(addr)));
    assert_eq!(
        router.poll_command(),
        None,
        "not deactivated: the timer came first"
    );
    assert_eq!(router.stats().deactivations, 0);
}

/// An instance's idle check does not outlive it. Before the fix, an instance that set a long
/// idle timeout and then stopped with a message queued left its (late) idle check armed, and the
/// next instance in the same slot never armed its own: it stayed live for 7 s instead of 40 ms.
#[test]
fn the_next_instance_in_a_slot_arms_its_own_idle_check() {
    let t0 = Instant::now();
    let mut router = Router::new(Config::default().idle_timeout(ms(40)));
    router.send(1, Msg::Linger).unwrap();
    drive(&mut router, t0); // idle from 0 ms with a 7 s timeout: checked at 7 s
    router.send(1, Msg::Stop).unwrap();
    router.send(1, Msg::Nop).unwrap();
    let commands = drive(&mut router, t0 + ms(10)); // stops; the Nop activates a new instance
    assert!(matches!(commands.last(), Some(Command::Run(_))));
    assert_eq!(router.stats().activations, 2);

    router.handle_timeout(t0 + ms(100)); // the new instance has been idle 90 ms of 40 ms
    let addr = router.addr(&1).unwrap();
    assert_eq!(router.poll_command(), Some(Command::Deactivate(addr)));
}

/// A receiver that records its lifecycle hooks.
struct Hooked(Arc<Mutex<Vec<&'static str>>>);

impl Receiver<u8, Msg> for Hooked {
    fn receive(&mut self, _: &mut Context<'_, u8, Msg>, _: Msg) {
        self.0.lock().unwrap().push("receive");
    }

    fn activated(&mut self, _: &mut Context<'_, u8, Msg>) {
        self.0.lock().unwrap().push("activated");
    }

    fn deactivated(&mut self, _: &mut Context<'_, u8, Msg>, _: Deactivation) {
        self.0.lock().unwrap().push("deactivated");
    }
}

/// Fixed (found by hermes-check): an instance whose activation completed after a closing router
/// stopped draining was deactivated without its `activated` hook ever running.
///
/// The drain limit empties every mailbox, including those of receivers still activating. When
/// the factory's instance then arrived, `Router::activate` found an empty mailbox and, the router
/// being closing, deactivated it at once; the `Deactivate` ran only the `deactivated` hook. Now
/// such an instance gets one empty `Run` first.
#[test]
fn an_instance_made_after_the_drain_limit_is_not_deactivated_unactivated() {
    let t0 = Instant::now();
    let hooks = Arc::new(Mutex::new(Vec::new()));
    let made = hooks.clone();
    let factory = move |_: &u8| Activation::ready(Hooked(made.clone()));
    let mut router = Router::new(Config::default().drain_limit(0));
    router.send(1, Msg::Nop).unwrap();
    let activate = router.poll_command().unwrap();
    router.close(); // a limit of 0: the Nop is a DrainLimit dead letter at once
    assert!(matches!(
        router.poll_dead_letter().map(|d| d.reason),
        Some(DeadLetterReason::DrainLimit)
    ));
    router.handle(activate, &factory, t0).unwrap();
    while let Some(command) = router.poll_command() {
        router.handle(command, &factory, t0).unwrap();
    }
    assert!(router.is_closed());
    let hooks = hooks.lock().unwrap().clone();
    assert!(
        hooks.is_empty() || hooks == ["activated", "deactivated"],
        "the instance's hooks ran as {hooks:?}: deactivated without being activated"
    );
}

/// A receiver whose `deactivated` hook panics.
struct PanicsOnDeactivation;

impl Receiver<u8, Msg> for PanicsOnDeactivation {
    fn receive(&mut self, ctx: &mut Context<'_, u8, Msg>, _: Msg) {
        ctx.stop();
    }

    fn deactivated(&mut self, _: &mut Context<'_, u8, Msg>, _: Deactivation) {
        panic!("deactivated hook panics (deliberately)");
    }
}

/// Fixed (found while modelling factory panics): `Stats::panics` is documented as "panics
/// caught: in handlers, lifecycle hooks and factories", but did not count a panic in the
/// `deactivated` hook.
#[test]
fn a_panicking_deactivated_hook_is_counted_in_stats_panics() {
    let t0 = Instant::now();
    let factory = |_: &u8| Activation::ready(PanicsOnDeactivation);
    let mut router = Router::new(Config::default());
    router.send(1, Msg::Nop).unwrap();
    while let Some(command) = router.poll_command() {
        router.handle(command, &factory, t0).unwrap();
    }
    assert_eq!(router.stats().deactivations, 1);
    assert_eq!(router.stats().panics, 1, "{:?}", router.stats());
}

/// Messages of the task tests.
#[derive(Debug)]
enum Work {
    /// Start work that is ready at once; its outcome is `Done`.
    Start,
    Done(u32),
    Stop,
    /// Just recorded.
    Note,
}

/// A receiver that starts work when told, stops when told, and records which instance handled
/// what.
struct Worker {
    inst: u32,
    seen: Arc<Mutex<Vec<(u32, &'static str)>>>,
}

impl Receiver<u8, Work> for Worker {
    fn receive(&mut self, ctx: &mut Context<'_, u8, Work>, msg: Work) {
        let what = match msg {
            Work::Start => {
                ctx.spawn(std::future::ready(self.inst), Work::Done);
                "start"
            }
            Work::Done(from) if from == self.inst => "outcome",
            Work::Done(_) => "another instance's outcome",
            Work::Stop => {
                ctx.stop();
                "stop"
            }
            Work::Note => "note",
        };
        self.seen.lock().unwrap().push((self.inst, what));
    }
}

/// A router of `Worker`s numbered from 1, the record of what each handled, and its factory.
#[allow(clippy::type_complexity)]
fn workers() -> (
    Router<u8, Work>,
    Arc<Mutex<Vec<(u32, &'static str)>>>,
    impl Factory<u8, Work>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let made = seen.clone();
    let next = Mutex::new(0);
    let factory = move |_: &u8| {
        let mut n = next.lock().unwrap();
        *n += 1;
        Activation::ready(Worker {
            inst: *n,
            seen: made.clone(),
        })
    };
    (Router::new(Config::default()), seen, factory)
}

/// The outcome of a future that is ready at once.
fn outcome_of(task: hermes_core::Task<Work>) -> Option<Work> {
    let mut task = std::pin::pin!(task);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match task.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(outcome) => outcome,
        std::task::Poll::Pending => panic!("the work is ready at once"),
    }
}

/// Handles every command inline with `factory`.
fn drive_with(router: &mut Router<u8, Work>, factory: &impl Factory<u8, Work>) {
    while let Some(command) = router.poll_command() {
        router.handle(command, factory, Instant::now()).unwrap();
    }
}

/// The reason of the next dead letter.
fn next_dead_letter<K, M>(router: &mut Router<K, M>) -> Option<DeadLetterReason> {
    router.poll_dead_letter().map(|d| d.reason)
}

/// Fixed (found by hermes-check): an outcome given back while the instance that started the
/// work was being deactivated (it stopped; its `Deactivate` was out, its hook had not run) was
/// queued in the slot's mailbox by handle, and activated and reached the next instance, though
/// an outcome is for the instance that started the work only (`core/src/task.rs`). Now it is a
/// `Stale` dead letter at once, as one given back after the deactivation.
#[test]
fn an_outcome_given_back_during_deactivation_reaches_only_its_instance() {
    let (mut router, seen, factory) = workers();
    router.send(1, Work::Start).unwrap();
    router.send(1, Work::Stop).unwrap();
    let t0 = Instant::now();
    let deactivate = loop {
        let command = router.poll_command().expect("the instance stops");
        if matches!(command, Command::Deactivate(_)) {
            break command;
        }
        router.handle(command, &factory, t0).unwrap();
    };
    let task = router.poll_task().expect("the instance started work");
    let id = task.id();
    let outcome = outcome_of(task).expect("not aborted: the instance is still deactivating");
    router.complete(id, outcome, t0);
    assert_eq!(next_dead_letter(&mut router), Some(DeadLetterReason::Stale));
    router.handle(deactivate, &factory, t0).unwrap();
    drive_with(&mut router, &factory);
    assert_eq!(seen.lock().unwrap().as_slice(), [(1, "start"), (1, "stop")]);
    assert_eq!(
        router.stats().live,
        0,
        "the outcome activated a next instance"
    );
}

/// Fixed (found by hermes-check): the same with the outcome queued when its instance stops.
/// Outcomes were queued behind ordinary messages, so an instance could stop with its outcome
/// still queued, and the outcome activated the next instance and reached it. Now an outcome is
/// queued ahead of ordinary messages, so it is handled next; it can still be queued when its
/// instance stops if it came back while that instance ran, checked out, the batch that stopped
/// it, as here. It is then a `Stale` dead letter when the deactivation ends, while a message sent
/// by ID behind it activates the next instance (`Context::stop`).
#[test]
fn an_outcome_queued_when_its_instance_stops_reaches_only_its_instance() {
    let (mut router, seen, factory) = workers();
    let t0 = Instant::now();
    router.send(1, Work::Start).unwrap();
    drive_with(&mut router, &factory); // idle, waiting for its work
    router.send(1, Work::Stop).unwrap();
    router.send(1, Work::Note).unwrap();
    let Some(Command::Run(addr)) = router.poll_command() else {
        panic!("the Stop schedules a run");
    };
    let job = router.check_out(addr).unwrap(); // Stop and Note
    let task = router.poll_task().expect("the instance started work");
    let id = task.id();
    let outcome = outcome_of(task).expect("not aborted");
    router.complete(id, outcome, t0); // queued while the instance runs its batch
    router.check_in(job.execute(t0), t0).unwrap(); // stopped: the Note goes back, behind it
    drive_with(&mut router, &factory);
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [(1, "start"), (1, "stop"), (2, "note")],
        "the outcome of instance 1's work reached another instance, or the Note did not"
    );
    assert_eq!(next_dead_letter(&mut router), Some(DeadLetterReason::Stale));
    assert_eq!(next_dead_letter(&mut router), None);
}

/// Fixed (found while modelling tasks; a driver mistake, low severity): `complete` looked a task
/// up by its number alone, and task numbers are per router, so the `TaskId` of a task of another
/// router completed this router's task with the same number: its receiver got an outcome that
/// was not its own, and its own task was no longer in flight. The executors always complete a
/// task on its owner's shard, but the router refuses every other driver mistake, and
/// `TaskId::owner` names the router. Now the stray outcome is a `Stale` dead letter and this
/// router's task stays in flight.
#[test]
fn an_outcome_given_to_the_wrong_router_is_refused() {
    let t0 = Instant::now();
    let (mut zero, _, factory) = workers();
    let placement = Arc::new(|_: &u8| hermes_core::Location::Shard(1));
    let mut one = Router::placed(Config::default(), 1, placement);
    for router in [&mut zero, &mut one] {
        router.send(1, Work::Start).unwrap();
        drive_with(router, &factory);
    }
    let theirs = zero.poll_task().expect("router 0's receiver started work");
    assert_eq!(theirs.id().owner().router(), 0);
    let id = theirs.id();
    let outcome = outcome_of(theirs).expect("not aborted");
    one.complete(id, outcome, t0);
    assert_eq!(
        one.tasks_in_flight(),
        1,
        "router 1's own task was completed by router 0's outcome"
    );
    assert!(one.poll_command().is_none(), "the stray outcome was routed");
    assert_eq!(next_dead_letter(&mut one), Some(DeadLetterReason::Stale));
}
