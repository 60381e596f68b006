//! Request body types: the client's request body as the servers hand it over, and the
//! body sent upstream (buffered and replayable, or streamed under the size limit);
//! and the clock that gives up on a client too slow with its body ([`UploadClock`]).
//! The response body belongs to the stream phase ([`crate::stream::ProxyBody`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::error::{Error, ErrorKind};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A client's request body as the listener hands it over.
pub enum ClientBody {
    /// Read whole by the HTTP/1.1 server before the request was handed over (small
    /// bodies with a declared length: no channel, no task hop).
    Full(Option<Bytes>),
    /// Streamed by the HTTP/1.1 server as it reads the connection; `left` is the
    /// declared length still to come, if there was one.
    Channel {
        rx: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
        left: Option<u64>,
    },
    /// An HTTP/2 request body, from hyper, timed by its watch (the HTTP/1.1 server
    /// times its own reads). Boxed: every request body is moved several times on its
    /// way, and the watch would double the size of all of them.
    Hyper(hyper::body::Incoming, Box<UploadWatch>),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ClientBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ClientBody::Channel { rx, left } => match rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(d))) => {
                    if let Some(l) = left {
                        *l = l.saturating_sub(d.len() as u64);
                    }
                    Poll::Ready(Some(Ok(Frame::data(d))))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
            ClientBody::Hyper(inner, watch) => match Pin::new(inner).poll_frame(cx) {
                Poll::Pending => watch.pending(cx),
                Poll::Ready(frame) => {
                    if let Some(Ok(f)) = &frame {
                        watch.arrived(f.data_ref().map_or(0, Bytes::len));
                    } else {
                        watch.arrived(0);
                    }
                    Poll::Ready(frame.map(|r| r.map_err(|e| Box::new(e) as BoxError)))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Full(d) => d.is_none(),
            ClientBody::Channel { .. } => false,
            ClientBody::Hyper(inner, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ClientBody::Full(None) => SizeHint::with_exact(0),
            ClientBody::Channel { left, .. } => match left {
                Some(n) => SizeHint::with_exact(*n),
                None => SizeHint::default(),
            },
            ClientBody::Hyper(inner, _) => inner.size_hint(),
        }
    }
}

/// How long a client may take over its request body (`limits.body_read_timeout`,
/// `limits.min_upload_rate`). Only time spent waiting on the client counts: while the
/// node is not reading (the upstream is slow to take an upload), no clock runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// Longest wait for the next body byte, the first one included.
    pub read_timeout: Duration,
    /// Bytes per second the client must keep up, measured over each `read_timeout`
    /// of waiting (the first such window is the grace period); 0: no floor.
    pub min_rate: u64,
}

/// Why a request body was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stall {
    /// Nothing arrived for `read_timeout`.
    Silent,
    /// Less than `min_rate` arrived over a window.
    Slow,
}

impl Stall {
    /// The `reason` label of `strait_request_body_timeouts_total`.
    pub fn label(self) -> &'static str {
        match self {
            Stall::Silent => "silent",
            Stall::Slow => "slow",
        }
    }

    /// The 408 the client gets, when an answer can still be sent.
    pub fn error(self, limits: &UploadLimits) -> Error {
        let window = humantime::format_duration(limits.read_timeout);
        let message = match self {
            Stall::Silent => format!("request body not received: nothing arrived for {window}"),
            Stall::Slow => format!(
                "request body arrived slower than the gateway's minimum of {} bytes per second (measured over {window})",
                limits.min_rate
            ),
        };
        Error::new(ErrorKind::RequestTimeout, message)
    }
}

/// The clock of one request body: when the reader waits for bytes and how many came.
/// It reads no clock itself and owns no timer: the reader passes `now`, arms its own
/// timer for the deadline [`UploadClock::wait`] returns and calls
/// [`UploadClock::check`] when that fires. Deadlines only ever move later, so a timer
/// armed earlier than needed is left alone and re-armed when it fires (a few times per
/// slow body, never once per chunk).
#[derive(Debug, Clone)]
pub struct UploadClock {
    limits: UploadLimits,
    waiting: Option<Wait>,
    /// Waiting time of the current window before `Wait::counted_from`.
    waited: Duration,
    /// Bytes received in the current window.
    got: u64,
}

#[derive(Debug, Clone, Copy)]
struct Wait {
    since: Instant,
    /// From here on the wait counts towards the current window (a window that ended
    /// during the wait took the part before).
    counted_from: Instant,
}

impl UploadClock {
    pub fn new(limits: UploadLimits) -> Self {
        UploadClock {
            limits,
            waiting: None,
            waited: Duration::ZERO,
            got: 0,
        }
    }

