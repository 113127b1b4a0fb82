//! Factories: create the receiver for an ID on its first message.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

use crate::{App, Key, KindTable, Message, Receiver};

/// What a factory made of an ID. `A` is the application, `(K, M)` unless it has several
/// [kinds](crate::Kinds).
#[non_exhaustive]
pub enum Activation<K, M, A = (K, M)> {
    /// The receiver for the ID.
    Ready(Box<dyn Receiver<K, M, A>>),
    /// There is no receiver for this ID; its messages become dead letters.
    Refused,
    /// Creating the receiver failed (e.g. its durable state could not be loaded).
    Failed(FactoryError),
}

impl<K, M, A> Activation<K, M, A> {
    /// A ready receiver.
    pub fn ready(receiver: impl Receiver<K, M, A>) -> Self {
        Activation::Ready(Box::new(receiver))
    }

    /// A failed activation carrying `error`.
    pub fn failed(error: impl Error + Send + Sync + 'static) -> Self {
        Activation::Failed(FactoryError::new(error))
    }
}

impl<K, M, A> fmt::Debug for Activation<K, M, A> {
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
/// Any `Fn(&K) -> Activation<K, M> + Send + Sync + 'static` closure is a factory; so is
/// [`Kinds`](crate::Kinds), the factory of an application with several kinds.
///
/// A function generic over the factory returns the handle typed by its application:
/// `fn start<F: Factory<K, M>>(factory: F) -> Hermes<K, M, F::App>`; one that takes a
/// single-kind factory says so, `factory: impl Factory<K, M, App = (K, M)>`.
pub trait Factory<K, M>: Send + Sync + 'static {
    /// The application: `(K, M)` for one kind; it types the handle an executor returns.
    type App: App<Id = K, Msg = M>;

    /// Creates the receiver for `id`, refuses the ID, or fails.
    fn create(&self, id: &K) -> Activation<K, M>;

    /// Which kind each ID is and each kind's settings, for an application with several kinds;
    /// `None` (the default) for one kind.
    fn kinds(&self) -> Option<KindTable<K>> {
        None
    }
}

impl<K, M, F> Factory<K, M> for F
where
    K: Key,
    M: Message,
    F: Fn(&K) -> Activation<K, M> + Send + Sync + 'static + ?Sized,
{
    type App = (K, M);

    fn create(&self, id: &K) -> Activation<K, M> {
        self(id)
    }
}

/// A factory behind a pointer, its application type erased: how drivers keep one.
pub type SharedFactory<K, M> = std::sync::Arc<dyn Fn(&K) -> Activation<K, M> + Send + Sync>;

/// Shares `factory`, erasing its application type.
pub fn share<K: Key, M: Message>(factory: impl Factory<K, M>) -> SharedFactory<K, M> {
    std::sync::Arc::new(move |id: &K| factory.create(id))
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

/// Transparent: its message and its source are the wrapped error's.
impl Error for FactoryError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for FactoryError {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
