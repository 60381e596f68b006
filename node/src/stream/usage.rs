//! Token usage read from a non-streaming Messages reply without changing a byte:
//! found from the end of the document where Anthropic puts it, read by hand when it
//! is plain, and by serde otherwise.

use bytes::Bytes;
use serde::Deserialize;

use crate::json_scan::{escaped_at, top_level_value, top_level_value_from_end, Scanner};
use crate::meta::Usage;

pub fn parse_json_usage(chunks: &[Bytes]) -> Option<Usage> {
    let joined;
    let json: &[u8] = if chunks.len() == 1 {
        &chunks[0]
    } else {
        joined = chunks.concat();
        &joined
    };
    if let Some(usage) = usage_at_end(json) {
        return Some(usage);
    }
    // Only the top-level `usage` object is parsed: running serde over the whole reply
    // (content included) cost more than the rest of the response path.
    let value = match top_level_value_from_end(json, b"usage")
        .or_else(|| top_level_value(json, b"usage"))
    {
        Some(value) => value,
        // A key spelled with escapes (`"\u0075sage"`) is `usage` to serde, but the
        // searches compare raw bytes: such a document goes to serde whole.
        None if memchr::memmem::find(json, b"\\u").is_some() => return usage_by_serde(json),
        None => return None,
    };
    if let Some(usage) = flat_usage(value) {
        return Some(usage);
    }
    let mut de = serde_json::Deserializer::from_slice(value);
    Option::<Usage>::deserialize(&mut de).ok()?
}

/// The top-level `usage` of a whole reply, read by serde (other members skipped).
fn usage_by_serde(json: &[u8]) -> Option<Usage> {
    #[derive(Deserialize)]
    struct Reply {
        #[serde(default)]
        usage: Option<Usage>,
    }
    serde_json::from_slice::<Reply>(json).ok()?.usage
}

/// The usage object read by hand when its values are integers, strings, nulls and
/// objects of those (Anthropic nests `cache_creation` and `server_tool_use` one level
/// deep); `None` for anything else, and for anything serde would refuse (a null or
/// repeated count), which then goes to serde. The derive's field matching was the
/// larger part of the relay's cost per request.
fn flat_usage(v: &[u8]) -> Option<Usage> {
    let mut usage = Usage::default();
    object(&mut Scanner::new(v), Some(&mut usage))?;
    Some(usage)
}

/// The top-level `usage` when it is the last member of the document, as Anthropic
/// sends it. The object is found by counting braces back from the document's end (a
/// brace inside a string can mislead that, but only into a place the checks below
/// refuse); it must follow the key `"usage"` (its quote not escaped) and `:`, read
/// whole by [`flat_usage`]'s scan, and be followed only by the document's closing brace.
/// In valid JSON an unescaped quote followed by `usage"` opens a key (after a closing
/// quote only `,:}]` may follow), and an object whose close is the document's last
/// byte is the document itself. `None` for anything else, which goes to the scans
/// below.
fn usage_at_end(json: &[u8]) -> Option<Usage> {
    let doc = json.trim_ascii();
    if doc.first() != Some(&b'{') || doc.last() != Some(&b'}') {
        return None;
    }
    let mut depth = 0u32;
    let mut at = doc.len() - 1;
    let open = loop {
        at = memchr::memrchr2(b'{', b'}', &doc[..at])?;
        if doc[at] == b'}' {
            depth += 1;
        } else if depth <= 1 {
            break at;
        } else {
            depth -= 1;
        }
    };
    let key = doc[..open]
        .trim_ascii_end()
        .strip_suffix(b":")?
        .trim_ascii_end()
        .strip_suffix(b"\"usage\"")?;
    if escaped_at(key, key.len()) {
        return None;
    }
    let mut usage = Usage::default();
    let mut s = Scanner { b: doc, i: open };
    object(&mut s, Some(&mut usage))?;
    (doc[s.i..].trim_ascii() == b"}").then_some(usage)
}

