//! Publishers and subscribers as tasks, one per connection, and the run that drives them.
//!
//! Each connection is one task that waits at once for input, room to write, its own wake-ups
//! and the run's phase, on the socket directly: no reader/writer split, no channel per packet.
//! A publisher writes as many messages as its windows allow into one buffer and writes it in
//! one call; a subscriber decodes everything a read brought and answers it in one write.
//!
//! Windows: a publisher at QoS 1 or 2 has at most `window` messages unacknowledged (packet
//! identifiers in flight); in throughput runs it is also at most `e2e_window` messages ahead of
//! its slowest subscriber, so that a run measures what the broker delivers rather than how
//! much it can buffer (or drop: brokers bound their queues). A paced publisher (latency runs)
//! sends only what the pacer thread has allowed so far.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use hermes_mqtt::codec::encode_publish_header;
use hermes_mqtt::{
    Packet, PacketId, Publish, PublishQos, QoS, Subscribe, SubscribeReturnCode, TopicFilter,
    TopicName,
};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::client::{ClientError, Conn, Target};
use crate::payload::{self, Stamp, now_ns};
use crate::verify::{ErrorLog, Tracker};

/// At most this many messages are encoded in one go.
const MAX_BATCH: u64 = 512;
/// A publisher stops encoding while this much is waiting to be written.
const WBUF_HIGH: usize = 128 * 1024;
/// How long a closing connection waits for the broker to close first.
pub const LINGER: Duration = Duration::from_secs(2);

/// Where a run is. Connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Connecting and subscribing.
    Setup,
    /// Publishers publish.
    Run,
    /// Publishers stop, wait for their acknowledgements and disconnect.
    Stop,
    /// Subscribers disconnect.
    Finish,
}

/// What every task of a run shares.
pub struct Ctx {
    /// The broker.
    pub target: Target,
    /// Errors of the run.
    pub errors: ErrorLog,
    /// The run's phase.
    pub phase: watch::Sender<Phase>,
    /// Distinct messages delivered, all subscribers together.
    pub delivered: AtomicU64,
    /// Latencies (ns from the publisher's write to the subscriber's read) of the subscribers
    /// that record them.
    pub latency: Mutex<Histogram<u64>>,
    /// How long a connection may take to be set up (CONNECT to CONNACK, SUBSCRIBE to SUBACK).
    pub connect_timeout: Duration,
    /// How long publishers wait for their last acknowledgements, and the run for the last
    /// deliveries, once publishing stops.
    pub drain: Duration,
}

impl Ctx {
    /// A context for a run against `target`.
    pub fn new(
        target: Target,
        connect_timeout: Duration,
        drain: Duration,
    ) -> Result<Arc<Self>, String> {
        let latency = Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .map_err(|e| format!("latency histogram: {e}"))?;
        Ok(Arc::new(Self {
            target,
            errors: ErrorLog::default(),
            phase: watch::Sender::new(Phase::Setup),
            delivered: AtomicU64::new(0),
            latency: Mutex::new(latency),
            connect_timeout,
            drain,
        }))
    }

    /// Moves the run to `phase`.
    pub fn set_phase(&self, phase: Phase) {
        self.phase.send_replace(phase);
    }

