//! Logging a problem that can recur many times a second (a store that refuses every write, a
//! retained-message limit that a client keeps hitting) without flooding the log: the first
//! occurrence is logged at once, the next ones are counted, and at most one line per period
//! says how many there were and shows the last one.
//!
//! Accept errors use it too, for their once-a-minute line (the summary loop counts them).
//!
//! [`Throttle::note`] and [`Throttle::pending`] take the time as an argument (sans-IO, tested
//! with made-up instants); `stats::throttle_loop` calls [`Throttle::log_pending`] once per
//! period, and the shutdown once more at the end, so that no count is left unsaid.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How often a throttled problem may be logged: the first time at once, then a summary line
/// at most this often.
pub(crate) const PERIOD: Duration = Duration::from_secs(10);

/// What a line logged for [`Throttle::note`] adds about the `n` occurrences before it that
/// went unlogged: nothing, or "; N more before it".
pub(crate) fn unlogged(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!("; {n} more before it")
    }
}

/// The level a throttled problem is logged at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Warn,
    Error,
}

/// One kind of recurring problem, logged at most once per period.
#[derive(Debug)]
pub(crate) struct Throttle {
    /// What happened, once and more than once, for the summary: "store write failed",
    /// "store writes failed".
    what: (&'static str, &'static str),
    level: Level,
    period: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// When a line was last logged.
    logged_at: Option<Instant>,
    /// Occurrences since then that were not logged.
    unlogged: u64,
    /// The last of them.
    last: String,
}

impl State {
    /// True if a line may be logged at `now`: none yet, or the last one a `period` ago.
    fn due(&self, now: Instant, period: Duration) -> bool {
        self.logged_at
            .is_none_or(|at| now.saturating_duration_since(at) >= period)
    }
}

impl Throttle {
    pub(crate) fn new(what: (&'static str, &'static str), level: Level, period: Duration) -> Self {
        Self {
            what,
            level,
            period,
            state: Mutex::default(),
        }
    }

    /// One occurrence at `now`: `Some(n)` if it is to be logged now (`n` occurrences before it
    /// went unlogged and are summed up in its line), `None` if it is only counted, for the
    /// next summary (`detail` describes it there).
    pub(crate) fn note(&self, now: Instant, detail: impl FnOnce() -> String) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.due(now, self.period) {
            state.logged_at = Some(now);
            state.last.clear();
            return Some(std::mem::take(&mut state.unlogged));
        }
        state.unlogged += 1;
        state.last = detail();
        None
    }

    /// The occurrences not logged yet, and the last one's detail, if a summary is due at
    /// `now` (a period after the last line) or `force`d.
    pub(crate) fn pending(&self, now: Instant, force: bool) -> Option<(u64, String)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.unlogged == 0 || !(force || state.due(now, self.period)) {
            return None;
        }
        state.logged_at = Some(now);
        let last = std::mem::take(&mut state.last);
        Some((std::mem::take(&mut state.unlogged), last))
    }

    /// Logs the summary of the occurrences not logged yet, if one is due (or `force`d).
    pub(crate) fn log_pending(&self, now: Instant, force: bool) {
        let Some((unlogged, last)) = self.pending(now, force) else {
            return;
        };
        let secs = self.period.as_secs();
        let what = if unlogged == 1 {
            self.what.0
        } else {
            self.what.1
        };
        match self.level {
            Level::Error => {
                tracing::error!(
                    "{unlogged} more {what} (at most one line per {secs} s); the last: {last}"
                );
            }
            Level::Warn => {
                tracing::warn!(
                    "{unlogged} more {what} (at most one line per {secs} s); the last: {last}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttle() -> Throttle {
        Throttle::new(
            ("thing failed", "things failed"),
            Level::Warn,
            Duration::from_secs(10),
        )
    }

    #[test]
    fn the_first_is_logged_at_once_the_rest_summed_up_once_per_period() {
        let t = throttle();
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(t.note(at(0), || "a".into()), Some(0));
        for i in 1..=1000u64 {
            assert_eq!(t.note(at(i), || format!("#{i}")), None, "within the period");
        }
        assert_eq!(t.pending(at(5_000), false), None, "not due yet");
        assert_eq!(t.pending(at(10_000), false), Some((1000, "#1000".into())));
        assert_eq!(t.pending(at(10_001), false), None, "nothing new");
        // Counted again, from the summary's time.
        assert_eq!(t.note(at(15_000), || "b".into()), None);
        assert_eq!(t.pending(at(19_999), false), None);
        assert_eq!(t.pending(at(20_000), false), Some((1, "b".into())));
    }

    #[test]
    fn an_occurrence_after_a_quiet_period_is_logged_at_once_with_the_count_before_it() {
        let t = throttle();
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert_eq!(t.note(at(0), String::new), Some(0));
        assert_eq!(t.note(at(1), || "x".into()), None);
        assert_eq!(t.note(at(2), || "y".into()), None);
        // No summary ran (the loop is late): the next line says how many went unlogged.
        assert_eq!(t.note(at(12), || "z".into()), Some(2));
        assert_eq!(t.pending(at(30), true), None, "all said");
        assert_eq!(t.note(at(60), String::new), Some(0));
    }

    #[test]
    fn a_forced_summary_says_what_is_left() {
        let t = throttle();
        let start = Instant::now();
        assert_eq!(t.pending(start, true), None, "nothing happened");
        assert_eq!(t.note(start, String::new), Some(0));
        assert_eq!(t.note(start, || "last".into()), None);
        assert_eq!(t.pending(start, true), Some((1, "last".into())));
    }
}
