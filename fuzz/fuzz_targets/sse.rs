//! cargo fuzz target: an event stream cut into pieces, split by the node and read by
//! the WHATWG rules (strait_node::fuzz::fuzz_sse). The first byte says how many cut
//! offsets (one byte each) come before the stream.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 8).min(rest.len());
    let (cuts, stream) = rest.split_at(n);
    let cuts: Vec<usize> = cuts.iter().map(|&c| usize::from(c)).collect();
    strait_node::fuzz::fuzz_sse(stream, &cuts);
});
