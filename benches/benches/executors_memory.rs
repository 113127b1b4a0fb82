//! Bytes per idle receiver: one million receivers with zero-sized state, each handed one
//! message and then left idle, on Hermes (every executor, 1 and 2 shards) and on actix, kameo,
//! ractor and a tokio task per mpsc channel. A counting global allocator measures the heap bytes
//! still allocated once they are all idle, divided by 1M.
//!
//! Peers need a handle per actor to keep it reachable; the `Vec` holding those handles is not
//! counted (what the handles point to is). Hermes needs no handle: an ID is enough. Thread
//! stacks are not heap and are not counted (the thread counts are the same for everyone).
//!
//! Run: `cargo bench --manifest-path benches/Cargo.toml --bench executors_memory`

use std::alloc::System;
use std::hint::black_box;
use std::mem::size_of_val;

use hermes_core::{Activation, Config, Context, Receiver};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[allow(dead_code)]
#[path = "executors/subjects.rs"]
mod subjects;

use subjects::{Exec, Msg, wait};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const RECEIVERS: u64 = 1_000_000;

/// A Hermes receiver with no state.
struct Idle;

impl Receiver<u64, Msg> for Idle {
    fn receive(&mut self, _ctx: &mut Context<'_, u64, Msg>, msg: Msg) {
        if let Msg::Sync(reply) = msg {
            let _ = reply.send(0);
        }
    }
}

/// Heap bytes still allocated after `build`, per receiver, less the `handles` bytes it reports.
fn bytes_per_receiver<T>(build: impl FnOnce() -> (T, usize)) -> f64 {
    let region = Region::new(GLOBAL);
    let (built, handles) = build();
    // Idle means idle: let every thread finish its turn and go to sleep before counting.
    std::thread::sleep(std::time::Duration::from_millis(200));
    let change = region.change();
    let live = change.bytes_allocated as f64 - change.bytes_deallocated as f64 - handles as f64;
    drop(black_box(built));
    live / RECEIVERS as f64
}

fn hermes(exec: Exec, shards: usize) -> f64 {
    let running = exec.launch(shards, Config::default(), |_: &u64| Activation::ready(Idle));
    let bytes = bytes_per_receiver(|| {
        for id in 0..RECEIVERS {
            running.hermes.send(id, Msg::Tell(0)).expect("open");
        }
        let asked: Vec<_> = (0..RECEIVERS)
            .map(|id| running.hermes.ask(id, Msg::Sync))
            .collect();
        asked.into_iter().for_each(|a| {
            wait(a);
        });
        let stats = running.hermes.stats();
        assert_eq!(stats.live as u64, RECEIVERS, "every receiver is live");
        ((), 0)
    });
    running.stop();
    bytes
}

mod actix_idle {
    use actix::prelude::*;

    pub struct AIdle;
    impl Actor for AIdle {
        type Context = Context<Self>;
    }
    pub struct Poke;
    impl Message for Poke {
        type Result = ();
    }
    impl Handler<Poke> for AIdle {
        type Result = ();
        fn handle(&mut self, _: Poke, _: &mut Context<Self>) {}
    }
}

fn actix() -> f64 {
    use actix::Actor;
    use actix_idle::{AIdle, Poke};
    let host = subjects::actix_peer::ActixHost::start();
    bytes_per_receiver(|| {
        let actors: Vec<_> = host.on(|| (0..RECEIVERS).map(|_| AIdle.start()).collect());
        for a in &actors {
            subjects::actix_peer::block(a.send(Poke)).expect("alive");
        }
        let handles = actors.capacity() * size_of_val(&actors[0]);
        (actors, handles)
    })
}

mod kameo_idle {
    use kameo::message::{Context, Message};

    #[derive(kameo::Actor)]
    pub struct KIdle;
    pub struct Poke;
    impl Message<Poke> for KIdle {
        type Reply = ();
        async fn handle(&mut self, _: Poke, _: &mut Context<Self, ()>) {}
    }
}

