//! Handles are not typed by kind: a message of one kind sent by the handle of a receiver of
//! another kind is refused (`Stale`), from outside and from a receiver, and never reaches it.

use std::time::Instant;

use hermes_core::{
    Activation, Addr, Context, DeadLetterReason, Driver, Kinds, Recipient, SendError,
};

/// A cat.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CatId(u8);
/// What cats take.
#[derive(Debug)]
pub enum CatMsg {
    /// A cat's message.
    Meow,
    /// Send a `Meow` to this handle.
    Pass(Addr),
}

/// A dog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DogId(u8);
/// What dogs take.
#[derive(Debug)]
pub enum DogMsg {
    /// A dog's message.
    Woof,
}

hermes_core::app! {
    /// Cats and dogs.
    pub app Pets(PetId, PetMsg) {
        Cat(CatId => CatMsg),
        Dog(DogId => DogMsg),
    }
}

#[test]
fn a_message_by_the_handle_of_another_kind_is_refused_as_stale() {
    let kinds = Kinds::<Pets>::new()
        .kind(|_: &CatId| {
            Activation::ready(|ctx: &mut Context<'_, CatId, CatMsg, Pets>, msg| {
                if let CatMsg::Pass(addr) = msg {
                    ctx.send_to(addr, CatMsg::Meow); // a cat's message to a dog's handle
                }
            })
        })
        .kind(|_: &DogId| Activation::ready(|_: &mut Context<'_, DogId, DogMsg, Pets>, _| {}));
    let mut driver = Driver::new(hermes_core::Config::default(), kinds);
    let now = Instant::now();
    driver.send(DogId(1), DogMsg::Woof).unwrap();
    driver.run(now);
    let dog = driver
        .router()
        .addr(&PetId::Dog(DogId(1)))
        .expect("the dog is live");
    assert!(matches!(
        driver.router_mut().send_to(dog, PetMsg::Cat(CatMsg::Meow)),
        Err(SendError::Stale(PetMsg::Cat(CatMsg::Meow)))
    ));
    driver.send(CatId(1), CatMsg::Pass(dog)).unwrap();
    driver.run(now);
    let letter = driver.poll_dead_letter().expect("a dead letter");
    assert_eq!(letter.reason, DeadLetterReason::Stale);
    assert_eq!(letter.recipient, Recipient::Addr(dog));
    assert!(matches!(letter.message, Some(PetMsg::Cat(CatMsg::Meow))));
    // The dog's own messages by handle still reach it.
    driver
        .router_mut()
        .send_to(dog, PetMsg::Dog(DogMsg::Woof))
        .unwrap();
    driver.run(now);
    let stats = driver.router().stats();
    assert_eq!((stats.messages_delivered, stats.deactivations), (3, 0));
}
