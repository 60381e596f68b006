//! Phase 6, stream back: relay the upstream body to the client chunk by chunk, read
//! token usage on the side without changing a byte, and end a failed stream with an
//! SSE `error` event rather than a clean end.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;
use tokio::time::Sleep;

use crate::account::RequestRecord;
use crate::body::BoxError;
use crate::error::{Error, ErrorKind};
use crate::forward::{RelayedHeaders, UpstreamBody};
use crate::head::HeaderFields;
use crate::limits::headers::RateHeaders;
use crate::meta::{BodyKind, RouteKind, Usage};

/// Above this, a non-streaming JSON response is relayed without reading its usage:
/// Messages responses are far smaller, and the copy must stay bounded.
const MAX_JSON_TAP: usize = 4 * 1024 * 1024;
/// An SSE event longer than this is forwarded even though incomplete.
const MAX_SSE_TAIL: usize = 1024 * 1024;

/// How the relay looks at the bytes going by.
enum Tap {
    /// Not a Messages response (models, files, ...): bytes only.
    None,
    /// A non-streaming Messages JSON response: keep refcounted chunks, parse at the end.
    /// A reply usually comes in one or two chunks: no allocation for the list.
    Json {
        chunks: smallvec::SmallVec<[Bytes; 2]>,
        len: usize,
    },
    /// A streaming response: forward whole events, parse the few that carry usage.
    Sse(SseTap),
}

#[derive(Default)]
struct SseTap {
    /// The incomplete event at the end of the last chunk, held back so that a failure
    /// can always be signalled as a clean `error` event at an event boundary.
    tail: BytesMut,
    saw_stop: bool,
    saw_error: bool,
}

enum State {
    Streaming,
    Done,
}

/// The relayed response body. Owns the request's record and finishes it on drop,
/// so a request is accounted for however it ends (completed, failed, client gone).
pub struct Relay {
    inner: UpstreamBody,
    tap: Tap,
    /// Bytes to emit before polling upstream again (a peeked first event, or the
    /// final error event).
    pending: Option<Bytes>,
    idle: Duration,
    /// When the upstream counts as stalled: `idle` after the relay started waiting
    /// for the next frame. Set when it has to wait (a clock read costs more than
    /// relaying a small reply), cleared by each frame.
    deadline: Option<tokio::time::Instant>,
    /// Made the first time the upstream has nothing ready (a small reply that arrives
    /// with its head never needs one).
    timer: Option<Pin<Box<Sleep>>>,
    state: State,
    record: RequestRecord,
    counted_stream: bool,
    /// The client's own rate-limit headers, for the server to write into the head
    /// (see `limits::headers::RateHeaders`): carried here rather than as a response
    /// extension, which costs three allocations per request.
    pub rate_headers: Option<RateHeaders>,
    /// The upstream's own response fields, written the same way.
    pub relayed: Option<RelayedHeaders>,
}

impl Relay {
    pub fn new(
        inner: UpstreamBody,
        kind: BodyKind,
        prefix: Option<Bytes>,
        idle: Duration,
        record: RequestRecord,
    ) -> Self {
        let tap = match kind {
            BodyKind::Plain => Tap::None,
            BodyKind::MessagesJson => Tap::Json {
                chunks: smallvec::SmallVec::new(),
                len: 0,
            },
            BodyKind::Sse => Tap::Sse(SseTap::default()),
        };
        let counted_stream = kind == BodyKind::Sse;
        if counted_stream {
            record.metrics.active_streams.inc();
        }
        let mut relay = Relay {
            inner,
            tap,
            pending: None,
            idle,
            deadline: None,
            timer: None,
            rate_headers: None,
            relayed: None,
            state: State::Streaming,
            record,
            counted_stream,
        };
        if let Some(p) = prefix {
            relay.pending = relay.on_data(p);
        }
        relay
    }

