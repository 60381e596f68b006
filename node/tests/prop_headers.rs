//! Header field handling held to `http::HeaderMap` (the raw fields of an HTTP/1.1
//! head answer every lookup as a map of the same fields does, and are written back
//! unchanged), and the JSON scanner's fuzz entry point, on generated and arbitrary
//! input (`fuzz_headers`, `fuzz_json`). `PROPTEST_CASES=100000` runs longer.

mod prop_common;

use prop_common::*;
use proptest::prelude::*;
use strait_node::fuzz::{fuzz_headers, fuzz_json};

/// Names that share lengths (the raw lookup's first filter), differ in case only,
/// repeat, or are 64 bytes longer than another (the same length bit).
fn name() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(&[
            "host", "Host", "HOST", "x-api-key", "X-Api-Key", "accept", "Accept", "connection",
            "content-type", "authorization", "anthropic-beta", "a", "b", "ab", "x-api-kez",
            "anthropic-version",
        ][..]).prop_map(|s| s.as_bytes().to_vec()),
        1 => (1usize..3, 0usize..2).prop_map(|(len, wide)| vec![b'k'; len + 64 * wide]),
        1 => prop::collection::vec(any::<u8>(), 1..4),
    ]
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => prop::sample::select(&[
            "v", "", "a b", "k1", "text/event-stream", "close, keep-alive", " padded ", "\t",
        ][..]).prop_map(|s| s.as_bytes().to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..6),
    ]
}

fn block() -> impl Strategy<Value = Vec<u8>> {
    let line = (
        name(),
        prop::sample::select(&[": ", ":", ":\t", " : "][..]),
        value(),
        prop_oneof![6 => Just("\r\n"), 1 => Just("\n")],
    )
        .prop_map(|(n, sep, v, end)| [n, sep.into(), v, end.into()].concat());
    prop::collection::vec(line, 0..10).prop_map(|lines| lines.concat())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn raw_fields_answer_as_a_header_map(b in block()) {
        fuzz_headers(&b);
    }

    #[test]
    fn arbitrary_header_blocks_answer_as_a_header_map(
        b in prop::collection::vec(
            prop_oneof![3 => prop::sample::select(&b"aA:\r\n \t-k"[..]), 1 => any::<u8>()],
            0..48,
        ),
    ) {
        fuzz_headers(&b);
    }

    #[test]
    fn json_is_skipped_only_where_serde_reads_it(
        doc in prop::collection::vec(
            prop::sample::select(&b"{}[]\",:\\ 0159-.eEtrufalsn\x01\xc3"[..]),
            0..32,
        ),
    ) {
        fuzz_json(&doc);
    }
}

/// Every field of a real request, found whatever the case it is asked in.
#[test]
fn a_messages_request_head_answers_as_a_map() {
    fuzz_headers(
        b"Host: api.example\r\nX-Api-Key: k\r\nanthropic-version: 2023-06-01\r\n\
          Content-Type: application/json\r\naccept: a\r\nAccept: b\r\n",
    );
    fuzz_json(br#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#);
}