    pub fn is_waiting(&self) -> bool {
        self.waiting.is_some()
    }

    /// The reader needs bytes and has none: a wait starts. Returns when
    /// [`UploadClock::check`] is due.
    pub fn wait(&mut self, now: Instant) -> Instant {
        let w = Wait {
            since: now,
            counted_from: now,
        };
        self.waiting = Some(w);
        self.due(w)
    }

    /// `n` bytes arrived (0: the body ended or failed); a wait, if any, ends at `now`.
    pub fn arrived(&mut self, n: usize, now: Instant) {
        self.got = self.got.saturating_add(n as u64);
        if let Some(w) = self.waiting.take() {
            self.waited += now.saturating_duration_since(w.counted_from);
        }
    }

    /// The timer fired: the body is given up, or the next time to check is returned.
    pub fn check(&mut self, now: Instant) -> Result<Instant, Stall> {
        let t = self.limits.read_timeout;
        let Some(mut w) = self.waiting else {
            return Ok(now + t);
        };
        if now.saturating_duration_since(w.since) >= t {
            return Err(Stall::Silent);
        }
        if self.limits.min_rate > 0
            && self.waited + now.saturating_duration_since(w.counted_from) >= t
        {
            let floor = u128::from(self.limits.min_rate) * t.as_millis() / 1000;
            if u128::from(self.got) < floor {
                return Err(Stall::Slow);
            }
            // Window passed: the next one starts now.
            self.waited = Duration::ZERO;
            self.got = 0;
            w.counted_from = now;
            self.waiting = Some(w);
        }
        Ok(self.due(w))
    }

    fn due(&self, w: Wait) -> Instant {
        let t = self.limits.read_timeout;
        let silent = w.since + t;
        if self.limits.min_rate == 0 {
            return silent;
        }
        silent.min(w.counted_from + t.saturating_sub(self.waited))
    }
}

/// Arms `timer` for `due` unless it is set earlier already (it then fires early, and
/// the check re-arms it): moving a timer costs more than a wake-up now and then.
pub fn arm(timer: Pin<&mut Sleep>, due: Instant) {
    if timer.deadline() > due {
        timer.reset(due);
    }
}

/// An HTTP/2 request body was given up: the server is told on `trip` and answers 408
/// itself, dropping the handler (and any upstream attempt under way).
pub struct UploadWatch {
    clock: UploadClock,
    /// Made at the first wait: most bodies arrive with their headers.
    timer: Option<Pin<Box<Sleep>>>,
    trip: Option<oneshot::Sender<Stall>>,
    tripped: bool,
}

impl UploadWatch {
    /// A watch and the receiver its stall is sent to.
    pub fn new(limits: UploadLimits) -> (Box<UploadWatch>, oneshot::Receiver<Stall>) {
        let (tx, rx) = oneshot::channel();
        let watch = Box::new(UploadWatch {
            clock: UploadClock::new(limits),
            timer: None,
            trip: Some(tx),
            tripped: false,
        });
        (watch, rx)
    }

    fn arrived(&mut self, n: usize) {
        if self.clock.is_waiting() {
            self.clock.arrived(n, Instant::now());
        } else {
            // No wait to end: no clock read.
            self.clock.got = self.clock.got.saturating_add(n as u64);
        }
    }

    /// The body had nothing to give: wait on the timer beside it.
    fn pending(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.tripped {
            return Poll::Pending;
        }
        if !self.clock.is_waiting() {
            let due = self.clock.wait(Instant::now());
            match &mut self.timer {
                Some(t) => arm(t.as_mut(), due),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        let Some(timer) = &mut self.timer else {
            return Poll::Pending;
        };
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match self.clock.check(Instant::now()) {
                Ok(next) => timer.as_mut().reset(next),
                Err(stall) => {
                    // The server answers; the handler waits until it is dropped.
                    if let Some(tx) = self.trip.take() {
                        if tx.send(stall).is_ok() {
                            self.tripped = true;
                            return Poll::Pending;
                        }
                    }
                    // The answer has started already: the reader sees an error.
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(
                        stall.error(&self.clock.limits),
                    )))));
                }
            }
        }
    }
}

/// A request body given up for slowness, where the reader sees it as an error.
#[derive(Debug)]
pub struct BodyStalled(pub Error);

impl std::fmt::Display for BodyStalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for BodyStalled {}

