//! A value that is set once and awaited by threads (blocking, with a deadline) or by tasks
//! (`Future`): the one primitive under [`Asked`](crate::Asked) and the executors' shutdown.

use std::sync::PoisonError;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

// The set/wait/poll protocol is model-checked with loom (the `loom_model` tests at the end),
// which needs its own atomics, mutex and condition variable: `RUSTFLAGS="--cfg hermes_loom"
// cargo test -p hermes-reply --lib --release loom_model`. Every other build uses std's.
#[cfg(all(test, hermes_loom))]
use loom::sync::atomic::{AtomicBool, Ordering};
#[cfg(all(test, hermes_loom))]
use loom::sync::{Condvar, Mutex, MutexGuard};
#[cfg(not(all(test, hermes_loom)))]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(all(test, hermes_loom)))]
use std::sync::{Condvar, Mutex, MutexGuard};

/// A value set once, awaited by threads ([`wait`](Signal::wait)) or tasks
/// ([`poll`](Signal::poll)).
///
/// ```
/// use std::sync::Arc;
/// use hermes_reply::Signal;
///
/// let signal = Arc::new(Signal::default());
/// let setter = Arc::clone(&signal);
/// std::thread::spawn(move || setter.set(7));
/// assert_eq!(signal.wait(None, |v| v.take()), Some(7));
/// ```
pub struct Signal<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
    /// Set with the value: lets a blocked waiter spin on one load before it sleeps.
    is_set: AtomicBool,
}

struct State<T> {
    value: Option<T>,
    wakers: Vec<Waker>,
    /// Threads asleep on `ready`: `set` makes the wake-up call only if there are any.
    sleepers: usize,
}

impl<T> std::fmt::Debug for Signal<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signal")
            .field(
                "is_set",
                &self.is_set.load(std::sync::atomic::Ordering::Acquire),
            )
            .finish_non_exhaustive()
    }
}

impl<T> Default for Signal<T> {
    fn default() -> Self {
        Signal {
            state: Mutex::new(State {
                value: None,
                wakers: Vec::new(),
                sleepers: 0,
            }),
            ready: Condvar::new(),
            is_set: AtomicBool::new(false),
        }
    }
}

impl<T> Signal<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding this lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the value and wakes every waiter; gives the value back if one was set before
    /// (even if it has been taken since): a signal is set once.
    pub fn set(&self, value: T) -> Result<(), T> {
        let (wakers, sleepers) = {
            let mut state = self.lock();
            if state.value.is_some() || self.is_set.load(Ordering::Acquire) {
                return Err(value);
            }
            state.value = Some(value);
            self.is_set.store(true, Ordering::Release);
            (std::mem::take(&mut state.wakers), state.sleepers)
        };
        if sleepers > 0 {
            self.ready.notify_all();
        }
        wakers.into_iter().for_each(Waker::wake);
        Ok(())
    }

    /// Polls for the value; `read` takes or copies it out of the slot.
    pub fn poll<R>(
        &self,
        cx: &mut Context<'_>,
        read: impl FnOnce(&mut Option<T>) -> Option<R>,
    ) -> Poll<R> {
        let mut state = self.lock();
        if state.value.is_some()
            && let Some(r) = read(&mut state.value)
        {
            return Poll::Ready(r);
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Blocks until the value is set or `deadline` passes (`None`: no deadline); `read` takes or
    /// copies it out. `None` on timeout, or at once if the value was set and taken already.
    pub fn wait<R>(
        &self,
        deadline: Option<Instant>,
        read: impl FnOnce(&mut Option<T>) -> Option<R>,
    ) -> Option<R> {
        self.spin(deadline);
        let mut state = self.lock();
        while state.value.is_none() && !self.is_set.load(Ordering::Acquire) {
            let left = match deadline {
                None => None,
                Some(deadline) => match deadline.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => return None,
                    left => Some(left),
                },
            };
            state.sleepers += 1;
            state = match left {
                None => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(left) => {
                    let waited = self.ready.wait_timeout(state, left);
                    waited.unwrap_or_else(PoisonError::into_inner).0
                }
            };
            state.sleepers -= 1;
        }
        read(&mut state.value)
    }

    /// Waits briefly without sleeping for the value to be set: an answer that is on its way
    /// (a receiver on an awake shard) then costs no sleep and wake-up.
    #[cfg(not(all(test, hermes_loom)))]
    fn spin(&self, deadline: Option<Instant>) {
        crate::spin::poll_briefly(deadline, || self.is_set.load(Ordering::Acquire));
    }

    /// Under loom: one look, a yield, another look (loom needs a bound on spinning, and real
    /// time means nothing in a model).
    #[cfg(all(test, hermes_loom))]
    fn spin(&self, _deadline: Option<Instant>) {
        if !self.is_set.load(Ordering::Acquire) {
            loom::thread::yield_now();
            let _ = self.is_set.load(Ordering::Acquire);
        }
    }
}

