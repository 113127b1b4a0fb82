//! A plan: the world's configuration, the scripts messages run, and the operations to perform,
//! decoded from arbitrary bytes (a fuzzer's input or a seeded random stream).

use std::time::Duration;

use arbitrary::{Arbitrary, Result, Unstructured};
use hermes_core::Settings;

use crate::kinds::KINDS;
use crate::model::NEVER_IDLE_MS;
use crate::script::{IDS, Id};

/// Most operations one plan performs (the fuzzer's inputs stay small anyway).
const MAX_OPS: usize = 600;
/// Most scripts in one plan, and most instructions in one script.
const MAX_SCRIPTS: u32 = 8;
const MAX_INSTRS: u32 = 4;
/// How many random bytes a seeded plan is decoded from.
const SEEDED_BYTES: usize = 3000;

/// Everything one check run does: decode it from bytes with [`Plan::from_bytes`] or from a seed
/// with [`Plan::from_seed`], then run it with [`check`](crate::check).
#[derive(Clone, Debug)]
pub struct Plan {
    pub(crate) two_routers: bool,
    pub(crate) idle_timeout: Duration,
    pub(crate) mailbox_capacity: Option<usize>,
    pub(crate) batch_size: usize,
    /// `Config::drain_limit`, if not the default: relays on a closing router then go on until
    /// the limit stops them.
    pub(crate) drain_limit: Option<u64>,
    /// The final close comes while work is still queued, running and in transit (otherwise
    /// after everything settled).
    pub(crate) close_busy: bool,
    /// `Config::dead_letter_capacity`, if not the default: the driver then polls dead letters
    /// only now and then (on `handle_timeout`), and the overflow is dropped and counted.
    pub(crate) dead_letter_capacity: Option<usize>,
    /// Outside timers are numbered by the world and scheduled with `Router::schedule_as` (as the
    /// executors do), not numbered by the router with `Router::schedule`. The routers then also
    /// defer idle time (`Router::defer_idle_time`), as the executors' shards do.
    pub(crate) numbered_timers: bool,
    /// The settings of each kind (see [`kinds`](crate::kinds)), or `None`: the routers have no
    /// kinds.
    pub(crate) kinds: Option<Vec<Settings>>,
    pub(crate) scripts: Vec<Vec<Instr>>,
    pub(crate) ops: Vec<Op>,
}

impl Plan {
    /// Decodes a plan from any bytes; every input is a valid plan (short inputs give short plans).
    pub fn from_bytes(data: &[u8]) -> Plan {
        let mut u = Unstructured::new(data);
        Plan::decode(&mut u).unwrap_or_else(|_| Plan::empty())
    }

    /// A plan decoded from a stream of pseudo-random bytes: the same seed gives the same plan.
    pub fn from_seed(seed: u64) -> Plan {
        Plan::from_bytes(&seeded_bytes(seed, SEEDED_BYTES))
    }

    /// How many operations the plan performs before the final drain and close.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// True if the plan performs no operation (the final drain and close still run).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The same operations with every router's idle timeout set to `timeout` (zero deactivates
    /// a receiver as soon as its mailbox is empty).
    pub fn with_idle_timeout(mut self, timeout: Duration) -> Plan {
        self.idle_timeout = timeout;
        self
    }

    /// The same operations with every mailbox bounded to `capacity` messages (`None`:
    /// unbounded).
    pub fn with_mailbox_capacity(mut self, capacity: Option<usize>) -> Plan {
        self.mailbox_capacity = capacity.map(|c| c.max(1));
        self
    }

    /// The same operations with at most `batch` messages per `Run`.
    pub fn with_batch_size(mut self, batch: usize) -> Plan {
        self.batch_size = batch.max(1);
        self
    }

    /// The same operations with every router's drain limit set to `limit` (`None`: the
    /// default): a small one stops closing routers draining early, and lets relays run on until
    /// it does.
    pub fn with_drain_limit(mut self, limit: Option<u64>) -> Plan {
        self.drain_limit = limit;
        self
    }

    /// The same operations, with the final close coming while work is still queued and out
    /// (`true`), or after everything settled (`false`).
    pub fn with_close_busy(mut self, busy: bool) -> Plan {
        self.close_busy = busy;
        self
    }

