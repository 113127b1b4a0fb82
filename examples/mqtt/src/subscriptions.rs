//! The subscription index: which subscribers a PUBLISH goes to, and at which QoS.
//!
//! A trie over topic levels. A node has a child per literal level, one for '+', and two
//! subscriber sets: those whose filter ends at the node, and those whose filter ends with '#'
//! below it. Nodes live in an arena and refer to each other by index, so that neither matching,
//! nor unsubscribing, nor dropping the index recurses, however deep a filter goes (a topic can
//! have 32768 levels).
//!
//! Costs, for a filter or topic of `L` levels:
//!
//! - [`subscribe`](Subscriptions::subscribe) and [`unsubscribe`](Subscriptions::unsubscribe):
//!   `O(L)` hash lookups; unsubscribing prunes the nodes it leaves empty.
//! - [`matches`](Subscriptions::matches): `O(V + M)`, with `V` the nodes that the topic reaches
//!   (at most two per level per reached node: the literal child and '+', so `V ≤ L` without
//!   '+') and `M` the matching subscriptions. No allocation once the [`Matches`] buffer has
//!   grown to size. A subscriber with overlapping subscriptions comes out once, at the maximum
//!   of their QoS [MQTT-3.3.5-1]; that takes one hash per match, and only when more than one
//!   node matched.
//!
//! The index does not keep a subscriber's filters: the broker's session keeps them anyway (for
//! its state [3.1.2.4]), and passes them to [`remove_subscriber`](Subscriptions::remove_subscriber).
//!
//! ```
//! use hermes_mqtt::{QoS, Subscriptions, TopicFilter, TopicName};
//! use hermes_mqtt::subscriptions::Matches;
//!
//! let mut index = Subscriptions::new();
//! index.subscribe(&TopicFilter::from_static("sport/#"), "alice", QoS::AtMostOnce);
//! index.subscribe(&TopicFilter::from_static("sport/+/score"), "alice", QoS::ExactlyOnce);
//! index.subscribe(&TopicFilter::from_static("#"), "bob", QoS::AtLeastOnce);
//!
//! let mut matches = Matches::new();
//! index.matches(&TopicName::from_static("sport/tennis/score"), &mut matches);
//! let mut found: Vec<_> = matches.iter().map(|(s, q)| (*s, q)).collect();
//! found.sort();
//! assert_eq!(found, [("alice", QoS::ExactlyOnce), ("bob", QoS::AtLeastOnce)]);
//!
//! index.matches(&TopicName::from_static("$SYS/uptime"), &mut matches);
//! assert!(matches.is_empty());
//! ```

use std::hash::{BuildHasher, Hash};

use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use crate::packet::QoS;
use crate::topic::{TopicFilter, TopicName, levels};

/// The root node's index.
const ROOT: usize = 0;
/// A topic position past the last level.
const END: usize = usize::MAX;

#[derive(Debug)]
struct Node<S> {
    /// The parent's index; the root's own.
    parent: usize,
    /// Children by literal level.
    children: HashMap<Box<[u8]>, usize>,
    /// The child for '+'.
    plus: Option<usize>,
    /// Subscribers whose filter ends here.
    exact: HashMap<S, QoS>,
    /// Subscribers whose filter ends here with '#'.
    multi: HashMap<S, QoS>,
}

impl<S> Node<S> {
    fn new(parent: usize) -> Self {
        Self {
            parent,
            children: HashMap::default(),
            plus: None,
            exact: HashMap::default(),
            multi: HashMap::default(),
        }
    }

    fn is_unused(&self) -> bool {
        self.children.is_empty()
            && self.plus.is_none()
            && self.exact.is_empty()
            && self.multi.is_empty()
    }
}

/// An index of subscriptions: topic filters with their subscribers `S` and granted QoS.
///
/// `S` identifies a subscriber (a client identifier, a session handle) and is cloned into each
/// [`Matches`], so it should be cheap to clone.
#[derive(Debug)]
pub struct Subscriptions<S> {
    /// The arena; `nodes[ROOT]` is the root.
    nodes: Vec<Node<S>>,
    /// Indices of unused nodes, for reuse.
    free: Vec<usize>,
    /// The number of (filter, subscriber) subscriptions.
    len: usize,
}

