//! A door as a state machine: each state is its own handler, and a transition is `become_`.
//!
//! ```text
//!            unlock(code)          open
//!   Locked --------------> Closed ------> Open
//!          <--------------        <------
//!               lock               close (or by itself after a while)
//! ```
//!
//! Shows `become_`, a timer armed on entering a state (the door closes itself) and cancelled
//! when leaving it early, and asks that read the current state.
//!
//! ```text
//! cargo run --example state_machine                      # the thread pool
//! cargo run --example state_machine -- --executor tokio
//! cargo run --example state_machine -- --executor smol
//! ```

#[path = "support/executor.rs"]
mod executor;

use std::time::Duration;

use clap::Parser;
use hermes::{Activation, Config, Context, Options, Reply, TimerId};

const CODE: u32 = 1234;
const SELF_CLOSING: Duration = Duration::from_millis(200);

enum Msg {
    Unlock(u32),
    Lock,
    Open,
    Close,
    /// The door's own timer: close if still open.
    AutoClose,
    /// What state the door is in, and what the last request did.
    State(Reply<String>),
}

type Ctx<'a> = Context<'a, String, Msg>;

/// Answers `State` the same way in every state.
fn report(state: &str, last: &str, reply: Reply<String>) {
    let _ = reply.send(format!("{state} ({last})"));
}

fn locked(last: &'static str) -> impl FnMut(&mut Ctx<'_>, Msg) + Send + 'static {
    move |ctx, msg| match msg {
        Msg::Unlock(code) if code == CODE => ctx.become_(closed("unlocked")),
        Msg::Unlock(_) => ctx.become_(locked("wrong code")),
        Msg::State(reply) => report("locked", last, reply),
        Msg::AutoClose => {}
        _ => ctx.become_(locked("refused: the door is locked")),
    }
}

fn closed(last: &'static str) -> impl FnMut(&mut Ctx<'_>, Msg) + Send + 'static {
    move |ctx, msg| match msg {
        Msg::Lock => ctx.become_(locked("locked")),
        Msg::Open => {
            let timer = ctx.schedule(SELF_CLOSING, Msg::AutoClose);
            ctx.become_(open(timer));
        }
        Msg::State(reply) => report("closed", last, reply),
        Msg::AutoClose => {}
        _ => ctx.become_(closed("refused: already closed and unlocked")),
    }
}

fn open(timer: TimerId) -> impl FnMut(&mut Ctx<'_>, Msg) + Send + 'static {
    let mut last = "opened";
    move |ctx, msg| match msg {
        Msg::Close => {
            ctx.cancel(timer);
            ctx.become_(closed("closed"));
        }
        Msg::AutoClose => ctx.become_(closed("closed by itself")),
        Msg::State(reply) => report("open", last, reply),
        _ => last = "refused: close the door first",
    }
}

/// A door as a state machine: each state a handler, a transition `become_`.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    executor: executor::ExecutorArg,
}

fn main() {
    let executor = Args::parse().executor.build();
    let hermes = executor.start(Options::new(Config::default()), |_door: &String| {
        Activation::ready(locked("new"))
    });
    let door = || "front-door".to_owned();
    let state = || {
        hermes
            .ask_blocking(door(), Msg::State, Duration::from_secs(10))
            .expect("the door answers")
    };
    println!("{}:", executor.name());
    let steps = [
        ("open", Msg::Open),
        ("unlock with 0000", Msg::Unlock(0)),
        ("unlock with 1234", Msg::Unlock(CODE)),
        ("open", Msg::Open),
        ("lock", Msg::Lock),
        ("close", Msg::Close),
        ("lock", Msg::Lock),
        ("unlock with 1234", Msg::Unlock(CODE)),
        ("open", Msg::Open),
    ];
    for (what, msg) in steps {
        hermes.send(door(), msg).expect("running");
        println!("  {what:<18} -> {}", state());
    }
    std::thread::sleep(SELF_CLOSING * 2);
    println!("  {:<18} -> {}", "(wait)", state());
    hermes.shutdown().unwrap();
}
