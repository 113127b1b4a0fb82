//! The scenarios: each builds its connections, runs, verifies and returns its result.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use hermes_mqtt::{QoS, TopicFilter, TopicName};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Conn, Target};
use crate::flow::{
    self, Ctx, LINGER, Link, Outcome, Phase, Plan, PubSpec, PubState, Ready, Source, SubSpec,
};
use crate::procfs::rss_kb;
use crate::report::Report;

/// What every message-flow scenario takes.
#[derive(Debug, Clone, Args)]
pub struct FlowArgs {
    /// QoS of the publishes and the subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 24: the generator's stamp).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Window per publisher: unacknowledged QoS 1/2 messages at most, and (in throughput
    /// scenarios) messages ahead of its slowest subscriber at most.
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// Seconds published before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Messages per publisher instead of a duration: the run measures until all are sent and
    /// delivered, and --duration only caps it.
    #[arg(long)]
    pub messages: Option<u64>,
}

impl FlowArgs {
    fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce)
    }

    fn window(&self) -> usize {
        self.window.clamp(1, 65_000)
    }

    fn json(&self) -> Value {
        json!({
            "qos": self.qos,
            "payload": self.payload.max(crate::payload::MIN_SIZE),
            "window": self.window(),
            "warmup_s": self.warmup,
            "duration_s": self.duration,
            "messages_per_publisher": self.messages,
        })
    }
}

/// Settings shared by every scenario.
#[derive(Debug, Clone)]
pub struct Common {
    /// The broker.
    pub target: Target,
    /// Connection set-up timeout.
    pub connect_timeout: Duration,
    /// Drain timeout (no progress for this long ends the wait for the last messages).
    pub drain: Duration,
    /// Connections set up at once.
    pub connect_concurrency: usize,
    /// The broker's process, for its RSS.
    pub broker_pid: Option<u32>,
}

impl Common {
    fn ctx(&self) -> Result<Arc<Ctx>, String> {
        Ctx::new(self.target.clone(), self.connect_timeout, self.drain)
    }

    fn salt(&self) -> String {
        format!("{:x}", self.target.salt & 0xFF_FFFF)
    }
}

fn topic(s: String) -> Result<TopicName, String> {
    TopicName::from_bytes(Bytes::from(s.clone())).map_err(|e| format!("topic {s:?}: {e}"))
}

