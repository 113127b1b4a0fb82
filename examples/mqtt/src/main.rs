//! The `hermes-mqtt` broker binary.

fn main() {}
