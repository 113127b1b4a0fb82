//! Shards that any thread of a crew may run, one thread at a time: the pool executor's threads.
//!
//! Each shard sits in a slot behind a mutex and has a *home* thread, which turns it while it
//! is busy, watches briefly for mail when it parks (see [`Watch`]), then sleeps on the shard's
//! bell. A thread that
//! wakes a parked shard of its own crew (a receiver's mail to another shard, pushed at the end
//! of a turn) does not ring that shard's bell: it owes the shard a turn. When its own shard has
//! nothing left, it pays what it owes by turning those shards itself, if no thread holds them,
//! and rings their bells otherwise. A conversation between two shards then stays on one
//! thread: no futex, no cache lines moving between cores, the other thread asleep. When its
//! own shard is busy, it rings at once, so that independent work keeps both threads.
//!
//! The rules, which the loom models at the end check (no shard with mail is left unrun):
//! - A wake-up is a token: the inbox's `parked` flag is cleared by exactly one pusher, which
//!   then calls [`Wake::wake`]. From a thread of the same crew, [`Deferred`] keeps the token
//!   in the thread's owed list; from anywhere else it rings the home thread's bell.
//! - A token is paid by a turn that starts after the push (that turn takes the mail, or its
//!   park check finds it) or by ringing the home bell (the home thread then locks the slot,
//!   waiting for whoever holds it, and turns). A guest that finds the slot held rings: the
//!   holder may be past its park check and about to let go.
//! - A thread pays its owed list after every turn (mail between shards is pushed at the end of
//!   a turn anyway; a handle's send inside a receiver waits for the turn's end to be run): by
//!   ringing if its home shard is still busy, by turning the shards as a guest (one turn each)
//!   if its home shard parked, and by ringing whatever is left if it stops (its home shard
//!   exited, or it panicked).
//! - A guest hands a shard back to its home thread (rings) if the turn leaves it busy, if it
//!   parks with an earlier deadline than the one its home thread sleeps until (a timer set
//!   during the guest's turn), and when it exits (so the home thread ends too).

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as StdOrdering};
use std::time::Instant;

// Loom's mutex for the models (see `loom_model` at the end); its `try_lock` fails with std's
// error type.
#[cfg(all(test, hermes_loom))]
use loom::sync::{Mutex, MutexGuard};
use std::sync::TryLockError;
#[cfg(not(all(test, hermes_loom)))]
use std::sync::{Mutex, MutexGuard};

use crossbeam_utils::CachePadded;
use hermes_core::{Factory, SystemClock};
use hermes_reply::poll_briefly;

use crate::handle::{Hermes, Runtime, launch};
use crate::shard::{Core, mail_soon};
use crate::{Key, Message, Options, Shard, Turn, Wake};

/// How a thread whose home shard parked waits briefly for an answer before it sleeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Not at all: the shard took and sent nothing since it last parked (a timer tick).
    No,
    /// On the shard's inbox, which counts as awake meanwhile, so that pushes ring nothing: the
    /// shard took mail (from outside: an asker, a sender) but sent none to other shards.
    Inbox,
    /// On the bell, the shard staying parked: it sent mail to other shards, so the answer will
    /// likely come from a thread of the crew, which then owes the shard a turn and may run it
    /// itself (watching the inbox would keep the conversation on two threads).
    Bell,
}

/// What a crew runs: a shard (or, in the models, a stand-in).
pub(crate) trait Unit: Send {
    /// What [`watch_inbox`](Unit::watch_inbox) watches, kept outside the slot's lock.
    type Inbox: Send + Sync;
    /// One turn, as [`Shard::turn`].
    fn turn(&mut self) -> Turn;
    /// How to watch before sleeping, from what the unit took and sent since this was last
    /// asked.
    fn watch(&mut self) -> Watch;
    /// The unit's inbox, for [`watch_inbox`](Unit::watch_inbox).
    fn inbox(&self) -> Self::Inbox;
    /// Watches the inbox briefly, as [`Shard::run_blocking`] does: true if mail came, false if
    /// the unit is parked again.
    fn watch_inbox(inbox: &Self::Inbox, deadline: Option<Instant>) -> bool;
}

impl<K: Key, M: Message> Unit for Shard<K, M> {
    type Inbox = (Arc<Core<K, M>>, usize);

    fn turn(&mut self) -> Turn {
        Shard::turn(self, &SystemClock)
    }

