//! Two receivers rally a ball back and forth, then report to whoever served.
//!
//! Shows sending between receivers (by ID for the serve, then by handle, which skips hashing
//! the ID), replying to a caller outside Hermes from a later message, and shutdown.
//!
//! ```text
//! cargo run --release --example ping_pong                      # the thread pool
//! cargo run --release --example ping_pong -- --executor tokio
//! cargo run --release --example ping_pong -- --executor smol
//! ```

#[path = "support/executor.rs"]
mod executor;

use std::time::{Duration, Instant};

use clap::Parser;
use hermes::{Activation, Addr, Config, Context, Options, Reply};

enum Msg {
    /// Start a rally of `rallies` hits against `opponent`; answer `done` with the hit count.
    Serve {
        opponent: &'static str,
        rallies: u32,
        done: Reply<u32>,
    },
    /// The ball, with the hits left, the handle to hit it back to, and the reply to finish with.
    Ball {
        left: u32,
        from: Addr,
        done: Reply<u32>,
    },
}

fn player(_name: &&'static str) -> Activation<&'static str, Msg> {
    let mut hits = 0;
    Activation::ready(
        move |ctx: &mut Context<'_, &'static str, Msg>, msg| match msg {
            Msg::Serve {
                opponent,
                rallies,
                done,
            } => {
                let from = ctx.addr();
                ctx.send(
                    opponent,
                    Msg::Ball {
                        left: rallies,
                        from,
                        done,
                    },
                );
            }
            Msg::Ball { left: 0, done, .. } => {
                let _ = done.send(hits);
            }
            Msg::Ball { left, from, done } => {
                hits += 1;
                let me = ctx.addr();
                ctx.send_to(
                    from,
                    Msg::Ball {
                        left: left - 1,
                        from: me,
                        done,
                    },
                );
            }
        },
    )
}

/// Two receivers rally a ball a million times; prints hits per second.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    executor: executor::ExecutorArg,
}

fn main() {
    let executor = Args::parse().executor.build();
    let hermes = executor.start(Options::new(Config::default()).shards(2), player);
    const RALLIES: u32 = 1_000_000;
    let start = Instant::now();
    let hits = hermes
        .ask_blocking(
            "ping",
            |done| Msg::Serve {
                opponent: "pong",
                rallies: RALLIES,
                done,
            },
            Duration::from_secs(300),
        )
        .expect("the rally ends with an answer");
    let elapsed = start.elapsed();
    println!(
        "{}: {RALLIES} hits in {elapsed:.2?} ({:.2} M hits/s); the last player hit {hits} times",
        executor.name(),
        f64::from(RALLIES) / elapsed.as_secs_f64() / 1e6,
    );
    let stats = hermes.shutdown().unwrap();
    println!(
        "delivered {} messages, {} across shards; {} receivers deactivated",
        stats.messages_delivered, stats.messages_forwarded, stats.deactivations
    );
}
