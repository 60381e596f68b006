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

    pub fn scan(&mut self, events: &[u8], mut f: impl FnMut(SseEvent<'_>)) {
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
