#![no_main]
//! See `bx3_node::fuzzing::rpc`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bx3_node::fuzzing::rpc(data));
