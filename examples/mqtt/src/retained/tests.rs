//! The retained store against the rules of [3.3.1.3], and its matching against
//! `topic::matches` on every pair of a set of topics and filters.

use bytes::Bytes;

use super::*;
use crate::packet::{Packet, PacketId, QoS, Subscribe};
use crate::session::{Limits, Output, Session};
use crate::topic::matches;

fn retained(topic: &str, payload: &'static str, qos: QoS) -> Message {
    Message {
        topic: topic.parse().unwrap(),
        payload: Bytes::from_static(payload.as_bytes()),
        qos,
        retain: true,
    }
}

fn topics(store: &RetainedStore, filter: &str) -> Vec<String> {
    let filter: TopicFilter = filter.parse().unwrap();
    let mut found: Vec<String> = store
        .matching(&filter)
        .map(|m| m.topic.to_string())
        .collect();
    found.sort();
    found
}

/// [MQTT-3.3.1-5]: a retained PUBLISH is stored with its QoS, and replaces the topic's
/// previous one; [MQTT-3.3.1-12]: RETAIN 0 neither stores nor removes nor replaces.
#[test]
fn set_and_replace_mqtt_3_3_1_5_and_12() {
    let mut store = RetainedStore::new();
    let first = retained("a/b", "one", QoS::AtLeastOnce);
    assert_eq!(
        store.on_publish(&first),
        RetainChange::Stored { replaced: false }
    );
    let second = retained("a/b", "two", QoS::ExactlyOnce);
    assert_eq!(
        store.on_publish(&second),
        RetainChange::Stored { replaced: true }
    );
    let topic = TopicName::from_static("a/b");
    assert_eq!(store.get(&topic), Some(&second));
    for payload in ["three", ""] {
        let mut plain = retained("a/b", payload, QoS::AtMostOnce);
        plain.retain = false;
        assert_eq!(store.on_publish(&plain), RetainChange::NotRetained);
    }
    assert_eq!(store.get(&topic), Some(&second));
    assert_eq!((store.len(), store.payload_bytes()), (1, 3));
}

/// [MQTT-3.3.1-7]: a retained QoS 0 message replaces the previous one, and is kept.
#[test]
fn qos0_retained_is_kept_mqtt_3_3_1_7() {
    let mut store = RetainedStore::new();
    let _ = store.on_publish(&retained("a", "1", QoS::ExactlyOnce));
    let _ = store.on_publish(&retained("a", "0", QoS::AtMostOnce));
    let kept = store.get(&TopicName::from_static("a")).unwrap();
    assert_eq!((kept.qos, &kept.payload[..]), (QoS::AtMostOnce, &b"0"[..]));
}

/// [MQTT-3.3.1-10], [MQTT-3.3.1-11]: an empty retained payload removes the topic's retained
/// message, and is not stored itself.
#[test]
fn empty_payload_clears_mqtt_3_3_1_10_and_11() {
    let mut store = RetainedStore::new();
    let _ = store.on_publish(&retained("a/b", "x", QoS::AtLeastOnce));
    let _ = store.on_publish(&retained("a/b/c", "y", QoS::AtLeastOnce));
    let clear = retained("a/b", "", QoS::AtLeastOnce);
    assert_eq!(
        store.on_publish(&clear),
        RetainChange::Cleared { removed: true }
    );
    assert_eq!(
        store.on_publish(&clear),
        RetainChange::Cleared { removed: false }
    );
    assert_eq!(topics(&store, "#"), ["a/b/c"]);
    let nothing = retained("x", "", QoS::AtLeastOnce);
    assert_eq!(
        store.on_publish(&nothing),
        RetainChange::Cleared { removed: false }
    );
    assert_eq!((store.len(), store.payload_bytes()), (1, 1));
}

