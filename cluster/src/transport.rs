//! The transport: frames to other nodes' subjects, frames from this node's subject, and the
//! answers of asks that crossed nodes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use hermes_core::{
    App, DeadLetter, DeadLetterReason, Key, Location, Message, NodeId, Placement, Recipient,
    SendError,
};
use hermes_executor::{Hermes, Remote};
use hermes_reply::AskError;
use hermes_reply::wire::{Deliver, Exchange, with_exchange};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use crate::placement::ClusterPlacement;
use crate::wire::{self, Frame, Item};

/// The user's dead-letter sink, shared by the shards and the transport.
pub(crate) type Sink<K, M> = crate::DeadLetterSink<K, M>;

/// The subject of node `node` in cluster `cluster`.
pub(crate) fn subject(cluster: &str, node: NodeId) -> String {
    format!("hermes.{cluster}.node.{:016x}", node.0)
}

/// Whether this node may send to `node` now: a member other than itself, by its view.
/// Otherwise the messages are dead letters ([`DeadLetterReason::Unreachable`]).
pub(crate) fn reachable(
    placement: &ClusterPlacement,
    node: NodeId,
) -> Result<(), DeadLetterReason> {
    if node == placement.me() || !placement.view().contains(&node) {
        return Err(DeadLetterReason::Unreachable);
    }
    Ok(())
}

/// What a node does with a message for `to` that arrived from another node after `hops` hops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// Deliver it here (to the local shard placement names).
    Here,
    /// By this node's view another node owns it (the sender's view was older or newer): pass
    /// it on, with this hop count.
    Forward(NodeId, u8),
    /// Passed on too often (views disagree for too long): a dead letter (`Unreachable`).
    TooManyHops,
}

/// Where a message for `to` that arrived after `hops` hops goes: the transport on NATS and
/// the simulator both decide with this.
pub(crate) fn arrival<K: std::hash::Hash>(
    placement: &ClusterPlacement,
    to: &K,
    hops: u8,
) -> Arrival {
    match placement.locate(to) {
        Location::Node(_) if hops >= wire::MAX_HOPS => Arrival::TooManyHops,
        Location::Node(node) => Arrival::Forward(node, hops + 1),
        _ => Arrival::Here,
    }
}

/// Where this process's ask tokens start: random, not 1. Answers go to a node's subject, and
/// two processes can read one subject: two client nodes with one name (two replicas of a
/// gateway), or a node restarted while answers to its previous run were on their way. With
/// tokens counted from 1 in each, one took the other's answers as its own (two clients asking
/// at once: 60 wrong answers in 400 asks).
fn first_token() -> u64 {
    crate::random_u64()
}

/// Counters of the transport, for tests and monitoring.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) frames_out: AtomicU64,
    pub(crate) frames_in: AtomicU64,
    pub(crate) bad_frames: AtomicU64,
    pub(crate) forwarded: AtomicU64,
}

/// Asks whose request left this node, by token, and answers going back.
pub(crate) struct Answers {
    me: NodeId,
    cluster: String,
    out: mpsc::Sender<(String, Bytes)>,
    /// The largest frame the NATS server takes: a larger answer goes back as `Dropped`.
    max_frame: usize,
    parked: Mutex<HashMap<u64, (Instant, Deliver)>>,
    next: AtomicU64,
}

impl Answers {
    /// Answers every parked ask older than `age` with `Timeout` (its asker has long given up).
    pub(crate) fn expire(&self, age: Duration) {
        let now = Instant::now();
        let old: Vec<Deliver> = {
            let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
            let tokens: Vec<u64> = parked
                .iter()
                .filter(|(_, (at, _))| now.duration_since(*at) > age)
                .map(|(t, _)| *t)
                .collect();
            tokens
                .into_iter()
                .filter_map(|t| parked.remove(&t).map(|(_, d)| d))
                .collect()
        };
        for deliver in old {
            deliver(Err(AskError::Timeout));
        }
    }

