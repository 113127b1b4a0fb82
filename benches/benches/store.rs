//! Durable state: saves/s and durable activations/s, `RedbStore` next to `MemoryStore`, with
//! and without group commit, in one run. Prints two markdown tables (the median of a few
//! interleaved repetitions per cell).
//!
//! ```text
//! cargo bench --manifest-path benches/Cargo.toml --bench store
//! ```
//!
//! - **saves/s**: closed-loop savers (each saves an account, waits until the save is durable,
//!   saves the next one) over 100k pre-populated keys, spread over four threads. Either every
//!   save is its own synced transaction (`Store::put`, or a `GroupCommit` with `max_batch(1)`),
//!   or saves go through `StateStore` (the `Durable` path) and its `GroupCommit`, which
//!   coalesces whatever is pending into one transaction. The transaction count comes from
//!   `GroupCommitStats`, so the coalescing is visible.
//! - **durable activations/s**: on the pool executor through the `hermes` facade, with a zero
//!   idle timeout: each of 20k IDs gets one message, so its receiver is activated (the factory
//!   loads its `Durable` state from the store), handles the message, and is deactivated (the
//!   hook saves the state). Timed until every receiver has been deactivated *and* every save is
//!   durable.
//!
//! Run without `--bench` (as `cargo test --benches` does), it does a quick smoke pass with tiny
//! sizes and prints the same tables.

use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use hermes::store::{
    Batch, Codec, Durable, GroupCommitConfig, MemoryStore, RedbStore, StateStore, Store, SyncPolicy,
};
use hermes::{Activation, Config, Context, Deactivation, Receiver};
use serde::{Deserialize, Serialize};

/// What every receiver keeps: an account, about 30 bytes encoded.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Account {
    balance: u64,
    saves: u64,
    owner: String,
}

const ACCOUNT: Codec<Account> = Codec::new(1);

/// Threads the savers are spread over.
const THREADS: usize = 4;

/// How big each measurement is.
struct Sizes {
    /// Keys pre-populated in each store.
    keys: u64,
    /// Savers in the "many savers" rows.
    many_savers: usize,
    /// How long each saves cell runs (then its outstanding saves are drained, and counted).
    window: Duration,
    /// IDs activated per activations cell.
    ids: u64,
    /// IDs activated when every save is its own synced transaction (a few ms each on disk).
    ids_unbatched: u64,
    /// Repetitions of every cell; the median is reported.
    reps: usize,
}

const FULL: Sizes = Sizes {
    keys: 100_000,
    many_savers: 256,
    window: Duration::from_secs(1),
    ids: 20_000,
    ids_unbatched: 300,
    reps: 5,
};

const SMOKE: Sizes = Sizes {
    keys: 1_000,
    many_savers: 16,
    window: Duration::from_millis(20),
    ids: 200,
    ids_unbatched: 10,
    reps: 1,
};

/// Which store a cell runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    Memory,
    Redb,
}

const BACKENDS: [Backend; 2] = [Backend::Memory, Backend::Redb];

fn key(i: u64) -> Vec<u8> {
    format!("acct/{i:06}").into_bytes()
}

fn account(i: u64, saves: u64) -> Account {
    Account {
        balance: 1_000 + i,
        saves,
        owner: format!("owner-{i:06}"),
    }
}

/// Writes `keys` accounts in one transaction.
fn populate(store: &dyn Store, keys: u64) {
    let mut batch = Batch::with_capacity(keys as usize);
    for i in 0..keys {
        batch.put(
            key(i),
            ACCOUNT.encode(&account(i, 0)).expect("encode an account"),
        );
    }
    store.write_batch(batch).expect("populate the store");
}

/// One measurement: `work` items done in `elapsed`, in `txns` transactions, of which
/// `fsyncs` were synced (or synced afterwards by an explicit `Store::sync`).
#[derive(Clone, Copy)]
struct Outcome {
    work: u64,
    elapsed: Duration,
    txns: u64,
    fsyncs: u64,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.work as f64 / self.elapsed.as_secs_f64()
    }
}

