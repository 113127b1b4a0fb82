//! The retained messages: the last message published with RETAIN 1 on each topic [3.3.1.3],
//! found by the topic filter of a new subscription.
//!
//! [`RetainedStore::on_publish`] applies the rules to each PUBLISH the broker takes:
//!
//! - RETAIN 0: the store is not touched [MQTT-3.3.1-12];
//! - RETAIN 1 with a payload: the message and its QoS replace the topic's retained message
//!   [MQTT-3.3.1-5]; QoS 0 ones are kept too, as the specification advises [MQTT-3.3.1-7];
//! - RETAIN 1 with an empty payload: the topic's retained message is removed, and the empty
//!   one is not kept [MQTT-3.3.1-10], [MQTT-3.3.1-11].
//!
//! Retained messages are not part of any session, and outlive them [MQTT-3.1.2-7].
//! [`matching`](RetainedStore::matching) finds those that a new subscription gets
//! [MQTT-3.3.1-6]; they go out with RETAIN 1 ([`Message::retained_for`],
//! [`Session::deliver_retained`](crate::Session::deliver_retained)) [MQTT-3.3.1-8].
//!
//! The store is a trie of topic levels, its nodes in an arena: neither matching, nor removing,
//! nor dropping it recurses, however deep a topic goes. Costs, for a topic or filter of `L`
//! levels: [`on_publish`](RetainedStore::on_publish) `O(L)` hash lookups (removing prunes the
//! nodes it leaves empty); [`matching`](RetainedStore::matching) `O(L)` for a filter without
//! wildcards, and in general the nodes the filter reaches plus the matches: a '+' visits every
//! child of its level, a '#' the whole subtree below it.
//!
//! Persistence: the store serializes as the sequence of its messages. To store it message by
//! message instead, key each by its topic: [`RetainChange`] says which key to write or delete.
//!
//! ```
//! use bytes::Bytes;
//! use hermes_mqtt::{Message, QoS, RetainedStore, TopicFilter, TopicName};
//!
//! let mut store = RetainedStore::new();
//! let message = |topic: &'static str, payload: &'static [u8]| Message {
//!     topic: TopicName::from_static(topic),
//!     payload: Bytes::from_static(payload),
//!     qos: QoS::AtLeastOnce,
//!     retain: true,
//! };
//! store.on_publish(&message("sensors/1/temperature", b"21.5"));
//! store.on_publish(&message("sensors/2/temperature", b"19.0"));
//! store.on_publish(&message("$SYS/uptime", b"10"));
//! assert_eq!(store.len(), 3);
//!
//! let filter = TopicFilter::from_static("sensors/+/temperature");
//! assert_eq!(store.matching(&filter).count(), 2);
//! // Wildcards at the start do not match '$' topics [MQTT-4.7.2-1].
//! assert_eq!(store.matching(&TopicFilter::from_static("#")).count(), 2);
//!
//! // An empty retained payload clears the topic.
//! store.on_publish(&message("sensors/1/temperature", b""));
//! assert_eq!(store.matching(&filter).count(), 1);
//! ```

use std::fmt;

use hashbrown::HashMap;
use serde::de::{SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::message::Message;
use crate::topic::{TopicFilter, TopicName};

/// The root node's index: the level before the first.
const ROOT: usize = 0;

#[derive(Debug, Default)]
struct Node {
    /// The parent's index; the root's own.
    parent: usize,
    /// Children by level.
    children: HashMap<Box<[u8]>, usize>,
    /// The retained message of the topic that ends here.
    message: Option<Message>,
}

impl Node {
    fn new(parent: usize) -> Self {
        Self {
            parent,
            ..Self::default()
        }
    }
}

/// What [`RetainedStore::on_publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetainChange {
    /// Nothing: the PUBLISH had RETAIN 0 [MQTT-3.3.1-12].
    NotRetained,
    /// The message is now the topic's retained message.
    Stored {
        /// Whether it replaced one.
        replaced: bool,
    },
    /// The topic has no retained message now (an empty payload [MQTT-3.3.1-10]).
    Cleared {
        /// Whether it had one.
        removed: bool,
    },
}

