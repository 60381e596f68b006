//! Fuzz entry points: plain functions that run the node's hand-written parsers on
//! arbitrary bytes and hold them to a reference, panicking on a disagreement. The
//! property tests (`tests/prop_*.rs`) call them on stable; the `cargo fuzz` targets in
//! `fuzz/` call the same functions on a nightly toolchain (docs/fuzzing.md).
//!
//! A panic here is the finding, not a failure mode of the gateway: nothing on the
//! request path calls this module.
//!
//! References: hyper's HTTP/1.1 server for heads and bodies (hyper reads heads with
//! httparse, which the node's own head parser matches byte for byte, and the node
//! must agree with it on what a request is); the
//! WHATWG event-stream rules, written out below, for SSE; `http::HeaderMap` for
//! header lookups; serde_json for the JSON scanner.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::head::HeaderFields;
use crate::http1::fuzz::{read_chunked, read_connection, Ended, ReadConnection, ReadRequest};
use crate::sse::{first_event_is_error, SseTap, MAX_SSE_TAIL};

/// Head refusals the node makes where hyper reads the request: each a deliberate
/// hardening, never the other way round (the node must not read what hyper refuses).
pub const STRICTER_HEADS: &[(&str, &str)] = &[
    (
        "both transfer-encoding and content-length",
        "RFC 9112 6.1 allows a server to read such a message as chunked (hyper does); \
         it is the classic request-smuggling shape, so the node refuses it",
    ),
    (
        "unsupported transfer-encoding",
        "only a single `chunked` is understood; hyper reads any list ending in chunked \
         (`gzip, chunked`) and repeated fields, which the node would have to relay \
         undecoded",
    ),
    (
        crate::http1::fuzz::NO_HOST,
        "RFC 9112 3.2: a server answers 400 to an HTTP/1.1 request without Host; hyper \
         leaves that to the service",
    ),
];

/// Body refusals the node makes where hyper reads the body: size bounds of the node's
/// own, hyper's being larger.
pub const STRICTER_BODIES: &[(&str, &str)] = &[
    (
        "chunk size too long",
        "more than 15 hex digits (leading zeros included): a padded size is a \
         smuggling probe, and no body of the node's is that large",
    ),
    (
        "chunk size line too long",
        "a size line and its extensions over 4 KiB (hyper allows 16 KiB of extensions)",
    ),
    (
        "invalid trailer line",
        "each trailer line a header field ending in CRLF; hyper gathers the section up \
         to CRLF CRLF and lets httparse read it, which takes a bare LF inside",
    ),
    (
        "trailers too large",
        "a trailer section over 64 KiB (hyper bounds it by its header limits)",
    ),
];

/// One connection's bytes, read by the node and by hyper's server: every request the
/// node reads must be the request hyper reads (method, target, version, fields, body),
/// the node must see no head or body end that hyper does not, and it may refuse what
/// hyper reads only for a reason in [`STRICTER_HEADS`] or [`STRICTER_BODIES`]. The
/// node's reading must not depend on how the bytes are split into reads.
pub fn fuzz_http1_head(input: &[u8]) {
    let ours = read_connection(input, usize::MAX);
    for chunk in [1, 7] {
        assert_eq!(
            shape(&read_connection(input, chunk)),
            shape(&ours),
            "the node reads {:?} differently in {chunk}-byte reads",
            Lossy(input)
        );
    }
    let theirs = hyper_reads(input);
    compare(&ours, &theirs, input);
}

/// A chunked body after a fixed head: decoded the same whatever the reads, and read
/// as hyper reads it (see [`fuzz_http1_head`]), including what follows the body.
pub fn fuzz_chunked(body: &[u8]) {
    let whole = read_chunked(body, usize::MAX).map_err(|e| e.is_empty());
    for chunk in [1, 3] {
        assert_eq!(
            read_chunked(body, chunk).map_err(|e| e.is_empty()),
            whole,
            "the chunked body {:?} decodes differently in {chunk}-byte reads",
            Lossy(body)
        );
    }
    let mut input =
        b"POST /v1/messages HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    input.extend_from_slice(body);
    fuzz_http1_head(&input);
}

