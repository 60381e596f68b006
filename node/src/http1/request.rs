//! One HTTP/1.1 request head, parsed (`parse`) from the front of the connection's
//! buffer without a copy: method, target, fields (as positions in the head's bytes),
//! framing and keep-alive. Ambiguous framing is refused, not guessed at.

use bytes::BytesMut;
use http::{Method, Uri, Version};

use super::framing::{self as wire, Framing};
use super::parse;
use crate::head::{Known, RawFields, RawHeaders};

/// The first bytes of every HTTP/2 connection with prior knowledge (RFC 9113 3.4).
pub(super) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Headers in one request head, at most (hyper's default was 100).
pub(super) const MAX_HEADERS: usize = 128;

/// A request head, parsed.
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) version: Version,
    pub(super) headers: RawHeaders,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
    /// The head has a `host` field (HTTP/1.1 requires one: RFC 9112 3.2).
    pub(super) has_host: bool,
}

/// Why a head was refused; answered and the connection closed.
pub(super) enum Refused {
    TooLarge,
    /// More header fields than [`MAX_HEADERS`].
    TooManyFields,
    Malformed(&'static str),
}

pub(super) fn is_h2_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf[..n] == H2_PREFACE[..n]
}

/// Parses one request head from the front of `buf`, consuming it when complete.
pub(super) fn parse_head(buf: &mut BytesMut) -> Result<Option<Head>, Refused> {
    let mut head = None;
    parse_head_into(buf, &mut head)?;
    Ok(head)
}

