//! Server-sent events as Anthropic streams them: events split at blank lines, their
//! names and first data lines read, complete events separated from an incomplete
//! tail, and the first event of a stream peeked before a proxy commits to it.
//! Protocol vocabulary: no gateway policy here.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::Body;

use crate::error::{Error, ErrorKind};
use crate::head::HeaderFields;

/// An SSE event longer than this is forwarded even though incomplete.
pub const MAX_SSE_TAIL: usize = 1024 * 1024;

/// Splits a relayed stream into whole events, and notes whether the stream's
/// `message_stop` or an `error` event went by.
#[derive(Default)]
pub struct SseTap {
    /// The incomplete event at the end of the last chunk, held back so that a failure
    /// can always be signalled as a clean `error` event at an event boundary.
    pub tail: BytesMut,
    pub saw_stop: bool,
    pub saw_error: bool,
}

/// One SSE event: its name and its (first) data line.
pub struct SseEvent<'a> {
    pub name: &'a str,
    pub data: &'a [u8],
}

impl SseTap {
    /// Splits off everything up to the last complete event; keeps the rest.
    pub fn split_complete(&mut self, chunk: Bytes) -> Option<Bytes> {
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

    /// Reads the events in `events` (whole events, as [`split_complete`] passes them)
    /// as the WHATWG rules dispatch them: a field's value loses one leading space, a
    /// line without a colon is a field with an empty value, an empty type is
    /// `message`, and an event without data (a comment, a lone `event:`) is not
    /// dispatched.
    ///
    /// [`split_complete`]: SseTap::split_complete
    pub fn scan(&mut self, events: &[u8], mut f: impl FnMut(SseEvent<'_>)) {
        for raw in split_events(events) {
            let mut name: &[u8] = b"";
            let mut data: Option<&[u8]> = None;
            for line in raw.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let (field, value) = match memchr::memchr(b':', line) {
                    Some(c) => (&line[..c], &line[c + 1..]),
                    None => (line, &b""[..]),
                };
                let value = value.strip_prefix(b" ").unwrap_or(value);
                match field {
                    b"event" => name = value,
                    b"data" if data.is_none() => data = Some(value),
                    _ => {}
                }
            }
            let Some(data) = data else { continue };
            let name = match std::str::from_utf8(name) {
                Ok("") => "message",
                Ok(name) => name,
                // Not a type the node acts on.
                Err(_) => "\u{fffd}",
            };
            match name {
                "message_stop" => self.saw_stop = true,
                "error" => self.saw_error = true,
                _ => {}
            }
            f(SseEvent { name, data });
        }
    }
}

/// Index just past the last blank line in `buf`: a line end (LF or CRLF) followed
/// by another ("\n\n", "\n\r\n", "\r\n\r\n").
pub fn last_boundary(buf: &[u8]) -> Option<usize> {
    let mut i = buf.len();
    while i >= 2 {
        if buf[i - 1] == b'\n' {
            if buf[i - 2] == b'\n' {
                return Some(i);
            }
            if i >= 3 && &buf[i - 3..i] == b"\n\r\n" {
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
pub async fn peek_first_event<B>(body: &mut B, timeout: Duration) -> Result<(Bytes, bool), Error>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
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
    fn boundary_finds_last_blank_line() {
        assert_eq!(
            last_boundary(b"event: a\ndata: 1\n\nevent: b\nda"),
            Some(18)
        );
        assert_eq!(last_boundary(b"event: a\r\ndata: 1\r\n\r\n"), Some(21));
        assert_eq!(last_boundary(b"event: a\ndata: 1\n"), None);
        // Found by the fuzz properties (tests/prop_sse.rs): an LF then a CRLF ends an
        // event too, and was held back until the next boundary.
        assert_eq!(last_boundary(b"data: 1\n\r\nda"), Some(10));
    }

    /// Found by the fuzz properties (tests/prop_sse.rs), against the WHATWG rules:
    /// an event without data is not dispatched (a comment before an `error` event hid
    /// it from `first_event_is_error`), values lose one space only, `data` without a
    /// colon is data, and an empty type is `message`.
    #[test]
    fn events_are_read_as_the_whatwg_rules_dispatch_them() {
        assert!(first_event_is_error(
            b": keep-alive\n\nevent: error\ndata: {}\n\n"
        ));
        assert!(first_event_is_error(
            b"event: error\n\nevent: error\ndata: {}\n\n"
        ));
        let mut t = SseTap::default();
        let mut seen = Vec::new();
        t.scan(
            b"event:  error\ndata: x\n\nevent:\ndata\n\nevent:message_stop\ndata:  y\n\n",
            |e| seen.push((e.name.to_string(), e.data.to_vec())),
        );
        assert_eq!(
            seen,
            [
                (" error".to_string(), b"x".to_vec()),
                ("message".to_string(), b"".to_vec()),
                ("message_stop".to_string(), b" y".to_vec()),
            ]
        );
        assert!(!t.saw_error);
        assert!(t.saw_stop);
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
}
