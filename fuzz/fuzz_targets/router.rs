//! Decodes the input into a plan of operations on one or two routers (hermes-check) and fails on
//! the first broken routing invariant.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = hermes_check::check_bytes(data) {
        panic!("{violation}");
    }
});