    fn take(&self, token: u64) -> Option<Deliver> {
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token)
            .map(|(_, d)| d)
    }
}

impl Exchange for Answers {
    fn park(&self, deliver: Deliver) -> (u64, u64) {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        self.parked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, (Instant::now(), deliver));
        (self.me.0, token)
    }

    fn answer(&self, origin: u64, token: u64, answer: Result<Vec<u8>, AskError>) {
        if origin == self.me.0 {
            if let Some(deliver) = self.take(token) {
                deliver(answer);
            }
            return;
        }
        let encode = |answer: Result<Vec<u8>, u8>| {
            let item: Item<(), ()> = Item::Answer { token, answer };
            let frame = Frame {
                version: wire::VERSION,
                from: self.me.0,
                items: vec![postcard::to_allocvec(&item).ok()?],
            };
            postcard::to_allocvec(&frame).ok()
        };
        let bytes = match encode(answer.map_err(wire::error_code)) {
            Some(bytes) if bytes.len() <= self.max_frame => bytes,
            _ => {
                // The asker hears at once that no answer comes, not at its deadline.
                tracing::warn!(
                    origin,
                    max_payload = self.max_frame,
                    "an ask's answer does not encode, or is larger than the NATS server takes: \
                     the asker gets Dropped"
                );
                let Some(bytes) = encode(Err(wire::error_code(AskError::Dropped))) else {
                    return;
                };
                bytes
            }
        };
        let to = subject(&self.cluster, NodeId(origin));
        if self.out.try_send((to, Bytes::from(bytes))).is_err() {
            tracing::warn!(origin, "outbound queue full: an ask's answer was dropped");
        }
    }
}

/// Carries messages between this node and the others.
pub(crate) struct Transport<K, M, A> {
    me: NodeId,
    cluster: String,
    pub(crate) answers: Arc<Answers>,
    exchange: Arc<dyn Exchange>,
    out: mpsc::Sender<(String, Bytes)>,
    /// The largest frame the NATS server takes (its `max_payload`).
    max_frame: usize,
    /// The NATS connection, to know whether it is up.
    client: async_nats::Client,
    placement: Arc<ClusterPlacement>,
    /// The local Hermes, once started; taken at shutdown (it holds this transport).
    hermes: Mutex<Option<Hermes<K, M, A>>>,
    /// While this node leaves: the messages that still came to it for other nodes, held until
    /// the others know it left ([`pass_on`](Transport::pass_on)), so that they are not bounced
    /// back by a node whose view still names this one.
    held: Mutex<Option<Vec<(K, M, u8)>>>,
    sink: Option<Sink<K, M>>,
    pub(crate) counters: Counters,
}