    fn watch(&mut self) -> Watch {
        self.take_watch()
    }

    fn inbox(&self) -> Self::Inbox {
        (self.core(), self.index() as usize)
    }

    fn watch_inbox((core, index): &Self::Inbox, deadline: Option<Instant>) -> bool {
        mail_soon(&core.inboxes[*index], deadline)
    }
}

/// What [`Crew::launch`] returns: the handle, the crew, and the waiting end of each shard's
/// bell, in shard order.
pub type Crewed<K, M, A, P> = (Hermes<K, M, A>, Crew<K, M>, Vec<P>);

/// Hermes's shards, run by a crew of threads, one per shard. Each thread has a home shard,
/// which it runs while it has work, and, when it has none, also runs the shards its home shard
/// just sent mail to (if no thread is running them) instead of waking their threads. See
/// [`Crew::run`].
///
/// ```
/// use hermes_core::{Activation, Config, Context};
/// use hermes_executor::{Crew, Options, Runtime, Wake};
///
/// struct Bell(std::sync::mpsc::SyncSender<()>);
/// impl Wake for Bell {
///     fn wake(&self) { let _ = self.0.try_send(()); }
/// }
/// struct NoTasks;
/// impl Runtime for NoTasks {
///     fn spawn(&self, _: hermes_executor::Spawned) { unreachable!("no receiver starts work") }
/// }
///
/// let options = Options::new(Config::default()).shards(2);
/// let factory = |_: &u64| Activation::ready(|_: &mut Context<'_, u64, u64>, _: u64| {});
/// let (hermes, crew, bells) = Crew::launch(options, factory, NoTasks, || {
///     let (tx, rx) = std::sync::mpsc::sync_channel(1);
///     (Bell(tx), rx)
/// });
/// let threads: Vec<_> = bells.into_iter().enumerate().map(|(home, bell)| {
///     let crew = crew.clone();
///     std::thread::spawn(move || crew.run(
///         home,
///         |deadline| match deadline {
///             Some(d) => { let _ = bell.recv_timeout(d.saturating_duration_since(std::time::Instant::now())); }
///             None => { let _ = bell.recv(); }
///         },
///         || bell.try_recv().is_ok(),
///     ))
/// }).collect();
/// hermes.send(7, 1).unwrap();
/// assert_eq!(hermes.shutdown().unwrap().deactivations, 1);
/// for thread in threads { thread.join().unwrap(); }
/// ```
pub struct Crew<K: Key, M: Message> {
    slots: Arc<Slots<Shard<K, M>>>,
}

impl<K: Key, M: Message> Clone for Crew<K, M> {
    fn clone(&self) -> Self {
        Crew {
            slots: Arc::clone(&self.slots),
        }
    }
}

impl<K: Key, M: Message> std::fmt::Debug for Crew<K, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Crew")
            .field("shards", &self.slots.slots.len())
            .finish_non_exhaustive()
    }
}

impl<K: Key, M: Message> Crew<K, M> {
    /// As [`launch`], but the shards go to a crew: call [`run`](Crew::run) once per shard,
    /// each on a thread of its own, with the waiting end of that shard's bell (the `Vec`, in
    /// shard order).
    pub fn launch<F: Factory<K, M>, W: Wake, P>(
        options: Options<K, M>,
        factory: F,
        runtime: impl Runtime,
        mut bell: impl FnMut() -> (W, P),
    ) -> Crewed<K, M, F::App, P> {
        let crew = next_crew();
        let mut bells: Vec<Arc<dyn Wake>> = Vec::new();
        let (hermes, shards) = launch(options, factory, runtime, || {
            let (wake, park) = bell();
            let wake: Arc<dyn Wake> = Arc::new(wake);
            let deferred = Deferred {
                crew,
                shard: bells.len(),
                bell: Arc::clone(&wake),
            };
            bells.push(wake);
            (deferred, park)
        });
        let (units, parks): (Vec<_>, Vec<_>) = shards.into_iter().unzip();
        let slots = Slots::new(crew, units, bells);
        let crew = Crew {
            slots: Arc::new(slots),
        };
        (hermes, crew, parks)
    }

