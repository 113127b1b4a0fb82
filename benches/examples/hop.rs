//! The cost of one ping-pong hop on the pool executor (2 shards), for profilers: `N` round trips
//! between two receivers on the same shard (`same`) or on different shards (`cross`), after
//! starting the pool and activating the two, then shutting down. Run it with `N` and with `0`
//! under the same profiler: the difference divided by `2 N` hops is the per-hop cost, free of
//! start-up and shutdown.
//!
//! ```sh
//! cargo build --profile bench --manifest-path benches/Cargo.toml --example hop
//! benches/target/release/examples/hop cross 1000000        # prints ns per hop (wall clock)
//! perf stat -e task-clock,context-switches,cpu-migrations benches/target/release/examples/hop cross 1000000
//! valgrind --tool=callgrind benches/target/release/examples/hop same 100000
//! ```

use std::time::{Duration, Instant};

use hermes_core::{Activation, Config, Context, Receiver, Sharded};
use hermes_executor::{Options, Reply};

enum Msg {
    /// A hop: `left` hops to go, then answer `done`.
    Ping {
        from: u64,
        left: u64,
        done: Reply<()>,
    },
    /// Answer (activates the receiver).
    Sync(Reply<()>),
}

struct Node;

impl Receiver<u64, Msg> for Node {
    fn receive(&mut self, ctx: &mut Context<'_, u64, Msg>, msg: Msg) {
        match msg {
            Msg::Ping { left: 0, done, .. } | Msg::Sync(done) => {
                let _ = done.send(());
            }
            Msg::Ping { from, left, done } => {
                let me = *ctx.id();
                ctx.send(
                    from,
                    Msg::Ping {
                        from: me,
                        left: left - 1,
                        done,
                    },
                );
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (same, round_trips) = match args.as_slice() {
        [placement, n] if placement == "same" || placement == "cross" => (
            placement == "same",
            n.parse::<u64>().expect("N: a number of round trips"),
        ),
        _ => {
            eprintln!("usage: hop same|cross N");
            std::process::exit(2);
        }
    };
    let placement = Sharded::new(2);
    let a = 1u64;
    let b = (2u64..)
        .find(|b| (placement.shard_of(b) == placement.shard_of(&a)) == same)
        .expect("an ID on each shard");
    let options = Options::new(Config::default()).shards(2).name("hop");
    let hermes =
        hermes_pool::start_with(options, |_: &u64| Activation::ready(Node)).expect("shard threads");
    for id in [a, b] {
        hermes
            .ask(id, Msg::Sync)
            .wait_timeout(Duration::from_secs(60))
            .expect("activated");
    }
    let start = Instant::now();
    if round_trips > 0 {
        let (done, asked) = Reply::new();
        let ping = Msg::Ping {
            from: b,
            left: 2 * round_trips,
            done,
        };
        hermes.send(a, ping).expect("open");
        asked
            .wait_timeout(Duration::from_secs(600))
            .expect("the ping-pong finished");
    }
    let elapsed = start.elapsed();
    hermes.shutdown().expect("shut down");
    if round_trips > 0 {
        println!(
            "{} {} round trips: {:.1} ns per hop",
            if same { "same" } else { "cross" },
            round_trips,
            elapsed.as_nanos() as f64 / (2 * round_trips) as f64
        );
    }
}
