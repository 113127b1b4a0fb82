//! A connection's link: how a session (or the connection's own reader) writes to the client
//! and closes the connection, from any thread, without waiting.
//!
//! The link is the sending end of a queue to the connection's writer task (a deque under a
//! mutex that holds no memory while it is empty: an idle connection costs no queue), with
//! counters that bound it: QoS 0 PUBLISHes are dropped (and counted) past
//! [`Config::max_qos0_backlog`](crate::Config::max_qos0_backlog) waiting to be written, and a
//! client that lets more than [`MAX_BACKLOG`] packets of any kind pile up (it sends but never
//! reads) is disconnected. QoS 1 and 2 PUBLISHes are bounded by the session's in-flight window.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::packet::{Packet, PublishQos};
use crate::will::CloseReason;

/// Identifies one network connection, unique for the broker's lifetime.
pub(crate) type ConnId = u64;

/// Most packets of any kind that may wait for one connection's writer before the connection
/// is closed as a client that does not read.
pub(crate) const MAX_BACKLOG: usize = 100_000;

/// What the writer task gets.
#[derive(Debug)]
// Nearly every item is a packet: boxing them would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Out {
    /// A packet to write.
    Packet(Packet),
    /// Write what came before, then close the connection.
    Close,
}

/// What the link's ends share.
#[derive(Debug)]
struct Shared {
    /// What waits for the writer, in order. Empty, it holds no allocation once the writer has
    /// gone idle (see [`Outbox::recv`]).
    queue: Mutex<VecDeque<Out>>,
    /// Wakes the writer when something is queued (or the last link is dropped).
    ready: Notify,
    /// Live links: the writer ends when none is left.
    links: AtomicUsize,
    /// QoS 0 PUBLISHes waiting for the writer.
    qos0: AtomicUsize,
    /// Everything waiting for the writer.
    total: AtomicUsize,
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
    /// Taken from the queue in one go, not yet handed out: the writer swaps this (empty) with
    /// the queue, so that a busy connection's two deques are reused without allocating.
    taken: VecDeque<Out>,
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
            queue: Mutex::new(VecDeque::new()),
            ready: Notify::new(),
            links: AtomicUsize::new(1),
            qos0: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
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
        let outbox = Outbox {
            shared,
            taken: VecDeque::new(),
        };
        (link, outbox)
    }

    /// The connection's ID.
    pub(crate) fn conn(&self) -> ConnId {
        self.conn
    }

    /// Queues `packet` for the client. A QoS 0 PUBLISH is dropped while the client has
    /// `max_qos0_backlog` of them waiting.
    pub(crate) fn send(&self, packet: Packet) -> Written {
        let shared = &self.shared;
        if shared.closed.load(Ordering::Acquire) {
            return Written::Closed;
        }
        let qos0 = matches!(&packet, Packet::Publish(p) if p.qos == PublishQos::AtMostOnce);
        if qos0 {
            if shared.qos0.load(Ordering::Relaxed) >= self.max_qos0 {
                return Written::Dropped;
            }
            shared.qos0.fetch_add(1, Ordering::Relaxed);
        }
        if shared.total.fetch_add(1, Ordering::Relaxed) >= MAX_BACKLOG {
            tracing::warn!(
                conn = self.conn,
                "closing a connection whose client reads nothing: {MAX_BACKLOG} packets wait for it"
            );
            self.close(CloseReason::ServerClosed);
            return Written::Closed;
        }
        let connack = matches!(packet, Packet::ConnAck(_));
        self.push(Out::Packet(packet));
        if connack {
            shared.accepted.store(true, Ordering::Release);
        }
        Written::Queued
    }

    /// Queues `out` and wakes the writer.
    fn push(&self, out: Out) {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(out);
        self.shared.ready.notify_one();
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
        let shared = &self.shared;
        if shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        shared.reason.store(reason_code(reason), Ordering::Release);
        self.push(Out::Close);
        shared.closing.notify_waiters();
        shared.closing.notify_one();
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
        // The writer ends once no link is left (`recv` returns `None`): wake it to see.
        if self.shared.links.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.ready.notify_one();
        }
    }
}

