//! HTTP/1.1 message framing shared by the client-facing server ([`super::server`])
//! and the upstream client ([`super::client`]): body decoding (content-length,
//! chunked, until close), field values (lengths, tokens, names) and the small writers
//! for head lines.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderName;

use crate::head::put_decimal;
pub use crate::head::{put_field, put_header};

/// Trailer sections larger than this (all their lines) are refused.
const MAX_TRAILERS: usize = 64 * 1024;
/// A chunk-size line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// How a message body is delimited, and how much of it is left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// This many bytes left.
    Length(u64),
    Chunked(ChunkState),
    /// Until the peer closes (responses only).
    UntilClose,
    /// Nothing more to read.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkState {
    /// Expecting a size line.
    Size,
    /// Inside a chunk's data, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one; this many bytes of
    /// them read so far.
    Trailers(usize),
}

impl Framing {
    pub fn chunked() -> Self {
        Framing::Chunked(ChunkState::Size)
    }

    pub fn is_done(&self) -> bool {
        matches!(self, Framing::Done)
    }
}

/// Takes the next piece of body out of `buf`, if `buf` holds one. `Ok(None)` means
/// more input is needed, or the body is complete when `framing` is `Done`.
/// Trailers are read and dropped: nothing the node relays uses them.
pub fn decode(framing: &mut Framing, buf: &mut BytesMut) -> io::Result<Option<Bytes>> {
    loop {
        match framing {
            Framing::Done => return Ok(None),
            Framing::UntilClose => {
                if buf.is_empty() {
                    return Ok(None);
                }
                return Ok(Some(buf.split().freeze()));
            }
            Framing::Length(left) => {
                if *left == 0 {
                    *framing = Framing::Done;
                    return Ok(None);
                }
                if buf.is_empty() {
                    return Ok(None);
                }
                let n = (*left).min(buf.len() as u64) as usize;
                *left -= n as u64;
                let out = buf.split_to(n).freeze();
                if *left == 0 {
                    *framing = Framing::Done;
                }
                return Ok(Some(out));
            }
            Framing::Chunked(state) => match state {
                ChunkState::Size => {
                    let line_end = match memchr::memchr(b'\n', buf) {
                        Some(i) if i <= MAX_CHUNK_LINE => i,
                        None if buf.len() <= MAX_CHUNK_LINE => return Ok(None),
                        _ => return Err(io::Error::other("chunk size line too long")),
                    };
                    let size = chunk_size(&buf[..line_end])?;
                    buf.advance(line_end + 1);
                    *state = if size == 0 {
                        ChunkState::Trailers(0)
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        *state = ChunkState::DataEnd;
                    }
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                ChunkState::DataEnd => {
                    // CRLF only: a bare LF here, or on any other line of a chunked body,
                    // is read otherwise by some other parser on the path (hyper refuses
                    // it), which is how chunked smuggling starts.
                    match buf.first() {
                        None => return Ok(None),
                        Some(b'\r') if buf.len() < 2 => return Ok(None),
                        Some(b'\r') if buf[1] == b'\n' => buf.advance(2),
                        _ => return Err(io::Error::other("invalid chunk end")),
                    }
                    *state = ChunkState::Size;
                }
                ChunkState::Trailers(seen) => {
                    let line_end = match memchr::memchr(b'\n', buf) {
                        Some(i) if *seen + i < MAX_TRAILERS => i,
                        None if *seen + buf.len() <= MAX_TRAILERS => return Ok(None),
                        _ => return Err(io::Error::other("trailers too large")),
                    };
                    let line = crlf_line(&buf[..line_end])
                        .ok_or_else(|| io::Error::other("invalid trailer line"))?;
                    if line.is_empty() {
                        buf.advance(line_end + 1);
                        *framing = Framing::Done;
                        return Ok(None);
                    }
                    if !is_field_line(line) {
                        return Err(io::Error::other("invalid trailer line"));
                    }
                    *seen += line_end + 1;
                    buf.advance(line_end + 1);
                }
            },
        }
    }
}

/// A line of a chunked body without its CRLF; `None` when it ends in a bare LF or
/// holds a CR (`line` is cut at the first LF).
fn crlf_line(line: &[u8]) -> Option<&[u8]> {
    let line = line.strip_suffix(b"\r")?;
    (memchr::memchr(b'\r', line).is_none()).then_some(line)
}

/// Whether a trailer line is a header field as a head's would be (a token, a colon,
/// a value without control characters).
fn is_field_line(line: &[u8]) -> bool {
    let mut slot = [httparse::EMPTY_HEADER];
    let mut text = Vec::with_capacity(line.len() + 4);
    text.extend_from_slice(line);
    text.extend_from_slice(b"\r\n\r\n");
    matches!(
        httparse::parse_headers(&text, &mut slot),
        Ok(httparse::Status::Complete((n, [_]))) if n == text.len()
    )
}

/// The size on a chunk-size line (`1*HEXDIG [BWS] [; ext] CRLF`, given without the
/// LF). Strict on purpose: a lenient parse (a `+` sign, spaces inside, a bare LF) is
/// how request smuggling between two HTTP parsers starts.
fn chunk_size(line: &[u8]) -> io::Result<u64> {
    let line = crlf_line(line).ok_or_else(|| io::Error::other("invalid chunk size line"))?;
    let digits = match memchr::memchr(b';', line) {
        Some(i) => &line[..i],
        None => line,
    };
    let digits = match digits.iter().rposition(|b| !matches!(b, b' ' | b'\t')) {
        Some(last) => &digits[..=last],
        None => &[][..],
    };
    let size = digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16)?;
        Some(n << 4 | u64::from(d))
    });
    match size {
        None => Err(io::Error::other("invalid chunk size")),
        Some(_) if digits.is_empty() => Err(io::Error::other("invalid chunk size")),
        // 15 digits: the shift above cannot overflow, and a size padded with zeros
        // (which another parser might read otherwise) is refused.
        Some(_) if digits.len() > 15 => Err(io::Error::other("chunk size too long")),
        Some(n) => Ok(n),
    }
}

