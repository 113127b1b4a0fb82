//! Remote tell and ask between two Hermes cluster nodes, next to raw NATS publish/subscribe and
//! request/reply on the same server in the same run: the overhead of Hermes over its transport
//! as a ratio.
//!
//! Both nodes (and both raw NATS connections) run in this one process on one nats-server on the
//! loopback: the numbers include the server hop, and the two sides share the machine's cores.
//!
//! ```text
//! cargo bench --manifest-path benches/Cargo.toml --bench cluster
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hermes_cluster::testing::NatsServer;
use hermes_cluster::{Cluster, ClusterConfig, Node};
use hermes_core::{Activation, Config, Context, Location, Reply};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
enum Msg {
    Tell(u64),
    Ask(u64, Reply<u64>),
}

type BenchNode = Node<u64, Msg, (u64, Msg)>;

const TELLS: u64 = 200_000;
const ASKS: usize = 5_000;

fn node(url: &str, name: &str, count: Arc<AtomicU64>) -> BenchNode {
    let config = ClusterConfig::new(url, "bench", name)
        .heartbeat(Duration::from_millis(100))
        .liveness_timeout(Duration::from_secs(2))
        .shards(1);
    Cluster::connect(config)
        .expect("connects")
        .start(Config::default(), move |_: &u64| {
            let count = Arc::clone(&count);
            Activation::ready(move |_: &mut Context<'_, u64, Msg>, msg| match msg {
                Msg::Tell(_) => {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                Msg::Ask(n, reply) => {
                    let _ = reply.send(n + 1);
                }
            })
        })
        .expect("starts")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    what: &'static str,
    per_sec: f64,
    p50: Option<Duration>,
    p99: Option<Duration>,
}

fn main() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let url = nats.url();
    let count = Arc::new(AtomicU64::new(0));
    let a = node(&url, "a", Arc::new(AtomicU64::new(0)));
    let b = node(&url, "b", Arc::clone(&count));
    while a.members().len() != 2 || b.members().len() != 2 {
        std::thread::sleep(Duration::from_millis(10));
    }
    let remote: Vec<u64> = (0..10_000u64)
        .filter(|id| matches!(a.locate(id), Location::Node(_)))
        .take(100)
        .collect();
    // Warm up: activate the receivers on b.
    for &id in &remote {
        a.hermes()
            .ask_blocking(id, |r| Msg::Ask(0, r), Duration::from_secs(5))
            .unwrap();
    }

    let mut rows = Vec::new();
    // Hermes: tell, a -> b.
    let start = Instant::now();
    for i in 0..TELLS {
        let id = remote[(i % remote.len() as u64) as usize];
        a.hermes().send(id, Msg::Tell(i)).unwrap();
    }
    while count.load(Ordering::Relaxed) < TELLS {
        assert!(start.elapsed() < Duration::from_secs(120), "tells lost");
        std::thread::sleep(Duration::from_micros(200));
    }
    rows.push(Row {
        what: "Hermes remote tell",
        per_sec: TELLS as f64 / start.elapsed().as_secs_f64(),
        p50: None,
        p99: None,
    });
    // Hermes: ask round trips, a -> b -> a, one at a time.
    let mut lat = Vec::with_capacity(ASKS);
    let start = Instant::now();
    for i in 0..ASKS {
        let id = remote[i % remote.len()];
        let t = Instant::now();
        let answer = a
            .hermes()
            .ask_blocking(id, |r| Msg::Ask(i as u64, r), Duration::from_secs(5));
        assert_eq!(answer, Ok(i as u64 + 1));
        lat.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    lat.sort();
    rows.push(Row {
        what: "Hermes remote ask (sequential)",
        per_sec: ASKS as f64 / elapsed.as_secs_f64(),
        p50: Some(percentile(&lat, 0.5)),
        p99: Some(percentile(&lat, 0.99)),
    });
    a.shutdown();
    b.shutdown();

    // Raw NATS on the same server: publish/subscribe and request/reply.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let sender = async_nats::connect(&url).await.unwrap();
        let receiver = async_nats::connect(&url).await.unwrap();
        let payload = Bytes::from(vec![7u8; 24]); // about a one-message Hermes frame
        let mut sub = receiver.subscribe("raw.tell").await.unwrap();
        receiver.flush().await.unwrap();
        let counter = tokio::spawn(async move {
            let mut n = 0;
            while n < TELLS {
                sub.next().await.unwrap();
                n += 1;
            }
        });
        let start = Instant::now();
        for _ in 0..TELLS {
            sender.publish("raw.tell", payload.clone()).await.unwrap();
        }
        counter.await.unwrap();
        rows.push(Row {
            what: "NATS publish -> subscriber",
            per_sec: TELLS as f64 / start.elapsed().as_secs_f64(),
            p50: None,
            p99: None,
        });

        let mut service = receiver.subscribe("raw.ask").await.unwrap();
        receiver.flush().await.unwrap();
        let responder = receiver.clone();
        let server = tokio::spawn(async move {
            while let Some(msg) = service.next().await {
                if let Some(reply) = msg.reply {
                    let _ = responder.publish(reply, msg.payload).await;
                }
            }
        });
        let mut lat = Vec::with_capacity(ASKS);
        let start = Instant::now();
        for _ in 0..ASKS {
            let t = Instant::now();
            sender.request("raw.ask", payload.clone()).await.unwrap();
            lat.push(t.elapsed());
        }
        let elapsed = start.elapsed();
        lat.sort();
        rows.push(Row {
            what: "NATS request/reply (sequential)",
            per_sec: ASKS as f64 / elapsed.as_secs_f64(),
            p50: Some(percentile(&lat, 0.5)),
            p99: Some(percentile(&lat, 0.99)),
        });
        server.abort();
    });

    println!("| what | per second | p50 | p99 | Hermes / NATS |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for (i, row) in rows.iter().enumerate() {
        let ratio = match i {
            0 => format!("{:.2}x the throughput", row.per_sec / rows[2].per_sec),
            1 => format!(
                "{:.2}x the throughput, {:.2}x the p50",
                row.per_sec / rows[3].per_sec,
                row.p50.unwrap().as_secs_f64() / rows[3].p50.unwrap().as_secs_f64()
            ),
            _ => "baseline".to_string(),
        };
        let us = |d: Option<Duration>| {
            d.map_or("-".into(), |d| format!("{:.0} µs", d.as_secs_f64() * 1e6))
        };
        println!(
            "| {} | {:.0} | {} | {} | {} |",
            row.what,
            row.per_sec,
            us(row.p50),
            us(row.p99),
            ratio
        );
    }
}
