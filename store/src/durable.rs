//! Durable receivers: serde state loaded when a receiver is activated and saved, through group
//! commit, when it is deactivated and whenever it asks.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use hermes_core::{Activation, Config, Context, Deactivation, Driver, Receiver};
//! use hermes_store::{Codec, Durable, GroupCommitConfig, MemoryStore, StateStore};
//!
//! const COUNT: Codec<u64> = Codec::new(1);
//!
//! struct Counter(Durable<u64>);
//!
//! impl Receiver<String, u64> for Counter {
//!     fn receive(&mut self, ctx: &mut Context<'_, String, u64>, n: u64) {
//!         *self.0 += n; // marks the state dirty
//!         ctx.stop();
//!     }
//!     fn deactivated(&mut self, _: &mut Context<'_, String, u64>, why: Deactivation) {
//!         self.0.deactivated(why); // saves if dirty (never after a panic)
//!     }
//! }
//!
//! let states = StateStore::new(Arc::new(MemoryStore::new()), GroupCommitConfig::default())?;
//! let factory = {
//!     let states = states.clone();
//!     move |id: &String| match Durable::load(&states, COUNT, format!("count/{id}")) {
//!         Ok(state) => Activation::ready(Counter(state)),
//!         Err(e) => Activation::failed(e),
//!     }
//! };
//! let mut driver = Driver::new(Config::default(), factory);
//! for n in [2, 3] {
//!     driver.send("a".to_string(), n).unwrap(); // each message activates a fresh instance
//!     driver.run(Instant::now());
//! }
//! states.flush()?;
//! assert_eq!(states.load(&COUNT, b"count/a")?, Some(5));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hermes_core::Deactivation;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Codec, GroupCommit, GroupCommitConfig, Store, StoreError};

/// Loads and saves receivers' state: a [`GroupCommit`] plus the writes it has not acknowledged
/// yet, so a receiver re-activated before its last save committed loads what it saved.
pub struct StateStore {
    commits: GroupCommit,
    unacked: Arc<Mutex<HashMap<Vec<u8>, Unacked>>>,
    versions: AtomicU64,
}

impl std::fmt::Debug for StateStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unacked = self.lock().len();
        f.debug_struct("StateStore")
            .field("commits", &self.commits)
            .field("unacked", &unacked)
            .finish_non_exhaustive()
    }
}

/// A write submitted and not yet acknowledged; `value: None` is a delete.
struct Unacked {
    version: u64,
    value: Option<Arc<[u8]>>,
}

