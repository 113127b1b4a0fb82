//! Request/reply for Hermes, with any executor or none.
//!
//! A request carries a [`Reply`]; the asker keeps the [`Asked`], a `Future` of the answer that
//! can also be waited on from a thread ([`Asked::wait_timeout`]). A [`Reply`] dropped
//! unanswered answers [`AskError::Dropped`], so an asker never waits for a request that was
//! lost. Receivers answer from any later message; receivers that ask each other get the
//! answer as a message (`Context::ask` in `hermes-core`), never by blocking.
//!
//! ```
//! use hermes_reply::{AskError, Reply};
//!
//! let (reply, asked) = Reply::new();
//! std::thread::spawn(move || reply.send(42).unwrap());
//! assert_eq!(asked.wait(), Ok(42));
//!
//! let (reply, asked) = Reply::<u8>::new();
//! drop(reply);
//! assert_eq!(asked.wait(), Err(AskError::Dropped));
//! ```
//!
//! The two building blocks are public for the executors: [`Signal`], a value set once that
//! threads wait for and futures poll, and [`poll_briefly`], a short wait without sleeping.

#![warn(missing_debug_implementations)]

mod reply;
mod signal;
mod spin;
#[cfg(feature = "serde")]
pub mod wire;

pub use reply::{AskError, Asked, Expiry, Reply};
pub use signal::Signal;
pub use spin::poll_briefly;