    /// Runs the tap over a chunk and returns what to forward now.
    fn on_data(&mut self, chunk: Bytes) -> Option<Bytes> {
        let out = match &mut self.tap {
            Tap::None => Some(chunk),
            Tap::Json { chunks, len } => {
                if *len + chunk.len() <= MAX_JSON_TAP {
                    *len += chunk.len();
                    chunks.push(chunk.clone());
                } else {
                    *len = usize::MAX / 2;
                    chunks.clear();
                }
                Some(chunk)
            }
            Tap::Sse(sse) => {
                let out = sse.split_complete(chunk);
                if let Some(events) = &out {
                    let rec = &mut self.record;
                    sse.scan(events, |ev| on_event(rec, ev));
                }
                out
            }
        };
        if let Some(b) = &out {
            self.record.bytes_out += b.len() as u64;
        }
        out
    }

    /// The upstream finished cleanly. Returns any final bytes to send.
    fn on_end(&mut self) -> Option<Bytes> {
        self.state = State::Done;
        match std::mem::replace(&mut self.tap, Tap::None) {
            Tap::None => None,
            Tap::Json { chunks, len } => {
                if len <= MAX_JSON_TAP {
                    self.record.usage = parse_json_usage(&chunks).unwrap_or_default();
                }
                self.record.outcome = "complete";
                None
            }
            Tap::Sse(sse) => {
                let tail = (!sse.tail.is_empty()).then(|| sse.tail.freeze());
                if sse.saw_stop || sse.saw_error || self.record.route != RouteKind::Messages {
                    self.record.outcome = if sse.saw_error {
                        "upstream_error_event"
                    } else {
                        "complete"
                    };
                    return tail;
                }
                // The upstream closed without message_stop: to the client this must not
                // look like a finished message.
                self.fail_stream(
                    "truncated",
                    Error::new(
                        ErrorKind::UpstreamProtocol,
                        "upstream stream ended before message_stop",
                    ),
                )
            }
        }
    }

    /// The upstream failed or went idle mid-body.
    fn on_failure(
        &mut self,
        cause: &'static str,
        err: Error,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if matches!(self.tap, Tap::Sse(_)) {
            self.state = State::Done;
            let ev = self.fail_stream(cause, err);
            return Poll::Ready(ev.map(|b| Ok(Frame::data(b))));
        }
        self.state = State::Done;
        self.record.outcome = "upstream_failed";
        self.record.error = Some(err.label());
        self.record
            .metrics
            .stream_failures
            .with_label_values(&[cause])
            .inc();
        tracing::warn!(request_id = %self.record.request_id, cause, "upstream body failed: {err}");
        // An error here makes hyper abort the response, which is the only honest
        // signal left once the status line has gone out.
        Poll::Ready(Some(Err(Box::new(err))))
    }

    fn fail_stream(&mut self, cause: &'static str, err: Error) -> Option<Bytes> {
        self.state = State::Done;
        self.record.outcome = "upstream_failed";
        self.record.error = Some(err.label());
        self.record
            .metrics
            .stream_failures
            .with_label_values(&[cause])
            .inc();
        tracing::warn!(request_id = %self.record.request_id, cause, "stream failed after start: {err}");
        let ev = err.sse_event();
        self.record.bytes_out += ev.len() as u64;
        Some(ev)
    }
}

