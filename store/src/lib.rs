//! Durable stores for Hermes receivers.
