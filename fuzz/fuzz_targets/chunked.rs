//! cargo fuzz target: a chunked request body, decoded by the node and by hyper (strait_node::fuzz::fuzz_chunked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strait_node::fuzz::fuzz_chunked(data));
