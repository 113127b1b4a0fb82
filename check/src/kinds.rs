//! Kinds in the checker's world: the IDs split into three kinds, each with its own settings.
//!
//! A router learns kinds from a [`KindTable`], which only [`Kinds`] makes, from an [`App`]. The
//! checker's application is [`CheckApp`]: its IDs and messages are the checker's own [`Id`] and
//! [`Msg`] (so the scripted receivers stay as they are), and ID `n` is of kind `n % 3`. Each kind
//! is a [`Kind`] of it, [`Of<N>`], a message of the world seen as one of kind `N`, as an
//! application with a message type per kind would declare it. The table comes from
//! `Kinds::<CheckApp>`, registered kind by kind with each kind's [`Settings`], as a real
//! application's does. The world's factory is its own (each activation gets its instance number
//! and hooks), so the factories registered here are never called.

use hermes_core::{
    Activation, App, Factory, Kind, KindAdapter, KindTable, Kinds, Receiver, Settings,
};

use crate::script::{Id, Msg};

/// How many kinds the checker's world has.
pub const KINDS: usize = 3;

/// The checker's application: the world's IDs in [`KINDS`] kinds, ID `n` of kind `n % 3`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CheckApp;

impl App for CheckApp {
    type Id = Id;
    type Msg = Msg;
    const KINDS: usize = KINDS;

    fn kind_of(id: &Id) -> usize {
        kind_of(*id)
    }

    fn kind_name(kind: usize) -> &'static str {
        ["kind-0", "kind-1", "kind-2"]
            .get(kind)
            .copied()
            .unwrap_or("unknown")
    }
}

/// The kind of `id`: `id % 3`.
pub fn kind_of(id: Id) -> usize {
    usize::from(id.0) % KINDS
}

/// A message of the world as one for kind `N` of [`CheckApp`].
#[derive(Debug)]
pub struct Of<const N: usize>(pub Msg);

impl<const N: usize> Kind<CheckApp> for Of<N> {
    type Id = Id;
    const INDEX: usize = N;

    fn into_app_id(id: Id) -> Id {
        id
    }

    fn into_app_msg(self) -> Msg {
        self.0
    }

    fn from_app_id(id: &Id) -> Option<&Id> {
        (kind_of(*id) == N).then_some(id)
    }

    fn from_app_msg(msg: Msg) -> Result<Self, Msg> {
        Ok(Of(msg))
    }

    fn adapt(receiver: Box<dyn Receiver<Id, Self, CheckApp>>) -> Box<dyn Receiver<Id, Msg>> {
        Box::new(KindAdapter::<Self, CheckApp>::new(receiver))
    }
}

/// The kind table of a world whose kinds have `settings` (kind by kind; missing ones take the
/// router's config), made as an application's factory makes it.
pub(crate) fn table(settings: &[Settings]) -> KindTable<Id> {
    let of = |k: usize| settings.get(k).cloned().unwrap_or_default();
    let kinds = Kinds::<CheckApp>::new()
        .kind_with::<Of<0>, _>(of(0), never)
        .kind_with::<Of<1>, _>(of(1), never)
        .kind_with::<Of<2>, _>(of(2), never);
    Factory::kinds(&kinds).expect("an application with several kinds has a kind table")
}

/// The factory registered for each kind: never called (the world activates receivers itself).
fn never<T>(_: &Id) -> Activation<Id, T, CheckApp> {
    Activation::Refused
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn the_table_has_each_kinds_settings() {
        let short = Settings::default().idle_timeout(Duration::from_millis(4));
        let table = table(&[Settings::default(), short.clone()]);
        assert_eq!(table.kind_of(&Id(4)), 1);
        assert_eq!(table.kind_of(&Id(6)), 0);
        assert_eq!(table.settings(1), Some(&short));
        assert_eq!(table.settings(2), Some(&Settings::default()));
    }
}
