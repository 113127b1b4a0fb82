//! A value that is set once and awaited by threads (blocking, with a deadline) or by tasks
//! (`Future`): the one primitive under [`Asked`](crate::Asked) and [`Finished`](crate::Finished).

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

pub(crate) struct Signal<T> {
    state: Mutex<State<T>>,
    ready: Condvar,
}

struct State<T> {
    value: Option<T>,
    wakers: Vec<Waker>,
}

impl<T> Default for Signal<T> {
    fn default() -> Self {
        Signal {
            state: Mutex::new(State {
                value: None,
                wakers: Vec::new(),
            }),
            ready: Condvar::new(),
        }
    }
}

impl<T> Signal<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // Nothing panics while holding this lock, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the value (if none is set yet) and wakes every waiter.
    pub(crate) fn set(&self, value: T) {
        let wakers = {
            let mut state = self.lock();
            if state.value.is_some() {
                return;
            }
            state.value = Some(value);
            std::mem::take(&mut state.wakers)
        };
        self.ready.notify_all();
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Polls for the value; `read` takes or copies it out of the slot.
    pub(crate) fn poll<R>(
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
    pub(crate) fn wait<R>(
        &self,
        deadline: Option<Instant>,
        read: impl FnOnce(&mut Option<T>) -> Option<R>,
    ) -> Option<R> {
        let mut state = self.lock();
        while state.value.is_none() {
            state = match deadline {
                None => self
                    .ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    let (state, _) = self
                        .ready
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner);
                    state
                }
            };
        }
        read(&mut state.value)
    }
}
