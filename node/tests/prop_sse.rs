//! The SSE splitter and scanner held to the WHATWG event-stream rules (a small
//! reference in `strait_node::fuzz`) on generated streams cut into arbitrary pieces,
//! through the fuzz entry point `fuzz_sse`. `PROPTEST_CASES=100000` runs longer.

mod prop_common;

use prop_common::*;
use proptest::prelude::*;
use strait_node::fuzz::{fuzz_sse, whatwg_events};

/// One line of an event stream, its end included (LF mostly, CRLF often).
fn line(bare_cr: bool) -> impl Strategy<Value = Vec<u8>> {
    let end = if bare_cr {
        pick(&["\n", "\r\n", "\r"]).boxed()
    } else {
        prop_oneof![3 => pick(&["\n"]), 1 => pick(&["\r\n"])].boxed()
    };
    let text = prop_oneof![
        4 => pick(&[
            "event: message_start", "event: content_block_delta", "event: message_stop",
            "event: error", "event: ping", "event:error", "event:  error", "event: error ",
            "event:", "event", "event: \u{e9}", "event: \u{ff}\u{fe}",
        ]),
        4 => pick(&[
            "data: {}", "data: {\"type\":\"error\"}", "data:x", "data:  two", "data:", "data",
            "data: a:b",
        ]),
        1 => pick(&[": ping", ":", "id: 1", "retry: 10", "x", " data: y", "DATA: z", "", ""]),
        1 => prop::collection::vec(any::<u8>(), 0..6),
    ];
    (text, end).prop_map(|(t, e)| [t, e].concat())
}

fn stream(bare_cr: bool) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(line(bare_cr), 0..16).prop_map(|lines| lines.concat())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn streams_split_into_the_events_the_rules_dispatch(
        s in stream(false),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        fuzz_sse(&s, &cuts);
    }

    #[test]
    fn streams_with_bare_cr_are_passed_whole_and_cut_only_between_events(
        s in stream(true),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        fuzz_sse(&s, &cuts);
    }

    #[test]
    fn arbitrary_bytes_are_passed_whole(
        s in prop::collection::vec(
            prop_oneof![3 => prop::sample::select(&b"\r\n:evntdaz "[..]), 1 => any::<u8>()],
            0..64,
        ),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        fuzz_sse(&s, &cuts);
    }
}

/// The reference itself, on the examples the WHATWG text gives.
#[test]
fn the_reference_dispatches_as_the_standard_shows() {
    let r = whatwg_events(b"data: YHOO\ndata: +2\ndata: 10\n\n");
    assert_eq!(r.events.len(), 1);
    assert_eq!(r.events[0].data, b"YHOO");
    assert_eq!(r.blanks, [30]);
    // A comment alone dispatches nothing; `data` without a colon is empty data.
    let r = whatwg_events(b": test stream\n\ndata\n\ndata:\n\n");
    assert_eq!(r.events.len(), 2);
    assert!(r.events.iter().all(|e| e.data.is_empty()));
    assert_eq!(r.ends, [15, 21, 28]);
    // CR, LF and CRLF all end lines; a type is read with one leading space dropped.
    let r = whatwg_events(b"\nevent:  x\rdata: 1\r\n\revent\ndata: 2\n\n");
    assert_eq!(r.events[0].name.as_deref(), Some(" x"));
    assert_eq!(r.events[1].name.as_deref(), Some("message"));
    assert_eq!(r.blanks, [1, 21, 36]);
    assert_eq!(r.ends, [21, 36]);
}

/// Streams the properties once found the node splitting or reading otherwise than
/// the rules (each fixed in sse.rs), cut at every offset.
#[test]
fn streams_found_by_the_properties_split_as_the_rules_say() {
    for s in REGRESSIONS {
        for cut in 0..=s.len() {
            fuzz_sse(s, &[cut]);
        }
    }
}

const REGRESSIONS: &[&[u8]] = &[
    // An LF then a CRLF ends an event (the splitter held it back).
    b"event: ping\ndata: {}\n\r\nevent: message_stop\ndata: {}\n\r\n",
    // Events without data are not dispatched: the error is the first event.
    b": comment\n\nevent: error\r\n\r\nevent: error\ndata: {\"type\":\"error\"}\n\n",
    // One leading space only; a field without a colon.
    b"event:  error\ndata:x\n\nevent\ndata\n\n",
];
