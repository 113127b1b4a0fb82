//! One node cut off from the NATS server (through a TCP proxy the test cuts and heals) while
//! the other goes on: the other takes its IDs after the liveness timeout, and when the cut-off
//! node comes back it must not go on with the receivers it ran before, whose state the other
//! node has moved on from since.

mod support;
use support::{SETTLE, wait_until};

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hermes_cluster::testing::NatsServer;
use hermes_cluster::{Cluster, ClusterConfig, KvStore, Node, node_id, owner};
use hermes_core::{Activation, Config, Context, Deactivation, Location, Receiver, Reply, id_hash};
use hermes_store::Codec;
use serde::{Deserialize, Serialize};

/// A TCP proxy to the NATS server that can be cut (every connection through it closed, new
/// ones refused) and healed.
struct Proxy {
    port: u16,
    cut: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Proxy {
    fn start(to: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let open: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        {
            let (cut, open) = (Arc::clone(&cut), Arc::clone(&open));
            std::thread::spawn(move || {
                for client in listener.incoming() {
                    let Ok(client) = client else { continue };
                    if cut.load(Ordering::SeqCst) {
                        let _ = client.shutdown(Shutdown::Both);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else {
                        continue;
                    };
                    let mut list = open.lock().unwrap();
                    for (from, into) in [(&client, &server), (&server, &client)] {
                        let (mut from, mut into) =
                            (from.try_clone().unwrap(), into.try_clone().unwrap());
                        std::thread::spawn(move || {
                            let mut buf = [0; 16 << 10];
                            while let Ok(n @ 1..) = from.read(&mut buf) {
                                if into.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                            let _ = into.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                    list.extend([client, server]);
                }
            });
        }
        Proxy { port, cut, open }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

#[derive(Serialize, Deserialize, Debug)]
enum Msg {
    Add(u64),
    Get(Reply<u64>),
}

type TestNode = Node<u64, Msg, (u64, Msg)>;

const TOTAL: Codec<u64> = Codec::new(1);

/// Saves its total when it is deactivated, as tests/traffic.rs's accounts do.
struct Counter {
    total: u64,
    store: Arc<KvStore>,
}

impl Receiver<u64, Msg> for Counter {
    fn receive(&mut self, _: &mut Context<'_, u64, Msg>, msg: Msg) {
        match msg {
            Msg::Add(n) => self.total += n,
            Msg::Get(reply) => {
                let _ = reply.send(self.total);
            }
        }
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, u64, Msg>, _: Deactivation) {
        let key = format!("total/{}", ctx.id());
        if let Err(e) = TOTAL.save(self.store.as_ref(), key.as_bytes(), &self.total) {
            eprintln!("{} not saved: {e}", ctx.id());
        }
    }
}

fn start(url: &str, name: &str) -> TestNode {
    let cluster = Cluster::connect(
        ClusterConfig::new(url, "partition", name)
            .heartbeat(Duration::from_millis(100))
            .liveness_timeout(Duration::from_secs(3))
            .store_timeout(Duration::from_millis(500))
            .shards(1),
    )
    .expect("connects");
    let store = cluster.store();
    cluster
        .start(Config::default(), move |id: &u64| {
            let key = format!("total/{id}");
            match TOTAL.load(store.as_ref(), key.as_bytes()) {
                Ok(total) => Activation::ready(Counter {
                    total: total.unwrap_or(0),
                    store: Arc::clone(&store),
                }),
                Err(e) => Activation::failed(e),
            }
        })
        .expect("starts")
}

fn get(node: &TestNode, id: u64) -> Option<u64> {
    node.hermes()
        .ask_blocking(id, Msg::Get, Duration::from_secs(2))
        .ok()
}

/// A NATS server, and a proxy to it (`None` where nats-server is not installed).
fn server_behind_a_proxy() -> Option<(NatsServer, Proxy)> {
    let nats = NatsServer::start()?;
    let port: u16 = nats
        .url()
        .rsplit(':')
        .next()
        .and_then(|port| port.parse().ok())
        .expect("the server's URL ends with its port");
    let proxy = Proxy::start(port);
    Some((nats, proxy))
}

#[test]
fn a_node_cut_off_past_the_liveness_timeout_does_not_go_on_with_stale_receivers() {
    let Some((nats, proxy)) = server_behind_a_proxy() else {
        return;
    };
    let a = start(&proxy.url(), "a");
    let b = start(&nats.url(), "b");
    wait_until("two members", SETTLE, || {
        a.members().len() == 2 && b.members().len() == 2
    });
    let on_a = (0..)
        .find(|id| matches!(b.locate(id), Location::Node(_)))
        .unwrap();
    b.hermes().send(on_a, Msg::Add(5)).unwrap();
    assert_eq!(get(&b, on_a), Some(5));

    // a is cut off: b takes its IDs after the liveness timeout, loading what a saved (nothing:
    // a saves when it deactivates), and goes on with them.
    proxy.cut();
    wait_until("b to see a gone", SETTLE, || b.members().len() == 1);
    b.hermes().send(on_a, Msg::Add(10)).unwrap();
    assert_eq!(get(&b, on_a), Some(10));

    // a comes back and owns its IDs again: b hands them over, saving them first. What a
    // answers now must be what b handed over, not what a had before it was cut off.
    proxy.heal();
    wait_until("a back in b's view", SETTLE, || b.members().len() == 2);
    wait_until("the ID on a again", SETTLE, || {
        matches!(b.locate(&on_a), Location::Node(_))
    });
    wait_until("a to answer for the ID", SETTLE, || get(&b, on_a).is_some());
    assert_eq!(get(&b, on_a), Some(10), "a went on with its stale receiver");
    b.shutdown();
    a.shutdown();
}

/// The same when the cut-off node is the only member it knows: another node starts while it
/// is cut off, takes every ID once its entry has expired, and moves on with their state. The
/// node that comes back must drop its receivers too (its lease lapsed, its saves are refused),
/// not keep them because it knew of nobody to hand them to.
#[test]
fn a_lone_node_cut_off_past_the_liveness_timeout_does_not_go_on_with_stale_receivers() {
    let Some((nats, proxy)) = server_behind_a_proxy() else {
        return;
    };
    let a = start(&proxy.url(), "a");
    assert_eq!(a.members(), [a.id()]);
    // An ID that is a's again once b is there too.
    let both = [a.id(), node_id("b")];
    let id = (0u64..)
        .find(|id| owner(id_hash(id), &both) == Some(a.id()))
        .unwrap();
    a.hermes().send(id, Msg::Add(5)).unwrap();
    assert_eq!(get(&a, id), Some(5));

    // a is cut off; b starts, and takes every ID once a's entry has expired.
    proxy.cut();
    let b = start(&nats.url(), "b");
    wait_until("a's entry to expire", SETTLE, || b.members() == [b.id()]);
    b.hermes().send(id, Msg::Add(10)).unwrap();
    assert_eq!(get(&b, id), Some(10));

    // a comes back: the ID is a's again, and b hands it over. a must answer with what b
    // handed over, not with what it had before it was cut off.
    proxy.heal();
    wait_until("a back in b's view", SETTLE, || b.members().len() == 2);
    wait_until("a to answer for the ID", SETTLE, || get(&b, id).is_some());
    assert_eq!(get(&b, id), Some(10), "a went on with its stale receiver");
    assert_eq!(get(&a, id), Some(10));
    b.shutdown();
    a.shutdown();
}

/// A graceful shutdown that takes longer than the liveness timeout (many receivers, each
/// saving as it is deactivated) still saves every one: the heartbeat renews the node's lease
/// until its receivers are deactivated.
#[test]
fn a_long_shutdown_saves_every_receiver() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let cluster = Cluster::connect(
        ClusterConfig::new(nats.url(), "long-shutdown", "a")
            .heartbeat(Duration::from_millis(100))
            .liveness_timeout(Duration::from_millis(1200))
            .shards(1),
    )
    .expect("connects");
    let store = cluster.store();
    struct Slow {
        store: Arc<KvStore>,
        failed: Arc<Mutex<Vec<String>>>,
    }
    impl Receiver<u64, Msg> for Slow {
        fn receive(&mut self, _: &mut Context<'_, u64, Msg>, msg: Msg) {
            if let Msg::Get(reply) = msg {
                let _ = reply.send(0);
            }
        }
        fn deactivated(&mut self, ctx: &mut Context<'_, u64, Msg>, _: Deactivation) {
            // A save that takes a while (a large state, a slow disk on the server).
            std::thread::sleep(Duration::from_millis(50));
            let key = format!("total/{}", ctx.id());
            if let Err(e) = TOTAL.save(self.store.as_ref(), key.as_bytes(), &1) {
                self.failed.lock().unwrap().push(e.to_string());
            }
        }
    }
    let failed = Arc::new(Mutex::new(Vec::new()));
    let node = {
        let (store, failed) = (Arc::clone(&store), Arc::clone(&failed));
        cluster
            .start(Config::default(), move |_: &u64| {
                Activation::ready(Slow {
                    store: Arc::clone(&store),
                    failed: Arc::clone(&failed),
                })
            })
            .expect("starts")
    };
    // 60 receivers, 50 ms each: 3 s to deactivate, past the 1.2 s liveness timeout.
    for id in 0..60 {
        assert_eq!(get(&node, id), Some(0));
    }
    node.shutdown();
    assert!(
        failed.lock().unwrap().is_empty(),
        "{:?}",
        failed.lock().unwrap()
    );
}

/// A timer is held by the node that scheduled it. When that node leaves gracefully before it
/// is due, it is not lost silently: it is a dead letter there, message kept, to be sent again
/// (it is not delivered to the ID's next owner).
#[test]
fn a_leaving_nodes_timers_are_dead_letters() {
    let Some(nats) = NatsServer::start() else {
        return;
    };
    let a = start(&nats.url(), "a");
    let dead = Arc::new(Mutex::new(Vec::new()));
    let b = {
        let cluster = Cluster::connect(
            ClusterConfig::new(nats.url(), "partition", "b")
                .heartbeat(Duration::from_millis(100))
                .liveness_timeout(Duration::from_secs(3))
                .shards(1),
        )
        .expect("connects");
        let store = cluster.store();
        let dead = Arc::clone(&dead);
        cluster
            .start_with(
                Config::default(),
                Some(Arc::new(
                    move |letter: hermes_core::DeadLetter<u64, Msg>| {
                        if let Some(Msg::Add(n)) = letter.message {
                            dead.lock().unwrap().push(n);
                        }
                    },
                )),
                move |_: &u64| {
                    Activation::ready(Counter {
                        total: 0,
                        store: Arc::clone(&store),
                    })
                },
            )
            .expect("starts")
    };
    wait_until("two members", SETTLE, || {
        a.members().len() == 2 && b.members().len() == 2
    });
    let on_b = (0..)
        .find(|id| matches!(a.locate(id), Location::Node(_)))
        .unwrap();
    b.hermes()
        .schedule(on_b, Duration::from_secs(60), Msg::Add(7))
        .unwrap();
    b.shutdown();
    assert_eq!(dead.lock().unwrap().as_slice(), &[7]);
    assert_eq!(get(&a, on_b), Some(0), "not delivered to the next owner");
    a.shutdown();
}
