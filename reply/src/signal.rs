//! A value that is set once and awaited by threads (blocking, with a deadline) or by tasks
//! (`Future`): the one primitive under [`Asked`](crate::Asked) and the executors' shutdown.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

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
    /// copies it out. `None` on timeout.
    pub fn wait<R>(
        &self,
        deadline: Option<Instant>,
        read: impl FnOnce(&mut Option<T>) -> Option<R>,
    ) -> Option<R> {
        self.spin(deadline);
        let mut state = self.lock();
        while state.value.is_none() {
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
    fn spin(&self, deadline: Option<Instant>) {
        crate::spin::poll_briefly(deadline, || self.is_set.load(Ordering::Acquire));
    }
}
