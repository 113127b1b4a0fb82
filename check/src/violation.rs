//! What the checker reports when the router breaks a rule.

use std::fmt;

/// The routing invariants of the design, plus agreement with the reference model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invariant {
    /// 1. Every accepted message is delivered exactly once or reported exactly once as a dead letter.
    ExactlyOnce,
    /// 2. Messages from one sender to one receiver arrive in send order.
    SenderOrder,
    /// 3. A receiver runs at most one message at a time (at most one job checked out).
    OneAtATime,
    /// 4. A receiver is deactivated only when not running, with an empty mailbox, after its idle
    ///    timeout, or when stopped, panicked or closing; never twice.
    Deactivation,
    /// 5. A timer fires once, never before its deadline; a cancelled timer never fires.
    Timers,
    /// 6. After close completes every receiver was deactivated exactly once and no message is
    ///    accepted.
    Close,
    /// 7. Stale handles never reach a newer receiver in a reused slot.
    StaleHandles,
    /// 8. Receivers with work scheduled or running <= receivers with messages queued or in hand.
    Resources,
    /// The router's outputs (commands, counters, errors) disagree with the reference model in a
    /// way none of the invariants above names.
    Model,
}

impl Invariant {
    /// The invariant's number in the design (0 for [`Invariant::Model`]).
    pub fn number(self) -> u8 {
        match self {
            Invariant::ExactlyOnce => 1,
            Invariant::SenderOrder => 2,
            Invariant::OneAtATime => 3,
            Invariant::Deactivation => 4,
            Invariant::Timers => 5,
            Invariant::Close => 6,
            Invariant::StaleHandles => 7,
            Invariant::Resources => 8,
            Invariant::Model => 0,
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Invariant::ExactlyOnce => "1 (exactly once or dead letter)",
            Invariant::SenderOrder => "2 (per-sender order)",
            Invariant::OneAtATime => "3 (one message at a time)",
            Invariant::Deactivation => "4 (deactivation rules)",
            Invariant::Timers => "5 (timer rules)",
            Invariant::Close => "6 (close rules)",
            Invariant::StaleHandles => "7 (stale handles)",
            Invariant::Resources => "8 (resources only for work)",
            Invariant::Model => "reference model",
        })
    }
}

/// A broken rule, with where it happened and the steps that led there.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Which rule broke.
    pub invariant: Invariant,
    /// What exactly was observed, and what was expected.
    pub detail: String,
    /// The index of the plan's operation during which it broke (`None`: in the final drain and
    /// close).
    pub step: Option<usize>,
    /// The last operations performed, oldest first, ending with the one that broke the rule.
    pub history: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invariant {} broken", self.invariant)?;
        match self.step {
            Some(step) => write!(f, " at step {step}")?,
            None => write!(f, " in the final drain and close")?,
        }
        writeln!(f, ": {}", self.detail)?;
        writeln!(f, "last operations, oldest first:")?;
        for line in &self.history {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Violation {}

/// A violation before the step and history are known.
#[derive(Clone, Debug)]
pub(crate) struct Broken {
    pub(crate) invariant: Invariant,
    pub(crate) detail: String,
}

/// Returns early with a [`Broken`] rule.
macro_rules! broken {
    ($invariant:ident, $($arg:tt)*) => {
        return Err($crate::violation::Broken {
            invariant: $crate::violation::Invariant::$invariant,
            detail: format!($($arg)*),
        })
    };
}
pub(crate) use broken;

/// Fails with `invariant` unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $invariant:ident, $($arg:tt)*) => {
        if !$cond {
            $crate::violation::broken!($invariant, $($arg)*);
        }
    };
}
pub(crate) use ensure;

pub(crate) type Checked<T = ()> = Result<T, Broken>;