/// The retained messages, by topic: see the [module docs](self).
#[derive(Debug)]
pub struct RetainedStore {
    /// The arena; `nodes[ROOT]` is the root.
    nodes: Vec<Node>,
    /// Indices of unused nodes, for reuse.
    free: Vec<usize>,
    /// The number of retained messages.
    len: usize,
    /// The sum of their payloads' sizes.
    payload_bytes: usize,
}

impl Default for RetainedStore {
    fn default() -> Self {
        Self::new()
    }
}

impl RetainedStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self {
            nodes: vec![Node::new(ROOT)],
            free: Vec::new(),
            len: 0,
            payload_bytes: 0,
        }
    }

    /// The number of retained messages.
    #[must_use]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there is no retained message.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The total size of the retained messages' payloads, in bytes.
    #[must_use]
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Applies a PUBLISH that the broker took to the store (see the [module docs](self)). A
    /// stored message is copied into buffers of its own ([`Message::compact`]), as it may stay
    /// for long.
    pub fn on_publish(&mut self, message: &Message) -> RetainChange {
        if !message.retain {
            return RetainChange::NotRetained;
        }
        if message.payload.is_empty() {
            let removed = self.remove(&message.topic).is_some();
            return RetainChange::Cleared { removed };
        }
        let replaced = self.insert(message.compact()).is_some();
        RetainChange::Stored { replaced }
    }

    /// The retained message of `topic`.
    #[must_use]
    pub fn get(&self, topic: &TopicName) -> Option<&Message> {
        let mut node = ROOT;
        for level in topic.levels() {
            node = *self.nodes.get(node)?.children.get(level)?;
        }
        self.nodes.get(node)?.message.as_ref()
    }

    /// Removes and returns the retained message of `topic`.
    pub fn remove(&mut self, topic: &TopicName) -> Option<Message> {
        let mut node = ROOT;
        for level in topic.levels() {
            node = *self.nodes.get(node)?.children.get(level)?;
        }
        let message = self.nodes.get_mut(node)?.message.take()?;
        self.len -= 1;
        self.payload_bytes -= message.payload.len();
        self.prune(node, topic);
        Some(message)
    }

    /// Every retained message whose topic `filter` matches, as [`topic::matches`] says: '+' is
    /// one level, '#' its parent level and everything below, and a filter that starts with a
    /// wildcard does not match topics that start with '$' [MQTT-4.7.2-1]. In no particular
    /// order.
    ///
    /// [`topic::matches`]: crate::topic::matches
    pub fn matching<'a>(&'a self, filter: &'a TopicFilter) -> Matching<'a> {
        Matching {
            store: self,
            levels: filter.levels().collect(),
            stack: vec![Step::Match {
                node: ROOT,
                depth: 0,
            }],
        }
    }

    /// Every retained message, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Message> {
        self.nodes.iter().filter_map(|node| node.message.as_ref())
    }

    /// Stores `message` as its topic's retained message; returns the one it replaced.
    fn insert(&mut self, message: Message) -> Option<Message> {
        let mut node = ROOT;
        for level in message.topic.levels() {
            node = self.child_or_insert(node, level);
        }
        let slot = &mut self.nodes.get_mut(node)?.message;
        self.payload_bytes += message.payload.len();
        let old = slot.replace(message);
        match &old {
            Some(old) => self.payload_bytes -= old.payload.len(),
            None => self.len += 1,
        }
        old
    }

    fn child_or_insert(&mut self, node: usize, level: &[u8]) -> usize {
        if let Some(&child) = self.nodes.get(node).and_then(|n| n.children.get(level)) {
            return child;
        }
        let child = match self.free.pop() {
            Some(index) => index,
            None => {
                self.nodes.push(Node::default());
                self.nodes.len() - 1
            }
        };
        if let Some(slot) = self.nodes.get_mut(child) {
            *slot = Node::new(node);
        }
        if let Some(parent) = self.nodes.get_mut(node) {
            parent.children.insert(level.into(), child);
        }
        child
    }

    /// Frees the unused nodes from `node`, where `topic` ends, up towards the root.
    fn prune(&mut self, mut node: usize, topic: &TopicName) {
        let mut keys = topic.levels().rev();
        while node != ROOT {
            let Some(n) = self.nodes.get_mut(node) else {
                return;
            };
            if n.message.is_some() || !n.children.is_empty() {
                return;
            }
            let parent = n.parent;
            // Drop the map's memory now; the slot waits in `free`.
            *n = Node::default();
            self.free.push(node);
            if let (Some(level), Some(p)) = (keys.next(), self.nodes.get_mut(parent)) {
                p.children.remove(level);
            }
            node = parent;
        }
    }
}

