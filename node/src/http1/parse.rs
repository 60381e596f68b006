//! HTTP/1.1 heads read in one pass: the request line or status line, then the header
//! fields, each handed to the caller as it is read, as slices of the head.
//!
//! Why not httparse, which this replaced: it cost about 1,550 instructions a head
//! (callgrind, a six-field request head), a quarter of the node's own work per
//! request, most of it per-field set-up around vector code that short fields never
//! reach; and its fields were then walked a second time to be recorded. This
//! accepts exactly what httparse 1.10 accepts with its default settings (no obsolete
//! line folding, no spaces before a colon, bare LF line ends allowed) and refuses the
//! rest with the same error; a property test holds the two to the same answers over
//! generated and mutated heads, and httparse stays the reference there.

use std::fmt;

/// Enough of the head has come to decide, or more is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status<T> {
    Complete(T),
    Partial,
}

/// Why a head is refused (httparse's kinds and wording, which operators and tests
/// already see in error messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Error {
    HeaderName,
    HeaderValue,
    NewLine,
    Status,
    Token,
    TooManyHeaders,
    Version,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Error::HeaderName => "invalid header name",
            Error::HeaderValue => "invalid header value",
            Error::NewLine => "invalid new line",
            Error::Status => "invalid response status",
            Error::Token => "invalid token",
            Error::TooManyHeaders => "too many headers",
            Error::Version => "invalid HTTP version",
        })
    }
}

type Result<T> = std::result::Result<Status<T>, Error>;

/// Byte classes, one table so that a byte's class is one load.
const NAME: u8 = 1; // a token byte (RFC 9110 5.6.2): header names and methods
const URI: u8 = 2; // a request-target byte: visible ASCII and obs-text
const VALUE: u8 = 4; // a field-value byte: HTAB, SP, visible ASCII, obs-text

static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        let mut c = 0;
        if matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9'
            | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+'
            | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
        {
            c |= NAME;
        }
        if matches!(b, b'!'..=0x7e | 0x80..=0xff) {
            c |= URI;
        }
        if matches!(b, b'\t' | b' '..=0x7e | 0x80..=0xff) {
            c |= VALUE;
        }
        t[i] = c;
        i += 1;
    }
    t
};

#[inline(always)]
fn is(b: u8, class: u8) -> bool {
    CLASS[usize::from(b)] & class != 0
}

/// The request line's parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RequestLine<'a> {
    pub method: &'a [u8],
    pub target: &'a [u8],
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
}

/// The status line's parts (the reason phrase is not kept).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatusLine {
    pub minor: u8,
    pub code: u16,
}

/// Reads a request head from the front of `b`: its request line, then each field
/// (name, value) given to `field`, at most `max` of them. Complete: the request line
/// and the head's length.
#[inline]
pub(crate) fn request<'a>(
    b: &'a [u8],
    max: usize,
    field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<(RequestLine<'a>, usize)> {
    let mut i = match skip_empty_lines(b)? {
        Status::Complete(i) => i,
        Status::Partial => return Ok(Status::Partial),
    };
    let method_start = i;
    let method = if b[i..].starts_with(b"GET ") {
        i += 4;
        &b[method_start..i - 1]
    } else if b[i..].starts_with(b"POST ") {
        i += 5;
        &b[method_start..i - 1]
    } else {
        // A token of at least one byte, then one space.
        match b.get(i) {
            None => return Ok(Status::Partial),
            Some(&c) if is(c, NAME) => i += 1,
            Some(_) => return Err(Error::Token),
        }
        loop {
            match b.get(i) {
                None => return Ok(Status::Partial),
                Some(b' ') => break,
                Some(&c) if is(c, NAME) => i += 1,
                Some(_) => return Err(Error::Token),
            }
        }
        i += 1;
        &b[method_start..i - 1]
    };
    let target_start = i;
    while i < b.len() && is(b[i], URI) {
        i += 1;
    }
    match b.get(i) {
        None => return Ok(Status::Partial),
        Some(b' ') if i > target_start => {}
        Some(_) => return Err(Error::Token),
    }
    let target = &b[target_start..i];
    if !target.is_ascii() && std::str::from_utf8(target).is_err() {
        return Err(Error::Token);
    }
    i += 1;
    let minor = match version(b, i)? {
        Status::Complete(v) => v,
        Status::Partial => return Ok(Status::Partial),
    };
    i += 8;
    i = match newline(b, i, Error::NewLine)? {
        Status::Complete(i) => i,
        Status::Partial => return Ok(Status::Partial),
    };
    Ok(match fields(b, i, max, field)? {
        Status::Complete(end) => Status::Complete((
            RequestLine {
                method,
                target,
                minor,
            },
            end,
        )),
        Status::Partial => Status::Partial,
    })
}

