//! What the public API promises about its types, checked at compile time: the handle and the
//! reply types cross threads, and every error converts into `Box<dyn Error + Send + Sync>` (so
//! `?` works in any application) with a message that says what to do.

use std::error::Error;
use std::fmt::Debug;

use hermes::{
    AskError, Asked, DeadLetter, DeadLetterReason, Finished, Hermes, Options, Reply, SendError,
    SendErrorKind, StartError, Stats, WouldDeadlock,
};

fn send_sync<T: Send + Sync>() {}
fn send<T: Send>() {}
fn error<T: Error + Send + Sync + 'static>() {}
fn debug<T: Debug>() {}

#[test]
fn handles_and_replies_cross_threads() {
    send_sync::<Hermes<u64, String>>();
    send_sync::<Finished>();
    send_sync::<Stats>();
    send::<Reply<u64>>();
    send::<Asked<u64>>();
    send::<Options<u64, String>>();
    send::<DeadLetter<u64, String>>();
}

#[test]
fn errors_are_typed_and_box_into_dyn_error() {
    error::<SendError<String>>();
    error::<AskError>();
    error::<StartError>();
    error::<WouldDeadlock>();
    error::<hermes::FactoryError>();
    #[cfg(feature = "store")]
    error::<hermes::store::StoreError>();
    debug::<DeadLetterReason>();
    debug::<SendErrorKind>();
    // `?` from a send into an application's error type, the message kept.
    let failed = || -> Result<(), Box<dyn Error + Send + Sync>> {
        Err(SendError::Full("m".to_string()))?;
        Ok(())
    };
    let message = failed().unwrap_err().to_string();
    assert!(
        message.contains("retry later or raise mailbox_capacity"),
        "{message}"
    );
    assert!(AskError::Timeout.to_string().contains("timeout"));
}
