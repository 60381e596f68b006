//! cargo fuzz target: a JSON document: the hand scanner against serde_json (strait_node::fuzz::fuzz_json).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strait_node::fuzz::fuzz_json(data));
