//! HTTP/1.1 message framing shared by the client-facing server ([`super::server`])
//! and the upstream client ([`super::client`]): body decoding (content-length,
//! chunked, until close), field values (lengths, tokens, names) and the small writers
//! for head lines.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use http::HeaderName;

pub use crate::head::{put_field, put_header};

/// Trailer sections larger than this are refused.
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
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
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
                    let Some(line_end) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(io::Error::other("chunk size line too long"));
                        }
                        return Ok(None);
                    };
                    let size = chunk_size(&buf[..line_end])
                        .ok_or_else(|| io::Error::other("invalid chunk size"))?;
                    buf.advance(line_end + 1);
                    *state = if size == 0 {
                        ChunkState::Trailers
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
                    match buf.first() {
                        None => return Ok(None),
                        Some(b'\n') => buf.advance(1),
                        Some(b'\r') if buf.len() < 2 => return Ok(None),
                        Some(b'\r') if buf[1] == b'\n' => buf.advance(2),
                        _ => return Err(io::Error::other("invalid chunk end")),
                    }
                    *state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    let Some(line_end) = memchr::memchr(b'\n', buf) else {
                        if buf.len() > MAX_TRAILERS {
                            return Err(io::Error::other("trailers too large"));
                        }
                        return Ok(None);
                    };
                    let empty = buf[..line_end].trim_ascii().is_empty();
                    buf.advance(line_end + 1);
                    if empty {
                        *framing = Framing::Done;
                        return Ok(None);
                    }
                }
            },
        }
    }
}

/// The size on a chunk-size line (`1*HEXDIG [ext] CRLF`, without the LF). Strict on
/// purpose: a lenient parse (a `+` sign, spaces inside) is how request smuggling
/// between two HTTP parsers starts.
fn chunk_size(line: &[u8]) -> Option<u64> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = match memchr::memchr(b';', line) {
        Some(i) => line[..i].trim_ascii_end(),
        None => line.trim_ascii_end(),
    };
    if digits.is_empty() || digits.len() > 15 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        let d = (b as char).to_digit(16)?;
        Some(n << 4 | u64::from(d))
    })
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

fn put_decimal(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
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
        for bad in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b" 5\r\n",
            b"5 5\r\n",
            b"\r\n",
            b"x\r\n",
        ] {
            assert!(
                decode_all(Framing::chunked(), bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(decode_all(Framing::chunked(), b"10000000000000000\r\n").is_err());
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
