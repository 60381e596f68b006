//! Phase 6, stream back: relay the upstream body to the client chunk by chunk, read
//! token usage on the side without changing a byte, and end a failed stream (or one
//! still running at the drain deadline) with an SSE `error` event rather than a clean end.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use serde::Deserialize;
use tokio::time::Sleep;

use crate::account::RequestRecord;
use crate::body::BoxError;
use crate::error::{Error, ErrorKind};
use crate::forward::UpstreamResponse;
use crate::meta::{BodyKind, RouteKind, Usage};
use crate::sse::{SseEvent, SseTap};

mod cut;
mod reply;
mod usage;

use cut::CutWatch;
pub use cut::DrainCut;
pub use reply::{ProxyBody, ReplyFields};
pub use usage::parse_json_usage;

/// Above this, a non-streaming JSON response is relayed without reading its usage:
/// Messages responses are far smaller, and the copy must stay bounded.
const MAX_JSON_TAP: usize = 4 * 1024 * 1024;

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

enum State {
    Streaming,
    Done,
}

/// What an event stream said about its output as it went by, for a stream that ends
/// without its final count (see [`relayed_output`]).
#[derive(Default)]
struct Relayed {
    /// `content_block_delta` events passed on.
    deltas: u64,
    /// A `message_delta` carried the cumulative `output_tokens`.
    counted: bool,
}

/// The output tokens of an event stream that ended before a `message_delta` gave the
/// count (cut at the drain deadline, by the client leaving, or by an upstream failure):
/// one per `content_block_delta` relayed, or `message_start`'s figure (Anthropic sends
/// 1 there) if that is larger. A floor, not a measure: a delta carries one token or
/// more, and the upstream bills what it generated.
fn relayed_output(from_start: u64, deltas: u64) -> u64 {
    from_start.max(deltas)
}

/// The relayed response body. Owns the request's record and finishes it on drop,
/// so a request is accounted for however it ends (completed, failed, client gone).
pub struct Relay {
    /// The upstream's response, whose body is relayed (its head has gone to the reply).
    inner: Box<UpstreamResponse>,
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
    record: Box<RequestRecord>,
    counted_stream: bool,
    relayed: Relayed,
    cut: CutWatch,
}

impl Relay {
    /// Boxed where it is built (`boxed::boxed`, written in place): moved whole on the
    /// way into the reply, it was copied three times.
    pub fn boxed(
        inner: Box<UpstreamResponse>,
        kind: BodyKind,
        prefix: Option<Bytes>,
        idle: Duration,
        record: Box<RequestRecord>,
        cut: Arc<DrainCut>,
    ) -> Box<Self> {
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
        let mut relay = crate::boxed::boxed(|| Relay {
            inner,
            tap,
            pending: None,
            idle,
            deadline: None,
            timer: None,
            state: State::Streaming,
            record,
            counted_stream,
            relayed: Relayed::default(),
            cut: CutWatch::new(cut),
        });
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
                    let (rec, relayed) = (&mut self.record, &mut self.relayed);
                    sse.scan(events, |ev| on_event(rec, relayed, ev));
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
            let ev = self.fail_stream(cause, err);
            return Poll::Ready(ev.map(|b| Ok(Frame::data(b))));
        }
        self.count_failure(cause, &err);
        tracing::warn!(request_id = %self.record.request_id, cause, "upstream body failed: {err}");
        // An error here makes hyper abort the response, which is the only honest
        // signal left once the status line has gone out.
        Poll::Ready(Some(Err(Box::new(err))))
    }

    fn fail_stream(&mut self, cause: &'static str, err: Error) -> Option<Bytes> {
        self.count_failure(cause, &err);
        tracing::warn!(request_id = %self.record.request_id, cause, "stream failed after start: {err}");
        self.error_event(&err)
    }

    fn error_event(&mut self, err: &Error) -> Option<Bytes> {
        let ev = err.sse_event();
        self.record.bytes_out += ev.len() as u64;
        Some(ev)
    }

    /// The drain deadline passed (or the node was told to stop at once): an event
    /// stream ends with an `overloaded_error` event at an event boundary (the held-back
    /// incomplete event is dropped), any other body is aborted, which is the only
    /// signal left once its head has gone out.
    fn on_cut(&mut self) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let err = Error::new(ErrorKind::Unavailable, "node shutting down");
        self.count_failure("drain_deadline", &err);
        self.record.outcome = "drain_deadline";
        self.cut.cut.count_ended();
        tracing::debug!(request_id = %self.record.request_id, "response cut by the drain");
        if matches!(self.tap, Tap::Sse(_)) {
            return Poll::Ready(self.error_event(&err).map(|b| Ok(Frame::data(b))));
        }
        Poll::Ready(Some(Err(Box::new(err))))
    }

    /// Ends the relay as failed, in the record and the metrics.
    fn count_failure(&mut self, cause: &'static str, err: &Error) {
        self.state = State::Done;
        self.record.outcome = "upstream_failed";
        self.record.error = Some(err.label());
        self.record
            .metrics
            .stream_failures
            .with_label_values(&[cause])
            .inc();
    }
}