/// [`parse_head`], writing a complete head into `out` (and saying whether there was
/// one). The server's way: the head is written once, where the connection keeps it,
/// where a returned one was copied at each step out (`memcpy` calls of its 208 bytes;
/// docs/benchmarks.md).
pub(super) fn parse_head_into(buf: &mut BytesMut, out: &mut Option<Head>) -> Result<bool, Refused> {
    // Empty lines before a request line are ignored (RFC 9112 2.2): CRLF or LF, as
    // the head parser takes them. A bare CR is not one (hyper refuses it); a CR at the end
    // of what has come may be the start of a CRLF and waits.
    let mut blank = 0;
    loop {
        match &buf[blank..] {
            [b'\n', ..] => blank += 1,
            [b'\r', b'\n', ..] => blank += 2,
            _ => break,
        }
    }
    bytes::Buf::advance(buf, blank);
    // The fields are recorded, and the framing fields read, as the parser meets them:
    // one pass, which also finds where the head ends (or that it has not all come).
    // A framing error is kept until the head has parsed, so a malformed head is
    // refused as malformed whatever its fields say.
    let mut fields = RawFields::new(buf, 8);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut expect_continue = false;
    let mut has_host = false;
    let mut framing_error = None;
    let parsed = parse::request(buf, MAX_HEADERS, |name, value| {
        // The parser has checked the name is a token and the value has no control
        // characters: what `HeaderName` and `HeaderValue` would check.
        match fields.push(name, value) {
            Known::ContentLength => {
                let words = [
                    "invalid content-length",
                    "conflicting content-length headers",
                ];
                if let Err(e) = wire::add_length(&mut length, value, words) {
                    framing_error.get_or_insert(e);
                }
            }
            Known::TransferEncoding => {
                // Only `chunked`, once, is understood; anything else is refused rather
                // than guessed at (RFC 9112 6.1: a server that does not understand a
                // transfer coding answers 501; refusing also closes smuggling routes).
                if transfer_encoding || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    framing_error.get_or_insert("unsupported transfer-encoding");
                }
                transfer_encoding = true;
                chunked = true;
            }
            Known::Connection => {
                close |= wire::has_token(value, b"close");
                keep_alive_token |= wire::has_token(value, b"keep-alive");
            }
            Known::Expect => {
                expect_continue = value.eq_ignore_ascii_case(b"100-continue");
            }
            Known::Host => has_host = true,
            _ => {}
        }
    });
    let (line, len) = match parsed {
        Ok(parse::Status::Complete(done)) => done,
        Ok(parse::Status::Partial) => return Ok(false),
        Err(parse::Error::TooManyHeaders) => return Err(Refused::TooManyFields),
        Err(_) => return Err(Refused::Malformed("malformed HTTP/1.1 request head")),
    };
    if let Some(what) = framing_error {
        return Err(Refused::Malformed(what));
    }
    let method = Method::from_bytes(line.method)
        .map_err(|_| Refused::Malformed("invalid request method"))?;
    let version = match line.minor {
        1 => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    // Where the target lies in the head, before the head is cut from the buffer.
    let target = {
        let start = line.target.as_ptr() as usize - buf.as_ptr() as usize;
        start..start + line.target.len()
    };
    // The head is split off the read buffer without a copy, and the target and every
    // value point into it. They are dropped before the connection reads again (the
    // request is done by then), so the buffer is reclaimed rather than regrown.
    let raw = buf.split_to(len).freeze();
    let uri = Uri::from_maybe_shared(raw.slice(target))
        .map_err(|_| Refused::Malformed("invalid request target"))?;
    let headers = fields.into_headers(raw);
    let framing = match (chunked, length) {
        (true, Some(_)) => {
            // RFC 9112 6.1: a message with both may be an attempt at smuggling.
            return Err(Refused::Malformed(
                "both transfer-encoding and content-length",
            ));
        }
        (true, None) if version == Version::HTTP_10 => {
            return Err(Refused::Malformed("transfer-encoding on HTTP/1.0"));
        }
        (true, None) => Framing::chunked(),
        (false, Some(0)) | (false, None) => Framing::Done,
        (false, Some(n)) => Framing::Length(n),
    };
    let keep_alive = match version {
        Version::HTTP_11 => !close,
        _ => keep_alive_token && !close,
    };
    *out = Some(Head {
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue: expect_continue && version == Version::HTTP_11,
        has_host,
    });
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::HeaderFields;
    use http::header;

    fn parse(raw: &[u8]) -> Result<Option<Head>, Refused> {
        parse_head(&mut BytesMut::from(raw))
    }

    fn refused(raw: &[u8]) -> bool {
        matches!(parse(raw), Err(Refused::Malformed(_)))
    }

    #[test]
    fn heads_parse_with_framing_and_keep_alive() {
        let mut buf = BytesMut::from(
            &b"POST /v1/messages?beta=true HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nx-a: b\r\n\r\nhello"[..],
        );
        let head = parse_head(&mut buf).ok().flatten().expect("complete");
        assert_eq!(head.method, Method::POST);
        assert_eq!(head.uri.path(), "/v1/messages");
        assert_eq!(head.uri.query(), Some("beta=true"));
        let headers = HeaderFields::Raw(head.headers);
        assert_eq!(
            headers.get(&header::HeaderName::from_static("x-a")),
            Some(&b"b"[..])
        );
        assert_eq!(head.framing, Framing::Length(5));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"hello", "the body stays in the buffer");

        let head = parse(b"GET / HTTP/1.0\r\n\r\n").ok().flatten().unwrap();
        assert!(!head.keep_alive, "HTTP/1.0 closes by default");
        let head = parse(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert!(head.keep_alive);
        let head = parse(b"GET / HTTP/1.1\r\nconnection: close\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert!(!head.keep_alive);
        assert_eq!(head.framing, Framing::Done);

        let head =
            parse(b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\nexpect: 100-continue\r\n\r\n")
                .ok()
                .flatten()
                .unwrap();
        assert_eq!(head.framing, Framing::chunked());
        assert!(head.expect_continue);

        assert!(matches!(parse(b"GET / HTTP/1.1\r\nhost: x\r\n"), Ok(None)));
        // Blank lines before the request line are skipped; bare LF line ends work.
        let mut buf = BytesMut::from(&b"\r\n\r\nGET /a HTTP/1.1\nhost: x\n\nNEXT"[..]);
        let head = parse_head(&mut buf).ok().flatten().expect("complete");
        assert_eq!(head.uri.path(), "/a");
        let headers = HeaderFields::Raw(head.headers);
        assert_eq!(headers.get(&header::HOST), Some(&b"x"[..]));
        assert_eq!(&buf[..], b"NEXT");
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        assert!(refused(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n"
        ));
        assert!(refused(
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 5\r\n\r\n"
        ));
        assert!(refused(b"POST / HTTP/1.1\r\ncontent-length: +4\r\n\r\n"));
        assert!(refused(
            b"POST / HTTP/1.1\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        ));
        assert!(refused(
            b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(refused(
            b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n"
        ));
        assert!(refused(b"GET / HTTP/1.1\r\nbad header\r\n\r\n"));
        // Equal duplicates are one length (RFC 9110 8.6).
        let head = parse(b"POST / HTTP/1.1\r\ncontent-length: 4\r\ncontent-length: 4\r\n\r\n")
            .ok()
            .flatten()
            .unwrap();
        assert_eq!(head.framing, Framing::Length(4));
    }

    /// Found by the fuzz properties (tests/prop_http1.rs): a bare CR before the
    /// request line was skipped as if it were an empty line; hyper refuses it.
    #[test]
    fn only_crlf_and_lf_are_empty_lines_before_a_request() {
        assert!(refused(b"\rGET / HTTP/1.1\r\nhost: x\r\n\r\n"));
        assert!(refused(b"\r\rGET / HTTP/1.1\r\nhost: x\r\n\r\n"));
        let mut buf = BytesMut::from(&b"\r\n\n\r"[..]);
        assert!(matches!(parse_head(&mut buf), Ok(None)));
        assert_eq!(&buf[..], b"\r", "a CR that may begin a CRLF waits");
        buf.extend_from_slice(b"\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n");
        let head = parse_head(&mut buf).ok().flatten().expect("complete");
        assert_eq!(head.uri.path(), "/b");
    }

    #[test]
    fn the_h2_preface_is_recognised_from_its_first_bytes() {
        assert!(is_h2_preface(b"PRI * HT"));
        assert!(is_h2_preface(H2_PREFACE));
        assert!(!is_h2_preface(b"POST / HTTP/1.1\r\n"));
    }
}
