//! Kind `Retained`: the retained messages, in N shards by a hash of their topic, each a
//! receiver owning a [`RetainedStore`] and its part of the store.
//!
//! A retained PUBLISH goes to its topic's shard; a new subscription asks the shards that may
//! hold matching messages (one for a filter without wildcards, all otherwise). The shards are
//! never deactivated for idleness: their state is in memory, loaded once at startup.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use hermes::{Activation, Context, Receiver, Reply};

use super::throttle;
use super::{BrokerApp, Counters, RetainedMsg, RetainedShard, Shared};
use crate::config::Config;
use crate::message::Message;
use crate::retained::{RetainChange, RetainedStore};

type Ctx<'a> = Context<'a, RetainedShard, RetainedMsg, BrokerApp>;

/// The factory of kind `Retained`: the shard's messages as loaded at startup, or, for a shard
/// activated again (after a panic), as stored now.
pub(crate) fn factory(
    shared: Arc<Shared>,
) -> impl Fn(&RetainedShard) -> Activation<RetainedShard, RetainedMsg, BrokerApp> + Send + Sync + 'static
{
    move |shard: &RetainedShard| {
        let preloaded = shared
            .preloaded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(usize::from(shard.0))
            .and_then(Option::take);
        let store = match (preloaded, &shared.storage) {
            (Some(store), _) => store,
            (None, Some(storage)) => match storage.load_retained() {
                Ok(messages) => {
                    let mut store = RetainedStore::new();
                    for message in messages {
                        if shared.retained_shard(message.topic.as_bytes()) == *shard {
                            store.on_publish(&message);
                        }
                    }
                    store
                }
                Err(error) => {
                    tracing::error!(shard = shard.0, %error, "cannot load retained messages");
                    return Activation::failed(error);
                }
            },
            (None, None) => RetainedStore::new(),
        };
        Activation::ready(RetainedRx {
            store,
            shared: Arc::clone(&shared),
        })
    }
}

/// A retained shard.
struct RetainedRx {
    store: RetainedStore,
    shared: Arc<Shared>,
}

impl RetainedRx {
    /// Applies a PUBLISH with RETAIN 1 [MQTT-3.3.1-5], [MQTT-3.3.1-10], within
    /// `max_retained` and `max_retained_bytes`, and stores the change.
    ///
    /// `done`, if any, is answered once the change is committed (dropped at once if nothing
    /// is stored).
    fn apply(&mut self, message: &Message, done: Option<Reply<()>>) {
        if !message.retain {
            return;
        }
        let counters = &self.shared.counters;
        let old = self.store.get(&message.topic).map(|m| m.payload.len());
        if message.payload.is_empty() {
            if let Some(old) = old {
                release(counters, old);
            }
        } else if let Err(limit) =
            reserve(counters, &self.shared.config, old, message.payload.len())
        {
            self.refuse(message, old, limit, done);
            return;
        }
        let change = self.store.on_publish(message);
        let Some(storage) = &self.shared.storage else {
            return;
        };
        match change {
            RetainChange::Stored { .. } => {
                if let Some(stored) = self.store.get(&message.topic) {
                    storage.save_retained(stored, done);
                }
            }
            RetainChange::Cleared { removed: true } => {
                storage.delete_retained(&message.topic, done)
            }
            RetainChange::Cleared { removed: false } | RetainChange::NotRetained => {}
        }
    }

    /// A retained message over `limit`: not retained (it was routed to the subscribers
    /// already, and is acknowledged all the same), counted and logged. A topic whose message
    /// it was to replace loses that one: an old value is not kept as if it were the latest.
    fn refuse(
        &mut self,
        message: &Message,
        old: Option<usize>,
        limit: Limit,
        done: Option<Reply<()>>,
    ) {
        let shared = &self.shared;
        Counters::add(&shared.counters.retained_refused, 1);
        let topic = message.topic.as_str();
        let replaced = if old.is_some() {
            ", and the topic's previous retained message removed"
        } else {
            ""
        };
        let (name, value) = limit.key(&shared.config);
        let detail = || format!("{topic}: {name}");
        if let Some(unlogged) = shared.retained_refused_log.note(Instant::now(), detail) {
            tracing::warn!(
                "not retaining a message on {topic}: {name} ({value}) reached (delivered to \
                 subscribers all the same{replaced}){}; counted in \
                 hermes_mqtt_retained_refused_total, logged at most once per {} s",
                throttle::unlogged(unlogged),
                throttle::PERIOD.as_secs()
            );
        }
        if let Some(removed) = self.store.remove(&message.topic) {
            release(&shared.counters, removed.payload.len());
            if let Some(storage) = &shared.storage {
                storage.delete_retained(&message.topic, done);
            }
        }
    }
}

