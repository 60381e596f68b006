//! The client's request as the pipeline reads it. An HTTP/1.1 head stays the bytes it
//! arrived in, with where each field starts and ends; an HTTP/2 head is hyper's map.
//!
//! Why not always a `HeaderMap`: building one from the parsed head (a name lookup, a
//! hash and an insert per field), taking fields out of it again for the upstream and
//! encoding the rest cost more than anything else the node did per request
//! (docs/benchmarks.md). The pipeline reads a handful of fields; the rest are copied
//! upstream as they came.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};

use crate::body::ClientBody;

/// One client request, head and body.
pub struct ClientRequest {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderFields,
    pub body: ClientBody,
    /// The connection presented a client certificate the listener verified against
    /// the cluster's CA (`cluster.peer_ca_file`): a peer node, for relayed requests.
    pub client_cert: bool,
}

/// A request's header fields, in arrival order.
pub enum HeaderFields {
    /// HTTP/2 (hyper), and requests built in tests.
    Map(HeaderMap),
    /// HTTP/1.1, parsed by the node's own server.
    Raw(RawHeaders),
}

/// The field names the node itself reads or filters, recognised once per field as a
/// head is parsed (by length and first letter, then one comparison), so that
/// lookups and the filters on the way up and back compare a byte rather than names:
/// comparing names again in every phase cost more than parsing the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Known {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    Expect,
    XApiKey,
    Authorization,
    XForwardedFor,
    StraitDefer,
    Te,
    Trailer,
    Upgrade,
    KeepAlive,
    ProxyConnection,
    ProxyAuthenticate,
    ProxyAuthorization,
    Date,
    /// `x-strait-request-id`.
    RequestId,
    /// `x-strait-relay-*`: a peer's signed relay fields.
    StraitRelay,
    /// `anthropic-ratelimit-*`.
    RateLimit,
}

impl Known {
    /// The kinds that name one field each (every kind but `Other` and the prefixes).
    pub const NAMED: [Known; 18] = [
        Known::Host,
        Known::ContentLength,
        Known::TransferEncoding,
        Known::Connection,
        Known::Expect,
        Known::XApiKey,
        Known::Authorization,
        Known::XForwardedFor,
        Known::StraitDefer,
        Known::Te,
        Known::Trailer,
        Known::Upgrade,
        Known::KeepAlive,
        Known::ProxyConnection,
        Known::ProxyAuthenticate,
        Known::ProxyAuthorization,
        Known::Date,
        Known::RequestId,
    ];

    /// What `name` is (any case). `name` is a token (a parsed head's, or a
    /// `HeaderName`): see [`lower_eq`].
    #[inline]
    pub fn of(name: &[u8]) -> Known {
        let is = |n: &[u8]| lower_eq(name, n);
        match (name.len(), name.first().map_or(0, |b| b | 0x20)) {
            (2, b't') if is(b"te") => Known::Te,
            (4, b'h') if is(b"host") => Known::Host,
            (4, b'd') if is(b"date") => Known::Date,
            (6, b'e') if is(b"expect") => Known::Expect,
            (7, b't') if is(b"trailer") => Known::Trailer,
            (7, b'u') if is(b"upgrade") => Known::Upgrade,
            (9, b'x') if is(b"x-api-key") => Known::XApiKey,
            (10, b'c') if is(b"connection") => Known::Connection,
            (10, b'k') if is(b"keep-alive") => Known::KeepAlive,
            (12, b's') if is(b"strait-defer") => Known::StraitDefer,
            (13, b'a') if is(b"authorization") => Known::Authorization,
            (14, b'c') if is(b"content-length") => Known::ContentLength,
            (15, b'x') if is(b"x-forwarded-for") => Known::XForwardedFor,
            (16, b'p') if is(b"proxy-connection") => Known::ProxyConnection,
            (17, b't') if is(b"transfer-encoding") => Known::TransferEncoding,
            (18, b'p') if is(b"proxy-authenticate") => Known::ProxyAuthenticate,
            (19, b'p') if is(b"proxy-authorization") => Known::ProxyAuthorization,
            (19, b'x') if is(b"x-strait-request-id") => Known::RequestId,
            (n, b'x') if n > 15 && lower_eq(&name[..15], b"x-strait-relay-") => Known::StraitRelay,
            (n, b'a') if n > 20 && lower_eq(&name[..20], b"anthropic-ratelimit-") => {
                Known::RateLimit
            }
            _ => Known::Other,
        }
    }

