//! Where a task's outcome goes: to the instance that started the work only, handled next (at the
//! front of its mailbox, behind the outcomes that came back before it), never refused by a full
//! mailbox, and a `Stale` dead letter if that instance is deactivated before handling it.

use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Instant;

use hermes_core::{
    Activation, Command, Config, Context, DeadLetterReason, Factory, Receiver, Router, Task, TaskId,
};

/// Outcomes of this value make the receiver stop.
const STOP: u32 = 99;
/// Outcomes of this value make the receiver panic.
const PANIC: u32 = 98;

#[derive(Debug)]
enum Msg {
    /// Starts one piece of work per value, ready at once, whose outcome is `Done(value)`.
    Start(Vec<u32>),
    Done(u32),
    Note(u32),
}

/// What the instances handled: (instance, what, value).
type Seen = Arc<Mutex<Vec<(u32, &'static str, u32)>>>;

struct Worker {
    inst: u32,
    seen: Seen,
}

impl Receiver<u8, Msg> for Worker {
    fn receive(&mut self, ctx: &mut Context<'_, u8, Msg>, msg: Msg) {
        let (what, value) = match msg {
            Msg::Start(values) => {
                for v in values {
                    ctx.spawn(std::future::ready(v), Msg::Done);
                }
                ("start", 0)
            }
            Msg::Done(PANIC) => panic!("a deliberate panic on an outcome"),
            Msg::Done(v) => {
                if v == STOP {
                    ctx.stop();
                }
                ("outcome", v)
            }
            Msg::Note(n) => ("note", n),
        };
        self.seen.lock().unwrap().push((self.inst, what, value));
    }
}

/// A router with `config`, the record of what its instances handled, and a factory numbering
/// instances from 1.
fn workers(config: Config) -> (Router<u8, Msg>, Seen, impl Factory<u8, Msg>) {
    let seen = Seen::default();
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
    (Router::new(config), seen, factory)
}

fn drive(router: &mut Router<u8, Msg>, factory: &impl Factory<u8, Msg>, now: Instant) {
    while let Some(command) = router.poll_command() {
        router.handle(command, factory, now).unwrap();
    }
}

/// Every task handed out, run to its outcome (each is ready at once), in order.
fn outcomes(router: &mut Router<u8, Msg>) -> Vec<(TaskId, Msg)> {
    let mut cx = TaskContext::from_waker(Waker::noop());
    std::iter::from_fn(|| router.poll_task())
        .map(|mut task: Task<Msg>| {
            let Poll::Ready(Some(msg)) = std::pin::Pin::new(&mut task).poll(&mut cx) else {
                panic!("the work is ready at once and not aborted");
            };
            (task.id(), msg)
        })
        .collect()
}

/// The dead letters so far: (reason, the outcome's or note's value, if any).
fn dead_letters(router: &mut Router<u8, Msg>) -> Vec<(DeadLetterReason, Option<u32>)> {
    std::iter::from_fn(|| router.poll_dead_letter())
        .map(|d| {
            let value = d.message.map(|m| match m {
                Msg::Done(v) | Msg::Note(v) => v,
                Msg::Start(_) => u32::MAX,
            });
            (d.reason, value)
        })
        .collect()
}

fn seen(seen: &Seen) -> Vec<(u32, &'static str, u32)> {
    seen.lock().unwrap().clone()
}

#[test]
fn outcomes_are_handled_before_the_messages_waiting_in_the_order_they_came_back() {
    let now = Instant::now();
    let (mut router, record, factory) = workers(Config::default());
    router.send(1, Msg::Start(vec![1, 2])).unwrap();
    drive(&mut router, &factory, now); // idle, waiting for its work
    let mut done = outcomes(&mut router);
    router.send(1, Msg::Note(7)).unwrap();
    router.send(1, Msg::Note(8)).unwrap();
    let (second, first) = (done.pop().unwrap(), done.pop().unwrap());
    router.complete(second.0, second.1, now);
    router.complete(first.0, first.1, now);
    drive(&mut router, &factory, now);
    assert_eq!(
        seen(&record),
        [
            (1, "start", 0),
            (1, "outcome", 2),
            (1, "outcome", 1),
            (1, "note", 7),
            (1, "note", 8)
        ]
    );
    assert_eq!(router.stats().messages_delivered, 5);
}

#[test]
fn a_full_mailbox_does_not_refuse_an_outcome() {
    let now = Instant::now();
    let (mut router, record, factory) = workers(Config::default().mailbox_capacity(1));
    router.send(1, Msg::Start(vec![1])).unwrap();
    drive(&mut router, &factory, now);
    let (id, outcome) = outcomes(&mut router).pop().unwrap();
    router.send(1, Msg::Note(7)).unwrap();
    assert!(router.send(1, Msg::Note(8)).is_err(), "the mailbox is full");
    router.complete(id, outcome, now);
    drive(&mut router, &factory, now);
    assert_eq!(
        seen(&record),
        [(1, "start", 0), (1, "outcome", 1), (1, "note", 7)]
    );
    assert!(dead_letters(&mut router).is_empty());
}

#[test]
fn outcomes_still_queued_when_their_instance_panics_are_stale_and_reach_no_next_instance() {
    let now = Instant::now();
    let (mut router, record, factory) = workers(Config::default());
    router.send(1, Msg::Start(vec![PANIC, 2, 3])).unwrap();
    drive(&mut router, &factory, now);
    router.send(1, Msg::Note(7)).unwrap();
    for (id, outcome) in outcomes(&mut router) {
        router.complete(id, outcome, now);
    }
    drive(&mut router, &factory, now); // panics on the first outcome; the note goes to the next
    assert_eq!(seen(&record), [(1, "start", 0), (2, "note", 7)]);
    let dead = dead_letters(&mut router);
    assert!(matches!(dead[0], (DeadLetterReason::Panicked(_), None)));
    assert_eq!(
        dead[1..],
        [
            (DeadLetterReason::Stale, Some(2)),
            (DeadLetterReason::Stale, Some(3))
        ]
    );
    assert_eq!(router.stats().activations, 2);
}

#[test]
fn a_checked_out_run_gives_back_its_outcomes_ahead_of_those_that_came_meanwhile() {
    let now = Instant::now();
    let (mut router, record, factory) = workers(Config::default());
    router.send(1, Msg::Start(vec![STOP, 2, 3])).unwrap();
    drive(&mut router, &factory, now);
    let mut done = outcomes(&mut router).into_iter();
    for (id, outcome) in done.by_ref().take(2) {
        router.complete(id, outcome, now);
    }
    router.send(1, Msg::Note(7)).unwrap();
    let Some(Command::Run(addr)) = router.poll_command() else {
        panic!("the outcomes schedule a run");
    };
    let job = router.check_out(addr).unwrap();
    assert_eq!(job.len(), 3, "the outcomes, then the note");
    let (id, outcome) = done.next().unwrap();
    router.complete(id, outcome, now); // queued while the job is out
    router.check_in(job.execute(now), now).unwrap(); // stops on the first outcome
    drive(&mut router, &factory, now);
    assert_eq!(
        seen(&record),
        [(1, "start", 0), (1, "outcome", STOP), (2, "note", 7)]
    );
    assert_eq!(
        dead_letters(&mut router),
        [
            (DeadLetterReason::Stale, Some(2)),
            (DeadLetterReason::Stale, Some(3))
        ],
        "outcomes in the order they came back, none to the next instance"
    );
}

#[test]
fn a_run_consumes_the_outcomes_it_handles_and_no_more() {
    let now = Instant::now();
    let config = Config::default().batch_size(1);
    let (mut router, record, factory) = workers(config);
    router.send(1, Msg::Start(vec![1, STOP])).unwrap();
    drive(&mut router, &factory, now);
    router.send(1, Msg::Note(7)).unwrap();
    router.send(1, Msg::Note(8)).unwrap();
    let mut done = outcomes(&mut router).into_iter();
    let (id, outcome) = done.next().unwrap();
    router.complete(id, outcome, now);
    // One message a run: the outcome, then the first note; then the second outcome comes back
    // and goes ahead of the second note, and stops the instance with that note queued.
    for _ in 0..2 {
        let command = router.poll_command().unwrap();
        router.handle(command, &factory, now).unwrap();
    }
    let (id, outcome) = done.next().unwrap();
    router.complete(id, outcome, now);
    drive(&mut router, &factory, now);
    assert_eq!(
        seen(&record),
        [
            (1, "start", 0),
            (1, "outcome", 1),
            (1, "note", 7),
            (1, "outcome", STOP),
            (2, "note", 8)
        ]
    );
    assert!(dead_letters(&mut router).is_empty());
}