/// A request body on its way upstream: buffered (replayable, so retries are possible)
/// or streamed from the client with the size limit enforced as it goes.
pub enum RequestBody {
    Full(Option<Bytes>),
    Stream {
        inner: ClientBody,
        seen: u64,
        limit: u64,
    },
}

/// The client sent more than `limits.max_body_bytes` on a streamed upload.
#[derive(Debug)]
pub struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body exceeds the configured limit")
    }
}

impl std::error::Error for BodyTooLarge {}

impl RequestBody {
    /// Bytes held in memory: the body's length when buffered, 0 when streamed.
    pub fn buffered_len(&self) -> usize {
        match self {
            RequestBody::Full(Some(b)) => b.len(),
            _ => 0,
        }
    }

    /// A copy for another attempt, if this body can be replayed.
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Full(b) => Some(RequestBody::Full(b.clone())),
            RequestBody::Stream { .. } => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            RequestBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            RequestBody::Stream { inner, seen, limit } => match Pin::new(inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        *seen += d.len() as u64;
                        if *seen > *limit {
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                        }
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Full(d) => d.is_none(),
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            RequestBody::Full(None) => SizeHint::with_exact(0),
            RequestBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(1);

    fn clock(min_rate: u64) -> UploadClock {
        UploadClock::new(UploadLimits {
            read_timeout: T,
            min_rate,
        })
    }

    /// What arrives: after waiting this many ms, this many bytes.
    type Steps = &'static [(u64, usize)];
    /// A stall and when it came.
    type Outcome = Option<(Stall, Duration)>;

    /// Runs `steps` (wait this long, then this many bytes arrive) against a clock,
    /// checking whenever the deadline passes as a timer would; returns the stall and
    /// when it came, counted from the start.
    fn run(min_rate: u64, steps: Steps) -> Outcome {
        let start = Instant::now();
        let mut c = clock(min_rate);
        let mut now = start;
        for &(after_ms, bytes) in steps {
            let arrives = now + Duration::from_millis(after_ms);
            let mut due = c.wait(now);
            while due <= arrives {
                match c.check(due) {
                    Ok(next) => {
                        assert!(next > due, "the next check is later");
                        due = next;
                    }
                    Err(stall) => return Some((stall, due - start)),
                }
            }
            now = arrives;
            c.arrived(bytes, now);
        }
        None
    }

    #[test]
    fn slow_and_silent_bodies_are_told_apart() {
        let ms = Duration::from_millis;
        // (case, min rate, steps, stall and when)
        let cases: &[(&str, u64, Steps, Outcome)] = &[
            (
                "silent from the start",
                1024,
                &[(5_000, 1)],
                Some((Stall::Silent, T)),
            ),
            (
                "silent after a first piece",
                1024,
                &[(100, 4096), (5_000, 1)],
                Some((Stall::Silent, ms(1_100))),
            ),
            (
                "a byte every 100 ms, under 1 KiB/s",
                1024,
                &[(100, 1); 30],
                Some((Stall::Slow, T)),
            ),
            ("the same with no floor", 0, &[(100, 1); 30], None),
            ("4 KiB every 100 ms", 1024, &[(100, 4096); 30], None),
            (
                "a byte every 900 ms: never silent, too slow",
                1024,
                &[(900, 1); 5],
                Some((Stall::Slow, ms(1_000))),
            ),
        ];
        for (case, rate, steps, want) in cases {
            assert_eq!(run(*rate, steps), *want, "{case}");
        }
    }

    #[test]
    fn time_the_reader_is_not_waiting_is_not_the_clients() {
        let mut c = clock(1024);
        let start = Instant::now();
        c.wait(start);
        c.arrived(2048, start + Duration::from_millis(100));
        // The node took a minute to want more (the upstream was slow to read).
        let later = start + Duration::from_secs(60);
        let due = c.wait(later);
        assert_eq!(
            due,
            later + Duration::from_millis(900),
            "the window goes on"
        );
        assert_eq!(c.check(due), Ok(later + T), "2 KiB in a window is enough");
        assert_eq!(c.check(later + T), Err(Stall::Silent));
    }

    #[test]
    fn stalls_read_as_408_invalid_request() {
        let limits = UploadLimits {
            read_timeout: Duration::from_secs(30),
            min_rate: 1024,
        };
        let e = Stall::Silent.error(&limits);
        assert_eq!(e.status(), http::StatusCode::REQUEST_TIMEOUT);
        assert_eq!(e.anthropic_type(), "invalid_request_error");
        assert!(e.message.contains("30s"), "{}", e.message);
        let e = Stall::Slow.error(&limits);
        assert!(e.message.contains("1024 bytes per second"), "{}", e.message);
    }
}
