//! Kind `Session`: one receiver per client ID, driving the sans-IO [`Session`].
//!
//! A virtual actor: its factory loads a stored persistent session (synchronously: redb reads
//! are fast), so any message for an offline persistent session, such as a message to queue,
//! activates it from disk. After each message it stores what changed
//! ([`Session::take_changes`]) through group commit, without waiting for the commit; but its
//! client's acknowledgements wait for it, and for the sessions its messages went to
//! ([`Durable`]): what the broker acknowledged survives a crash.
//!
//! While a connection is attached the receiver is never deactivated for idleness. A clean
//! session stops when its connection ends. An offline persistent session is deactivated after
//! a minute without messages (it is in the store), or never when the broker keeps nothing on
//! disk; its expiry is a timer ([`SessionMsg::ExpiryCheck`]), which activates it from disk if
//! need be.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, SystemTime};

use hermes::{Activation, Context, Deactivation, Receiver, TimerId};

use super::link::{ConnId, Link, Out};
use super::{
    BrokerApp, ClientId, Counters, Delivery, Durable, NEVER, OFFLINE_IDLE, RetainedMsg, SessionMsg,
    Shared, may_publish,
};
use crate::acl::ClientAcl;
use crate::config::SessionExpiry;
use crate::message::Message;
use crate::packet::{Connect, Packet, ProtocolVersion, QoS};
use crate::session::{AfterDisconnect, Delivered, Output, Session, SessionState};
use crate::topic::TopicFilter;
use crate::will::{CloseReason, LastWill};

/// How long a session waits for a retained shard's answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

type Ctx<'a> = Context<'a, ClientId, SessionMsg, BrokerApp>;

thread_local! {
    /// The outputs' vector, lent to the session handling a message on this thread.
    static OUT: std::cell::Cell<Vec<Output>> = const { std::cell::Cell::new(Vec::new()) };
    /// What the session handling a message on this thread writes to its client, lent the
    /// same way: queued on the connection's link together when the message is handled.
    static WRITES: std::cell::Cell<Vec<Out>> = const { std::cell::Cell::new(Vec::new()) };
    /// The messages the session handling a message on this thread publishes, in order:
    /// routed together, one Hermes message per subscriber
    /// ([`route_published`](SessionRx::route_published)). Not lent to the session (it would
    /// make every session a size class larger), and emptied when a message's handling starts
    /// (what a handler that panicked left is not routed).
    static PUBLISHED: std::cell::Cell<Vec<Message>> = const { std::cell::Cell::new(Vec::new()) };
    /// The [`Durable`] of the client's packets the session on this thread is handling, with
    /// what completes when its last clone is dropped: the client's acknowledgements wait for
    /// it ([`SessionRx::await_durable`]).
    static DURABLE: std::cell::Cell<Option<Awaited>> = const { std::cell::Cell::new(None) };
    /// The [`Durable`]s that the session on this thread keeps until what it stores after this
    /// message is committed: of the messages delivered to it, and its own.
    static UNTIL_SAVED: std::cell::Cell<Vec<Durable>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The [`Durable`] of a read of a client's packets ([`DURABLE`]).
struct Awaited {
    durable: Durable,
    /// Completes when the last clone of `durable` is dropped.
    asked: hermes::Asked<()>,
    conn: ConnId,
    /// The hold on the client's writes that waits for it.
    hold: u64,
}

/// The factory of kind `Session`.
pub(crate) fn factory(
    shared: Arc<Shared>,
) -> impl Fn(&ClientId) -> Activation<ClientId, SessionMsg, BrokerApp> + Send + Sync + 'static {
    move |id: &ClientId| {
        let state = match &shared.storage {
            Some(storage) => match storage.load_session(id.name()) {
                Ok(state) => state,
                Err(error) => {
                    tracing::error!(client_id = %id, %error, "cannot load a stored session");
                    return Activation::failed(error);
                }
            },
            None => None,
        };
        Activation::ready(SessionRx::new(id.clone(), state, Arc::clone(&shared)))
    }
}

