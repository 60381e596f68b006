//! Phase 3, admit: a Messages body checked and read in one pass by hand, for the
//! common document. serde checked the body and matched its fields at about 30
//! instructions a byte, the largest cost of admission (docs/benchmarks.md).
//!
//! The scan only ever says yes to a document serde accepts too: whatever it is not
//! sure of (invalid JSON, escapes or non-ASCII bytes in keys, numbers or nesting
//! serde might refuse for the three fields read, repeated fields, deep nesting) is
//! handed back (`None`) to the serde path, which decides and words the error. A unit
//! test holds the two to the same answers over a corpus and its mutations.

use super::RequestMeta;
use crate::json_scan::Scanner;

/// `Some` when `body` is a JSON object serde would accept, with the fields read;
/// `None` when serde has to decide.
pub(super) fn scan(body: &[u8]) -> Option<RequestMeta> {
    let mut s = Scanner::new(body);
    let mut meta = RequestMeta::default();
    let mut seen = [false; 3];
    s.ws();
    s.eat(b'{')?;
    s.ws();
    if s.peek()? == b'}' {
        s.i += 1;
    } else {
        loop {
            let key = s.plain_string()?;
            s.ws();
            s.eat(b':')?;
            s.ws();
            let field = match key {
                b"model" => Some(0),
                b"stream" => Some(1),
                b"max_tokens" => Some(2),
                _ => None,
            };
            match field {
                Some(f) => {
                    if std::mem::replace(&mut seen[f], true) {
                        return None; // serde refuses a repeated field
                    }
                    known_value(&mut s, f, &mut meta)?;
                }
                None => s.value(1)?,
            }
            s.ws();
            match s.byte()? {
                b',' => s.ws(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    s.ws();
    s.at_end().then_some(meta)
}

/// The value of `model` (0), `stream` (1) or `max_tokens` (2), read into `meta` as
/// the serde path reads it. Only plain scalars: anything else goes to serde.
fn known_value(s: &mut Scanner, field: usize, meta: &mut RequestMeta) -> Option<()> {
    match s.peek()? {
        b'"' => {
            let name = s.plain_string()?;
            if field == 0 {
                // ASCII by construction.
                meta.model = Some(String::from_utf8(name.to_vec()).ok()?);
            }
        }
        b't' => {
            s.literal(b"true")?;
            meta.stream |= field == 1;
        }
        b'f' => s.literal(b"false")?,
        b'n' => s.literal(b"null")?,
        b'0'..=b'9' => {
            // Plain integers only: serde reads anything longer or with a fraction or
            // exponent as a float, which may even be refused as out of range.
            let n = s.uint()?;
            if field == 2 {
                meta.max_tokens = Some(n);
            }
        }
        _ => return None,
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The serde path's answer: `Ok(meta)` or an error.
    fn serde(body: &[u8]) -> Result<RequestMeta, ()> {
        super::super::peek_messages_serde(body).map_err(|_| ())
    }

    /// Holds the scan to serde's answer; true when the scan took the document.
    fn same(body: &[u8]) -> bool {
        if let Some(fast) = scan(body) {
            let slow = serde(body).unwrap_or_else(|()| {
                panic!(
                    "the scan accepted what serde refuses: {:?}",
                    String::from_utf8_lossy(body)
                )
            });
            assert_eq!(
                (fast.model, fast.stream, fast.max_tokens),
                (slow.model, slow.stream, slow.max_tokens),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            return true;
        }
        false
    }

    const CORPUS: &[&str] = &[
        r#"{"model":"claude-sonnet-4-5","max_tokens":64,"messages":[{"role":"user","content":"Hello, Claude"}]}"#,
        r#"{"model":"m","stream":true,"max_tokens":1024,"messages":[{"role":"user","content":[{"type":"text","text":"a \"q\" \\ \/ \b\f\n\r\t \u00e9 \ud83d\ude00"}]}],"temperature":0.5,"top_k":-1,"x":1e10,"y":-0.0E+2,"z":[true,false,null,{}],"w":{"a":[]}}"#,
        " {\n\t\"model\" : \"m\" ,\r\n \"stream\" : false , \"max_tokens\" : 0 } \n",
        r#"{}"#,
        r#"{"stream":null,"model":null,"max_tokens":null}"#,
        r#"{"model":5,"stream":"yes","max_tokens":"5"}"#,
        r#"{"max_tokens":18446744073709551615}"#,
        r#"{"max_tokens":18446744073709551616}"#,
        r#"{"max_tokens":99999999999999999999}"#,
        r#"{"max_tokens":-5,"model":"a"}"#,
        r#"{"max_tokens":5.0}"#,
        r#"{"max_tokens":1e400}"#,
        r#"{"max_tokens":05}"#,
        r#"{"model":"a","model":"b"}"#,
        r#"{"other":1,"other":2}"#,
        r#"{"model":"caf\u00e9"}"#,
        "{\"model\":\"caf\u{e9}\"}",
        "{\"k\":\"caf\u{e9}\"}",
        "{\"k\u{e9}\":1}",
        r#"{"m\u006fdel":"x"}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"model":"\ud800"}"#,
        r#"{"a":"\x"}"#,
        r#"{"a":"\u12"}"#,
        "{\"a\":\"tab\there\"}",
        r#"{"a":[1,]}"#,
        r#"{"a":{"b":1,}}"#,
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{"a":01}"#,
        r#"{"a":1.}"#,
        r#"{"a":.5}"#,
        r#"{"a":-}"#,
        r#"{"a":1e}"#,
        r#"{"a":+1}"#,
        r#"{"a":tru}"#,
        r#"{"a":True}"#,
        r#"{"a":1} x"#,
        r#"{"a":1}}"#,
        r#"{"a":[1 2]}"#,
        r#"{"a":{1:2}}"#,
        r#"{'a':1}"#,
        "{\"a\":1}\u{0}",
        "",
        "{",
        "[]",
        "\"s\"",
    ];

    #[test]
    fn the_scan_agrees_with_serde_on_a_corpus() {
        for body in CORPUS {
            same(body.as_bytes());
        }
        // The common shapes are taken by the scan, not handed over.
        assert!(scan(CORPUS[0].as_bytes()).is_some());
        assert!(scan(CORPUS[1].as_bytes()).is_some());
        assert!(scan(CORPUS[2].as_bytes()).is_some());
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(scan(deep.as_bytes()).is_none());
        same(deep.as_bytes());
    }

    #[test]
    fn the_scan_agrees_with_serde_on_mutations() {
        // Deterministic: every byte of every corpus document replaced, dropped or
        // doubled, with bytes that matter to the grammar.
        const BYTES: &[u8] = b"{}[]\",:\\ 0159-+.eEtfnu\x01\x7f\xc3";
        let (mut taken, mut all) = (0, 0);
        for doc in CORPUS {
            let doc = doc.as_bytes();
            for at in 0..doc.len() {
                for &b in BYTES {
                    let mut m = doc.to_vec();
                    m[at] = b;
                    taken += usize::from(same(&m));
                    let mut m = doc.to_vec();
                    m.insert(at, b);
                    taken += usize::from(same(&m));
                    all += 2;
                }
                let mut m = doc.to_vec();
                m.remove(at);
                taken += usize::from(same(&m));
                all += 1;
            }
        }
        // Most mutations break the document; enough survive to test acceptance.
        assert!(
            taken > all / 10,
            "{taken} of {all} mutations taken by the scan"
        );
    }

    use crate::json_scan::gen::*;
    use proptest::prelude::*;

    /// The value of `model`, `stream` or `max_tokens`: plain (`simple`), as the scan
    /// reads them, or of any shape.
    fn known(simple: bool) -> BoxedStrategy<String> {
        let plain = prop_oneof![
            3 => plain_string(),
            3 => uint(),
            1 => prop::sample::select(&["true", "false", "null"][..]).prop_map(String::from),
        ];
        if simple {
            return plain.boxed();
        }
        prop_oneof![
            2 => plain,
            1 => value(false),
            1 => number(),
            1 => prop::sample::select(&[
                "-1", "05", "1.0", "1e3", "18446744073709551615", "18446744073709551616",
                "99999999999999999999", r#""caf\u00e9""#, "\"caf\u{e9}\"", r#""\ud800""#, "tru",
            ][..]).prop_map(String::from),
        ]
        .boxed()
    }

    /// A Messages-like body: `model`, `stream` and `max_tokens` (each maybe absent,
    /// maybe twice unless `simple`) among other members, in any order, with any
    /// whitespace. `simple` bodies are ASCII, their top-level keys plain, their
    /// fields plain: the scan must take them.
    fn body(simple: bool) -> impl Strategy<Value = String> {
        let field = |name: &'static str| {
            prop::collection::vec(known(simple), 0..if simple { 2 } else { 3 }).prop_map(
                move |vs| {
                    vs.into_iter()
                        .map(|v| (format!("\"{name}\""), v))
                        .collect::<Vec<_>>()
                },
            )
        };
        let other_key = if simple {
            prop::sample::select(&["\"messages\"", "\"system\"", "\"temperature\"", "\"x\""][..])
                .prop_map(String::from)
                .boxed()
        } else {
            key(false).boxed()
        };
        let others = prop::collection::vec((other_key, value(simple)), 0..5);
        (field("model"), field("stream"), field("max_tokens"), others)
            .prop_flat_map(|(a, b, c, d)| {
                let members: Vec<_> = a.into_iter().chain(b).chain(c).chain(d).collect();
                let n = members.len();
                (
                    Just(members).prop_shuffle(),
                    prop::collection::vec(ws4(), n),
                    ws(),
                    ws(),
                    ws(),
                )
            })
            .prop_map(|(members, spaces, w0, a, b)| {
                let members = members
                    .into_iter()
                    .zip(spaces)
                    .map(|((k, v), w)| (k, v, w))
                    .collect();
                format!("{a}{}{b}", object_text(members, w0))
            })
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn the_scan_agrees_with_serde_on_messages_bodies(body in body(false)) {
            same(body.as_bytes());
        }

        #[test]
        fn the_scan_takes_plain_messages_bodies(body in body(true)) {
            prop_assert!(same(body.as_bytes()), "handed to serde: {}", body);
        }

        #[test]
        fn the_scan_agrees_with_serde_on_mutated_bodies(body in mutated(body(false))) {
            same(&body);
        }

        #[test]
        fn the_scan_agrees_with_serde_on_any_bytes(
            body in prop::collection::vec(any::<u8>(), 0..48),
            grammar in prop::collection::vec(
                prop::sample::select(&b"{}[]\",:\\ 0159-.eEtrufalsn\x01\xc3"[..]), 0..32),
        ) {
            same(&body);
            same(&grammar);
            let mut framed = b"{\"model\":".to_vec();
            framed.extend_from_slice(&grammar);
            same(&framed);
        }
    }
}