/// The JSON object at the cursor, read by hand: members whose values are unsigned
/// integers, strings or nulls, and (for the usage object itself, `usage` is `Some`)
/// objects of those, skipped. The usage counts are stored into `usage`; a null,
/// repeated or non-integer count is `None`, as is anything the scan does not cover
/// (keys with escapes or non-ASCII bytes, say: serde decides).
fn object(s: &mut Scanner, mut usage: Option<&mut Usage>) -> Option<()> {
    let mut seen = 0u8;
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
        return Some(());
    }
    let nested = usage.is_some();
    loop {
        let key = s.plain_string()?;
        let field = match (key, usage.as_deref_mut()) {
            (b"input_tokens", Some(u)) => Some((0, &mut u.input_tokens)),
            (b"output_tokens", Some(u)) => Some((1, &mut u.output_tokens)),
            (b"cache_creation_input_tokens", Some(u)) => {
                Some((2, &mut u.cache_creation_input_tokens))
            }
            (b"cache_read_input_tokens", Some(u)) => Some((3, &mut u.cache_read_input_tokens)),
            _ => None,
        };
        s.ws();
        s.eat(b':')?;
        s.ws();
        match (s.peek()?, field) {
            (b'0'..=b'9', field) => {
                // Past 19 digits the count may overflow: serde decides.
                let n = s.uint()?;
                if let Some((bit, slot)) = field {
                    if seen & (1 << bit) != 0 {
                        return None;
                    }
                    seen |= 1 << bit;
                    *slot = n;
                }
            }
            (b'n', None) => s.literal(b"null")?,
            (b'"', None) => s.string()?,
            (b'{', None) if nested => object(s, None)?,
            _ => return None,
        }
        s.ws();
        match s.byte()? {
            b',' => s.ws(),
            b'}' => return Some(()),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_key_spelled_with_escapes_is_read_as_serde_reads_it() {
        let reply = br#"{"id":"m","\u0075sage":{"input_tokens":5,"output_tokens":7},"x":"\u00e9"}"#;
        let serde: serde_json::Value = serde_json::from_slice(reply).unwrap();
        let want = Option::<Usage>::deserialize(&serde["usage"]).unwrap();
        assert_eq!(
            want.map(|u| (u.input_tokens, u.output_tokens)),
            Some((5, 7))
        );
        assert_eq!(parse_json_usage(&[Bytes::from_static(reply)]), want);
    }

    #[test]
    fn hand_read_usage_agrees_with_serde() {
        let serde = |v: &str| {
            let mut de = serde_json::Deserializer::from_slice(v.as_bytes());
            Option::<Usage>::deserialize(&mut de).ok().flatten()
        };
        for v in [
            r#"{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"output_tokens":10}}"#,
            r#"{ "input_tokens" : 5 , "output_tokens": 7, "service_tier": "standard", "server_tool_use": null }"#,
            r#"{"input_tokens":1,"note":"a \" quoted } brace","output_tokens":2}"#,
            r#"{}"#,
            r#"{"output_tokens":3}, "x": 1}"#,
            // As Anthropic sends it today: nested cache_creation, service_tier last.
            r#"{"input_tokens":12,"cache_creation_input_tokens":5,"cache_read_input_tokens":3,"cache_creation":{"ephemeral_5m_input_tokens":5,"ephemeral_1h_input_tokens":0},"output_tokens":10,"service_tier":"standard"}"#,
            r#"{"input_tokens":1,"server_tool_use":{ "web_search_requests" : 2 , "x": null, "y": "}" },"output_tokens":2}"#,
            r#"{"input_tokens":1,"cache_creation":{},"output_tokens":2}"#,
        ] {
            assert_eq!(flat_usage(v.as_bytes()), serde(v), "{v}");
            assert!(flat_usage(v.as_bytes()).is_some(), "{v}");
        }
        // Shapes left to serde (and what serde makes of them).
        for v in [
            r#"{"input_tokens":1,"cache_creation":{"a":{"b":0}},"output_tokens":2}"#,
            r#"{"input_tokens":1,"cache_creation":{"a":true},"output_tokens":2}"#,
            r#"{"input_tokens":{"a":1},"output_tokens":2}"#,
            r#"{"input_tokens":1,"cache_creation":{"a":1}"#,
            r#"{"input_tokens":null,"output_tokens":2}"#,
            r#"{"input_tokens":1,"input_tokens":2}"#,
            r#"{"input_tokens":1.5}"#,
            r#"{"input_tokens":-1}"#,
            r#"{"input_tokens":99999999999999999999}"#,
            r#"{"flag":true,"output_tokens":2}"#,
            r#"null"#,
            r#"{"input_tokens":1"#,
        ] {
            assert_eq!(flat_usage(v.as_bytes()), None, "{v}");
        }
        assert_eq!(
            serde(r#"{"input_tokens":1,"cache_creation":{"x":0},"output_tokens":2}"#),
            Some(Usage {
                input_tokens: 1,
                output_tokens: 2,
                ..Default::default()
            })
        );
    }

    /// The hand reading once took usage objects serde refuses (found by the property
    /// tests): a count with a leading zero, a key with a control character or bytes
    /// that are not UTF-8, a string with an invalid escape or a control character.
    /// serde decides them now, and refuses them.
    #[test]
    fn usage_serde_refuses_is_not_read_by_hand() {
        for v in [
            &br#"{"input_tokens":05}"#[..],
            br#"{"input_tokens":1,"cache_creation":{"a":01}}"#,
            b"{\"input_tokens\":1,\"\xff\":2}",
            b"{\"input_tokens\":1,\"a\x19\":2}",
            br#"{"input_tokens":1,"service_tier":"\x"}"#,
            b"{\"input_tokens\":1,\"service_tier\":\"a\tb\"}",
        ] {
            let mut de = serde_json::Deserializer::from_slice(v);
            assert!(Option::<Usage>::deserialize(&mut de).is_err());
            assert_eq!(flat_usage(v), None, "{}", String::from_utf8_lossy(v));
            let mut doc = b"{\"id\":\"m\",\"usage\":".to_vec();
            doc.extend_from_slice(v);
            doc.push(b'}');
            assert_eq!(parse_json_usage(&[Bytes::from(doc)]), None);
        }
        // Valid, but not plain: serde reads it.
        let doc =
            "{\"usage\":{\"input_tokens\":3,\"tier\":\"\u{e9}\",\"cl\u{e9}\":1,\"a\\u0062\":2}}";
        let usage = parse_json_usage(&[Bytes::from(doc)]).unwrap();
        assert_eq!(usage.input_tokens, 3);
    }

    #[test]
    fn usage_is_read_from_the_top_level_only() {
        let reply = br#"{"id":"m","content":[{"type":"tool_use","input":{"usage":{"input_tokens":999},"q":"a \"usage\": {\"input_tokens\": 7} ]}"}}],"usage":{"input_tokens":12,"output_tokens":10},"x":1}"#;
        let usage = parse_json_usage(&[Bytes::from_static(reply)]).unwrap();
        assert_eq!((usage.input_tokens, usage.output_tokens), (12, 10));
        let (a, b) = reply.split_at(40);
        let split = [Bytes::copy_from_slice(a), Bytes::copy_from_slice(b)];
        assert_eq!(parse_json_usage(&split), Some(usage));
        assert_eq!(
            parse_json_usage(&[Bytes::from_static(b"{\"usage\":null}")]),
            None
        );
        assert_eq!(
            parse_json_usage(&[Bytes::from_static(b"{\"a\":{\"usage\":{}}}")]),
            None
        );
        assert_eq!(
            parse_json_usage(&[Bytes::from_static(b"{\"usage\":{\"inp")]),
            None
        );
        assert_eq!(
            parse_json_usage(&[Bytes::from_static(b"\"unterminated \\")]),
            None
        );
        assert_eq!(
            parse_json_usage(&[Bytes::from_static(b"}}{\"usage\":{}}")]),
            None
        );
    }

    #[test]
    fn the_search_from_the_end_agrees_with_the_forward_scan() {
        for doc in [
            &br#"{"id":"m","content":[{"text":"} "usage": {"}],"usage":{"input_tokens":3},"x":"\"}"#[..],
            br#"{"usage":{"input_tokens":1},"content":[{"usage":{"input_tokens":2}}]}"#,
            br#" {"a":{"usage":5},"b":"usage","usage" : {"output_tokens":4}} "#,
            br#"{"a":{"usage":5}}"#,
            br#"{"usage":null}"#,
        ] {
            assert_eq!(
                top_level_value_from_end(doc, b"usage").map(|v| v.trim_ascii_end()),
                top_level_value(doc, b"usage").map(|v| v.trim_ascii_end()),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
        assert!(top_level_value_from_end(br#"{"usage":{"inp"#, b"usage").is_none());
    }

    #[test]
    fn usage_found_at_the_end_agrees_with_the_scans() {
        let docs: [&[u8]; 15] = [
            br#"{"id":"m","content":[{"text":"a \"usage\": {\"input_tokens\":9}}"}],"usage":{"input_tokens":3,"output_tokens":4}}"#,
            br#"{"usage":{"input_tokens":1},"content":[{"usage":{"input_tokens":2}}]}"#,
            br#" {"a":{"usage":5},"b":"usage","usage" : {"output_tokens":4} } "#,
            br#"{"a":{"usage":{"input_tokens":7}}}"#,
            br#"{"a":"usage"}"#,
            br#"{"x":["usage",{"input_tokens":1}]}"#,
            br#"{"usage":{"input_tokens":1},"usage":{"input_tokens":2}}"#,
            br#"{"usage":null}"#,
            br#"{"usage":{"input_tokens":1,"server_tool_use":{"web_search_requests":1}}}"#,
            br#"{"usage":{"input_tokens":1}"#,
            br#"{"x\"usage":{"input_tokens":1}}"#,
            br#"{"usage":{"input_tokens":1,"service_tier":"{x"}}"#,
            br#"{"id":"m","content":[{"type":"text","text":"x"}],"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":10,"service_tier":"standard"}}"#,
            br#"{"usage":{"input_tokens":1},"t":"\"usage\":{\"input_tokens\":9}"}"#,
            br#"{"usage":{"input_tokens":1,"cache_creation":{"a":{"b":1}}}}"#,
        ];
        for doc in docs {
            let chunks = [Bytes::from_static(doc)];
            if let Some(fast) = usage_at_end(doc) {
                let value = top_level_value_from_end(doc, b"usage")
                    .or_else(|| top_level_value(doc, b"usage"))
                    .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(doc)));
                let mut de = serde_json::Deserializer::from_slice(value);
                let slow = Option::<Usage>::deserialize(&mut de).ok().flatten();
                assert_eq!(Some(fast), slow, "{}", String::from_utf8_lossy(doc));
            }
            assert!(parse_json_usage(&chunks).is_some() || usage_at_end(doc).is_none());
        }
        assert_eq!(usage_at_end(docs[0]).map(|u| u.output_tokens), Some(4));
        assert_eq!(usage_at_end(docs[2]).map(|u| u.output_tokens), Some(4));
        assert_eq!(usage_at_end(docs[8]).map(|u| u.input_tokens), Some(1));
        assert_eq!(usage_at_end(docs[12]).map(|u| u.output_tokens), Some(10));
        // A brace inside a string in the usage (11) misleads the count back; the
        // scans read it.
        for none in [1, 3, 4, 5, 7, 9, 10, 11, 13, 14] {
            assert_eq!(usage_at_end(docs[none]), None, "{none}");
        }
    }

    /// Every one-byte change (and deletion) of an Anthropic reply: whenever the search
    /// from the end answers and the document is valid JSON, serde reads the same
    /// top-level usage from the whole document.
    #[test]
    fn usage_found_at_the_end_agrees_with_serde_under_mutation() {
        let reply = br#"{"id":"m","content":[{"type":"text","text":"a \"usage\": {}"}],"stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,"cache_creation":{"ephemeral_5m_input_tokens":0,"ephemeral_1h_input_tokens":0},"output_tokens":10,"service_tier":"standard"}}"#;
        let (mut checked, mut answered) = (0, 0);
        let mut check = |doc: &[u8]| {
            let Some(fast) = usage_at_end(doc) else {
                return;
            };
            answered += 1;
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(doc) else {
                return;
            };
            let slow = serde_json::from_value::<Usage>(value["usage"].clone()).ok();
            assert_eq!(Some(fast), slow, "{}", String::from_utf8_lossy(doc));
            checked += 1;
        };
        check(reply);
        for at in 0..reply.len() {
            let mut doc = reply.to_vec();
            doc.remove(at);
            check(&doc);
            for b in *br#"{}"\:,09a n"# {
                let mut doc = reply.to_vec();
                doc[at] = b;
                check(&doc);
            }
        }
        assert!(checked > 500 && answered >= checked, "{checked} {answered}");
    }

    #[test]
    fn json_usage_is_read_across_chunks() {
        let chunks = [
            Bytes::from_static(b"{\"id\":\"m\",\"usage\":{\"input_"),
            Bytes::from_static(b"tokens\":5,\"output_tokens\":7}}"),
        ];
        let u = parse_json_usage(&chunks).unwrap();
        assert_eq!((u.input_tokens, u.output_tokens), (5, 7));
    }

    use crate::json_scan::gen::*;
    use proptest::prelude::*;

    /// serde's reading: the top-level `usage` of the whole document; `None` when it is
    /// not JSON serde_json::Value takes.
    fn serde_usage(doc: &[u8]) -> Option<Option<Usage>> {
        let value = serde_json::from_slice::<serde_json::Value>(doc).ok()?;
        Some(
            value
                .get("usage")
                .and_then(|u| Option::<Usage>::deserialize(u).ok().flatten()),
        )
    }

    /// A count: mostly an integer, sometimes what serde refuses or reads otherwise.
    fn count() -> BoxedStrategy<String> {
        prop_oneof![
            6 => uint(),
            1 => prop::sample::select(&[
                "null", "\"5\"", "-1", "1.5", "1e2", "0.0", "18446744073709551615",
                "18446744073709551616", "{}", "[1]", "true",
            ][..]).prop_map(String::from),
        ]
        .boxed()
    }

    /// `(name, value)` members, each maybe absent, in any order, with any whitespace.
    fn members(list: Vec<(&'static str, BoxedStrategy<String>)>) -> impl Strategy<Value = String> {
        let list: Vec<_> = list
            .into_iter()
            .map(|(k, v)| prop::option::weighted(0.7, (Just(format!("\"{k}\"")), v, ws4())))
            .collect();
        (list, ws())
            .prop_flat_map(|(m, w)| {
                let m: Vec<_> = m.into_iter().flatten().collect();
                (Just(m).prop_shuffle(), Just(w))
            })
            .prop_map(|(m, w)| object_text(m, w))
    }

    /// A usage object as Anthropic sends it and beyond: counts of every size, the
    /// nested `cache_creation` and `server_tool_use`, nulls, strings, other members.
    fn usage_object() -> BoxedStrategy<String> {
        let nested = |keys: &'static [&'static str]| {
            prop_oneof![
                3 => members(keys.iter().map(|k| (*k, uint().boxed())).collect()).boxed(),
                1 => value(false),
            ]
            .boxed()
        };
        members(vec![
            ("input_tokens", count()),
            ("cache_creation_input_tokens", count()),
            ("cache_read_input_tokens", count()),
            (
                "cache_creation",
                nested(&["ephemeral_5m_input_tokens", "ephemeral_1h_input_tokens"]),
            ),
            ("output_tokens", count()),
            ("server_tool_use", nested(&["web_search_requests"])),
            ("service_tier", scalar(false).boxed()),
            ("x", value(false)),
        ])
        .boxed()
    }

    /// A Messages reply: content blocks (whose text and tool inputs may hold a
    /// `usage` of their own) and a top-level `usage`, mostly last, maybe elsewhere,
    /// maybe absent or not an object.
    fn reply() -> impl Strategy<Value = String> {
        let block = prop_oneof![
            (string(false), ws()).prop_map(|(t, w)| format!(r#"{{"type":"text",{w}"text":{t}}}"#)),
            (usage_object(), string(false)).prop_map(|(u, q)| format!(
                r#"{{"type":"tool_use","input":{{"usage":{u},"q":{q}}}}}"#
            )),
        ];
        let usage = prop_oneof![
            6 => usage_object(),
            1 => scalar(false).boxed(),
        ];
        let rest = members(vec![
            ("id", string(false).boxed()),
            ("type", Just("\"message\"".to_string()).boxed()),
            (
                "content",
                prop::collection::vec(block, 0..3)
                    .prop_map(|b| format!("[{}]", b.join(",")))
                    .boxed(),
            ),
            ("stop_reason", scalar(false).boxed()),
            ("x", value(false)),
        ]);
        (
            rest,
            prop::option::weighted(0.9, (usage, ws4())),
            any::<bool>(),
            ws(),
        )
            .prop_map(|(rest, usage, last, w)| {
                let Some((usage, [a, b, c, d])) = usage else {
                    return rest;
                };
                let member = format!("{a}\"usage\"{b}:{c}{usage}{d}");
                let inner = &rest[1..rest.len() - 1];
                if inner.trim().is_empty() {
                    format!("{{{member}}}{w}")
                } else if last {
                    format!("{{{inner},{member}}}{w}")
                } else {
                    format!("{w}{{{member},{inner}}}")
                }
            })
    }

    /// `doc` cut at the given places.
    fn chunks(doc: &[u8], cuts: &[prop::sample::Index]) -> Vec<Bytes> {
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(doc.len() + 1)).collect();
        at.sort_unstable();
        let mut from = 0;
        let mut out = Vec::new();
        for to in at.into_iter().chain([doc.len()]) {
            out.push(Bytes::copy_from_slice(&doc[from..to]));
            from = to;
        }
        out
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn usage_is_read_as_serde_reads_it(
            doc in reply(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        ) {
            let expected = serde_usage(doc.as_bytes());
            // serde_json::Value refuses numbers out of f64's range (1e400).
            prop_assume!(expected.is_some());
            let expected = expected.unwrap();
            let whole = parse_json_usage(&[Bytes::copy_from_slice(doc.as_bytes())]);
            prop_assert_eq!(whole, expected, "{}", doc);
            prop_assert_eq!(parse_json_usage(&chunks(doc.as_bytes(), &cuts)), expected, "{}", doc);
        }

        /// Mutated replies never panic, and are read as serde reads them whenever
        /// they are still JSON.
        #[test]
        fn mutated_replies_are_read_as_serde_reads_them(doc in mutated(reply())) {
            let read = parse_json_usage(&[Bytes::copy_from_slice(&doc)]);
            if let Some(expected) = serde_usage(&doc) {
                prop_assert_eq!(read, expected, "{}", String::from_utf8_lossy(&doc));
            }
        }

        /// The hand reading of a usage object says yes only where serde reads the
        /// same bytes the same.
        #[test]
        fn usage_is_read_by_hand_only_where_serde_agrees(
            usage in prop_oneof![
                1 => usage_object().prop_map(String::into_bytes).boxed(),
                3 => mutated(usage_object()).boxed(),
            ],
        ) {
            if let Some(fast) = flat_usage(&usage) {
                let mut de = serde_json::Deserializer::from_slice(&usage);
                let slow = Option::<Usage>::deserialize(&mut de).ok().flatten();
                prop_assert_eq!(Some(fast), slow, "{:?}", String::from_utf8_lossy(&usage));
            }
        }

        #[test]
        fn any_bytes_are_read_without_panic(
            body in prop::collection::vec(any::<u8>(), 0..48),
            grammar in prop::collection::vec(
                prop::sample::select(&b"{}[]\",:\\ 0159-.eEtrufalsn\x01\xc3"[..]), 0..32),
        ) {
            parse_json_usage(&[Bytes::from(body)]);
            let mut framed = b"{\"usage\":".to_vec();
            framed.extend_from_slice(&grammar);
            framed.push(b'}');
            let read = parse_json_usage(&[Bytes::from(framed.clone())]);
            if let Some(expected) = serde_usage(&framed) {
                prop_assert_eq!(read, expected, "{}", String::from_utf8_lossy(&framed));
            }
        }
    }
}