    /// The same operations with the IDs split into [`KINDS`](crate::KINDS) kinds (ID `n` of kind
    /// `n % 3`), kind `k` with `kinds[k]` (missing ones: the router's settings), or without
    /// kinds (`None`).
    pub fn with_kinds(mut self, kinds: Option<&[Settings]>) -> Plan {
        self.kinds = kinds.map(|k| {
            (0..KINDS)
                .map(|i| k.get(i).cloned().unwrap_or_default())
                .collect()
        });
        self
    }

    fn empty() -> Plan {
        Plan {
            two_routers: false,
            idle_timeout: Duration::from_secs(300),
            mailbox_capacity: None,
            batch_size: 64,
            drain_limit: None,
            close_busy: false,
            dead_letter_capacity: None,
            numbered_timers: false,
            kinds: None,
            scripts: Vec::new(),
            ops: Vec::new(),
        }
    }

    fn decode(u: &mut Unstructured<'_>) -> Result<Plan> {
        let two_routers = u.ratio(1, 3)?;
        // Short timeouts make idle deadlines meet timer deadlines and small clock moves.
        // `Duration::MAX`: never deactivated for idleness.
        let idle_timeout = match u.int_in_range(0..=5u8)? {
            0 => Duration::ZERO,
            1 => Duration::from_millis(4),
            2 => Duration::from_millis(40),
            3 => Duration::from_secs(1),
            4 => Duration::from_secs(300),
            _ => Duration::MAX,
        };
        let mailbox_capacity = match u.int_in_range(0..=7u8)? {
            0..=3 => None,
            4 => Some(1),
            5 => Some(2),
            6 => Some(3),
            _ => Some(5),
        };
        let batch_size = match u.int_in_range(0..=3u8)? {
            0 => 1,
            1 => 2,
            2 => 3,
            _ => 64,
        };
        let drain_limit = match u.int_in_range(0..=9u8)? {
            0 => Some(0),
            1 => Some(1),
            2 => Some(2),
            3 => Some(5),
            4 => Some(20),
            _ => None,
        };
        let close_busy = u.ratio(1, 2)?;
        let dead_letter_capacity = match u.int_in_range(0..=15u8)? {
            0 => Some(0),
            1 => Some(1),
            2 => Some(3),
            _ => None,
        };
        let numbered_timers = u.ratio(1, 3)?;
        let kinds = if u.ratio(3, 4)? {
            let mut kinds = Vec::new();
            for _ in 0..KINDS {
                kinds.push(kind_settings(u)?);
            }
            Some(kinds)
        } else {
            None
        };
        let n = u.int_in_range(1..=MAX_SCRIPTS)?;
        let mut scripts = Vec::new();
        for _ in 0..n {
            let len = u.int_in_range(0..=MAX_INSTRS)?;
            let mut script = Vec::new();
            for _ in 0..len {
                script.push(Instr::arbitrary(u)?);
            }
            scripts.push(script);
        }
        let mut ops = Vec::new();
        while !u.is_empty() && ops.len() < MAX_OPS {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Plan {
            two_routers,
            idle_timeout,
            mailbox_capacity,
            batch_size,
            drain_limit,
            close_busy,
            dead_letter_capacity,
            numbered_timers,
            kinds,
            scripts,
            ops,
        })
    }
}

/// One kind's settings: each one the router's, or the kind's own (often the extremes: an idle
/// timeout of zero, a few milliseconds or never, mailboxes of one or two, one message a run).
fn kind_settings(u: &mut Unstructured<'_>) -> Result<Settings> {
    let mut settings = Settings::default();
    settings = match u.int_in_range(0..=9u8)? {
        0..=2 => settings,
        3 => settings.idle_timeout(Duration::ZERO),
        4 => settings.idle_timeout(Duration::from_millis(4)),
        // Kept in whole milliseconds, like a receiver's own: 4 ms.
        5 => settings.idle_timeout(Duration::from_micros(4_700)),
        6 => settings.idle_timeout(Duration::from_millis(40)),
        7 => settings.idle_timeout(Duration::from_secs(1)),
        8 => settings.idle_timeout(Duration::MAX),
        // Now and then at the edges of time, like a receiver's own.
        _ => settings.idle_timeout(timeout(u.arbitrary()?)),
    };
    settings = match u.int_in_range(0..=4u8)? {
        0..=2 => settings,
        3 => settings.mailbox_capacity(1),
        _ => settings.mailbox_capacity(2),
    };
    Ok(match u.int_in_range(0..=3u8)? {
        0 | 1 => settings,
        2 => settings.batch_size(1),
        _ => settings.batch_size(2),
    })
}