impl StateStore {
    /// Starts group commit over `store` (a background thread; see [`GroupCommit`]).
    pub fn new(store: Arc<dyn Store>, config: GroupCommitConfig) -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(StateStore {
            commits: GroupCommit::start(store, config)?,
            unacked: Arc::default(),
            versions: AtomicU64::new(0),
        }))
    }

    /// The value saved under `key`, counting saves not yet committed.
    pub fn load<S: DeserializeOwned>(
        &self,
        codec: &Codec<S>,
        key: &[u8],
    ) -> Result<Option<S>, StoreError> {
        let pending = self.lock().get(key).map(|u| u.value.clone());
        match pending {
            Some(Some(bytes)) => codec.decode(&bytes).map(Some).map_err(|e| e.with_key(key)),
            Some(None) => Ok(None),
            None => codec.load(self.commits.store().as_ref(), key),
        }
    }

    /// Saves `value` under `key` in the next group commit; `ack` runs once it is durable (or
    /// failed). An encoding error goes to `ack` at once. Unlike [`Durable::save`], it does not
    /// check that the encoding decodes again.
    pub fn save<S: Serialize>(
        &self,
        codec: &Codec<S>,
        key: &[u8],
        value: &S,
        ack: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        match codec.encode(value) {
            Ok(bytes) => self.write(key, Some(bytes), Box::new(ack)),
            Err(e) => ack(Err(e.with_key(key))),
        }
    }

    /// Deletes `key` in the next group commit; `ack` runs once that is durable.
    pub fn delete(&self, key: &[u8], ack: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        self.write(key, None, Box::new(ack));
    }

    /// [`save`](Self::save) for [`Durable::save`], which also checks that the encoding decodes
    /// again: postcard encodes some serde shapes it cannot decode (untagged or internally
    /// tagged enums, `skip_serializing_if`), and such a save would be durable but never load.
    /// That is refused at once with [`StoreError::Encode`], and nothing is written.
    fn save_loadable<S: Serialize + DeserializeOwned>(
        &self,
        codec: &Codec<S>,
        key: &[u8],
        value: &S,
        ack: impl FnOnce(Result<(), StoreError>) + Send + 'static,
    ) {
        let checked = codec
            .encode(value)
            .and_then(|bytes| match codec.decode(&bytes) {
                Ok(_) => Ok(bytes),
                Err(e) => {
                    let detail = match e {
                        StoreError::Decode { detail, .. } => detail,
                        other => other.to_string(),
                    };
                    Err(StoreError::Encode {
                        key: None,
                        source: Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(
                            format!("it would not decode again ({detail}), so it is not saved"),
                        )),
                    })
                }
            });
        match checked {
            Ok(bytes) => self.write(key, Some(bytes), Box::new(ack)),
            Err(e) => ack(Err(e.with_key(key))),
        }
    }

    fn write(&self, key: &[u8], value: Option<Vec<u8>>, ack: crate::Ack) {
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        let shared: Option<Arc<[u8]>> = value.map(Arc::from);
        self.lock().insert(
            key.to_vec(),
            Unacked {
                version,
                value: shared.clone(),
            },
        );
        let unacked = Arc::clone(&self.unacked);
        let owned_key = key.to_vec();
        let done = move |result: Result<(), StoreError>| {
            let mut map = unacked.lock().unwrap_or_else(PoisonError::into_inner);
            if map.get(&owned_key).is_some_and(|u| u.version == version) {
                map.remove(&owned_key);
            }
            drop(map);
            ack(result);
        };
        match shared {
            Some(bytes) => self.commits.put(key, bytes.to_vec(), done),
            None => self.commits.delete(key, done),
        }
    }

    /// Blocks until everything saved so far is durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.commits.flush()
    }

    /// Flushes and stops the commit thread; later saves fail with [`StoreError::Closed`].
    pub fn shutdown(&self) -> Result<(), StoreError> {
        self.commits.shutdown()
    }

    /// The group commit underneath (for its stats).
    pub fn commits(&self) -> &GroupCommit {
        &self.commits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Unacked>> {
        self.unacked.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One receiver's serde state, kept in a [`StateStore`] under one key.
///
/// Read it through `Deref`; writing through `DerefMut` (or [`get_mut`](Durable::get_mut))
/// marks it dirty. Call [`deactivated`](Durable::deactivated) from the receiver's hook to save
/// it when the receiver goes idle, and [`save`](Durable::save) to save (and learn when it is
/// durable) at any time.
pub struct Durable<S> {
    key: Vec<u8>,
    value: S,
    codec: Codec<S>,
    states: Arc<StateStore>,
    dirty: bool,
}

impl<S: std::fmt::Debug> std::fmt::Debug for Durable<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("key", &String::from_utf8_lossy(&self.key))
            .field("value", &self.value)
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

impl<S> Durable<S>
where
    S: Serialize + DeserializeOwned + Default + Send + 'static,
{
    /// Loads the state under `key`, or `S::default()` if there is none. Call it in the
    /// factory; on error, fail the activation so the receiver's messages become dead letters.
    pub fn load(
        states: &Arc<StateStore>,
        codec: Codec<S>,
        key: impl Into<Vec<u8>>,
    ) -> Result<Self, StoreError> {
        let key = key.into();
        let value = states.load(&codec, &key)?.unwrap_or_default();
        Ok(Durable {
            key,
            value,
            codec,
            states: Arc::clone(states),
            dirty: false,
        })
    }

    /// The key the state is stored under.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The state.
    pub fn get(&self) -> &S {
        &self.value
    }

    /// The state, marked dirty (to be saved on deactivation).
    pub fn get_mut(&mut self) -> &mut S {
        self.dirty = true;
        &mut self.value
    }

    /// True if the state changed since it was loaded or last saved (a save counts once it is
    /// submitted, whether or not it then commits).
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Saves the state in the next group commit; `ack` runs when it is durable or failed.
    ///
    /// The state counts as saved (no longer [dirty](Durable::is_dirty)) from this call on,
    /// whatever the outcome: if `ack` gets an error, the store keeps the last committed state
    /// (a later [`load`](Durable::load) finds that, not this one), and the state is saved
    /// again only by another `save`, or by [`deactivated`](Durable::deactivated) after a
    /// further change. To retry, have `ack` send the receiver a message that calls `save`.
    ///
    /// A state that encodes but would not decode again (postcard cannot decode untagged or
    /// internally tagged enums or `#[serde(skip_serializing_if)]`) is refused at once: `ack`
    /// gets [`StoreError::Encode`] naming the key before `save` returns, and nothing is
    /// written, so the last state that loads stays.
    pub fn save(&mut self, ack: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        self.dirty = false;
        self.states
            .save_loadable(&self.codec, &self.key, &self.value, ack);
    }

    /// Deletes the stored state (the value in memory is kept).
    pub fn delete(&mut self, ack: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        self.dirty = false;
        self.states.delete(&self.key, ack);
    }

    /// For the receiver's `deactivated` hook: saves the state if it is dirty, unless the
    /// receiver panicked (its state may be half-updated). A failed save is logged and not
    /// retried: the next activation loads the last state that was committed.
    pub fn deactivated(&mut self, why: Deactivation) {
        if why == Deactivation::Panicked {
            tracing::warn!(key = ?String::from_utf8_lossy(&self.key), "not saving state after a panic");
            return;
        }
        if self.dirty {
            let key = String::from_utf8_lossy(&self.key).into_owned();
            self.save(move |result| {
                if let Err(error) = result {
                    tracing::error!(%key, %error, "saving state on deactivation failed");
                }
            });
        }
    }
}

impl<S> Deref for Durable<S> {
    type Target = S;
    fn deref(&self) -> &S {
        &self.value
    }
}

impl<S> DerefMut for Durable<S> {
    fn deref_mut(&mut self) -> &mut S {
        self.dirty = true;
        &mut self.value
    }
}
