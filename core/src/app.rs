//! Kinds: several kinds of receivers in one application, each with its own ID type, message
//! type, factory and settings, sharing the shards and the clock.
//!
//! An application with one kind needs none of this: its ID and message types are the router's
//! (`App` is implemented for the pair `(K, M)`). An application with several kinds declares them
//! with [`app!`](crate::app), which builds the router's ID and message types as sums of the
//! kinds' and makes each kind's message type a [`Kind`] of the application. Sending is typed:
//! `ctx.send(AccountId(7), AccountMsg::Deposit(5))` compiles only if `AccountId` is the ID type
//! of the kind whose messages are `AccountMsg`. Nothing is boxed or downcast per message: a
//! kind's message travels as one variant of the application's message enum.
//!
//! ```
//! use hermes_core::{Activation, Config, Context, Driver, Kinds};
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
//! pub struct AccountId(u32);
//! #[derive(Debug)]
//! pub enum AccountMsg { Deposit(u64) }
//!
//! #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
//! pub struct AuditId;
//! #[derive(Debug)]
//! pub enum AuditMsg { Deposited(AccountId, u64) }
//!
//! hermes_core::app! {
//!     /// A bank: accounts, and an audit log.
//!     pub app Bank(BankId, BankMsg) {
//!         Account(AccountId => AccountMsg),
//!         Audit(AuditId => AuditMsg),
//!     }
//! }
//!
//! let kinds = Kinds::<Bank>::new()
//!     .kind(|_id: &AccountId| {
//!         let mut balance = 0;
//!         Activation::ready(move |ctx: &mut Context<'_, AccountId, AccountMsg, Bank>, msg| {
//!             match msg {
//!                 AccountMsg::Deposit(n) => {
//!                     balance += n;
//!                     // To another kind: typed by the ID.
//!                     ctx.send(AuditId, AuditMsg::Deposited(*ctx.id(), n));
//!                 }
//!             }
//!         })
//!     })
//!     .kind(|_id: &AuditId| {
//!         Activation::ready(|_: &mut Context<'_, AuditId, AuditMsg, Bank>, _msg| {})
//!     });
//! let mut driver = Driver::new(Config::default(), kinds);
//! driver.send(AccountId(1), AccountMsg::Deposit(5)).unwrap();
//! driver.run(std::time::Instant::now());
//! assert_eq!(driver.router().stats().activations, 2); // the account and the audit log
//! ```
//!
//! A message sent to a kind that does not take it does not compile:
//!
//! ```compile_fail,E0308
//! # use hermes_core::{Activation, Config, Driver, Kinds};
//! # #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)] pub struct AccountId(u32);
//! # #[derive(Debug)] pub enum AccountMsg { Deposit(u64) }
//! # #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)] pub struct AuditId;
//! # #[derive(Debug)] pub enum AuditMsg { Deposited(AccountId, u64) }
//! # hermes_core::app! { pub app Bank(BankId, BankMsg) {
//! #     Account(AccountId => AccountMsg), Audit(AuditId => AuditMsg) } }
//! let mut driver = Driver::new(Config::default(), Kinds::<Bank>::new());
//! // An audit message addressed to an account: expected `AuditId`, found `AccountId`.
//! driver.send(AccountId(1), AuditMsg::Deposited(AccountId(1), 5));
//! ```

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use crate::{Activation, Context, Deactivation, Factory, Key, Message, Receiver};

/// An application: the router's ID and message types, and how IDs divide into kinds.
///
/// Implemented for the pair `(K, M)` (one kind), and by [`app!`](crate::app) for applications
/// with several kinds.
pub trait App: 'static {
    /// The router's ID type: every kind's IDs.
    type Id: Key;
    /// The router's message type: every kind's messages.
    type Msg: Message;

    /// How many kinds the application has.
    const KINDS: usize = 1;

    /// The kind of `id`, `0..KINDS`.
    fn kind_of(_id: &Self::Id) -> usize {
        0
    }

    /// The name of kind `kind`, for logs.
    fn kind_name(_kind: usize) -> &'static str {
        "receiver"
    }

    /// The kind of `msg`, `0..KINDS` (the kind whose receivers take it), if the message says;
    /// `None` (the default) if messages do not name their kind. A router refuses a message
    /// sent by the handle of a receiver of another kind than the message's (a
    /// [`Stale`](crate::DeadLetterReason::Stale) dead letter); with `None` it does not check.
    /// [`app!`](crate::app) implements it.
    fn message_kind(_msg: &Self::Msg) -> Option<usize> {
        None
    }
}