    /// Runs the crew on this thread, with shard `home` as its home, until that shard exits.
    /// `park(deadline)` sleeps until the home shard's bell rings or the deadline (if any)
    /// passes; `rung()` says, without sleeping, whether the bell has rung (and takes the ring):
    /// after a turn that took or sent mail, the thread polls it for a few tens of microseconds
    /// before it sleeps, so that an answer on its way costs no sleep and wake-up.
    ///
    /// Receivers of any shard may run on any thread of the crew, one shard on one thread at a
    /// time.
    ///
    /// # Panics
    ///
    /// If `home` is not a shard of this crew.
    pub fn run(&self, home: usize, park: impl FnMut(Option<Instant>), rung: impl FnMut() -> bool) {
        self.slots.run(home, park, rung);
    }

    /// For a shard whose thread could not be started: closes it on this thread (its queued
    /// messages drain and every live receiver's `deactivated` hook runs), so that shutdown
    /// does not wait for it. Call it before dropping the handle. Does nothing to a shard that
    /// has already exited or to an index out of range.
    pub fn abandon(&self, home: usize) {
        if home < self.slots.slots.len() {
            let unit = self.slots.lock(home).unit.take();
            drop(unit);
        }
    }
}

/// Gives each crew a number of its own, so that a thread defers only wakes of its own crew.
fn next_crew() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, StdOrdering::Relaxed)
}

/// The tokens a crew thread owes: shards (by index) it woke and has not turned or rung yet.
struct Owed {
    crew: usize,
    shards: Vec<usize>,
}

#[cfg(not(all(test, hermes_loom)))]
std::thread_local! {
    static OWED: RefCell<Option<Owed>> = const { RefCell::new(None) };
}
#[cfg(all(test, hermes_loom))]
loom::thread_local! {
    static OWED: RefCell<Option<Owed>> = RefCell::new(None);
}

/// A shard's [`Wake`] in a crew: on a thread of the same crew, notes the shard as owed
/// instead of ringing (the thread turns it or rings after its turn); anywhere else, rings.
pub(crate) struct Deferred {
    crew: usize,
    shard: usize,
    bell: Arc<dyn Wake>,
}

impl Wake for Deferred {
    fn wake(&self) {
        let deferred = OWED.with(|owed| match owed.borrow_mut().as_mut() {
            Some(owed) if owed.crew == self.crew => {
                owed.shards.push(self.shard);
                true
            }
            _ => false,
        });
        if !deferred {
            self.bell.wake();
        }
    }
}

/// One shard's place in the crew.
struct Held<U> {
    /// `None` once it has exited (or was closed after a thread panicked while turning it).
    unit: Option<U>,
    /// The deadline its home thread parked it with last, and sleeps until: a guest that parks
    /// it with an earlier one rings the home thread.
    home_deadline: Option<Instant>,
}

/// The crew's shared state, generic so that the loom models run it with stand-in units.
pub(crate) struct Slots<U: Unit> {
    crew: usize,
    /// Each on cache lines of its own: a shard's state is written by the thread turning it,
    /// which is not its neighbour's.
    slots: Box<[CachePadded<Mutex<Held<U>>>]>,
    /// Each shard's inbox, for its home thread's watch.
    inboxes: Box<[U::Inbox]>,
    /// Each shard's bell, which rings its home thread (not [`Deferred`]).
    bells: Box<[Arc<dyn Wake>]>,
    /// A deliberate bug for the models.
    #[cfg(all(test, hermes_loom))]
    bug: Option<loom_model::Bug>,
}

impl<U: Unit> Slots<U> {
    fn new(crew: usize, units: Vec<U>, bells: Vec<Arc<dyn Wake>>) -> Self {
        Slots {
            crew,
            inboxes: units.iter().map(Unit::inbox).collect(),
            slots: units
                .into_iter()
                .map(|unit| {
                    CachePadded::new(Mutex::new(Held {
                        unit: Some(unit),
                        home_deadline: None,
                    }))
                })
                .collect(),
            bells: bells.into(),
            #[cfg(all(test, hermes_loom))]
            bug: None,
        }
    }

    /// The thread loop of [`Crew::run`].
    fn run(
        &self,
        home: usize,
        mut park: impl FnMut(Option<Instant>),
        mut rung: impl FnMut() -> bool,
    ) {
        assert!(home < self.slots.len(), "shard {home} is not in this crew");
        let _member = Member::enter(self, home);
        while let Some((deadline, watch)) = self.turn_home(home) {
            if self.pay_owed(home, deadline) {
                continue;
            }
            let mail = match watch {
                Watch::No => false,
                Watch::Inbox => U::watch_inbox(&self.inboxes[home], deadline),
                Watch::Bell => poll_briefly(deadline, &mut rung),
            };
            if !mail {
                park(deadline);
            }
        }
    }