/// A session receiver.
struct SessionRx {
    id: ClientId,
    session: Session,
    shared: Arc<Shared>,
    /// The attached connection.
    link: Option<Link>,
    /// The attached connection's will.
    will: LastWill,
    /// Whether the session is in the store.
    stored: bool,
    /// Expired: its stored state is to be deleted, and the receiver stopped.
    ended: bool,
    /// What few sessions use, allocated when first needed: an idle connection's session
    /// keeps a pointer.
    rare: Option<Box<Rare>>,
    /// The packet being handled asked a retained shard to store a message.
    asked_store: bool,
    out: Vec<Output>,
    /// What this message's handling writes to the client, in order: queued on the link in
    /// one go ([`flush_writes`](Self::flush_writes)).
    writes: Vec<Out>,
    /// What the attached connection's client may do, with an ACL file.
    acl: Option<Arc<ClientAcl>>,
    /// Counted in the `offline_sessions` gauge: persistent, with its client away.
    counted_offline: bool,
    /// Packets of a connection carried out whose `Settled` is on its way: one message to
    /// itself settles all those carried out before it arrives, not one message per packet.
    /// How many, of the attached connection (0: none on its way; reset when a connection
    /// attaches, so that a `Settled` of an earlier one settles nothing).
    settling: u32,
}

/// The parts of a session receiver that most sessions never use.
#[derive(Default)]
struct Rare {
    /// Retained PUBLISHes from the client that the retained shards have not applied and
    /// stored yet, and reads of the client's packets whose changes are not all stored yet
    /// ([`Durable`]), oldest first: packets for the client wait behind them (so that a PUBACK
    /// means the message is retained and on disk), in order; each hold's go out once it and
    /// every older one are over, not when all are (a client that publishes without pause
    /// would get nothing).
    holds: VecDeque<Hold>,
    /// The number of the next hold.
    next_hold: u64,
    /// Connections that ended whose retained will is being stored: they are closed (and a
    /// clean session stopped) once it is.
    closing: u32,
    expiry_timer: Option<TimerId>,
    dropped_logged: u64,
}

/// A hold on the writes to the client ([`Rare::holds`]).
struct Hold {
    /// Its number, in the answer that ends it.
    id: u64,
    /// Over: it waits only for older holds.
    done: bool,
    /// The writes queued after it, before the next.
    after: Vec<Out>,
}

impl Rare {
    /// A new hold on the writes to the client, after those there are: its number.
    fn hold(&mut self) -> u64 {
        let id = self.next_hold;
        self.next_hold = self.next_hold.wrapping_add(1);
        self.holds.push_back(Hold {
            id,
            done: false,
            after: Vec::new(),
        });
        id
    }

    /// Whether it holds nothing (and can be released).
    fn is_empty(&self) -> bool {
        self.holds.is_empty()
            && self.closing == 0
            && self.expiry_timer.is_none()
            && self.dropped_logged == 0
    }
}

impl SessionRx {
    fn new(id: ClientId, state: Option<SessionState>, shared: Arc<Shared>) -> SessionRx {
        let stored = state.is_some();
        let session = match state {
            Some(state) => {
                let mut session = Session::restore(state, shared.limits);
                session.offline_from(shared.started_at);
                session
            }
            None => Session::new(shared.limits),
        };
        SessionRx {
            id,
            session,
            shared,
            link: None,
            will: LastWill::default(),
            stored,
            ended: false,
            rare: None,
            asked_store: false,
            out: Vec::new(),
            writes: Vec::new(),
            acl: None,
            // A stored session is counted as offline from the start (its client connecting
            // is what changes that).
            counted_offline: stored,
            settling: 0,
        }
    }

    /// Keeps the `offline_sessions` gauge: persistent sessions whose client is away.
    fn count_offline(&mut self) {
        let offline = self.link.is_none() && self.session.is_persistent() && !self.ended;
        if offline != self.counted_offline {
            self.counted_offline = offline;
            Counters::gauge(
                &self.shared.counters.offline_sessions,
                if offline { 1 } else { -1 },
            );
        }
    }

    /// The rare parts, allocated if need be.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Packets for the client are held behind retained PUBLISHes and commits: none any more
    /// (its connection ended: what was held for it goes nowhere).
    fn release_held(&mut self) {
        if let Some(rare) = &mut self.rare {
            rare.holds.clear();
        }
    }

    fn conn(&self) -> Option<ConnId> {
        self.link.as_ref().map(Link::conn)
    }