fn filter(s: String) -> Result<TopicFilter, String> {
    TopicFilter::from_bytes(Bytes::from(s.clone())).map_err(|e| format!("filter {s:?}: {e}"))
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

fn link(topic_index: u64) -> Link {
    Link {
        topic_index,
        delivered: Arc::new(AtomicU64::new(0)),
    }
}

/// A subscriber of the given publishers (a contiguous range of ids).
fn sub_spec(
    index: u64,
    client_id: String,
    filters: Vec<(TopicFilter, QoS)>,
    qos: QoS,
    source_base: u32,
    sources: Vec<Option<Source>>,
) -> SubSpec {
    SubSpec {
        index,
        client_id,
        clean: true,
        filters,
        expect_session_present: Some(false),
        qos,
        source_base,
        sources,
        latency: true,
        expect_total: None,
    }
}

/// The fields every flow result has, and its verdict.
fn flow_report(ctx: &Ctx, qos: QoS, outcome: &Outcome, mut report: Report) -> Report {
    let latency = ctx.latency();
    let us = |q: f64| (latency.value_at_quantile(q) as f64 / 1000.0 * 10.0).round() / 10.0;
    report.set("delivered_per_s", json!(outcome.rate().round()));
    report.set(
        "measured_s",
        json!((outcome.measured_s * 1000.0).round() / 1000.0),
    );
    report.set(
        "setup_s",
        json!((outcome.setup_s * 1000.0).round() / 1000.0),
    );
    report.set("sent", json!(outcome.sent));
    report.set("acked", json!(outcome.acked));
    report.set("expected", json!(outcome.expected));
    report.set("delivered", json!(outcome.delivered));
    report.set("lost", json!(outcome.lost));
    report.set("duplicates", json!(outcome.duplicates));
    report.set("out_of_order", json!(outcome.out_of_order));
    report.set("misdelivered", json!(outcome.misdelivered));
    report.set("window_waits", json!(outcome.window_waits));
    if qos == QoS::ExactlyOnce {
        report.set("awaiting_pubrel", json!(outcome.unreleased));
    }
    report.set("generator_cpu_pct", json!(outcome.generator_cpu_pct));
    if outcome.broker_cpu_pct.is_some() {
        report.set("broker_cpu_pct", json!(outcome.broker_cpu_pct));
    }
    if !latency.is_empty() {
        report.set("latency_p50_us", json!(us(0.5)));
        report.set("latency_p99_us", json!(us(0.99)));
        report.set("latency_p999_us", json!(us(0.999)));
        report.set(
            "latency_max_us",
            json!((latency.max() as f64 / 100.0).round() / 10.0),
        );
    }
    if outcome.setup_failed > 0 {
        report.fail(format!(
            "{} connections failed to set up",
            outcome.setup_failed
        ));
    }
    if qos != QoS::AtMostOnce && outcome.lost > 0 {
        report.fail(format!(
            "{} messages lost at QoS {}",
            outcome.lost, qos as u8
        ));
    }
    if qos != QoS::AtMostOnce && outcome.out_of_order > 0 {
        report.fail(format!(
            "{} messages out of order at QoS {}",
            outcome.out_of_order, qos as u8
        ));
    }
    if qos == QoS::ExactlyOnce && outcome.duplicates > 0 {
        report.fail(format!("{} duplicates at QoS 2", outcome.duplicates));
    }
    if outcome.misdelivered > 0 {
        report.fail(format!(
            "{} messages misdelivered (wrong subscriber, QoS or payload)",
            outcome.misdelivered
        ));
    }
    if outcome.delivered_measured == 0 && outcome.setup_failed == 0 {
        report.fail("nothing delivered while measuring".to_string());
    }
    report.errors(&ctx.errors);
    report
}

/// CPU time of the generator and the broker over a span of a scenario.
struct CpuMeter {
    broker_pid: Option<u32>,
    generator: Option<f64>,
    broker: Option<f64>,
    cpus: Vec<crate::procfs::CpuTicks>,
}

impl CpuMeter {
    fn start(broker_pid: Option<u32>) -> Self {
        Self {
            broker_pid,
            generator: crate::procfs::cpu_s(None),
            broker: broker_pid.and_then(|p| crate::procfs::cpu_s(Some(p))),
            cpus: crate::procfs::cpu_ticks(),
        }
    }

    /// Sets `generator_cpu_pct` and `broker_cpu_pct`: % of one core over `elapsed` seconds;
    /// and `cpus`: for each CPU of the machine, the % of its time in tasks, in interrupts
    /// (softirqs: the loopback's TCP work is done there, for the generator and the broker alike)
    /// and idle.
    fn report(&self, report: &mut Report, elapsed: f64) {
        let now = crate::procfs::cpu_ticks();
        if now.len() == self.cpus.len() {
            let cpus: Vec<_> = self
                .cpus
                .iter()
                .zip(&now)
                .map(|(before, after)| {
                    let tasks = after.tasks.saturating_sub(before.tasks);
                    let interrupts = after.interrupts.saturating_sub(before.interrupts);
                    let idle = after.idle.saturating_sub(before.idle);
                    let all = (tasks + interrupts + idle).max(1) as f64;
                    let pct = |t: u64| (t as f64 / all * 100.0).round();
                    json!({"tasks_pct": pct(tasks), "interrupts_pct": pct(interrupts), "idle_pct": pct(idle)})
                })
                .collect();
            report.set("cpus", json!(cpus));
        }
        let pct = |before: Option<f64>, now: Option<f64>| {
            Some(((now? - before?) / elapsed.max(1e-9) * 100.0).round())
        };
        let generator = pct(self.generator, crate::procfs::cpu_s(None));
        report.set("generator_cpu_pct", json!(generator));
        let broker = self.broker_pid.and_then(|p| crate::procfs::cpu_s(Some(p)));
        if let Some(broker) = pct(self.broker, broker) {
            report.set("broker_cpu_pct", json!(broker));
        }
    }
}

/// `pairs`: N publishers, each to its own subscriber on its own topic.
#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    /// Publisher-subscriber pairs.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    #[command(flatten)]
    pub flow: FlowArgs,
}

pub async fn pairs(common: &Common, args: &PairsArgs) -> Result<Report, String> {
    let ctx = common.ctx()?;
    let plan = pairs_plan(common, &args.flow, args.pairs, None)?;
    measure(&ctx, "pairs", ("pairs", args.pairs), &args.flow, plan).await
}

/// Runs `plan` and reports it as `scenario`, of `size`.
async fn measure(
    ctx: &Arc<Ctx>,
    scenario: &'static str,
    size: (&str, usize),
    flow: &FlowArgs,
    plan: Plan,
) -> Result<Report, String> {
    let outcome = flow::run(ctx, plan).await;
    let mut report = Report::new(scenario);
    report.set(size.0, json!(size.1));
    report.merge(flow.json());
    Ok(flow_report(ctx, flow.qos(), &outcome, report))
}

impl FlowArgs {
    /// A publisher to one topic: windowed for throughput, or paced at a `rate`.
    fn publisher(
        &self,
        id: u32,
        index: u64,
        client_id: String,
        topic: TopicName,
        rate: Option<f64>,
    ) -> PubSpec {
        PubSpec {
            id,
            index,
            client_id,
            topics: vec![topic],
            qos: self.qos(),
            payload: self.payload,
            window: self.window(),
            e2e_window: rate.is_none().then_some(self.window() as u64),
            paced: rate.is_some(),
            limit: self.messages,
        }
    }