/// The kind of `msg` if it is `A`'s message type: how a [`KindTable`], whose router knows
/// only the application's types, asks `A`.
fn message_kind_of<A: App>(msg: &dyn std::any::Any) -> Option<usize> {
    msg.downcast_ref::<A::Msg>().and_then(A::message_kind)
}

impl<K: Key, M: Message> App for (K, M) {
    type Id = K;
    type Msg = M;
}

/// A kind of receiver in application `A`, implemented on the kind's message type: its ID
/// type, and how its IDs and messages sit inside the application's.
///
/// Every message type `M` is the one kind of the application `(K, M)`; [`app!`](crate::app)
/// implements it for each kind of a larger application. Keyed by the message type, so a send's
/// ID type follows from its message (`hermes.send("alice".into(), Msg::Deposit(5))` infers the
/// ID's type), and each message type belongs to one kind.
pub trait Kind<A: App>: Message + Sized {
    /// The IDs of receivers of this kind.
    type Id: Key;

    /// This kind's index, `0..A::KINDS`.
    const INDEX: usize;

    /// An ID of this kind as an application ID.
    fn into_app_id(id: Self::Id) -> A::Id;

    /// This message as an application message.
    fn into_app_msg(self) -> A::Msg;

    /// The ID of this kind inside an application ID, if it is one.
    fn from_app_id(id: &A::Id) -> Option<&Self::Id>;

    /// The message of this kind inside an application message, or the message back.
    fn from_app_msg(msg: A::Msg) -> Result<Self, A::Msg>;

    /// A receiver of this kind as a receiver of application messages.
    fn adapt(receiver: Box<dyn Receiver<Self::Id, Self, A>>) -> Box<dyn Receiver<A::Id, A::Msg>>;
}

impl<K: Key, M: Message> Kind<(K, M)> for M {
    type Id = K;
    const INDEX: usize = 0;

    #[inline(always)]
    fn into_app_id(id: K) -> K {
        id
    }

    #[inline(always)]
    fn into_app_msg(self) -> M {
        self
    }

    #[inline(always)]
    fn from_app_id(id: &K) -> Option<&K> {
        Some(id)
    }

    #[inline(always)]
    fn from_app_msg(msg: M) -> Result<M, M> {
        Ok(msg)
    }

    #[inline(always)]
    fn adapt(receiver: Box<dyn Receiver<K, M>>) -> Box<dyn Receiver<K, M>> {
        receiver
    }
}

/// Runs a receiver of kind `T` (its message type) as a receiver of application messages:
/// unwraps each message and gives the receiver a [`Context`] typed by its kind. Built by the
/// [`Kind::adapt`] implementations of [`app!`](crate::app); not needed otherwise.
pub struct KindAdapter<T: Kind<A>, A: App> {
    inner: Box<dyn Receiver<T::Id, T, A>>,
}

impl<T: Kind<A>, A: App> KindAdapter<T, A> {
    /// Wraps a receiver of kind `T`.
    pub fn new(inner: Box<dyn Receiver<T::Id, T, A>>) -> Self {
        KindAdapter { inner }
    }

    /// Runs `f` with the context narrowed to kind `T`.
    fn narrowed<R>(
        ctx: &mut Context<'_, A::Id, A::Msg>,
        f: impl FnOnce(&mut Context<'_, T::Id, T, A>) -> R,
    ) -> R {
        let Some(id) = T::from_app_id(ctx.id) else {
            panic!(
                "a receiver of kind {} was given the ID {:?} of another kind: a bug in the \
                 application's kinds",
                A::kind_name(T::INDEX),
                ctx.id
            )
        };
        let mut narrowed = Context {
            id,
            addr: ctx.addr,
            clock: ctx.clock,
            effects: &mut *ctx.effects,
            timer_seq: &mut *ctx.timer_seq,
            before: &mut *ctx.before,
            kind: PhantomData,
        };
        f(&mut narrowed)
    }
}

impl<T: Kind<A>, A: App> Receiver<A::Id, A::Msg> for KindAdapter<T, A> {
    fn receive(&mut self, ctx: &mut Context<'_, A::Id, A::Msg>, msg: A::Msg) {
        let msg = match T::from_app_msg(msg) {
            Ok(msg) => msg,
            // Routers check a handle's kind against the message's (a `Stale` dead letter), so
            // only a router without the application's kind table can get here.
            Err(_) => panic!(
                "a message for another kind was sent to {:?}, of kind {}: a bug in the \
                 application's kinds",
                ctx.id,
                A::kind_name(T::INDEX)
            ),
        };
        let inner = &mut self.inner;
        Self::narrowed(ctx, |ctx| inner.receive(ctx, msg));
    }