    /// A copy of the latency histogram.
    pub fn latency(&self) -> Histogram<u64> {
        self.latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// Connections report here when they are set up (or failed to be).
#[derive(Default)]
pub struct Ready {
    ok: AtomicUsize,
    failed: AtomicUsize,
}

impl Ready {
    /// One more connection is set up (`ok`) or gave up.
    pub fn done(&self, ok: bool) {
        let counter = if ok { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Release);
    }

    /// Waits until `n` connections reported or `timeout` passed: (set up, failed).
    pub async fn wait(&self, n: usize, timeout: Duration) -> (usize, usize) {
        let deadline = Instant::now() + timeout;
        loop {
            let ok = self.ok.load(Ordering::Acquire);
            let failed = self.failed.load(Ordering::Acquire);
            if ok + failed >= n || Instant::now() >= deadline {
                return (ok, failed);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What a publisher does.
#[derive(Debug, Clone)]
pub struct PubSpec {
    /// Its number in the run: payloads carry it.
    pub id: u32,
    /// Its connection's number (picks the source address).
    pub index: u64,
    /// Its MQTT client identifier.
    pub client_id: String,
    /// The topics it publishes to, in turn: message n goes to topic n % len with sequence
    /// number n / len.
    pub topics: Vec<TopicName>,
    /// The QoS it publishes at.
    pub qos: QoS,
    /// The payload size in bytes.
    pub payload: usize,
    /// At most this many QoS 1/2 messages unacknowledged.
    pub window: usize,
    /// At most this many messages ahead of its slowest subscriber (one topic only).
    pub e2e_window: Option<u64>,
    /// Sends only what the pacer allowed.
    pub paced: bool,
    /// Sends at most this many messages.
    pub limit: Option<u64>,
}

/// A subscriber's progress on one publisher's topic, which the publisher's window reads.
#[derive(Debug, Clone)]
pub struct Link {
    /// Which of the publisher's topics.
    pub topic_index: u64,
    /// Distinct messages of that topic the subscriber has received.
    pub delivered: Arc<AtomicU64>,
}

/// A publisher's state that others read or change while it runs.
#[derive(Default)]
pub struct PubState {
    /// Wakes it: its subscribers made progress, or the pacer allowed more.
    pub notify: Notify,
    /// How many topics it publishes to.
    pub topics: u64,
    /// Its subscribers' progress.
    pub links: Vec<Link>,
    /// It waits for its subscribers (an end-to-end window): they wake it when they progress.
    pub windowed: bool,
    /// Messages the pacer allowed.
    pub allowed: AtomicU64,
    /// Messages written.
    pub sent: AtomicU64,
    /// QoS 1/2 messages acknowledged (PUBACK, PUBCOMP).
    pub acked: AtomicU64,
    /// Times it could not send because a window was full (not counting a paced publisher
    /// waiting for its next message).
    pub window_waits: AtomicU64,
}

impl PubState {
    /// A publisher to `topics` topics, with these subscribers; `windowed` if it waits for them.
    pub fn new(topics: u64, links: Vec<Link>, windowed: bool) -> Self {
        Self {
            topics,
            links,
            windowed,
            ..Self::default()
        }
    }

    /// Messages it has sent to topic `index`, having sent `sent` in all.
    pub fn sent_to(&self, sent: u64, index: u64) -> u64 {
        if self.topics == 0 {
            return 0;
        }
        sent / self.topics + u64::from(index < sent % self.topics)
    }

    /// Deliveries its messages call for so far: each message once per subscriber of its topic.
    pub fn expected_deliveries(&self) -> u64 {
        let sent = self.sent.load(Ordering::Acquire);
        self.links
            .iter()
            .map(|l| self.sent_to(sent, l.topic_index))
            .sum()
    }
}

/// Packet identifiers of a publisher's QoS 1/2 messages, and where each flow is.
struct InFlight {
    state: Vec<u8>,
    next: u16,
    count: usize,
}

const FREE: u8 = 0;
const AWAIT_PUBACK: u8 = 1;
const AWAIT_PUBREC: u8 = 2;
const AWAIT_PUBCOMP: u8 = 3;

impl InFlight {
    fn new() -> Self {
        Self {
            state: vec![FREE; 1 << 16],
            next: 0,
            count: 0,
        }
    }

    /// A free identifier, now in `state`. The caller keeps `count` under 65535.
    fn alloc(&mut self, state: u8) -> Option<PacketId> {
        if self.count >= 65_535 {
            return None;
        }
        loop {
            self.next = self.next.wrapping_add(1);
            if let Some(id) = PacketId::new(self.next)
                && self.state[usize::from(self.next)] == FREE
            {
                self.state[usize::from(self.next)] = state;
                self.count += 1;
                return Some(id);
            }
        }
    }

    fn get(&self, id: PacketId) -> u8 {
        self.state[usize::from(id.get())]
    }

    fn set(&mut self, id: PacketId, state: u8) {
        let slot = &mut self.state[usize::from(id.get())];
        match (*slot == FREE, state == FREE) {
            (true, false) => self.count += 1,
            (false, true) => self.count -= 1,
            _ => {}
        }
        *slot = state;
    }
}

/// What a publisher did.
#[derive(Debug, Default, Clone, Copy)]
pub struct PubReport {
    /// Messages written.
    pub sent: u64,
    /// QoS 1/2 messages acknowledged.
    pub acked: u64,
}

/// Runs a publisher: connects, reports ready, waits for [`Phase::Run`], publishes until
/// [`Phase::Stop`] (or its limit), waits for its acknowledgements, disconnects.
pub async fn publisher(
    ctx: Arc<Ctx>,
    spec: PubSpec,
    st: Arc<PubState>,
    ready: Arc<Ready>,
    limiter: Arc<Semaphore>,
) -> PubReport {
    let mut phase = ctx.phase.subscribe();
    let opened = {
        let _permit = limiter.acquire().await;
        match ctx.target.connect_packet(&spec.client_id, true) {
            Ok(connect) => Conn::open(&ctx.target, spec.index, &connect, ctx.connect_timeout).await,
            Err(e) => Err(e),
        }
    };
    let conn = match opened {
        Ok((conn, _)) => conn,
        Err(e) => {
            ctx.errors
                .push(format!("publisher {}: {e}", spec.client_id));
            ready.done(false);
            return PubReport::default();
        }
    };
    ready.done(true);
    while *phase.borrow_and_update() < Phase::Run {
        if phase.changed().await.is_err() {
            break;
        }
    }
    let client_id = spec.client_id.clone();
    let mut publisher = Publisher::new(conn, spec, st.clone());
    let result = publisher.run(&ctx, &mut phase).await;
    st.sent.store(publisher.sent, Ordering::Release);
    st.acked.store(publisher.acked, Ordering::Release);
    let report = PubReport {
        sent: publisher.sent,
        acked: publisher.acked,
    };
    match result {
        Ok(()) => publisher.conn.disconnect(LINGER).await,
        Err(e) => ctx.errors.push(format!("publisher {client_id}: {e}")),
    }
    report
}

struct Publisher {
    conn: Conn,
    spec: PubSpec,
    st: Arc<PubState>,
    inflight: InFlight,
    /// A payload of the right size, for the header's remaining length: never sent.
    template: Bytes,
    sent: u64,
    acked: u64,
}

enum Event {
    Read(std::io::Result<()>),
    Write(std::io::Result<()>),
    Wake,
    Phase(bool),
    Deadline,
}

impl Publisher {
    fn new(conn: Conn, spec: PubSpec, st: Arc<PubState>) -> Self {
        let template = Bytes::from(vec![0; spec.payload.max(payload::MIN_SIZE)]);
        Self {
            conn,
            spec,
            st,
            inflight: InFlight::new(),
            template,
            sent: 0,
            acked: 0,
        }
    }

    /// How many messages may be written now.
    fn allowance(&self) -> u64 {
        let mut allowed = MAX_BATCH;
        if let Some(limit) = self.spec.limit {
            allowed = allowed.min(limit.saturating_sub(self.sent));
        }
        if self.spec.qos != QoS::AtMostOnce {
            allowed = allowed.min(self.spec.window.saturating_sub(self.inflight.count) as u64);
        }
        if let Some(window) = self.spec.e2e_window {
            let slowest = self
                .st
                .links
                .iter()
                .map(|l| l.delivered.load(Ordering::Acquire))
                .min()
                .unwrap_or(self.sent);
            allowed = allowed.min(window.saturating_sub(self.sent.saturating_sub(slowest)));
        }
        if self.spec.paced {
            let paced = self.st.allowed.load(Ordering::Acquire);
            allowed = allowed.min(paced.saturating_sub(self.sent));
        }
        allowed
    }

    /// Encodes what may be sent now; true if more could be sent at once (it stopped at the
    /// batch size or the buffer's limit, not at a window).
    fn produce(&mut self) -> Result<bool, ClientError> {
        let allowed = self.allowance();
        if allowed == 0 {
            let limited = self.spec.limit.is_some_and(|l| self.sent >= l);
            if !limited && !self.spec.paced {
                self.st.window_waits.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(false);
        }
        let now = now_ns();
        let topics = self.spec.topics.len() as u64;
        let mut produced = 0;
        for _ in 0..allowed {
            if self.conn.wbuf.len() >= WBUF_HIGH {
                break;
            }
            let n = self.sent;
            let qos = match self.spec.qos {
                QoS::AtMostOnce => PublishQos::AtMostOnce,
                qos => {
                    let state = if qos == QoS::AtLeastOnce {
                        AWAIT_PUBACK
                    } else {
                        AWAIT_PUBREC
                    };
                    let Some(id) = self.inflight.alloc(state) else {
                        break;
                    };
                    PublishQos::new(qos, id, false)
                }
            };
            let topic = self.spec.topics[(n % topics) as usize].clone();
            let publish = Publish {
                qos,
                retain: false,
                topic,
                payload: self.template.clone(),
            };
            encode_publish_header(&publish, &mut self.conn.wbuf)
                .map_err(|e| ClientError::Usage(format!("cannot encode PUBLISH: {e}")))?;
            let stamp = Stamp {
                publisher: self.spec.id,
                seq: n / topics,
                sent_ns: now,
            };
            payload::put(&mut self.conn.wbuf, stamp, self.template.len());
            self.sent += 1;
            produced += 1;
        }
        self.st.sent.store(self.sent, Ordering::Release);
        Ok(produced == MAX_BATCH || self.conn.wbuf.len() >= WBUF_HIGH)
    }

    fn handle(&mut self, ctx: &Ctx, packet: Packet) -> Result<(), ClientError> {
        let who = &self.spec.client_id;
        match packet {
            Packet::PubAck(id) => self.complete(ctx, id, AWAIT_PUBACK, "PUBACK"),
            Packet::PubComp(id) => self.complete(ctx, id, AWAIT_PUBCOMP, "PUBCOMP"),
            Packet::PubRec(id) => match self.inflight.get(id) {
                AWAIT_PUBREC | AWAIT_PUBCOMP => {
                    self.inflight.set(id, AWAIT_PUBCOMP);
                    self.conn.queue(&Packet::PubRel(id))?;
                }
                _ => ctx.errors.push(format!(
                    "publisher {who}: PUBREC for packet id {id} not in flight"
                )),
            },
            Packet::PingResp => {}
            other => ctx.errors.push(format!(
                "publisher {who}: unexpected {} from the broker",
                other.packet_type()
            )),
        }
        Ok(())
    }

    fn complete(&mut self, ctx: &Ctx, id: PacketId, expected: u8, what: &str) {
        if self.inflight.get(id) == expected {
            self.inflight.set(id, FREE);
            self.acked += 1;
        } else {
            ctx.errors.push(format!(
                "publisher {}: {what} for packet id {id}, which awaits no {what}",
                self.spec.client_id
            ));
        }
    }

    /// Reads and handles what has arrived, without waiting.
    fn read_available(&mut self, ctx: &Ctx) -> Result<(), ClientError> {
        while self.conn.try_read()? {
            while let Some(packet) = self.conn.decode()? {
                self.handle(ctx, packet)?;
            }
        }
        Ok(())
    }

    async fn run(
        &mut self,
        ctx: &Ctx,
        phase: &mut watch::Receiver<Phase>,
    ) -> Result<(), ClientError> {
        let mut deadline: Option<tokio::time::Instant> = None;
        loop {
            // Acknowledgements first (without waiting): they open the window.
            self.read_available(ctx)?;
            let stopping = *phase.borrow() >= Phase::Stop;
            let more = if stopping { false } else { self.produce()? };
            self.conn.try_flush()?;
            if more && self.conn.wbuf.is_empty() {
                // The socket took it all and the windows allow more: go on, after letting the
                // other connections run.
                tokio::task::yield_now().await;
                continue;
            }
            if stopping && deadline.is_none() {
                deadline = Some(tokio::time::Instant::now() + ctx.drain);
            }
            if stopping && self.inflight.count == 0 && self.conn.wbuf.is_empty() {
                return Ok(());
            }
            let until =
                deadline.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            // A wake-up (subscriber progress, pacer) may be stale: it only costs a loop.
            let event = tokio::select! {
                biased;
                r = self.conn.stream.readable() => Event::Read(r),
                r = self.conn.stream.writable(), if !self.conn.wbuf.is_empty() => Event::Write(r),
                () = self.st.notify.notified(), if !stopping => Event::Wake,
                r = phase.changed(), if !stopping => Event::Phase(r.is_ok()),
                () = tokio::time::sleep_until(until), if stopping => Event::Deadline,
            };
            match event {
                Event::Read(r) | Event::Write(r) => r?,
                Event::Wake => {}
                Event::Phase(alive) => {
                    if !alive {
                        return Ok(());
                    }
                }
                Event::Deadline => {
                    return Err(ClientError::Protocol(format!(
                        "{} messages still unacknowledged {:?} after publishing stopped",
                        self.inflight.count, ctx.drain
                    )));
                }
            }
        }
    }
}

/// Where a subscriber's messages come from.
#[derive(Clone)]
pub struct Source {
    /// What it has received of that publisher, for the publisher's window.
    pub link: Link,
    /// The publisher.
    pub publisher: Arc<PubState>,
    /// Which of the publisher's topics this subscriber gets.
    pub topic_index: u64,
}

/// What a subscriber does.
#[derive(Clone)]
pub struct SubSpec {
    /// Its connection's number (picks the source address).
    pub index: u64,
    /// Its MQTT client identifier.
    pub client_id: String,
    /// CONNECT's CleanSession.
    pub clean: bool,
    /// What it subscribes to; nothing for a session that already has its subscriptions.
    pub filters: Vec<(TopicFilter, QoS)>,
    /// What CONNACK's session present must say, if it is checked.
    pub expect_session_present: Option<bool>,
    /// The QoS its messages must arrive at.
    pub qos: QoS,
    /// The publisher id of `sources[0]`.
    pub source_base: u32,
    /// Its publishers: `sources[i]` is publisher `source_base + i`, if it expects it.
    pub sources: Vec<Option<Source>>,
    /// Records latencies.
    pub latency: bool,
    /// Notes the time when it has this many messages.
    pub expect_total: Option<u64>,
}

/// What a subscriber saw.
#[derive(Debug, Default)]
pub struct SubReport {
    /// Set up (connected and subscribed).
    pub connected: bool,
    /// Per source: publisher id, topic index and what arrived.
    pub trackers: Vec<(u32, u64, Tracker)>,
    /// Messages from publishers it does not expect.
    pub unexpected: u64,
    /// Messages that are not the generator's.
    pub foreign: u64,
    /// Messages at another QoS than expected.
    pub qos_mismatch: u64,
    /// When it had `expect_total` messages (ns since the epoch).
    pub done_ns: Option<u64>,
    /// QoS 2 messages received whose PUBREL never came.
    pub unreleased: u64,
}

/// Runs a subscriber: connects (with a permit of `limiter`, if any), subscribes, reports
/// ready, receives and acknowledges until [`Phase::Finish`], disconnects.
pub async fn subscriber(
    ctx: Arc<Ctx>,
    spec: SubSpec,
    ready: Arc<Ready>,
    limiter: Option<Arc<Semaphore>>,
) -> SubReport {
    let mut phase = ctx.phase.subscribe();
    let mut sub = Subscriber::new(spec);
    let set_up = {
        let _permit = match &limiter {
            Some(limiter) => limiter.acquire().await.ok(),
            None => None,
        };
        match tokio::time::timeout(ctx.connect_timeout, sub.setup(&ctx)).await {
            Ok(result) => result,
            Err(_) => Err(ClientError::Timeout("connecting and subscribing")),
        }
    };
    let mut conn = match set_up {
        Ok(conn) => conn,
        Err(e) => {
            ctx.errors
                .push(format!("subscriber {}: {e}", sub.spec.client_id));
            ready.done(false);
            return sub.report();
        }
    };
    sub.connected = true;
    ready.done(true);
    sub.progress(&ctx, now_ns());
    match sub.run(&ctx, &mut conn, &mut phase).await {
        Ok(()) => conn.disconnect(LINGER).await,
        Err(e) => ctx
            .errors
            .push(format!("subscriber {}: {e}", sub.spec.client_id)),
    }
    sub.report()
}

struct Subscriber {
    spec: SubSpec,
    connected: bool,
    trackers: Vec<Tracker>,
    dirty: Vec<bool>,
    touched: Vec<usize>,
    /// QoS 2 packet identifiers received and not yet released.
    unreleased: std::collections::HashSet<u16>,
    unique: u64,
    reported: u64,
    latencies: Vec<u64>,
    unexpected: u64,
    foreign: u64,
    qos_mismatch: u64,
    done_ns: Option<u64>,
    suback: bool,
}

impl Subscriber {
    fn new(spec: SubSpec) -> Self {
        let n = spec.sources.len();
        Self {
            spec,
            connected: false,
            trackers: vec![Tracker::default(); n],
            dirty: vec![false; n],
            touched: Vec::new(),
            unreleased: Default::default(),
            unique: 0,
            reported: 0,
            latencies: Vec::new(),
            unexpected: 0,
            foreign: 0,
            qos_mismatch: 0,
            done_ns: None,
            suback: false,
        }
    }

    async fn setup(&mut self, ctx: &Ctx) -> Result<Conn, ClientError> {
        let connect = ctx
            .target
            .connect_packet(&self.spec.client_id, self.spec.clean)?;
        let (mut conn, ack) =
            Conn::open(&ctx.target, self.spec.index, &connect, ctx.connect_timeout).await?;
        if let Some(expected) = self.spec.expect_session_present
            && ack.session_present != expected
        {
            return Err(ClientError::Protocol(format!(
                "CONNACK says session present {}, expected {expected}",
                ack.session_present
            )));
        }
        if self.spec.filters.is_empty() {
            return Ok(conn);
        }
        let subscribe = Subscribe {
            packet_id: PacketId::MIN,
            filters: self.spec.filters.clone(),
        };
        conn.queue(&Packet::Subscribe(subscribe))?;
        conn.flush().await?;
        while !self.suback {
            let packet = conn.recv().await?;
            self.handle(ctx, &mut conn, packet, now_ns())?;
            conn.flush().await?;
        }
        Ok(conn)
    }

    fn check_suback(&mut self, codes: &[SubscribeReturnCode]) -> Result<(), ClientError> {
        if codes.len() != self.spec.filters.len() {
            return Err(ClientError::Protocol(format!(
                "SUBACK with {} return codes for {} filters",
                codes.len(),
                self.spec.filters.len()
            )));
        }
        for (code, (filter, qos)) in codes.iter().zip(&self.spec.filters) {
            match code {
                SubscribeReturnCode::Granted(granted) if granted >= qos => {}
                SubscribeReturnCode::Granted(granted) => {
                    return Err(ClientError::Protocol(format!(
                        "SUBACK grants {filter:?} QoS {} of the {} asked for",
                        *granted as u8, *qos as u8
                    )));
                }
                SubscribeReturnCode::Failure => {
                    return Err(ClientError::Protocol(format!("SUBACK refuses {filter:?}")));
                }
            }
        }
        Ok(())
    }

    fn handle(
        &mut self,
        ctx: &Ctx,
        conn: &mut Conn,
        packet: Packet,
        now: u64,
    ) -> Result<(), ClientError> {
        match packet {
            Packet::Publish(publish) => {
                let deliver = match publish.qos {
                    PublishQos::AtMostOnce => true,
                    PublishQos::AtLeastOnce { packet_id, .. } => {
                        conn.queue(&Packet::PubAck(packet_id))?;
                        true
                    }
                    PublishQos::ExactlyOnce { packet_id, .. } => {
                        conn.queue(&Packet::PubRec(packet_id))?;
                        // Until PUBREL, the same identifier is the same message [4.3.3].
                        self.unreleased.insert(packet_id.get())
                    }
                };
                if deliver {
                    self.deliver(&publish, now);
                }
            }
            Packet::PubRel(id) => {
                self.unreleased.remove(&id.get());
                conn.queue(&Packet::PubComp(id))?;
            }
            Packet::SubAck(suback) if !self.suback && suback.packet_id == PacketId::MIN => {
                self.check_suback(&suback.return_codes)?;
                self.suback = true;
            }
            Packet::PingResp => {}
            other => ctx.errors.push(format!(
                "subscriber {}: unexpected {} from the broker",
                self.spec.client_id,
                other.packet_type()
            )),
        }
        Ok(())
    }

    fn deliver(&mut self, publish: &Publish, now: u64) {
        if publish.qos.qos() != self.spec.qos {
            self.qos_mismatch += 1;
        }
        let Some(stamp) = payload::read(&publish.payload) else {
            self.foreign += 1;
            return;
        };
        let Some(slot) = stamp.publisher.checked_sub(self.spec.source_base) else {
            self.unexpected += 1;
            return;
        };
        let slot = slot as usize;
        if !matches!(self.spec.sources.get(slot), Some(Some(_))) {
            self.unexpected += 1;
            return;
        }
        if self.trackers[slot].observe(stamp.seq) {
            self.unique += 1;
            if !self.dirty[slot] {
                self.dirty[slot] = true;
                self.touched.push(slot);
            }
            if self.spec.latency {
                self.latencies.push(now.saturating_sub(stamp.sent_ns));
            }
        }
    }

    /// Tells the publishers and the run what arrived since the last call.
    fn progress(&mut self, ctx: &Ctx, now: u64) {
        for slot in self.touched.drain(..) {
            self.dirty[slot] = false;
            if let Some(Some(source)) = self.spec.sources.get(slot) {
                source
                    .link
                    .delivered
                    .store(self.trackers[slot].unique, Ordering::Release);
                if source.publisher.windowed {
                    source.publisher.notify.notify_one();
                }
            }
        }
        if self.unique > self.reported {
            ctx.delivered
                .fetch_add(self.unique - self.reported, Ordering::AcqRel);
            self.reported = self.unique;
        }
        if !self.latencies.is_empty() {
            let mut histogram = ctx.latency.lock().unwrap_or_else(|e| e.into_inner());
            for &ns in &self.latencies {
                histogram.saturating_record(ns.max(1));
            }
            self.latencies.clear();
        }
        if self.done_ns.is_none()
            && let Some(expected) = self.spec.expect_total
            && self.unique >= expected
        {
            self.done_ns = Some(now);
        }
    }

    async fn run(
        &mut self,
        ctx: &Ctx,
        conn: &mut Conn,
        phase: &mut watch::Receiver<Phase>,
    ) -> Result<(), ClientError> {
        // Whatever arrived with the SUBACK.
        while let Some(packet) = conn.decode()? {
            self.handle(ctx, conn, packet, now_ns())?;
        }
        self.progress(ctx, now_ns());
        conn.try_flush()?;
        loop {
            if *phase.borrow_and_update() >= Phase::Finish {
                return Ok(());
            }
            let event = tokio::select! {
                biased;
                r = conn.stream.readable() => Event::Read(r),
                r = conn.stream.writable(), if !conn.wbuf.is_empty() => Event::Write(r),
                r = phase.changed() => Event::Phase(r.is_ok()),
            };
            match event {
                Event::Read(r) => {
                    r?;
                    if conn.try_read()? {
                        let now = now_ns();
                        while let Some(packet) = conn.decode()? {
                            self.handle(ctx, conn, packet, now)?;
                        }
                        self.progress(ctx, now);
                    }
                    conn.try_flush()?;
                }
                Event::Write(r) => {
                    r?;
                    conn.try_flush()?;
                }
                Event::Phase(alive) => {
                    if !alive {
                        return Ok(());
                    }
                }
                Event::Wake | Event::Deadline => {}
            }
        }
    }

    fn report(self) -> SubReport {
        let base = self.spec.source_base;
        let trackers = self
            .spec
            .sources
            .iter()
            .zip(self.trackers)
            .enumerate()
            .filter_map(|(id, (source, tracker))| {
                source
                    .as_ref()
                    .map(|s| (base + id as u32, s.topic_index, tracker))
            })
            .collect();
        SubReport {
            connected: self.connected,
            trackers,
            unexpected: self.unexpected,
            foreign: self.foreign,
            qos_mismatch: self.qos_mismatch,
            done_ns: self.done_ns,
            unreleased: self.unreleased.len() as u64,
        }
    }
}

/// A thread that lets paced publishers send, in turn, at a fixed total rate. A thread, not a
/// tokio timer: tokio's timers tick in milliseconds, and 10k msg/s is one every 100 us.
pub struct Pacer {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<u64>>,
}

impl Pacer {
    /// Starts pacing `publishers` at `rate` messages per second in all.
    pub fn start(publishers: Vec<Arc<PubState>>, rate: f64) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::Builder::new()
            .name("pacer".into())
            .spawn(move || {
                let n = publishers.len() as u64;
                if n == 0 || rate <= 0.0 {
                    return 0;
                }
                let start = Instant::now();
                let mut issued: u64 = 0;
                while !stopping.load(Ordering::Acquire) {
                    let due = (start.elapsed().as_secs_f64() * rate) as u64;
                    while issued < due {
                        let p = &publishers[(issued % n) as usize];
                        p.allowed.fetch_add(1, Ordering::AcqRel);
                        p.notify.notify_one();
                        issued += 1;
                    }
                    let next = start + Duration::from_secs_f64((issued + 1) as f64 / rate);
                    let now = Instant::now();
                    if next > now {
                        thread::sleep((next - now).min(Duration::from_millis(50)));
                    }
                }
                issued
            })
            .ok();
        Self { stop, thread }
    }

    /// Stops; how many messages it allowed.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

impl Drop for Pacer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// A run of publishers and subscribers.
pub struct Plan {
    /// The publishers and their shared state.
    pub publishers: Vec<(PubSpec, Arc<PubState>)>,
    /// The subscribers.
    pub subscribers: Vec<SubSpec>,
    /// Published but not measured, first.
    pub warmup: Duration,
    /// Measured.
    pub duration: Duration,
    /// Paces the publishers at this many messages per second in all.
    pub rate: Option<f64>,
    /// The broker's process: its RSS is sampled while publishing, its CPU time measured.
    pub rss_pid: Option<u32>,
    /// Connections set up at once at most.
    pub connect_concurrency: usize,
    /// The publishers' message limits, if they have: then the run measures until all are
    /// sent and delivered, and `duration` only caps it.
    pub limits: Option<Vec<u64>>,
}

/// What a run measured and found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Seconds to connect and subscribe everyone.
    pub setup_s: f64,
    /// Subscribers and publishers that failed to set up.
    pub setup_failed: usize,
    /// Seconds measured.
    pub measured_s: f64,
    /// Distinct messages delivered while measuring.
    pub delivered_measured: u64,
    /// Messages published, in all.
    pub sent: u64,
    /// QoS 1/2 messages acknowledged.
    pub acked: u64,
    /// Deliveries expected: each message once per subscriber it goes to.
    pub expected: u64,
    /// Distinct messages delivered, in all.
    pub delivered: u64,
    /// Expected and never delivered.
    pub lost: u64,
    /// Delivered twice or more (the extra copies).
    pub duplicates: u64,
    /// Delivered after a later message of the same sequence.
    pub out_of_order: u64,
    /// Delivered to a subscriber that should not have had them, not the generator's,
    /// with a corrupt sequence number, or at the wrong QoS.
    pub misdelivered: u64,
    /// Times a publisher waited for a window.
    pub window_waits: u64,
    /// QoS 2 messages received whose PUBREL never came.
    pub unreleased: u64,
    /// The largest RSS sampled while publishing, in kB.
    pub rss_max_kb: Option<u64>,
    /// CPU used by the generator while measuring, in % of one core.
    pub generator_cpu_pct: Option<f64>,
    /// CPU used by the broker while measuring, in % of one core.
    pub broker_cpu_pct: Option<f64>,
    /// Subscribers' reports.
    pub subscribers: Vec<SubReport>,
}

impl Outcome {
    /// Deliveries per second while measuring.
    pub fn rate(&self) -> f64 {
        if self.measured_s > 0.0 {
            self.delivered_measured as f64 / self.measured_s
        } else {
            0.0
        }
    }
}

/// Runs `plan`: subscribers first, then publishers, warm-up, measurement, then publishing
/// stops and the run waits (at most `ctx.drain` without progress) for every message to
/// arrive before it counts what did not.
pub async fn run(ctx: &Arc<Ctx>, plan: Plan) -> Outcome {
    let mut outcome = Outcome::default();
    let limiter = Arc::new(Semaphore::new(plan.connect_concurrency.max(1)));
    let setup_start = Instant::now();

    let sub_ready = Arc::new(Ready::default());
    let n_subs = plan.subscribers.len();
    let subs: Vec<JoinHandle<SubReport>> = plan
        .subscribers
        .into_iter()
        .map(|spec| {
            tokio::spawn(subscriber(
                ctx.clone(),
                spec,
                sub_ready.clone(),
                Some(limiter.clone()),
            ))
        })
        .collect();
    let (_, sub_failed) = sub_ready
        .wait(
            n_subs,
            ctx.connect_timeout * 4 + Duration::from_secs(n_subs as u64 / 100),
        )
        .await;

    let pub_ready = Arc::new(Ready::default());
    let states: Vec<Arc<PubState>> = plan.publishers.iter().map(|(_, st)| st.clone()).collect();
    let n_pubs = plan.publishers.len();
    let pubs: Vec<JoinHandle<PubReport>> = plan
        .publishers
        .into_iter()
        .map(|(spec, st)| {
            tokio::spawn(publisher(
                ctx.clone(),
                spec,
                st,
                pub_ready.clone(),
                limiter.clone(),
            ))
        })
        .collect();
    let (_, pub_failed) = pub_ready.wait(n_pubs, ctx.connect_timeout * 4).await;
    outcome.setup_s = setup_start.elapsed().as_secs_f64();
    outcome.setup_failed = sub_failed + pub_failed;

    let ok = outcome.setup_failed == 0 && ctx.errors.count() == 0;
    if ok {
        let pacer = plan.rate.map(|rate| Pacer::start(states.clone(), rate));
        ctx.set_phase(Phase::Run);
        // A run of a fixed number of messages is measured whole.
        if plan.limits.is_none() {
            sample_while(plan.warmup, plan.rss_pid, &mut outcome.rss_max_kb).await;
        }
        let d0 = ctx.delivered.load(Ordering::Acquire);
        let t0 = Instant::now();
        let cpu0 = (
            crate::procfs::cpu_s(None),
            plan.rss_pid.and_then(|p| crate::procfs::cpu_s(Some(p))),
        );
        match &plan.limits {
            Some(limits) => until_all_sent(ctx, &states, limits, plan.duration).await,
            None => sample_while(plan.duration, plan.rss_pid, &mut outcome.rss_max_kb).await,
        }
        let d1 = ctx.delivered.load(Ordering::Acquire);
        outcome.measured_s = t0.elapsed().as_secs_f64();
        let cpu1 = (
            crate::procfs::cpu_s(None),
            plan.rss_pid.and_then(|p| crate::procfs::cpu_s(Some(p))),
        );
        let pct = |a: Option<f64>, b: Option<f64>| {
            Some(((b? - a?) / outcome.measured_s.max(1e-9) * 100.0).round())
        };
        outcome.generator_cpu_pct = pct(cpu0.0, cpu1.0);
        outcome.broker_cpu_pct = pct(cpu0.1, cpu1.1);
        outcome.delivered_measured = d1.saturating_sub(d0);
        if let Some(pacer) = pacer {
            pacer.stop();
        }
    }
    for st in &states {
        tracing::debug!(
            sent = st.sent.load(Ordering::Relaxed),
            delivered = ?st.links.iter().map(|l| l.delivered.load(Ordering::Relaxed)).collect::<Vec<_>>(),
            waits = st.window_waits.load(Ordering::Relaxed),
            "publisher at the end of the measurement"
        );
    }
    ctx.set_phase(Phase::Stop);
    for handle in pubs {
        match handle.await {
            Ok(report) => {
                outcome.sent += report.sent;
                outcome.acked += report.acked;
            }
            Err(e) => ctx.errors.push(format!("publisher task: {e}")),
        }
    }
    outcome.window_waits = states
        .iter()
        .map(|s| s.window_waits.load(Ordering::Relaxed))
        .sum();

    outcome.expected = states.iter().map(|s| s.expected_deliveries()).sum();
    wait_for_deliveries(ctx, outcome.expected).await;
    ctx.set_phase(Phase::Finish);
    for handle in subs {
        match handle.await {
            Ok(report) => outcome.subscribers.push(report),
            Err(e) => ctx.errors.push(format!("subscriber task: {e}")),
        }
    }
    tally(&states, &mut outcome);
    outcome
}

/// Waits until `expected` deliveries arrived, or nothing arrived for `ctx.drain`.
pub async fn wait_for_deliveries(ctx: &Ctx, expected: u64) {
    let mut last = ctx.delivered.load(Ordering::Acquire);
    let mut last_change = Instant::now();
    loop {
        let now = ctx.delivered.load(Ordering::Acquire);
        if now >= expected {
            return;
        }
        if now != last {
            last = now;
            last_change = Instant::now();
        } else if last_change.elapsed() >= ctx.drain {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sleeps for `d`, sampling the RSS of `pid` every 250 ms if there is one.
async fn sample_while(d: Duration, pid: Option<u32>, max_kb: &mut Option<u64>) {
    let end = Instant::now() + d;
    loop {
        if let Some(kb) = pid.and_then(crate::procfs::rss_kb) {
            *max_kb = Some(max_kb.unwrap_or(0).max(kb));
        }
        let now = Instant::now();
        if now >= end {
            return;
        }
        let step = if pid.is_some() {
            Duration::from_millis(250)
        } else {
            end - now
        };
        tokio::time::sleep((end - now).min(step)).await;
    }
}

/// Publishes until every publisher reached its limit and every delivery arrived, or until
/// `cap` passed.
async fn until_all_sent(ctx: &Ctx, states: &[Arc<PubState>], limits: &[u64], cap: Duration) {
    let end = Instant::now() + cap;
    while Instant::now() < end {
        let all_sent = states
            .iter()
            .zip(limits)
            .all(|(s, &l)| s.sent.load(Ordering::Acquire) >= l);
        if all_sent {
            let expected: u64 = states.iter().map(|s| s.expected_deliveries()).sum();
            if ctx.delivered.load(Ordering::Acquire) >= expected {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Counts losses, duplicates and the rest from the subscribers' reports.
pub fn tally(states: &[Arc<PubState>], outcome: &mut Outcome) {
    let mut expected = 0;
    let mut delivered = 0;
    for report in &outcome.subscribers {
        outcome.misdelivered += report.unexpected + report.foreign + report.qos_mismatch;
        outcome.unreleased += report.unreleased;
        for (id, topic_index, tracker) in &report.trackers {
            let Some(st) = states.get(*id as usize) else {
                continue;
            };
            let to_topic = st.sent_to(st.sent.load(Ordering::Acquire), *topic_index);
            expected += to_topic;
            delivered += tracker.unique;
            outcome.lost += tracker.lost(to_topic);
            outcome.duplicates += tracker.duplicates;
            outcome.out_of_order += tracker.out_of_order;
            outcome.misdelivered += tracker.implausible + tracker.beyond(to_topic);
        }
    }
    // Subscribers that never reported (a task that failed) lose what was meant for them.
    outcome.lost += outcome.expected.saturating_sub(expected);
    outcome.delivered = delivered;
}