fn kameo(threads: usize) -> f64 {
    use kameo::actor::Spawn;
    use kameo_idle::{KIdle, Poke};
    let rt = subjects::tokio_runtime(threads);
    bytes_per_receiver(|| {
        rt.block_on(async {
            let actors: Vec<_> = (0..RECEIVERS)
                .map(|_| KIdle::spawn_with_mailbox(KIdle, kameo::mailbox::unbounded()))
                .collect();
            for a in &actors {
                a.ask(Poke).await.expect("alive");
            }
            let handles = actors.capacity() * size_of_val(&actors[0]);
            (actors, handles)
        })
    })
}

mod ractor_idle {
    use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

    pub struct RIdle;
    impl Actor for RIdle {
        type Msg = RpcReplyPort<()>;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<Self::Msg>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
        async fn handle(
            &self,
            _: ActorRef<Self::Msg>,
            reply: RpcReplyPort<()>,
            _: &mut (),
        ) -> Result<(), ActorProcessingErr> {
            let _ = reply.send(());
            Ok(())
        }
    }
}

fn ractor(threads: usize) -> f64 {
    use ractor::Actor;
    use ractor_idle::RIdle;
    let rt = subjects::tokio_runtime(threads);
    bytes_per_receiver(|| {
        rt.block_on(async {
            let mut actors = Vec::with_capacity(RECEIVERS as usize);
            for _ in 0..RECEIVERS {
                let (a, _join) = Actor::spawn(None, RIdle, ()).await.expect("spawn");
                actors.push(a);
            }
            for a in &actors {
                a.call(|reply| reply, None).await.expect("alive");
            }
            let handles = actors.capacity() * size_of_val(&actors[0]);
            (actors, handles)
        })
    })
}

fn mpsc(threads: usize) -> f64 {
    use tokio::sync::{mpsc, oneshot};
    let rt = subjects::tokio_runtime(threads);
    bytes_per_receiver(|| {
        rt.block_on(async {
            let senders: Vec<_> = (0..RECEIVERS)
                .map(|_| {
                    let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
                    tokio::spawn(async move {
                        while let Some(reply) = rx.recv().await {
                            let _ = reply.send(());
                        }
                    });
                    tx
                })
                .collect();
            for tx in &senders {
                let (reply, answer) = oneshot::channel();
                tx.send(reply).expect("alive");
                answer.await.expect("alive");
            }
            let handles = senders.capacity() * size_of_val(&senders[0]);
            (senders, handles)
        })
    })
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") || !args.iter().any(|a| a == "--bench") {
        // `cargo bench -- --list`, `cargo test --benches`: nothing quick to check here.
        return;
    }
    // `-- pool` runs only the systems whose name contains "pool".
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let mut rows: Vec<(String, f64)> = Vec::new();
    let mut measure = |name: String, run: &dyn Fn() -> f64| {
        if wanted(&name) {
            let bytes = run();
            println!("{name:<10} {bytes:>6.0} bytes per idle receiver");
            rows.push((name, bytes));
        }
    };
    for exec in [Exec::Pool, Exec::Tokio, Exec::Smol] {
        for shards in [1, 2] {
            measure(format!("{}/{shards}", exec.name()), &|| {
                hermes(exec, shards)
            });
        }
    }
    // An idle actor costs the same whatever the worker count: the peers run once each.
    measure("actix/1".into(), &actix);
    measure("kameo/2".into(), &|| kameo(2));
    measure("ractor/2".into(), &|| ractor(2));
    measure("mpsc/2".into(), &|| mpsc(2));
    let is_peer = |name: &str| {
        ["actix", "kameo", "ractor"]
            .iter()
            .any(|p| name.starts_with(p))
    };
    let best = rows
        .iter()
        .filter(|(n, _)| is_peer(n))
        .map(|(_, b)| *b)
        .fold(f64::INFINITY, f64::min);
    println!("idle receivers with zero-sized state, {RECEIVERS} of them, heap bytes each:");
    println!("| system/threads | bytes per idle receiver | best peer / this |");
    println!("|---|---|---|");
    for (name, bytes) in &rows {
        let ratio = if is_peer(name) || !best.is_finite() {
            String::new()
        } else {
            format!("{:.1}x", best / bytes)
        };
        println!("| {name} | {bytes:.0} | {ratio} |");
    }
    println!("| best peer | {best:.0} | |");
}