/// The connection as compared across read sizes: refusal messages aside (a long
/// size line is refused as too long or as an invalid size depending on what has come).
fn shape(c: &ReadConnection) -> (Vec<ReadRequest>, Ended) {
    let ended = match &c.ended {
        Ended::Body { head, refused } => Ended::Body {
            head: head.clone(),
            refused: refused.as_ref().map(|_| String::new()),
        },
        other => other.clone(),
    };
    (c.requests.clone(), ended)
}

/// A request as hyper's server handed it to its service.
#[derive(Debug)]
struct HyperRequest {
    method: String,
    target: String,
    http11: bool,
    fields: BTreeMap<Vec<u8>, Vec<Vec<u8>>>,
    body: Result<Vec<u8>, String>,
}

/// Serves `input` as one connection with hyper's HTTP/1.1 server, configured as the
/// node is (128 header fields), and returns the requests its service saw in order.
fn hyper_reads(input: &[u8]) -> Vec<HyperRequest> {
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a current-thread runtime");
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let record = record.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|b| b.to_bytes().to_vec())
                .map_err(|e| e.to_string());
            record.lock().expect("not poisoned").push(HyperRequest {
                method: parts.method.as_str().to_string(),
                target: parts.uri.to_string(),
                http11: parts.version == http::Version::HTTP_11,
                fields: multimap(
                    parts
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
                ),
                body,
            });
            Ok::<_, std::convert::Infallible>(http::Response::new(
                http_body_util::Empty::<Bytes>::new(),
            ))
        }
    });
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(input.len() + 64 * 1024);
            client.write_all(input).await.expect("duplex has room");
            client.shutdown().await.expect("duplex shuts");
            let conn = hyper::server::conn::http1::Builder::new()
                .max_headers(crate::http1::fuzz::MAX_HEADERS)
                .half_close(true)
                .serve_connection(hyper_util::rt::TokioIo::new(server), service);
            let answers = async {
                let mut sink = Vec::new();
                let _ = client.read_to_end(&mut sink).await;
            };
            let _ = tokio::join!(conn, answers);
        })
    });
    let seen = std::mem::take(&mut *seen.lock().expect("not poisoned"));
    seen
}

/// Fields by lower-case name, each name's values in order.
fn multimap<'a>(
    fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> BTreeMap<Vec<u8>, Vec<Vec<u8>>> {
    let mut map: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
    for (n, v) in fields {
        map.entry(n.to_ascii_lowercase())
            .or_default()
            .push(v.to_vec());
    }
    map
}

fn same_head(ours: &ReadRequest, theirs: &HyperRequest) -> bool {
    ours.method == theirs.method
        && ours.target == theirs.target
        && ours.http11 == theirs.http11
        && multimap(ours.fields.iter().map(|(n, v)| (&n[..], &v[..]))) == theirs.fields
}