/// A group-commit configuration, and its sync policy (which the configuration does not tell).
#[derive(Clone)]
struct Grouping {
    config: GroupCommitConfig,
    sync: SyncPolicy,
}

impl Grouping {
    /// `config` with `sync`.
    fn new(config: GroupCommitConfig, sync: SyncPolicy) -> Self {
        Grouping {
            config: config.sync(sync),
            sync,
        }
    }

    /// Every commit synced, otherwise as `config`.
    fn synced(config: GroupCommitConfig) -> Self {
        Self::new(config, SyncPolicy::EveryCommit)
    }

    /// Commits synced every 100 ms, otherwise as `config`.
    fn synced_every_100ms(config: GroupCommitConfig) -> Self {
        Self::new(config, SyncPolicy::Interval(Duration::from_millis(100)))
    }

    /// Starts a `StateStore` over `store` with this configuration.
    fn start(&self, store: &Arc<dyn Store>) -> Arc<StateStore> {
        StateStore::new(Arc::clone(store), self.config.clone()).expect("start group commit")
    }

    /// Shuts `states` down (everything durable) and returns (transactions, fsyncs).
    fn finish(&self, states: &StateStore, submissions: u64) -> (u64, u64) {
        states.shutdown().expect("flush group commit");
        let stats = states.commits().stats();
        assert_eq!(
            stats.submissions, submissions,
            "every save acknowledged once"
        );
        assert_eq!(stats.failed_commits, 0);
        let fsyncs = if self.sync == SyncPolicy::EveryCommit {
            stats.commits
        } else {
            stats.syncs
        };
        (stats.commits, fsyncs)
    }
}

/// How the saves reach the store.
#[derive(Clone)]
enum Via {
    /// `Codec::save`, i.e. `Store::put`: one synced transaction per save, on the saving thread.
    Put,
    /// `StateStore::save`, through a `GroupCommit`.
    Group(Grouping),
}

struct SaveCase {
    label: &'static str,
    via: Via,
    savers: usize,
}

fn save_cases(sizes: &Sizes) -> Vec<SaveCase> {
    let many = sizes.many_savers;
    vec![
        SaveCase {
            label: "`Store::put`: one synced txn per save",
            via: Via::Put,
            savers: THREADS,
        },
        SaveCase {
            label: "GroupCommit `max_batch(1)`: one synced txn per save",
            via: Via::Group(Grouping::synced(GroupCommitConfig::new().max_batch(1))),
            savers: many,
        },
        SaveCase {
            label: "GroupCommit default (2 ms, EveryCommit)",
            via: Via::Group(Grouping::synced(GroupCommitConfig::new())),
            savers: THREADS,
        },
        SaveCase {
            label: "GroupCommit default (2 ms, EveryCommit)",
            via: Via::Group(Grouping::synced(GroupCommitConfig::new())),
            savers: many,
        },
        SaveCase {
            label: "GroupCommit interval 0, EveryCommit",
            via: Via::Group(Grouping::synced(
                GroupCommitConfig::new().interval(Duration::ZERO),
            )),
            savers: many,
        },
        SaveCase {
            label: "GroupCommit 2 ms, `SyncPolicy::Interval(100 ms)`",
            via: Via::Group(Grouping::synced_every_100ms(GroupCommitConfig::new())),
            savers: many,
        },
    ]
}

