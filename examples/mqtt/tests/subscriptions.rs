//! The subscription index, against the rules and against `topic::matches` on random filters.

use std::collections::HashMap;

use hermes_mqtt::subscriptions::Matches;
use hermes_mqtt::topic::matches;
use hermes_mqtt::{QoS, Subscriptions, TopicFilter, TopicName};

fn f(s: &str) -> TopicFilter {
    s.parse().unwrap()
}

fn t(s: &str) -> TopicName {
    s.parse().unwrap()
}

/// The matches for `topic`, sorted.
fn found<S: Clone + Eq + std::hash::Hash + Ord>(
    index: &Subscriptions<S>,
    topic: &str,
) -> Vec<(S, QoS)> {
    let mut out = Matches::new();
    index.matches(&t(topic), &mut out);
    let mut v = out.as_slice().to_vec();
    v.sort();
    v
}

#[test]
fn overlapping_subscriptions_come_once_at_the_maximum_qos() {
    let mut index = Subscriptions::new();
    index.subscribe(&f("a/b"), 1, QoS::AtMostOnce);
    index.subscribe(&f("a/+"), 1, QoS::ExactlyOnce);
    index.subscribe(&f("a/#"), 1, QoS::AtLeastOnce);
    index.subscribe(&f("#"), 1, QoS::AtMostOnce);
    index.subscribe(&f("a/#"), 2, QoS::AtLeastOnce);
    index.subscribe(&f("+/b"), 2, QoS::AtMostOnce);
    index.subscribe(&f("x"), 3, QoS::ExactlyOnce);
    assert_eq!(index.len(), 7);
    // [MQTT-3.3.5-1]
    assert_eq!(
        found(&index, "a/b"),
        [(1, QoS::ExactlyOnce), (2, QoS::AtLeastOnce)]
    );
    assert_eq!(
        found(&index, "a"),
        [(1, QoS::AtLeastOnce), (2, QoS::AtLeastOnce)]
    );
    assert_eq!(
        found(&index, "x"),
        [(1, QoS::AtMostOnce), (3, QoS::ExactlyOnce)]
    );
    assert_eq!(
        found(&index, "y/b"),
        [(1, QoS::AtMostOnce), (2, QoS::AtMostOnce)]
    );
}

#[test]
fn dollar_topics_and_leading_wildcards() {
    let mut index = Subscriptions::new();
    index.subscribe(&f("#"), "hash", QoS::AtMostOnce);
    index.subscribe(&f("+/monitor/Clients"), "plus", QoS::AtMostOnce);
    index.subscribe(&f("+"), "plus1", QoS::AtMostOnce);
    index.subscribe(&f("$SYS/#"), "sys", QoS::AtMostOnce);
    index.subscribe(&f("$SYS/monitor/+"), "sys-plus", QoS::AtMostOnce);
    // [MQTT-4.7.2-1]
    let sys = found(&index, "$SYS/monitor/Clients");
    assert_eq!(
        sys,
        [("sys", QoS::AtMostOnce), ("sys-plus", QoS::AtMostOnce)]
    );
    assert_eq!(found(&index, "$SYS"), [("sys", QoS::AtMostOnce)]);
    let plain = found(&index, "x/monitor/Clients");
    assert_eq!(
        plain,
        [("hash", QoS::AtMostOnce), ("plus", QoS::AtMostOnce)]
    );
    assert_eq!(
        found(&index, "x"),
        [("hash", QoS::AtMostOnce), ("plus1", QoS::AtMostOnce)]
    );
}

#[test]
fn subscribe_replaces_and_unsubscribe_removes() {
    let mut index = Subscriptions::new();
    assert!(!index.subscribe(&f("a/+"), 'a', QoS::AtMostOnce));
    // The same filter again replaces the subscription, with the new QoS [MQTT-3.8.4-3].
    assert!(index.subscribe(&f("a/+"), 'a', QoS::ExactlyOnce));
    assert_eq!(index.len(), 1);
    assert_eq!(found(&index, "a/b"), [('a', QoS::ExactlyOnce)]);
    assert!(
        !index.unsubscribe(&f("a/b"), &'a'),
        "a topic it matches is not the filter"
    );
    assert!(!index.unsubscribe(&f("a/+"), &'b'));
    assert!(!index.unsubscribe(&f("a/+/c"), &'a'));
    assert!(index.unsubscribe(&f("a/+"), &'a'));
    assert!(!index.unsubscribe(&f("a/+"), &'a'));
    assert!(index.is_empty());
    assert!(found(&index, "a/b").is_empty());
}

