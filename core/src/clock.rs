//! Time, passed in: the router never reads a clock of its own.

use std::time::{Duration, Instant};

/// Where a router reads the time while receivers run.
///
/// The router never reads a real clock. A driver passes one in: an [`Instant`] is a clock that
/// stands still (tests, simulation, a driver that reads the time once per step), and
/// [`SystemClock`] reads [`Instant::now`] whenever asked, so that a timer a handler schedules
/// counts from the moment the handler asked for it, however long the handlers before it took.
///
/// ```
/// use std::time::{Duration, Instant};
/// use hermes_core::{Clock, SystemClock};
///
/// let frozen = Instant::now();
/// assert_eq!(frozen.now(), frozen);
/// std::thread::sleep(Duration::from_millis(1));
/// assert!(SystemClock.now() > frozen);
/// ```
pub trait Clock {
    /// The current time.
    fn now(&self) -> Instant;
}

impl Clock for Instant {
    #[inline]
    fn now(&self) -> Instant {
        *self
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    #[inline]
    fn now(&self) -> Instant {
        (**self).now()
    }
}

/// The real monotonic clock, [`Instant::now`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[inline]
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// `at + after`, or `None` ("never") when that is past the end of representable time.
///
/// Every [`Duration`] is a valid delay: one too long to represent means the timer never fires
/// (it can still be cancelled, and it is reported as a dead letter at close like any pending
/// timer), and an idle timeout that long means the receiver is never deactivated for idleness.
///
/// ```
/// use std::time::{Duration, Instant};
///
/// let now = Instant::now();
/// assert_eq!(hermes_core::deadline(now, Duration::from_secs(1)), Some(now + Duration::from_secs(1)));
/// assert_eq!(hermes_core::deadline(now, Duration::MAX), None);
/// ```
#[inline]
pub fn deadline(at: Instant, after: Duration) -> Option<Instant> {
    at.checked_add(after)
}