    /// A run of these connections with these settings.
    fn plan(
        &self,
        common: &Common,
        publishers: Vec<(PubSpec, Arc<PubState>)>,
        subscribers: Vec<SubSpec>,
        rate: Option<f64>,
    ) -> Plan {
        Plan {
            limits: self.messages.map(|m| vec![m; publishers.len()]),
            publishers,
            subscribers,
            warmup: secs(self.warmup),
            duration: secs(self.duration),
            rate,
            rss_pid: common.broker_pid,
            connect_concurrency: common.connect_concurrency,
        }
    }
}

fn pairs_plan(
    common: &Common,
    flow: &FlowArgs,
    pairs: usize,
    rate: Option<f64>,
) -> Result<Plan, String> {
    let salt = common.salt();
    let qos = flow.qos();
    let mut publishers = Vec::new();
    let mut subscribers = Vec::new();
    for i in 0..pairs {
        let name = format!("mb/{salt}/pairs/{i}");
        let l = link(0);
        let st = Arc::new(PubState::new(1, vec![l.clone()], rate.is_none()));
        let client_id = format!("mb-{salt}-p{i}");
        let spec = flow.publisher(
            i as u32,
            2 * i as u64 + 1,
            client_id,
            topic(name.clone())?,
            rate,
        );
        publishers.push((spec, st.clone()));
        let source = Source {
            link: l,
            publisher: st,
            topic_index: 0,
        };
        subscribers.push(sub_spec(
            2 * i as u64,
            format!("mb-{salt}-s{i}"),
            vec![(filter(name)?, qos)],
            qos,
            i as u32,
            vec![Some(source)],
        ));
    }
    Ok(flow.plan(common, publishers, subscribers, rate))
}

/// `fanout`: one publisher, many subscribers on a wildcard filter.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Subscribers.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    #[command(flatten)]
    pub flow: FlowArgs,
}

pub async fn fanout(common: &Common, args: &FanoutArgs) -> Result<Report, String> {
    let ctx = common.ctx()?;
    let salt = common.salt();
    let qos = args.flow.qos();
    let links: Vec<Link> = (0..args.subscribers).map(|_| link(0)).collect();
    let st = Arc::new(PubState::new(1, links.clone(), true));
    let client_id = format!("mb-{salt}-fan-pub");
    let publisher = args
        .flow
        .publisher(0, 0, client_id, topic(format!("mb/{salt}/fan/t"))?, None);
    let wildcard = filter(format!("mb/{salt}/fan/+"))?;
    let subscribers = links
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            let source = Source {
                link: l,
                publisher: st.clone(),
                topic_index: 0,
            };
            let client_id = format!("mb-{salt}-fan-s{i}");
            let filters = vec![(wildcard.clone(), qos)];
            sub_spec(1 + i as u64, client_id, filters, qos, 0, vec![Some(source)])
        })
        .collect();
    let plan = args
        .flow
        .plan(common, vec![(publisher, st)], subscribers, None);
    measure(
        &ctx,
        "fanout",
        ("subscribers", args.subscribers),
        &args.flow,
        plan,
    )
    .await
}

/// `fanin`: many publishers, each on its own topic, one subscriber on a wildcard filter.
#[derive(Debug, Clone, Args)]
pub struct FaninArgs {
    /// Publishers.
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    #[command(flatten)]
    pub flow: FlowArgs,
}

pub async fn fanin(common: &Common, args: &FaninArgs) -> Result<Report, String> {
    let ctx = common.ctx()?;
    let salt = common.salt();
    let qos = args.flow.qos();
    let mut publishers = Vec::new();
    let mut sources = Vec::new();
    for j in 0..args.publishers {
        let l = link(0);
        let st = Arc::new(PubState::new(1, vec![l.clone()], true));
        let client_id = format!("mb-{salt}-in-p{j}");
        let name = topic(format!("mb/{salt}/in/{j}"))?;
        let spec = args
            .flow
            .publisher(j as u32, 1 + j as u64, client_id, name, None);
        publishers.push((spec, st.clone()));
        sources.push(Some(Source {
            link: l,
            publisher: st,
            topic_index: 0,
        }));
    }
    let subscriber = sub_spec(
        0,
        format!("mb-{salt}-in-sub"),
        vec![(filter(format!("mb/{salt}/in/+"))?, qos)],
        qos,
        0,
        sources,
    );
    let plan = args.flow.plan(common, publishers, vec![subscriber], None);
    measure(
        &ctx,
        "fanin",
        ("publishers", args.publishers),
        &args.flow,
        plan,
    )
    .await
}