/// Reads a response head from the front of `b`, as [`request`] does.
#[inline]
pub(crate) fn response<'a>(
    b: &'a [u8],
    max: usize,
    field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<(StatusLine, usize)> {
    let mut i = match skip_empty_lines(b)? {
        Status::Complete(i) => i,
        Status::Partial => return Ok(Status::Partial),
    };
    let minor = match version(b, i)? {
        Status::Complete(v) => v,
        Status::Partial => return Ok(Status::Partial),
    };
    i += 8;
    match b.get(i) {
        None => return Ok(Status::Partial),
        Some(b' ') => i += 1,
        Some(_) => return Err(Error::Version),
    }
    let mut code = 0u16;
    for _ in 0..3 {
        match b.get(i) {
            None => return Ok(Status::Partial),
            Some(&c @ b'0'..=b'9') => code = code * 10 + u16::from(c - b'0'),
            Some(_) => return Err(Error::Status),
        }
        i += 1;
    }
    match b.get(i) {
        None => return Ok(Status::Partial),
        Some(b' ') => {
            // The reason phrase: HTAB, SP, visible ASCII and obs-text, to the line end.
            i += 1;
            loop {
                match b.get(i) {
                    None => return Ok(Status::Partial),
                    Some(b'\r' | b'\n') => break,
                    Some(&c) if c == b'\t' || c >= b' ' && c != 0x7f => i += 1,
                    Some(_) => return Err(Error::Status),
                }
            }
            i = match newline(b, i, Error::Status)? {
                Status::Complete(i) => i,
                Status::Partial => return Ok(Status::Partial),
            };
        }
        Some(b'\r' | b'\n') => {
            i = match newline(b, i, Error::Status)? {
                Status::Complete(i) => i,
                Status::Partial => return Ok(Status::Partial),
            };
        }
        Some(_) => return Err(Error::Status),
    }
    Ok(match fields(b, i, max, field)? {
        Status::Complete(end) => Status::Complete((StatusLine { minor, code }, end)),
        Status::Partial => Status::Partial,
    })
}

/// Empty lines (CRLF or LF) before the start line are skipped (RFC 9112 2.2).
#[inline(always)]
fn skip_empty_lines(b: &[u8]) -> Result<usize> {
    let mut i = 0;
    loop {
        match b.get(i) {
            None => return Ok(Status::Partial),
            Some(b'\n') => i += 1,
            Some(b'\r') => match b.get(i + 1) {
                None => return Ok(Status::Partial),
                Some(b'\n') => i += 2,
                Some(_) => return Err(Error::NewLine),
            },
            Some(_) => return Ok(Status::Complete(i)),
        }
    }
}

/// `HTTP/1.0` or `HTTP/1.1` at `i`: the minor version. A prefix of them at the end
/// of what has come waits for more.
#[inline(always)]
fn version(b: &[u8], i: usize) -> Result<u8> {
    match b.get(i..i + 8) {
        Some(b"HTTP/1.1") => Ok(Status::Complete(1)),
        Some(b"HTTP/1.0") => Ok(Status::Complete(0)),
        Some(_) => Err(Error::Version),
        None => {
            let have = &b[i.min(b.len())..];
            let n = have.len().min(7);
            if have[..n] == b"HTTP/1."[..n] {
                Ok(Status::Partial)
            } else {
                Err(Error::Version)
            }
        }
    }
}