    /// Fields that describe one connection, not the message (RFC 9110 7.6.1).
    #[inline]
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            Known::Te
                | Known::Trailer
                | Known::Upgrade
                | Known::Connection
                | Known::KeepAlive
                | Known::ProxyConnection
                | Known::TransferEncoding
                | Known::ProxyAuthenticate
                | Known::ProxyAuthorization
        )
    }

    /// The one field name of this kind; `None` for kinds of many names.
    pub fn name(self) -> Option<HeaderName> {
        use http::header;
        Some(match self {
            Known::Host => header::HOST,
            Known::ContentLength => header::CONTENT_LENGTH,
            Known::TransferEncoding => header::TRANSFER_ENCODING,
            Known::Connection => header::CONNECTION,
            Known::Expect => header::EXPECT,
            Known::XApiKey => X_API_KEY,
            Known::Authorization => header::AUTHORIZATION,
            Known::XForwardedFor => X_FORWARDED_FOR,
            Known::StraitDefer => HeaderName::from_static("strait-defer"),
            Known::Te => header::TE,
            Known::Trailer => header::TRAILER,
            Known::Upgrade => header::UPGRADE,
            Known::KeepAlive => HeaderName::from_static("keep-alive"),
            Known::ProxyConnection => HeaderName::from_static("proxy-connection"),
            Known::ProxyAuthenticate => header::PROXY_AUTHENTICATE,
            Known::ProxyAuthorization => header::PROXY_AUTHORIZATION,
            Known::Date => header::DATE,
            Known::RequestId => HeaderName::from_static("x-strait-request-id"),
            Known::Other | Known::StraitRelay | Known::RateLimit => return None,
        })
    }

    #[inline(always)]
    fn bit(self) -> u32 {
        1 << self as u8
    }
}

/// Whether the token `name` is `want` (lower case letters and `-`), in any case: eight
/// bytes at a time with the case bit set, where `eq_ignore_ascii_case` folds byte by
/// byte. Exact for tokens: the only other byte that becomes a lower case letter or
/// `-` with 0x20 set is CR (0x0D), which is not a token byte.
#[inline(always)]
fn lower_eq(name: &[u8], want: &[u8]) -> bool {
    const CASE: u64 = u64::from_ne_bytes([0x20; 8]);
    if name.len() != want.len() {
        return false;
    }
    let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("eight bytes"));
    let (mut a, mut b) = (name, want);
    while a.len() >= 8 {
        if word(&a[..8]) | CASE != word(&b[..8]) {
            return false;
        }
        (a, b) = (&a[8..], &b[8..]);
    }
    a.iter().zip(b).all(|(x, y)| x | 0x20 == *y)
}

/// Header fields as positions in the head they were parsed from. Names keep the case
/// the client sent; lookups ignore case.
pub struct RawHeaders {
    head: Bytes,
    // On the heap, sized once: the head is moved through several phases, and moving
    // fields kept inline cost more than the allocation.
    fields: Vec<Field>,
    /// A bit per name length and first letter ([`name_bit`]) is set for every field.
    /// Most lookups are for fields a message does not have (`authorization` beside
    /// `x-api-key`, `strait-defer`, `transfer-encoding`, `retry-after`), and this
    /// answers them without a scan. The first letter matters: by length alone
    /// `strait-defer` collides with `content-type`, and `expect`, `x-forwarded-for`
    /// and `transfer-encoding` with fields every request has.
    name_bits: u64,
    /// A bit per [`Known`] kind present.
    kinds: u32,
}