/// `latency`: pairs publishing at a fixed total rate; latency from the payload's timestamp.
#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Publisher-subscriber pairs; the rate is spread over them in turn.
    #[arg(long, default_value_t = 10)]
    pub pairs: usize,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// QoS of the publishes and the subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 24).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Unacknowledged QoS 1/2 messages per publisher at most (no end-to-end window: the
    /// publishers do not slow down for a slow broker, so its stalls show in the latency).
    #[arg(long, default_value_t = 1000)]
    pub window: usize,
    /// Seconds published before measuring (latencies recorded then are dropped).
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
}

pub async fn latency(common: &Common, args: &LatencyArgs) -> Result<Report, String> {
    let ctx = common.ctx()?;
    let flow = FlowArgs {
        qos: args.qos,
        payload: args.payload,
        window: args.window,
        warmup: args.warmup,
        duration: args.duration,
        messages: None,
    };
    let plan = pairs_plan(common, &flow, args.pairs, Some(args.rate))?;
    // Latencies of the warm-up are dropped: a task resets the histogram when it ends.
    let resetter = {
        let ctx = ctx.clone();
        let warmup = secs(args.warmup);
        tokio::spawn(async move {
            let mut phase = ctx.phase.subscribe();
            while *phase.borrow_and_update() < Phase::Run {
                if phase.changed().await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(warmup).await;
            ctx.latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset();
        })
    };
    let report = measure(&ctx, "latency", ("pairs", args.pairs), &flow, plan).await;
    resetter.abort();
    let mut report = report?;
    report.set("rate", json!(args.rate));
    let achieved = report.get_f64("delivered_per_s").unwrap_or(0.0);
    if achieved < args.rate * 0.95 {
        report.fail(format!(
            "delivered {achieved:.0} msg/s of the {} asked for: the latencies are not at that rate",
            args.rate
        ));
    }
    Ok(report)
}

/// `conns`: many idle connections: the connect rate, and the broker's memory per connection.
#[derive(Debug, Clone, Args)]
pub struct ConnsArgs {
    /// Connections.
    #[arg(long, default_value_t = 10_000)]
    pub conns: usize,
    /// Seconds to wait after the last CONNACK before reading the broker's RSS.
    #[arg(long, default_value_t = 1.0)]
    pub settle: f64,
}

/// A gap between two connects' ends at least this long is a stall (`stalls`, `stalled_ms`):
/// at 20,000 connects a second one ends every 50 µs.
const STALL: Duration = Duration::from_millis(1);

/// Milliseconds, to the microsecond.
fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

pub async fn conns(common: &Common, args: &ConnsArgs) -> Result<Report, String> {
    let ctx = common.ctx()?;
    let salt = common.salt();
    let mut report = Report::new("conns");
    report.set("conns", json!(args.conns));
    report.set("concurrency", json!(common.connect_concurrency));
    let rss_before = common.broker_pid.and_then(rss_kb);
    let limiter = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let cpu = CpuMeter::start(common.broker_pid);
    let start = Instant::now();
    let mut set = JoinSet::new();
    for i in 0..args.conns {
        let ctx = ctx.clone();
        let limiter = limiter.clone();
        let client_id = format!("mb-{salt}-c{i}");
        set.spawn(async move {
            let _permit = limiter.acquire().await;
            let connect = ctx.target.connect_packet(&client_id, true)?;
            let (mut conn, _) =
                Conn::open(&ctx.target, i as u64, &connect, ctx.connect_timeout).await?;
            conn.shrink();
            Ok::<Conn, crate::client::ClientError>(conn)
        });
    }
    let mut open = Vec::with_capacity(args.conns);
    // Stalls: the gaps between two connects' ends longer than STALL, when none finished.
    let mut last = Instant::now();
    let (mut longest, mut stalled, mut stalls) = (Duration::ZERO, Duration::ZERO, 0u32);
    while let Some(joined) = set.join_next().await {
        let gap = last.elapsed();
        last = Instant::now();
        longest = longest.max(gap);
        if gap >= STALL {
            stalled += gap;
            stalls += 1;
        }
        match joined {
            Ok(Ok(conn)) => open.push(conn),
            Ok(Err(e)) => ctx.errors.push(format!("connection: {e}")),
            Err(e) => ctx.errors.push(format!("connection task: {e}")),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let connected = open.len();
    report.set("connected", json!(connected));
    report.set("connect_s", json!((elapsed * 1000.0).round() / 1000.0));
    report.set(
        "connects_per_s",
        json!((connected as f64 / elapsed).round()),
    );
    cpu.report(&mut report, elapsed);
    report.set("longest_gap_ms", json!(ms(longest)));
    report.set("stalls", json!(stalls));
    report.set("stalled_ms", json!(ms(stalled)));
    tokio::time::sleep(secs(args.settle)).await;
    // Connections the broker closed while idle.
    let mut closed = 0;
    for conn in &mut open {
        if conn.try_read().is_err() {
            closed += 1;
        }
    }
    report.set("closed_while_idle", json!(closed));
    if closed > 0 {
        report.fail(format!("the broker closed {closed} idle connections"));
    }
    let rss_after = common.broker_pid.and_then(rss_kb);
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        report.set("broker_rss_before_kb", json!(before));
        report.set("broker_rss_after_kb", json!(after));
        let per = (after.saturating_sub(before) * 1024) as f64 / connected.max(1) as f64;
        report.set("bytes_per_conn", json!(per.round()));
    } else if let Some(pid) = common.broker_pid {
        report.fail(format!("cannot read /proc/{pid}/status"));
    }
    close_all(open, common.connect_concurrency * 4).await;
    if connected < args.conns {
        report.fail(format!(
            "{} of {} connections failed",
            args.conns - connected,
            args.conns
        ));
    }
    report.errors(&ctx.errors);
    Ok(report)
}

async fn close_all(conns: Vec<Conn>, concurrency: usize) {
    let limiter = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut set = JoinSet::new();
    for conn in conns {
        let limiter = limiter.clone();
        set.spawn(async move {
            let _permit = limiter.acquire().await;
            conn.disconnect(LINGER).await;
        });
    }
    while set.join_next().await.is_some() {}
}

/// `reconnect`: persistent sessions with queued QoS 1 messages reconnect at once.
#[derive(Debug, Clone, Args)]
pub struct ReconnectArgs {
    /// Persistent sessions.
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Messages queued for each session while it is away (brokers bound their queues:
    /// Mosquitto and hermes-mqtt at 1000 by default).
    #[arg(long, default_value_t = 100)]
    pub queued: u64,
    /// QoS of the subscriptions and messages: 1 or 2.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub qos: u8,
    /// Publisher connections that queue the messages.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Unacknowledged messages per publisher.
    #[arg(long, default_value_t = 100)]
    pub window: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
}

/// Connects every `spec` with the run in [`Phase::Finish`]: each connects (and subscribes),
/// then disconnects at once. Returns how many failed.
async fn touch_sessions(common: &Common, specs: Vec<SubSpec>) -> Result<(usize, Arc<Ctx>), String> {
    let ctx = common.ctx()?;
    ctx.set_phase(Phase::Finish);
    let ready = Arc::new(Ready::default());
    let limiter = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let n = specs.len();
    let mut set = JoinSet::new();
    for spec in specs {
        set.spawn(flow::subscriber(
            ctx.clone(),
            spec,
            ready.clone(),
            Some(limiter.clone()),
        ));
    }
    let mut failed = 0;
    while let Some(joined) = set.join_next().await {
        if !joined.map(|r| r.connected).unwrap_or(false) {
            failed += 1;
        }
    }
    debug_assert!(failed <= n);
    Ok((failed, ctx))
}

/// Removes the sessions of `ids` (each connects with CleanSession 1 and leaves), connecting
/// from connection numbers `first_index` on.
async fn clean_sessions(
    common: &Common,
    ids: impl Iterator<Item = String>,
    first_index: usize,
    report: &mut Report,
) -> Result<(), String> {
    let specs = ids
        .enumerate()
        .map(|(i, id)| {
            session_spec(
                (first_index + i) as u64,
                id,
                true,
                Vec::new(),
                QoS::AtMostOnce,
            )
        })
        .collect();
    let (failed, ctx) = touch_sessions(common, specs).await?;
    if failed > 0 {
        report.errors(&ctx.errors);
    }
    Ok(())
}

fn session_spec(
    index: u64,
    client_id: String,
    clean: bool,
    filters: Vec<(TopicFilter, QoS)>,
    qos: QoS,
) -> SubSpec {
    SubSpec {
        index,
        client_id,
        clean,
        filters,
        expect_session_present: None,
        qos,
        source_base: 0,
        sources: Vec::new(),
        latency: false,
        expect_total: None,
    }
}

pub async fn reconnect(common: &Common, args: &ReconnectArgs) -> Result<Report, String> {
    let salt = common.salt();
    let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtLeastOnce);
    let n = args.sessions;
    let p = args.publishers.clamp(1, n.max(1));
    let mut report = Report::new("reconnect");
    report.set("sessions", json!(n));
    report.set("queued_per_session", json!(args.queued));
    report.set("qos", json!(args.qos));
    report.set("publishers", json!(p));
    let id = |i: usize| format!("mb-{salt}-rc{i}");
    let name = |i: usize| format!("mb/{salt}/rc/{i}");

    // 1. The sessions: connect, subscribe, go away.
    let mut specs = Vec::with_capacity(n);
    for i in 0..n {
        specs.push(session_spec(
            i as u64,
            id(i),
            false,
            vec![(filter(name(i))?, qos)],
            qos,
        ));
    }
    let (failed, setup_ctx) = touch_sessions(common, specs).await?;
    report.errors(&setup_ctx.errors);
    if failed > 0 {
        report.fail(format!("{failed} sessions failed to set up"));
        return Ok(report);
    }

    // 2. Queue messages for them: publisher j publishes to sessions j, j + p, ... in turn.
    let ctx = common.ctx()?;
    let mut publishers = Vec::new();
    for j in 0..p {
        let topics = (j..n)
            .step_by(p)
            .map(name)
            .map(topic)
            .collect::<Result<Vec<_>, _>>()?;
        let count = topics.len() as u64;
        let st = Arc::new(PubState::new(count, Vec::new(), false));
        publishers.push((
            PubSpec {
                id: j as u32,
                index: (n + j) as u64,
                client_id: format!("mb-{salt}-rc-pub{j}"),
                topics,
                qos,
                payload: args.payload,
                window: args.window.clamp(1, 65_000),
                e2e_window: None,
                paced: false,
                limit: Some(count * args.queued),
            },
            st,
        ));
    }
    let states: Vec<Arc<PubState>> = publishers.iter().map(|(_, s)| s.clone()).collect();
    let plan = Plan {
        limits: Some(
            publishers
                .iter()
                .map(|(s, _)| s.limit.unwrap_or(0))
                .collect(),
        ),
        publishers,
        subscribers: Vec::new(),
        warmup: Duration::ZERO,
        duration: common.connect_timeout * 30,
        rate: None,
        rss_pid: common.broker_pid,
        connect_concurrency: common.connect_concurrency,
    };
    let queueing = flow::run(&ctx, plan).await;
    report.set(
        "queue_s",
        json!((queueing.measured_s * 1000.0).round() / 1000.0),
    );
    report.set("queued_acked", json!(queueing.acked));
    report.errors(&ctx.errors);
    let expected_each = args.queued;
    if queueing.acked != n as u64 * expected_each {
        report.fail(format!(
            "{} of {} messages acknowledged while queueing",
            queueing.acked,
            n as u64 * expected_each
        ));
    }

    // 3. Everyone comes back at once.
    let ctx = common.ctx()?;
    ctx.set_phase(Phase::Run);
    let ready = Arc::new(Ready::default());
    let start = Instant::now();
    let start_ns = crate::payload::now_ns();
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let j = i % p;
        let mut sources = vec![None; p];
        sources[j] = Some(Source {
            link: link((i / p) as u64),
            publisher: states[j].clone(),
            topic_index: (i / p) as u64,
        });
        let spec = SubSpec {
            index: (n + p + i) as u64,
            client_id: id(i),
            clean: false,
            filters: Vec::new(),
            expect_session_present: Some(true),
            qos,
            source_base: 0,
            sources,
            latency: false,
            expect_total: Some(expected_each),
        };
        handles.push(tokio::spawn(flow::subscriber(
            ctx.clone(),
            spec,
            ready.clone(),
            None,
        )));
    }
    let (connected, failed) = ready.wait(n, common.connect_timeout * 4).await;
    let connected_s = start.elapsed().as_secs_f64();
    flow::wait_for_deliveries(&ctx, n as u64 * expected_each).await;
    let waited_s = start.elapsed().as_secs_f64();
    // A moment for duplicates to show.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ctx.set_phase(Phase::Finish);
    let mut outcome = Outcome::default();
    for handle in handles {
        match handle.await {
            Ok(r) => outcome.subscribers.push(r),
            Err(e) => ctx.errors.push(format!("subscriber task: {e}")),
        }
    }
    outcome.expected = n as u64 * expected_each;
    flow::tally(&states, &mut outcome);
    let last_done = outcome.subscribers.iter().filter_map(|r| r.done_ns).max();
    let all_done = outcome.subscribers.iter().all(|r| r.done_ns.is_some());
    report.set("reconnected", json!(connected));
    report.set("reconnect_failed", json!(failed));
    report.set(
        "all_connected_s",
        json!((connected_s * 1000.0).round() / 1000.0),
    );
    let drained_s = match (all_done, last_done) {
        (true, Some(done)) => Some(done.saturating_sub(start_ns) as f64 / 1e9),
        _ => None,
    };
    report.set(
        "drained_s",
        json!(drained_s.map(|s| (s * 1000.0).round() / 1000.0)),
    );
    report.set(
        "drained_per_s",
        json!(drained_s.map(|s| (outcome.expected as f64 / s).round())),
    );
    report.set("expected", json!(outcome.expected));
    report.set("delivered", json!(outcome.delivered));
    report.set("lost", json!(outcome.lost));
    report.set("duplicates", json!(outcome.duplicates));
    report.set("out_of_order", json!(outcome.out_of_order));
    report.set("misdelivered", json!(outcome.misdelivered));
    if failed > 0 {
        report.fail(format!("{failed} sessions failed to reconnect"));
    }
    if !all_done {
        report.fail(format!("queues not drained after {waited_s:.1} s"));
    }
    if outcome.lost > 0 || outcome.misdelivered > 0 || outcome.out_of_order > 0 {
        report.fail("lost, misdelivered or reordered messages".to_string());
    }
    if qos == QoS::ExactlyOnce && outcome.duplicates > 0 {
        report.fail(format!("{} duplicates at QoS 2", outcome.duplicates));
    }
    report.errors(&ctx.errors);

    // 4. Clean up: the sessions go away with a clean connect.
    clean_sessions(common, (0..n).map(id), 2 * n + p, &mut report).await?;
    Ok(report)
}

/// `sessions`: many connected clients with persistent sessions, each subscribed to its own
/// topic, then a fixed rate of messages spread over them.
#[derive(Debug, Clone, Args)]
pub struct SessionsArgs {
    /// Clients (the issue asks for 100k; this machine allows 20k open files per process).
    #[arg(long, default_value_t = 10_000)]
    pub clients: usize,
    /// Publisher connections; client i gets its messages from publisher i % publishers.
    #[arg(long, default_value_t = 10)]
    pub publishers: usize,
    /// Messages per second, all publishers together.
    #[arg(long, default_value_t = 10_000.0)]
    pub rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 60.0)]
    pub duration: f64,
    /// Seconds published before measuring.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// QoS of the subscriptions and messages.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Client identifiers are PREFIX-0, PREFIX-1, ...: give the same to `restore`. Default:
    /// one of its own for each run.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// Remove the sessions afterwards (connect each with CleanSession 1).
    #[arg(long)]
    pub clean_up: bool,
}

