//! A connection's link: how a session (or the connection's own reader) writes to the client
//! and closes the connection, from any thread, without waiting.
//!
//! The link is the sending end of a buffer of encoded bytes that the connection's writer
//! drains: a sender encodes its packets into it under the link's lock (a batch of them, from
//! one session run, under one lock: [`Link::send_all`]), and the writer takes everything
//! queued in one swap and writes it with one vectored write. The writer is a task only while
//! the connection is busy: idle, it is the socket's writing half kept on the link
//! ([`Writer`]); the sender that queues into it starts it (spawns its task), which writes,
//! looks for more a few times, letting the runtime's other tasks run between looks (under
//! load the sessions queue more meanwhile: [`Outbox::linger`]), and puts the half back when
//! none came. An idle connection has no writer task.
//! A QoS 0 PUBLISH fanned out to many subscribers comes encoded once ([`Frame`]) and is
//! copied into each subscriber's buffer, a burst of them on one topic as one buffer
//! ([`Frames`]) that each subscriber's writer writes as it is; a large payload is not copied
//! at all, but written from the publisher's buffer. Empty, the buffer holds no memory once the
//! writer has gone idle: an idle connection costs no queue.
//!
//! Bounds, counted in packets under the same lock: QoS 0 PUBLISHes are dropped (and counted)
//! past [`Config::max_qos0_backlog`](crate::Config::max_qos0_backlog) waiting to be written,
//! and a client that lets more than [`MAX_BACKLOG`] packets of any kind pile up (it sends but
//! never reads) is disconnected. QoS 1 and 2 PUBLISHes are bounded by the session's in-flight
//! window.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;

use crate::codec;
use crate::message::Message;
use crate::packet::{Packet, Publish, PublishQos, QoS};
use crate::will::CloseReason;

/// Identifies one network connection, unique for the broker's lifetime.
pub(crate) type ConnId = u64;

/// Most packets of any kind that may wait for one connection's writer before the connection
/// is closed as a client that does not read.
pub(crate) const MAX_BACKLOG: usize = 100_000;

/// Payloads from this size on are written from their shared buffer, not copied into the
/// connection's buffer.
pub(crate) const SHARED_PAYLOAD: usize = 1024;

/// The least a connection's buffer grows by when it is empty: a batch of small packets
/// then takes one allocation, not one per doubling.
const FIRST_RESERVE: usize = 2048;

/// A QoS 0 PUBLISH encoded once for all the subscribers it goes to (RETAIN 0
/// [MQTT-3.3.1-9]): each delivery copies a few bytes (or, for a large payload, shares it).
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    /// The packet, or with a payload of [`SHARED_PAYLOAD`] bytes or more, all of it but its
    /// payload.
    head: Bytes,
    /// A large payload, written from the publisher's buffer.
    payload: Option<Bytes>,
}

impl Frame {
    /// `message` as every subscriber gets it if it was published at QoS 0 (and can be
    /// encoded); `None` for a QoS 1 or 2 message, whose QoS depends on the subscription.
    pub(crate) fn qos0_of(message: &Message) -> Option<Frame> {
        if message.qos == QoS::AtMostOnce {
            Frame::qos0(message)
        } else {
            None
        }
    }

    /// `message` as a QoS 0 PUBLISH with RETAIN 0, what [`Message::forwarded`] gives for a
    /// subscription that makes it QoS 0; `None` if it cannot be encoded (too large).
    pub(crate) fn qos0(message: &Message) -> Option<Frame> {
        let publish = Publish {
            qos: PublishQos::AtMostOnce,
            retain: false,
            topic: message.topic.clone(),
            payload: message.payload.clone(),
        };
        let mut head = BytesMut::new();
        if publish.payload.len() >= SHARED_PAYLOAD {
            codec::encode_publish_header(&publish, &mut head).ok()?;
            Some(Frame {
                head: head.freeze(),
                payload: Some(publish.payload),
            })
        } else {
            codec::encode(&Packet::Publish(publish), &mut head).ok()?;
            Some(Frame {
                head: head.freeze(),
                payload: None,
            })
        }
    }
}

/// Several QoS 0 PUBLISHes, one after the other, encoded once (RETAIN 0) for all the
/// subscribers they go to: each of them writes the same bytes, from the same buffer.
#[derive(Debug, Clone)]
pub(crate) struct Frames {
    /// The packets.
    bytes: Bytes,
    /// Where each packet ends in `bytes`.
    ends: Arc<[usize]>,
}