    fn activated(&mut self, ctx: &mut Context<'_, A::Id, A::Msg>) {
        let inner = &mut self.inner;
        Self::narrowed(ctx, |ctx| inner.activated(ctx));
    }

    fn deactivated(&mut self, ctx: &mut Context<'_, A::Id, A::Msg>, why: Deactivation) {
        let inner = &mut self.inner;
        Self::narrowed(ctx, |ctx| inner.deactivated(ctx, why));
    }
}

impl<T: Kind<A>, A: App> fmt::Debug for KindAdapter<T, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindAdapter")
            .field("kind", &A::kind_name(T::INDEX))
            .finish_non_exhaustive()
    }
}

/// How receivers of one kind behave where it differs from the router's [`Config`](crate::Config):
/// `None` takes the router's setting.
///
/// ```
/// use std::time::Duration;
/// use hermes_core::Settings;
///
/// let sessions = Settings::default().idle_timeout(Duration::from_secs(7200)).mailbox_capacity(1000);
/// assert_eq!(sessions.batch_size, None);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// This kind's idle timeout.
    pub idle_timeout: Option<Duration>,
    /// The bound of this kind's mailboxes. Zero counts as one.
    pub mailbox_capacity: Option<usize>,
    /// Most messages one run of this kind handles. Zero counts as one.
    pub batch_size: Option<usize>,
}

impl Settings {
    /// This kind's idle timeout (see [`Config::idle_timeout`](crate::Config::idle_timeout())),
    /// in whole milliseconds as [`Context::set_idle_timeout`](crate::Context::set_idle_timeout):
    /// 2^32 − 2 ms (about 49.7 days) or more means never.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Bounds this kind's mailboxes (see
    /// [`Config::mailbox_capacity`](crate::Config::mailbox_capacity())).
    pub fn mailbox_capacity(mut self, capacity: usize) -> Self {
        self.mailbox_capacity = Some(capacity.max(1));
        self
    }

    /// Most messages one run of this kind handles (see
    /// [`Config::batch_size`](crate::Config::batch_size())).
    pub fn batch_size(mut self, batch: usize) -> Self {
        self.batch_size = Some(batch.max(1));
        self
    }
}

/// Which kind each ID is, and each kind's settings: what a router needs to treat kinds
/// differently. Made by [`Kinds`]; a router gets it from its factory
/// ([`Factory::kinds`](crate::Factory::kinds)).
pub struct KindTable<K> {
    pub(crate) kind_of: fn(&K) -> usize,
    /// The kind of a message of the application (`None` for another type, or a message that
    /// does not name its kind).
    pub(crate) message_kind: fn(&dyn std::any::Any) -> Option<usize>,
    pub(crate) names: Vec<&'static str>,
    pub(crate) settings: Vec<Settings>,
}

impl<K> Clone for KindTable<K> {
    fn clone(&self) -> Self {
        KindTable {
            kind_of: self.kind_of,
            message_kind: self.message_kind,
            names: self.names.clone(),
            settings: self.settings.clone(),
        }
    }
}

impl<K> KindTable<K> {
    /// The kind of `id`.
    pub fn kind_of(&self, id: &K) -> usize {
        (self.kind_of)(id)
    }

    /// The kind of `msg`, if it is a message of this table's application and names its kind
    /// ([`App::message_kind`]).
    pub fn message_kind<M: 'static>(&self, msg: &M) -> Option<usize> {
        (self.message_kind)(msg)
    }

    /// Kind `kind`'s settings.
    pub fn settings(&self, kind: usize) -> Option<&Settings> {
        self.settings.get(kind)
    }
}

impl<K> fmt::Debug for KindTable<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.names.iter().zip(&self.settings))
            .finish()
    }
}

/// A receiver factory erased to the application's types.
type AppFactory<A> =
    Box<dyn Fn(&<A as App>::Id) -> Activation<<A as App>::Id, <A as App>::Msg> + Send + Sync>;