/// Matching by the rules of [4.7], on named cases: '#' takes its parent level [4.7.1.2], '+'
/// one level, empty ones included [4.7.1.3], and wildcards at the start do not reach '$'
/// topics [MQTT-4.7.2-1].
#[test]
fn matching_examples_of_4_7() {
    let mut store = RetainedStore::new();
    for topic in [
        "sport",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/tennis/player1/ranking",
        "/finance",
        "a//b",
        "$SYS/uptime",
        "$SYS/broker/clients",
    ] {
        let _ = store.on_publish(&retained(topic, "p", QoS::AtMostOnce));
    }
    assert_eq!(
        topics(&store, "sport/tennis/player1/#"),
        ["sport/tennis/player1", "sport/tennis/player1/ranking"]
    );
    assert_eq!(topics(&store, "sport/#").len(), 4);
    assert_eq!(topics(&store, "sport/+"), ["sport/tennis"]);
    assert_eq!(topics(&store, "+"), ["sport"]);
    assert_eq!(topics(&store, "+/+"), ["/finance", "sport/tennis"]);
    assert_eq!(topics(&store, "/+"), ["/finance"]);
    assert_eq!(topics(&store, "a/+/b"), ["a//b"]);
    assert_eq!(topics(&store, "#").len(), 6, "no $SYS topics");
    assert_eq!(topics(&store, "+/uptime"), Vec::<String>::new());
    assert_eq!(
        topics(&store, "$SYS/#"),
        ["$SYS/broker/clients", "$SYS/uptime"]
    );
    assert_eq!(topics(&store, "$SYS/+"), ["$SYS/uptime"]);
    assert_eq!(topics(&store, "sport/tennis"), ["sport/tennis"]);
    assert_eq!(topics(&store, "sport/tennis/player2"), Vec::<String>::new());
}

/// A small deterministic generator (no dependency for it).
struct Lcg(u64);

impl Lcg {
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        let i = (self.0 >> 33) as usize % items.len();
        items[i]
    }

    fn join(&mut self, items: &[&str], last: &[&str]) -> String {
        let n = 1 + self.pick(&["0", "1", "2", "3"]).parse::<usize>().unwrap();
        let mut levels: Vec<&str> = (1..n).map(|_| self.pick(items)).collect();
        levels.push(self.pick(last));
        levels.join("/")
    }
}

/// `matching` finds exactly the stored topics that `topic::matches` says the filter matches,
/// on random topics and filters, '$' ones included.
#[test]
fn matching_agrees_with_topic_matches() {
    let mut rng = Lcg(7);
    let names = ["a", "b", "", "$SYS", "$x"];
    let mut store = RetainedStore::new();
    for _ in 0..200 {
        let topic = rng.join(&names, &names);
        if topic.is_empty() {
            continue; // not a topic [MQTT-4.7.3-1]
        }
        let _ = store.on_publish(&retained(&topic, "p", QoS::AtLeastOnce));
    }
    let (mut hits, mut system_hits) = (0, 0);
    for _ in 0..500 {
        let filter = rng.join(&["a", "b", "", "$SYS", "+"], &["a", "", "+", "#"]);
        let Ok(filter) = filter.parse::<TopicFilter>() else {
            continue; // empty
        };
        let mut expected: Vec<String> = store
            .iter()
            .filter(|m| matches(&filter, &m.topic))
            .map(|m| m.topic.to_string())
            .collect();
        expected.sort();
        assert_eq!(topics(&store, filter.as_str()), expected, "{filter}");
        hits += expected.len();
        system_hits += expected.iter().filter(|t| t.starts_with('$')).count();
    }
    // The cases are not trivial: many matches, '$' topics among them.
    assert!(
        store.len() > 50 && hits > 1000 && system_hits > 50,
        "{hits} {system_hits}"
    );
}

/// Removing prunes the trie: storing and clearing again and again does not grow it.
#[test]
fn clearing_frees_nodes_for_reuse() {
    let mut store = RetainedStore::new();
    for i in 0..3 {
        let topic = format!("a/b/c/{i}");
        let _ = store.on_publish(&retained(&topic, "x", QoS::AtLeastOnce));
        let _ = store.on_publish(&retained(&topic, "", QoS::AtLeastOnce));
    }
    assert!(store.is_empty());
    assert_eq!(
        store.nodes.len(),
        5,
        "the root and the four levels of one topic"
    );
    assert_eq!(store.free.len(), 4);
    assert!(store.nodes.iter().all(|n| n.children.is_empty()));
}

