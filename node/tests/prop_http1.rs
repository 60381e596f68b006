//! The node's HTTP/1.1 request reading (heads, content-length and chunked bodies,
//! pipelined requests) held to hyper's server on generated and mutated connections,
//! through the fuzz entry points `fuzz_http1_head` and `fuzz_chunked`. Each case
//! count is bounded for the suite; `PROPTEST_CASES=100000` runs longer.

mod prop_common;

use prop_common::*;
use proptest::prelude::*;
use strait_node::fuzz::{fuzz_chunked, fuzz_http1_head};

fn line_end() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![8 => pick(&["\r\n"]), 2 => pick(&["\n"]), 1 => pick(&["\r", "\r\r\n", "\n\r"])]
}

/// A header field line (without its line end): names and values that matter to
/// framing and keep-alive, in their usual and their doubtful spellings.
fn field() -> impl Strategy<Value = Vec<u8>> {
    let named = prop_oneof![
        (
            pick(&["content-length", "Content-Length", "CONTENT-LENGTH"]),
            pick(&[
                "0",
                "5",
                "05",
                "+5",
                " 5 ",
                "5,5",
                "5, 5",
                "-1",
                "0x5",
                "",
                "5 5",
                "99999999999999999999",
                "18446744073709551615",
                "1e1",
                "\t5",
            ])
        ),
        (
            pick(&["transfer-encoding", "Transfer-Encoding"]),
            pick(&[
                "chunked",
                "Chunked",
                " chunked ",
                "gzip, chunked",
                "chunked, gzip",
                "identity",
                "chunked\t",
                "chunked;q=1",
                "chunked,",
                ",chunked",
                "",
            ])
        ),
        (
            pick(&["connection", "Connection"]),
            pick(&[
                "close",
                "keep-alive",
                "Keep-Alive, close",
                "upgrade",
                "x, close",
                ""
            ])
        ),
        (
            pick(&["host", "Host"]),
            pick(&["x", "", "a b", "x:80", "x\t"])
        ),
        (
            pick(&["expect"]),
            pick(&["100-continue", "100-Continue", "x"])
        ),
        (pick(&["upgrade"]), pick(&["websocket", "h2c"])),
        (
            pick(&[
                "x-api-key",
                "anthropic-version",
                "x-a",
                "X-A",
                "a",
                "x_y",
                "x.y"
            ]),
            pick(&["v", "", "a b", "é", "\x7f", "a\tb", "\"q\"", "v ", " v"])
        ),
        (
            pick(&["x y", " host", "host ", "x\u{0}", "é", "(a)", "", "x:y"]),
            pick(&["v"])
        ),
    ];
    (named, pick(&[": ", ":", " : ", ":\t", ":  ", " :"]))
        .prop_map(|((name, value), sep)| [name, sep, value].concat())
}

/// A request head, end line included, in mostly well-formed shapes.
fn head() -> impl Strategy<Value = Vec<u8>> {
    (
        pick(&[
            "GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT", "TRACE", "get",
            "FOO", "G@T", "",
        ]),
        pick(&[
            "/",
            "/v1/messages",
            "/v1/messages?beta=true",
            "*",
            "http://h/x",
            "h:443",
            "/a%20b",
            "/a b",
            "/\u{fc}",
            "//x",
            "/#f",
            "",
        ]),
        pick(&[
            "HTTP/1.1",
            "HTTP/1.0",
            "HTTP/1.2",
            "HTTP/2.0",
            "http/1.1",
            "HTTP/1.1 ",
        ]),
        prop::collection::vec((field(), line_end()), 0..6),
        line_end(),
        line_end(),
        prop::option::weighted(0.9, pick(&["host: x"])),
        pick(&["", "", "", "\r\n", "\n"]),
    )
        .prop_map(|(method, target, version, fields, e1, e2, host, lead)| {
            let mut h = lead;
            h.extend_from_slice(&[method, b" ".to_vec(), target, b" ".to_vec(), version].concat());
            h.extend_from_slice(&e1);
            if let Some(host) = host {
                h.extend_from_slice(&host);
                h.extend_from_slice(b"\r\n");
            }
            for (f, e) in fields {
                h.extend_from_slice(&f);
                h.extend_from_slice(&e);
            }
            h.extend_from_slice(&e2);
            h
        })
}

