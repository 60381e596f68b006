//! cargo fuzz target: one client connection's bytes, read by the node and by hyper's server (strait_node::fuzz::fuzz_http1_head).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strait_node::fuzz::fuzz_http1_head(data));
