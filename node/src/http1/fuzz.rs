//! The node's own HTTP/1.1 request reading run over a byte string as one client
//! connection would deliver it, for the fuzz entry points in `crate::fuzz` (which
//! hold it against hyper's server). Reads with the server's parts: `parse_head`, the
//! Host rule of `server::read_head`, and `framing::decode` for bodies.

use bytes::BytesMut;
use http::Version;

use super::framing::{self as wire, Framing};
use super::request::{parse_head, Refused};

/// One request the node read whole: head and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub method: String,
    pub target: String,
    pub http11: bool,
    /// As they came: names in the client's case, values as the head parser cut them.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    pub keep_alive: bool,
    pub body: Vec<u8>,
}

/// How reading a connection ended, after the requests in [`ReadConnection::requests`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// Every byte read; `partial`: some of a next head had come (not a whole head).
    Eof { partial: bool },
    /// The last request asked to close the connection.
    Closed,
    /// A head was refused (the server answers 4xx and closes).
    HeadRefused(String),
    /// A head was read but its body was not: `refused` (the framing is broken; the
    /// message says how) or cut off by the end of the input (`None`).
    Body {
        head: Box<ReadRequest>,
        refused: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadConnection {
    pub requests: Vec<ReadRequest>,
    pub ended: Ended,
}

/// Reads `input` as the server reads a connection, `chunk` bytes per read (at least
/// one), requests one after another until the input ends, a head or body is refused,
/// or a request closes the connection.
pub fn read_connection(input: &[u8], chunk: usize) -> ReadConnection {
    let chunk = chunk.max(1);
    let mut fed = 0;
    let mut buf = BytesMut::new();
    let mut feed = |buf: &mut BytesMut| {
        if fed >= input.len() {
            return false;
        }
        let n = chunk.min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
        true
    };
    let mut requests = Vec::new();
    let ended = loop {
        let head = loop {
            if !buf.is_empty() {
                match parse_head(&mut buf) {
                    Ok(Some(head)) => break Ok(head),
                    Ok(None) => {}
                    Err(Refused::TooLarge) => break Err("too large".to_string()),
                    Err(Refused::TooManyFields) => break Err("too many fields".to_string()),
                    Err(Refused::Malformed(why)) => break Err(why.to_string()),
                }
            }
            if !feed(&mut buf) {
                break Err(String::new());
            }
        };
        let head = match head {
            Ok(head) => head,
            Err(why) if why.is_empty() => {
                break Ended::Eof {
                    partial: !buf.is_empty(),
                }
            }
            Err(why) => break Ended::HeadRefused(why),
        };
        if head.version == Version::HTTP_11 && !head.has_host {
            // The server's rule (server::read_head), not the parser's.
            break Ended::HeadRefused(NO_HOST.to_string());
        }
        let mut read = ReadRequest {
            method: head.method.as_str().to_string(),
            target: head.uri.to_string(),
            http11: head.version == Version::HTTP_11,
            fields: crate::head::HeaderFields::Raw(head.headers)
                .iter()
                .map(|(n, v)| (n.to_vec(), v.to_vec()))
                .collect(),
            keep_alive: head.keep_alive,
            body: Vec::new(),
        };
        let mut framing = head.framing;
        let refused = loop {
            match wire::decode(&mut framing, &mut buf) {
                Ok(Some(data)) => read.body.extend_from_slice(&data),
                Ok(None) if framing.is_done() => break None,
                Ok(None) => {
                    if !feed(&mut buf) {
                        break Some(None);
                    }
                }
                Err(e) => break Some(Some(e.to_string())),
            }
        };
        if let Some(refused) = refused {
            break Ended::Body {
                head: Box::new(read),
                refused,
            };
        }
        let keep_alive = read.keep_alive;
        requests.push(read);
        if !keep_alive {
            break Ended::Closed;
        }
    };
    ReadConnection { requests, ended }
}

/// Header fields in one head, at most (as the server has it).
pub const MAX_HEADERS: usize = super::request::MAX_HEADERS;

/// Why [`read_connection`] refuses an HTTP/1.1 head without `host`.
pub const NO_HOST: &str = "HTTP/1.1 request without a Host header";

/// Decodes `input` as a chunked body, `chunk` bytes per read: the data, and the bytes
/// left after the body (`Ok`), or why the framing was refused (`Err`; an empty
/// message: the input ended first).
pub fn read_chunked(input: &[u8], chunk: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
    let chunk = chunk.max(1);
    let mut framing = Framing::chunked();
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match wire::decode(&mut framing, &mut buf) {
            Ok(Some(data)) => body.extend_from_slice(&data),
            Ok(None) if framing.is_done() => {
                buf.extend_from_slice(&input[fed..]);
                return Ok((body, buf.to_vec()));
            }
            Ok(None) if fed < input.len() => {
                let n = chunk.min(input.len() - fed);
                buf.extend_from_slice(&input[fed..fed + n]);
                fed += n;
            }
            Ok(None) => return Err(String::new()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The header fields of the request head at the front of `input`, as the server
/// hands them to the pipeline; `None` when the head is refused or incomplete.
pub fn head_fields(input: &[u8]) -> Option<crate::head::HeaderFields> {
    let head = parse_head(&mut BytesMut::from(input)).ok()??;
    Some(crate::head::HeaderFields::Raw(head.headers))
}