impl Frames {
    /// `messages`, all published at QoS 0, as forwarded at QoS 0 with RETAIN 0; `None` if
    /// one is not QoS 0 or cannot be encoded.
    pub(crate) fn qos0(messages: &[Message]) -> Option<Frames> {
        let mut bytes = BytesMut::new();
        let mut ends = Vec::with_capacity(messages.len());
        for message in messages {
            if message.qos != QoS::AtMostOnce {
                return None;
            }
            let publish = Publish {
                qos: PublishQos::AtMostOnce,
                retain: false,
                topic: message.topic.clone(),
                payload: message.payload.clone(),
            };
            codec::encode(&Packet::Publish(publish), &mut bytes).ok()?;
            ends.push(bytes.len());
        }
        Some(Frames {
            bytes: bytes.freeze(),
            ends: ends.into(),
        })
    }

    /// How many packets.
    pub(crate) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The first `n` packets' bytes.
    fn first(&self, n: usize) -> Bytes {
        match n.checked_sub(1).and_then(|last| self.ends.get(last)) {
            Some(&end) => self.bytes.slice(..end),
            None if n == 0 => Bytes::new(),
            None => self.bytes.clone(),
        }
    }
}

/// What a session (or the reader) writes to the client.
#[derive(Debug)]
pub(crate) enum Out {
    /// A packet, encoded when queued.
    Packet(Packet),
    /// A QoS 0 PUBLISH encoded already.
    Frame(Frame),
    /// QoS 0 PUBLISHes encoded already.
    Frames(Frames),
}

impl Out {
    /// How many packets, and among them PUBLISHes, and QoS 0 PUBLISHes.
    fn count(&self) -> (usize, usize, usize) {
        match self {
            Out::Packet(Packet::Publish(p)) => (1, 1, usize::from(p.qos == PublishQos::AtMostOnce)),
            Out::Packet(_) => (1, 0, 0),
            Out::Frame(_) => (1, 1, 1),
            Out::Frames(frames) => (frames.len(), frames.len(), frames.len()),
        }
    }
}

/// What waits for the writer: encoded packets, in order (`chunks` first, then `tail`), and
/// how many.
#[derive(Debug, Default)]
pub(crate) struct Queued {
    /// Encoded pieces before `tail`: shared large payloads, and what was encoded before
    /// each of them.
    pub(crate) chunks: VecDeque<Bytes>,
    /// Encoded packets after `chunks`.
    pub(crate) tail: BytesMut,
    /// Packets in it.
    pub(crate) packets: usize,
    /// Among them, PUBLISHes, and QoS 0 PUBLISHes.
    pub(crate) publishes: usize,
    qos0: usize,
    /// The connection closes after what is queued.
    pub(crate) close: bool,
}

impl Queued {
    /// Whether nothing is in it: no packet, no close.
    pub(crate) fn is_empty(&self) -> bool {
        self.packets == 0 && !self.close
    }

    /// Empties it, keeping the buffers' memory.
    pub(crate) fn clear(&mut self) {
        self.chunks.clear();
        self.tail.clear();
        self.packets = 0;
        self.publishes = 0;
        self.qos0 = 0;
        self.close = false;
    }

    /// Bytes in it.
    pub(crate) fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum::<usize>() + self.tail.len()
    }

    /// Appends `out`, encoded.
    fn encode(&mut self, out: &Out) {
        if self.tail.capacity() == 0 {
            self.tail.reserve(FIRST_RESERVE);
        }
        let result = match out {
            Out::Packet(Packet::Publish(publish)) if publish.payload.len() >= SHARED_PAYLOAD => {
                codec::encode_publish_header(publish, &mut self.tail)
                    .map(|()| self.shared_payload(publish.payload.clone()))
            }
            Out::Packet(packet) => codec::encode(packet, &mut self.tail),
            Out::Frame(frame) => {
                self.tail.extend_from_slice(&frame.head);
                if let Some(payload) = &frame.payload {
                    self.shared_payload(payload.clone());
                }
                Ok(())
            }
            Out::Frames(frames) => {
                self.bytes(frames.bytes.clone());
                Ok(())
            }
        };
        if let Err(error) = result {
            let packet = match out {
                Out::Packet(packet) => packet.packet_type(),
                Out::Frame(_) | Out::Frames(_) => crate::packet::PacketType::Publish,
            };
            tracing::warn!(%error, %packet, "cannot encode a packet for a client; skipped");
        }
    }

    /// Appends encoded bytes: shared if there are many, else copied.
    fn bytes(&mut self, bytes: Bytes) {
        if bytes.len() >= SHARED_PAYLOAD {
            self.shared_payload(bytes);
        } else {
            self.tail.extend_from_slice(&bytes);
        }
    }

    /// Appends a large payload after what is encoded, without copying it.
    fn shared_payload(&mut self, payload: Bytes) {
        self.chunks.push_back(self.tail.split().freeze());
        self.chunks.push_back(payload);
    }
}