impl<K, M, A> Transport<K, M, A>
where
    K: Key + Serialize + DeserializeOwned,
    M: Message + Serialize + DeserializeOwned,
    A: App<Id = K, Msg = M>,
{
    pub(crate) fn new(
        me: NodeId,
        cluster: &str,
        capacity: usize,
        max_frame: usize,
        client: async_nats::Client,
        placement: Arc<ClusterPlacement>,
        sink: Option<Sink<K, M>>,
    ) -> (Arc<Self>, mpsc::Receiver<(String, Bytes)>) {
        let (out, rx) = mpsc::channel(capacity);
        let answers = Arc::new(Answers {
            me,
            cluster: cluster.to_owned(),
            out: out.clone(),
            max_frame,
            parked: Mutex::new(HashMap::new()),
            next: AtomicU64::new(first_token()),
        });
        let exchange: Arc<dyn Exchange> = answers.clone();
        let transport = Arc::new(Transport {
            me,
            cluster: cluster.to_owned(),
            answers,
            exchange,
            out,
            max_frame,
            client,
            placement,
            hermes: Mutex::new(None),
            held: Mutex::new(None),
            sink,
            counters: Counters::default(),
        });
        (transport, rx)
    }

    fn hermes(&self) -> Option<Hermes<K, M, A>> {
        self.hermes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether the NATS connection is up. While it is down, mail for other nodes is refused
    /// (`Unreachable`): the client would buffer it and publish it on reconnecting, maybe before
    /// the receiving node has subscribed again, and then nobody would know it was lost (750
    /// messages sent during a 2.5 s restart of the server: none arrived, none was refused).
    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    fn dead_letter(&self, id: K, msg: Option<M>, reason: DeadLetterReason) {
        tracing::debug!(?id, %reason, "dead letter in the cluster transport");
        if let Some(sink) = &self.sink {
            sink(DeadLetter {
                recipient: Recipient::Id(id),
                message: msg,
                reason,
            });
        }
    }

    /// Encodes `(id, msg, hops)` items into frames for `node` and queues them: one frame, or
    /// several if they would not fit in one NATS message (the server's `max_payload`), in
    /// order. An item that does not serialize, or does not fit in a frame alone, is a dead
    /// letter (`Unreachable`, message kept). On `Err`, the items not queued are left in
    /// `batch`.
    fn send(
        &self,
        node: NodeId,
        batch: &mut Vec<(K, M)>,
        hops: u8,
    ) -> Result<(), DeadLetterReason> {
        reachable(&self.placement, node)?;
        if !self.connected() {
            return Err(DeadLetterReason::Unreachable);
        }
        let encoded: Vec<Option<Vec<u8>>> = with_exchange(&self.exchange, || {
            batch
                .iter()
                .map(|(to, msg)| {
                    let item = ItemRef::Message { to, msg, hops };
                    postcard::to_allocvec(&item)
                        .inspect_err(|e| {
                            tracing::warn!(%e, id = ?to, "a message to another node does not serialize")
                        })
                        .ok()
                })
                .collect()
        });
        let mut unsent = vec![false; batch.len()];
        // (index of the first item, the encoded items) of each frame.
        let mut frames: Vec<(usize, Vec<Vec<u8>>)> = Vec::new();
        let room = self.max_frame.saturating_sub(wire::FRAME_OVERHEAD);
        let mut used = 0;
        for (i, item) in encoded.into_iter().enumerate() {
            let Some(item) = item else {
                unsent[i] = true;
                continue;
            };
            let size = item.len() + wire::ITEM_OVERHEAD;
            if size > room {
                tracing::warn!(
                    bytes = item.len(),
                    max_payload = self.max_frame,
                    "a message to another node is larger than the NATS server takes: send less \
                     per message (or raise the server's max_payload)"
                );
                unsent[i] = true;
                continue;
            }
            match frames.last_mut() {
                Some((_, items)) if used + size <= room => items.push(item),
                _ => {
                    frames.push((i, vec![item]));
                    used = 0;
                }
            }
            used += size;
        }
        let to = subject(&self.cluster, node);
        let mut failed = None;
        for (first, items) in frames {
            let frame = Frame {
                version: wire::VERSION,
                from: self.me.0,
                items,
            };
            let queued = match postcard::to_allocvec(&frame) {
                Ok(bytes) => self.out.try_send((to.clone(), Bytes::from(bytes))),
                Err(_) => {
                    failed = Some((first, DeadLetterReason::Unreachable));
                    break;
                }
            };
            match queued {
                Ok(()) => {
                    self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    let reason = match e {
                        mpsc::error::TrySendError::Full(_) => DeadLetterReason::Full,
                        mpsc::error::TrySendError::Closed(_) => DeadLetterReason::Unreachable,
                    };
                    failed = Some((first, reason));
                    break;
                }
            }
        }
        let rest = failed.as_ref().map(|&(first, _)| batch.split_off(first));
        let split = batch.len();
        for (i, (to, msg)) in batch.drain(..).enumerate() {
            if unsent[i] {
                self.dead_letter(to, Some(msg), DeadLetterReason::Unreachable);
            }
        }
        let (Some(rest), Some((_, reason))) = (rest, failed) else {
            return Ok(());
        };
        for (i, (to, msg)) in rest.into_iter().enumerate() {
            if unsent[split + i] {
                self.dead_letter(to, Some(msg), DeadLetterReason::Unreachable);
            } else {
                batch.push((to, msg));
            }
        }
        Err(reason)
    }

    /// Handles one frame that came to this node's subject.
    pub(crate) async fn receive(&self, payload: &[u8]) {
        let frame: Frame = match postcard::from_bytes(payload) {
            Ok(frame) => frame,
            Err(e) => {
                self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%e, bytes = payload.len(), "dropped a frame that does not decode");
                return;
            }
        };
        if frame.version != wire::VERSION {
            self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                version = frame.version,
                from = frame.from,
                "dropped a frame of another wire version: run one version of Hermes per cluster"
            );
            return;
        }
        self.counters.frames_in.fetch_add(1, Ordering::Relaxed);
        for bytes in &frame.items {
            let item: Result<Item<K, M>, _> =
                with_exchange(&self.exchange, || postcard::from_bytes(bytes));
            match item {
                Ok(Item::Message { to, msg, hops }) => self.arrive(to, msg, hops).await,
                Ok(Item::Answer { token, answer }) => {
                    if let Some(deliver) = self.answers.take(token) {
                        deliver(answer.map_err(wire::ask_error));
                    }
                }
                Err(e) => {
                    self.counters.bad_frames.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%e, from = frame.from, "dropped an item that does not decode");
                }
            }
        }
    }

    /// A message for `to` arrived: deliver it here, or pass it on to its owner (held while
    /// this node leaves).
    async fn arrive(&self, to: K, msg: M, hops: u8) {
        match arrival(&self.placement, &to, hops) {
            Arrival::TooManyHops => self.dead_letter(to, Some(msg), DeadLetterReason::Unreachable),
            Arrival::Forward(node, next) => {
                if let Some((to, msg)) = self.held(to, msg, hops) {
                    self.forward(node, to, msg, next);
                }
            }
            Arrival::Here => {
                let Some(hermes) = self.hermes() else {
                    if let Some((to, msg)) = self.held(to, msg, hops) {
                        self.dead_letter(to, Some(msg), DeadLetterReason::Closed);
                    }
                    return;
                };
                let id = to.clone();
                if let Err(e) = hermes.deliver_async(to, msg).await {
                    let reason = match &e {
                        SendError::Full(_) => DeadLetterReason::Full,
                        SendError::Unreachable(_) => DeadLetterReason::Unreachable,
                        _ => DeadLetterReason::Closed,
                    };
                    let msg = e.into_inner();
                    // Closing because this node leaves: its next owner takes it.
                    let left = match reason {
                        DeadLetterReason::Closed => self.held(id, msg, hops),
                        _ => Some((id, msg)),
                    };
                    if let Some((id, msg)) = left {
                        self.dead_letter(id, Some(msg), reason);
                    }
                }
            }
        }
    }
}

