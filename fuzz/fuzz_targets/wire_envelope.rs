#![no_main]
//! See `bx3_node::fuzzing::wire_envelope`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bx3_node::fuzzing::wire_envelope(data));