    fn attach(
        &mut self,
        ctx: &mut Ctx<'_>,
        link: Link,
        connect: &Connect,
        acl: Option<Arc<ClientAcl>>,
        acked: bool,
    ) {
        self.flush_writes();
        if let Some(old) = self.link.take() {
            tracing::debug!(client_id = %self.id, old = old.conn(), new = link.conn(), "session taken over [MQTT-3.1.4-2]");
            if let Some(will) = self.will.on_close(CloseReason::TakenOver) {
                self.publish_will(ctx, will, None);
            }
            old.close(CloseReason::TakenOver);
        }
        self.release_held();
        self.settling = 0;
        if let Some(timer) = self.rare.as_mut().and_then(|rare| rare.expiry_timer.take()) {
            ctx.cancel(timer);
        }
        self.will = LastWill::from_connect(connect);
        self.link = Some(link);
        // The session keeps the connection's token (`Session::connection`). With `acked`,
        // the reader wrote the CONNACK (a clean session's: accepted, no session present).
        let _connection = if acked {
            self.session.connect_clean_acked(&mut self.out)
        } else {
            self.session.connect(connect.clean_session, &mut self.out)
        };
        if connect.protocol_version() == Some(ProtocolVersion::V31) {
            // MQTT 3.1 has no Session Present flag: that byte is reserved, 0.
            for out in &mut self.out {
                if let Output::Send(Packet::ConnAck(ack)) = out {
                    ack.session_present = false;
                }
            }
        }
        // A persistent session's subscriptions may have been made by another user: those
        // this one may not make are dropped before anything is delivered to it.
        if let Some(acl) = &acl {
            let denied: Vec<TopicFilter> = self
                .session
                .subscriptions()
                .keys()
                .filter(|filter| !acl.can_subscribe(filter))
                .cloned()
                .collect();
            if !denied.is_empty() {
                tracing::debug!(client_id = %self.id, dropped = denied.len(), "subscriptions the ACL denies this user dropped");
                self.session.drop_subscriptions(&denied, &mut self.out);
            }
        }
        self.acl = acl;
        ctx.set_idle_timeout(NEVER);
    }

    fn packet(&mut self, packet: Packet) {
        let out = &mut self.out;
        match packet {
            Packet::Publish(publish) => {
                let allowed = may_publish(self.acl.as_deref(), &publish.topic);
                let before = out.len();
                self.session.on_publish(publish, out);
                if !allowed {
                    // Acknowledged as usual (the client is not stuck), never published.
                    let mut i = before;
                    while i < out.len() {
                        if matches!(out.get(i), Some(Output::Publish(_))) {
                            out.remove(i);
                            Counters::add(&self.shared.counters.denied_publish, 1);
                            tracing::debug!(client_id = %self.id, "PUBLISH denied: acknowledged, dropped");
                        } else {
                            i += 1;
                        }
                    }
                }
            }
            Packet::PubAck(id) => {
                self.session.on_puback(id, out);
            }
            Packet::PubRec(id) => {
                self.session.on_pubrec(id, out);
            }
            Packet::PubRel(id) => self.session.on_pubrel(id, out),
            Packet::PubComp(id) => {
                self.session.on_pubcomp(id, out);
            }
            Packet::Subscribe(subscribe) => {
                let max = self.shared.config.max_subscriptions;
                match &self.acl {
                    None => self.session.on_subscribe_limited(&subscribe, max, out),
                    Some(acl) => {
                        let allowed = |filter: &TopicFilter| {
                            let ok = acl.can_subscribe(filter);
                            if !ok {
                                Counters::add(&self.shared.counters.denied_subscribe, 1);
                                tracing::debug!(client_id = %self.id, filter = %filter.as_str(), "SUBSCRIBE denied: 0x80");
                            }
                            ok
                        };
                        self.session
                            .on_subscribe_checked(&subscribe, max, allowed, out);
                    }
                }
            }
            Packet::Unsubscribe(unsubscribe) => self.session.on_unsubscribe(&unsubscribe, out),
            Packet::PingReq => out.push(Output::Send(Packet::PingResp)),
            // The connection's reader handles the rest itself.
            other => {
                tracing::debug!(client_id = %self.id, packet = %other.packet_type(), "ignoring a packet the reader should have handled");
            }
        }
    }

    /// Keeps `durable` (of a delivered message) until what this message's handling stores is
    /// committed ([`persist`](Self::persist)).
    fn keep_until_saved(durable: Option<Durable>) {
        if let Some(durable) = durable {
            let mut until_saved = UNTIL_SAVED.take();
            until_saved.push(durable);
            UNTIL_SAVED.set(until_saved);
        }
    }