impl<S: Clone + Eq + Hash> Default for Subscriptions<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone + Eq + Hash> Subscriptions<S> {
    /// An empty index.
    #[must_use]
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::new(ROOT)],
            free: Vec::new(),
            len: 0,
        }
    }

    /// The number of subscriptions: (filter, subscriber) pairs.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no subscriptions.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Subscribes `subscriber` to `filter` at `qos`. Returns whether it replaced a subscription
    /// of the same subscriber to the same filter, whose QoS is then `qos` [MQTT-3.8.4-3].
    pub fn subscribe(&mut self, filter: &TopicFilter, subscriber: S, qos: QoS) -> bool {
        let mut node = ROOT;
        let mut multi = false;
        for level in filter.levels() {
            if level == b"#" {
                multi = true;
                break;
            }
            node = self.child_or_insert(node, level);
        }
        let node = &mut self.nodes[node];
        let set = if multi {
            &mut node.multi
        } else {
            &mut node.exact
        };
        let replaced = set.insert(subscriber, qos).is_some();
        if !replaced {
            self.len += 1;
        }
        replaced
    }

    /// Unsubscribes `subscriber` from `filter` (the same string, not the topics it matches
    /// [MQTT-3.10.4-1]). Returns whether there was such a subscription.
    pub fn unsubscribe(&mut self, filter: &TopicFilter, subscriber: &S) -> bool {
        let mut node = ROOT;
        let mut multi = false;
        for level in filter.levels() {
            if level == b"#" {
                multi = true;
                break;
            }
            match self.child(node, level) {
                Some(child) => node = child,
                None => return false,
            }
        }
        let n = &mut self.nodes[node];
        let set = if multi { &mut n.multi } else { &mut n.exact };
        if set.remove(subscriber).is_none() {
            return false;
        }
        self.len -= 1;
        self.prune(node, filter);
        true
    }

    /// Unsubscribes `subscriber` from each of `filters` (the ones its session holds). Returns
    /// how many subscriptions it had among them.
    pub fn remove_subscriber<'a>(
        &mut self,
        subscriber: &S,
        filters: impl IntoIterator<Item = &'a TopicFilter>,
    ) -> usize {
        filters
            .into_iter()
            .filter(|filter| self.unsubscribe(filter, subscriber))
            .count()
    }

    /// Puts in `out` each subscriber with a subscription that matches `topic`, once, with the
    /// maximum QoS of its matching subscriptions [MQTT-3.3.5-1]. Filters that start with a
    /// wildcard do not match topics that start with '$' [MQTT-4.7.2-1].
    pub fn matches(&self, topic: &TopicName, out: &mut Matches<S>) {
        out.found.clear();
        out.stack.clear();
        let topic = topic.as_bytes();
        let system = topic.first() == Some(&b'$');
        let mut sets = 0;
        let mut emit = |set: &HashMap<S, QoS>, found: &mut Vec<(S, QoS)>| {
            if !set.is_empty() {
                sets += 1;
                found.extend(set.iter().map(|(s, qos)| (s.clone(), *qos)));
            }
        };
        // Depth first: (node, where its next topic level starts, or END).
        out.stack.push((ROOT, 0));
        while let Some((index, start)) = out.stack.pop() {
            let node = &self.nodes[index];
            if start == END {
                // The topic ends here: filters ending here match, and so do those ending in
                // '#' here, as "sport/#" matches "sport" [4.7.1.2].
                emit(&node.exact, &mut out.found);
                emit(&node.multi, &mut out.found);
                continue;
            }
            let rest = topic.get(start..).unwrap_or_default();
            let (level, next) = match rest.iter().position(|&b| b == b'/') {
                Some(i) => (rest.get(..i).unwrap_or_default(), start + i + 1),
                None => (rest, END),
            };
            if !(system && index == ROOT) {
                emit(&node.multi, &mut out.found);
                if let Some(plus) = node.plus {
                    out.stack.push((plus, next));
                }
            }
            if let Some(&child) = node.children.get(level) {
                out.stack.push((child, next));
            }
        }
        if sets > 1 {
            out.dedup();
        }
    }

    fn child(&self, node: usize, level: &[u8]) -> Option<usize> {
        let node = &self.nodes[node];
        if level == b"+" {
            node.plus
        } else {
            node.children.get(level).copied()
        }
    }

    fn child_or_insert(&mut self, node: usize, level: &[u8]) -> usize {
        if let Some(child) = self.child(node, level) {
            return child;
        }
        let child = match self.free.pop() {
            Some(index) => {
                self.nodes[index] = Node::new(node);
                index
            }
            None => {
                self.nodes.push(Node::new(node));
                self.nodes.len() - 1
            }
        };
        let parent = &mut self.nodes[node];
        if level == b"+" {
            parent.plus = Some(child);
        } else {
            parent.children.insert(level.into(), child);
        }
        child
    }

    /// Frees the unused nodes from `node`, which `filter` led to, up towards the root.
    fn prune(&mut self, mut node: usize, filter: &TopicFilter) {
        // From the last level up; `node` is the one of the last level but a '#'.
        let mut keys = levels(filter.as_bytes()).rev().skip_while(|l| *l == b"#");
        while node != ROOT && self.nodes[node].is_unused() {
            let Some(level) = keys.next() else { return };
            let parent = self.nodes[node].parent;
            let p = &mut self.nodes[parent];
            if level == b"+" {
                p.plus = None;
            } else {
                p.children.remove(level);
            }
            // Drop the maps' memory now; the slot waits in `free`.
            self.nodes[node] = Node::new(ROOT);
            self.free.push(node);
            node = parent;
        }
    }
}