/// How many times a writer's task looks for more to write, yielding between looks, before it
/// gives the writing half back ([`Outbox::linger`]). Each yield lets every other ready task
/// of the runtime run once, the Hermes shards delivering to this connection among them: 8
/// keeps a steadily written connection's task (a task per burst cost fan-out 1->1000 a
/// quarter more instructions per delivery) and a connection written to now and then without
/// one (a task lingering for the keep-alive sweep to retire it, 10k sessions at 1 message a
/// second each, cost 840 bytes per session and a 2-4 ms p99).
const LINGER_LOOKS: u32 = 8;

/// A connection's writing half while nothing is to be written: what starts its writer.
pub(crate) trait Writer: Send {
    /// Spawns the writer's task, which writes what `outbox` holds until it is empty, then
    /// gives this back ([`Outbox::park`]), or until the connection closes
    /// ([`Outbox::gone`]). With `now`, it first writes what it can at once, on the
    /// caller's thread, and spawns a task only for what the socket did not take (the
    /// connection's own reader answering: no hop for a CONNACK or a PINGRESP). Called from
    /// within the tokio runtime (the broker's tasks and Hermes' shards), never with the
    /// link locked.
    fn start(self: Box<Self>, outbox: Outbox, now: bool);
}

/// Where a connection's writer is.
enum WriterState {
    /// Not given to the link yet ([`Outbox::install`]).
    Unset,
    /// Idle: started by the next write.
    Idle(Box<dyn Writer>),
    /// Its task is writing.
    Busy,
    /// Ended: the connection closed (or the writer failed, or was abandoned).
    Gone,
}

impl std::fmt::Debug for WriterState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriterState::Unset => "Unset",
            WriterState::Idle(_) => "Idle",
            WriterState::Busy => "Busy",
            WriterState::Gone => "Gone",
        })
    }
}

/// What waits for the writer, and the writer while it is idle.
#[derive(Debug)]
struct Queue {
    /// Empty, it holds no allocation once the writer has gone idle ([`Outbox::park`]).
    queued: Queued,
    writer: WriterState,
}

impl Queue {
    /// The idle writer, taken (marked busy) if something is queued: the caller starts it
    /// after unlocking ([`start`]). A busy writer's task needs no wake-up: it looks at the
    /// queue, under this lock, before it parks ([`Outbox::park`]).
    fn wake(&mut self) -> Option<Box<dyn Writer>> {
        if self.queued.is_empty() || !matches!(self.writer, WriterState::Idle(_)) {
            return None;
        }
        match std::mem::replace(&mut self.writer, WriterState::Busy) {
            WriterState::Idle(writer) => Some(writer),
            _ => None,
        }
    }
}

/// What the link's ends share.
#[derive(Debug)]
struct Shared {
    /// What waits for the writer, and the writer while idle.
    queue: Mutex<Queue>,
    /// The writer ended, or was told to ([`Link::abandon_writer`]).
    writer_changed: Notify,
    /// The connection's end gave up waiting for the writer: it stops where it is.
    abandoned: AtomicBool,
    /// The connection is closing: no more writes.
    closed: AtomicBool,
    /// The session has written the CONNACK: the reader may answer PINGREQ itself.
    accepted: AtomicBool,
    /// Packets the reader handed to the session whose effects are not all out yet: while
    /// there are any, the reader hands QoS 0 PUBLISHes to the session too, behind them.
    unsettled: AtomicU64,
    /// Why it was closed by the server, as `reason_code`.
    reason: AtomicU8,
    /// Wakes the reader when the connection is closed by the server (or nudged by the
    /// keep-alive sweep).
    closing: Notify,
    /// When the reader's wait for the client's next packet ends, in the broker's milliseconds
    /// ([`Shared::stamp`](super::Shared::stamp)); 0: never. Read by the keep-alive sweep.
    due: AtomicU64,
}

/// The writing end of a connection; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    conn: ConnId,
    shared: Arc<Shared>,
    max_qos0: usize,
}

/// The writer's end of a link.
#[derive(Debug)]
pub(crate) struct Outbox {
    shared: Arc<Shared>,
}

/// What a write through a link came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Queued for the writer.
    Queued,
    /// A QoS 0 PUBLISH dropped: the client is behind.
    Dropped,
    /// The connection is closed (or just was, for a client that does not read).
    Closed,
}

