//! A heartbeat protocol over three simulated hours, in milliseconds of real time.
//!
//! The client sends a heartbeat every 10 s. The monitor declares it dead after 30 s without one,
//! and alive again at the next. At 65 s the client pauses for 45 s: its heartbeats stop after the
//! one at 60 s and resume at 110 s. So the monitor must notice at exactly 90 s, and see the
//! client back at exactly 110 s, and nothing else in three hours, under every seed.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hermes_core::{Activation, Config, Context, Receiver, TimerId};
use hermes_sim::Sim;

const CLIENT: &str = "client";
const MONITOR: &str = "monitor";
const EVERY: Duration = Duration::from_secs(10);
const SILENCE: Duration = Duration::from_secs(30);

#[derive(Debug)]
enum Msg {
    Tick,
    Pause(Duration),
    Beat,
    Check,
}

/// What the monitor noticed, and when (simulated time since the start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Notice<T> {
    Dead(T),
    Alive(T),
}

struct Client {
    next: Option<TimerId>,
}

impl Receiver<&'static str, Msg> for Client {
    fn receive(&mut self, ctx: &mut Context<'_, &'static str, Msg>, msg: Msg) {
        let after = match msg {
            Msg::Tick => {
                ctx.send(MONITOR, Msg::Beat);
                EVERY
            }
            Msg::Pause(pause) => {
                if let Some(tick) = self.next.take() {
                    ctx.cancel(tick);
                }
                pause
            }
            other => unreachable!("the client got {other:?}"),
        };
        self.next = Some(ctx.schedule(after, Msg::Tick));
    }
}

struct Monitor {
    check: Option<TimerId>,
    dead: bool,
    notices: Arc<Mutex<Vec<Notice<Instant>>>>,
    beats: Arc<Mutex<u32>>,
}

impl Receiver<&'static str, Msg> for Monitor {
    fn receive(&mut self, ctx: &mut Context<'_, &'static str, Msg>, msg: Msg) {
        let at = ctx.now();
        match msg {
            Msg::Beat => {
                *self.beats.lock().unwrap() += 1;
                if std::mem::take(&mut self.dead) {
                    self.notices.lock().unwrap().push(Notice::Alive(at));
                }
                if let Some(check) = self.check.take() {
                    ctx.cancel(check);
                }
                self.check = Some(ctx.schedule(SILENCE, Msg::Check));
            }
            Msg::Check => {
                self.dead = true;
                self.check = None;
                self.notices.lock().unwrap().push(Notice::Dead(at));
            }
            other => unreachable!("the monitor got {other:?}"),
        }
    }
}

/// Runs three simulated hours under `seed`; the monitor's notices and the heartbeats it got.
fn run(seed: u64) -> (Vec<Notice<Duration>>, u32) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let beats = Arc::new(Mutex::new(0));
    let (n, b) = (notices.clone(), beats.clone());
    let mut sim = Sim::new(
        seed,
        Config::default(),
        move |&id: &&'static str| match id {
            CLIENT => Activation::ready(Client { next: None }),
            MONITOR => Activation::ready(Monitor {
                check: None,
                dead: false,
                notices: n.clone(),
                beats: b.clone(),
            }),
            _ => Activation::Refused,
        },
    )
    .with_shards(1 + (seed % 2) as u32);
    let start = sim.now();

    sim.send(CLIENT, Msg::Tick).unwrap();
    sim.schedule(
        CLIENT,
        Duration::from_secs(65),
        Msg::Pause(Duration::from_secs(45)),
    )
    .unwrap();
    sim.run_for(Duration::from_secs(3 * 3600));

    assert_eq!(sim.elapsed(), Duration::from_secs(3 * 3600));
    assert!(sim.dead_letters().is_empty());
    let notices = notices
        .lock()
        .unwrap()
        .iter()
        .map(|n| match *n {
            Notice::Dead(at) => Notice::Dead(at - start),
            Notice::Alive(at) => Notice::Alive(at - start),
        })
        .collect();
    let beats = *beats.lock().unwrap();
    (notices, beats)
}

#[test]
fn the_monitor_notices_the_pause_exactly_when_it_should() {
    for seed in 0..20 {
        let (notices, beats) = run(seed);
        assert_eq!(
            notices,
            [
                Notice::Dead(Duration::from_secs(90)),
                Notice::Alive(Duration::from_secs(110)),
            ],
            "seed {seed}"
        );
        // Beats at 0, 10, ..., 60 s, then 110, 120, ..., 10800 s.
        assert_eq!(beats, 7 + (10_800 - 110) / 10 + 1, "seed {seed}");
    }
}
