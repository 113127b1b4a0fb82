//! Waiting briefly without sleeping, written once for the shard that watches its inbox and the
//! thread that waits for an answer.
//!
//! Waking a sleeping thread costs the waker a system call and the sleeper a trip through the
//! scheduler: tens of microseconds on a virtual machine whose idle virtual CPU has halted. When
//! the other side is about to act (a reply on its way, the next request of a blocking asker),
//! polling a little first saves both, and keeps the two sides from falling into a rhythm where
//! each goes to sleep just before the other needs it.

use std::time::{Duration, Instant};

/// Polls with a pause between, first.
const SPINS: u32 = 64;

/// Then polls with a yield of the time slice between (so that on a busy machine the thread we
/// wait for gets the core), for at most this long.
const WINDOW: Duration = Duration::from_micros(50);

/// Polls `ready` without sleeping, for at most about 50 µs and not past `deadline`; true
/// as soon as it is ready, false if it did not become ready in time.
pub fn poll_briefly(deadline: Option<Instant>, mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..SPINS {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    let start = Instant::now();
    let until = deadline.map_or(start + WINDOW, |d| d.min(start + WINDOW));
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::yield_now();
    }
}
