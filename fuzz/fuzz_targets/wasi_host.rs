#![no_main]
//! See `bx3_node::fuzzing::wasi_host`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bx3_node::fuzzing::wasi_host(data));