#[cfg(all(test, not(hermes_loom)))]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_taken_value_does_not_block_the_next_waiter() {
        let signal = Signal::default();
        assert_eq!(signal.set(5u8), Ok(()));
        assert_eq!(signal.wait(None, Option::take), Some(5));
        // Set once and taken: waiting again answers at once instead of sleeping forever.
        assert_eq!(signal.wait(None, Option::take), None);
        assert_eq!(signal.set(6), Err(6));
    }

    #[test]
    fn a_wait_with_a_deadline_times_out_when_nothing_is_set() {
        let signal = Signal::<u8>::default();
        let deadline = Instant::now() + Duration::from_millis(20);
        assert_eq!(signal.wait(Some(deadline), Option::take), None);
        assert!(Instant::now() >= deadline);
    }
}

/// Model checks of the protocol between [`Signal::set`] and its waiters (a blocked thread that
/// spins on `is_set`, then counts itself among the sleepers and waits on the condition variable;
/// a task whose waker is kept): loom runs every interleaving (up to a preemption bound) and
/// fails on a deadlock, which is what a lost wake-up is (a waiter asleep on a value that was
/// set). Only with `--cfg hermes_loom` (see the imports above).
#[cfg(all(test, hermes_loom))]
mod loom_model {
    use super::*;
    use loom::sync::Arc;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(3);
        builder.check(f);
    }

    /// An asker blocked in `wait` gets an answer set by another thread, whenever it comes.
    #[test]
    fn loom_model_blocked_waiter_is_woken() {
        model(|| {
            let signal = Arc::new(Signal::default());
            let setter = Arc::clone(&signal);
            let answer = loom::thread::spawn(move || setter.set(7u8));
            assert_eq!(signal.wait(None, Option::take), Some(7));
            assert_eq!(answer.join().unwrap(), Ok(()));
        });
    }

    /// Two blocked threads (the shape of a shard's `done` awaited by a shutdown and a join)
    /// both see one `set`; a second `set` is refused.
    #[test]
    fn loom_model_two_waiters_one_set() {
        model(|| {
            let signal = Arc::new(Signal::default());
            let other = Arc::clone(&signal);
            let waiter = loom::thread::spawn(move || other.wait(None, |v| *v));
            let setter = Arc::clone(&signal);
            let set = loom::thread::spawn(move || setter.set(3u8));
            assert_eq!(signal.wait(None, |v| *v), Some(3));
            assert_eq!(waiter.join().unwrap(), Some(3));
            assert_eq!(set.join().unwrap(), Ok(()));
            assert_eq!(signal.set(4), Err(4));
        });
    }

    /// A task awaiting the value (`Asked` as a `Future`) is woken by a `set` from another
    /// thread, whether the set comes before its first poll, between polls or after it parked.
    #[test]
    fn loom_model_polling_task_is_woken() {
        model(|| {
            let signal = Arc::new(Signal::default());
            let setter = Arc::clone(&signal);
            let set = loom::thread::spawn(move || setter.set(9u8));
            let got =
                loom::future::block_on(std::future::poll_fn(|cx| signal.poll(cx, Option::take)));
            assert_eq!(got, 9);
            assert_eq!(set.join().unwrap(), Ok(()));
        });
    }

    /// The model can fail: a setter that stores the value without looking for sleepers (no
    /// `notify_all`) leaves a waiter that went to sleep first asleep, and loom finds it.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn loom_model_finds_a_lost_wakeup() {
        model(|| {
            let signal = Arc::new(Signal::default());
            let setter = Arc::clone(&signal);
            let set = loom::thread::spawn(move || {
                // Broken on purpose: `set` without the wake-up.
                setter.lock().value = Some(1u8);
                setter.is_set.store(true, Ordering::Release);
            });
            assert_eq!(signal.wait(None, Option::take), Some(1));
            set.join().unwrap();
        });
    }
}
