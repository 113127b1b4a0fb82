//! Factories: create the receiver for an ID on its first message.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::Receiver;

/// What a factory made of an ID.
pub enum Activation<K, M> {
    /// The receiver for the ID.
    Ready(Box<dyn Receiver<K, M>>),
    /// There is no receiver for this ID; its messages become dead letters.
    Refused,
    /// Creating the receiver failed (e.g. its durable state could not be loaded).
    Failed(FactoryError),
}

impl<K, M> Activation<K, M> {
    /// A ready receiver.
    pub fn ready(receiver: impl Receiver<K, M>) -> Self {
        Activation::Ready(Box::new(receiver))
    }

    /// A failed activation carrying `error`.
    pub fn failed(error: impl Error + Send + Sync + 'static) -> Self {
        Activation::Failed(FactoryError::new(error))
    }
}

impl<K, M> fmt::Debug for Activation<K, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Activation::Ready(_) => f.write_str("Ready(..)"),
            Activation::Refused => f.write_str("Refused"),
            Activation::Failed(e) => f.debug_tuple("Failed").field(e).finish(),
        }
    }
}

/// Creates receivers. Called by whoever drives the router, on an [`Activate`](crate::Command)
/// command, so it may block or load durable state without the router knowing.
///
/// Any `Fn(&K) -> Activation<K, M> + Send + Sync + 'static` closure is a factory.
pub trait Factory<K, M>: Send + Sync + 'static {
    /// Creates the receiver for `id`, refuses the ID, or fails.
    fn create(&self, id: &K) -> Activation<K, M>;
}

impl<K, M, F> Factory<K, M> for F
where
    F: Fn(&K) -> Activation<K, M> + Send + Sync + 'static,
{
    fn create(&self, id: &K) -> Activation<K, M> {
        self(id)
    }
}

/// A factory's error, shared by the dead letters of every message queued for that activation.
#[derive(Clone)]
pub struct FactoryError(Arc<dyn Error + Send + Sync>);

impl FactoryError {
    /// Wraps any error.
    pub fn new(error: impl Error + Send + Sync + 'static) -> Self {
        FactoryError(Arc::new(error))
    }

    /// The underlying error.
    pub fn get(&self) -> &(dyn Error + Send + Sync + 'static) {
        &*self.0
    }
}

impl fmt::Debug for FactoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for FactoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl PartialEq for FactoryError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