/// Bit `(7 * length + first letter) % 64` of a name (case folded); 7 spreads the
/// common fields of a request over distinct bits.
#[inline(always)]
fn name_bit(name: &[u8]) -> u64 {
    let first = usize::from(name.first().map_or(0, |b| b | 0x20));
    1 << ((name.len() * 7 + first) % 64)
}

/// Fields recorded while a head is parsed from a read buffer the head's bytes are
/// cut or copied out of afterwards: offsets from the head's first byte, made into
/// [`RawHeaders`] over those bytes. The one way a [`RawHeaders`] is built.
pub struct RawFields {
    base: usize,
    fields: Vec<Field>,
    name_bits: u64,
    kinds: u32,
    /// The furthest offset recorded: the copy must reach it.
    end: u32,
}

impl RawFields {
    /// For a head that starts at `head[0]`, with room for `fields` fields.
    pub fn new(head: &[u8], fields: usize) -> Self {
        RawFields {
            base: head.as_ptr() as usize,
            fields: Vec::with_capacity(fields),
            name_bits: 0,
            kinds: 0,
            end: 0,
        }
    }

    /// Adds a field whose name and value are slices of the head given to [`new`];
    /// what it is named, for the parser's own checks.
    ///
    /// [`new`]: RawFields::new
    #[inline]
    pub fn push(&mut self, name: &[u8], value: &[u8]) -> Known {
        let span = |s: &[u8]| {
            // Wrapping: a slice from below the head lands far past any copy's end,
            // which `into_headers` refuses.
            let start = (s.as_ptr() as usize).wrapping_sub(self.base);
            let start = u32::try_from(start).unwrap_or(u32::MAX);
            (start, start.saturating_add(s.len() as u32))
        };
        let kind = Known::of(name);
        let field = Field {
            name: span(name),
            value: span(value),
            kind,
        };
        self.end = self.end.max(field.name.1).max(field.value.1);
        self.fields.push(field);
        self.name_bits |= name_bit(name);
        self.kinds |= kind.bit();
        kind
    }

    /// The fields over `head`, the bytes (or a copy of the bytes) they were recorded
    /// from. Refuses fields that lie outside it.
    pub fn into_headers(self, head: Bytes) -> RawHeaders {
        assert!(self.end as usize <= head.len(), "a slice of the head");
        RawHeaders {
            head,
            fields: self.fields,
            name_bits: self.name_bits,
            kinds: self.kinds,
        }
    }
}

#[derive(Clone, Copy)]
struct Field {
    name: (u32, u32),
    value: (u32, u32),
    kind: Known,
}

impl RawHeaders {
    /// Whether some field's name has the length and first letter of `name` (if not,
    /// none has that name).
    #[inline]
    fn may_have(&self, name: &[u8]) -> bool {
        self.name_bits & name_bit(name) != 0
    }

    #[inline]
    fn slice(&self, (start, end): (u32, u32)) -> &[u8] {
        &self.head[start as usize..end as usize]
    }

    /// Whether `f` is named `want` (lower case, not empty). Lengths, then first
    /// letters, are compared before names: most fields are passed over without a loop.
    // Always: as a call (the inliner's choice once it grew a branch) it cost 900
    // instructions a request in call overhead (callgrind).
    #[inline(always)]
    fn is_named(&self, f: &Field, want: &[u8]) -> bool {
        (f.name.1 - f.name.0) as usize == want.len()
            && self.head[f.name.0 as usize] | 0x20 == want[0] | 0x20
            && self.slice(f.name).eq_ignore_ascii_case(want)
    }

