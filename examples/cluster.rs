//! A bank on a cluster of Hermes nodes over NATS: accounts live on whichever node owns their
//! ID, their state in JetStream, and every node makes transfers between random accounts,
//! wherever they live.
//!
//! Start a NATS server with JetStream, then one node per terminal:
//!
//! ```text
//! nats-server -js                                  # Debian: apt-get install nats-server
//! cargo run --example cluster -- --nats nats://127.0.0.1:4222 --node a
//! cargo run --example cluster -- --nats nats://127.0.0.1:4222 --node b
//! cargo run --example cluster -- --nats nats://127.0.0.1:4222 --node c
//! ```
//!
//! Each node prints the membership it sees and its transfers every second. Stop one (Ctrl-C,
//! or `kill -9`): after the liveness timeout the others take over its accounts, loading their
//! state from JetStream, and the transfers go on. Start it again: it takes its share back.
//! `--seconds N` leaves the cluster gracefully after N seconds (`cluster/example.sh` runs
//! three nodes so, killing one with SIGKILL on the way).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use hermes::store::{Codec, StoreError};
use hermes::{Activation, Config, Context, Kinds, Receiver, Reply};
use hermes_cluster::{Cluster, ClusterConfig, KvStore, Node};
use serde::{Deserialize, Serialize};

/// An account's number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AccountId(u32);

/// What an account does; idempotent by transfer number, so a request may be retried.
#[derive(Debug, Serialize, Deserialize)]
pub enum AccountMsg {
    /// Take the amount for a transfer: `Ok(true)` taken, `Ok(false)` not enough money.
    Debit(u64, i64, Reply<Result<bool, String>>),
    /// Add the amount for a transfer.
    Credit(u64, i64, Reply<Result<(), String>>),
    /// The balance.
    Balance(Reply<i64>),
}

hermes::app! {
    /// The bank: accounts, with IDs and messages that cross nodes.
    pub app Bank(BankId, BankMsg) #[derive(Serialize, Deserialize)] {
        Account(AccountId => AccountMsg),
    }
}

#[derive(Parser)]
#[command(about = "One node of a bank on a Hermes cluster over NATS")]
struct Args {
    /// The NATS server (with JetStream).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// This node's name (letters, digits, '-', '_').
    #[arg(long)]
    node: String,
    /// The cluster's name.
    #[arg(long, default_value = "demo")]
    cluster: String,
    /// How many accounts the bank has (100 each to start with).
    #[arg(long, default_value_t = 1000)]
    accounts: u32,
    /// Transfers this node makes per second.
    #[arg(long, default_value_t = 20)]
    rate: u32,
    /// Leave the cluster after this many seconds (default: run until stopped).
    #[arg(long)]
    seconds: Option<u64>,
}

const OPENING: i64 = 100;

#[derive(Serialize, Deserialize, Clone, Default)]
struct State {
    balance: i64,
    applied: BTreeMap<u64, bool>,
}

const STATE: Codec<State> = Codec::new(1);

fn load(store: &KvStore, id: AccountId) -> Result<State, StoreError> {
    Ok(STATE
        .load(store, format!("account/{}", id.0).as_bytes())?
        .unwrap_or(State {
            balance: OPENING,
            applied: BTreeMap::new(),
        }))
}

struct Account {
    state: State,
    store: Arc<KvStore>,
}

impl Account {
    /// Saves `next` (compare-and-set): if another node owns this account now, the save fails
    /// and this instance stops.
    fn commit(
        &mut self,
        ctx: &mut Context<'_, AccountId, AccountMsg, Bank>,
        next: State,
    ) -> Result<(), String> {
        let key = format!("account/{}", ctx.id().0);
        match STATE.save(self.store.as_ref(), key.as_bytes(), &next) {
            Ok(()) => {
                self.state = next;
                Ok(())
            }
            Err(e) => {
                ctx.stop();
                Err(e.to_string())
            }
        }
    }
}