fn on_event(rec: &mut RequestRecord, ev: SseEvent<'_>) {
    match ev.name {
        "content_block_delta" if rec.ttft.is_none() => {
            rec.ttft = Some(rec.started.elapsed());
        }
        "message_start" => {
            #[derive(Deserialize)]
            struct Start {
                message: StartMessage,
            }
            #[derive(Deserialize)]
            struct StartMessage {
                #[serde(default)]
                usage: Usage,
            }
            if let Ok(s) = serde_json::from_slice::<Start>(ev.data) {
                rec.usage = s.message.usage;
            }
        }
        "message_delta" => {
            #[derive(Deserialize)]
            struct Delta {
                usage: Option<DeltaUsage>,
            }
            #[derive(Deserialize)]
            struct DeltaUsage {
                output_tokens: Option<u64>,
                input_tokens: Option<u64>,
            }
            if let Ok(Delta { usage: Some(u) }) = serde_json::from_slice::<Delta>(ev.data) {
                // message_delta counts are cumulative, so they replace, not add.
                if let Some(o) = u.output_tokens {
                    rec.usage.output_tokens = o;
                }
                if let Some(i) = u.input_tokens {
                    rec.usage.input_tokens = i;
                }
            }
        }
        _ => {}
    }
}

fn parse_json_usage(chunks: &[Bytes]) -> Option<Usage> {
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
    let value =
        top_level_value_from_end(json, b"usage").or_else(|| top_level_value(json, b"usage"))?;
    if let Some(usage) = flat_usage(value) {
        return Some(usage);
    }
    let mut de = serde_json::Deserializer::from_slice(value);
    Option::<Usage>::deserialize(&mut de).ok()?
}

/// The usage object read by hand when its values are integers, strings, nulls and
/// objects of those (Anthropic nests `cache_creation` and `server_tool_use` one level
/// deep); `None` for anything else, and for anything serde would refuse (a null or
/// repeated count), which then goes to serde. The derive's field matching was the
/// larger part of the relay's cost per request.
fn flat_usage(v: &[u8]) -> Option<Usage> {
    let mut usage = Usage::default();
    object_len(v, Some(&mut usage))?;
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
    if key.iter().rev().take_while(|b| **b == b'\\').count() % 2 == 1 {
        return None;
    }
    let mut usage = Usage::default();
    let len = object_len(&doc[open..], Some(&mut usage))?;
    (doc[open + len..].trim_ascii() == b"}").then_some(usage)
}