    /// A read of the client's packets begins: its acknowledgements are held until what it
    /// changes is stored, here and in the sessions its messages go to (with a store).
    fn hold_until_durable(&mut self, conn: ConnId) {
        if self.shared.storage.is_none() || self.conn() != Some(conn) {
            return;
        }
        let hold = self.rare().hold();
        let (durable, asked) = Durable::new();
        DURABLE.set(Some(Awaited {
            durable,
            asked,
            conn,
            hold,
        }));
    }

    /// The read's packets are handled and what they changed submitted: the held
    /// acknowledgements go out when the last write is committed ([`SessionMsg::Durable`]), or
    /// now if nothing needed storing.
    fn await_durable(&mut self, ctx: &mut Ctx<'_>) {
        let Some(Awaited {
            durable,
            asked,
            conn,
            hold,
        }) = DURABLE.take()
        else {
            return;
        };
        if durable.is_alone() {
            drop((durable, asked));
            self.unhold(conn, hold);
        } else {
            drop(durable);
            ctx.spawn(asked, move |_| SessionMsg::Durable { conn, hold });
        }
    }

    /// Hold `hold` on the writes to connection `conn` is over: what waited for it and for no
    /// older hold goes out, in order.
    fn unhold(&mut self, conn: ConnId, hold: u64) {
        if self.conn() != Some(conn) {
            return;
        }
        let Some(rare) = self.rare.as_mut() else {
            return;
        };
        if let Some(ended) = rare.holds.iter_mut().find(|h| h.id == hold) {
            ended.done = true;
        }
        let mut released = Vec::new();
        while rare.holds.front().is_some_and(|h| h.done) {
            if let Some(front) = rare.holds.pop_front() {
                released.extend(front.after);
            }
        }
        for out in released {
            self.writes_push(out);
        }
    }

    fn deliver(&mut self, message: Message, qos: QoS, retained: bool) {
        let delivered = if retained {
            self.session.deliver_retained(message, qos, &mut self.out)
        } else {
            self.session.deliver(message, qos, &mut self.out)
        };
        self.count_dropped(delivered);
    }

    /// A delivery of a fan-out: a QoS 0 PUBLISH encoded once for all its subscribers is
    /// written as it is (where [`Session::deliver`] would send it), the rest delivered.
    fn delivery(&mut self, ctx: &mut Ctx<'_>, delivery: Delivery) {
        // (The `Durable` of a `DeliverMany` is kept by its receiver.)
        match delivery {
            Delivery::Message(message, qos) => self.deliver(message, qos, false),
            Delivery::Frame(frame) => {
                // What the deliveries before it output goes first.
                if !self.out.is_empty() {
                    self.outputs(ctx);
                }
                if self.session.deliver_qos0() == Delivered::Sent {
                    self.write_out(Out::Frame(frame));
                }
            }
        }
    }

    fn count_dropped(&mut self, delivered: Delivered) {
        let dropped = match delivered {
            Delivered::Queued { dropped_oldest } => dropped_oldest as u64,
            Delivered::Dropped => 1,
            Delivered::Sent | Delivered::Discarded => 0,
        };
        if dropped > 0 {
            Counters::add(&self.shared.counters.queue_drops, dropped);
            let total = self.session.dropped();
            let logged = &mut self.rare().dropped_logged;
            if *logged == 0 || total >= logged.saturating_mul(2) {
                *logged = total;
                tracing::warn!(
                    client_id = %self.id,
                    dropped = total,
                    max_queued = self.shared.config.max_queued,
                    "session queue full: dropping its oldest messages (raise max_queued, or \
                     have the client read faster)"
                );
            }
        }
    }

    fn detach(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: CloseReason) {
        if self.conn() != Some(conn) {
            return; // a connection taken over, already detached
        }
        self.flush_writes();
        let link = self.link.take();
        tracing::debug!(client_id = %self.id, conn, ?reason, "connection ended");
        let mut link = link.map(|link| (link, reason));
        if let Some(will) = self.will.on_close(reason) {
            link = self.publish_will(ctx, will, link);
        }
        if let Some((link, reason)) = link {
            link.close(reason);
        }
        self.release_held();
        let Some(connection) = self.session.connection() else {
            return;
        };
        let after = self
            .session
            .disconnected(connection, SystemTime::now(), &mut self.out);
        // HERMES: expiry is a timer, not the idle timeout: idle time restarts with every
        // message (each message queued for an offline session would push its expiry back),
        // an override of 2^32 - 2 ms or more means never, and an instance deactivated to save
        // memory has no idle timer at all.
        if after == AfterDisconnect::Keep
            && let SessionExpiry::After(expiry) = self.shared.config.session_expiry
            && !expiry.is_zero()
        {
            self.rare().expiry_timer = Some(ctx.schedule(expiry, SessionMsg::ExpiryCheck));
        }
    }