fn compare(ours: &ReadConnection, theirs: &[HyperRequest], input: &[u8]) {
    let input = Lossy(input);
    for (i, read) in ours.requests.iter().enumerate() {
        let Some(hyper) = theirs.get(i) else {
            panic!("the node read request {i} that hyper refused: {read:?}\ninput {input:?}");
        };
        assert!(
            same_head(read, hyper),
            "request {i} reads differently:\nnode  {read:?}\nhyper {hyper:?}\ninput {input:?}"
        );
        assert_eq!(
            hyper.body.as_deref(),
            Ok(&read.body[..]),
            "request {i}'s body reads differently; input {input:?}"
        );
    }
    let n = ours.requests.len();
    let next = theirs.get(n);
    match &ours.ended {
        Ended::Closed => {}
        Ended::Eof { partial } => assert!(
            next.is_none(),
            "hyper read a request (partial head: {partial}) where the node saw none: \
             {next:?}\ninput {input:?}"
        ),
        Ended::HeadRefused(why) => {
            if let Some(hyper) = next {
                // hyper skips content-length once transfer-encoding is there (the
                // first entry of STRICTER_HEADS), so it never sees a bad one then.
                let ignored_length = why.contains("content-length")
                    && hyper.fields.contains_key(&b"transfer-encoding"[..]);
                assert!(
                    ignored_length || STRICTER_HEADS.iter().any(|(w, _)| w == why),
                    "the node refused a head hyper reads ({why}): {hyper:?}\ninput {input:?}"
                );
            }
        }
        Ended::Body { head, refused } => {
            let Some(hyper) = next else {
                panic!("the node read a head hyper refused: {head:?}\ninput {input:?}");
            };
            assert!(
                same_head(head, hyper),
                "request {n} reads differently:\nnode  {head:?}\nhyper {hyper:?}\ninput {input:?}"
            );
            match (refused, &hyper.body) {
                (_, Err(_)) => {}
                (None, Ok(body)) => panic!(
                    "hyper read request {n}'s body whole ({body:?}) where the node waits for \
                     more; input {input:?}"
                ),
                (Some(why), Ok(_)) => assert!(
                    STRICTER_BODIES.iter().any(|(w, _)| w == why),
                    "the node refused a body hyper reads ({why}); input {input:?}"
                ),
            }
        }
    }
}

/// Bytes shown as text in a panic message, escapes for the rest.
struct Lossy<'a>(&'a [u8]);

impl std::fmt::Debug for Lossy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// One event as the WHATWG rules dispatch it: its type, and its first data line
/// (the node reads no more of it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEvent {
    /// `None` when the type is not UTF-8 (the node names none such).
    pub name: Option<String>,
    pub data: Vec<u8>,
}

/// The WHATWG event-stream rules (HTML, "Interpreting an event stream"), over bytes:
/// lines end at CRLF, LF or CR; a blank line dispatches the event gathered so far if
/// it has data; `event` sets the type, `data` appends a line; `:` starts a comment; a
/// field's value loses one leading space.
pub fn whatwg_events(stream: &[u8]) -> RefStream {
    let mut events = Vec::new();
    let mut blanks = Vec::new();
    let mut ends = Vec::new();
    let mut in_block = false;
    let (mut name, mut data): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    let mut line_start = 0;
    let mut i = 0;
    while i < stream.len() {
        let end = match stream[i] {
            b'\r' if stream.get(i + 1) == Some(&b'\n') => i + 2,
            b'\r' | b'\n' => i + 1,
            _ => {
                i += 1;
                continue;
            }
        };
        let line = &stream[line_start..i];
        if line.is_empty() {
            blanks.push(end);
            if std::mem::take(&mut in_block) {
                ends.push(end);
            }
            if let Some(d) = data.take() {
                let name = name.take().unwrap_or_default();
                let name = match name.is_empty() {
                    true => Some("message".to_string()),
                    false => String::from_utf8(name).ok(),
                };
                events.push(RefEvent { name, data: d });
            }
            name = None;
        } else {
            in_block = true;
        }
        if !line.is_empty() && line[0] != b':' {
            let (field, value) = match line.iter().position(|&b| b == b':') {
                Some(c) => (&line[..c], &line[c + 1..]),
                None => (line, &b""[..]),
            };
            let value = value.strip_prefix(b" ").unwrap_or(value);
            match field {
                b"event" => name = Some(value.to_vec()),
                b"data" => {
                    data.get_or_insert_with(|| value.to_vec());
                }
                _ => {}
            }
        }
        line_start = end;
        i = end;
    }
    RefStream {
        events,
        blanks,
        ends,
    }
}

/// An event stream as the WHATWG rules read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefStream {
    /// The events dispatched, in order.
    pub events: Vec<RefEvent>,
    /// The offset just past each blank line.
    pub blanks: Vec<usize>,
    /// The offset just past each blank line that ends some lines (dispatched or not).
    pub ends: Vec<usize>,
}

