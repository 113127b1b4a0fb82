//! Work that completes later: a receiver loads its state with a slow asynchronous call and
//! keeps answering meanwhile.
//!
//! A profile starts loading when it is activated (`ctx.spawn`: a 300 ms timer standing in for a
//! database or a web service). Until the load comes back, as the message `Loaded`, the profile
//! answers "loading..."; then it answers with what it loaded. The shard never waits for the
//! load: a hundred profiles load at once in about the time of one. A profile waiting for its
//! load is not idle (its idle timeout is shorter than the load), and one stopped while loading
//! has its load dropped unfinished.
//!
//! ```text
//! cargo run --example spawn                      # the thread pool
//! cargo run --example spawn -- --executor tokio
//! cargo run --example spawn -- --executor smol
//! ```

#[path = "support/executor.rs"]
mod executor;

use std::time::{Duration, Instant};

use clap::Parser;
use hermes::{Activation, Config, Context, Options, Receiver, Reply};

/// How long a load takes.
const LOAD: Duration = Duration::from_millis(300);
/// Profiles idle this long are deactivated: shorter than a load.
const IDLE: Duration = Duration::from_millis(200);

enum Msg {
    /// Answers what the profile knows, or "loading...".
    Get(Reply<String>),
    /// The load came back.
    Loaded(String),
    Stop,
}

struct Profile {
    loaded: Option<String>,
}

/// Says so if a load is dropped before it finishes.
struct Unfinished {
    id: u32,
    armed: bool,
}

impl Drop for Unfinished {
    fn drop(&mut self) {
        if self.armed {
            println!(
                "  (profile {}: stopped while loading; its load was dropped unfinished)",
                self.id
            );
        }
    }
}

/// The slow call: a timer, then the value. Any future works: it runs on the executor's
/// runtime (tokio's, smol's, or the pool's own), never on a shard.
fn load(id: u32) -> impl Future<Output = String> {
    // Made before the future first runs, so that it tells of a load dropped before it started.
    let guard = Unfinished { id, armed: true };
    async move {
        let mut guard = guard;
        async_io::Timer::after(LOAD).await;
        guard.armed = false;
        format!("profile {id}: {} visits", id * 7)
    }
}

impl Receiver<u32, Msg> for Profile {
    fn activated(&mut self, ctx: &mut Context<'_, u32, Msg>) {
        ctx.spawn(load(*ctx.id()), Msg::Loaded);
    }

    fn receive(&mut self, ctx: &mut Context<'_, u32, Msg>, msg: Msg) {
        match msg {
            Msg::Get(reply) => {
                let answer = self.loaded.as_deref().unwrap_or("loading...");
                let _ = reply.send(answer.to_owned());
            }
            Msg::Loaded(value) => self.loaded = Some(value),
            Msg::Stop => ctx.stop(),
        }
    }
}

fn get(hermes: &hermes::Hermes<u32, Msg>, id: u32) -> String {
    hermes
        .ask_blocking(id, Msg::Get, Duration::from_secs(10))
        .expect("a profile always answers")
}

/// A receiver loading its state asynchronously while it keeps answering.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    executor: executor::ExecutorArg,
}

fn main() {
    let executor = Args::parse().executor.build();
    let config = Config::default().idle_timeout(IDLE);
    let hermes = executor.start(Options::new(config).shards(2), |_: &u32| {
        Activation::ready(Profile { loaded: None })
    });
    println!(
        "{}: a profile loads for {LOAD:?} when activated (idle timeout {IDLE:?})",
        executor.name()
    );

    // One profile, asked every 50 ms.
    let start = Instant::now();
    let mut loaded_at = None;
    while start.elapsed() < LOAD + Duration::from_millis(200) {
        let asked_at = start.elapsed();
        let answer = get(&hermes, 1);
        println!("{:>6.0?}: profile 1 answers {answer:?}", asked_at);
        if loaded_at.is_none() && answer != "loading..." {
            loaded_at = Some(asked_at);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let loaded_at = loaded_at.expect("profile 1 loaded");
    assert!(loaded_at >= LOAD, "answered before its load came back");
    println!(
        "profile 1 answered while loading, and had its value by {loaded_at:.0?}; it was not \
         deactivated while it waited, though that is longer than its idle timeout"
    );

    // A hundred profiles at once: the loads overlap, the shards keep answering.
    let start = Instant::now();
    let profiles = 100..200;
    let first: Vec<String> = profiles.clone().map(|id| get(&hermes, id)).collect();
    assert!(first.iter().all(|a| a == "loading..."));
    println!(
        "100 more profiles activated and answered \"loading...\" in {:.0?}",
        start.elapsed()
    );
    while profiles.clone().any(|id| get(&hermes, id) == "loading...") {
        std::thread::sleep(Duration::from_millis(10));
    }
    println!(
        "all 100 loaded {:.0?} after the first ask: {} loads of {LOAD:?} each, side by side",
        start.elapsed(),
        profiles.len()
    );

    // Stopped while loading: the load is dropped.
    let answer = get(&hermes, 7);
    println!("profile 7 answers {answer:?}, and is told to stop");
    hermes.send(7, Msg::Stop).unwrap();
    std::thread::sleep(Duration::from_millis(50));

    let stats = hermes.shutdown().unwrap();
    println!(
        "shutdown: {} activations, {} messages delivered (each load that finished came back \
         as one)",
        stats.activations, stats.messages_delivered
    );
}