    /// Whether this session, offline and persistent, is past its expiry.
    fn expired(&self) -> bool {
        if self.link.is_some() || !self.session.is_persistent() {
            return false;
        }
        let SessionExpiry::After(expiry) = self.shared.config.session_expiry else {
            return false;
        };
        match self.session.expires_at(expiry) {
            // A timer may fire a little early by the wall clock.
            Some(at) => at <= SystemTime::now() + Duration::from_millis(50),
            None => false,
        }
    }

    fn expire(&mut self, ctx: &mut Ctx<'_>) {
        tracing::debug!(client_id = %self.id, "session expired");
        Counters::add(&self.shared.counters.expired_sessions, 1);
        self.session.expire(&mut self.out);
        self.ended = true;
        ctx.stop();
    }

    /// Carries out the session's outputs, in order.
    fn outputs(&mut self, ctx: &mut Ctx<'_>) {
        let mut out = std::mem::take(&mut self.out);
        for output in out.drain(..) {
            match output {
                Output::Send(packet) => self.write(packet),
                Output::Publish(message) => self.publish(ctx, message),
                Output::Subscribe { filter, qos } => {
                    // What it published before goes to the subscribers before this change.
                    self.route_published(ctx);
                    self.shared
                        .index
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .subscribe(&filter, self.id.clone(), qos);
                    self.ask_retained(ctx, filter, qos);
                }
                Output::Unsubscribe(filter) => {
                    self.route_published(ctx);
                    self.shared
                        .index
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .unsubscribe(&filter, &self.id);
                }
            }
        }
        self.out = out;
    }

    fn write(&mut self, packet: Packet) {
        self.write_out(Out::Packet(packet));
    }

    /// Writes `out` to the client: held behind the newest hold while a retained PUBLISH or a
    /// commit is waited for, else queued with the rest of this message's writes.
    fn write_out(&mut self, out: Out) {
        if let Some(hold) = self.rare.as_mut().and_then(|rare| rare.holds.back_mut()) {
            hold.after.push(out);
            return;
        }
        self.writes_push(out);
    }

    fn writes_push(&mut self, out: Out) {
        if self.link.is_some() {
            self.writes.push(out);
        }
    }

    /// Queues this message's writes on the link, in one go.
    fn flush_writes(&mut self) {
        let Some(link) = &self.link else {
            self.writes.clear();
            return;
        };
        let (dropped, _closed) = link.send_all(&mut self.writes);
        if dropped > 0 {
            Counters::add(&self.shared.counters.qos0_drops, dropped);
        }
    }

    /// A message from the client (QoS 1 or 2; the reader routes QoS 0 itself): retained if it
    /// says so, and routed to the subscribers.
    fn publish(&mut self, ctx: &mut Ctx<'_>, message: Message) {
        Counters::add(&self.shared.counters.published, 1);
        if message.retain {
            // HERMES: a handler's sends go out when its run ends (after up to a batch of
            // messages), but its writes to the socket go out at once, so a PUBACK would reach
            // the client before the retained shard even has the message. Asking, and holding
            // the client's packets until the answer, restores the order.
            let shard = self.shared.retained_shard(message.topic.as_bytes());
            let conn = self.conn().unwrap_or(0);
            let hold = self.rare().hold();
            self.asked_store = true;
            ctx.ask(
                shard,
                |reply| RetainedMsg::Store(message.clone(), reply),
                ASK_TIMEOUT,
                move |_answer| SessionMsg::Stored { conn, hold },
            );
        }
        self.route(message);
    }