    /// The value of the first field named `want`.
    #[inline]
    fn first(&self, want: &[u8]) -> Option<&[u8]> {
        self.candidates(want)
            .iter()
            .find(|f| self.is_named(f, want))
            .map(|f| self.slice(f.value))
    }

    /// The fields that may be named `want`: none when no name has its length, so a
    /// lookup for a field the message lacks costs no scan.
    #[inline]
    fn candidates(&self, want: &[u8]) -> &[Field] {
        if self.may_have(want) {
            &self.fields
        } else {
            &[]
        }
    }
}

impl HeaderFields {
    /// Whether any field has one of `names`: one pass over the fields, none when no
    /// field name has one of their lengths (the common case for rare fields).
    pub fn has_any(&self, names: &[&HeaderName]) -> bool {
        match self {
            HeaderFields::Map(map) => names.iter().any(|n| map.contains_key(*n)),
            HeaderFields::Raw(raw) => {
                let lengths = names
                    .iter()
                    .fold(0, |m, n| m | name_bit(n.as_str().as_bytes()));
                raw.name_bits & lengths != 0
                    && raw
                        .fields
                        .iter()
                        .any(|f| names.iter().any(|n| raw.is_named(f, n.as_str().as_bytes())))
            }
        }
    }

    /// The first value of `name`.
    #[inline]
    pub fn get(&self, name: &HeaderName) -> Option<&[u8]> {
        match self {
            HeaderFields::Map(map) => map.get(name).map(|v| v.as_bytes()),
            HeaderFields::Raw(raw) => raw.first(name.as_str().as_bytes()),
        }
    }

    /// The first value of the field `kind` names (not [`Known::Other`], nor a kind
    /// that names several fields: `x-strait-relay-*`, `anthropic-ratelimit-*`).
    #[inline]
    pub fn get_known(&self, kind: Known) -> Option<&[u8]> {
        match self {
            HeaderFields::Map(map) => map.get(kind.name()?).map(|v| v.as_bytes()),
            HeaderFields::Raw(raw) => {
                if raw.kinds & kind.bit() == 0 {
                    return None;
                }
                raw.fields
                    .iter()
                    .find(|f| f.kind == kind)
                    .map(|f| raw.slice(f.value))
            }
        }
    }

    /// Every value of the field `kind` names, in order (as [`get_known`]).
    ///
    /// [`get_known`]: HeaderFields::get_known
    pub fn get_all_known(&self, kind: Known) -> Values<'_> {
        Values(match self {
            HeaderFields::Map(map) => match kind.name() {
                Some(name) => ValuesOf::Map(map.get_all(name).iter()),
                None => ValuesOf::Kind(None, [].iter(), kind),
            },
            HeaderFields::Raw(raw) => {
                let fields: &[Field] = if raw.kinds & kind.bit() == 0 {
                    &[]
                } else {
                    &raw.fields
                };
                ValuesOf::Kind(Some(raw), fields.iter(), kind)
            }
        })
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a HeaderName) -> Values<'a> {
        Values(match self {
            HeaderFields::Map(map) => ValuesOf::Map(map.get_all(name).iter()),
            HeaderFields::Raw(raw) => {
                let want = name.as_str().as_bytes();
                ValuesOf::Raw(raw, raw.candidates(want).iter(), want)
            }
        })
    }

    /// Every field as (name, value), in order.
    pub fn iter(&self) -> Iter<'_> {
        match self {
            HeaderFields::Map(map) => Iter(Fields::Map(map.iter())),
            HeaderFields::Raw(raw) => Iter(Fields::Raw(raw, raw.fields.iter())),
        }
    }

    /// Writes the fields `keep` accepts as HTTP/1.1 header lines. Raw fields that sat
    /// on adjacent lines go out in one copy, their separators as they came (checked
    /// by the head parser); every line ends in CRLF whatever ended it on the way in.
    pub fn write_lines(&self, out: &mut Vec<u8>, mut keep: impl FnMut(&[u8], Known) -> bool) {
        let raw = match self {
            HeaderFields::Map(map) => {
                for (name, value) in map {
                    let name_bytes = name.as_str().as_bytes();
                    if keep(name_bytes, Known::of(name_bytes)) {
                        put_header(out, name, value);
                    }
                }
                return;
            }
            HeaderFields::Raw(raw) => raw,
        };
        let head = &raw.head[..];
        let mut run: Option<(usize, usize)> = None;
        for f in &raw.fields {
            if !keep(raw.slice(f.name), f.kind) {
                continue;
            }
            let (start, end) = (f.name.0 as usize, f.value.1 as usize);
            run = match run {
                Some((s, e)) if e + 2 == start && &head[e..start] == b"\r\n" => Some((s, end)),
                Some((s, e)) => {
                    out.extend_from_slice(&head[s..e]);
                    out.extend_from_slice(b"\r\n");
                    Some((start, end))
                }
                None => Some((start, end)),
            };
        }
        if let Some((s, e)) = run {
            out.extend_from_slice(&head[s..e]);
            out.extend_from_slice(b"\r\n");
        }
    }

    /// Number of fields.
    pub fn len(&self) -> usize {
        match self {
            HeaderFields::Map(map) => map.len(),
            HeaderFields::Raw(raw) => raw.fields.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The fields' size as HTTP/1.1 lines would have it, for the header size limit.
    pub fn wire_size(&self) -> usize {
        self.iter().map(|(n, v)| n.len() + v.len() + 4).sum()
    }
}

/// Iterator over [`HeaderFields`] fields.
pub struct Iter<'a>(Fields<'a>);