/// A line end (CRLF or LF) at `i`: where the next line starts.
#[inline(always)]
fn newline(b: &[u8], i: usize, err: Error) -> Result<usize> {
    match b.get(i) {
        None => Ok(Status::Partial),
        Some(b'\n') => Ok(Status::Complete(i + 1)),
        Some(b'\r') => match b.get(i + 1) {
            None => Ok(Status::Partial),
            Some(b'\n') => Ok(Status::Complete(i + 2)),
            Some(_) => Err(err),
        },
        Some(_) => Err(err),
    }
}

/// The header fields from `i` through the empty line that ends the head; each is
/// given to `field` with its value's surrounding whitespace trimmed. Complete: where
/// the head ends.
#[inline(always)]
fn fields<'a>(
    b: &'a [u8],
    mut i: usize,
    max: usize,
    mut field: impl FnMut(&'a [u8], &'a [u8]),
) -> Result<usize> {
    let mut count = 0;
    loop {
        // A line end here is the empty line: the head is over.
        let name_start = i;
        match b.get(i) {
            None => return Ok(Status::Partial),
            Some(b'\r' | b'\n') => return newline(b, i, Error::NewLine),
            Some(&c) if is(c, NAME) => i += 1,
            Some(_) => return Err(Error::HeaderName),
        }
        i += b[i..].iter().take_while(|&&c| is(c, NAME)).count();
        match b.get(i) {
            None => return Ok(Status::Partial),
            Some(b':') => {}
            Some(_) => return Err(Error::HeaderName),
        }
        let name = &b[name_start..i];
        i += 1;
        // Whitespace after the colon, then the value up to the line end.
        while let Some(b' ' | b'\t') = b.get(i) {
            i += 1;
        }
        let value_start = i;
        i = value_end(b, i);
        let mut end = i;
        i = match newline(b, i, Error::HeaderValue)? {
            Status::Complete(i) => i,
            Status::Partial => return Ok(Status::Partial),
        };
        // Trailing whitespace is not part of the value (the first byte is not).
        while end > value_start && matches!(b[end - 1], b' ' | b'\t') {
            end -= 1;
        }
        let value = &b[value_start..end];
        if count == max {
            return Err(Error::TooManyHeaders);
        }
        count += 1;
        field(name, value);
    }
}