impl Link {
    /// A new link for connection `conn`, and the writer's end.
    pub(crate) fn new(conn: ConnId, max_qos0: usize) -> (Link, Outbox) {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                queued: Queued::default(),
                writer: WriterState::Unset,
            }),
            writer_changed: Notify::new(),
            abandoned: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            accepted: AtomicBool::new(false),
            unsettled: AtomicU64::new(0),
            reason: AtomicU8::new(0),
            closing: Notify::new(),
            due: AtomicU64::new(0),
        });
        let link = Link {
            conn,
            shared: Arc::clone(&shared),
            max_qos0: max_qos0.max(1),
        };
        let outbox = Outbox { shared };
        (link, outbox)
    }

    /// The connection's ID.
    pub(crate) fn conn(&self) -> ConnId {
        self.conn
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.shared)
    }

    /// Queues `packet` for the client. A QoS 0 PUBLISH is dropped while the client has
    /// `max_qos0_backlog` of them waiting.
    pub(crate) fn send(&self, packet: Packet) -> Written {
        self.send_with(packet, false)
    }

    /// [`send`](Self::send), the writer started `now` or not ([`Writer::start`]).
    fn send_with(&self, packet: Packet, now: bool) -> Written {
        if self.shared.closed.load(Ordering::Acquire) {
            return Written::Closed;
        }
        let out = Out::Packet(packet);
        let mut dropped = 0;
        let (written, writer) = {
            let mut queue = self.lock();
            let written = self.push(&mut queue.queued, out, &mut dropped);
            (written, queue.wake())
        };
        self.pushed(written, writer, now);
        if dropped > 0 {
            return Written::Dropped;
        }
        written
    }

    /// [`send`](Self::send) by the connection's reader, for its own answers (a CONNACK, a
    /// PINGRESP): if the writer is idle, written at once on the reader's thread as far as
    /// the socket takes it, without starting a task.
    pub(crate) fn send_now(&self, packet: Packet) -> Written {
        self.send_with(packet, true)
    }

    /// Queues everything in `outs`, in order, under one lock and with at most one start of
    /// the writer, as [`send`](Self::send) each; empties `outs`. Returns how many QoS 0
    /// PUBLISHes were dropped, and whether the connection is closed.
    pub(crate) fn send_all(&self, outs: &mut Vec<Out>) -> (u64, bool) {
        if outs.is_empty() {
            return (0, false);
        }
        if self.shared.closed.load(Ordering::Acquire) {
            outs.clear();
            return (0, true);
        }
        let (mut dropped, mut closed) = (0, false);
        let writer = {
            let mut queue = self.lock();
            for out in outs.drain(..) {
                if self.push(&mut queue.queued, out, &mut dropped) == Written::Closed {
                    closed = true;
                    break;
                }
            }
            queue.wake()
        };
        outs.clear();
        let written = if closed {
            Written::Closed
        } else {
            Written::Queued
        };
        self.pushed(written, writer, false);
        (dropped, closed)
    }

    /// Encodes `out` into `queue`, within the bounds, adding the QoS 0 PUBLISHes dropped
    /// to `dropped`; the caller starts the writer after unlocking ([`pushed`](Self::pushed)).
    fn push(&self, queue: &mut Queued, out: Out, dropped: &mut u64) -> Written {
        // Under the lock: a close (which sets it under the lock) is seen here even once the
        // writer has taken the queue with its `close`.
        if self.shared.closed.load(Ordering::Acquire) {
            return Written::Closed;
        }
        let (mut packets, mut publishes, mut qos0) = out.count();
        let room = self.max_qos0.saturating_sub(queue.qos0);
        let mut out = out;
        if qos0 > room {
            // The oldest waiting are kept: what does not fit is dropped.
            *dropped += (qos0 - room) as u64;
            match out {
                Out::Frames(frames) if room > 0 => {
                    out = Out::Frames(Frames {
                        bytes: frames.first(room),
                        ends: Arc::from(&frames.ends[..room]),
                    });
                    (packets, publishes, qos0) = (room, room, room);
                }
                _ => return Written::Dropped,
            }
        }
        if queue.packets >= MAX_BACKLOG {
            tracing::warn!(
                conn = self.conn,
                "closing a connection whose client reads nothing: {MAX_BACKLOG} packets wait for it"
            );
            self.close_locked(queue, CloseReason::ServerClosed);
            return Written::Closed;
        }
        queue.encode(&out);
        queue.packets += packets;
        queue.qos0 += qos0;
        queue.publishes += publishes;
        if matches!(out, Out::Packet(Packet::ConnAck(_))) {
            self.shared.accepted.store(true, Ordering::Release);
        }
        Written::Queued
    }

    /// After unlocking: starts the writer if [`Queue::wake`] took it, and wakes the reader if
    /// the link was closed meanwhile.
    fn pushed(&self, written: Written, writer: Option<Box<dyn Writer>>, now: bool) {
        start(&self.shared, writer, now);
        if written == Written::Closed {
            self.shared.closing.notify_waiters();
            self.shared.closing.notify_one();
        }
    }

    /// The reader hands the session a packet whose effects (on the subscription index, the
    /// retained shards, the subscribers) a later QoS 0 PUBLISH must not overtake.
    pub(crate) fn unsettle(&self) {
        self.shared.unsettled.fetch_add(1, Ordering::AcqRel);
    }

    /// The session has carried out one such packet, its sends included.
    pub(crate) fn settle(&self) {
        self.settle_n(1);
    }

    /// The session has carried out `n` such packets, their sends included.
    pub(crate) fn settle_n(&self, n: u64) {
        let _ = self
            .shared
            .unsettled
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(n))
            });
    }

    /// Whether every packet handed to the session has been carried out: a QoS 0 PUBLISH
    /// may then take the direct path without overtaking any.
    pub(crate) fn is_settled(&self) -> bool {
        self.shared.unsettled.load(Ordering::Acquire) == 0
    }

    /// Whether a CONNACK was written: until then nothing else may be [MQTT-3.2.0-1].
    pub(crate) fn is_accepted(&self) -> bool {
        self.shared.accepted.load(Ordering::Acquire)
    }

    /// Closes the connection for `reason` after what was queued so far is written. The first
    /// reason given is kept.
    pub(crate) fn close(&self, reason: CloseReason) {
        if self.shared.closed.load(Ordering::Acquire) {
            return;
        }
        let writer = {
            let mut queue = self.lock();
            self.close_locked(&mut queue.queued, reason);
            queue.wake()
        };
        self.pushed(Written::Closed, writer, false);
    }

    /// [`close`](Self::close) with the queue locked; the caller wakes the writer and the
    /// reader after unlocking.
    fn close_locked(&self, queue: &mut Queued, reason: CloseReason) {
        let shared = &self.shared;
        if !shared.closed.swap(true, Ordering::AcqRel) {
            shared.reason.store(reason_code(reason), Ordering::Release);
        }
        queue.close = true;
    }

    /// Whether the connection was closed (by the server or by the writer failing).
    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }

    /// Why the server closed the connection, once it did.
    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        if !self.is_closed() {
            return None;
        }
        reason_from_code(self.shared.reason.load(Ordering::Acquire))
    }

    /// Resolves once the connection is closed by the server (or the writer failed).
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.shared.closing.notified();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }
}

