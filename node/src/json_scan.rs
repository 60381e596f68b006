//! JSON read by hand, for the scanners that take a few fields out of a document
//! without serde on the request path (admit's Messages peek, a reply's usage): serde
//! cost about 30 instructions a byte. Vocabulary: it imports nothing from the crate.
//!
//! The contract: a reading says yes (`Some`) only where serde_json would accept the
//! same bytes, and `None` whenever it is not sure (anything unusual: escapes or
//! non-ASCII bytes where they matter, numbers serde might read otherwise, deep
//! nesting), so that the caller hands the document to serde, which decides. The
//! searches at the end ([`string_end`], [`top_level_value`],
//! [`top_level_value_from_end`]) check nothing: they find where to read.

/// serde_json refuses nesting deeper than 128; [`Scanner::value`] hands over well
/// before.
pub const MAX_DEPTH: u32 = 100;

/// A cursor over a JSON document: `b[i..]` is still to read. A method that fails
/// leaves `i` anywhere: the reading is abandoned.
#[derive(Debug, Clone, Copy)]
pub struct Scanner<'a> {
    pub b: &'a [u8],
    pub i: usize,
}

impl<'a> Scanner<'a> {
    #[inline]
    pub fn new(b: &'a [u8]) -> Self {
        Scanner { b, i: 0 }
    }

    /// Whether the whole document has been read.
    #[inline]
    pub fn at_end(&self) -> bool {
        self.i == self.b.len()
    }

    #[inline]
    pub fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    /// The next byte, taken.
    #[inline]
    pub fn byte(&mut self) -> Option<u8> {
        let c = self.peek()?;
        self.i += 1;
        Some(c)
    }

    /// The next byte, which must be `c`.
    #[inline]
    pub fn eat(&mut self, c: u8) -> Option<()> {
        (self.byte()? == c).then_some(())
    }

