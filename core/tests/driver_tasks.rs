//! The inline `Driver` runs the work receivers start (`Context::spawn`, `Context::ask`).

use std::time::{Duration, Instant};

use hermes_core::{Activation, AskError, Config, Context, Driver, Reply};

enum Msg {
    Start,
    Loaded(u64),
    AskPeer,
    Answer(Result<u64, AskError>),
    Question(Reply<u64>),
}

#[test]
fn spawned_work_and_asks_come_back_on_the_driver() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut driver = Driver::new(Config::default(), move |_: &u32| {
        let s = s.clone();
        Activation::ready(move |ctx: &mut Context<'_, u32, Msg>, msg| match msg {
            Msg::Start => ctx.spawn(async { 42 }, Msg::Loaded),
            Msg::Loaded(n) => s.lock().unwrap().push(format!("loaded {n}")),
            Msg::AskPeer => ctx.ask(2, Msg::Question, Duration::from_secs(1), Msg::Answer),
            Msg::Answer(a) => s.lock().unwrap().push(format!("answer {a:?}")),
            Msg::Question(reply) => drop(reply.send(7)),
        })
    });
    let now = Instant::now();
    driver.send(1, Msg::Start).unwrap();
    driver.send(1, Msg::AskPeer).unwrap();
    driver.run(now);
    driver.run(now + Duration::from_secs(2));
    assert_eq!(*seen.lock().unwrap(), ["loaded 42", "answer Ok(7)"]);
    assert_eq!(driver.router().tasks_in_flight(), 0);
}

enum Wait {
    /// Ask `2`, which keeps the reply, with this timeout.
    AskSilent(Duration),
    /// Keep the reply.
    Keep(Reply<u64>),
    Answer(Result<u64, AskError>),
    /// Wait for an answer from outside Hermes.
    Outside(hermes_core::Asked<u64>),
    Got(Result<u64, AskError>),
}

/// An unanswered ask ends with `Timeout` on the first `run` at or after its deadline, which
/// `poll_timeout` reports; work waiting on something outside Hermes completes on the `run`
/// after it is ready; closing drops work still in flight and finishes.
#[test]
fn the_driver_ends_asks_at_their_deadline_and_repolls_outside_work() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut driver = Driver::new(Config::default(), move |_: &u32| {
        let s = s.clone();
        let mut kept = Vec::new();
        Activation::ready(move |ctx: &mut Context<'_, u32, Wait>, msg| match msg {
            Wait::AskSilent(timeout) => ctx.ask(2, Wait::Keep, timeout, Wait::Answer),
            Wait::Keep(reply) => kept.push(reply),
            Wait::Answer(a) => s.lock().unwrap().push(format!("answer {a:?}")),
            Wait::Outside(asked) => ctx.spawn(asked, Wait::Got),
            Wait::Got(a) => s.lock().unwrap().push(format!("got {a:?}")),
        })
    });
    let now = Instant::now();
    driver
        .send(1, Wait::AskSilent(Duration::from_secs(5)))
        .unwrap();
    driver.run(now);
    assert_eq!(driver.poll_timeout(), Some(now + Duration::from_secs(5)));
    driver.run(now + Duration::from_secs(4));
    assert!(seen.lock().unwrap().is_empty(), "not before its deadline");
    driver.run(now + Duration::from_secs(5));
    assert_eq!(*seen.lock().unwrap(), ["answer Err(Timeout)"]);

    let (reply, asked) = Reply::new();
    driver.send(3, Wait::Outside(asked)).unwrap();
    driver.run(now + Duration::from_secs(6));
    assert_eq!(seen.lock().unwrap().len(), 1, "still waiting");
    reply.send(9).unwrap();
    driver.run(now + Duration::from_secs(6));
    assert_eq!(seen.lock().unwrap()[1], "got Ok(9)");

    let (_reply, asked) = Reply::<u64>::new();
    driver.send(3, Wait::Outside(asked)).unwrap();
    driver.run(now + Duration::from_secs(7));
    assert_eq!(driver.router().tasks_in_flight(), 1);
    driver.close(now + Duration::from_secs(7));
    assert!(driver.router().is_closed());
    assert_eq!(driver.router().tasks_in_flight(), 0);
    assert!(format!("{driver:?}").contains("tasks: 0"), "{driver:?}");
}

/// A task that panics ends without an outcome, as on an executor: `run` does not panic, other
/// work still comes back, and the receiver stops waiting for it.
#[test]
fn a_panicking_task_does_not_stop_the_driver() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut driver = Driver::new(Config::default(), move |_: &u32| {
        let s = s.clone();
        Activation::ready(move |ctx: &mut Context<'_, u32, Msg>, msg| match msg {
            Msg::Start if *ctx.id() == 1 => ctx.spawn(
                async { panic!("a future's bug (a deliberate panic in a test)") },
                |()| Msg::Loaded(0),
            ),
            Msg::Start => ctx.spawn(async { 42 }, Msg::Loaded),
            Msg::Loaded(n) => s.lock().unwrap().push(n),
            _ => {}
        })
    });
    driver.send(1, Msg::Start).unwrap();
    driver.send(2, Msg::Start).unwrap();
    driver.run(Instant::now());
    assert_eq!(*seen.lock().unwrap(), [42]);
    assert_eq!(driver.router().tasks_in_flight(), 0, "ID 1 waits no more");
    assert_eq!(driver.router().stats().panics, 1);
}
