//! Kind `Retained`: the retained messages, in N shards by a hash of their topic, each a
//! receiver owning a [`RetainedStore`] and its part of the store.
//!
//! A retained PUBLISH goes to its topic's shard; a new subscription asks the shards that may
//! hold matching messages (one for a filter without wildcards, all otherwise). The shards are
//! never deactivated for idleness: their state is in memory, loaded once at startup.

use std::sync::{Arc, PoisonError};

use hermes::{Activation, Context, Receiver};

use super::{BrokerApp, RetainedMsg, RetainedShard, Shared};
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
    /// Applies a PUBLISH with RETAIN 1 [MQTT-3.3.1-5], [MQTT-3.3.1-10], and stores the change.
    fn apply(&mut self, message: &Message) {
        let change = self.store.on_publish(message);
        let retained = &self.shared.counters.retained;
        match change {
            RetainChange::Stored { replaced: false } => super::Counters::gauge(retained, 1),
            RetainChange::Cleared { removed: true } => super::Counters::gauge(retained, -1),
            _ => {}
        }
        let Some(storage) = &self.shared.storage else {
            return;
        };
        match change {
            RetainChange::Stored { .. } => {
                if let Some(stored) = self.store.get(&message.topic) {
                    storage.save_retained(stored);
                }
            }
            RetainChange::Cleared { removed: true } => storage.delete_retained(&message.topic),
            RetainChange::Cleared { removed: false } | RetainChange::NotRetained => {}
        }
    }
}

impl Receiver<RetainedShard, RetainedMsg, BrokerApp> for RetainedRx {
    fn receive(&mut self, _ctx: &mut Ctx<'_>, msg: RetainedMsg) {
        match msg {
            RetainedMsg::Publish(message) => self.apply(&message),
            RetainedMsg::Store(message, reply) => {
                self.apply(&message);
                let _ = reply.send(());
            }
            RetainedMsg::Matching(filter, reply) => {
                let messages = self.store.matching(&filter).cloned().collect();
                let _ = reply.send(messages);
            }
        }
    }
}