    /// JSON whitespace skipped (a plain loop: the runs are a byte or two, shorter
    /// than a call into memchr pays for).
    #[inline]
    pub fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    /// `word` (`true`, `false`, `null`), taken.
    #[inline]
    pub fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.i + word.len();
        (self.b.get(self.i..end)? == word).then(|| self.i = end)
    }

    /// A string without escapes or non-ASCII bytes (keys, names): its contents.
    #[inline]
    pub fn plain_string(&mut self) -> Option<&'a [u8]> {
        self.eat(b'"')?;
        let start = self.i;
        let end = plain_end(self.b, start)?;
        if self.b[end] != b'"' {
            return None;
        }
        self.i = end + 1;
        Some(&self.b[start..end])
    }

    /// Any string serde skips: escapes checked as serde checks them, no control
    /// characters; ASCII only (serde decides the rest).
    pub fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.i = plain_end(self.b, self.i)?;
            match self.byte()? {
                b'"' => return Some(()),
                b'\\' => match self.byte()? {
                    b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                    b'u' => {
                        let hex = self.b.get(self.i..self.i + 4)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return None;
                        }
                        self.i += 4;
                    }
                    _ => return None,
                },
                _ => return None,
            }
        }
    }

    /// A number in JSON's grammar: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
    pub fn number(&mut self) -> Option<()> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.byte()? {
            b'0' => {}
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    /// The run of decimal digits at the cursor, taken: how many.
    #[inline]
    pub fn digits(&mut self) -> usize {
        let n = self.b[self.i..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        self.i += n;
        n
    }

    #[inline]
    fn some_digits(&mut self) -> Option<()> {
        (self.digits() > 0).then_some(())
    }

    /// An unsigned integer serde reads as one (as a `u64`, never a float): at most
    /// 19 digits (no overflow), no leading zero, no fraction or exponent.
    #[inline]
    pub fn uint(&mut self) -> Option<u64> {
        // One pass: digits folded as they are counted.
        let start = self.i;
        let mut n = 0u64;
        while let Some(&d @ b'0'..=b'9') = self.b.get(self.i) {
            if self.i - start == 19 {
                return None;
            }
            n = n * 10 + u64::from(d - b'0');
            self.i += 1;
        }
        let len = self.i - start;
        if len == 0 || (len > 1 && self.b[start] == b'0') {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(n)
    }

    /// Any value serde skips, at nesting `depth` (the top level is 0).
    pub fn value(&mut self, depth: u32) -> Option<()> {
        match self.peek()? {
            b'"' => self.string(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.number(),
            open @ (b'{' | b'[') => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                self.i += 1;
                self.ws();
                let close = if open == b'{' { b'}' } else { b']' };
                if self.peek()? == close {
                    self.i += 1;
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.ws();
                        self.eat(b':')?;
                        self.ws();
                    }
                    self.value(depth + 1)?;
                    self.ws();
                    match self.byte()? {
                        b',' => self.ws(),
                        c if c == close => return Some(()),
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }
}

/// A byte a string may hold as it is, in the plain readings: printable ASCII but
/// for the quote and the backslash.
#[inline]
fn plain(c: u8) -> bool {
    c != b'"' && c != b'\\' && (0x20..0x80).contains(&c)
}

/// The index of the first byte at or after `i` that is not [`plain`]; `None` when
/// every byte to the end is. Eight bytes at a time: a byte-by-byte loop over the keys
/// and values of a usage object cost more than the rest of reading it.
#[inline]
fn plain_end(b: &[u8], i: usize) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    const QUOTES: u64 = ONES * b'"' as u64;
    const BACKSLASHES: u64 = ONES * b'\\' as u64;
    const SPACES: u64 = ONES * 0x20;
    let rest = b.get(i..)?;
    let mut chunks = rest.chunks_exact(8);
    let mut at = i;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes([
            chunk[0], chunk[1], chunk[2], chunk[3], chunk[4], chunk[5], chunk[6], chunk[7],
        ]);
        // For each test a byte's high bit is set when the byte matches; a borrow can
        // only set bits above a real match, so the lowest set bit is the first match.
        let (q, s) = (x ^ QUOTES, x ^ BACKSLASHES);
        let quote = q.wrapping_sub(ONES) & !q;
        let backslash = s.wrapping_sub(ONES) & !s;
        let control = x.wrapping_sub(SPACES) & !x;
        let found = (quote | backslash | control | x) & HIGH;
        if found != 0 {
            return Some(at + (found.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    let tail = chunks.remainder();
    tail.iter().position(|&c| !plain(c)).map(|n| at + n)
}

/// For the string whose opening quote is at `i`: the index just past its closing
/// quote, and whether it held an escape. `None` if it does not end.
#[inline]
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b[j] == b'"' {
            return Some((j + 1, escaped));
        }
        escaped = true;
        j += 2;
    }
}

/// Whether the byte at `i` is escaped: an odd number of backslashes before it.
#[inline]
pub fn escaped_at(b: &[u8], i: usize) -> bool {
    b[..i].iter().rev().take_while(|c| **c == b'\\').count() % 2 == 1
}

/// What follows a key that ends just before `at`: the bytes from the start of its
/// value to the end of the document, when `:` comes next.
#[inline]
fn value_after_key(b: &[u8], at: usize) -> Option<&[u8]> {
    let value = b[at..].trim_ascii_start().strip_prefix(b":")?;
    Some(value.trim_ascii_start())
}

/// The bytes from the start of `key`'s value in the top-level JSON object `json` to
/// the end of the document; `None` when `json` has no such top-level key. Keys nested
/// deeper (a tool input's own `usage`, say) are skipped, as are strings.
pub fn top_level_value<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut depth = 0u32;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i;
                i = string_end(json, start)?.0;
                if depth == 1 && &json[start + 1..i - 1] == key {
                    if let Some(value) = value_after_key(json, i) {
                        return Some(value);
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

/// [`top_level_value`] searched from the end of the document (where Anthropic puts
/// `usage`), so the content before it is not scanned. Only for a document that starts
/// with `{` and ends with `}`; `None` sends the caller to the forward search.
pub fn top_level_value_from_end<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
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
                // A closing quote: find the opening one, skipping escaped quotes.
                let end = i;
                loop {
                    i = memchr::memrchr(b'"', &doc[..i])?;
                    if !escaped_at(doc, i) {
                        break;
                    }
                }
                if depth == 1 && &doc[i + 1..end] == key {
                    if let Some(value) = value_after_key(doc, end + 1) {
                        return Some(value);
                    }
                }
            }
            _ => {}
        }
    }
    None
}

/// Generators of JSON text for the property tests here and in the scanners' users:
/// whitespace, strings with escapes and non-ASCII characters, numbers of every
/// shape, literals, nested arrays and objects.
#[cfg(test)]
pub(crate) mod gen {
    use proptest::prelude::*;

    /// `cases` cases, and no regression files written into the tree. (Cases are
    /// rejected where serde_json::Value refuses a generated number, 1e400.)
    pub fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            max_global_rejects: cases.max(1024),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    pub fn ws() -> impl Strategy<Value = String> {
        prop::sample::select(&["", "", "", " ", "\n", "\t", "\r\n  ", "  "][..])
            .prop_map(String::from)
    }

    /// A JSON string, quoted: ASCII, escapes of every kind, brackets, quotes and
    /// key names inside, and (unless `ascii`) characters beyond ASCII.
    pub fn string(ascii: bool) -> impl Strategy<Value = String> {
        const ASCII: &[&str] = &[
            "a",
            "Z",
            "0",
            " ",
            "usage",
            "model",
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\u{7f}",
            "\\\"",
            "\\\\",
            "\\/",
            "\\b",
            "\\f",
            "\\n",
            "\\r",
            "\\t",
            "\\u00e9",
            "\\u0000",
            "\\ud83d\\ude00",
            "\\\"usage\\\":{",
        ];
        const WIDE: &[&str] = &["é", "😀", "中", "\u{80}"];
        let pieces: Vec<&str> = if ascii {
            ASCII.to_vec()
        } else {
            ASCII.iter().chain(WIDE).copied().collect()
        };
        prop::collection::vec(prop::sample::select(pieces), 0..8)
            .prop_map(|p| format!("\"{}\"", p.concat()))
    }

    /// A string of plain ASCII (no escapes), quoted.
    pub fn plain_string() -> impl Strategy<Value = String> {
        "[a-z0-9 ._-]{0,12}".prop_map(|s| format!("\"{s}\""))
    }

    /// A JSON number: small and large integers, negative, fractions, exponents.
    pub fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => uint(),
            1 => "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,4})?([eE][+-]?[0-9]{1,3})?",
            1 => prop::sample::select(&[
                "18446744073709551615", "18446744073709551616", "9999999999999999999",
                "10000000000000000000", "-0", "0.0", "1e400", "-1E-400", "0e0",
            ][..]).prop_map(String::from),
        ]
    }

    /// An unsigned integer as JSON writes it: of 1 to 19 digits, mostly short.
    pub fn uint() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0u64..100_000).prop_map(|n| n.to_string()),
            1 => any::<u64>().prop_map(|n| (n % 10_000_000_000_000_000_000).to_string()),
        ]
    }

    pub fn scalar(ascii: bool) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => string(ascii).boxed(),
            3 => number().boxed(),
            1 => prop::sample::select(&["true", "false", "null"][..])
                .prop_map(String::from)
                .boxed(),
        ]
    }

    /// A key: mostly plain names (some the scanners look for), sometimes any string.
    pub fn key(ascii: bool) -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(&[
                "id", "type", "content", "text", "input", "usage", "model", "stream",
                "max_tokens", "input_tokens", "output_tokens", "x",
            ][..]).prop_map(|k| format!("\"{k}\"")),
            1 => string(ascii),
        ]
    }

    /// `{` members `}` with whitespace around every token.
    pub fn object_text(members: Vec<(String, String, [String; 4])>, ws0: String) -> String {
        if members.is_empty() {
            return format!("{{{ws0}}}");
        }
        let members: Vec<String> = members
            .into_iter()
            .map(|(k, v, [a, b, c, d])| format!("{a}{k}{b}:{c}{v}{d}"))
            .collect();
        format!("{{{}}}", members.join(","))
    }

    pub fn ws4() -> impl Strategy<Value = [String; 4]> {
        [ws(), ws(), ws(), ws()]
    }

    /// Any JSON value, nested a few levels.
    pub fn value(ascii: bool) -> BoxedStrategy<String> {
        scalar(ascii)
            .prop_recursive(4, 48, 5, move |inner| {
                prop_oneof![
                    (
                        prop::collection::vec((ws(), inner.clone(), ws()), 0..5),
                        ws()
                    )
                        .prop_map(|(items, w)| {
                            if items.is_empty() {
                                return format!("[{w}]");
                            }
                            let items: Vec<String> =
                                items.into_iter().map(|(a, v, b)| a + &v + &b).collect();
                            format!("[{}]", items.join(","))
                        }),
                    (
                        prop::collection::vec((key(ascii), inner, ws4()), 0..5),
                        ws()
                    )
                        .prop_map(|(m, w)| object_text(m, w)),
                ]
            })
            .boxed()
    }

    /// A document with up to three bytes replaced, inserted or removed, mostly with
    /// bytes that matter to the grammar.
    pub fn mutated(doc: impl Strategy<Value = String>) -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            3 => prop::sample::select(&b"{}[]\",:\\ \t0159-+.eEtrufalsn\x01\x7f\xc3\xa9"[..]),
            1 => any::<u8>(),
        ];
        let edit = (0..3u8, any::<prop::sample::Index>(), byte);
        (doc, prop::collection::vec(edit, 1..4)).prop_map(|(doc, edits)| {
            let mut doc = doc.into_bytes();
            for (op, at, b) in edits {
                let at = at.index(doc.len() + 1);
                match op {
                    0 if at < doc.len() => doc[at] = b,
                    1 if at < doc.len() => {
                        doc.remove(at);
                    }
                    _ => doc.insert(at, b),
                }
            }
            doc
        })
    }
}