/// The factory of an application with several kinds: one factory and one [`Settings`] per
/// kind, registered with [`kind`](Kinds::kind). Start Hermes with it as with any factory; the
/// handle it returns is typed by the application.
///
/// A library can offer a kind: it defines the ID and message types and a factory generic over
/// any application that has its kind (`where A: App, SessionMsg: Kind<A, Id = SessionId>`),
/// and the application lists the kind in its [`app!`](crate::app) and registers the factory.
///
/// An ID of a kind that has no factory is refused: its messages become dead letters
/// ([`NoReceiver`](crate::DeadLetterReason::NoReceiver)).
pub struct Kinds<A: App> {
    factories: Vec<Option<AppFactory<A>>>,
    settings: Vec<Settings>,
}

impl<A: App> Default for Kinds<A> {
    fn default() -> Self {
        Kinds {
            factories: (0..A::KINDS).map(|_| None).collect(),
            settings: vec![Settings::default(); A::KINDS],
        }
    }
}

impl<A: App> Kinds<A> {
    /// No kind registered yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the factory of kind `T` (the kind whose messages are `T`), with the router's
    /// settings.
    pub fn kind<T, F>(self, factory: F) -> Self
    where
        T: Kind<A>,
        F: Fn(&T::Id) -> Activation<T::Id, T, A> + Send + Sync + 'static,
    {
        self.kind_with(Settings::default(), factory)
    }

    /// Registers the factory of kind `T` with its own `settings`. Registering a kind again
    /// replaces it.
    pub fn kind_with<T, F>(mut self, settings: Settings, factory: F) -> Self
    where
        T: Kind<A>,
        F: Fn(&T::Id) -> Activation<T::Id, T, A> + Send + Sync + 'static,
    {
        let erased: AppFactory<A> = Box::new(move |id: &A::Id| match T::from_app_id(id) {
            Some(id) => match factory(id) {
                Activation::Ready(receiver) => Activation::Ready(T::adapt(receiver)),
                Activation::Refused => Activation::Refused,
                Activation::Failed(e) => Activation::Failed(e),
            },
            None => Activation::Refused,
        });
        if let Some(slot) = self.factories.get_mut(T::INDEX) {
            *slot = Some(erased);
            self.settings[T::INDEX] = settings;
        }
        self
    }
}

impl<A: App> Factory<A::Id, A::Msg> for Kinds<A> {
    type App = A;

    fn create(&self, id: &A::Id) -> Activation<A::Id, A::Msg> {
        match self.factories.get(A::kind_of(id)) {
            Some(Some(factory)) => factory(id),
            _ => {
                tracing::warn!(
                    ?id,
                    kind = A::kind_name(A::kind_of(id)),
                    "no factory registered for this kind: register it with Kinds::kind"
                );
                Activation::Refused
            }
        }
    }

    fn kinds(&self) -> Option<KindTable<A::Id>> {
        Some(KindTable {
            kind_of: A::kind_of,
            message_kind: message_kind_of::<A>,
            names: (0..A::KINDS).map(A::kind_name).collect(),
            settings: self.settings.clone(),
        })
    }
}

impl<A: App> fmt::Debug for Kinds<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let registered: Vec<_> = (0..A::KINDS)
            .filter(|&k| self.factories[k].is_some())
            .map(A::kind_name)
            .collect();
        f.debug_struct("Kinds")
            .field("registered", &registered)
            .finish_non_exhaustive()
    }
}