/// Where a scripted send goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Id(Id),
    /// A handle the world has seen, live or stale (counted from the newest).
    Handle(u8),
    /// The sender's own handle.
    Me,
}

impl Target {
    pub(crate) fn from_byte(b: u8) -> Target {
        match b % 16 {
            0..=9 => Target::Id(Id(b % IDS)),
            10..=13 => Target::Handle(b / 16),
            _ => Target::Me,
        }
    }
}

/// One thing a scripted receiver does while it handles a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Instr {
    Send {
        to: Target,
        script: u8,
    },
    /// Sends the message's own script on to `to`: a message that keeps itself going, from
    /// receiver to receiver or to the same one. Like any send it spends the budget, except on a
    /// router closing under a drain limit: there it goes on until the limit stops it.
    Relay {
        to: Target,
    },
    /// Schedules a message to `to` (itself if `None`).
    Schedule {
        to: Option<Id>,
        after: Duration,
        script: u8,
    },
    /// Cancels a timer the world has seen (counted from the newest).
    Cancel {
        timer: u8,
    },
    Become,
    Stop,
    Panic,
    IdleTimeout {
        after: Duration,
    },
    /// Starts work whose outcome (a message naming `script`) comes back later: ready at once,
    /// or (`gate`) when the world answers or drops its gate.
    Spawn {
        gate: bool,
        script: u8,
    },
    /// Asks `to` (itself if `None`) with a request naming `script`; the answer, or why there is
    /// none, comes back naming `reply_script`.
    Ask {
        to: Option<Id>,
        script: u8,
        reply_script: u8,
        timeout: Duration,
    },
    /// Answers the reply of the message being handled (an ask's request), if it has one.
    Answer,
    /// Keeps the reply of the message being handled, to answer later.
    Keep,
    /// Answers the oldest reply this instance kept, if any.
    AnswerKept,
}

impl<'a> Arbitrary<'a> for Instr {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let kind: u8 = u.arbitrary()?;
        Ok(match kind {
            0..=69 => Instr::Send {
                to: Target::from_byte(u.arbitrary()?),
                script: u.arbitrary()?,
            },
            70..=81 => Instr::Relay {
                to: Target::from_byte(u.arbitrary()?),
            },
            82..=119 => Instr::Schedule {
                to: id_or_self(u.arbitrary()?),
                after: timeout(u.arbitrary()?),
                script: u.arbitrary()?,
            },
            120..=136 => Instr::Cancel {
                timer: u.arbitrary()?,
            },
            137..=152 => Instr::Become,
            153..=165 => Instr::Stop,
            166..=175 => Instr::Panic,
            176..=187 => Instr::IdleTimeout {
                after: timeout(u.arbitrary()?),
            },
            188..=205 => Instr::Spawn {
                gate: u.ratio(2, 3)?,
                script: u.arbitrary()?,
            },
            206..=229 => Instr::Ask {
                to: id_or_self(u.arbitrary()?),
                script: u.arbitrary()?,
                reply_script: u.arbitrary()?,
                timeout: timeout(u.arbitrary()?),
            },
            230..=243 => Instr::Answer,
            244..=249 => Instr::Keep,
            _ => Instr::AnswerKept,
        })
    }
}

fn id_or_self(b: u8) -> Option<Id> {
    (b >= 128).then_some(Id(b % IDS))
}

/// A delay from one byte: mostly a few milliseconds, sometimes whole seconds.
pub(crate) fn delay(b: u8) -> Duration {
    match b {
        0..=199 => Duration::from_millis(u64::from(b)),
        _ => Duration::from_secs(u64::from(b - 199) * 7),
    }
}

/// A timer's delay or an idle timeout from one byte: mostly a [`delay`], and now and then one
/// at the edges of time: `Duration::MAX` (past the end of representable time: never), or just
/// below, at and above the longest idle timeout a receiver can set (2^32 - 2 milliseconds,
/// about 49.7 days; as a timer's delay those are far off but due).
pub(crate) fn timeout(b: u8) -> Duration {
    match b {
        0..=249 => delay(b),
        250 | 251 => Duration::MAX,
        252 => Duration::from_millis(NEVER_IDLE_MS - 1),
        253 => Duration::from_millis(NEVER_IDLE_MS),
        254 => Duration::from_secs(49 * 24 * 3600),
        _ => Duration::from_secs(60 * 24 * 3600),
    }
}