impl<K, M, A> Transport<K, M, A>
where
    K: Key + Serialize + DeserializeOwned,
    M: Message + Serialize + DeserializeOwned,
    A: App<Id = K, Msg = M>,
{
    /// Passes one message on to `node`, its owner by this node's view; a dead letter if it
    /// cannot be sent.
    fn forward(&self, node: NodeId, to: K, msg: M, hops: u8) {
        self.counters.forwarded.fetch_add(1, Ordering::Relaxed);
        let mut batch = vec![(to, msg)];
        if let Err(reason) = self.send(node, &mut batch, hops) {
            for (to, msg) in batch {
                self.dead_letter(to, Some(msg), reason.clone());
            }
        }
    }

    /// This node starts leaving: from now on, the messages the others send it that its closing
    /// Hermes no longer takes, or that are another node's, are held, to be passed on to their
    /// new owners once the others know it left ([`pass_on`](Self::pass_on)).
    pub(crate) fn hold(&self) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(Vec::new());
    }

    /// Holds `(to, msg)` if this node is leaving; gives it back otherwise.
    fn held(&self, to: K, msg: M, hops: u8) -> Option<(K, M)> {
        match self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            Some(held) => {
                held.push((to, msg, hops));
                None
            }
            None => Some((to, msg)),
        }
    }

    /// This node left (its receivers deactivated, its membership entry gone): it places every
    /// ID on the others. False if no other member is known.
    pub(crate) fn leave(&self) -> bool {
        self.placement.leave()
    }

    /// Passes what was held while leaving on to the new owners, in the order it came.
    pub(crate) fn pass_on(&self) {
        let held = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for (to, msg, hops) in held.into_iter().flatten() {
            match arrival(&self.placement, &to, hops) {
                Arrival::Forward(node, next) => self.forward(node, to, msg, next),
                Arrival::Here => self.dead_letter(to, Some(msg), DeadLetterReason::Closed),
                Arrival::TooManyHops => {
                    self.dead_letter(to, Some(msg), DeadLetterReason::Unreachable)
                }
            }
        }
    }
}

