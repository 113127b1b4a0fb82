//! Hermes routes messages to receivers addressed by application IDs.
//!
//! This facade re-exports [`hermes_core`] and, by feature, the executors.

pub use hermes_core::*;