#[cfg(test)]
mod tests {
    use super::gen::*;
    use super::*;
    use proptest::prelude::*;

    /// A whole document as the scanner skips it.
    fn skip(doc: &[u8]) -> Option<()> {
        let mut s = Scanner::new(doc);
        s.ws();
        s.value(0)?;
        s.ws();
        s.at_end().then_some(())
    }

    fn serde_accepts(doc: &[u8]) -> bool {
        serde_json::from_slice::<serde::de::IgnoredAny>(doc).is_ok()
    }

    proptest! {
        #![proptest_config(config(512))]

        /// The eight-at-a-time search finds what a byte-by-byte look finds, at every
        /// start and alignment, around each kind of byte that ends a plain run.
        #[test]
        fn plain_runs_end_where_a_byte_by_byte_look_says(
            bytes in proptest::collection::vec(
                prop_oneof![
                    4 => prop::sample::select(vec![b'a', b' ', b'~', 0x7f, b'!', b'#', b'[']),
                    1 => prop::sample::select(vec![b'"', b'\\', 0x00, 0x1f, 0x20, 0x21, 0x80, 0xff, 0x5b, 0x5d]),
                    1 => any::<u8>(),
                ],
                0..48,
            ),
            start in 0usize..48,
        ) {
            let i = start.min(bytes.len());
            let slow = bytes[i..].iter().position(|&c| !plain(c)).map(|n| i + n);
            prop_assert_eq!(plain_end(&bytes, i), slow);
        }

        /// Valid documents: taken whenever they are ASCII, and only when serde
        /// takes them.
        #[test]
        fn values_are_skipped_as_serde_skips_them(doc in value(false), a in ws(), b in ws()) {
            let doc = format!("{a}{doc}{b}");
            prop_assert!(serde_accepts(doc.as_bytes()), "generator: {doc}");
            prop_assert_eq!(skip(doc.as_bytes()).is_some(), doc.is_ascii(), "{}", doc);
        }

        #[test]
        fn mutated_values_are_skipped_only_where_serde_accepts(doc in mutated(value(false))) {
            if skip(&doc).is_some() {
                prop_assert!(serde_accepts(&doc), "{}", String::from_utf8_lossy(&doc));
            }
        }

        #[test]
        fn arbitrary_bytes_are_skipped_only_where_serde_accepts(
            doc in prop::collection::vec(
                prop::sample::select(&b"{}[]\",:\\ 0159-.eEtrufalsn\x01\xc3"[..]), 0..24),
        ) {
            if skip(&doc).is_some() {
                prop_assert!(serde_accepts(&doc), "{}", String::from_utf8_lossy(&doc));
            }
        }

        /// Strings, numbers and unsigned integers read as serde reads them.
        #[test]
        fn scalars_are_read_as_serde_reads_them(
            s in string(false), n in number(), junk in prop::collection::vec(any::<u8>(), 0..3),
        ) {
            let mut sc = Scanner::new(s.as_bytes());
            prop_assert_eq!(sc.string().is_some() && sc.at_end(), s.is_ascii());
            let mut sc = Scanner::new(s.as_bytes());
            if let Some(plain) = sc.plain_string() {
                let read: String = serde_json::from_str(&s).unwrap();
                prop_assert_eq!(plain, read.as_bytes());
            }
            let mut sc = Scanner::new(n.as_bytes());
            prop_assert!(sc.number().is_some() && sc.at_end(), "{}", n);
            let mut sc = Scanner::new(n.as_bytes());
            if let Some(u) = sc.uint() {
                if sc.at_end() {
                    prop_assert_eq!(Some(u), serde_json::from_str::<u64>(&n).ok(), "{}", n);
                }
            }
            let mut doc = s.into_bytes();
            doc.extend_from_slice(&junk);
            let mut sc = Scanner::new(&doc);
            if sc.string().is_some() {
                prop_assert!(serde_accepts(&doc[..sc.i]));
            }
        }

        /// The searches for a top-level value agree with each other and with serde.
        #[test]
        fn top_level_values_are_found_as_serde_reads_them(
            members in prop::collection::btree_map(
                prop::sample::select(&["id", "usage", "content", "x", "model"][..]),
                value(false), 0..5),
            key in prop::sample::select(&["id", "usage", "content", "x", "model"][..]),
            w in ws(),
        ) {
            let members: Vec<_> = members
                .into_iter()
                .map(|(k, v)| (format!("\"{k}\""), v, [w.clone(), w.clone(), w.clone(), w.clone()]))
                .collect();
            let doc = object_text(members, w.clone());
            // serde_json::Value refuses numbers out of f64's range (1e400).
            let parsed = serde_json::from_str::<serde_json::Value>(&doc);
            prop_assume!(parsed.is_ok());
            let parsed = parsed.unwrap();
            let forward = top_level_value(doc.as_bytes(), key.as_bytes());
            let backward = top_level_value_from_end(doc.as_bytes(), key.as_bytes());
            prop_assert_eq!(forward.map(<[u8]>::trim_ascii_end), backward.map(<[u8]>::trim_ascii_end));
            let found = forward.map(|v| {
                serde_json::Deserializer::from_slice(v)
                    .into_iter::<serde_json::Value>()
                    .next()
                    .unwrap()
                    .unwrap()
            });
            prop_assert_eq!(found.as_ref(), parsed.get(key), "{}", doc);
        }
    }
}