pub async fn sessions(common: &Common, args: &SessionsArgs) -> Result<Report, String> {
    let ctx = common.ctx()?;
    let salt = common.salt();
    let prefix = args
        .id_prefix
        .clone()
        .unwrap_or_else(|| format!("mb-{salt}-ses"));
    let qos = QoS::from_u8(args.qos).unwrap_or(QoS::AtLeastOnce);
    let n = args.clients;
    let p = args.publishers.clamp(1, n.max(1));
    let mut report = Report::new("sessions");
    report.set("clients", json!(n));
    report.set("publishers", json!(p));
    report.set("rate", json!(args.rate));
    report.set("duration_s", json!(args.duration));
    report.set("qos", json!(args.qos));
    report.set("id_prefix", json!(prefix));
    let name = |i: usize| format!("{prefix}/s/{i}");

    let mut links_of: Vec<Vec<Link>> = vec![Vec::new(); p];
    let mut sub_links = Vec::with_capacity(n);
    for i in 0..n {
        let l = link((i / p) as u64);
        links_of[i % p].push(l.clone());
        sub_links.push(l);
    }
    let mut publishers = Vec::new();
    for (j, links) in links_of.into_iter().enumerate() {
        let topics = (j..n)
            .step_by(p)
            .map(name)
            .map(topic)
            .collect::<Result<Vec<_>, _>>()?;
        let st = Arc::new(PubState::new(topics.len() as u64, links, false));
        publishers.push((
            PubSpec {
                id: j as u32,
                index: (n + j) as u64,
                client_id: format!("{prefix}-pub{j}"),
                topics,
                qos,
                payload: args.payload,
                window: 1000,
                e2e_window: None,
                paced: true,
                limit: None,
            },
            st,
        ));
    }
    let mut subscribers = Vec::with_capacity(n);
    for (i, l) in sub_links.into_iter().enumerate() {
        let j = i % p;
        let source = Source {
            link: l,
            publisher: publishers[j].1.clone(),
            topic_index: (i / p) as u64,
        };
        subscribers.push(SubSpec {
            index: i as u64,
            client_id: format!("{prefix}-{i}"),
            clean: false,
            filters: vec![(filter(name(i))?, qos)],
            expect_session_present: None,
            qos,
            source_base: j as u32,
            sources: vec![Some(source)],
            latency: true,
            expect_total: None,
        });
    }
    let rss_before = common.broker_pid.and_then(rss_kb);
    let plan = Plan {
        limits: None,
        publishers,
        subscribers,
        warmup: secs(args.warmup),
        duration: secs(args.duration),
        rate: Some(args.rate),
        rss_pid: common.broker_pid,
        connect_concurrency: common.connect_concurrency,
    };
    // The histogram restarts after the warm-up, and the RSS with all sessions idle is read
    // just before publishing starts.
    let watcher = {
        let ctx = ctx.clone();
        let warmup = secs(args.warmup);
        let pid = common.broker_pid;
        tokio::spawn(async move {
            let mut phase = ctx.phase.subscribe();
            while *phase.borrow_and_update() < Phase::Run {
                if phase.changed().await.is_err() {
                    return None;
                }
            }
            let idle = pid.and_then(rss_kb);
            tokio::time::sleep(warmup).await;
            ctx.latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .reset();
            idle
        })
    };
    let outcome = flow::run(&ctx, plan).await;
    let rss_idle = watcher.await.ok().flatten();
    let rss_after = common.broker_pid.and_then(rss_kb);
    if let Some(before) = rss_before {
        report.set("broker_rss_before_kb", json!(before));
    }
    if let Some(idle) = rss_idle {
        report.set("broker_rss_sessions_idle_kb", json!(idle));
        if let Some(before) = rss_before {
            let per = (idle.saturating_sub(before) * 1024) as f64 / n.max(1) as f64;
            report.set("bytes_per_session", json!(per.round()));
        }
    }
    if let Some(max) = outcome.rss_max_kb {
        report.set("broker_rss_max_kb", json!(max));
    }
    if let Some(after) = rss_after {
        report.set("broker_rss_after_kb", json!(after));
    }
    report.set(
        "connects_per_s",
        json!((n as f64 / outcome.setup_s.max(1e-9)).round()),
    );
    let mut report = flow_report(&ctx, qos, &outcome, report);
    if outcome.rate() < args.rate * 0.95 && outcome.measured_s > 0.0 {
        report.fail(format!(
            "delivered {:.0} msg/s of the {} asked for",
            outcome.rate(),
            args.rate
        ));
    }
    if args.clean_up {
        clean_sessions(
            common,
            (0..n).map(|i| format!("{prefix}-{i}")),
            n + p,
            &mut report,
        )
        .await?;
    }
    Ok(report)
}