impl<K, M, A> Transport<K, M, A> {
    pub(crate) fn attach(&self, hermes: Hermes<K, M, A>) {
        *self.hermes.lock().unwrap_or_else(PoisonError::into_inner) = Some(hermes);
    }

    pub(crate) fn detach(&self) -> Option<Hermes<K, M, A>> {
        self.hermes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

/// [`Item::Message`] by reference, to encode without moving the message.
#[derive(Serialize)]
enum ItemRef<'a, K, M> {
    Message { to: &'a K, msg: &'a M, hops: u8 },
}

impl<K, M, A> Remote<K, M> for Transport<K, M, A>
where
    K: Key + Serialize + DeserializeOwned,
    M: Message + Serialize + DeserializeOwned,
    A: App<Id = K, Msg = M>,
{
    fn deliver(&self, node: NodeId, batch: &mut Vec<(K, M)>) -> Result<(), DeadLetterReason> {
        self.send(node, batch, 0)
    }
}

/// Publishes queued frames, in order, until the queue closes.
pub(crate) async fn publish(client: async_nats::Client, mut rx: mpsc::Receiver<(String, Bytes)>) {
    while let Some((subject, bytes)) = rx.recv().await {
        if let Err(e) = client.publish(subject, bytes).await {
            tracing::warn!(%e, "could not publish a frame to NATS");
        }
    }
    let _ = client.flush().await;
}

/// Receives this node's frames until the subscription ends.
pub(crate) async fn subscribe<K, M, A>(
    mut subscriber: async_nats::Subscriber,
    transport: Arc<Transport<K, M, A>>,
) where
    K: Key + Serialize + DeserializeOwned,
    M: Message + Serialize + DeserializeOwned,
    A: App<Id = K, Msg = M>,
{
    while let Some(message) = subscriber.next().await {
        transport.receive(&message.payload).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_delivered_passed_on_or_given_up() {
        let (me, other) = (NodeId(1), NodeId(2));
        let placement = ClusterPlacement::new(me, true, 2);
        placement.set_view(vec![me, other]);
        let mine = (0u64..)
            .find(|i| placement.locate(i) != Location::Node(other))
            .unwrap();
        let theirs = (0u64..)
            .find(|i| placement.locate(i) == Location::Node(other))
            .unwrap();
        assert_eq!(arrival(&placement, &mine, 0), Arrival::Here);
        assert_eq!(arrival(&placement, &mine, wire::MAX_HOPS), Arrival::Here);
        assert_eq!(arrival(&placement, &theirs, 0), Arrival::Forward(other, 1));
        assert_eq!(
            arrival(&placement, &theirs, wire::MAX_HOPS),
            Arrival::TooManyHops
        );
        assert_eq!(reachable(&placement, other), Ok(()));
        assert_eq!(
            reachable(&placement, me),
            Err(DeadLetterReason::Unreachable)
        );
        assert_eq!(
            reachable(&placement, NodeId(3)),
            Err(DeadLetterReason::Unreachable)
        );
    }
}