/// A step of [`Matching`]'s walk.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// At `node`, having matched `depth` levels of the filter.
    Match { node: usize, depth: usize },
    /// At `node`, inside the subtree of a '#': everything matches.
    Subtree(usize),
}

/// The iterator of [`RetainedStore::matching`]: a depth-first walk of the trie with the
/// filter, on a stack of its own.
#[derive(Debug)]
pub struct Matching<'a> {
    store: &'a RetainedStore,
    levels: Vec<&'a [u8]>,
    stack: Vec<Step>,
}

impl<'a> Matching<'a> {
    /// Pushes `node`'s children, as `step` says; at the root, without the '$' topics, as they
    /// are reached here through a wildcard [MQTT-4.7.2-1].
    fn push_children(&mut self, node: usize, step: impl Fn(usize) -> Step) {
        let Some(n) = self.store.nodes.get(node) else {
            return;
        };
        let system = |level: &[u8]| node == ROOT && level.first() == Some(&b'$');
        let children = n.children.iter().filter(|(level, _)| !system(level));
        self.stack.extend(children.map(|(_, &child)| step(child)));
    }
}

impl<'a> Iterator for Matching<'a> {
    type Item = &'a Message;

    fn next(&mut self) -> Option<&'a Message> {
        let nodes = &self.store.nodes;
        while let Some(step) = self.stack.pop() {
            let found = match step {
                Step::Subtree(node) => {
                    self.push_children(node, Step::Subtree);
                    nodes.get(node).and_then(|n| n.message.as_ref())
                }
                Step::Match { node, depth } => match self.levels.get(depth).copied() {
                    // The filter ends here, and so does the topic.
                    None => nodes.get(node).and_then(|n| n.message.as_ref()),
                    Some(b"#") => {
                        self.push_children(node, Step::Subtree);
                        // "sport/#" matches "sport" too [4.7.1.2]; the root is no topic.
                        nodes.get(node).and_then(|n| n.message.as_ref())
                    }
                    Some(b"+") => {
                        let next = depth + 1;
                        self.push_children(node, |child| Step::Match {
                            node: child,
                            depth: next,
                        });
                        None
                    }
                    Some(level) => {
                        let child = nodes.get(node).and_then(|n| n.children.get(level));
                        if let Some(&child) = child {
                            let depth = depth + 1;
                            self.stack.push(Step::Match { node: child, depth });
                        }
                        None
                    }
                },
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
}

impl Serialize for RetainedStore {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The length first: postcard, hermes-store's format, needs it.
        let mut seq = serializer.serialize_seq(Some(self.len))?;
        for message in self.iter() {
            seq.serialize_element(message)?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for RetainedStore {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Messages;

        impl<'de> Visitor<'de> for Messages {
            type Value = RetainedStore;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of retained messages")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RetainedStore, A::Error> {
                let mut store = RetainedStore::new();
                while let Some(message) = seq.next_element::<Message>()? {
                    // An empty retained message is never stored [MQTT-3.3.1-11].
                    if !message.payload.is_empty() {
                        store.insert(message);
                    }
                }
                Ok(store)
            }
        }

        deserializer.deserialize_seq(Messages)
    }
}

#[cfg(test)]
mod tests;