/// A topic of 32768 levels (the most 65535 bytes hold) is stored, matched, removed and dropped
/// without recursion.
#[test]
fn deepest_topic_does_not_recurse() {
    let topic = vec!["a"; 32_768].join("/");
    let mut store = RetainedStore::new();
    let _ = store.on_publish(&retained(&topic, "deep", QoS::AtLeastOnce));
    assert_eq!(topics(&store, "#").len(), 1);
    assert_eq!(topics(&store, &topic).len(), 1);
    let cleared = store.on_publish(&retained(&topic, "", QoS::AtLeastOnce));
    assert_eq!(cleared, RetainChange::Cleared { removed: true });
    assert_eq!(store.free.len(), 32_768, "every level pruned");
    let stored = store.on_publish(&retained(&topic, "again", QoS::AtLeastOnce));
    assert_eq!(stored, RetainChange::Stored { replaced: false });
    drop(store);
}

/// A stored message has buffers of its own, not the decoded packet's.
#[test]
fn stored_messages_are_compact() {
    let message = crate::message::decoded_like("a/b", "hello");
    let mut store = RetainedStore::new();
    let _ = store.on_publish(&message);
    let stored = store.get(&message.topic).unwrap();
    assert_eq!(stored, &message);
    assert_ne!(stored.payload.as_ptr(), message.payload.as_ptr());
}

/// The store round-trips through postcard (hermes-store's `Codec`).
#[test]
fn serde_round_trip() {
    let mut store = RetainedStore::new();
    for (topic, payload) in [("a", "1"), ("a/b", "22"), ("$SYS/x", "333"), ("/", "4")] {
        let _ = store.on_publish(&retained(topic, payload, QoS::ExactlyOnce));
    }
    let bytes = postcard::to_stdvec(&store).unwrap();
    let loaded: RetainedStore = postcard::from_bytes(&bytes).unwrap();
    assert_eq!((loaded.len(), loaded.payload_bytes()), (4, 7));
    let mut a: Vec<_> = store
        .iter()
        .cloned()
        .map(|m| (m.topic.to_string(), m))
        .collect();
    let mut b: Vec<_> = loaded
        .iter()
        .cloned()
        .map(|m| (m.topic.to_string(), m))
        .collect();
    a.sort_by(|x, y| x.0.cmp(&y.0));
    b.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(a, b);
}

/// End to end with a session: a new subscription gets the matching retained messages with
/// RETAIN 1 [MQTT-3.3.1-6], [MQTT-3.3.1-8]; a message published with RETAIN 1 is stored and
/// forwarded to established subscriptions with RETAIN 0 [MQTT-3.3.1-9].
#[test]
fn with_a_session_mqtt_3_3_1_6_8_and_9() {
    let mut store = RetainedStore::new();
    let _ = store.on_publish(&retained("s/1", "old", QoS::ExactlyOnce));
    let mut session = Session::new(Limits::default());
    let mut out = Vec::new();
    let _ = session.connect(true, &mut out);
    out.clear();
    let subscribe = Subscribe {
        packet_id: PacketId::MIN,
        filters: vec![(TopicFilter::from_static("s/+"), QoS::AtLeastOnce)],
    };
    session.on_subscribe(&subscribe, &mut out);
    let mut granted = Vec::new();
    for output in std::mem::take(&mut out) {
        if let Output::Subscribe { filter, qos } = output {
            granted.extend(store.matching(&filter).map(|m| (m.clone(), qos)));
        }
    }
    for (message, qos) in granted {
        let _ = session.deliver_retained(message, qos, &mut out);
    }
    let new = retained("s/2", "new", QoS::AtLeastOnce);
    assert_eq!(
        store.on_publish(&new),
        RetainChange::Stored { replaced: false }
    );
    let _ = session.deliver(new, QoS::AtLeastOnce, &mut out);
    let sent: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send(Packet::Publish(p)) => Some((p.topic.to_string(), p.qos.qos(), p.retain)),
            _ => None,
        })
        .collect();
    assert_eq!(
        sent,
        [
            ("s/1".to_owned(), QoS::AtLeastOnce, true),
            ("s/2".to_owned(), QoS::AtLeastOnce, false)
        ]
    );
}