    /// A will: published like a client's message. A retained one is stored before `closing`
    /// (the connection that ended, with why) is closed: that is given back to close now
    /// unless the will is retained.
    fn publish_will(
        &mut self,
        ctx: &mut Ctx<'_>,
        message: Message,
        closing: Option<(Link, CloseReason)>,
    ) -> Option<(Link, CloseReason)> {
        tracing::debug!(client_id = %self.id, topic = %message.topic.as_str(), "publishing the will");
        Counters::add(&self.shared.counters.published, 1);
        let mut closing = closing;
        if message.retain {
            let shard = self.shared.retained_shard(message.topic.as_bytes());
            match closing.take() {
                Some((link, _)) => {
                    let rare = self.rare();
                    rare.closing = rare.closing.saturating_add(1);
                    ctx.ask(
                        shard,
                        |reply| RetainedMsg::Store(message.clone(), reply),
                        ASK_TIMEOUT,
                        move |_answer| SessionMsg::WillStored { link },
                    );
                }
                None => ctx.send(shard, RetainedMsg::Publish(message.clone())),
            }
        }
        self.route(message);
        closing
    }

    /// Routes `message` with the rest this message's handling publishes
    /// ([`route_published`](Self::route_published)).
    fn route(&mut self, message: Message) {
        let mut published = PUBLISHED.take();
        published.push(message);
        PUBLISHED.set(published);
    }

    /// Sends what this message's handling published, in order, to every session subscribed
    /// to their topics, once each, at the maximum QoS of its matching subscriptions
    /// [MQTT-3.3.5-1]: one Hermes message per subscriber, not per delivery (the PUBLISHes of
    /// one read of the connection are routed together). Called before the session changes
    /// its subscriptions in the index, and once the message is handled.
    fn route_published(&mut self, ctx: &mut Ctx<'_>) {
        let mut published = PUBLISHED.take();
        // HERMES: a full mailbox makes a send a dead letter (counted by the broker's sink),
        // and the sender cannot learn it: a QoS 1 or 2 message is then lost for that
        // subscriber, where the session would rather keep it and retry.
        // The client's acknowledgements wait until each subscriber has stored what it was
        // sent (QoS 1 and 2 only: QoS 0 messages are not stored).
        let own = DURABLE.take();
        let durable = own
            .as_ref()
            .filter(|_| published.iter().any(|m| m.qos != QoS::AtMostOnce))
            .map(|awaited| &awaited.durable);
        if published.len() > 1 {
            for (client, mut msg) in super::fan_out(&self.shared, &mut published) {
                if let SessionMsg::Deliver { durable: d, .. } | SessionMsg::DeliverMany(_, d) =
                    &mut msg
                {
                    *d = durable.cloned();
                }
                ctx.send(client, msg);
            }
        } else if let Some(message) = published.pop() {
            // The matches are the thread's (a session keeps none).
            super::with_subscribers(&self.shared, &message.topic, |matches| {
                for (client, qos) in matches.iter() {
                    let message = message.clone();
                    let durable = durable.cloned();
                    ctx.send(
                        client.clone(),
                        SessionMsg::Deliver {
                            message,
                            qos,
                            durable,
                        },
                    );
                }
            });
        }
        DURABLE.set(own);
        PUBLISHED.set(published);
    }

    /// Asks the retained shards that may hold messages for `filter` for them [MQTT-3.3.1-6].
    fn ask_retained(&mut self, ctx: &mut Ctx<'_>, filter: TopicFilter, qos: QoS) {
        let shards = self.shared.retained_shards;
        let only = (!filter.has_wildcards()).then(|| self.shared.retained_shard(filter.as_bytes()));
        let all = (0..shards).map(super::RetainedShard);
        for shard in only.into_iter().chain(all.filter(|_| only.is_none())) {
            let filter = filter.clone();
            ctx.ask(
                shard,
                move |reply| RetainedMsg::Matching(filter, reply),
                ASK_TIMEOUT,
                move |answer| SessionMsg::Retained { qos, answer },
            );
        }
    }