    /// Turns the home shard until it parks (its deadline and how to watch) or exits (`None`);
    /// after each busy turn, rings what the turn woke.
    fn turn_home(&self, home: usize) -> Option<(Option<Instant>, Watch)> {
        let mut held = self.lock(home);
        // The first turn in its slot: a turn that parks (every turn of a conversation between
        // shards) moves nothing. Moving the shard out and back cost a hop about 240
        // instructions of `memcpy` (benches/README.md, "The shard's turn, cut").
        let mut turn = held.unit.as_mut()?.turn();
        if turn == Turn::Busy {
            // Busy: turned from this thread's stack until it parks (the slot stays locked, so
            // no guest can want it). In its heap slot, the pool's `tell_batched` ran 24 %
            // slower with the same instructions (benches/README.md, "Cross-shard ping-pong on
            // one core").
            let mut unit = held.unit.take()?;
            while turn == Turn::Busy {
                self.ring_owed(home);
                turn = unit.turn();
            }
            held.unit = Some(unit);
        }
        match turn {
            Turn::Park(deadline) => {
                let watch = held.unit.as_mut()?.watch();
                held.home_deadline = deadline;
                // Loom does not switch threads at an unlock: let it, so that a push between
                // the park check and the unlock (which finds the slot held) is explored.
                #[cfg(all(test, hermes_loom))]
                loom::thread::yield_now();
                Some((deadline, watch))
            }
            // `Exit` (the loop above leaves no `Busy`): the shard is dropped under the lock.
            _ => {
                held.unit = None;
                None
            }
        }
    }

    /// Pays the owed list with guest turns, after the home shard parked: true as soon as the
    /// home shard is owed a turn or its `deadline` has passed, false once nothing is owed.
    fn pay_owed(&self, home: usize, deadline: Option<Instant>) -> bool {
        while let Some(shard) = pop_owed() {
            if shard == home {
                return true;
            }
            self.guest(shard);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return true;
            }
        }
        false
    }

    /// Turns `shard` once as a guest, or rings its home thread if another thread holds it.
    fn guest(&self, shard: usize) {
        let mut held = match self.slots[shard].try_lock() {
            Ok(held) => held,
            Err(TryLockError::WouldBlock) => {
                #[cfg(all(test, hermes_loom))]
                if self.bug == Some(loom_model::Bug::DropWhenHeld) {
                    return;
                }
                return self.bells[shard].wake();
            }
            Err(TryLockError::Poisoned(poisoned)) => {
                drop(self.recover(shard, poisoned.into_inner()));
                return;
            }
        };
        let Some(unit) = held.unit.as_mut() else {
            return;
        };
        let turn = unit.turn();
        // What a guest's turn took and sent is no guide to how the home thread should watch.
        let _ = unit.watch();
        let hand_back = match turn {
            Turn::Busy => true,
            Turn::Park(deadline) => match (deadline, held.home_deadline) {
                (Some(at), Some(home)) => at < home,
                (at, _) => at.is_some(),
            },
            Turn::Exit => {
                held.unit = None;
                true
            }
        };
        drop(held);
        if hand_back {
            self.bells[shard].wake();
        }
    }

    /// Rings every shard owed but `home` (which is turning: its own turn covers its tokens).
    fn ring_owed(&self, home: usize) {
        while let Some(shard) = pop_owed() {
            #[cfg(all(test, hermes_loom))]
            if self.bug == Some(loom_model::Bug::ForgetOwed) {
                continue;
            }
            if shard != home {
                self.bells[shard].wake();
            }
        }
    }

    /// Locks a shard's slot, waiting for the thread that holds it.
    fn lock(&self, shard: usize) -> MutexGuard<'_, Held<U>> {
        match self.slots[shard].lock() {
            Ok(held) => held,
            Err(poisoned) => self.recover(shard, poisoned.into_inner()),
        }
    }

    /// A thread panicked outside any receiver while it turned `shard` (or `shard` is its home):
    /// closes the shard (its `Drop` drains it and runs every `deactivated` hook, as when a
    /// shard's own thread panicked) and rings its home thread, which then ends.
    fn recover<'a>(
        &self,
        shard: usize,
        mut held: MutexGuard<'a, Held<U>>,
    ) -> MutexGuard<'a, Held<U>> {
        tracing::error!(
            shard,
            "a crew thread panicked outside any receiver: closing this shard"
        );
        drop(held.unit.take());
        #[cfg(not(all(test, hermes_loom)))]
        self.slots[shard].clear_poison();
        self.bells[shard].wake();
        held
    }
}