impl Link {
    /// Sets when the reader's wait for the next packet ends (0: never), for the keep-alive
    /// sweep.
    pub(crate) fn set_due(&self, due: u64) {
        self.shared.due.store(due, Ordering::Relaxed);
    }

    /// When the reader's wait for the next packet ends (0: never).
    pub(crate) fn due(&self) -> u64 {
        self.shared.due.load(Ordering::Relaxed)
    }

    /// Wakes the reader if it waits (the keep-alive sweep, once its wait is overdue): it
    /// looks at the clock itself.
    pub(crate) fn nudge(&self) {
        self.shared.closing.notify_waiters();
    }

    /// Resolves at a [`nudge`](Self::nudge), or once the connection is closed by the server
    /// after this call (or, rarely, for no reason: the caller looks at what changed, and at
    /// [`is_closed`](Self::is_closed) after making this).
    pub(crate) fn nudged(&self) -> tokio::sync::futures::Notified<'_> {
        self.shared.closing.notified()
    }
}

impl Link {
    /// Resolves once the writer has ended (the connection closed, the writer failed or was
    /// abandoned), or at once if it never started.
    pub(crate) async fn writer_ended(&self) {
        loop {
            let changed = self.shared.writer_changed.notified();
            if matches!(self.lock().writer, WriterState::Gone | WriterState::Unset) {
                return;
            }
            changed.await;
        }
    }

    /// Tells the writer to stop where it is (a client that does not read what is left at
    /// close): its task ends, dropping the socket's writing half.
    pub(crate) fn abandon_writer(&self) {
        self.shared.abandoned.store(true, Ordering::Release);
        let idle = {
            let mut queue = self.lock();
            match queue.writer {
                WriterState::Busy => WriterState::Busy,
                _ => std::mem::replace(&mut queue.writer, WriterState::Gone),
            }
        };
        drop(idle);
        self.shared.writer_changed.notify_waiters();
    }
}

/// Starts the writer that [`Queue::wake`] took, if it took one, after unlocking.
fn start(shared: &Arc<Shared>, writer: Option<Box<dyn Writer>>, now: bool) {
    if let Some(writer) = writer {
        writer.start(
            Outbox {
                shared: Arc::clone(shared),
            },
            now,
        );
    }
}

