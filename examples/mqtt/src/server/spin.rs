//! Keeping a runtime worker awake for a moment after socket activity, instead of putting its
//! CPU to sleep between two packets that come a few microseconds apart (`idle_spin_us`).
//!
//! A worker with no task to run sleeps in `epoll_wait`, and the CPU halts; the next packet
//! must wake it: the sender's kernel sends the CPU an inter-processor interrupt, and under a
//! hypervisor both the halt and the interrupt exit to the host. On the 2-vCPU VM of
//! BENCHMARKS.md that cost the load generator about 10 µs more CPU per connect against
//! hermes-mqtt than against Mosquitto (which is busy enough never to sleep), 0.15 to 0.3
//! rescheduling interrupts per connect against Mosquitto's 0.01, and a connect rate 15%
//! lower (BENCHMARKS.md, section "Run K").
//!
//! So, after activity (a read, an accept), one task keeps the worker busy for up to
//! `idle_spin_us` of quiet: it yields in a loop, and between two of its turns tokio
//! polls its sockets without blocking (`yield_now` defers the task until the I/O driver was
//! polled), so a packet that comes meanwhile is handled at once, with no sleep and no
//! interrupt, and no added delay (unlike a blind spin before parking). Once quiet for the
//! period, the task sleeps until the next activity pokes it: an idle broker does not spin.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The spinner's state, shared by the connections (which poke it) and its task.
#[derive(Debug)]
pub(crate) struct IdleSpin {
    /// How long it keeps the worker awake after the last activity; zero: never.
    period: Duration,
    /// Its task sleeps until poked.
    dormant: AtomicBool,
    wake: Notify,
}

impl IdleSpin {
    /// A spinner that keeps the worker awake `period` after the last activity (zero: off).
    pub(crate) fn new(period: Duration) -> IdleSpin {
        IdleSpin {
            period,
            dormant: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// Something happened (a read, an accept): wakes the task if it sleeps. A load, most of
    /// the time: the task is awake while activity goes on.
    pub(crate) fn poke(&self) {
        if self.dormant.load(Ordering::Relaxed) && self.dormant.swap(false, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Whether its task sleeps (until the next [`poke`](Self::poke)).
    #[cfg(test)]
    pub(crate) fn is_dormant(&self) -> bool {
        self.dormant.load(Ordering::Acquire)
    }
}

/// The spinner's task: for ever (until aborted at shutdown), sleeps until poked, then yields
/// until `activity` has not changed for the period. `activity` is a count that any activity
/// moves (bytes read, connections accepted). Returns at once if the period is zero.
pub(crate) async fn run(spin: Arc<IdleSpin>, activity: impl Fn() -> u64) {
    run_on(spin, activity, Instant::now).await;
}

/// [`run`] on the clock `now` (the tests' clock moves only when they say).
async fn run_on(spin: Arc<IdleSpin>, activity: impl Fn() -> u64, now: impl Fn() -> Instant) {
    if spin.period.is_zero() {
        return;
    }
    loop {
        let woken = spin.wake.notified();
        tokio::pin!(woken);
        // Registered before it says it sleeps: a poke after the store wakes it.
        woken.as_mut().enable();
        spin.dormant.store(true, Ordering::Release);
        woken.await;
        let mut seen = activity();
        let mut quiet_since = now();
        loop {
            tokio::task::yield_now().await;
            let now = now();
            let moved = activity();
            if moved != seen {
                seen = moved;
                quiet_since = now;
            } else if now.duration_since(quiet_since) >= spin.period {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Waits (yielding, at most 10 s) until `spin`'s task is dormant or not, as `dormant`.
    async fn until_dormant(spin: &IdleSpin, dormant: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while spin.is_dormant() != dormant {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        true
    }

    /// Poked, the task keeps yielding while the activity count moves, and goes back to sleep
    /// once it has not moved for the period: an idle broker does not spin. On a clock of the
    /// test's: on the real one, a test thread that the machine stalled for the period between
    /// two moves saw the task asleep (1 run in about 30 under load).
    #[tokio::test]
    async fn spins_after_activity_and_sleeps_when_quiet() {
        const PERIOD: Duration = Duration::from_millis(20);
        let spin = Arc::new(IdleSpin::new(PERIOD));
        let activity = Arc::new(AtomicU64::new(0));
        let clock = Arc::new(std::sync::Mutex::new(Instant::now()));
        let advance = |by: Duration| *clock.lock().unwrap() += by;
        let task = tokio::spawn(run_on(
            Arc::clone(&spin),
            {
                let activity = Arc::clone(&activity);
                move || activity.load(Ordering::Relaxed)
            },
            {
                let clock = Arc::clone(&clock);
                move || *clock.lock().unwrap()
            },
        ));
        assert!(
            until_dormant(&spin, true).await,
            "asleep before any activity"
        );
        spin.poke();
        assert!(!spin.is_dormant(), "a poke wakes it");
        // While the count moves, it stays awake: five moves half a period apart, the task
        // yielding a few times after each.
        for _ in 0..5 {
            activity.fetch_add(1, Ordering::Relaxed);
            advance(PERIOD / 2);
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            assert!(!spin.is_dormant(), "awake while activity goes on");
        }
        // A period without a move: it sleeps.
        advance(PERIOD);
        assert!(until_dormant(&spin, true).await, "asleep again once quiet");
        // And poked again, it wakes again, and sleeps after another quiet period.
        spin.poke();
        assert!(!spin.is_dormant());
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        advance(PERIOD);
        assert!(until_dormant(&spin, true).await);
        task.abort();
    }

    /// A zero period is off: the task ends at once, and a poke does nothing.
    #[tokio::test]
    async fn zero_period_is_off() {
        let spin = Arc::new(IdleSpin::new(Duration::ZERO));
        run(Arc::clone(&spin), || 0).await;
        spin.poke();
        assert!(!spin.is_dormant());
    }
}