/// The retained messages' limit a message would go over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// `max_retained`.
    Count,
    /// `max_retained_bytes`.
    Bytes,
}

impl Limit {
    /// The configuration key, and its value.
    fn key(self, config: &Config) -> (&'static str, usize) {
        match self {
            Limit::Count => ("max_retained", config.max_retained),
            Limit::Bytes => ("max_retained_bytes", config.max_retained_bytes),
        }
    }
}

/// Counts a retained message of `new` payload bytes in the gauges, in place of one of `old`
/// bytes (`None`: its topic has none), if that keeps them within `max_retained` and
/// `max_retained_bytes` (0: no limit); else changes nothing and names the limit. The gauges
/// are shared by the retained shards: each adds first and takes back what went over, so they
/// never stay over a limit.
fn reserve(
    counters: &Counters,
    config: &Config,
    old: Option<usize>,
    new: usize,
) -> Result<(), Limit> {
    let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let added = i64::from(old.is_none());
    let grown = int(new) - int(old.unwrap_or(0));
    let count = counters.retained.fetch_add(added, Ordering::Relaxed) + added;
    let bytes = counters.retained_bytes.fetch_add(grown, Ordering::Relaxed) + grown;
    let over = if added > 0 && config.max_retained != 0 && count > int(config.max_retained) {
        Some(Limit::Count)
    } else if grown > 0 && config.max_retained_bytes != 0 && bytes > int(config.max_retained_bytes)
    {
        Some(Limit::Bytes)
    } else {
        None
    };
    match over {
        Some(limit) => {
            counters.retained.fetch_sub(added, Ordering::Relaxed);
            counters.retained_bytes.fetch_sub(grown, Ordering::Relaxed);
            Err(limit)
        }
        None => Ok(()),
    }
}

/// Takes a retained message of `len` payload bytes out of the gauges.
fn release(counters: &Counters, len: usize) {
    Counters::gauge(&counters.retained, -1);
    Counters::gauge(
        &counters.retained_bytes,
        -i64::try_from(len).unwrap_or(i64::MAX),
    );
}

impl Receiver<RetainedShard, RetainedMsg, BrokerApp> for RetainedRx {
    fn receive(&mut self, _ctx: &mut Ctx<'_>, msg: RetainedMsg) {
        match msg {
            RetainedMsg::Publish(message) => self.apply(&message, None),
            // Answered once stored (a crash after it keeps the message), or when the reply
            // is dropped (nothing to store): the asker waits for the answer either way.
            RetainedMsg::Store(message, reply) => self.apply(&message, Some(reply)),
            RetainedMsg::Matching(filter, reply) => {
                let messages = self.store.matching(&filter).cloned().collect();
                let _ = reply.send(messages);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauges(c: &Counters) -> (i64, i64) {
        (
            c.retained.load(Ordering::Relaxed),
            c.retained_bytes.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn reserve_keeps_the_gauges_within_the_limits() {
        let config = Config {
            max_retained: 2,
            max_retained_bytes: 10,
            ..Config::default()
        };
        let c = Counters::default();
        assert_eq!(reserve(&c, &config, None, 4), Ok(()));
        assert_eq!(reserve(&c, &config, None, 4), Ok(()));
        assert_eq!(gauges(&c), (2, 8));
        // A third topic: over the count; nothing changes.
        assert_eq!(reserve(&c, &config, None, 1), Err(Limit::Count));
        assert_eq!(gauges(&c), (2, 8));
        // A replacement is not a new message; growing it past the bytes is refused.
        assert_eq!(reserve(&c, &config, Some(4), 6), Ok(()));
        assert_eq!(gauges(&c), (2, 10));
        assert_eq!(reserve(&c, &config, Some(6), 7), Err(Limit::Bytes));
        assert_eq!(gauges(&c), (2, 10));
        // Shrinking always fits; releasing makes room.
        assert_eq!(reserve(&c, &config, Some(6), 1), Ok(()));
        release(&c, 4);
        assert_eq!(gauges(&c), (1, 1));
        assert_eq!(reserve(&c, &config, None, 9), Ok(()));
        assert_eq!(gauges(&c), (2, 10));
    }

    #[test]
    fn zero_is_no_limit() {
        let config = Config {
            max_retained: 0,
            max_retained_bytes: 0,
            ..Config::default()
        };
        let c = Counters::default();
        for _ in 0..1000 {
            assert_eq!(reserve(&c, &config, None, 1 << 20), Ok(()));
        }
        assert_eq!(gauges(&c), (1000, 1000 << 20));
    }
}
