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
        let len = self.b[start..].iter().position(|&c| !plain(c))?;
        if self.b[start + len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        Some(&self.b[start..start + len])
    }

    /// Any string serde skips: escapes checked as serde checks them, no control
    /// characters; ASCII only (serde decides the rest).
    pub fn string(&mut self) -> Option<()> {
        self.eat(b'"')?;
        loop {
            self.i += self.b[self.i..].iter().position(|&c| !plain(c))?;
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

    /// The string at the cursor, found and not checked ([`string_end`]): its
    /// contents, and whether they hold an escape.
    #[inline]
    pub fn raw_string(&mut self) -> Option<(&'a [u8], bool)> {
        if self.peek()? != b'"' {
            return None;
        }
        let (end, escaped) = string_end(self.b, self.i)?;
        let s = &self.b[self.i + 1..end - 1];
        self.i = end;
        Some((s, escaped))
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
        let start = self.i;
        let n = self.digits();
        if n == 0 || n > 19 || (n > 1 && self.b[start] == b'0') {
            return None;
        }
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        Some(decimal(&self.b[start..self.i]))
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

/// The value of at most 19 decimal digits (no overflow).
#[inline]
pub fn decimal(digits: &[u8]) -> u64 {
    digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0'))
}

/// For the string whose opening quote is at `i`: the index just past its closing
/// quote, and whether it held an escape. `None` if it does not end.
#[inline]
pub fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
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