/// An event stream relayed in the pieces `cuts` makes of it (offsets, any order and
/// range): the node's splitter passes every byte once and in order, cuts only where
/// the WHATWG rules end an event, holds back no complete event, and its scan reads
/// the same events (type and first data line) as the rules do. A stream with a bare
/// CR (one not before LF) is held to the first two only: the node splits lines at LF,
/// as the Anthropic API and every proxy before it ends them.
pub fn fuzz_sse(stream: &[u8], cuts: &[usize]) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let RefStream { blanks, ends, .. } = whatwg_events(stream);
    let bare_cr = stream
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && stream.get(i + 1) != Some(&b'\n'));
    let mut tap = SseTap::default();
    let mut passed = Vec::new();
    let mut scanned = Vec::new();
    let mut from = 0;
    for &to in &cuts {
        if to == from {
            continue;
        }
        let Some(out) = tap.split_complete(Bytes::copy_from_slice(&stream[from..to])) else {
            from = to;
            continue;
        };
        passed.extend_from_slice(&out);
        assert!(
            blanks.contains(&passed.len()) || out.len() > MAX_SSE_TAIL,
            "the splitter cut {:?} at {} inside an event",
            Lossy(stream),
            passed.len()
        );
        tap.scan(&out, |e| {
            scanned.push((e.name.to_string(), e.data.to_vec()))
        });
        from = to;
    }
    let mut all = passed.clone();
    all.extend_from_slice(&tap.tail);
    assert_eq!(all, stream, "the splitter lost or moved bytes");
    if bare_cr {
        return;
    }
    assert!(
        ends.iter().all(|&b| b <= passed.len()),
        "the splitter held back a complete event of {:?} (passed {} bytes)",
        Lossy(stream),
        passed.len()
    );
    let complete = blanks.last().copied().unwrap_or(0);
    let want = whatwg_events(&stream[..complete]).events;
    assert_eq!(scanned.len(), want.len(), "events of {:?}", Lossy(stream));
    for ((name, data), want) in scanned.iter().zip(&want) {
        match &want.name {
            Some(w) => assert_eq!(name, w, "an event's type in {:?}", Lossy(stream)),
            None => assert!(
                !["error", "message_stop", "ping", "message"].contains(&name.as_str()),
                "a type that is not UTF-8 read as {name:?} in {:?}",
                Lossy(stream)
            ),
        }
        assert_eq!(data, &want.data, "an event's data in {:?}", Lossy(stream));
    }
    let first = want.iter().find(|e| e.name.as_deref() != Some("ping"));
    assert_eq!(
        first_event_is_error(&stream[..complete]),
        first.is_some_and(|e| e.name.as_deref() == Some("error")),
        "first event of {:?}",
        Lossy(stream)
    );
}