#[test]
fn remove_subscriber_with_its_filters() {
    let mut index = Subscriptions::new();
    let filters = [f("a"), f("a/#"), f("+/b"), f("#")];
    for filter in &filters {
        index.subscribe(filter, 1, QoS::AtLeastOnce);
        index.subscribe(filter, 2, QoS::AtMostOnce);
    }
    assert_eq!(index.remove_subscriber(&1, &filters), 4);
    assert_eq!(index.remove_subscriber(&1, &filters), 0);
    assert_eq!(index.len(), 4);
    assert_eq!(found(&index, "a/b"), [(2, QoS::AtMostOnce)]);
    assert_eq!(index.remove_subscriber(&2, filters.iter().take(3)), 3);
    assert_eq!(found(&index, "a/b"), [(2, QoS::AtMostOnce)]);
}

#[test]
fn pruned_nodes_are_reused() {
    let mut index = Subscriptions::new();
    for round in 0..100 {
        let filter = f(&format!("r{round}/+/x/#"));
        index.subscribe(&filter, round, QoS::AtMostOnce);
        assert_eq!(
            found(&index, &format!("r{round}/y/x")),
            [(round, QoS::AtMostOnce)]
        );
        assert!(index.unsubscribe(&filter, &round));
    }
    assert!(index.is_empty());
    // A node still in use is not pruned with its unused child.
    index.subscribe(&f("a/b"), 1, QoS::AtMostOnce);
    index.subscribe(&f("a/b/c"), 2, QoS::AtMostOnce);
    index.unsubscribe(&f("a/b/c"), &2);
    assert_eq!(found(&index, "a/b"), [(1, QoS::AtMostOnce)]);
}

#[test]
fn deep_topics_do_not_recurse() {
    let mut index = Subscriptions::new();
    let deep = vec!["+"; 30_000].join("/");
    index.subscribe(&f(&deep), 1, QoS::AtMostOnce);
    index.subscribe(&f(&format!("{deep}/#")), 2, QoS::AtMostOnce);
    let topic = vec!["a"; 30_000].join("/");
    assert_eq!(
        found(&index, &topic),
        [(1, QoS::AtMostOnce), (2, QoS::AtMostOnce)]
    );
    assert!(index.unsubscribe(&f(&deep), &1));
    drop(index);
}

#[test]
fn fan_out_to_a_thousand_subscribers() {
    let mut index = Subscriptions::new();
    for s in 0..1000 {
        index.subscribe(&f("sensors/+/temperature"), s, QoS::AtLeastOnce);
    }
    let mut out = Matches::new();
    index.matches(&t("sensors/1/temperature"), &mut out);
    assert_eq!(out.len(), 1000);
    let mut subscribers: Vec<_> = out.iter().map(|(s, _)| *s).collect();
    subscribers.sort_unstable();
    assert_eq!(subscribers, (0..1000).collect::<Vec<_>>());
}

/// splitmix64.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A random path of up to four levels from a small alphabet, so that filters and topics meet.
fn path(state: &mut u64, wildcards: bool) -> String {
    let levels = 1 + next(state) % 4;
    let mut parts = Vec::new();
    for i in 0..levels {
        let choices: &[&str] = if wildcards {
            &["a", "b", "", "$s", "+", "#"]
        } else {
            &["a", "b", "", "$s"]
        };
        let mut part = choices[(next(state) % choices.len() as u64) as usize];
        if part == "#" && i + 1 < levels {
            part = "+";
        }
        parts.push(part);
    }
    let path = parts.join("/");
    if path.is_empty() {
        "/".to_owned()
    } else {
        path
    }
}

/// The index agrees with `topic::matches` over every subscription, with max-QoS dedup, while
/// subscriptions come and go.
#[test]
fn agrees_with_matching_each_filter() {
    let mut state = 7;
    let mut index = Subscriptions::new();
    let mut model: HashMap<(TopicFilter, u8), QoS> = HashMap::new();
    let mut out = Matches::new();
    for step in 0..5_000 {
        let filter = f(&path(&mut state, true));
        let subscriber = (next(&mut state) % 6) as u8;
        if next(&mut state).is_multiple_of(3) {
            let existed = model.remove(&(filter.clone(), subscriber)).is_some();
            assert_eq!(index.unsubscribe(&filter, &subscriber), existed);
        } else {
            let qos = QoS::from_u8((next(&mut state) % 3) as u8).unwrap();
            let replaced = model.insert((filter.clone(), subscriber), qos).is_some();
            assert_eq!(index.subscribe(&filter, subscriber, qos), replaced);
        }
        assert_eq!(index.len(), model.len());
        let topic = t(&path(&mut state, false));
        let mut expected: HashMap<u8, QoS> = HashMap::new();
        for ((filter, subscriber), &qos) in &model {
            if matches(filter, &topic) {
                let entry = expected.entry(*subscriber).or_insert(qos);
                *entry = (*entry).max(qos);
            }
        }
        let mut expected: Vec<_> = expected.into_iter().collect();
        expected.sort();
        index.matches(&topic, &mut out);
        let mut got = out.as_slice().to_vec();
        got.sort();
        assert_eq!(got, expected, "step {step}, topic {topic}");
    }
}