/// Takes the last shard owed by this thread.
fn pop_owed() -> Option<usize> {
    OWED.with(|owed| {
        owed.borrow_mut()
            .as_mut()
            .and_then(|owed| owed.shards.pop())
    })
}

/// This thread's membership of a crew, from [`Slots::run`] to its end: while it lasts, wakes
/// of the crew's shards are owed, not rung. Ending (or unwinding), it rings what is still
/// owed; unwinding, it also closes the home shard.
struct Member<'a, U: Unit> {
    slots: &'a Slots<U>,
    home: usize,
}

impl<'a, U: Unit> Member<'a, U> {
    fn enter(slots: &'a Slots<U>, home: usize) -> Self {
        OWED.with(|owed| {
            *owed.borrow_mut() = Some(Owed {
                crew: slots.crew,
                shards: Vec::new(),
            })
        });
        Member { slots, home }
    }
}

impl<U: Unit> Drop for Member<'_, U> {
    fn drop(&mut self) {
        // Loom unwinds every thread of a model that failed; its thread-locals are gone then.
        #[cfg(all(test, hermes_loom))]
        if std::thread::panicking() {
            return;
        }
        let owed = OWED.with(|owed| owed.borrow_mut().take());
        if std::thread::panicking() {
            // Outside any receiver (receivers' panics are caught): a bug. Close the home shard,
            // as its own thread's end did before crews, and ring every shard, so that one this
            // thread held as a guest (its slot now poisoned) is closed by its home thread.
            let held = match self.slots.slots[self.home].lock() {
                Ok(held) => held,
                Err(poisoned) => poisoned.into_inner(),
            };
            drop(self.slots.recover(self.home, held));
            for bell in self.slots.bells.iter() {
                bell.wake();
            }
            return;
        }
        for shard in owed.into_iter().flat_map(|owed| owed.shards) {
            self.slots.bells[shard].wake();
        }
    }
}

/// Model-checked tests of the crew's protocol (owed wakes, guest turns, hand-backs), on the
/// real [`Slots`] and [`Inbox`](crate::inbox::Inbox) with loom's mutexes and atomics: two
/// stand-in shards bounce a ball between them, each with its home thread, and loom runs every
/// interleaving (up to a preemption bound). A shard left with mail and no thread to run it is a
/// deadlock (both threads wait on their bells), which loom reports. Only with `--cfg
/// hermes_loom`, run as the inbox's models are. The threads do not watch their bells before
/// sleeping on their bells (a watch that sees the ring only takes it earlier than the wait
/// would); one model has them watch their inboxes.
#[cfg(all(test, hermes_loom))]
mod loom_model {
    use super::*;
    use crate::inbox::loom_model::{Bell, Permit, model};
    use crate::inbox::{Envelope, Inbox, Limit};
    use hermes_core::Recipient;

    // Shared through std's `Arc` (see `Bell`): a failed model unwinds its threads.
    type Mailbox = Arc<Inbox<u64, u64>>;