/// `threads` threads each save to their own keys, one `Store::put` after another, for `window`.
fn direct_saves(store: &Arc<dyn Store>, sizes: &Sizes, threads: usize) -> Outcome {
    let start = Instant::now();
    let deadline = start + sizes.window;
    let work: u64 = thread::scope(|s| {
        let handles: Vec<_> = (0..threads as u64)
            .map(|t| {
                s.spawn(move || {
                    let mut done = 0;
                    while Instant::now() < deadline {
                        let i = (t + done * threads as u64) % sizes.keys;
                        ACCOUNT
                            .save(store.as_ref(), &key(i), &account(i, done))
                            .expect("save an account");
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("saver")).sum()
    });
    Outcome {
        work,
        elapsed: start.elapsed(),
        txns: work,
        fsyncs: work,
    }
}

/// `savers` closed-loop savers on [`THREADS`] threads save through a `StateStore` for
/// `window`; then their last saves are drained (and counted).
fn grouped_saves(
    store: &Arc<dyn Store>,
    sizes: &Sizes,
    grouping: &Grouping,
    savers: usize,
) -> Outcome {
    let states = grouping.start(store);
    let per_thread = (savers / THREADS).max(1) as u64;
    let stride = per_thread * THREADS as u64;
    let start = Instant::now();
    let deadline = start + sizes.window;
    let work: u64 = thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS as u64)
            .map(|t| {
                let states = &states;
                s.spawn(move || {
                    let (tx, rx) = mpsc::channel();
                    // Saver `n` of thread `t` writes key `t * per_thread + n + round * stride`
                    // (mod keys): no two savers write one key at once, and each walks over the
                    // whole key space.
                    let submit = |n: u64, round: u64| {
                        let i = (t * per_thread + n + round * stride) % sizes.keys;
                        let tx = tx.clone();
                        states.save(&ACCOUNT, &key(i), &account(i, round), move |r| {
                            let _ = tx.send((n, round, r));
                        });
                    };
                    for n in 0..per_thread {
                        submit(n, 0);
                    }
                    let (mut done, mut outstanding) = (0, per_thread);
                    while outstanding > 0 {
                        let (n, round, result) = rx.recv().expect("acks keep coming");
                        result.expect("save an account");
                        done += 1;
                        if Instant::now() < deadline {
                            submit(n, round + 1);
                        } else {
                            outstanding -= 1;
                        }
                    }
                    done
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("saver")).sum()
    });
    let elapsed = start.elapsed();
    let (txns, fsyncs) = grouping.finish(&states, work);
    Outcome {
        work,
        elapsed,
        txns,
        fsyncs,
    }
}

/// A durable account: loaded by the factory, changed by the message, saved on deactivation.
struct Teller(Durable<Account>);

impl Receiver<u64, u64> for Teller {
    fn receive(&mut self, _ctx: &mut Context<'_, u64, u64>, amount: u64) {
        let account = &mut *self.0;
        account.balance += amount;
        account.saves += 1;
    }

    fn deactivated(&mut self, _ctx: &mut Context<'_, u64, u64>, why: Deactivation) {
        self.0.deactivated(why);
    }
}

/// How the activations cell keeps state.
#[derive(Clone)]
enum Keeping {
    /// A plain `u64` in the receiver, no store: what the executor alone does.
    NoStore,
    /// `Durable<Account>` through a `StateStore` with this group commit.
    Durable(Grouping),
}

struct ActivationCase {
    label: &'static str,
    keeping: Keeping,
    /// When every save is its own synced transaction, fewer IDs keep the cell short.
    unbatched: bool,
}

fn activation_cases() -> Vec<ActivationCase> {
    vec![
        ActivationCase {
            label: "no store (plain receiver state, for reference)",
            keeping: Keeping::NoStore,
            unbatched: false,
        },
        ActivationCase {
            label: "`Durable`, GroupCommit `max_batch(1)`: one synced txn per save",
            keeping: Keeping::Durable(Grouping::synced(GroupCommitConfig::new().max_batch(1))),
            unbatched: true,
        },
        ActivationCase {
            label: "`Durable`, GroupCommit default (2 ms, EveryCommit)",
            keeping: Keeping::Durable(Grouping::synced(GroupCommitConfig::new())),
            unbatched: false,
        },
        ActivationCase {
            label: "`Durable`, GroupCommit 2 ms, `SyncPolicy::Interval(100 ms)`",
            keeping: Keeping::Durable(Grouping::synced_every_100ms(GroupCommitConfig::new())),
            unbatched: false,
        },
    ]
}

/// The `i`th of `ids` distinct IDs, spread over the pre-populated keys (a step coprime to
/// 10^n visits every key once).
fn spread(i: u64, keys: u64) -> u64 {
    (i * 7_919) % keys
}

/// The pool with a zero idle timeout: every receiver goes after its one message.
fn churn_config() -> Config {
    Config::default().idle_timeout(Duration::ZERO)
}

/// Sends one message to each of `ids` IDs, waits until every receiver is deactivated (pool
/// shutdown drains) and, with a store, until every save is durable.
fn activations(store: &Arc<dyn Store>, sizes: &Sizes, keeping: Keeping, ids: u64) -> Outcome {
    let (elapsed, stats, txns, fsyncs) = match keeping {
        Keeping::NoStore => {
            let factory = |_: &u64| {
                let mut balance = 0u64;
                Activation::ready(move |_: &mut Context<'_, u64, u64>, amount| {
                    balance = std::hint::black_box(balance + amount);
                })
            };
            let hermes = hermes::pool::start(churn_config(), factory).expect("start the pool");
            let start = Instant::now();
            for i in 0..ids {
                hermes.send(spread(i, sizes.keys), 1).expect("send");
            }
            let stats = hermes.shutdown().unwrap();
            (start.elapsed(), stats, 0, 0)
        }
        Keeping::Durable(grouping) => {
            let states = grouping.start(store);
            let factory = {
                let states = Arc::clone(&states);
                move |id: &u64| match Durable::load(&states, ACCOUNT, key(*id)) {
                    Ok(state) => Activation::ready(Teller(state)),
                    Err(e) => Activation::failed(e),
                }
            };
            let hermes = hermes::pool::start(churn_config(), factory).expect("start the pool");
            let start = Instant::now();
            for i in 0..ids {
                hermes.send(spread(i, sizes.keys), 1).expect("send");
            }
            let stats = hermes.shutdown().unwrap();
            // One save per deactivation, all durable before the clock stops.
            let (txns, fsyncs) = grouping.finish(&states, ids);
            (start.elapsed(), stats, txns, fsyncs)
        }
    };
    assert_eq!(stats.activations, ids);
    assert_eq!(stats.deactivations, ids);
    assert_eq!(stats.dead_letters, 0);
    Outcome {
        work: ids,
        elapsed,
        txns,
        fsyncs,
    }
}

/// The middle outcome by rate.
fn median(mut runs: Vec<Outcome>) -> Outcome {
    runs.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    runs[runs.len() / 2]
}

/// `1234567.8` as `1 234 568`.
fn grouped(x: f64) -> String {
    let digits = format!("{:.0}", x);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// `rate / base` as `×12.3` (or `×0.05`).
fn ratio(rate: f64, base: f64) -> String {
    let r = rate / base;
    if r >= 10.0 {
        format!("×{r:.0}")
    } else if r >= 0.1 {
        format!("×{r:.2}")
    } else {
        format!("×{r:.3}")
    }
}

/// Saves carried by each fsync.
fn per_fsync(o: &Outcome) -> String {
    if o.fsyncs == 0 {
        "–".to_owned()
    } else {
        format!("{:.1}", o.work as f64 / o.fsyncs as f64)
    }
}

/// Runs `cells` (one closure per row and backend) `reps` times, interleaved so that noise
/// spreads over all of them, and returns the median of each.
fn measure(reps: usize, cells: &mut [Box<dyn FnMut() -> Outcome + '_>]) -> Vec<Outcome> {
    let mut runs: Vec<Vec<Outcome>> = vec![Vec::new(); cells.len()];
    for _ in 0..reps {
        for (cell, out) in cells.iter_mut().zip(runs.iter_mut()) {
            out.push(cell());
        }
    }
    runs.into_iter().map(median).collect()
}

/// The two stores under test, pre-populated with the same keys.
struct Stores {
    memory: Arc<dyn Store>,
    redb: Arc<dyn Store>,
}

impl Stores {
    fn get(&self, b: Backend) -> &Arc<dyn Store> {
        match b {
            Backend::Memory => &self.memory,
            Backend::Redb => &self.redb,
        }
    }
}

/// Whether the command line selects `name`: no filter, or a filter that is part of it (as
/// criterion does: `cargo bench ... -- store/saves`).
fn wanted(name: &str) -> bool {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes = if bench { FULL } else { SMOKE };
    let (saves, activations) = (wanted("store/saves"), wanted("store/activations"));
    if !saves && !activations {
        return;
    }

    // On the disk under test (CARGO_TARGET_TMPDIR is benches/target/tmp), not a tmpfs.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("create a tempdir");
    let path = dir.path().join("bench.redb");
    let stores = Stores {
        memory: Arc::new(MemoryStore::new()),
        redb: Arc::new(RedbStore::open(&path).expect("open the redb store")),
    };
    for b in BACKENDS {
        populate(stores.get(b).as_ref(), sizes.keys);
    }
    println!(
        "durable state: {} keys in each store; redb file {}; {} reps, median",
        sizes.keys,
        path.display(),
        sizes.reps
    );
    if saves {
        saves_table(&stores, &sizes);
    }
    if activations {
        activations_table(&stores, &sizes);
    }
}

/// Measures and prints the saves/s table.
fn saves_table(stores: &Stores, sizes: &Sizes) {
    let cases = save_cases(sizes);
    let mut cells: Vec<Box<dyn FnMut() -> Outcome + '_>> = Vec::new();
    for case in &cases {
        for b in BACKENDS {
            let store = stores.get(b);
            cells.push(match &case.via {
                Via::Put => Box::new(move || direct_saves(store, sizes, case.savers)),
                Via::Group(grouping) => {
                    Box::new(move || grouped_saves(store, sizes, grouping, case.savers))
                }
            });
        }
    }
    let saves = measure(sizes.reps, &mut cells);
    println!();
    println!(
        "| saves through | concurrent savers | MemoryStore saves/s | txns | RedbStore saves/s | txns | fsyncs | saves/fsync | redb vs `put` |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let base = saves[1].rate();
    for (case, pair) in cases.iter().zip(saves.chunks(2)) {
        let (mem, rdb) = (&pair[0], &pair[1]);
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            case.label,
            case.savers,
            grouped(mem.rate()),
            mem.txns,
            grouped(rdb.rate()),
            rdb.txns,
            rdb.fsyncs,
            per_fsync(rdb),
            ratio(rdb.rate(), base),
        );
    }
}

/// Measures and prints the durable activations/s table.
fn activations_table(stores: &Stores, sizes: &Sizes) {
    let cases = activation_cases();
    let ids = |case: &ActivationCase, b: Backend| {
        if case.unbatched && b == Backend::Redb {
            sizes.ids_unbatched
        } else {
            sizes.ids
        }
    };
    let mut cells: Vec<Box<dyn FnMut() -> Outcome + '_>> = Vec::new();
    for case in &cases {
        for b in BACKENDS {
            let store = stores.get(b);
            let n = ids(case, b);
            cells.push(Box::new(move || {
                activations(store, sizes, case.keeping.clone(), n)
            }));
        }
    }
    let acts = measure(sizes.reps, &mut cells);
    println!();
    println!(
        "| activate, 1 message, deactivate | MemoryStore activations/s | txns | RedbStore activations/s | IDs | txns | fsyncs | saves/fsync |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (case, pair) in cases.iter().zip(acts.chunks(2)) {
        let (mem, rdb) = (&pair[0], &pair[1]);
        let no_store = matches!(case.keeping, Keeping::NoStore);
        let cell = |text: String| if no_store { "–".to_owned() } else { text };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            case.label,
            grouped(mem.rate()),
            cell(mem.txns.to_string()),
            cell(grouped(rdb.rate())),
            cell(rdb.work.to_string()),
            cell(rdb.txns.to_string()),
            cell(rdb.fsyncs.to_string()),
            cell(per_fsync(rdb)),
        );
    }
}