/// Declares an application with several kinds of receivers.
///
/// `app! { pub app Name(NameId, NameMsg) { Variant(IdType => MsgType), ... } }` defines:
///
/// - `NameId`, an enum with one variant per kind holding that kind's ID (the router's ID type;
///   a dead letter's recipient is one of these);
/// - `NameMsg`, an enum with one variant per kind holding that kind's message;
/// - `Name`, a marker type implementing [`App`], used as the last type parameter of
///   [`Context`], [`Receiver`], [`Activation`] and the handle;
/// - [`Kind<Name>`](Kind) for every message type, which types sends: a message reaches only
///   receivers of its kind, addressed by that kind's ID type.
///
/// Each ID type must be `Clone + Eq + Hash + Debug + Send + 'static`; each message type
/// `Send + 'static` and belong to exactly one kind. See [`Kinds`](crate::Kinds) for an example.
///
/// Attributes written after the types' names go on both enums: a cluster needs IDs and
/// messages that serialize, `pub app Bank(BankId, BankMsg) #[derive(Serialize, Deserialize)] {
/// .. }` (each kind's ID and message types must then serialize too).
#[macro_export]
macro_rules! app {
    (
        $(#[$meta:meta])*
        $vis:vis app $app:ident($id:ident, $msg:ident) $(#[$sum_meta:meta])* {
            $($variant:ident($kind_id:ty => $kind_msg:ty)),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis struct $app;

        #[doc = concat!("The ID of a receiver of [`", stringify!($app), "`]: one variant per kind.")]
        #[derive(Clone, Debug, PartialEq, Eq, Hash)]
        $(#[$sum_meta])*
        $vis enum $id {
            $(
                #[doc = concat!("A receiver of kind ", stringify!($variant), ".")]
                $variant($kind_id),
            )+
        }

        #[doc = concat!("A message for a receiver of [`", stringify!($app), "`]: one variant per kind.")]
        $(#[$sum_meta])*
        $vis enum $msg {
            $(
                #[doc = concat!("A message for kind ", stringify!($variant), ".")]
                $variant($kind_msg),
            )+
        }

        impl ::std::fmt::Debug for $msg {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                match self {
                    $(Self::$variant(_) => f.write_str(concat!(stringify!($variant), "(..)")),)+
                }
            }
        }

        impl $crate::App for $app {
            type Id = $id;
            type Msg = $msg;
            const KINDS: usize = [$(stringify!($variant)),+].len();

            fn kind_of(id: &$id) -> usize {
                $crate::__app_index!(id, $id; 0usize; $($variant)+)
            }

            fn kind_name(kind: usize) -> &'static str {
                [$(stringify!($variant)),+].get(kind).copied().unwrap_or("unknown")
            }

            fn message_kind(msg: &$msg) -> ::std::option::Option<usize> {
                ::std::option::Option::Some($crate::__app_index!(msg, $msg; 0usize; $($variant)+))
            }
        }

        $crate::__app_kinds!($app, $id, $msg; 0usize; $($variant($kind_id => $kind_msg))+);
    };
}

/// Implementation detail of [`app!`]: the kind index of an application ID or message.
#[doc(hidden)]
#[macro_export]
macro_rules! __app_index {
    ($value:expr, $id:ident; $n:expr; $variant:ident $($rest:ident)*) => {
        match $value {
            $id::$variant(_) => $n,
            #[allow(unreachable_patterns)]
            _ => $crate::__app_index!($value, $id; $n + 1usize; $($rest)*),
        }
    };
    ($value:expr, $id:ident; $n:expr;) => {
        $n
    };
}

/// Implementation detail of [`app!`]: `Kind` for each kind's message type.
#[doc(hidden)]
#[macro_export]
macro_rules! __app_kinds {
    ($app:ident, $id:ident, $msg:ident; $n:expr;
     $variant:ident($kind_id:ty => $kind_msg:ty) $($rest:tt)*) => {
        impl $crate::Kind<$app> for $kind_msg {
            type Id = $kind_id;
            const INDEX: usize = $n;

            #[inline]
            fn into_app_id(id: $kind_id) -> $id {
                $id::$variant(id)
            }

            #[inline]
            fn into_app_msg(self) -> $msg {
                $msg::$variant(self)
            }

            #[inline]
            fn from_app_id(id: &$id) -> ::std::option::Option<&$kind_id> {
                match id {
                    $id::$variant(id) => ::std::option::Option::Some(id),
                    #[allow(unreachable_patterns)]
                    _ => ::std::option::Option::None,
                }
            }

            #[inline]
            fn from_app_msg(msg: $msg) -> ::std::result::Result<Self, $msg> {
                match msg {
                    $msg::$variant(msg) => ::std::result::Result::Ok(msg),
                    #[allow(unreachable_patterns)]
                    other => ::std::result::Result::Err(other),
                }
            }

            fn adapt(
                receiver: ::std::boxed::Box<dyn $crate::Receiver<$kind_id, Self, $app>>,
            ) -> ::std::boxed::Box<dyn $crate::Receiver<$id, $msg>> {
                ::std::boxed::Box::new($crate::KindAdapter::<Self, $app>::new(receiver))
            }
        }

        $crate::__app_kinds!($app, $id, $msg; $n + 1usize; $($rest)*);
    };
    ($app:ident, $id:ident, $msg:ident; $n:expr;) => {};
}