    /// Stores what changed; the [`Durable`]s kept for it ([`UNTIL_SAVED`]) are dropped once
    /// that is committed, at once if nothing is stored.
    fn persist(&mut self) {
        let changes = self.session.take_changes();
        let mut until_saved = UNTIL_SAVED.take();
        let Some(storage) = &self.shared.storage else {
            until_saved.clear();
            UNTIL_SAVED.set(until_saved);
            return;
        };
        let keep = self.session.is_persistent() && !self.ended;
        if keep && (!changes.is_empty() || !self.stored) {
            let own = DURABLE.take();
            until_saved.extend(own.as_ref().map(|awaited| awaited.durable.clone()));
            DURABLE.set(own);
            let queued = storage.save_session(
                self.id.name(),
                &self.session,
                &changes,
                std::mem::take(&mut until_saved),
            );
            self.stored = true;
            if queued > 0 {
                // After the submission (counted unsaved): see `Counters::queued_stored`.
                self.shared
                    .counters
                    .queued_stored
                    .fetch_add(queued, Ordering::Release);
            }
            UNTIL_SAVED.set(until_saved);
            return;
        }
        until_saved.clear();
        UNTIL_SAVED.set(until_saved);
        if !keep && self.stored {
            storage.delete_session(self.id.name(), changes.queue_removed.clone());
            self.stored = false;
        }
    }

    /// `n` packets of connection `conn` that its reader counted as unsettled are carried
    /// out: they settle when a message to itself, sent now or already on its way, comes back
    /// (after this run's sends are out).
    fn settle_later(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, n: u32) {
        if n == 0 {
            return;
        }
        if self.settling > 0 {
            self.settling = self.settling.saturating_add(n);
        } else {
            self.settling = n;
            ctx.send(self.id.clone(), SessionMsg::Settled { conn });
        }
    }

    /// After each message: how long to stay live.
    fn settle(&mut self, ctx: &mut Ctx<'_>) {
        if self.link.is_some() || self.ended || self.rare.as_ref().is_some_and(|r| r.closing > 0) {
            return;
        }
        if !self.session.is_persistent() {
            // A clean session whose connection ended, or a message for a session that does
            // not exist (any more): nothing to keep.
            ctx.stop();
            return;
        }
        if self.shared.storage.is_some() {
            ctx.set_idle_timeout(OFFLINE_IDLE);
        } else {
            ctx.set_idle_timeout(NEVER);
        }
    }
}