/// Custom (non-standard) header names seen on most Anthropic API requests and
/// responses. `HeaderName::from_bytes` copies a custom name into an allocation of its
/// own; these are handed out as shared constants instead. Standard names never
/// allocate and are not listed.
const KNOWN_NAMES: &[&str] = &[
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "x-stainless-arch",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "x-forwarded-for",
    "request-id",
    "anthropic-organization-id",
    "anthropic-ratelimit-requests-limit",
    "anthropic-ratelimit-requests-remaining",
    "anthropic-ratelimit-requests-reset",
    "anthropic-ratelimit-tokens-limit",
    "anthropic-ratelimit-tokens-remaining",
    "anthropic-ratelimit-tokens-reset",
    "anthropic-ratelimit-input-tokens-limit",
    "anthropic-ratelimit-input-tokens-remaining",
    "anthropic-ratelimit-input-tokens-reset",
    "anthropic-ratelimit-output-tokens-limit",
    "anthropic-ratelimit-output-tokens-remaining",
    "anthropic-ratelimit-output-tokens-reset",
    "x-should-retry",
    "cf-ray",
    "cf-cache-status",
    "x-robots-tag",
    "via",
    "x-envoy-upstream-service-time",
];

/// A header name from the wire: a shared constant for the common custom names,
/// parsed (and, for other custom names, allocated) otherwise.
pub fn header_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    // Names grouped by length: a lookup is an index and a compare or two.
    type Group = Vec<(&'static [u8], HeaderName)>;
    static BY_LEN: std::sync::LazyLock<Vec<Group>> = std::sync::LazyLock::new(|| {
        let mut by_len = vec![Vec::new(); 64];
        for name in KNOWN_NAMES {
            by_len[name.len()].push((name.as_bytes(), HeaderName::from_static(name)));
        }
        by_len
    });
    if let Some(group) = BY_LEN.get(raw.len()) {
        if let Some((_, n)) = group.iter().find(|(bytes, _)| *bytes == raw) {
            return Ok(n.clone());
        }
    }
    HeaderName::from_bytes(raw)
}

