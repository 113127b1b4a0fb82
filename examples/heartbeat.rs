//! Sensors beat on a timer and a monitor counts their beats; one sensor is silenced by
//! cancelling its timer, and a one-off timer is scheduled (and another cancelled) from outside.
//!
//! Shows `ctx.schedule` / `ctx.cancel` inside receivers, `hermes.schedule` / `hermes.cancel`
//! from outside, and timers that keep a receiver busy across shards.
//!
//! ```text
//! cargo run --example heartbeat                      # the thread pool
//! cargo run --example heartbeat -- --executor tokio
//! cargo run --example heartbeat -- --executor smol
//! ```

#[path = "support/executor.rs"]
mod executor;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use hermes::{Activation, Config, Context, Options, Reply, TimerId};

const PERIOD: Duration = Duration::from_millis(100);

enum Msg {
    /// Sensor: start beating.
    Start,
    /// Sensor: the timer fired.
    Beat,
    /// Sensor: stop beating.
    Silence,
    /// Monitor: a sensor beat.
    Pulse(String),
    /// Monitor: a note scheduled from outside.
    Note(&'static str),
    /// Monitor: the beats counted per sensor, and the notes.
    Report(Reply<(BTreeMap<String, u32>, Vec<&'static str>)>),
}

fn factory(id: &String) -> Activation<String, Msg> {
    if id == "monitor" {
        let mut beats = BTreeMap::new();
        let mut notes = Vec::new();
        return Activation::ready(move |_: &mut Context<'_, String, Msg>, msg| match msg {
            Msg::Pulse(sensor) => *beats.entry(sensor).or_insert(0) += 1,
            Msg::Note(note) => notes.push(note),
            Msg::Report(reply) => drop(reply.send((beats.clone(), notes.clone()))),
            _ => {}
        });
    }
    let mut timer: Option<TimerId> = None;
    Activation::ready(move |ctx: &mut Context<'_, String, Msg>, msg| match msg {
        Msg::Start | Msg::Beat => {
            let me = ctx.id().clone();
            ctx.send("monitor".to_owned(), Msg::Pulse(me));
            timer = Some(ctx.schedule(PERIOD, Msg::Beat));
        }
        Msg::Silence => {
            if let Some(timer) = timer.take() {
                ctx.cancel(timer);
            }
        }
        _ => {}
    })
}

/// Sensors beat on timers for a second and a monitor counts the beats.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    executor: executor::ExecutorArg,
}

fn main() {
    let executor = Args::parse().executor.build();
    let hermes = executor.start(Options::new(Config::default()).shards(2), factory);
    for sensor in ["boiler", "door", "window"] {
        hermes.send(sensor.to_owned(), Msg::Start).expect("running");
    }
    let monitor = || "monitor".to_owned();
    hermes
        .schedule(monitor(), 5 * PERIOD, Msg::Note("half-time"))
        .expect("running");
    let never = hermes
        .schedule(monitor(), 5 * PERIOD, Msg::Note("cancelled, never seen"))
        .expect("running");
    hermes.cancel(never);

    std::thread::sleep(3 * PERIOD);
    hermes
        .send("door".to_owned(), Msg::Silence)
        .expect("running");
    std::thread::sleep(7 * PERIOD);

    let (beats, notes) = hermes
        .ask_blocking(monitor(), Msg::Report, Duration::from_secs(10))
        .expect("the monitor answers");
    println!(
        "{}: after ~{:?}, beats every {PERIOD:?}:",
        executor.name(),
        10 * PERIOD
    );
    for (sensor, count) in &beats {
        println!("  {sensor:>7}: {count} beats");
    }
    println!("  notes: {notes:?}");
    let stats = hermes.shutdown().unwrap();
    println!(
        "shutdown: {} receivers deactivated, {} pending timers became dead letters",
        stats.deactivations, stats.dead_letters
    );
}