enum Fields<'a> {
    Map(http::header::Iter<'a, http::HeaderValue>),
    Raw(&'a RawHeaders, std::slice::Iter<'a, Field>),
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            Fields::Map(it) => it
                .next()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())),
            Fields::Raw(raw, it) => it.next().map(|f| (raw.slice(f.name), raw.slice(f.value))),
        }
    }
}

/// Iterator over the values of one name in [`HeaderFields`] (a plain enum rather than
/// chained adaptors: it is walked for `Connection` on every request and response).
pub struct Values<'a>(ValuesOf<'a>);

enum ValuesOf<'a> {
    Map(http::header::ValueIter<'a, http::HeaderValue>),
    Raw(&'a RawHeaders, std::slice::Iter<'a, Field>, &'a [u8]),
    Kind(Option<&'a RawHeaders>, std::slice::Iter<'a, Field>, Known),
}

impl<'a> Iterator for Values<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.0 {
            ValuesOf::Map(it) => it.next().map(|v| v.as_bytes()),
            ValuesOf::Raw(raw, it, want) => it
                .find(|f| raw.is_named(f, want))
                .map(|f| raw.slice(f.value)),
            ValuesOf::Kind(raw, it, kind) => {
                let raw = (*raw)?;
                it.find(|f| f.kind == *kind).map(|f| raw.slice(f.value))
            }
        }
    }
}

/// The header the gateway reads client keys from, and sends the upstream key in.
pub const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
/// The client addresses a request came through, relayed upstream with the peer added.
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Writes one HTTP/1.1 header line.
pub fn put_header(buf: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    put_field(buf, name.as_str().as_bytes(), value.as_bytes());
}

/// A header line from a name and value already checked (parsed by the head parser, or from
/// `HeaderName` and `HeaderValue`).
pub fn put_field(buf: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    buf.extend_from_slice(name);
    buf.extend_from_slice(b": ");
    buf.extend_from_slice(value);
    buf.extend_from_slice(b"\r\n");
}

