//! What the checker reports when the router breaks a rule.

use std::fmt;

/// Which rule a [`Violation`] broke: one of the eight routing invariants, numbered and stated in
/// [hermes_core's crate docs](hermes_core#invariants), or agreement with the reference model.
///
/// Each variant names its invariant in a few words; the crate docs are the definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invariant {
    /// Invariant 1 of hermes_core's crate docs: exactly once or a dead letter.
    ExactlyOnce,
    /// Invariant 2 of hermes_core's crate docs: per-sender order.
    SenderOrder,
    /// Invariant 3 of hermes_core's crate docs: one message (one job) at a time.
    OneAtATime,
    /// Invariant 4 of hermes_core's crate docs: when a receiver may be deactivated, and only
    /// once.
    Deactivation,
    /// Invariant 5 of hermes_core's crate docs: timers fire once, on time, and never cancelled.
    Timers,
    /// Invariant 6 of hermes_core's crate docs: what close guarantees.
    Close,
    /// Invariant 7 of hermes_core's crate docs: stale handles.
    StaleHandles,
    /// Invariant 8 of hermes_core's crate docs: resources only for receivers with work.
    Resources,
    /// The router's outputs (commands, counters, errors) disagree with the reference model in a
    /// way none of the invariants names.
    Model,
}

impl Invariant {
    /// The invariant's number in hermes_core's crate docs (0 for [`Invariant::Model`]).
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