/// A decimal content-length value: digits only, as RFC 9110 8.6 has it.
pub fn parse_length(value: &[u8]) -> Option<u64> {
    let v = value.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 19 digits: below 10^19, which a u64 holds.
    Some(v.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Takes one `content-length` value into the head's `length`: equal repeats are one
/// length (RFC 9110 8.6); the error says what is wrong, in the caller's `words`
/// (invalid, conflicting).
pub fn add_length(
    length: &mut Option<u64>,
    value: &[u8],
    words: [&'static str; 2],
) -> Result<(), &'static str> {
    match parse_length(value) {
        Some(n) if length.is_none_or(|l| l == n) => {
            *length = Some(n);
            Ok(())
        }
        Some(_) => Err(words[1]),
        None => Err(words[0]),
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

pub fn put_length(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(b"content-length: ");
    put_decimal(buf, n);
    buf.extend_from_slice(b"\r\n");
}

/// A chunk-size line for `len` bytes of data.
pub fn put_chunk_size(buf: &mut Vec<u8>, len: usize) {
    put_hex(buf, len as u64);
    buf.extend_from_slice(b"\r\n");
}

/// `n` in lower-case hex, without the formatting machinery (itoa writes decimal only).
fn put_hex(buf: &mut Vec<u8>, mut n: u64) {
    let radix = 16;
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(framing: Framing, input: &[u8]) -> io::Result<(Vec<u8>, Framing, usize)> {
        let mut f = framing;
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(d) = decode(&mut f, &mut buf)? {
            out.extend_from_slice(&d);
        }
        Ok((out, f, buf.len()))
    }

    fn all_refused(bodies: &[&[u8]]) {
        for bad in bodies {
            let read = decode_all(Framing::chunked(), bad);
            assert!(read.is_err(), "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let (out, f, left) = decode_all(
            Framing::chunked(),
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-t: 1\r\n\r\nNEXT",
        )
        .unwrap();
        assert_eq!(out, b"hello world");
        assert!(f.is_done());
        assert_eq!(left, 4, "the next message stays in the buffer");
    }

    #[test]
    fn lenient_chunk_sizes_are_refused() {
        all_refused(&[
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b" 5\r\n",
            b"5 5\r\n",
            b"\r\n",
            b"x\r\n",
            b"10000000000000000\r\n",
        ]);
    }

    /// Found by the fuzz properties (tests/prop_http1.rs): bare LF line ends, a CR
    /// inside a size line and a blank-looking trailer line were read where hyper
    /// refuses them, so the two would disagree on where a body ends.
    #[test]
    fn chunked_lines_end_in_crlf_and_trailers_are_fields() {
        all_refused(&[
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"0\r\n \r\nNEXT",
            b"0\r\nx-t: 1\n\r\n",
            b"0\r\nbad line\r\n\r\n",
            b"5\r\r\nhello\r\n",
            b"5\x0c\r\nhello\r\n",
            b"5;a\rb\r\nhello\r\n",
        ]);
        let err = decode_all(Framing::chunked(), b"0000000000000005\r\nhello\r\n").unwrap_err();
        assert_eq!(err.to_string(), "chunk size too long");
        // Whitespace after the size is allowed (RFC 9112 7.1.1, BWS before `;`).
        let (out, f, _) = decode_all(
            Framing::chunked(),
            b"5 \r\nhello\r\n1\t;x\r\n!\r\n0\r\nx-t:1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(out, b"hello!");
        assert!(f.is_done());
    }

    #[test]
    fn trailer_sections_are_bounded_as_a_whole() {
        let mut body = b"0\r\n".to_vec();
        let line = format!("x-t: {}\r\n", "v".repeat(1000));
        while body.len() <= MAX_TRAILERS {
            body.extend_from_slice(line.as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        let err = decode_all(Framing::chunked(), &body).unwrap_err();
        assert_eq!(err.to_string(), "trailers too large");
    }

    #[test]
    fn known_names_are_shared_and_others_parsed() {
        assert_eq!(header_name(b"x-api-key").unwrap(), "x-api-key");
        assert_eq!(
            header_name(b"content-type").unwrap(),
            http::header::CONTENT_TYPE
        );
        assert_eq!(header_name(b"X-Custom").unwrap(), "x-custom");
        assert!(header_name(b"bad name").is_err());
        assert!(KNOWN_NAMES
            .iter()
            .all(|n| n.len() < 64 && *n == n.to_ascii_lowercase()));
    }

    #[test]
    fn lengths_are_digits_only() {
        assert_eq!(parse_length(b"42"), Some(42));
        assert_eq!(parse_length(b" 7 "), Some(7));
        assert_eq!(parse_length(b"+7"), None);
        assert_eq!(parse_length(b"7,7"), None);
        assert_eq!(parse_length(b""), None);
        assert_eq!(parse_length(b"99999999999999999999"), None);
        assert_eq!(
            parse_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        assert_eq!(parse_length(b"0000000000000000012"), Some(12));
    }

    #[test]
    fn numbers_are_written_without_formatting() {
        let mut b = Vec::new();
        put_decimal(&mut b, 0);
        b.push(b' ');
        put_decimal(&mut b, 1234567890);
        b.push(b' ');
        put_chunk_size(&mut b, 0x1f40);
        assert_eq!(b, b"0 1234567890 1f40\r\n");
    }
}
