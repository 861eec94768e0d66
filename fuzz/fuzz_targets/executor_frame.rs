#![no_main]
//! See `bx3_node::fuzzing::executor_frame`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| bx3_node::fuzzing::executor_frame(data));