fn on_event(rec: &mut RequestRecord, relayed: &mut Relayed, ev: SseEvent<'_>) {
    match ev.name {
        "content_block_delta" => {
            relayed.deltas += 1;
            if rec.ttft.is_none() {
                rec.ttft = Some(rec.started.elapsed());
            }
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
                    relayed.counted = true;
                }
                if let Some(i) = u.input_tokens {
                    rec.usage.input_tokens = i;
                }
            }
        }
        _ => {}
    }
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
            if this.cut.cut.is_fired() {
                return this.on_cut();
            }
            match Pin::new(&mut this.inner.body).poll_frame(cx) {
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
                    if this.cut.park(cx) {
                        return this.on_cut();
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
            _ => self.inner.body.size_hint(),
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.counted_stream {
            self.record.metrics.active_streams.dec();
        }
        if matches!(self.state, State::Streaming) {
            // Still relaying when dropped: the client left, or the process is exiting
            // after the drain deadline with this response not yet ended.
            self.record.outcome = if self.cut.cut.is_fired() {
                "drain_deadline"
            } else {
                "client_gone"
            };
        }
        if self.counted_stream && !self.relayed.counted {
            let usage = &mut self.record.usage;
            usage.output_tokens = relayed_output(usage.output_tokens, self.relayed.deltas);
        }
        if let Tap::Json { chunks, len } = &self.tap {
            // hyper stops polling once content-length bytes are out, so a complete body
            // often ends here rather than in `on_end`. Whether it was complete is the
            // upstream body's to say (its length was reached), not whether the JSON read
            // so far happens to contain a usage object.
            if matches!(self.state, State::Streaming) && self.inner.body.is_end_stream() {
                if *len <= MAX_JSON_TAP {
                    self.record.usage = parse_json_usage(chunks).unwrap_or_default();
                }
                self.record.outcome = "complete";
            }
        }
        self.record.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn record() -> RequestRecord {
        RequestRecord {
            metrics: crate::metrics::Metrics::new(),
            access_log: false,
            request_id: "t".into(),
            started: Instant::now(),
            method: http::Method::POST,
            uri: http::Uri::from_static("/v1/messages"),
            route: RouteKind::Messages,
            client: None,
            model: None,
            stream: true,
            status: 200,
            upstream_key: None,
            attempts: 1,
            upstream_ttfb: None,
            ttft: None,
            usage: Usage::default(),
            error: None,
            outcome: "error",
            bytes_out: 0,
            permit: None,
        }
    }

    /// The events of a stream as far as it got, through the tap as the relay runs it.
    fn relay(events: &str) -> (RequestRecord, Relayed) {
        let (mut rec, mut relayed) = (record(), Relayed::default());
        let mut sse = SseTap::default();
        sse.scan(events.as_bytes(), |ev| on_event(&mut rec, &mut relayed, ev));
        (rec, relayed)
    }

    const START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n";
    const DELTA: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n";

    #[test]
    fn output_of_a_stream_cut_short_is_counted_from_its_deltas() {
        // Cut after 80 deltas, before message_delta: message_start's 1 is not the count.
        let (rec, relayed) = relay(&format!("{START}{}", DELTA.repeat(80)));
        assert_eq!(rec.usage.output_tokens, 1);
        assert_eq!((relayed.deltas, relayed.counted), (80, false));
        assert_eq!(relayed_output(rec.usage.output_tokens, relayed.deltas), 80);
        assert!(rec.ttft.is_some());
        // Cut before any delta: message_start's figure stands.
        let (rec, relayed) = relay(START);
        assert_eq!(relayed_output(rec.usage.output_tokens, relayed.deltas), 1);
        // A message_delta's cumulative count is the count, whatever the deltas were.
        let (rec, relayed) = relay(&format!(
            "{START}{}event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":12}}}}\n\n",
            DELTA.repeat(3)
        ));
        assert_eq!((rec.usage.output_tokens, relayed.counted), (12, true));
    }
}
