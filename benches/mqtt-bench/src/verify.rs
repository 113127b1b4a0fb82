//! Checking deliveries: per (publisher, topic) sequence at each subscriber, what arrived in
//! order, late, twice, or not at all; and a log of errors that a run reports.

use std::collections::BTreeSet;
use std::fmt::Display;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A gap in a sequence larger than this is taken as a corrupt sequence number, not as loss.
const MAX_GAP: u64 = 1 << 24;

/// What one subscriber saw of one publisher's sequence on one topic.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    /// The sequence number after the highest one seen.
    next: u64,
    /// Numbers below `next` not seen yet.
    holes: BTreeSet<u64>,
    /// Distinct messages seen.
    pub unique: u64,
    /// Messages seen again.
    pub duplicates: u64,
    /// Messages that arrived after a later one of the same sequence.
    pub out_of_order: u64,
    /// Sequence numbers too far ahead to be believed.
    pub implausible: u64,
}

impl Tracker {
    /// Records message `seq`; true if it was new.
    pub fn observe(&mut self, seq: u64) -> bool {
        if seq == self.next {
            self.next += 1;
        } else if seq > self.next {
            if seq - self.next > MAX_GAP {
                self.implausible += 1;
                return false;
            }
            self.holes.extend(self.next..seq);
            self.next = seq + 1;
        } else if self.holes.remove(&seq) {
            self.out_of_order += 1;
        } else {
            self.duplicates += 1;
            return false;
        }
        self.unique += 1;
        true
    }

    /// Messages not seen of the `sent` that were published.
    pub fn lost(&self, sent: u64) -> u64 {
        self.holes.len() as u64 + sent.saturating_sub(self.next)
    }

    /// Messages seen that were never published (numbers at or past `sent`).
    pub fn beyond(&self, sent: u64) -> u64 {
        self.next.saturating_sub(sent)
    }
}

/// Errors of a run: all counted, the first few kept to be shown.
#[derive(Debug, Default)]
pub struct ErrorLog {
    count: AtomicU64,
    first: Mutex<Vec<String>>,
}

impl ErrorLog {
    /// How many are kept to be shown.
    const KEPT: usize = 8;

    /// Records an error.
    pub fn push(&self, what: impl Display) {
        let what = what.to_string();
        tracing::warn!("{what}");
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|e| e.into_inner());
        if first.len() < Self::KEPT {
            first.push(what);
        }
    }

    /// How many errors there were.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The first few.
    pub fn first(&self) -> Vec<String> {
        self.first.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order() {
        let mut t = Tracker::default();
        for seq in 0..10 {
            assert!(t.observe(seq));
        }
        assert_eq!((t.unique, t.duplicates, t.out_of_order), (10, 0, 0));
        assert_eq!(t.lost(10), 0);
        assert_eq!(t.lost(12), 2);
    }

    #[test]
    fn gaps_late_and_duplicates() {
        let mut t = Tracker::default();
        for seq in [0, 1, 4, 2, 2, 5, 0] {
            t.observe(seq);
        }
        assert_eq!(t.unique, 5);
        assert_eq!(t.duplicates, 2);
        assert_eq!(t.out_of_order, 1);
        assert_eq!(t.lost(6), 1); // 3
        assert_eq!(t.beyond(6), 0);
        assert_eq!(t.beyond(4), 2);
    }

    #[test]
    fn implausible_jump() {
        let mut t = Tracker::default();
        assert!(!t.observe(u64::MAX));
        assert_eq!(t.implausible, 1);
        assert_eq!(t.lost(0), 0);
    }
}
