//! The session against the rules of MQTT 3.1.1, each test named or commented with the
//! normative statements it checks.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use super::*;
use crate::subscriptions::{Matches, Subscriptions};
use crate::topic::TopicName;

fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn msg(topic: &'static str, payload: &'static str, qos: QoS) -> Message {
    Message {
        topic: TopicName::from_static(topic),
        payload: Bytes::from_static(payload.as_bytes()),
        qos,
        retain: false,
    }
}

fn limits(max_inflight: u16, max_queued: usize) -> Limits {
    Limits {
        max_inflight: NonZeroU16::new(max_inflight).unwrap(),
        max_queued,
    }
}

fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

/// A session with a client connected, and the CONNACK taken out.
fn connected(clean: bool, limits: Limits) -> (Session, Connection, Vec<Output>) {
    let mut session = Session::new(limits);
    let mut out = Vec::new();
    let connection = session.connect(clean, &mut out);
    assert_eq!(take(&mut out), ["CONNACK sp=0"]);
    (session, connection, out)
}

fn subscribe(n: u16, filters: &[(&'static str, QoS)]) -> Subscribe {
    Subscribe {
        packet_id: id(n),
        filters: filters
            .iter()
            .map(|(f, q)| (TopicFilter::from_static(f), *q))
            .collect(),
    }
}

fn unsubscribe(n: u16, filters: &[&'static str]) -> Unsubscribe {
    Unsubscribe {
        packet_id: id(n),
        filters: filters
            .iter()
            .map(|f| TopicFilter::from_static(f))
            .collect(),
    }
}

fn incoming(qos: QoS, n: u16, dup: bool, retain: bool) -> Publish {
    let mut publish = msg("in/x", "m", qos).to_publish(id(n), dup);
    publish.retain = retain;
    publish
}

/// The outputs as short strings, in order; empties `out`.
fn take(out: &mut Vec<Output>) -> Vec<String> {
    out.drain(..).map(|o| describe(&o)).collect()
}

fn describe(output: &Output) -> String {
    let message = |m: &Message| {
        let retain = if m.retain { " retain" } else { "" };
        let payload = String::from_utf8_lossy(&m.payload);
        format!("{} {payload} q{}{retain}", m.topic, m.qos as u8)
    };
    match output {
        Output::Send(Packet::ConnAck(c)) => format!("CONNACK sp={}", u8::from(c.session_present)),
        Output::Send(Packet::Publish(p)) => {
            let id = p
                .qos
                .packet_id()
                .map(|i| format!(" #{i}"))
                .unwrap_or_default();
            let dup = if p.qos.dup() { " dup" } else { "" };
            let m = Message::from(p.clone());
            format!("PUBLISH {}{id}{dup}", message(&m))
        }
        Output::Send(Packet::PubAck(i)) => format!("PUBACK {i}"),
        Output::Send(Packet::PubRec(i)) => format!("PUBREC {i}"),
        Output::Send(Packet::PubRel(i)) => format!("PUBREL {i}"),
        Output::Send(Packet::PubComp(i)) => format!("PUBCOMP {i}"),
        Output::Send(Packet::SubAck(s)) => {
            let codes: Vec<u8> = s.return_codes.iter().map(|c| c.to_u8()).collect();
            format!("SUBACK {} {codes:?}", s.packet_id)
        }
        Output::Send(Packet::UnsubAck(i)) => format!("UNSUBACK {i}"),
        Output::Send(other) => format!("{}", other.packet_type()),
        Output::Publish(m) => format!("publish {}", message(m)),
        Output::Subscribe { filter, qos } => format!("subscribe {filter} q{}", *qos as u8),
        Output::Unsubscribe(filter) => format!("unsubscribe {filter}"),
    }
}

// Clean and persistent sessions [3.1.2.4].

/// [MQTT-3.2.2-1], [MQTT-3.2.2-3]: Session Present 0 for a clean session, and for a
/// persistent one the broker had no state for.
#[test]
fn new_sessions_have_no_session_present_mqtt_3_2_2_1_and_3() {
    for clean in [true, false] {
        let (session, _, _) = connected(clean, Limits::default());
        assert_eq!(session.is_persistent(), !clean);
    }
}

/// [MQTT-3.1.2-4], [MQTT-3.2.2-2]: a persistent session resumes with its subscriptions, and
/// CONNACK says Session Present 1.
#[test]
fn persistent_session_resumes_mqtt_3_1_2_4() {
    let (mut s, c, mut out) = connected(false, Limits::default());
    s.on_subscribe(&subscribe(1, &[("a/#", QoS::AtLeastOnce)]), &mut out);
    out.clear();
    assert_eq!(s.disconnected(c, t0(), &mut out), AfterDisconnect::Keep);
    assert!(out.is_empty(), "subscriptions stay in the index");
    let _ = s.connect(false, &mut out);
    assert_eq!(take(&mut out), ["CONNACK sp=1"]);
    assert_eq!(
        s.subscriptions().get(&TopicFilter::from_static("a/#")),
        Some(&QoS::AtLeastOnce)
    );
}

/// [MQTT-3.1.2-5]: while the client of a persistent session is away, QoS 1 and 2 messages are
/// kept for it; QoS 0 ones are not (our choice, allowed by [3.1.2.4]), and are counted.
#[test]
fn away_client_gets_qos1_and_qos2_later_mqtt_3_1_2_5() {
    let (mut s, c, mut out) = connected(false, Limits::default());
    let _ = s.disconnected(c, t0(), &mut out);
    let qos0 = s.deliver(msg("t", "m0", QoS::AtMostOnce), QoS::ExactlyOnce, &mut out);
    let qos1 = s.deliver(msg("t", "m1", QoS::AtLeastOnce), QoS::ExactlyOnce, &mut out);
    let qos2 = s.deliver(msg("t", "m2", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
    let downgraded = s.deliver(msg("t", "m3", QoS::ExactlyOnce), QoS::AtMostOnce, &mut out);
    assert_eq!(qos0, Delivered::Discarded);
    assert_eq!(
        downgraded,
        Delivered::Discarded,
        "QoS 0 once downgraded [MQTT-3.8.4-6]"
    );
    assert_eq!(qos1, Delivered::Queued { dropped_oldest: 0 });
    assert_eq!(qos2, Delivered::Queued { dropped_oldest: 0 });
    assert_eq!((s.discarded(), s.dropped()), (2, 0));
    assert!(out.is_empty());
    let _ = s.connect(false, &mut out);
    assert_eq!(
        take(&mut out),
        ["CONNACK sp=1", "PUBLISH t m1 q1 #1", "PUBLISH t m2 q2 #2"]
    );
}

/// [MQTT-3.1.2-6]: a CONNECT with CleanSession 1 discards the previous state, gives its
/// subscriptions up, and resends nothing; [MQTT-3.2.2-1]: Session Present 0.
#[test]
fn clean_connect_discards_previous_state_mqtt_3_1_2_6() {
    let (mut s, c, mut out) = connected(false, limits(1, 10));
    s.on_subscribe(&subscribe(1, &[("a/#", QoS::ExactlyOnce)]), &mut out);
    let _ = s.deliver(
        msg("a/1", "m1", QoS::AtLeastOnce),
        QoS::ExactlyOnce,
        &mut out,
    );
    let _ = s.deliver(
        msg("a/1", "m2", QoS::AtLeastOnce),
        QoS::ExactlyOnce,
        &mut out,
    );
    s.on_publish(incoming(QoS::ExactlyOnce, 9, false, false), &mut out);
    out.clear();
    let _ = s.disconnected(c, t0(), &mut out);
    let _ = s.connect(true, &mut out);
    assert_eq!(take(&mut out), ["unsubscribe a/#", "CONNACK sp=0"]);
    assert_eq!(
        s.state(),
        &SessionState {
            // m2 waited in the queue (number 0) for the window.
            queue: QueueState::from_parts(1, []),
            ..SessionState::default()
        }
    );
    // The incoming QoS 2 identifier is gone: a PUBLISH with it is new.
    s.on_publish(incoming(QoS::ExactlyOnce, 9, false, false), &mut out);
    assert_eq!(take(&mut out), ["publish in/x m q2", "PUBREC 9"]);
}

/// A clean session whose CONNACK the edge wrote (accepted, Session Present 0
/// [MQTT-3.2.2-1]) pushes none of its own: only the previous state's subscriptions given up
/// [MQTT-3.1.2-6], and its connection is live like `connect`'s.
#[test]
fn a_clean_connect_acked_by_the_caller_pushes_no_connack_mqtt_3_2_0_1() {
    let (mut s, c, mut out) = connected(false, Limits::default());
    s.on_subscribe(&subscribe(1, &[("a/#", QoS::AtLeastOnce)]), &mut out);
    let _ = s.deliver(
        msg("a/1", "m", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    out.clear();
    let _ = s.disconnected(c, t0(), &mut out);
    let acked = s.connect_clean_acked(&mut out);
    assert_eq!(
        take(&mut out),
        ["unsubscribe a/#"],
        "no CONNACK, nothing resent"
    );
    assert_eq!(s.connection(), Some(acked));
    assert!(s.is_connected() && !s.is_persistent());
    assert_eq!(
        s.state(),
        &SessionState::default(),
        "the state is discarded"
    );
    // Taken over while connected: the same, and the old connection is stale.
    let again = s.connect_clean_acked(&mut out);
    assert!(take(&mut out).is_empty());
    assert_ne!(again, acked);
    assert_eq!(
        s.disconnected(acked, t0(), &mut out),
        AfterDisconnect::Stale
    );
    // `connect` still answers for itself.
    let _ = s.connect(true, &mut out);
    assert_eq!(take(&mut out), ["CONNACK sp=0"]);
}

/// [MQTT-3.1.2-6]: a clean session ends with its connection: subscriptions given up, nothing
/// kept for it afterwards.
#[test]
fn clean_session_ends_with_its_connection_mqtt_3_1_2_6() {
    let (mut s, c, mut out) = connected(true, Limits::default());
    s.on_subscribe(
        &subscribe(1, &[("a", QoS::AtLeastOnce), ("b", QoS::AtMostOnce)]),
        &mut out,
    );
    out.clear();
    assert_eq!(s.disconnected(c, t0(), &mut out), AfterDisconnect::Discard);
    assert_eq!(take(&mut out), ["unsubscribe a", "unsubscribe b"]);
    let late = s.deliver(msg("a", "m", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    assert_eq!(late, Delivered::Discarded);
    assert!(s.subscriptions().is_empty() && s.queued_len() == 0);
    assert_eq!(s.offline_since(), None);
}

/// [MQTT-3.1.4-2]: a second connection with the same client identifier takes over; the old
/// connection's end changes nothing. [MQTT-3.1.2-6]: a clean session taken over by a
/// persistent connection is not reused.
#[test]
fn takeover_mqtt_3_1_4_2() {
    let (mut s, old, mut out) = connected(false, Limits::default());
    let _ = s.deliver(msg("t", "m1", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    out.clear();
    let new = s.connect(false, &mut out);
    assert_eq!(take(&mut out), ["CONNACK sp=1", "PUBLISH t m1 q1 #1 dup"]);
    assert_eq!(s.disconnected(old, t0(), &mut out), AfterDisconnect::Stale);
    assert!(s.is_connected());
    assert_eq!(s.disconnected(new, t0(), &mut out), AfterDisconnect::Keep);

    let (mut s, _, mut out) = connected(true, Limits::default());
    s.on_subscribe(&subscribe(1, &[("a", QoS::AtLeastOnce)]), &mut out);
    out.clear();
    let _ = s.connect(false, &mut out);
    assert_eq!(take(&mut out), ["unsubscribe a", "CONNACK sp=0"]);
}

// Subscriptions.

/// [MQTT-3.8.4-3]: subscribing again to the same filter replaces its QoS; [MQTT-3.8.4-4],
/// [MQTT-3.8.4-5], [MQTT-3.9.3-1]: one SUBACK with a code per filter, in order.
#[test]
fn subscribe_replaces_the_same_filter_mqtt_3_8_4_3() {
    let (mut s, _, mut out) = connected(false, Limits::default());
    s.on_subscribe(
        &subscribe(1, &[("a/b", QoS::AtMostOnce), ("c", QoS::AtLeastOnce)]),
        &mut out,
    );
    assert_eq!(
        take(&mut out),
        ["subscribe a/b q0", "subscribe c q1", "SUBACK 1 [0, 1]"]
    );
    s.on_subscribe(&subscribe(2, &[("a/b", QoS::ExactlyOnce)]), &mut out);
    // The index replaces it, and the retained messages are sent again.
    assert_eq!(take(&mut out), ["subscribe a/b q2", "SUBACK 2 [2]"]);
    let subs: Vec<_> = s
        .subscriptions()
        .iter()
        .map(|(f, q)| (f.as_str(), *q))
        .collect();
    assert_eq!(subs, [("a/b", QoS::ExactlyOnce), ("c", QoS::AtLeastOnce)]);
}

/// [MQTT-3.10.4-1]: filters compare character by character; [MQTT-3.10.4-4],
/// [MQTT-3.10.4-5]: UNSUBACK always; [MQTT-3.10.4-3]: delivery in progress completes.
#[test]
fn unsubscribe_mqtt_3_10_4() {
    let (mut s, _, mut out) = connected(false, Limits::default());
    s.on_subscribe(&subscribe(1, &[("a/b", QoS::AtLeastOnce)]), &mut out);
    let _ = s.deliver(
        msg("a/b", "m", QoS::AtLeastOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    out.clear();
    s.on_unsubscribe(&unsubscribe(2, &["a/+"]), &mut out);
    assert_eq!(take(&mut out), ["UNSUBACK 2"]);
    s.on_unsubscribe(&unsubscribe(3, &["a/b", "x"]), &mut out);
    assert_eq!(take(&mut out), ["unsubscribe a/b", "UNSUBACK 3"]);
    assert!(s.subscriptions().is_empty());
    assert!(s.on_puback(id(1), &mut out));
}

// Outgoing delivery.

/// [MQTT-3.8.4-6], [3.3.5]: sent at the minimum of the published and the granted QoS;
/// [MQTT-3.3.1-9]: RETAIN 0 on forwarding; [MQTT-3.3.1-8]: RETAIN 1 for a new subscription.
#[test]
fn qos_downgrade_and_retain_flag_mqtt_3_8_4_6() {
    let all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for published in all {
        for granted in all {
            let (mut s, _, mut out) = connected(false, Limits::default());
            let mut m = msg("t", "m", published);
            m.retain = true;
            let _ = s.deliver(m.clone(), granted, &mut out);
            let _ = s.deliver_retained(m, granted, &mut out);
            let q = published.min(granted) as u8;
            let (id1, id2) = if q == 0 {
                (String::new(), String::new())
            } else {
                (" #1".into(), " #2".into())
            };
            assert_eq!(
                take(&mut out),
                [
                    format!("PUBLISH t m q{q}{id1}"),
                    format!("PUBLISH t m q{q} retain{id2}")
                ],
                "{published:?} granted {granted:?}"
            );
        }
    }
}

/// A message delivered to many sessions shares its topic and payload: no copy per subscriber.
#[test]
fn delivery_shares_the_payload() {
    let m = msg("t", "shared", QoS::AtLeastOnce);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
        let (mut s, _, mut out) = connected(true, Limits::default());
        let _ = s.deliver(m.clone(), qos, &mut out);
        let Some(Output::Send(Packet::Publish(p))) = out.pop() else {
            panic!("{out:?}")
        };
        assert_eq!(p.payload.as_ptr(), m.payload.as_ptr());
        assert_eq!(p.topic.as_bytes().as_ptr(), m.topic.as_bytes().as_ptr());
    }
}

/// [MQTT-2.3.1-1], [MQTT-2.3.1-4]: packet identifiers are never 0 and never one in use by
/// another message in flight, round 65535 and back to 1.
#[test]
fn packet_ids_skip_zero_and_ids_in_flight_mqtt_2_3_1_1_and_4() {
    let mut state = SessionState::default();
    state.delivery.next_packet_id = id(65534);
    state.delivery.inflight.push_back(InFlight {
        packet_id: id(1),
        stage: Stage::Released,
    });
    let mut s = Session::restore(state, limits(10, 10));
    let mut out = Vec::new();
    let _ = s.connect(false, &mut out);
    assert_eq!(take(&mut out), ["CONNACK sp=1", "PUBREL 1"]);
    for n in 1..=3 {
        let _ = s.deliver(msg("t", "m", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
        let _ = n;
    }
    assert_eq!(
        take(&mut out),
        [
            "PUBLISH t m q1 #65534",
            "PUBLISH t m q1 #65535",
            "PUBLISH t m q1 #2"
        ]
    );
}

/// Packet identifiers are taken in turn, skipping those in flight, as a scan of the window
/// for each would take them, over several rounds of 65535 [MQTT-2.3.1-1], [MQTT-2.3.1-4]:
/// messages that stay in flight for more than a round (QoS 1 never acknowledged, QoS 2
/// waiting for PUBCOMP), acknowledgements out of order, a reconnection, a restore.
#[test]
fn packet_ids_in_turn_skip_ids_in_flight_over_many_rounds() {
    let mut rng = Lcg(7);
    let mut s = Session::new(limits(8, 0));
    let mut out = Vec::new();
    let mut c = s.connect(false, &mut out);
    out.clear();
    // What a scan of the window gives: the next identifier in turn that is not in flight.
    let mut expected_next: u16 = 1;
    let mut skipped = 0;
    for step in 0..400_000u32 {
        let inflight: Vec<InFlight> = s.state().delivery.inflight().cloned().collect();
        if inflight.len() < 8 {
            let qos = if rng.below(2) == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            let _ = s.deliver(msg("t", "m", qos), qos, &mut out);
            let Some(Output::Send(Packet::Publish(p))) = out.pop() else {
                panic!("step {step}: nothing sent");
            };
            let mut want = expected_next;
            while inflight.iter().any(|f| f.packet_id().get() == want) {
                want = if want == u16::MAX { 1 } else { want + 1 };
                skipped += 1;
            }
            assert_eq!(p.qos.packet_id(), Some(id(want)), "step {step}");
            expected_next = if want == u16::MAX { 1 } else { want + 1 };
        } else {
            // Acknowledge one, not the oldest two: they stay in flight for rounds.
            let f = &inflight[2 + rng.below(inflight.len() - 2)];
            match f.stage() {
                Stage::Unacknowledged(m) if m.qos == QoS::AtLeastOnce => {
                    assert!(s.on_puback(f.packet_id(), &mut out));
                }
                Stage::Unacknowledged(_) => assert!(s.on_pubrec(f.packet_id(), &mut out)),
                Stage::Released => assert!(s.on_pubcomp(f.packet_id(), &mut out)),
            }
            out.clear();
        }
        if step == 200_000 {
            // Away and back, and through the store: the identifiers in flight stay taken.
            let _ = s.disconnected(c, t0(), &mut out);
            s = Session::restore(s.state().clone(), limits(8, 0));
            c = s.connect(false, &mut out);
            out.clear();
        }
    }
    assert!(
        skipped >= 4,
        "identifiers in flight were met and skipped: {skipped}"
    );
}

/// The in-flight window: at most `max_inflight` unacknowledged; the rest waits, first in
/// first out, and goes out as acknowledgements free the window, in order [MQTT-4.6.0-6].
#[test]
fn window_bounds_messages_in_flight_and_keeps_order_mqtt_4_6_0_6() {
    let (mut s, _, mut out) = connected(false, limits(2, 10));
    for m in ["m1", "m2", "m3", "m4", "m5"] {
        let _ = s.deliver(msg("t", m, QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    }
    assert_eq!(take(&mut out), ["PUBLISH t m1 q1 #1", "PUBLISH t m2 q1 #2"]);
    assert_eq!((s.inflight_len(), s.queued_len()), (2, 3));
    assert!(s.on_puback(id(2), &mut out));
    assert_eq!(take(&mut out), ["PUBLISH t m3 q1 #3"]);
    assert!(s.on_puback(id(1), &mut out));
    assert_eq!(take(&mut out), ["PUBLISH t m4 q1 #4"]);
    // A new message waits behind the queue even with room in the window.
    let _ = s.deliver(msg("t", "m6", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    assert!(out.is_empty());
    assert!(s.on_puback(id(3), &mut out));
    assert!(s.on_puback(id(4), &mut out));
    assert_eq!(take(&mut out), ["PUBLISH t m5 q1 #5", "PUBLISH t m6 q1 #6"]);
}

/// QoS 0 is not held by the window: it goes out at once, ahead of queued QoS 1 messages (the
/// order rule is per topic and QoS [MQTT-4.6.0-6]).
#[test]
fn qos0_is_sent_at_once_when_connected() {
    let (mut s, _, mut out) = connected(true, limits(1, 10));
    let _ = s.deliver(msg("t", "m1", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    let _ = s.deliver(msg("t", "m2", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    let sent = s.deliver(msg("t", "m3", QoS::AtMostOnce), QoS::AtLeastOnce, &mut out);
    assert_eq!(sent, Delivered::Sent);
    assert_eq!(take(&mut out), ["PUBLISH t m1 q1 #1", "PUBLISH t m3 q0"]);
}

/// A QoS 0 delivery written by the caller is sent exactly when `deliver` would send it, and
/// discarded (and counted) when it would discard it.
#[test]
fn qos0_written_by_the_caller_is_sent_or_discarded_as_deliver_would() {
    let (mut s, c, mut out) = connected(false, limits(1, 10));
    let _ = s.deliver(msg("t", "m1", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    out.clear();
    // Connected, the window full: QoS 0 goes out anyway.
    assert_eq!(s.deliver_qos0(), Delivered::Sent);
    assert_eq!(
        s.deliver(msg("t", "m", QoS::AtMostOnce), QoS::AtLeastOnce, &mut out),
        Delivered::Sent
    );
    assert!(out.iter().all(|o| matches!(o, Output::Send(_))));
    out.clear();
    assert_eq!(s.discarded(), 0);
    let _ = s.disconnected(c, t0(), &mut out);
    assert_eq!(s.deliver_qos0(), Delivered::Discarded);
    assert_eq!(
        s.deliver(msg("t", "m", QoS::AtMostOnce), QoS::AtLeastOnce, &mut out),
        Delivered::Discarded
    );
    assert_eq!(s.discarded(), 2);
    assert!(out.is_empty());
}

/// A full queue drops its oldest message, and counts it; what is kept keeps its order.
#[test]
fn full_queue_drops_the_oldest_and_counts() {
    let (mut s, c, mut out) = connected(false, limits(1, 3));
    let _ = s.disconnected(c, t0(), &mut out);
    let results: Vec<_> = ["m1", "m2", "m3", "m4", "m5"]
        .into_iter()
        .map(|m| s.deliver(msg("t", m, QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out))
        .collect();
    let queued = |dropped_oldest| Delivered::Queued { dropped_oldest };
    assert_eq!(
        results,
        [queued(0), queued(0), queued(0), queued(1), queued(1)]
    );
    assert_eq!((s.dropped(), s.queued_len()), (2, 3));
    let _ = s.connect(false, &mut out);
    assert_eq!(take(&mut out), ["CONNACK sp=1", "PUBLISH t m3 q2 #1"]);
    let _ = s.on_pubrec(id(1), &mut out);
    let _ = s.on_pubcomp(id(1), &mut out);
    assert_eq!(take(&mut out), ["PUBREL 1", "PUBLISH t m4 q2 #2"]);

    // With no queue, what must wait is dropped.
    let (mut s, _, mut out) = connected(false, limits(1, 0));
    let _ = s.deliver(msg("t", "m1", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    let second = s.deliver(msg("t", "m2", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    assert_eq!((second, s.dropped()), (Delivered::Dropped, 1));
}

/// [MQTT-4.3.2-1]: QoS 1 out: PUBLISH with DUP 0, unacknowledged until its PUBACK.
#[test]
fn qos1_outgoing_flow_mqtt_4_3_2_1() {
    let (mut s, _, mut out) = connected(false, Limits::default());
    let _ = s.deliver(msg("t", "m", QoS::AtLeastOnce), QoS::ExactlyOnce, &mut out);
    assert_eq!(take(&mut out), ["PUBLISH t m q1 #1"]);
    assert!(!s.on_pubcomp(id(1), &mut out), "not a QoS 2 message");
    assert!(!s.on_pubrec(id(1), &mut out), "not a QoS 2 message");
    assert!(out.is_empty());
    assert!(s.on_puback(id(1), &mut out));
    assert!(!s.on_puback(id(1), &mut out), "already acknowledged");
    assert_eq!(s.inflight_len(), 0);
}

/// [MQTT-4.3.3-1]: QoS 2 out: PUBLISH, PUBREC, PUBREL, PUBCOMP; PUBREL again for a PUBREC
/// again; the PUBLISH is not kept once PUBREL is sent. A PUBREC for an unknown identifier is
/// answered PUBREL (our choice).
#[test]
fn qos2_outgoing_flow_mqtt_4_3_3_1() {
    let (mut s, _, mut out) = connected(false, Limits::default());
    let _ = s.deliver(msg("t", "m", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
    assert_eq!(take(&mut out), ["PUBLISH t m q2 #1"]);
    assert!(!s.on_puback(id(1), &mut out), "not a QoS 1 message");
    assert!(!s.on_pubcomp(id(1), &mut out), "PUBREL not sent yet");
    assert!(s.on_pubrec(id(1), &mut out));
    assert_eq!(take(&mut out), ["PUBREL 1"]);
    let stages: Vec<_> = s
        .state()
        .delivery
        .inflight()
        .map(|f| f.stage().clone())
        .collect();
    assert_eq!(stages, [Stage::Released]);
    assert!(s.on_pubrec(id(1), &mut out));
    assert_eq!(take(&mut out), ["PUBREL 1"]);
    assert!(s.on_pubcomp(id(1), &mut out));
    assert!(!s.on_pubcomp(id(1), &mut out));
    assert_eq!(s.inflight_len(), 0);
    assert!(!s.on_pubrec(id(9), &mut out));
    assert_eq!(take(&mut out), ["PUBREL 9"]);
}

/// [MQTT-4.4.0-1], [MQTT-4.6.0-1], [MQTT-3.3.1-1]: on reconnect, unacknowledged PUBLISHes
/// again with DUP 1 and their identifiers, PUBRELs again for those in the PUBREL stage, all in
/// the order first sent; then the queue.
#[test]
fn redelivery_on_reconnect_in_original_order_mqtt_4_4_0_1() {
    let (mut s, c, mut out) = connected(false, Limits::default());
    let _ = s.deliver(msg("t", "m1", QoS::AtLeastOnce), QoS::ExactlyOnce, &mut out);
    let _ = s.deliver(msg("t", "m2", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
    let _ = s.deliver(msg("t", "m3", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
    let _ = s.deliver(msg("t", "m4", QoS::AtLeastOnce), QoS::ExactlyOnce, &mut out);
    assert!(s.on_pubrec(id(2), &mut out));
    assert!(s.on_puback(id(4), &mut out));
    out.clear();
    let c = match s.disconnected(c, t0(), &mut out) {
        AfterDisconnect::Keep => s.connect(false, &mut out),
        other => panic!("{other:?}"),
    };
    let resent = [
        "PUBLISH t m1 q1 #1 dup",
        "PUBREL 2",
        "PUBLISH t m3 q2 #3 dup",
    ];
    let mut expected = vec!["CONNACK sp=1"];
    expected.extend(resent);
    assert_eq!(take(&mut out), expected);

    // Away again, with a message queued meanwhile: it follows the resent ones.
    let _ = s.disconnected(c, t0(), &mut out);
    let _ = s.deliver(msg("t", "m5", QoS::AtLeastOnce), QoS::ExactlyOnce, &mut out);
    let _ = s.connect(false, &mut out);
    expected.push("PUBLISH t m5 q1 #5");
    assert_eq!(take(&mut out), expected);
}

// Incoming messages from the client.

/// [MQTT-4.3.2-2]: QoS 1 in: published, then PUBACK; the same identifier again is a new
/// message. QoS 0 in: published, no answer. [MQTT-3.3.1-3]: DUP is not propagated; RETAIN
/// is, for the retained store.
#[test]
fn incoming_qos0_and_qos1_mqtt_4_3_2_2() {
    let (mut s, _, mut out) = connected(false, Limits::default());
    s.on_publish(incoming(QoS::AtLeastOnce, 3, false, true), &mut out);
    s.on_publish(incoming(QoS::AtLeastOnce, 3, true, false), &mut out);
    s.on_publish(
        msg("in/x", "m", QoS::AtMostOnce).to_publish_qos0(),
        &mut out,
    );
    assert_eq!(
        take(&mut out),
        [
            "publish in/x m q1 retain",
            "PUBACK 3",
            "publish in/x m q1",
            "PUBACK 3",
            "publish in/x m q0"
        ]
    );
}

/// [MQTT-4.3.3-2]: QoS 2 in ("method B"): published on the PUBLISH, answered PUBREC; the same
/// identifier before PUBREL is answered PUBREC and not published again; PUBREL is answered
/// PUBCOMP (for unknown identifiers too), after which the identifier is new again.
#[test]
fn incoming_qos2_is_published_once_mqtt_4_3_3_2() {
    let (mut s, _, mut out) = connected(false, Limits::default());
    s.on_publish(incoming(QoS::ExactlyOnce, 7, false, false), &mut out);
    assert_eq!(take(&mut out), ["publish in/x m q2", "PUBREC 7"]);
    s.on_publish(incoming(QoS::ExactlyOnce, 7, true, false), &mut out);
    assert_eq!(take(&mut out), ["PUBREC 7"]);
    s.on_pubrel(id(7), &mut out);
    assert_eq!(take(&mut out), ["PUBCOMP 7"]);
    s.on_publish(incoming(QoS::ExactlyOnce, 7, false, false), &mut out);
    assert_eq!(take(&mut out), ["publish in/x m q2", "PUBREC 7"]);
    s.on_pubrel(id(99), &mut out);
    assert_eq!(take(&mut out), ["PUBCOMP 99"]);
}

/// [MQTT-4.3.3-2] across a restart: the identifiers awaiting PUBREL are part of the stored
/// state, so a PUBLISH sent again after the broker restarted is not published twice.
#[test]
fn incoming_qos2_dedupe_survives_a_restart() {
    let (mut s, c, mut out) = connected(false, Limits::default());
    s.on_publish(incoming(QoS::ExactlyOnce, 7, false, false), &mut out);
    let _ = s.disconnected(c, t0(), &mut out);
    let stored = postcard::to_stdvec(s.state()).unwrap();
    let mut s = Session::restore(postcard::from_bytes(&stored).unwrap(), Limits::default());
    out.clear();
    let _ = s.connect(false, &mut out);
    s.on_publish(incoming(QoS::ExactlyOnce, 7, true, false), &mut out);
    s.on_pubrel(id(7), &mut out);
    assert_eq!(take(&mut out), ["CONNACK sp=1", "PUBREC 7", "PUBCOMP 7"]);
}

/// [MQTT-4.6.0-2], [MQTT-4.6.0-3]: PUBACKs and PUBRECs in the order of the PUBLISHes.
#[test]
fn acknowledgements_in_order_mqtt_4_6_0_2_and_3() {
    let (mut s, _, mut out) = connected(false, Limits::default());
    s.on_publish(incoming(QoS::AtLeastOnce, 1, false, false), &mut out);
    s.on_publish(incoming(QoS::ExactlyOnce, 2, false, false), &mut out);
    s.on_publish(incoming(QoS::AtLeastOnce, 3, false, false), &mut out);
    let acks: Vec<_> = take(&mut out)
        .into_iter()
        .filter(|o| o.starts_with("PUB"))
        .collect();
    assert_eq!(acks, ["PUBACK 1", "PUBREC 2", "PUBACK 3"]);
}

// With the subscription index.

/// The session's outputs keep the index in step, and a message matching overlapping
/// subscriptions comes once, at their maximum QoS [MQTT-3.3.5-1].
#[test]
fn overlapping_subscriptions_deliver_once_at_max_qos_mqtt_3_3_5_1() {
    let mut index = Subscriptions::new();
    let apply = |index: &mut Subscriptions<&str>, out: &mut Vec<Output>| {
        for o in out.drain(..) {
            match o {
                Output::Subscribe { filter, qos } => _ = index.subscribe(&filter, "c1", qos),
                Output::Unsubscribe(filter) => _ = index.unsubscribe(&filter, &"c1"),
                _ => {}
            }
        }
    };
    let (mut s, c, mut out) = connected(true, Limits::default());
    let filters = [
        ("a/#", QoS::AtMostOnce),
        ("a/b", QoS::ExactlyOnce),
        ("+/b", QoS::AtLeastOnce),
    ];
    s.on_subscribe(&subscribe(1, &filters), &mut out);
    apply(&mut index, &mut out);
    assert_eq!(index.len(), 3);

    let mut matches = Matches::new();
    for (published, expected) in [(QoS::ExactlyOnce, "q2 #1"), (QoS::AtLeastOnce, "q1 #2")] {
        let m = msg("a/b", "m", published);
        index.matches(&m.topic, &mut matches);
        for (_, granted) in &matches {
            let _ = s.deliver(m.clone(), granted, &mut out);
        }
        assert_eq!(take(&mut out), [format!("PUBLISH a/b m {expected}")]);
    }

    s.on_unsubscribe(&unsubscribe(2, &["a/b"]), &mut out);
    apply(&mut index, &mut out);
    assert_eq!(index.len(), 2);
    let _ = s.disconnected(c, t0(), &mut out);
    apply(&mut index, &mut out);
    assert!(
        index.is_empty(),
        "a clean session leaves the index with its connection"
    );
}

// Persistence.

/// A session with something of everything: subscriptions, messages in flight in both stages,
/// a queue, an incoming QoS 2 identifier; its client away since `t0`.
fn busy_session() -> Session {
    let (mut s, c, mut out) = connected(false, limits(3, 10));
    s.on_subscribe(
        &subscribe(1, &[("a/#", QoS::ExactlyOnce), ("b", QoS::AtLeastOnce)]),
        &mut out,
    );
    for (m, q) in [
        ("m1", QoS::AtLeastOnce),
        ("m2", QoS::ExactlyOnce),
        ("m3", QoS::ExactlyOnce),
    ] {
        let _ = s.deliver(msg("a/1", m, q), QoS::ExactlyOnce, &mut out);
    }
    let _ = s.on_pubrec(id(2), &mut out);
    let _ = s.deliver_retained(
        msg("a/2", "m4", QoS::AtLeastOnce),
        QoS::ExactlyOnce,
        &mut out,
    );
    s.on_publish(incoming(QoS::ExactlyOnce, 40, false, false), &mut out);
    let _ = s.disconnected(c, t0(), &mut out);
    let _ = s.deliver(
        msg("a/3", "m5", QoS::ExactlyOnce),
        QoS::AtLeastOnce,
        &mut out,
    );
    s
}

/// The state round-trips through postcard (hermes-store's `Codec`), and the restored session
/// resumes as the original would.
#[test]
fn state_round_trips_and_resumes() {
    let mut original = busy_session();
    let bytes = postcard::to_stdvec(original.state()).unwrap();
    let state: SessionState = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(&state, original.state());
    let mut restored = Session::restore(state, original.limits());
    assert_eq!(restored.offline_since(), Some(t0()));

    let (mut a, mut b) = (Vec::new(), Vec::new());
    let _ = original.connect(false, &mut a);
    let _ = restored.connect(false, &mut b);
    assert_eq!(a, b);
    b.clear();
    assert_eq!(
        take(&mut a),
        [
            "CONNACK sp=1",
            "PUBLISH a/1 m1 q1 #1 dup",
            "PUBREL 2",
            "PUBLISH a/1 m3 q2 #3 dup",
        ]
    );
    let _ = restored.on_puback(id(1), &mut b);
    assert_eq!(take(&mut b), ["PUBLISH a/2 m4 q1 retain #4"]);
    let _ = restored.on_pubcomp(id(2), &mut b);
    assert_eq!(take(&mut b), ["PUBLISH a/3 m5 q1 #5"]);
}

/// A store kept part by part, as the Hermes layer would: subscriptions, delivery, and each
/// queued message under its sequence number.
#[derive(Default)]
struct PartStore {
    subscriptions: Vec<u8>,
    delivery: Vec<u8>,
    queue: BTreeMap<u64, Vec<u8>>,
}

impl PartStore {
    fn apply(&mut self, session: &mut Session) {
        let changes = session.take_changes();
        let state = session.state();
        if changes.subscriptions {
            self.subscriptions = postcard::to_stdvec(&state.subscriptions).unwrap();
        }
        if changes.delivery {
            self.delivery = postcard::to_stdvec(&state.delivery).unwrap();
        }
        for seq in changes.queue_removed {
            assert!(
                self.queue.remove(&seq).is_some(),
                "deleting {seq}, never stored"
            );
        }
        for seq in changes.queue_added {
            let message = state.queue.get(seq).unwrap();
            assert!(
                self.queue
                    .insert(seq, postcard::to_stdvec(message).unwrap())
                    .is_none()
            );
        }
    }

    fn load(&self) -> SessionState {
        let first = self.queue.keys().next().copied();
        let messages: Vec<Message> = self
            .queue
            .values()
            .map(|m| postcard::from_bytes(m).unwrap())
            .collect();
        SessionState {
            subscriptions: postcard::from_bytes(&self.subscriptions).unwrap(),
            delivery: postcard::from_bytes(&self.delivery).unwrap(),
            queue: QueueState::from_parts(first.unwrap_or(0), messages),
        }
    }
}

/// [`Session::take_changes`] says exactly what to store: a store that applies only the
/// changes holds the session's state after each step.
#[test]
fn changes_keep_a_part_store_in_step() {
    let mut s = Session::new(limits(2, 3));
    let mut out = Vec::new();
    let mut store = PartStore::default();
    let check = |s: &mut Session, store: &mut PartStore| {
        store.apply(s);
        let loaded = store.load();
        assert_eq!(loaded.subscriptions, s.state().subscriptions);
        assert_eq!(loaded.delivery, s.state().delivery);
        // An empty queue's first number is not stored; the messages are.
        assert_eq!(
            loaded.queue.iter().collect::<Vec<_>>(),
            s.state().queue.iter().collect::<Vec<_>>()
        );
        if !s.state().queue.is_empty() {
            assert_eq!(loaded.queue.seqs(), s.state().queue.seqs());
        }
    };
    let c = s.connect(false, &mut out);
    check(&mut s, &mut store);
    s.on_subscribe(&subscribe(1, &[("t", QoS::ExactlyOnce)]), &mut out);
    assert_eq!(
        s.take_changes(),
        Changes {
            subscriptions: true,
            ..Changes::default()
        }
    );
    store.subscriptions = postcard::to_stdvec(&s.state().subscriptions).unwrap();
    for n in 0..6 {
        let _ = s.deliver(msg("t", "m", QoS::ExactlyOnce), QoS::ExactlyOnce, &mut out);
        check(&mut s, &mut store);
        let _ = n;
    }
    assert_eq!((s.inflight_len(), s.queued_len(), s.dropped()), (2, 3, 1));
    let _ = s.on_pubrec(id(1), &mut out);
    let changes = s.take_changes();
    assert!(changes.delivery && changes.queue_added.is_empty() && changes.queue_removed.is_empty());
    store.delivery = postcard::to_stdvec(&s.state().delivery).unwrap();
    let _ = s.on_pubcomp(id(1), &mut out);
    check(&mut s, &mut store);
    let _ = s.disconnected(c, t0(), &mut out);
    check(&mut s, &mut store);
    for _ in 0..4 {
        let _ = s.deliver(msg("t", "m", QoS::AtLeastOnce), QoS::ExactlyOnce, &mut out);
    }
    check(&mut s, &mut store);
    let _ = s.connect(true, &mut out);
    check(&mut s, &mut store);
    assert!(s.take_changes().is_empty());
}

#[test]
fn expiry_counts_from_when_the_client_went_away() {
    let (mut s, c, mut out) = connected(false, Limits::default());
    assert_eq!(s.expires_at(Duration::from_secs(1)), None);
    let _ = s.disconnected(c, t0(), &mut out);
    assert_eq!(s.offline_since(), Some(t0()));
    let two_hours = Duration::from_secs(7200);
    assert_eq!(s.expires_at(two_hours), Some(t0() + two_hours));
    let c = s.connect(false, &mut out);
    assert_eq!(s.offline_since(), None);
    assert_eq!(s.expires_at(two_hours), None);

    s.on_subscribe(&subscribe(1, &[("a", QoS::AtLeastOnce)]), &mut out);
    let _ = s.disconnected(c, t0(), &mut out);
    let _ = s.deliver(msg("a", "m", QoS::AtLeastOnce), QoS::AtLeastOnce, &mut out);
    out.clear();
    s.expire(&mut out);
    assert_eq!(take(&mut out), ["unsubscribe a"]);
    assert!(s.subscriptions().is_empty() && s.queued_len() == 0);
    let _ = s.connect(false, &mut out);
    assert_eq!(take(&mut out), ["CONNACK sp=0"], "nothing left of it");
}

/// A small deterministic generator (no dependency for it).
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        (self.0 >> 33) as usize % n
    }
}

/// Random deliveries, acknowledgements and reconnections, checking after each step: the
/// window and queue bounds, identifiers unique in flight [MQTT-2.3.1-4], every QoS 1 and 2
/// message accounted for (completed, in flight, queued or dropped), first sends in delivery
/// order [MQTT-4.6.0-6], and resends only of what is in flight, with DUP 1.
#[test]
fn random_flows_keep_the_invariants() {
    let all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for seed in 0..20 {
        let mut rng = Lcg(seed);
        let l = limits(1 + rng.below(4) as u16, rng.below(6));
        let mut s = Session::new(l);
        let mut out = Vec::new();
        let mut c = s.connect(false, &mut out);
        let (mut delivered, mut completed, mut last_first_send) = (0u64, 0u64, None);
        let payloads: Vec<String> = (0..400).map(|n| n.to_string()).collect();
        for (n, payload) in payloads.iter().enumerate() {
            match rng.below(10) {
                0..=4 => {
                    let (published, granted) = (all[rng.below(3)], all[rng.below(3)]);
                    let m = Message {
                        payload: Bytes::copy_from_slice(payload.as_bytes()),
                        ..msg("t", "", published)
                    };
                    let delivery = s.deliver(m, granted, &mut out);
                    if published.min(granted) != QoS::AtMostOnce {
                        delivered += 1;
                        assert_ne!(delivery, Delivered::Discarded);
                    }
                }
                5..=7 if s.is_connected() && s.inflight_len() > 0 => {
                    let inflight: Vec<_> = s.state().delivery.inflight().cloned().collect();
                    let f = &inflight[rng.below(inflight.len())];
                    let id = f.packet_id();
                    match f.stage() {
                        Stage::Unacknowledged(m) if m.qos == QoS::AtLeastOnce => {
                            assert!(s.on_puback(id, &mut out));
                            completed += 1;
                        }
                        Stage::Unacknowledged(_) => assert!(s.on_pubrec(id, &mut out)),
                        Stage::Released => {
                            assert!(s.on_pubcomp(id, &mut out));
                            completed += 1;
                        }
                    }
                }
                8 if s.is_connected() => {
                    let _ = s.disconnected(c, t0(), &mut out);
                }
                _ if !s.is_connected() => c = s.connect(false, &mut out),
                _ => {}
            }
            // The bounds, and identifiers unique in flight.
            assert!(s.inflight_len() <= usize::from(l.max_inflight.get()));
            assert!(s.queued_len() <= l.max_queued);
            let ids: BTreeSet<_> = s
                .state()
                .delivery
                .inflight()
                .map(|f| f.packet_id())
                .collect();
            assert_eq!(ids.len(), s.inflight_len(), "seed {seed} step {n}");
            // Every QoS 1 and 2 message accounted for.
            let held = (s.inflight_len() + s.queued_len()) as u64;
            assert_eq!(
                delivered,
                completed + held + s.dropped(),
                "seed {seed} step {n}"
            );
            // First sends in order; resends only of what is in flight.
            for o in out.drain(..) {
                let Output::Send(Packet::Publish(p)) = o else {
                    continue;
                };
                let number: u64 = std::str::from_utf8(&p.payload).unwrap().parse().unwrap();
                match p.qos.packet_id() {
                    None => {}
                    Some(id) if p.qos.dup() => assert!(ids.contains(&id)),
                    Some(_) => {
                        assert!(last_first_send < Some(number), "seed {seed} step {n}");
                        last_first_send = Some(number);
                    }
                }
            }
        }
        assert!(completed > 20, "seed {seed}: the flows went somewhere");
    }
}