/// How a driver handles a command it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `Router::handle`: inline, with the factory for `Activate`.
    Inline,
    /// `Router::activate` for `Activate`; `check_out` into the pool of jobs for the others.
    CheckOut,
}

/// One step of the world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// An outside send by ID to router `router`.
    Send { router: u8, to: Id, script: u8 },
    /// An outside send by a handle the world has seen (maybe stale).
    SendHandle { router: u8, handle: u8, script: u8 },
    /// An outside timer.
    Schedule {
        router: u8,
        to: Id,
        after: Duration,
        script: u8,
    },
    /// An outside cancel of a timer the world has seen.
    Cancel { router: u8, timer: u8 },
    /// Takes a pending command (any of them, not only the oldest) and handles it.
    Handle { which: u8, mode: Mode, luck: u8 },
    /// Runs a checked-out job (on "another thread"), leaving it to be checked in later.
    Execute { which: u8 },
    /// Checks a job in (running it first if it has not run), in any order.
    CheckIn { which: u8 },
    /// Delivers messages in transit between the two routers, oldest first.
    Forward { count: u8 },
    /// Moves the clock forward.
    Advance { by: Duration },
    /// Moves the clock to just before (or at) the next deadline of some router.
    AdvanceToDeadline { early: u8 },
    /// `handle_timeout(now)` on one router.
    Tick { router: u8 },
    /// Starts closing one router.
    Close { router: u8 },
    /// A driver mistake that the router must refuse: `check_out`, `run` or `activate` out of turn.
    Misuse { handle: u8, kind: u8 },
    /// `Router::id` and `Router::addr` agree with the model.
    Lookup { handle: u8, to: Id },
    /// Takes the next task a router hands out (`Router::poll_task`).
    TakeTask { router: u8 },
    /// Polls the future of a task taken and not finished, any of them.
    PollTask { which: u8 },
    /// Gives a finished task's outcome back to its router (`Router::complete`), any of them; or,
    /// if `stray` and there are two routers, to the other router, a driver mistake it must
    /// refuse (the outcome is then lost, and its task stays in flight until its instance goes).
    Complete { which: u8, stray: bool },
    /// Answers (or drops) the gate of spawned work, any of them.
    Resolve { which: u8, answer: bool },
}

impl<'a> Arbitrary<'a> for Op {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let kind: u8 = u.arbitrary()?;
        let a: u8 = u.arbitrary()?;
        let b: u8 = u.arbitrary()?;
        let id = Id(b % IDS);
        Ok(match kind {
            0..=44 => Op::Send {
                router: a,
                to: id,
                script: b / IDS,
            },
            45..=52 => Op::SendHandle {
                router: a,
                handle: b,
                script: a / 2,
            },
            53..=62 => Op::Schedule {
                router: a,
                to: id,
                after: timeout(u.arbitrary()?),
                script: a / 2,
            },
            63..=66 => Op::Cancel {
                router: a,
                timer: b,
            },
            67..=124 => Op::Handle {
                which: a,
                mode: if b.is_multiple_of(3) {
                    Mode::Inline
                } else {
                    Mode::CheckOut
                },
                luck: b,
            },
            125..=144 => Op::Execute { which: a },
            145..=174 => Op::CheckIn { which: a },
            175..=182 => Op::Forward { count: a % 4 + 1 },
            183..=189 => Op::Advance { by: delay(a) },
            // Small steps, so that deadlines a few milliseconds apart are reached one by one.
            190..=195 => Op::Advance {
                by: Duration::from_millis(u64::from(a % 8)),
            },
            196..=201 => Op::AdvanceToDeadline { early: a % 3 },
            202..=211 => Op::Tick { router: a },
            // Closing ends most of a plan's interest, so it is rare.
            212 if b < 64 => Op::Close { router: a },
            213..=216 => Op::Misuse { handle: a, kind: b },
            220..=230 => Op::TakeTask { router: a },
            231..=242 => Op::PollTask { which: a },
            243..=249 => Op::Complete {
                which: a,
                stray: b < 12,
            },
            250..=255 => Op::Resolve {
                which: a,
                answer: !b.is_multiple_of(4),
            },
            _ => Op::Lookup { handle: a, to: id },
        })
    }
}

/// `n` pseudo-random bytes from `seed` (SplitMix64): stable across platforms and versions.
pub(crate) fn seeded_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut state = seed;
    let mut out = Vec::with_capacity(n + 8);
    while out.len() < n {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(n);
    out
}