/// The result of [`Subscriptions::matches`], and the buffers it reuses from call to call.
#[derive(Debug)]
pub struct Matches<S> {
    found: Vec<(S, QoS)>,
    stack: Vec<(usize, usize)>,
    /// Indices into `found`, for dedup.
    seen: HashTable<usize>,
    hasher: DefaultHashBuilder,
}

impl<S> Default for Matches<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Matches<S> {
    /// Empty buffers.
    #[must_use]
    pub fn new() -> Self {
        Self {
            found: Vec::new(),
            stack: Vec::new(),
            seen: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
        }
    }

    /// Each matching subscriber once, with its QoS, in no particular order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&S, QoS)> {
        self.found.iter().map(|(s, qos)| (s, *qos))
    }

    /// The matches as a slice.
    #[must_use]
    pub fn as_slice(&self) -> &[(S, QoS)] {
        &self.found
    }

    /// The number of matching subscribers.
    #[must_use]
    pub fn len(&self) -> usize {
        self.found.len()
    }

    /// Whether no subscriber matched.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }
}

impl<S: Eq + Hash> Matches<S> {
    /// Keeps the first entry of each subscriber, with the maximum QoS of its entries.
    fn dedup(&mut self) {
        let Self {
            found,
            seen,
            hasher,
            ..
        } = self;
        seen.clear();
        let mut kept = 0;
        for i in 0..found.len() {
            let hash = hasher.hash_one(&found[i].0);
            let earlier = seen.find(hash, |&k| found[k].0 == found[i].0).copied();
            match earlier {
                Some(k) => found[k].1 = found[k].1.max(found[i].1),
                None => {
                    found.swap(kept, i);
                    seen.insert_unique(hash, kept, |&k| hasher.hash_one(&found[k].0));
                    kept += 1;
                }
            }
        }
        found.truncate(kept);
    }
}

impl<'a, S> IntoIterator for &'a Matches<S> {
    type Item = (&'a S, QoS);
    type IntoIter = std::iter::Map<std::slice::Iter<'a, (S, QoS)>, fn(&(S, QoS)) -> (&S, QoS)>;
    fn into_iter(self) -> Self::IntoIter {
        self.found.iter().map(|(s, qos)| (s, *qos))
    }
}