/// Appends `n` in decimal, its digits written straight into `buf`.
///
/// Why not `itoa` and `extend_from_slice`: that formats into a buffer on the stack and
/// copies the digits with a `memcpy` call whose length is known only then. The copy
/// loads bytes that were just stored one or two at a time, which stalls the load until
/// the stores retire. The response head's six counts were the costliest copies a
/// request made: 15 % of its `memmove` samples (docs/benchmarks.md).
#[inline]
pub fn put_decimal(buf: &mut Vec<u8>, mut n: u64) {
    const PAIRS: &[u8; 200] = b"0001020304050607080910111213141516171819\
        2021222324252627282930313233343536373839\
        4041424344454647484950515253545556575859\
        6061626364656667686970717273747576777879\
        8081828384858687888990919293949596979899";
    let len = n.checked_ilog10().map_or(1, |l| l as usize + 1);
    let at = buf.len();
    // A fixed-size extension is written inline; it is cut back to the digits below.
    buf.extend_from_slice(&[b'0'; 20]);
    let digits = &mut buf[at..at + len];
    let mut end = len;
    while n >= 10 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        digits[end - 2..end].copy_from_slice(&PAIRS[pair..pair + 2]);
        end -= 2;
    }
    if end == 1 {
        digits[0] = b'0' + n as u8;
    }
    buf.truncate(at + len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_written_as_formatting_writes_them() {
        // Every length from 1 to 20 digits, each power of ten and its neighbours,
        // after what the buffer held already.
        let mut values = vec![0, 1, 9, 99, u64::MAX, u64::MAX - 1];
        let mut p = 1u64;
        while let Some(next) = p.checked_mul(10) {
            values.extend([p - 1, p, p + 1, next / 3]);
            p = next;
        }
        values.extend([p - 1, p, p + 1]);
        for n in values {
            let mut buf = b"x: ".to_vec();
            put_decimal(&mut buf, n);
            assert_eq!(buf, format!("x: {n}").into_bytes(), "{n}");
        }
    }

    #[test]
    fn raw_fields_are_found_whatever_their_case() {
        let head = Bytes::from_static(b"X-Api-Key: k1\r\nAccept: a\r\naccept: b\r\n");
        let mut raw = RawFields::new(&head, 4);
        raw.push(&head[0..9], &head[11..13]);
        raw.push(&head[15..21], &head[23..24]);
        raw.push(&head[26..32], &head[34..35]);
        let h = HeaderFields::Raw(raw.into_headers(head.clone()));
        assert_eq!(
            h.get(&HeaderName::from_static("x-api-key")),
            Some(&b"k1"[..])
        );
        let accept = HeaderName::from_static("accept");
        assert_eq!(h.get_all(&accept).collect::<Vec<_>>(), [b"a", b"b"]);
        assert_eq!(h.get(&http::header::HOST), None);
        // A name as long as one present but not it, and one 64 bytes longer than a
        // present one (the same length bit), are still told apart by the scan.
        assert_eq!(h.get(&HeaderName::from_static("x-api-kez")), None);
        let long = HeaderName::from_bytes(&[b'a'; 70]).unwrap();
        assert_eq!(h.get_all(&long).count(), 0);
        assert_eq!(h.get_all(&HeaderName::from_static("upgrade")).count(), 0);
        assert_eq!(h.wire_size(), (9 + 2 + 4) + (6 + 1 + 4) * 2);

        // One pass for several names, raw or as a map; a same-length, same-first-letter
        // name is still told apart.
        let kez = HeaderName::from_static("x-api-kez");
        let host = http::header::HOST;
        assert!(h.has_any(&[&host, &accept]));
        assert!(!h.has_any(&[&host, &kez]));
        assert!(!h.has_any(&[]));
        let mut map = http::HeaderMap::new();
        map.insert(&accept, http::HeaderValue::from_static("a"));
        let m = HeaderFields::Map(map);
        assert!(m.has_any(&[&kez, &accept]) && !m.has_any(&[&kez, &host]));
    }

    #[test]
    fn known_names_are_recognised_in_any_case_and_only_whole() {
        use Known::*;
        for kind in Known::NAMED {
            let name = kind.name().expect("a kind of one name");
            assert_eq!(Known::of(name.as_str().as_bytes()), kind, "{name}");
            let upper = name.as_str().to_ascii_uppercase();
            assert_eq!(Known::of(upper.as_bytes()), kind, "{upper}");
            let mut near = name.as_str().as_bytes().to_vec();
            *near.last_mut().unwrap() ^= 0x01;
            assert_ne!(Known::of(&near), kind, "{near:?}");
            assert_eq!(Known::of(&near[..near.len() - 1]), Other);
        }
        assert_eq!(Known::of(b"X-Strait-Relay-Signature"), StraitRelay);
        assert_eq!(Known::of(b"x-strait-relay-"), Other);
        assert_eq!(Known::of(b"anthropic-ratelimit-tokens-limit"), RateLimit);
        assert_eq!(Known::of(b"anthropic-ratelimit-"), Other);
        for other in [
            &b"content-type"[..],
            b"anthropic-version",
            b"",
            b"x-api-kez",
            b"hosts",
        ] {
            assert_eq!(Known::of(other), Other);
        }
        assert!(Te.is_hop_by_hop() && ProxyAuthorization.is_hop_by_hop());
        assert!(!Host.is_hop_by_hop() && !Other.is_hop_by_hop());

        // Looked up by kind, raw and as a map alike.
        let head = Bytes::from_static(b"Connection: a\r\nx: 1\r\nconnection: b\r\n");
        let mut raw = RawFields::new(&head, 3);
        raw.push(&head[0..10], &head[12..13]);
        raw.push(&head[15..16], &head[18..19]);
        raw.push(&head[21..31], &head[33..34]);
        let h = HeaderFields::Raw(raw.into_headers(head.clone()));
        assert_eq!(h.get_known(Connection), Some(&b"a"[..]));
        assert_eq!(
            h.get_all_known(Connection).collect::<Vec<_>>(),
            [b"a", b"b"]
        );
        assert_eq!(h.get_known(Host), None);
        assert_eq!(h.get_all_known(XForwardedFor).count(), 0);
        let mut map = http::HeaderMap::new();
        map.append(http::header::CONNECTION, HeaderValue::from_static("a"));
        map.append(http::header::CONNECTION, HeaderValue::from_static("b"));
        let m = HeaderFields::Map(map);
        assert_eq!(m.get_known(Connection), Some(&b"a"[..]));
        assert_eq!(m.get_all_known(Connection).count(), 2);
        assert_eq!(m.get_all_known(RateLimit).count(), 0);
    }

    #[test]
    fn kept_lines_are_written_in_runs_with_crlf_endings() {
        let head = Bytes::from_static(b"A: 1\r\nB:2\r\nC: 3\nD: 4\r\nE: 5\r\n");
        let mut raw = RawFields::new(&head, 4);
        for line in head.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let colon = line.iter().position(|b| *b == b':').unwrap();
            raw.push(&line[..colon], line[colon + 1..].trim_ascii());
        }
        let h = HeaderFields::Raw(raw.into_headers(head.clone()));
        let mut out = Vec::new();
        h.write_lines(&mut out, |n, _| n != b"D");
        assert_eq!(out, b"A: 1\r\nB:2\r\nC: 3\r\nE: 5\r\n");
        out.clear();
        h.write_lines(&mut out, |n, _| n == b"B" || n == b"E");
        assert_eq!(out, b"B:2\r\nE: 5\r\n");
        out.clear();
        h.write_lines(&mut out, |_, _| false);
        assert!(out.is_empty());
    }

    #[test]
    #[should_panic(expected = "a slice of the head")]
    fn a_field_from_elsewhere_is_refused() {
        let mut raw = RawFields::new(b"a: b\r\n", 1);
        raw.push(b"other", b"memory");
        raw.into_headers(Bytes::from_static(b"a: b\r\n"));
    }
}
