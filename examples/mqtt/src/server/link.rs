//! A connection's link: how a session (or the connection's own reader) writes to the client
//! and closes the connection, from any thread, without waiting.
//!
//! The link is the sending end of a buffer of encoded bytes that the connection's writer task
//! drains: a sender encodes its packets into it under the link's lock (a batch of them, from
//! one session run, under one lock and with one wake-up of the writer: [`Link::send_all`]),
//! and the writer takes everything queued in one swap and writes it with one vectored write.
//! A QoS 0 PUBLISH fanned out to many subscribers comes encoded once ([`Frame`]) and is
//! copied into each subscriber's buffer, a burst of them on one topic as one buffer
//! ([`Frames`]) that each subscriber's writer writes as it is; a large payload is not copied
//! at all, but written from the publisher's buffer. Empty, the buffer holds no memory once the writer has gone
//! idle: an idle connection costs no queue.
//!
//! Bounds, counted in packets under the same lock: QoS 0 PUBLISHes are dropped (and counted)
//! past [`Config::max_qos0_backlog`](crate::Config::max_qos0_backlog) waiting to be written,
//! and a client that lets more than [`MAX_BACKLOG`] packets of any kind pile up (it sends but
//! never reads) is disconnected. QoS 1 and 2 PUBLISHes are bounded by the session's in-flight
//! window.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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
    fn is_empty(&self) -> bool {
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

/// What the link's ends share.
#[derive(Debug)]
struct Shared {
    /// What waits for the writer. Empty, it holds no allocation once the writer has gone
    /// idle (see [`Outbox::ready`]).
    queue: Mutex<Queued>,
    /// Wakes the writer when something is queued (or the last link is dropped).
    ready: Notify,
    /// Live links: the writer ends when none is left.
    links: AtomicUsize,
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
#[derive(Debug)]
pub(crate) struct Link {
    conn: ConnId,
    shared: Arc<Shared>,
    max_qos0: usize,
}

/// The writer task's end of a link.
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
            queue: Mutex::new(Queued::default()),
            ready: Notify::new(),
            links: AtomicUsize::new(1),
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

    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `packet` for the client. A QoS 0 PUBLISH is dropped while the client has
    /// `max_qos0_backlog` of them waiting.
    pub(crate) fn send(&self, packet: Packet) -> Written {
        if self.shared.closed.load(Ordering::Acquire) {
            return Written::Closed;
        }
        let out = Out::Packet(packet);
        let mut dropped = 0;
        let written = self.push(&mut self.lock(), out, &mut dropped);
        self.pushed(written, 1);
        if dropped > 0 {
            return Written::Dropped;
        }
        written
    }

    /// Queues everything in `outs`, in order, under one lock and with one wake-up of the
    /// writer, as [`send`](Self::send) each; empties `outs`. Returns how many QoS 0
    /// PUBLISHes were dropped, and whether the connection is closed.
    pub(crate) fn send_all(&self, outs: &mut Vec<Out>) -> (u64, bool) {
        if outs.is_empty() {
            return (0, false);
        }
        if self.shared.closed.load(Ordering::Acquire) {
            outs.clear();
            return (0, true);
        }
        let (mut dropped, mut queued, mut closed) = (0, 0, false);
        {
            let mut queue = self.lock();
            for out in outs.drain(..) {
                match self.push(&mut queue, out, &mut dropped) {
                    Written::Queued => queued += 1,
                    Written::Dropped => {}
                    Written::Closed => {
                        closed = true;
                        break;
                    }
                }
            }
        }
        outs.clear();
        self.pushed(
            if closed {
                Written::Closed
            } else {
                Written::Queued
            },
            queued,
        );
        (dropped, closed)
    }

    /// Encodes `out` into `queue`, within the bounds, adding the QoS 0 PUBLISHes dropped
    /// to `dropped`; the caller wakes the writer after unlocking ([`pushed`](Self::pushed)).
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

    /// After unlocking: wakes the writer for what was queued, and the reader if the link was
    /// closed meanwhile.
    fn pushed(&self, written: Written, queued: usize) {
        if queued > 0 || written == Written::Closed {
            self.shared.ready.notify_one();
        }
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
        self.close_locked(&mut self.lock(), reason);
        self.pushed(Written::Closed, 0);
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

impl Clone for Link {
    fn clone(&self) -> Self {
        self.shared.links.fetch_add(1, Ordering::Relaxed);
        Self {
            conn: self.conn,
            shared: Arc::clone(&self.shared),
            max_qos0: self.max_qos0,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // The writer ends once no link is left (`ready` returns false): wake it to see.
        if self.shared.links.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until something is queued ([`take`](Self::take)): false once every link is
    /// dropped and nothing is left. Before waiting, the queue's memory is released: an idle
    /// connection keeps none.
    pub(crate) async fn ready(&mut self) -> bool {
        loop {
            // Read before looking at the queue: a link's last push comes before its drop.
            let no_links = self.shared.links.load(Ordering::Acquire) == 0;
            {
                let mut queue = self.lock();
                if !queue.is_empty() {
                    return true;
                }
                *queue = Queued::default();
            }
            // No link is left: nothing can be queued any more.
            if no_links {
                return false;
            }
            // A permit stored by a push (or a link's drop) since the last wait makes this
            // return at once, so nothing queued meanwhile is missed.
            self.shared.ready.notified().await;
        }
    }

    /// Takes everything queued into `into` (which must be empty: its buffers are given to
    /// the queue in exchange, so that a busy connection's two buffers are reused without
    /// allocating); false if nothing was.
    pub(crate) fn take(&mut self, into: &mut Queued) -> bool {
        debug_assert!(into.is_empty() && into.tail.is_empty() && into.chunks.is_empty());
        let mut queue = self.lock();
        if queue.is_empty() {
            return false;
        }
        std::mem::swap(&mut *queue, into);
        true
    }

    /// The writer could not write: the connection is closed (a network error), and what
    /// was queued is dropped.
    pub(crate) fn failed(&self) {
        let shared = &self.shared;
        if !shared.closed.swap(true, Ordering::AcqRel) {
            shared
                .reason
                .store(reason_code(CloseReason::NetworkError), Ordering::Release);
        }
        {
            let mut queue = self.lock();
            *queue = Queued::default();
            queue.close = true;
        }
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
    fn drain(outbox: &mut Outbox) -> (Vec<Packet>, bool) {
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

    /// What is queued comes out in order, and once the writer has waited for more the queue
    /// holds no memory (an idle connection keeps none).
    #[tokio::test]
    async fn queue_keeps_order_and_releases_its_memory_when_idle() {
        let (link, mut outbox) = Link::new(1, 10);
        for n in 1..=40 {
            assert_eq!(link.send(ack(n)), Written::Queued);
        }
        assert!(outbox.ready().await);
        let (packets, close) = drain(&mut outbox);
        assert_eq!(packets, (1..=40).map(ack).collect::<Vec<_>>());
        assert!(!close);
        assert_eq!(drain(&mut outbox), (Vec::new(), false));
        // Waiting releases the queue's buffer; a send wakes the writer.
        let sender = link.clone();
        let waiter = tokio::spawn(async move {
            let ready = outbox.ready().await;
            (ready, outbox)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        {
            let queue = link.shared.queue.lock().unwrap();
            assert!(queue.is_empty());
            assert_eq!(queue.tail.capacity(), 0, "an idle queue holds no memory");
            assert_eq!(queue.chunks.capacity(), 0, "an idle queue holds no memory");
        }
        assert_eq!(sender.send(ack(41)), Written::Queued);
        let (ready, mut outbox) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the writer is woken")
            .unwrap();
        assert!(ready);
        assert_eq!(drain(&mut outbox).0, [ack(41)]);
    }

    /// A batch from one session run (packets, frames shared by many subscribers, large
    /// payloads written from their own buffer) comes out whole and in order, with the QoS 0
    /// bound applied to frames as to packets.
    #[tokio::test]
    async fn a_batch_keeps_order_and_the_qos0_bound() {
        let (link, mut outbox) = Link::new(1, 3);
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
        assert!(outbox.ready().await);
        let (packets, _) = drain(&mut outbox);
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
        assert_eq!(drain(&mut outbox).0.len(), 3);
    }

    /// Messages encoded together for many subscribers come out whole, in order, after what
    /// was queued before them; past the QoS 0 bound the oldest are kept and the rest dropped.
    #[tokio::test]
    async fn frames_keep_order_and_the_qos0_bound() {
        let (link, mut outbox) = Link::new(1, 5);
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
        assert_eq!(drain(&mut outbox).0, expected);
        // A fifth and sixth waiting QoS 0 PUBLISH are over the bound of 5: two of the second
        // four are dropped, the first two kept.
        let mut outs = vec![Out::Frames(frames.clone()), Out::Frames(frames.clone())];
        assert_eq!(link.send_all(&mut outs), (3, false));
        let mut expected = forwarded.clone();
        expected.push(forwarded[0].clone());
        assert_eq!(drain(&mut outbox).0, expected);
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
        assert_eq!(drain(&mut outbox).0.len(), 3);
    }

    /// The writer ends once every link is gone, after what they queued.
    #[tokio::test]
    async fn writer_ends_when_every_link_is_dropped() {
        let (link, mut outbox) = Link::new(1, 10);
        let other = link.clone();
        assert_eq!(other.send(ack(1)), Written::Queued);
        drop(other);
        drop(link);
        assert!(outbox.ready().await, "what was queued is still written");
        assert_eq!(drain(&mut outbox).0, [ack(1)]);
        let ended = tokio::time::timeout(Duration::from_secs(5), outbox.ready()).await;
        assert_eq!(ended, Ok(false));
    }

    /// Close comes after what was queued before it, and nothing queues after it, also once
    /// the writer has taken the close.
    #[tokio::test]
    async fn close_is_queued_last() {
        let (link, mut outbox) = Link::new(1, 10);
        assert_eq!(link.send(ack(1)), Written::Queued);
        link.close(CloseReason::ServerClosed);
        assert_eq!(link.send(ack(2)), Written::Closed);
        assert_eq!(drain(&mut outbox), (vec![ack(1)], true));
        assert_eq!(link.send(ack(3)), Written::Closed);
        assert_eq!(link.send_all(&mut vec![Out::Packet(ack(4))]), (0, true));
        assert_eq!(drain(&mut outbox), (Vec::new(), false));
        assert_eq!(link.close_reason(), Some(CloseReason::ServerClosed));
    }
}