/// The link's queue, locked, also if a thread panicked while holding it (each change to it
/// is whole under the lock).
fn lock(shared: &Shared) -> MutexGuard<'_, Queue> {
    super::lock(&shared.queue)
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        lock(&self.shared)
    }

    /// Gives the link its writer, idle; started at once if something is queued already.
    pub(crate) fn install(&self, writer: Box<dyn Writer>) {
        let writer = {
            let mut queue = self.lock();
            queue.writer = WriterState::Idle(writer);
            queue.wake()
        };
        start(&self.shared, writer, false);
    }

    /// The writer has written everything queued: it goes idle, given back to the link, and
    /// the queue's memory is released (an idle connection keeps none); `Some` with it if
    /// something was queued meanwhile, to write on.
    pub(crate) fn park<W: Writer + 'static>(&self, writer: Box<W>) -> Option<Box<W>> {
        let mut queue = self.lock();
        if !queue.queued.is_empty() {
            return Some(writer);
        }
        queue.queued = Queued::default();
        queue.writer = if self.shared.abandoned.load(Ordering::Acquire) {
            WriterState::Gone
        } else {
            WriterState::Idle(writer)
        };
        None
    }

    /// The writer's task ended for good (after the close, a failed write, or abandoned).
    pub(crate) fn gone(&self) {
        self.lock().writer = WriterState::Gone;
        self.shared.writer_changed.notify_waiters();
    }

    /// After writing everything queued, looks for more up to [`LINGER_LOOKS`] times, letting
    /// the runtime's other tasks run between looks (the sessions it delivers for among them):
    /// true once something is queued, false if nothing came; the writer then gives the
    /// writing half back ([`park`](Self::park)). A connection that is written to steadily
    /// keeps its task (one wake-up and one vectored write for many session runs); one written
    /// to now and then keeps none between writes. The queue's memory is released while it
    /// looks.
    pub(crate) async fn linger(&self) -> bool {
        for _ in 0..LINGER_LOOKS {
            {
                let mut queue = self.lock();
                if !queue.queued.is_empty() {
                    return true;
                }
                if queue.queued.tail.capacity() != 0 || queue.queued.chunks.capacity() != 0 {
                    queue.queued = Queued::default();
                }
            }
            tokio::task::yield_now().await;
        }
        false
    }

    /// Resolves once the connection's end abandons the writer ([`Link::abandon_writer`]).
    pub(crate) async fn abandoned(&self) {
        loop {
            let changed = self.shared.writer_changed.notified();
            if self.shared.abandoned.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    /// Takes everything queued into `into` (which must be empty: its buffers are given to
    /// the queue in exchange, so that a busy connection's two buffers are reused without
    /// allocating); false if nothing was.
    pub(crate) fn take(&self, into: &mut Queued) -> bool {
        debug_assert!(into.is_empty() && into.tail.is_empty() && into.chunks.is_empty());
        let mut queue = self.lock();
        if queue.queued.is_empty() {
            return false;
        }
        std::mem::swap(&mut queue.queued, into);
        true
    }

    /// The writer could not write: the connection is closed (a network error), what was
    /// queued is dropped, and the writer is gone.
    pub(crate) fn failed(&self) {
        let shared = &self.shared;
        if !shared.closed.swap(true, Ordering::AcqRel) {
            shared
                .reason
                .store(reason_code(CloseReason::NetworkError), Ordering::Release);
        }
        {
            let mut queue = self.lock();
            queue.queued = Queued::default();
            queue.queued.close = true;
            queue.writer = WriterState::Gone;
        }
        shared.writer_changed.notify_waiters();
        shared.closing.notify_waiters();
        shared.closing.notify_one();
    }
}

fn reason_code(reason: CloseReason) -> u8 {
    match reason {
        CloseReason::Disconnect => 1,
        CloseReason::NetworkError => 2,
        CloseReason::KeepAliveTimeout => 3,
        CloseReason::ProtocolError => 4,
        CloseReason::TakenOver => 5,
        CloseReason::ServerClosed => 6,
    }
}

fn reason_from_code(code: u8) -> Option<CloseReason> {
    Some(match code {
        1 => CloseReason::Disconnect,
        2 => CloseReason::NetworkError,
        3 => CloseReason::KeepAliveTimeout,
        4 => CloseReason::ProtocolError,
        5 => CloseReason::TakenOver,
        6 => CloseReason::ServerClosed,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU16;
    use std::time::Duration;

    use super::*;
    use crate::codec::decode;
    use crate::topic::TopicName;

    fn ack(n: u16) -> Packet {
        Packet::PubAck(NonZeroU16::new(n).unwrap())
    }

    fn message(topic: &str, payload: &[u8], retain: bool) -> Message {
        Message {
            topic: TopicName::try_from(topic).unwrap(),
            payload: Bytes::copy_from_slice(payload),
            qos: QoS::AtMostOnce,
            retain,
        }
    }

    /// Everything taken, decoded, in order; whether it ended with a close.
    fn drain(outbox: &Outbox) -> (Vec<Packet>, bool) {
        let mut taken = Queued::default();
        if !outbox.take(&mut taken) {
            return (Vec::new(), false);
        }
        let mut wire = BytesMut::new();
        for chunk in &taken.chunks {
            wire.extend_from_slice(chunk);
        }
        wire.extend_from_slice(&taken.tail);
        assert_eq!(wire.len(), taken.len());
        let mut packets = Vec::new();
        while let Some(packet) = decode(&mut wire, usize::MAX).unwrap() {
            packets.push(packet);
        }
        assert!(wire.is_empty(), "whole packets only");
        assert_eq!(packets.len(), taken.packets);
        (packets, taken.close)
    }

    /// A writer that, when started, hands itself and the outbox to the test.
    struct Started(std::sync::mpsc::Sender<(Box<Started>, Outbox)>);

    impl Writer for Started {
        fn start(self: Box<Self>, outbox: Outbox, _now: bool) {
            let sender = self.0.clone();
            sender.send((self, outbox)).unwrap();
        }
    }

    /// A link with a test writer installed, and where its starts arrive.
    fn with_writer() -> (Link, std::sync::mpsc::Receiver<(Box<Started>, Outbox)>) {
        let (link, outbox) = Link::new(1, 10);
        let (sender, starts) = std::sync::mpsc::channel();
        outbox.install(Box::new(Started(sender)));
        (link, starts)
    }

    /// What is queued comes out in order; the idle writer is started by the first write
    /// only (not once per write), and once it has written everything and parked, the queue
    /// holds no memory (an idle connection keeps none) and the next write starts it again.
    #[test]
    fn queue_keeps_order_starts_the_writer_once_and_releases_its_memory_when_idle() {
        let (link, starts) = with_writer();
        assert!(starts.try_recv().is_err(), "installed idle: not started");
        for n in 1..=40 {
            assert_eq!(link.send(ack(n)), Written::Queued);
        }
        let (writer, outbox) = starts
            .try_recv()
            .expect("the first write starts the writer");
        assert!(starts.try_recv().is_err(), "started once, not per write");
        let (packets, close) = drain(&outbox);
        assert_eq!(packets, (1..=40).map(ack).collect::<Vec<_>>());
        assert!(!close);
        // Written after the last take: the writer is handed back to write it.
        assert_eq!(link.send(ack(41)), Written::Queued);
        let writer = outbox.park(writer).expect("something was queued meanwhile");
        assert_eq!(drain(&outbox).0, [ack(41)]);
        assert!(outbox.park(writer).is_none(), "parked");
        {
            let queue = lock(&link.shared);
            assert!(matches!(queue.writer, WriterState::Idle(_)));
            assert_eq!(
                queue.queued.tail.capacity(),
                0,
                "an idle queue holds no memory"
            );
            assert_eq!(
                queue.queued.chunks.capacity(),
                0,
                "an idle queue holds no memory"
            );
        }
        assert!(starts.try_recv().is_err());
        assert_eq!(link.send(ack(42)), Written::Queued);
        let (_writer, outbox) = starts.try_recv().expect("parked, the next write starts it");
        assert_eq!(drain(&outbox).0, [ack(42)]);
    }

    /// A close starts the idle writer (to write what is left and end the stream); the
    /// connection's end waits for it to be gone, or abandons it, which drops an idle one.
    #[tokio::test]
    async fn close_starts_the_writer_and_the_end_waits_for_it() {
        let (link, starts) = with_writer();
        link.close(CloseReason::ServerClosed);
        let (writer, outbox) = starts.try_recv().expect("the close starts the writer");
        assert_eq!(drain(&outbox), (Vec::new(), true));
        let ended = tokio::time::timeout(Duration::from_millis(50), link.writer_ended()).await;
        assert!(ended.is_err(), "busy: not ended");
        drop(writer);
        outbox.gone();
        tokio::time::timeout(Duration::from_secs(5), link.writer_ended())
            .await
            .expect("gone: ended");
        // Abandoned while idle: dropped, ended.
        let (link, starts) = with_writer();
        link.abandon_writer();
        tokio::time::timeout(Duration::from_secs(5), link.writer_ended())
            .await
            .expect("abandoned: ended");
        link.close(CloseReason::ServerClosed);
        assert!(
            starts.try_recv().is_err(),
            "an abandoned writer is not started"
        );
    }

    /// A batch from one session run (packets, frames shared by many subscribers, large
    /// payloads written from their own buffer) comes out whole and in order, with the QoS 0
    /// bound applied to frames as to packets.
    #[tokio::test]
    async fn a_batch_keeps_order_and_the_qos0_bound() {
        let (link, outbox) = Link::new(1, 3);
        let small = message("t/1", b"small", true);
        let large = message("t/2", &[7u8; SHARED_PAYLOAD + 10], false);
        let (small_frame, large_frame) =
            (Frame::qos0(&small).unwrap(), Frame::qos0(&large).unwrap());
        assert!(small_frame.payload.is_none(), "a small one is one piece");
        assert_eq!(
            large_frame.payload.as_ref(),
            Some(&large.payload),
            "a large payload is shared"
        );
        let mut outs = vec![
            Out::Packet(ack(1)),
            Out::Frame(small_frame.clone()),
            Out::Frame(large_frame),
            Out::Packet(ack(2)),
            Out::Packet(Packet::Publish(small.to_publish_qos0())),
            Out::Frame(small_frame), // a fourth QoS 0 PUBLISH: over the bound of 3
            Out::Packet(ack(3)),
        ];
        assert_eq!(link.send_all(&mut outs), (1, false));
        assert!(outs.is_empty());
        let (packets, _) = drain(&outbox);
        // A frame is the message as forwarded at QoS 0: RETAIN 0 [MQTT-3.3.1-9].
        let forwarded =
            |m: &Message| Packet::Publish(m.clone().forwarded(QoS::AtMostOnce).to_publish_qos0());
        assert_eq!(
            packets,
            [
                ack(1),
                forwarded(&small),
                forwarded(&large),
                ack(2),
                Packet::Publish(small.to_publish_qos0()),
                ack(3)
            ]
        );
        // Taken: the bound counts from 0 again.
        let frame = Frame::qos0(&small).unwrap();
        let mut outs: Vec<_> = (0..4).map(|_| Out::Frame(frame.clone())).collect();
        assert_eq!(link.send_all(&mut outs), (1, false));
        assert_eq!(drain(&outbox).0.len(), 3);
    }

    /// Messages encoded together for many subscribers come out whole, in order, after what
    /// was queued before them; past the QoS 0 bound the oldest are kept and the rest dropped.
    #[tokio::test]
    async fn frames_keep_order_and_the_qos0_bound() {
        let (link, outbox) = Link::new(1, 5);
        let messages: Vec<Message> = (0..4)
            .map(|n| message("t/1", format!("m{n}").as_bytes(), n == 1))
            .collect();
        let frames = Frames::qos0(&messages).unwrap();
        assert_eq!(frames.len(), 4);
        let forwarded: Vec<Packet> = messages
            .iter()
            .map(|m| Packet::Publish(m.clone().forwarded(QoS::AtMostOnce).to_publish_qos0()))
            .collect();
        let mut outs = vec![Out::Packet(ack(1)), Out::Frames(frames.clone())];
        assert_eq!(link.send_all(&mut outs), (0, false));
        let mut expected = vec![ack(1)];
        expected.extend(forwarded.iter().cloned());
        assert_eq!(drain(&outbox).0, expected);
        // A fifth and sixth waiting QoS 0 PUBLISH are over the bound of 5: two of the second
        // four are dropped, the first two kept.
        let mut outs = vec![Out::Frames(frames.clone()), Out::Frames(frames.clone())];
        assert_eq!(link.send_all(&mut outs), (3, false));
        let mut expected = forwarded.clone();
        expected.push(forwarded[0].clone());
        assert_eq!(drain(&outbox).0, expected);
        // A QoS 1 message among them: not encoded ahead (its QoS is the subscription's).
        let mut with_qos1 = messages.clone();
        with_qos1[2].qos = QoS::AtLeastOnce;
        assert!(Frames::qos0(&with_qos1).is_none());
        // Many, or large ones, are written from the shared buffer.
        let large: Vec<Message> = (0..3)
            .map(|_| message("t/2", &[9u8; SHARED_PAYLOAD], false))
            .collect();
        let mut outs = vec![Out::Frames(Frames::qos0(&large).unwrap())];
        assert_eq!(link.send_all(&mut outs), (0, false));
        assert_eq!(drain(&outbox).0.len(), 3);
    }

    /// Close comes after what was queued before it, and nothing queues after it, also once
    /// the writer has taken the close.
    #[tokio::test]
    async fn close_is_queued_last() {
        let (link, outbox) = Link::new(1, 10);
        assert_eq!(link.send(ack(1)), Written::Queued);
        link.close(CloseReason::ServerClosed);
        assert_eq!(link.send(ack(2)), Written::Closed);
        assert_eq!(drain(&outbox), (vec![ack(1)], true));
        assert_eq!(link.send(ack(3)), Written::Closed);
        assert_eq!(link.send_all(&mut vec![Out::Packet(ack(4))]), (0, true));
        assert_eq!(drain(&outbox), (Vec::new(), false));
        assert_eq!(link.close_reason(), Some(CloseReason::ServerClosed));
    }
}