/// Whether the broker's answer to `packet` says something is stored, so waits until it is:
/// a QoS 1 or 2 PUBLISH (PUBACK, PUBREC), PUBREL (PUBCOMP), PUBREC (PUBREL: a QoS 2
/// message sent, which must not be sent again), SUBSCRIBE and UNSUBSCRIBE.
fn needs_durable(packet: &Packet) -> bool {
    match packet {
        Packet::Publish(publish) => publish.qos.qos() != QoS::AtMostOnce,
        Packet::PubRel(_) | Packet::PubRec(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => {
            true
        }
        _ => false,
    }
}

impl Receiver<ClientId, SessionMsg, BrokerApp> for SessionRx {
    fn receive(&mut self, ctx: &mut Ctx<'_>, msg: SessionMsg) {
        // The outputs' vector is the thread's, lent for this message (given back below): a
        // session between messages keeps none. The writes' vector likewise.
        self.out = OUT.take();
        self.writes = WRITES.take();
        let mut published = PUBLISHED.take();
        published.clear();
        PUBLISHED.set(published);
        // What a handler that panicked left.
        DURABLE.take();
        let mut until_saved = UNTIL_SAVED.take();
        until_saved.clear();
        UNTIL_SAVED.set(until_saved);
        match msg {
            SessionMsg::Attach {
                link,
                connect,
                acl,
                acked,
            } => {
                self.attach(ctx, link, &connect, acl, acked);
                if acked {
                    // What the client sends next may go the direct way: the subscriptions
                    // a reset dropped have left the index (`outputs` writes it at once).
                    self.outputs(ctx);
                    if let Some(link) = &self.link {
                        link.settle();
                    }
                }
            }
            SessionMsg::Packets { conn, packets } => {
                if self.conn() == Some(conn) {
                    // Acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK)
                    // wait until what they acknowledge is on disk.
                    if packets.iter().any(needs_durable) {
                        self.hold_until_durable(conn);
                    }
                    let mut settled = 0;
                    for packet in packets {
                        let counted = matches!(
                            packet,
                            Packet::Publish(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_)
                        );
                        self.asked_store = false;
                        self.packet(packet);
                        self.outputs(ctx);
                        // A retained PUBLISH settles when its shard has it (`Stored`); the
                        // rest once this run's sends are out, which a message to itself comes
                        // after.
                        if counted && !self.asked_store {
                            settled += 1;
                        }
                    }
                    // What they published is sent before the message that settles them.
                    self.route_published(ctx);
                    self.settle_later(ctx, conn, settled);
                }
            }
            SessionMsg::Settled { conn } => {
                // Only the attached connection's: an earlier one's came after a reset.
                if self.settling > 0
                    && let Some(link) = self.link.as_ref().filter(|l| l.conn() == conn)
                {
                    link.settle_n(u64::from(self.settling));
                    self.settling = 0;
                }
            }
            SessionMsg::Deliver {
                message,
                qos,
                durable,
            } => {
                self.deliver(message, qos, false);
                Self::keep_until_saved(durable);
            }
            SessionMsg::DeliverFrames(frames) => {
                // As many deliveries, each sent (connected) or discarded (counted) alike.
                let sent = (0..frames.len())
                    .fold(false, |_, _| self.session.deliver_qos0() == Delivered::Sent);
                if sent {
                    self.write_out(Out::Frames(frames));
                }
            }
            SessionMsg::DeliverMany(deliveries, durable) => {
                for delivery in deliveries {
                    self.delivery(ctx, delivery);
                }
                Self::keep_until_saved(durable);
            }
            SessionMsg::Detach { conn, reason } => self.detach(ctx, conn, reason),
            SessionMsg::Retained { qos, answer } => match answer {
                Ok(messages) => {
                    for message in messages {
                        self.deliver(message, qos, true);
                    }
                }
                Err(error) => {
                    tracing::warn!(client_id = %self.id, %error, "no answer from a retained shard: a new subscription may miss retained messages");
                }
            },
            SessionMsg::Stored { conn, hold } => {
                if let Some(link) = self.link.as_ref().filter(|l| l.conn() == conn) {
                    link.settle();
                }
                self.unhold(conn, hold);
            }
            SessionMsg::Durable { conn, hold } => self.unhold(conn, hold),
            SessionMsg::WillStored { link } => {
                if let Some(rare) = &mut self.rare {
                    rare.closing = rare.closing.saturating_sub(1);
                }
                link.close(CloseReason::ServerClosed);
            }
            SessionMsg::ExpiryCheck => {
                if self.expired() {
                    self.expire(ctx);
                }
            }
        }
        // A session restored from disk may have expired while nobody asked.
        if !self.ended && self.expired() {
            self.expire(ctx);
        }
        self.outputs(ctx);
        self.route_published(ctx);
        self.persist();
        self.await_durable(ctx);
        // What it writes goes out after what it stores (for exactly-once across a crash,
        // see the session's docs), all in one go; acknowledgements once it is stored.
        self.flush_writes();
        self.count_offline();
        self.settle(ctx);
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        OUT.set(out);
        WRITES.set(std::mem::take(&mut self.writes));
        if self.rare.as_ref().is_some_and(|rare| rare.is_empty()) {
            self.rare = None;
        }
    }

    fn deactivated(&mut self, _ctx: &mut Ctx<'_>, why: Deactivation) {
        if why == Deactivation::Panicked {
            // What the handler that panicked kept: held, it would hold back the
            // acknowledgements of the sessions that delivered to it until this thread's next
            // message.
            DURABLE.take();
            UNTIL_SAVED.take();
        }
        if why == Deactivation::Panicked && !self.session.is_persistent() {
            // A clean session ends with its instance: its subscriptions leave the index.
            let filters: Vec<_> = self.session.subscriptions().keys().cloned().collect();
            self.shared
                .index
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove_subscriber(&self.id, &filters);
        }
        if self.counted_offline && !self.session.is_persistent() {
            self.counted_offline = false;
            Counters::gauge(&self.shared.counters.offline_sessions, -1);
        }
        if let Some(link) = self.link.take() {
            // Still attached: the broker is closing, or this instance panicked. The client
            // must connect again (to a fresh instance, loaded from the store).
            tracing::debug!(client_id = %self.id, ?why, "closing the connection of a deactivated session");
            link.close(CloseReason::ServerClosed);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A session receiver is allocated (boxed by Hermes) for every connected client: what few
    /// sessions use (held packets, the will, the expiry timer) is behind pointers, and the
    /// connection's token is the session's, so that it fits glibc's 368-byte chunk (it was
    /// 520 bytes, a 528-byte chunk).
    #[test]
    fn a_session_receiver_stays_small() {
        let size = std::mem::size_of::<super::SessionRx>();
        assert!(size + 8 <= 368, "SessionRx is {size} bytes");
        assert_eq!(std::mem::size_of::<crate::will::LastWill>(), 8);
    }
}