/// A chunked body: chunks (with sizes that mostly match), extensions, line ends of
/// every kind, trailers; some cut short.
fn chunked_body() -> impl Strategy<Value = Vec<u8>> {
    let chunk = (
        prop::collection::vec(any::<u8>(), 1..12),
        pick(&["", "", "", ";a=b", "; a", ";", " ", "\t", " ;x", ";\"q\""]),
        prop_oneof![6 => Just(0i8), 1 => -2i8..=2],
        pick(&["", "", "", "0", "00000000000000000"]),
        pick(&["x", "X"]),
        line_end(),
        line_end(),
    )
        .prop_map(|(data, ext, skew, pad, case, e1, e2)| {
            let size = (data.len() as i64 + i64::from(skew)).max(0);
            let hex = if case == b"X" {
                format!("{size:X}")
            } else {
                format!("{size:x}")
            };
            [pad, hex.into_bytes(), ext, e1, data, e2].concat()
        });
    (
        prop::collection::vec(chunk, 0..4),
        pick(&["0", "000", "0;x=y", "0 "]),
        line_end(),
        prop::collection::vec(
            (
                pick(&[
                    "x-t: 1",
                    "x-t:1",
                    "bad line",
                    " x: y",
                    "content-length: 3",
                    "",
                ]),
                line_end(),
            ),
            0..3,
        ),
        line_end(),
    )
        .prop_map(|(chunks, last, e1, trailers, e2)| {
            let mut b = chunks.concat();
            b.extend_from_slice(&last);
            b.extend_from_slice(&e1);
            for (t, e) in trailers {
                b.extend_from_slice(&t);
                b.extend_from_slice(&e);
            }
            b.extend_from_slice(&e2);
            b
        })
}

/// A few bytes changed, added or taken out: where a generated message turns into one
/// the generator would not write.
fn mutated(input: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (
        any::<prop::sample::Index>(),
        0u8..3,
        prop_oneof![
            3 => prop::sample::select(&b"\r\n :;\t0aF,\"\x00\x7f\xff"[..]),
            1 => any::<u8>(),
        ],
    );
    (input, prop::collection::vec(edit, 0..4)).prop_map(|(mut bytes, edits)| {
        for (at, op, byte) in edits {
            let i = at.index(bytes.len() + 1);
            match op {
                0 => bytes.insert(i, byte),
                1 if i < bytes.len() => {
                    bytes.remove(i);
                }
                _ if i < bytes.len() => bytes[i] = byte,
                _ => bytes.push(byte),
            }
        }
        bytes
    })
}

/// One connection: a head and its body (as its fields say, or not), and perhaps a
/// pipelined request after it.
fn connection() -> impl Strategy<Value = Vec<u8>> {
    (
        head(),
        prop_oneof![
            2 => Just(Vec::new()),
            2 => prop::collection::vec(any::<u8>(), 0..8),
            3 => chunked_body(),
        ],
        prop::option::of(head()),
    )
        .prop_map(|(h, body, next)| {
            let mut c = [h, body].concat();
            c.extend(next.into_iter().flatten());
            c
        })
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn generated_connections_read_as_hyper_reads_them(input in connection()) {
        fuzz_http1_head(&input);
    }

    #[test]
    fn mutated_connections_read_as_hyper_reads_them(input in mutated(connection())) {
        fuzz_http1_head(&input);
    }

    #[test]
    fn chunked_bodies_decode_as_hyper_decodes_them(body in mutated(chunked_body())) {
        fuzz_chunked(&body);
    }

    #[test]
    fn arbitrary_bytes_read_as_hyper_reads_them(
        input in prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(&b"GET / HTTP/1.1\r\n:host0a;"[..]),
                1 => any::<u8>(),
            ],
            0..64,
        ),
    ) {
        fuzz_http1_head(&input);
    }
}

/// Connections the properties above once found the node reading otherwise than
/// hyper (each fixed; see the commit that added it), and the shapes the node refuses
/// on purpose.
#[test]
fn connections_found_by_the_properties_read_as_hyper_reads_them() {
    for input in REGRESSIONS {
        fuzz_http1_head(input);
    }
}

const REGRESSIONS: &[&[u8]] = &[
    // Deliberately stricter: both framings, a coding list, no Host.
    b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n\r\n",
    // hyper skips a content-length after transfer-encoding; the node refuses both.
    b"GET / HTTP/1.1\r\ntransfer-encoding:\tchunked\r\ncontent-length: +5\r\n\r\n",
    // Fixed in http1/request.rs: a bare CR before the request line was skipped.
    b"\rGET / HTTP/1.1\r\nhost: x\r\n\r\nGET / HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n",
    // Fixed in http1/framing.rs: bare LF line ends and blank-looking trailer lines
    // in chunked bodies, where hyper sees the body end elsewhere or not at all.
    b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\n",
    b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n \r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0000000000000005\r\nhello\r\n0\r\n\r\n",
];