    /// Deliberate bugs, to show that the models catch them.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) enum Bug {
        /// A guest that finds a shard held by another thread drops the token instead of ringing
        /// the shard's home thread.
        DropWhenHeld,
        /// A thread whose home shard is busy drops what it owes instead of ringing it.
        ForgetOwed,
    }

    /// A stand-in shard: answers each `n` it takes with `n + 1` to the other ball while
    /// `n < last`, and exits after the turn that takes `last - 1` or more.
    struct Ball {
        inbox: Mailbox,
        other: Mailbox,
        last: u64,
        /// Turns that report `Busy` before any parks (the home thread then rings what it owes).
        busy_turns: u32,
        /// How its home thread watches after it parks.
        watch: Watch,
        done: bool,
    }

    impl Unit for Ball {
        type Inbox = Mailbox;

        fn turn(&mut self) -> Turn {
            if self.done {
                return Turn::Exit;
            }
            let mut taken = Vec::new();
            self.inbox.take(&mut taken);
            self.inbox.accepted(taken.len());
            for envelope in taken {
                let Envelope::Deliver(_, n) = envelope else {
                    continue;
                };
                if n < self.last {
                    let answer = Envelope::Deliver(Recipient::Id(0), n + 1);
                    assert!(self.other.push(answer, Limit::Inside).is_ok());
                }
                self.done |= n + 1 >= self.last;
            }
            if self.done {
                return Turn::Exit;
            }
            if self.busy_turns > 0 {
                self.busy_turns -= 1;
                return Turn::Busy;
            }
            // As `Shard::turn` ends.
            if self.inbox.is_pending() || !self.inbox.park() {
                Turn::Busy
            } else {
                Turn::Park(None)
            }
        }

        fn watch(&mut self) -> Watch {
            self.watch
        }

        fn inbox(&self) -> Mailbox {
            Arc::clone(&self.inbox)
        }

        /// As the inbox's models do: two polls (loom needs a bound on spinning).
        fn watch_inbox(inbox: &Mailbox, _: Option<Instant>) -> bool {
            inbox.watch(|pending| {
                pending() || {
                    loom::thread::yield_now();
                    pending()
                }
            })
        }
    }

    /// Two balls in a crew, `last` hops, shard 0 busy for `busy_turns` turns first, the home
    /// threads watching as `watch` says; the first ball is served from outside (by this
    /// thread) after the crew's threads start. (A watch of the bell is a wait that ends
    /// sooner: the models' bells are not polled, `rung` is always false.)
    fn bounce(last: u64, busy_turns: u32, watch: Watch, bug: Option<Bug>) {
        model(move || {
            let crew = next_crew();
            let permits = [Arc::new(Permit::default()), Arc::new(Permit::default())];
            let bells: Vec<Arc<dyn Wake>> = permits
                .iter()
                .map(|p| Arc::new(Bell(Arc::clone(p))) as Arc<dyn Wake>)
                .collect();
            let inboxes: Vec<Mailbox> = (0..2)
                .map(|shard| {
                    let deferred = Deferred {
                        crew,
                        shard,
                        bell: Arc::clone(&bells[shard]),
                    };
                    Arc::new(Inbox::new(Box::new(deferred), 1024))
                })
                .collect();
            let balls = (0..2)
                .map(|shard| Ball {
                    inbox: Arc::clone(&inboxes[shard]),
                    other: Arc::clone(&inboxes[1 - shard]),
                    last,
                    busy_turns: if shard == 0 { busy_turns } else { 0 },
                    watch,
                    done: false,
                })
                .collect();
            let mut slots = Slots::new(crew, balls, bells);
            slots.bug = bug;
            let slots = Arc::new(slots);
            let threads: Vec<_> = (0..2)
                .map(|home| {
                    let slots = Arc::clone(&slots);
                    let permit = Arc::clone(&permits[home]);
                    loom::thread::spawn(move || slots.run(home, |_| permit.wait(), || false))
                })
                .collect();
            let serve = Envelope::Deliver(Recipient::Id(0), 0);
            assert!(inboxes[0].push(serve, Limit::Outside).is_ok());
            for thread in threads {
                thread.join().unwrap();
            }
        });
    }

    /// A ball bounced from one shard to the other and back: every hop's shard runs, by its
    /// home thread or by the other as a guest.
    #[test]
    fn loom_model_crew_runs_every_shard_with_mail() {
        bounce(3, 0, Watch::No, None);
    }

    /// The same with home threads that watch their inbox (counting as awake) before they
    /// sleep, while the other thread may run their shard as a guest.
    #[test]
    fn loom_model_crew_with_threads_watching_their_inbox() {
        bounce(2, 0, Watch::Inbox, None);
    }

    /// The same while the first shard stays busy for a turn: what it owes is rung at once.
    #[test]
    fn loom_model_crew_busy_home_rings_what_it_owes() {
        bounce(2, 1, Watch::No, None);
    }

    /// The model can fail: a guest that finds a shard held by another thread and drops the
    /// token (instead of ringing its home thread) loses the wake-up when the holder was past its
    /// park check, and loom finds the deadlock.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn loom_model_crew_finds_a_token_dropped_when_held() {
        bounce(2, 0, Watch::No, Some(Bug::DropWhenHeld));
    }

    /// The model can fail: a busy home thread that forgets what it owes leaves the other shard
    /// with mail and its thread asleep.
    #[test]
    #[should_panic(expected = "deadlock")]
    fn loom_model_crew_finds_a_forgotten_wake() {
        bounce(2, 1, Watch::No, Some(Bug::ForgetOwed));
    }
}
