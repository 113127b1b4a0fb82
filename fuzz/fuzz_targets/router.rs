//! Decodes the input into a plan of operations on one or two routers (hermes-check): receivers
//! of up to three kinds with their own settings, sending and asking each other, starting work
//! the driver runs, polls late or never and gives back (or not); fails on the first broken
//! routing invariant or disagreement with the reference model.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = hermes_check::check_bytes(data) {
        panic!("{violation}");
    }
});