/// `restore`: after a broker restart, how long until it answers, and until every session of a
/// `sessions` run is back.
#[derive(Debug, Clone, Args)]
pub struct RestoreArgs {
    /// Sessions to reconnect: PREFIX-0 to PREFIX-(N-1).
    #[arg(long)]
    pub clients: usize,
    /// The `sessions` run's client identifier prefix.
    #[arg(long)]
    pub id_prefix: String,
    /// When the broker was started, in nanoseconds since the Unix epoch (`date +%s%N`);
    /// default: now.
    #[arg(long)]
    pub since_ns: Option<u128>,
    /// Seconds to wait for the broker to answer at all.
    #[arg(long, default_value_t = 300.0)]
    pub wait: f64,
    /// Remove the sessions afterwards (connect each with CleanSession 1).
    #[arg(long)]
    pub clean_up: bool,
}

fn unix_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

pub async fn restore(common: &Common, args: &RestoreArgs) -> Result<Report, String> {
    let ctx = common.ctx()?;
    let since = args.since_ns.unwrap_or_else(unix_ns);
    let ms_since = |t: u128| (t.saturating_sub(since) as f64 / 1e6).round();
    let mut report = Report::new("restore");
    report.set("clients", json!(args.clients));
    report.set("id_prefix", json!(args.id_prefix));
    // 1. Until a CONNECT is answered.
    let probe = ctx
        .target
        .connect_packet(&format!("{}-probe", args.id_prefix), true)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + secs(args.wait);
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        match Conn::open(
            &ctx.target,
            u64::MAX - attempts,
            &probe,
            Duration::from_secs(5),
        )
        .await
        {
            Ok((conn, _)) => {
                report.set("ready_ms", json!(ms_since(unix_ns())));
                conn.disconnect(LINGER).await;
                break;
            }
            Err(e) if Instant::now() >= deadline => {
                report.fail(format!(
                    "the broker did not answer within {} s: {e}",
                    args.wait
                ));
                return Ok(report);
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
    // 2. Every session back, with its session present.
    let present = Arc::new(AtomicU64::new(0));
    let limiter = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut set = JoinSet::new();
    for i in 0..args.clients {
        let ctx = ctx.clone();
        let limiter = limiter.clone();
        let present = present.clone();
        let client_id = format!("{}-{i}", args.id_prefix);
        set.spawn(async move {
            let _permit = limiter.acquire().await;
            let connect = ctx.target.connect_packet(&client_id, false)?;
            let (conn, ack) =
                Conn::open(&ctx.target, i as u64, &connect, ctx.connect_timeout).await?;
            if ack.session_present {
                present.fetch_add(1, Ordering::Relaxed);
            }
            conn.disconnect(LINGER).await;
            Ok::<(), crate::client::ClientError>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok(Ok(())) => {}
            Ok(Err(e)) => ctx.errors.push(format!("session: {e}")),
            Err(e) => ctx.errors.push(format!("session task: {e}")),
        }
    }
    let present = present.load(Ordering::Relaxed);
    report.set("restored_ms", json!(ms_since(unix_ns())));
    report.set("sessions_present", json!(present));
    report.set(
        "sessions_missing",
        json!(args.clients as u64 - present.min(args.clients as u64)),
    );
    if present < args.clients as u64 {
        report.fail(format!(
            "{} of {} sessions were not restored",
            args.clients as u64 - present,
            args.clients
        ));
    }
    report.errors(&ctx.errors);
    if args.clean_up {
        let ids = (0..args.clients).map(|i| format!("{}-{i}", args.id_prefix));
        clean_sessions(common, ids, 0, &mut report).await?;
    }
    Ok(report)
}