/// The index of the first byte at or after `i` that is not a field-value byte (or
/// the end). Eight bytes at a time while none is a control byte or DEL: a byte loop
/// over the values was the larger part of reading a head.
#[inline(always)]
fn value_end(b: &[u8], mut i: usize) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const SPACES: u64 = ONES * 0x20;
    const DELS: u64 = ONES * 0x7f;
    while let Some(chunk) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        // A byte's high bit is set when it is below 0x20 (HTAB among them: the byte
        // loop below takes it) or is DEL; a borrow only sets bits above a real match.
        let d = x ^ DELS;
        let stop = (x.wrapping_sub(SPACES) & !x | d.wrapping_sub(ONES) & !d) & HIGH;
        if stop != 0 {
            i += (stop.trailing_zeros() / 8) as usize;
            break;
        }
        i += 8;
    }
    i + b[i..].iter().take_while(|&&c| is(c, VALUE)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::mem::MaybeUninit;

    type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;
    /// A parse as the tests compare it: what was read, or the error's words.
    type Outcome<T> = std::result::Result<Status<T>, String>;
    type RequestParts<'a> = (Vec<u8>, Vec<u8>, u8, Fields<'a>, usize);
    type ResponseParts<'a> = (u8, u16, Fields<'a>, usize);

    /// The reference: httparse with its default settings.
    fn reference_request(b: &[u8], max: usize) -> Outcome<RequestParts<'_>> {
        let mut slots = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); max];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(b, &mut slots) {
            Ok(httparse::Status::Complete(n)) => Ok(Status::Complete((
                req.method.unwrap().as_bytes().to_vec(),
                req.path.unwrap().as_bytes().to_vec(),
                req.version.unwrap(),
                req.headers
                    .iter()
                    .map(|h| (h.name.as_bytes(), h.value))
                    .collect(),
                n,
            ))),
            Ok(httparse::Status::Partial) => Ok(Status::Partial),
            Err(e) => Err(e.to_string()),
        }
    }

    fn ours_request(b: &[u8], max: usize) -> Outcome<RequestParts<'_>> {
        let mut fields = Vec::new();
        match request(b, max, |n, v| fields.push((n, v))) {
            Ok(Status::Complete((line, n))) => Ok(Status::Complete((
                line.method.to_vec(),
                line.target.to_vec(),
                line.minor,
                fields,
                n,
            ))),
            Ok(Status::Partial) => Ok(Status::Partial),
            Err(e) => Err(e.to_string()),
        }
    }

    fn reference_response(b: &[u8], max: usize) -> Outcome<ResponseParts<'_>> {
        let mut slots = vec![MaybeUninit::<httparse::Header<'_>>::uninit(); max];
        let mut resp = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, b, &mut slots)
        {
            Ok(httparse::Status::Complete(n)) => Ok(Status::Complete((
                resp.version.unwrap(),
                resp.code.unwrap(),
                resp.headers
                    .iter()
                    .map(|h| (h.name.as_bytes(), h.value))
                    .collect(),
                n,
            ))),
            Ok(httparse::Status::Partial) => Ok(Status::Partial),
            Err(e) => Err(e.to_string()),
        }
    }

    fn ours_response(b: &[u8], max: usize) -> Outcome<ResponseParts<'_>> {
        let mut fields = Vec::new();
        match response(b, max, |n, v| fields.push((n, v))) {
            Ok(Status::Complete((line, n))) => {
                Ok(Status::Complete((line.minor, line.code, fields, n)))
            }
            Ok(Status::Partial) => Ok(Status::Partial),
            Err(e) => Err(e.to_string()),
        }
    }

    fn same(b: &[u8]) {
        for max in [0, 2, 128] {
            assert_eq!(
                ours_request(b, max),
                reference_request(b, max),
                "request {:?} max {max}",
                String::from_utf8_lossy(b)
            );
            assert_eq!(
                ours_response(b, max),
                reference_response(b, max),
                "response {:?} max {max}",
                String::from_utf8_lossy(b)
            );
        }
    }

    /// Every prefix of `b` too: a head that has not all come yet.
    fn same_prefixes(b: &[u8]) {
        for n in 0..=b.len() {
            same(&b[..n]);
        }
    }

    const CORPUS: &[&[u8]] = &[
        b"POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:18182\r\ncontent-type: application/json\r\nx-api-key: c1\r\nanthropic-version: 2023-06-01\r\nContent-Length: 98\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"\r\n\nGET /a?b=c HTTP/1.1\nHost: x\n\n",
        b"OPTIONS * HTTP/1.1\r\nA:\r\nB: \t \r\nC:\tv \t\r\n\r\n",
        b"PUT /caf\xc3\xa9 HTTP/1.1\r\nX: caf\xc3\xa9 \x80\xff\r\n\r\n",
        b"PUT /\xff HTTP/1.1\r\n\r\n",
        b"GET  / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.2\r\n\r\n",
        b"GET / HTTP/1.1\r\nA : b\r\n\r\n",
        b"GET / HTTP/1.1\r\n A: b\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x00\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x7f\r\n\r\n",
        b"GET / HTTP/1.1\r\nA\x01: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\r\n",
        b"GET / HTTP/1.1\r\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\n\r\n",
        b" GET / HTTP/1.1\r\n\r\n",
        b"\rGET / HTTP/1.1\r\n\r\n",
        b"GET /\x7f HTTP/1.1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 12:00:00 GMT\r\nContent-Type: application/json\r\nContent-Length: 421\r\nConnection: keep-alive\r\n\r\n",
        b"HTTP/1.0 204\r\n\r\n",
        b"HTTP/1.1 200\nA: b\n\n",
        b"HTTP/1.1 999 \t caf\xc3\xa9 \x80\r\n\r\n",
        b"HTTP/1.1 200 O\x7fK\r\n\r\n",
        b"HTTP/1.1 200 O\x01K\r\n\r\n",
        b"HTTP/1.1 20x OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1200 OK\r\n\r\n",
        b"HTTP/1.1 200X\r\n\r\n",
        b"HTTP/1.1 200\r\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\n",
        b"",
        b"\r",
        b"\r\n",
    ];

    #[test]
    fn agrees_with_httparse_on_a_corpus_and_its_prefixes() {
        for b in CORPUS {
            same_prefixes(b);
        }
        let many: Vec<u8> = [
            &b"GET / HTTP/1.1\r\n"[..],
            &b"A: b\r\n".repeat(130),
            b"\r\n",
        ]
        .concat();
        same(&many);
        // The common heads are taken whole.
        assert!(matches!(
            ours_request(CORPUS[0], 128),
            Ok(Status::Complete(_))
        ));
        assert!(matches!(
            ours_response(CORPUS[21], 128),
            Ok(Status::Complete(_))
        ));
    }

    #[test]
    fn agrees_with_httparse_on_mutations() {
        const BYTES: &[u8] = b"\r\n :\t/AHPT10.\x00\x01\x7f\x80\xc3\xff";
        for doc in CORPUS.iter().take(5).chain(&CORPUS[21..24]) {
            for at in 0..doc.len() {
                for &c in BYTES {
                    let mut m = doc.to_vec();
                    m[at] = c;
                    same(&m);
                    let mut m = doc.to_vec();
                    m.insert(at, c);
                    same(&m);
                }
                let mut m = doc.to_vec();
                m.remove(at);
                same(&m);
            }
        }
    }

    /// A head made of plausible pieces, some broken.
    fn head() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            4 => prop::sample::select(&[
                "GET", "POST", "PUT", "HTTP/1.1", "HTTP/1.0", "HTTP/1.", "HTTP/2", "200", "404",
                "OK", "/", "/v1/messages", "*", "Host", "content-length", "x-api-key", "A", "",
            ][..]).prop_map(|s| s.as_bytes().to_vec()),
            4 => prop::sample::select(&[" ", "  ", "\t", ":", ": ", "\r\n", "\n", "\r", "\r\n\r\n"][..])
                .prop_map(|s| s.as_bytes().to_vec()),
            1 => prop::collection::vec(any::<u8>(), 0..4),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }

    /// A well-formed head with arbitrary field values.
    fn valid_head() -> impl Strategy<Value = Vec<u8>> {
        let name = "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}";
        let value =
            prop::collection::vec(prop_oneof![Just(b'\t'), 0x20u8..0x7f, 0x80u8..=0xff], 0..24);
        (
            prop::bool::ANY,
            prop::collection::vec((name, value, prop::bool::ANY), 0..8),
        )
            .prop_map(|(req, fields)| {
                let mut out = if req {
                    b"POST /v1/messages?beta=true HTTP/1.1\r\n".to_vec()
                } else {
                    b"HTTP/1.1 200 OK\r\n".to_vec()
                };
                for (n, v, lf) in fields {
                    out.extend_from_slice(n.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(&v);
                    out.extend_from_slice(if lf { b"\n" } else { b"\r\n" });
                }
                out.extend_from_slice(b"\r\n");
                out
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

        #[test]
        fn agrees_with_httparse_on_generated_heads(b in head()) {
            same(&b);
        }

        #[test]
        fn agrees_with_httparse_on_valid_heads_and_their_prefixes(b in valid_head()) {
            same_prefixes(&b);
        }

        #[test]
        fn agrees_with_httparse_on_any_bytes(b in prop::collection::vec(any::<u8>(), 0..64)) {
            same(&b);
            let mut framed = b"GET / HTTP/1.1\r\n".to_vec();
            framed.extend_from_slice(&b);
            same(&framed);
            let mut framed = b"HTTP/1.1 200 OK\r\n".to_vec();
            framed.extend_from_slice(&b);
            same(&framed);
        }
    }
}