impl Receiver<AccountId, AccountMsg, Bank> for Account {
    fn receive(&mut self, ctx: &mut Context<'_, AccountId, AccountMsg, Bank>, msg: AccountMsg) {
        match msg {
            AccountMsg::Debit(transfer, amount, reply) => {
                if let Some(&done) = self.state.applied.get(&transfer) {
                    let _ = reply.send(Ok(done));
                    return;
                }
                let ok = self.state.balance >= amount;
                let mut next = self.state.clone();
                if ok {
                    next.balance -= amount;
                }
                next.applied.insert(transfer, ok);
                let _ = reply.send(self.commit(ctx, next).map(|()| ok));
            }
            AccountMsg::Credit(transfer, amount, reply) => {
                if self.state.applied.contains_key(&transfer) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                let mut next = self.state.clone();
                next.balance += amount;
                next.applied.insert(transfer, true);
                let _ = reply.send(self.commit(ctx, next));
            }
            AccountMsg::Balance(reply) => {
                let _ = reply.send(self.state.balance);
            }
        }
    }
}

/// Asks until the account answers (requests are idempotent); `None` after 30 s.
fn until_answered<R>(
    node: &Node<BankId, BankMsg, Bank>,
    id: AccountId,
    make: impl Fn(Reply<Result<R, String>>) -> AccountMsg,
) -> Option<R>
where
    R: Serialize + serde::de::DeserializeOwned + Send + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Ok(answer)) = node
            .hermes()
            .ask_blocking(id, &make, Duration::from_secs(1))
        {
            return Some(answer);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The cluster's log on stderr: membership changes, hand-offs, a NATS server that went
    // away. `RUST_LOG` overrides it.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,hermes_cluster=info".into()),
        )
        .init();
    let args = Args::parse();
    let config = ClusterConfig::new(&args.nats, &args.cluster, &args.node)
        .heartbeat(Duration::from_millis(250))
        .liveness_timeout(Duration::from_secs(2));
    let cluster = Cluster::connect(config)?;
    let store = cluster.store();
    let accounts = Kinds::<Bank>::new().kind({
        let store = Arc::clone(&store);
        move |id: &AccountId| match load(&store, *id) {
            Ok(state) => Activation::ready(Account {
                state,
                store: Arc::clone(&store),
            }),
            Err(e) => Activation::failed(e),
        }
    });
    let node = cluster.start(Config::default(), accounts)?;
    println!(
        "[{}] joined cluster {:?} as node {:016x}",
        args.node,
        args.cluster,
        node.id().0
    );

    let base = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos() as u64;
    let started = Instant::now();
    let mut rng = base;
    let mut next = || {
        // xorshift: a different sequence per node and run.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let (mut moved, mut refused, mut number) = (0u64, 0u64, base);
    let mut tick = Instant::now();
    while args
        .seconds
        .is_none_or(|s| started.elapsed() < Duration::from_secs(s))
    {
        for _ in 0..args.rate {
            number += 1;
            let from = AccountId((next() % u64::from(args.accounts)) as u32);
            let to = AccountId((next() % u64::from(args.accounts)) as u32);
            let amount = (next() % 20) as i64 + 1;
            let Some(debited) =
                until_answered(&node, from, |r| AccountMsg::Debit(number, amount, r))
            else {
                return Err(format!("account {} did not answer for 30 s", from.0).into());
            };
            if !debited {
                refused += 1;
                continue;
            }
            if until_answered(&node, to, |r| AccountMsg::Credit(number, amount, r)).is_none() {
                return Err(format!("account {} did not answer for 30 s", to.0).into());
            }
            moved += 1;
        }
        if tick.elapsed() >= Duration::from_secs(1) {
            tick = Instant::now();
            let members: Vec<String> = node
                .members()
                .iter()
                .map(|n| format!("{:04x}", n.0 >> 48))
                .collect();
            let stats = node.hermes().stats();
            println!(
                "[{}] members {:?} | transfers: {moved} done, {refused} refused | {} accounts live here",
                args.node, members, stats.live
            );
        }
        std::thread::sleep(Duration::from_millis(1000 / u64::from(args.rate.max(1))));
    }
    node.shutdown();
    println!(
        "[{}] left the cluster: {moved} transfers done, {refused} refused",
        args.node
    );
    Ok(())
}
