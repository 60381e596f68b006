//! cargo fuzz target: a header block: the node's raw fields against http::HeaderMap (strait_node::fuzz::fuzz_headers).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strait_node::fuzz::fuzz_headers(data));