/// How many bytes of `v` a JSON object takes, read by hand: members whose values are
/// unsigned integers, strings or nulls, and (for the usage object itself, `usage` is
/// `Some`) objects of those, skipped. The usage counts are stored into `usage`; a null,
/// repeated or non-integer count is `None`, as is anything the scan does not cover.
fn object_len(v: &[u8], mut usage: Option<&mut Usage>) -> Option<usize> {
    let mut seen = 0u8;
    let mut i = json_ws(v, 0);
    if v.get(i) != Some(&b'{') {
        return None;
    }
    i = json_ws(v, i + 1);
    if v.get(i) == Some(&b'}') {
        return Some(i + 1);
    }
    loop {
        if v.get(i) != Some(&b'"') {
            return None;
        }
        let (key_end, escaped) = string_end(v, i)?;
        if escaped {
            return None;
        }
        let key = &v[i + 1..key_end - 1];
        let nested = usage.is_some();
        let field = match (key, usage.as_deref_mut()) {
            (b"input_tokens", Some(u)) => Some((0, &mut u.input_tokens)),
            (b"output_tokens", Some(u)) => Some((1, &mut u.output_tokens)),
            (b"cache_creation_input_tokens", Some(u)) => {
                Some((2, &mut u.cache_creation_input_tokens))
            }
            (b"cache_read_input_tokens", Some(u)) => Some((3, &mut u.cache_read_input_tokens)),
            _ => None,
        };
        i = json_ws(v, key_end);
        if v.get(i) != Some(&b':') {
            return None;
        }
        i = json_ws(v, i + 1);
        match (v.get(i)?, field) {
            (b'0'..=b'9', field) => {
                let mut n = 0u64;
                let start = i;
                while let Some(d @ b'0'..=b'9') = v.get(i) {
                    // Past 19 digits the count may overflow: serde decides.
                    if i - start == 19 {
                        return None;
                    }
                    n = n * 10 + u64::from(d - b'0');
                    i += 1;
                }
                if matches!(v.get(i), Some(b'.' | b'e' | b'E')) {
                    return None;
                }
                if let Some((bit, slot)) = field {
                    if seen & (1 << bit) != 0 {
                        return None;
                    }
                    seen |= 1 << bit;
                    *slot = n;
                }
            }
            (b'n', None) if v[i..].starts_with(b"null") => i += 4,
            (b'"', None) => i = string_end(v, i)?.0,
            (b'{', None) if nested => i += object_len(&v[i..], None)?,
            _ => return None,
        }
        i = json_ws(v, i);
        match v.get(i)? {
            b',' => i = json_ws(v, i + 1),
            b'}' => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The first index at or after `i` that is not JSON whitespace (a plain loop: the
/// runs are a byte or two, shorter than a call into memchr pays for).
fn json_ws(v: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = v.get(i) {
        i += 1;
    }
    i
}

/// For the string whose opening quote is at `i`: the index just past its closing
/// quote, and whether it held an escape. `None` if it does not end.
fn string_end(v: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j += memchr::memchr2(b'"', b'\\', v.get(j..)?)?;
        if v[j] == b'"' {
            return Some((j + 1, escaped));
        }
        escaped = true;
        j += 2;
    }
}

/// The bytes from the start of `key`'s value in the top-level JSON object `json` to
/// the end of the document; `None` when `json` has no such top-level key. Keys nested
/// deeper (a tool input's own `usage`, say) are skipped, as are strings.
fn top_level_value<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut depth = 0u32;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let end = loop {
                    let k = j + memchr::memchr2(b'"', b'\\', json.get(j..)?)?;
                    if json[k] == b'"' {
                        break k;
                    }
                    j = k + 2;
                };
                i = end + 1;
                if depth == 1 && &json[start..end] == key {
                    let rest = json[i..].trim_ascii_start();
                    if let Some(value) = rest.strip_prefix(b":") {
                        return Some(value.trim_ascii_start());
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                i += 1;
            }
            _ => i += 1,
        }
    }
    None
}

/// [`top_level_value`] searched from the end of the document, where Anthropic puts
/// `usage`, so the content before it is not scanned. Only for a document that starts
/// with `{` and ends with `}`; `None` sends the caller to the forward scan.
fn top_level_value_from_end<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let doc = json.trim_ascii();
    if doc.first() != Some(&b'{') || doc.last() != Some(&b'}') {
        return None;
    }
    let mut depth = 0u32;
    let mut i = doc.len();
    while i > 0 {
        i -= 1;
        match doc[i] {
            b'}' | b']' => depth += 1,
            b'{' | b'[' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return None;
                }
            }
            b'"' => {
                // A closing quote: find the opening one, skipping escaped quotes (those
                // after an odd number of backslashes).
                let end = i;
                loop {
                    i = memchr::memrchr(b'"', &doc[..i])?;
                    let escapes = doc[..i].iter().rev().take_while(|b| **b == b'\\').count();
                    if escapes % 2 == 0 {
                        break;
                    }
                }
                if depth == 1 && &doc[i + 1..end] == key {
                    let rest = doc[end + 1..].trim_ascii_start();
                    if let Some(value) = rest.strip_prefix(b":") {
                        return Some(value.trim_ascii_start());
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// One SSE event: its name and its (first) data line.
pub struct SseEvent<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

impl SseTap {
    /// Splits off everything up to the last complete event; keeps the rest.
    fn split_complete(&mut self, chunk: Bytes) -> Option<Bytes> {
        if self.tail.is_empty() {
            match last_boundary(&chunk) {
                Some(end) if end == chunk.len() => return Some(chunk),
                Some(end) => {
                    self.tail.extend_from_slice(&chunk[end..]);
                    return Some(chunk.slice(..end));
                }
                None if chunk.len() > MAX_SSE_TAIL => return Some(chunk),
                None => {
                    self.tail.extend_from_slice(&chunk);
                    return None;
                }
            }
        }
        self.tail.extend_from_slice(&chunk);
        match last_boundary(&self.tail) {
            Some(end) => Some(self.tail.split_to(end).freeze()),
            None if self.tail.len() > MAX_SSE_TAIL => Some(self.tail.split().freeze()),
            None => None,
        }
    }

    fn scan(&mut self, events: &[u8], mut f: impl FnMut(SseEvent<'_>)) {
        for raw in split_events(events) {
            let mut name = "message";
            let mut data: &[u8] = b"";
            for line in raw.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                if let Some(v) = line.strip_prefix(b"event:") {
                    name = std::str::from_utf8(v).unwrap_or("").trim();
                } else if let Some(v) = line.strip_prefix(b"data:") {
                    if data.is_empty() {
                        data = v.strip_prefix(b" ").unwrap_or(v);
                    }
                }
            }
            match name {
                "message_stop" => self.saw_stop = true,
                "error" => self.saw_error = true,
                _ => {}
            }
            f(SseEvent { name, data });
        }
    }
}

/// Index just past the last blank line ("\n\n" or "\r\n\r\n") in `buf`.
pub fn last_boundary(buf: &[u8]) -> Option<usize> {
    let mut i = buf.len();
    while i >= 2 {
        if buf[i - 1] == b'\n' {
            if buf[i - 2] == b'\n' {
                return Some(i);
            }
            if i >= 4 && &buf[i - 4..i] == b"\r\n\r\n" {
                return Some(i);
            }
        }
        i -= 1;
    }
    None
}

fn split_events(buf: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = buf;
    std::iter::from_fn(move || {
        while !rest.is_empty() {
            let (ev, next) = match find_blank(rest) {
                Some((start, end)) => (&rest[..start], &rest[end..]),
                None => (rest, &rest[rest.len()..]),
            };
            rest = next;
            if !ev.is_empty() {
                return Some(ev);
            }
        }
        None
    })
}

fn find_blank(buf: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some((i, i + 2));
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some((i, i + 3));
            }
        }
        i += 1;
    }
    None
}

/// Reads an SSE response until its first complete event, so the proxy can look at it
/// before committing to this attempt. Returns the bytes read and whether the body ended.
pub async fn peek_first_event(
    body: &mut UpstreamBody,
    timeout: Duration,
) -> Result<(Bytes, bool), Error> {
    use http_body_util::BodyExt;
    let mut buf = BytesMut::new();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::UpstreamTimeout,
                    "upstream sent no event in time",
                ))
            }
            Ok(None) => return Ok((buf.freeze(), true)),
            Ok(Some(Err(e))) => {
                return Err(Error::new(
                    ErrorKind::UpstreamProtocol,
                    "upstream failed before the first event",
                )
                .with_detail(e))
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if find_blank(&buf).is_some() || buf.len() > MAX_SSE_TAIL {
                return Ok((buf.freeze(), false));
            }
        }
    }
}

