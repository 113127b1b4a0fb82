//! The `Router` embedded in a hand-written event loop.
//!
//! The loop owns the router and the factory. Each turn it feeds in the messages that are due
//! (here a script standing in for sockets or a channel), fires timers, handles every command
//! inline and prints dead letters; then it sleeps until the router's next deadline or the next
//! input, whichever is first. The router itself never reads the clock or sleeps.
//!
//! It shows, in about two seconds: activation on the first message, a heartbeat timer, become,
//! a per-receiver idle timeout, idle deactivation, re-activation, and close.
//!
//! These receivers start no work of their own; a loop whose receivers call `Context::spawn` or
//! `Context::ask` also polls `Router::poll_task`, runs each task and gives its outcome back with
//! `Router::complete`, or a task that ended without one with `Router::abandon` (as
//! `hermes::router::Driver::run` does).
//!
//! Run it with `cargo run --release --example custom_event_loop`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use clap::Parser;
use hermes::router::{Command, Router};
use hermes::{Activation, Config, Context, Deactivation, Receiver, Recipient};

#[derive(Debug)]
enum Msg {
    /// A reading from a sensor.
    Reading(f64),
    /// The heartbeat timer.
    Heartbeat,
    /// Switch the sensor to maintenance mode (it becomes another handler).
    Maintenance,
}

/// When the program started, for printing times.
static START: OnceLock<Instant> = OnceLock::new();

fn log(now: Instant, what: std::fmt::Arguments<'_>) {
    let start = *START.get_or_init(|| now);
    println!(
        "[{:>5} ms] {what}",
        now.saturating_duration_since(start).as_millis()
    );
}

/// A sensor: records readings and beats every 200 ms while it is live.
struct Sensor {
    readings: u32,
    beats: u32,
}

const HEARTBEAT: Duration = Duration::from_millis(200);

impl Receiver<String, Msg> for Sensor {
    fn receive(&mut self, ctx: &mut Context<'_, String, Msg>, msg: Msg) {
        let (now, id) = (ctx.now(), ctx.id().clone());
        match msg {
            Msg::Reading(value) => {
                self.readings += 1;
                log(
                    now,
                    format_args!("  {id}: reading {value} (#{})", self.readings),
                );
            }
            Msg::Heartbeat => {
                self.beats += 1;
                log(now, format_args!("  {id}: heartbeat {}", self.beats));
                ctx.schedule(HEARTBEAT, Msg::Heartbeat);
            }
            Msg::Maintenance => {
                log(
                    now,
                    format_args!("  {id}: become Maintenance; idle timeout 300 ms"),
                );
                ctx.set_idle_timeout(Duration::from_millis(300));
                ctx.become_(Maintenance);
            }
        }
    }

    fn activated(&mut self, ctx: &mut Context<'_, String, Msg>) {
        log(
            ctx.now(),
            format_args!("  {}: activated hook; heartbeat armed", ctx.id()),
        );
        ctx.schedule(HEARTBEAT, Msg::Heartbeat);
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, String, Msg>, why: Deactivation) {
        let (readings, beats) = (self.readings, self.beats);
        log(
            ctx.now(),
            format_args!(
                "  {}: deactivated hook ({why:?}); readings: {readings}, beats: {beats}",
                ctx.id()
            ),
        );
    }
}

/// The handler a sensor becomes in maintenance: ignores readings, lets heartbeats lapse.
struct Maintenance;

impl Receiver<String, Msg> for Maintenance {
    fn receive(&mut self, ctx: &mut Context<'_, String, Msg>, msg: Msg) {
        log(
            ctx.now(),
            format_args!("  {}: in maintenance, ignores {msg:?}", ctx.id()),
        );
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, String, Msg>, why: Deactivation) {
        log(
            ctx.now(),
            format_args!("  {}: deactivated hook in maintenance ({why:?})", ctx.id()),
        );
    }
}

fn factory(id: &str) -> Activation<String, Msg> {
    if id.starts_with("sensor-") {
        Activation::ready(Sensor {
            readings: 0,
            beats: 0,
        })
    } else {
        Activation::Refused
    }
}

/// Outside input: (time since start, what happens).
enum Input {
    Send(&'static str, Msg),
    Close,
}

fn script() -> Vec<(u64, Input)> {
    vec![
        (0, Input::Send("sensor-a", Msg::Reading(20.5))),
        (50, Input::Send("sensor-b", Msg::Reading(7.0))),
        (100, Input::Send("thermostat", Msg::Reading(1.0))),
        (450, Input::Send("sensor-a", Msg::Reading(21.0))),
        (500, Input::Send("sensor-b", Msg::Maintenance)),
        (600, Input::Send("sensor-b", Msg::Reading(8.0))),
        (1500, Input::Send("sensor-b", Msg::Reading(9.5))),
        (1700, Input::Close),
    ]
}

/// The sans-IO Router in a hand-written event loop: two seconds of sensors and timers.
#[derive(Parser)]
struct Args {}

fn main() {
    Args::parse(); // no arguments: `--help` prints the usage, anything else is an error
    let start = Instant::now();
    START.get_or_init(|| start);
    let mut router: Router<String, Msg> =
        Router::new(Config::default().idle_timeout(Duration::from_millis(800)));
    let mut inputs = script().into_iter().peekable();
    log(
        start,
        format_args!("router up: idle timeout 800 ms, heartbeat every 200 ms"),
    );

    loop {
        let now = Instant::now();
        // 1. Outside input that is due.
        while let Some((at, _)) = inputs.peek() {
            if start + Duration::from_millis(*at) > now {
                break;
            }
            let Some((_, input)) = inputs.next() else {
                break;
            };
            match input {
                Input::Send(to, msg) => {
                    log(now, format_args!("send {msg:?} to {to}"));
                    if let Err(e) = router.send(to.to_string(), msg) {
                        log(now, format_args!("send refused: {e}"));
                    }
                }
                Input::Close => {
                    log(
                        now,
                        format_args!("close: drain, deactivate everyone once, drop pending timers"),
                    );
                    router.close();
                }
            }
        }
        // 2. Timers that are due (and idle checks).
        router.handle_timeout(now);
        // 3. Every command, inline.
        while let Some(command) = router.poll_command() {
            let id = router.id(command.addr()).cloned().unwrap_or_default();
            log(now, format_args!("command {command:?} for {id}"));
            let result = match command {
                Command::Activate(addr) => router.activate(addr, factory(&id)),
                Command::Run(addr) | Command::Deactivate(addr) => router.run(addr, now),
            };
            result.expect("commands are handled once each, in order");
        }
        // 4. Dead letters.
        while let Some(dead) = router.poll_dead_letter() {
            let msg = dead.message.map(|m| format!("{m:?}")).unwrap_or_default();
            let to = match dead.recipient {
                Recipient::Id(id) => id,
                Recipient::Addr(addr) => format!("{addr:?}"),
            };
            log(
                now,
                format_args!("dead letter {msg} to {to}: {}", dead.reason),
            );
        }
        if router.is_closed() {
            let s = router.stats();
            log(
                now,
                format_args!(
                    "closed: {} activations, {} deactivations, {} delivered, {} dead letters",
                    s.activations, s.deactivations, s.messages_delivered, s.dead_letters
                ),
            );
            break;
        }
        // 5. Sleep until the next deadline or input.
        let next_input = inputs
            .peek()
            .map(|(at, _)| start + Duration::from_millis(*at));
        let wake = match (router.poll_timeout(), next_input) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).expect("the script ends with Close"),
        };
        std::thread::sleep(wake.saturating_duration_since(Instant::now()));
    }
}