/// A header block (the lines after a request line) as the server parses it: the
/// fields httparse takes are valid `HeaderName`s and `HeaderValue`s (what the node's
/// head parser relies on), the raw fields answer every lookup as a `HeaderMap` of the
/// same fields does, and the lines they are written back as parse to the same fields.
pub fn fuzz_headers(block: &[u8]) {
    let mut input = b"GET / HTTP/1.1\r\n".to_vec();
    input.extend_from_slice(block);
    input.extend_from_slice(b"\r\n");
    let Some(raw) = crate::http1::fuzz::head_fields(&input) else {
        return;
    };
    let fields: Vec<(Vec<u8>, Vec<u8>)> =
        raw.iter().map(|(n, v)| (n.to_vec(), v.to_vec())).collect();
    let mut map = HeaderMap::new();
    for (n, v) in &fields {
        let name = HeaderName::from_bytes(n)
            .unwrap_or_else(|e| panic!("httparse took name {:?}: {e}", Lossy(n)));
        let value = HeaderValue::from_bytes(v)
            .unwrap_or_else(|e| panic!("httparse took value {:?}: {e}", Lossy(v)));
        map.append(name, value);
    }
    let map = HeaderFields::Map(map);
    assert_eq!(raw.len(), fields.len());
    assert_eq!(raw.len(), map.len());
    assert_eq!(raw.wire_size(), map.wire_size());
    assert_eq!(
        multimap(raw.iter()),
        multimap(map.iter()),
        "fields of {:?}",
        Lossy(block)
    );
    // Every name present, and names that share a length (the raw lookup's filter)
    // or a prefix with one but are absent.
    let mut names: Vec<HeaderName> = Vec::new();
    for (n, _) in &fields {
        let lower = n.to_ascii_lowercase();
        names.extend(HeaderName::from_bytes(&lower).ok());
        let mut twin = lower.clone();
        twin[0] = if twin[0] == b'z' { b'y' } else { b'z' };
        names.extend(HeaderName::from_bytes(&twin).ok());
        let mut longer = lower.clone();
        longer.extend_from_slice(&[b'x'; 64]);
        names.extend(HeaderName::from_bytes(&longer).ok());
    }
    names.extend([http::header::HOST, http::header::CONTENT_LENGTH]);
    for name in &names {
        assert_eq!(
            raw.get(name),
            map.get(name),
            "get {name} in {:?}",
            Lossy(block)
        );
        assert!(
            raw.get_all(name).eq(map.get_all(name)),
            "get_all {name} in {:?}",
            Lossy(block)
        );
    }
    // The kinds the pipeline looks up by (`head::Known`), raw and mapped alike, and
    // each raw field's kind as its name says.
    for (name, kind) in raw.iter().map(|(n, _)| (n, crate::head::Known::of(n))) {
        if let Some(known) = kind.name() {
            assert!(
                name.eq_ignore_ascii_case(known.as_str().as_bytes()),
                "{:?} taken for {known}",
                Lossy(name)
            );
        }
    }
    for kind in crate::head::Known::NAMED {
        assert!(
            raw.get_all_known(kind).eq(map.get_all_known(kind)),
            "{kind:?} in {:?}",
            Lossy(block)
        );
        assert_eq!(raw.get_known(kind), map.get_known(kind));
    }
    // Written back, with every other field left out: the kept fields, in order.
    let mut turn = false;
    let mut out = Vec::new();
    raw.write_lines(&mut out, |_, _| {
        turn = !turn;
        turn
    });
    let kept: Vec<_> = fields.iter().step_by(2).cloned().collect();
    out.extend_from_slice(b"\r\n");
    let mut slots = vec![httparse::EMPTY_HEADER; kept.len() + 1];
    match httparse::parse_headers(&out, &mut slots) {
        Ok(httparse::Status::Complete((n, parsed))) => {
            assert_eq!(n, out.len(), "written lines of {:?}", Lossy(block));
            let parsed: Vec<_> = parsed
                .iter()
                .map(|h| (h.name.as_bytes().to_vec(), h.value.to_vec()))
                .collect();
            assert_eq!(parsed, kept, "written lines of {:?}", Lossy(block));
        }
        other => panic!(
            "written lines {:?} of {:?} do not parse: {other:?}",
            Lossy(&out),
            Lossy(block)
        ),
    }
    assert!(
        (0..out.len()).all(|i| out[i] != b'\n' || (i > 0 && out[i - 1] == b'\r')),
        "a line written without CR: {:?}",
        Lossy(&out)
    );
}

/// A JSON document: the hand scanner skips it only where serde_json reads it.
pub fn fuzz_json(doc: &[u8]) {
    use crate::json_scan::Scanner;
    let mut s = Scanner::new(doc);
    s.ws();
    let skipped = s.value(0).is_some() && {
        s.ws();
        s.at_end()
    };
    if skipped {
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(doc).is_ok(),
            "the scanner skipped {:?}, which serde_json refuses",
            Lossy(doc)
        );
    }
    let mut s = Scanner::new(doc);
    if let Some(plain) = s.plain_string() {
        let read: Result<String, _> = serde_json::from_slice(&doc[..s.i]);
        assert_eq!(
            read.ok().as_deref().map(str::as_bytes),
            Some(plain),
            "plain string {:?}",
            Lossy(doc)
        );
    }
}