/// Whether the first bytes of a stream are an `error` event (e.g. overloaded_error
/// sent with a 200 status), which is still safe to retry since nothing reached the client.
pub fn first_event_is_error(bytes: &[u8]) -> bool {
    let mut tap = SseTap::default();
    let mut first = None;
    tap.scan(bytes, |ev| {
        if first.is_none() && ev.name != "ping" {
            first = Some(ev.name == "error");
        }
    });
    first.unwrap_or(false)
}

impl Body for Relay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            if let Some(b) = this.pending.take() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if matches!(this.state, State::Done) {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    this.deadline = None;
                    match frame.into_data() {
                        Ok(data) => {
                            if let Some(out) = this.on_data(data) {
                                return Poll::Ready(Some(Ok(Frame::data(out))));
                            }
                        }
                        Err(trailers) => return Poll::Ready(Some(Ok(trailers))),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let err = Error::new(
                        ErrorKind::UpstreamProtocol,
                        "upstream connection failed mid-response",
                    )
                    .with_detail(e);
                    return this.on_failure("upstream_reset", err);
                }
                Poll::Ready(None) => {
                    this.pending = this.on_end();
                    continue;
                }
                Poll::Pending => {
                    let idle = this.idle;
                    let deadline = *this
                        .deadline
                        .get_or_insert_with(|| tokio::time::Instant::now() + idle);
                    let timer = this
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if timer.deadline() != deadline {
                        timer.as_mut().reset(deadline);
                    }
                    if timer.as_mut().poll(cx).is_ready() {
                        let err = Error::new(
                            ErrorKind::UpstreamTimeout,
                            "upstream stalled: no data within the idle timeout",
                        );
                        return this.on_failure("idle_timeout", err);
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done) && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.tap, &self.pending) {
            (Tap::Sse(_), _) | (_, Some(_)) => SizeHint::default(),
            _ => self.inner.size_hint(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.counted_stream {
            self.record.metrics.active_streams.dec();
        }
        if matches!(self.state, State::Streaming) {
            self.record.outcome = "client_gone";
        }
        if let Tap::Json { chunks, len } = &self.tap {
            // hyper stops polling once content-length bytes are out, so a complete body
            // often ends here rather than in `on_end`. Whether it was complete is the
            // upstream body's to say (its length was reached), not whether the JSON read
            // so far happens to contain a usage object.
            if matches!(self.state, State::Streaming) && self.inner.is_end_stream() {
                if *len <= MAX_JSON_TAP {
                    self.record.usage = parse_json_usage(chunks).unwrap_or_default();
                }
                self.record.outcome = "complete";
            }
        }
        self.record.finish();
    }
}

/// Whether a response is an event stream, by content type.
pub fn is_event_stream(headers: &HeaderFields) -> bool {
    headers
        .get(&http::header::CONTENT_TYPE)
        .is_some_and(|ct| ct.trim_ascii_start().starts_with(b"text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn boundary_finds_last_blank_line() {
        assert_eq!(
            last_boundary(b"event: a\ndata: 1\n\nevent: b\nda"),
            Some(18)
        );
        assert_eq!(last_boundary(b"event: a\r\ndata: 1\r\n\r\n"), Some(21));
        assert_eq!(last_boundary(b"event: a\ndata: 1\n"), None);
    }

    #[test]
    fn complete_events_pass_zero_copy_and_tails_are_held() {
        let mut t = SseTap::default();
        let whole = Bytes::from_static(b"event: ping\ndata: {}\n\n");
        let out = t.split_complete(whole.clone()).unwrap();
        assert_eq!(out.as_ptr(), whole.as_ptr());
        assert!(t
            .split_complete(Bytes::from_static(b"event: message_stop\nda"))
            .is_none());
        let out = t
            .split_complete(Bytes::from_static(b"ta: {}\n\nevent: x"))
            .unwrap();
        assert_eq!(&out[..], b"event: message_stop\ndata: {}\n\n");
        assert_eq!(&t.tail[..], b"event: x");
    }

    #[test]
    fn scan_reads_names_and_data() {
        let mut t = SseTap::default();
        let mut seen = Vec::new();
        t.scan(
            b"event: message_start\ndata: {\"a\":1}\n\nevent: message_stop\ndata: {}\n\n",
            |e| {
                seen.push((
                    e.name.to_string(),
                    String::from_utf8_lossy(e.data).to_string(),
                ))
            },
        );
        assert_eq!(seen[0], ("message_start".into(), "{\"a\":1}".into()));
        assert!(t.saw_stop);
    }

    #[test]
    fn first_error_event_is_detected() {
        assert!(first_event_is_error(
            b"event: error\ndata: {\"type\":\"error\"}\n\n"
        ));
        assert!(!first_event_is_error(b"event: message_start\ndata: {}\n\n"));
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
}
