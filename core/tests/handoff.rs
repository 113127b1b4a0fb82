//! Hand-off to another node: `Router::release_moved` deactivates the receivers whose IDs
//! placement now puts on another node (`Deactivation::Moved`), and forwards what arrives for
//! them meanwhile, in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use hermes_core::{
    Activation, Config, Context, Deactivation, Factory, Location, NodeId, Outbound, Receiver,
    Recipient, Router,
};

struct Probe {
    log: Arc<Mutex<Vec<String>>>,
}

impl Receiver<u32, u32> for Probe {
    fn receive(&mut self, ctx: &mut Context<'_, u32, u32>, msg: u32) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} got {msg}", ctx.id()));
    }
    fn deactivated(&mut self, ctx: &mut Context<'_, u32, u32>, why: Deactivation) {
        self.log
            .lock()
            .unwrap()
            .push(format!("{} {why:?}", ctx.id()));
    }
}

/// Runs every command the router has.
fn drain(router: &mut Router<u32, u32>, factory: &impl Factory<u32, u32>, now: Instant) {
    while let Some(command) = router.poll_command() {
        router.handle(command, factory, now).unwrap();
    }
}

#[test]
fn moved_receivers_deactivate_and_their_mail_follows_them() {
    let moved = Arc::new(AtomicBool::new(false));
    let placement = {
        let moved = Arc::clone(&moved);
        // IDs below 10 stay here; the others move to node 7 when `moved` is set.
        move |id: &u32| {
            if *id >= 10 && moved.load(Ordering::Relaxed) {
                Location::Node(NodeId(7))
            } else {
                Location::Shard(0)
            }
        }
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let factory = {
        let log = Arc::clone(&log);
        move |_: &u32| {
            Activation::ready(Probe {
                log: Arc::clone(&log),
            })
        }
    };
    let mut router = Router::placed(Config::default(), 0, Arc::new(placement));
    let now = Instant::now();
    for id in [1, 11, 12] {
        router.send(id, 100).unwrap();
    }
    drain(&mut router, &factory, now);
    assert_eq!(router.stats().live, 3);
    assert_eq!(router.release_moved(), 0, "nothing has moved yet");

    moved.store(true, Ordering::Relaxed);
    // 11 is idle: it goes at once. 12 gets mail first: it handles it, then goes.
    router.send(12, 101).unwrap();
    assert_eq!(router.release_moved(), 2);
    // Mail for 11 while it is being deactivated: forwarded once it is gone, in order.
    router.forward(Recipient::Id(11), 200);
    router.forward(Recipient::Id(11), 201);
    drain(&mut router, &factory, now);
    assert_eq!(router.moved_live(), 0);
    assert_eq!(router.stats().live, 1, "only ID 1 stays");
    let mut out = Vec::new();
    while let Some((location, outbound)) = router.poll_outbound() {
        match outbound {
            Outbound::Message(Recipient::Id(id), msg) => out.push((location, id, msg)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let node = Location::Node(NodeId(7));
    assert_eq!(out, vec![(node, 11, 200), (node, 11, 201)]);
    let log = log.lock().unwrap().clone();
    assert!(log.contains(&"11 Moved".to_string()), "{log:?}");
    let got = log.iter().position(|l| l == "12 got 101").unwrap();
    let gone = log.iter().position(|l| l == "12 Moved").unwrap();
    assert!(got < gone, "12 handled its mail before it moved: {log:?}");
    // New mail for a moved ID goes straight to its node.
    router.send(12, 300).unwrap();
    assert!(matches!(
        router.poll_outbound(),
        Some((
            Location::Node(NodeId(7)),
            Outbound::Message(Recipient::Id(12), 300)
        ))
    ));
}

#[test]
fn a_router_without_placement_releases_nothing() {
    let mut router: Router<u32, u32> = Router::new(Config::default());
    router.send(1, 1).unwrap();
    assert_eq!(router.release_moved(), 0);
    assert_eq!(router.moved_live(), 0);
}