impl Outbox {
    /// Waits until an item can be taken ([`try_recv`](Self::try_recv)): false once every
    /// link is dropped and nothing is left. Before waiting, the queue's memory is released:
    /// an idle connection keeps none.
    pub(crate) async fn ready(&mut self) -> bool {
        loop {
            if self.pending() {
                return true;
            }
            // Read before looking at the queue: a link's last push comes before its drop.
            let no_links = self.shared.links.load(Ordering::Acquire) == 0;
            {
                let mut queue = self
                    .shared
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if !queue.is_empty() {
                    return true;
                }
                *queue = VecDeque::new();
            }
            self.taken = VecDeque::new();
            // No link is left: nothing can be queued any more.
            if no_links {
                return false;
            }
            // A permit stored by a push (or a link's drop) since the last wait makes this
            // return at once, so nothing queued meanwhile is missed.
            self.shared.ready.notified().await;
        }
    }

    /// Whether an item can be taken now.
    pub(crate) fn pending(&mut self) -> bool {
        if self.taken.is_empty() {
            let mut queue = self
                .shared
                .queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut *queue, &mut self.taken);
        }
        !self.taken.is_empty()
    }

    /// The next item if there is one now.
    pub(crate) fn try_recv(&mut self) -> Option<Out> {
        self.pending();
        let out = self.taken.pop_front();
        self.taken(out.as_ref());
        out
    }

    fn taken(&self, out: Option<&Out>) {
        if let Some(Out::Packet(packet)) = out {
            let shared = &self.shared;
            shared.total.fetch_sub(1, Ordering::Relaxed);
            if matches!(packet, Packet::Publish(p) if p.qos == PublishQos::AtMostOnce) {
                shared.qos0.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// The writer could not write: the connection is closed (a network error).
    pub(crate) fn failed(&self) {
        let shared = &self.shared;
        if !shared.closed.swap(true, Ordering::AcqRel) {
            shared
                .reason
                .store(reason_code(CloseReason::NetworkError), Ordering::Release);
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

    fn ack(n: u16) -> Packet {
        Packet::PubAck(NonZeroU16::new(n).unwrap())
    }

    fn acked(out: Option<Out>) -> u16 {
        match out {
            Some(Out::Packet(Packet::PubAck(id))) => id.get(),
            other => panic!("expected a PUBACK, got {other:?}"),
        }
    }

    /// What is queued comes out in order, and once the writer has waited for more the queue
    /// holds no memory (an idle connection keeps none).
    #[tokio::test]
    async fn queue_keeps_order_and_releases_its_memory_when_idle() {
        let (link, mut outbox) = Link::new(1, 10);
        for n in 1..=40 {
            assert_eq!(link.send(ack(n)), Written::Queued);
        }
        for n in 1..=40 {
            assert!(outbox.ready().await);
            assert_eq!(acked(outbox.try_recv()), n);
        }
        assert!(outbox.try_recv().is_none());
        assert_eq!(link.shared.total.load(Ordering::Relaxed), 0);
        // Waiting releases both deques; a send wakes the writer.
        let sender = link.clone();
        let waiter = tokio::spawn(async move {
            let ready = outbox.ready().await;
            (ready, outbox)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        {
            let queue = link.shared.queue.lock().unwrap();
            assert!(queue.is_empty());
            assert_eq!(queue.capacity(), 0, "an idle queue holds no memory");
        }
        assert_eq!(sender.send(ack(41)), Written::Queued);
        let (ready, mut outbox) = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the writer is woken")
            .unwrap();
        assert!(ready);
        assert_eq!(acked(outbox.try_recv()), 41);
        // The writer took the queue's deque, and left its own released one in its place.
        assert_eq!(link.shared.queue.lock().unwrap().capacity(), 0);
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
        assert_eq!(acked(outbox.try_recv()), 1);
        let ended = tokio::time::timeout(Duration::from_secs(5), outbox.ready()).await;
        assert_eq!(ended, Ok(false));
    }

    /// Close comes after what was queued before it, and nothing queues after it.
    #[tokio::test]
    async fn close_is_queued_last() {
        let (link, mut outbox) = Link::new(1, 10);
        assert_eq!(link.send(ack(1)), Written::Queued);
        link.close(CloseReason::ServerClosed);
        assert_eq!(link.send(ack(2)), Written::Closed);
        assert_eq!(acked(outbox.try_recv()), 1);
        assert!(matches!(outbox.try_recv(), Some(Out::Close)));
        assert!(outbox.try_recv().is_none());
        assert_eq!(link.close_reason(), Some(CloseReason::ServerClosed));
    }
}
