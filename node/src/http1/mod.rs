//! The protocol wing: HTTP/1.1 spoken by hand on both sides, with no gateway policy
//! in it. The phases decide (which fields go upstream, what a refused head is
//! answered with, which response fields are relayed); this code carries it out.
//!
//! Layout: [`framing`] (body framing and field values), [`server`] (the client-facing
//! HTTP/1.1 server: the connection loop; `request` parses heads, `response` writes
//! answers), [`client`] (one HTTP/1.1 request upstream), [`pool`] (the
//! upstream client: pooled HTTP/1.1 connections, shared HTTP/2 ones through hyper),
//! [`connect`] (TCP, TLS and ALPN) and [`dns`] (the resolver).

pub mod client;
pub mod connect;
pub mod dns;
pub mod framing;
#[doc(hidden)]
pub mod fuzz;
mod parse;
pub mod pool;
mod request;
mod response;
pub mod server;
pub mod sock;

use http::{HeaderMap, HeaderValue, Response};

/// A response and the header fields that go with it without being in its map: the
/// upstream's relayed fields and the client's own rate-limit lines, written by the
/// HTTP/1.1 server straight into the head (the HTTP/2 server puts them in its map).
/// Handed to the writer as a value beside the body, which carries bytes only.
pub struct Reply<B, F> {
    pub response: Response<B>,
    pub fields: F,
}

impl<B, F: Default> Reply<B, F> {
    /// A response whose fields are all in its map.
    pub fn new(response: Response<B>) -> Self {
        Reply {
            response,
            fields: F::default(),
        }
    }
}

/// Header fields kept outside a response's map (see [`Reply`]).
pub trait HeadFields {
    /// Writes the fields as HTTP/1.1 lines. `bodiless`: the response has no body (a
    /// relayed `content-length` then stays); `own`: the fields the gateway set in the
    /// map, which replace any of the same name. Returns whether a `date` was written.
    fn write_lines(&self, out: &mut Vec<u8>, bodiless: bool, own: &HeaderMap) -> bool;
    /// Adds the fields to an HTTP/2 response's map (its own fields win, as above).
    fn insert_into(&self, map: &mut HeaderMap);
}

/// A request's header fields on their way upstream, as the gateway's policy chose
/// them (`forward::UpstreamHeaders`); `host`, the framing, `x-forwarded-for` and the
/// upstream key are added by the client that sends the request.
pub trait OutgoingFields {
    /// Writes the relayed fields as HTTP/1.1 lines (`x-forwarded-for` not included).
    fn write_lines(&self, out: &mut Vec<u8>);
    /// The `x-forwarded-for` value to send; empty: none.
    fn forwarded_for(&self) -> &HeaderValue;
    /// Every field as a map (for HTTP/2), `x-forwarded-for` and `api_key` included.
    fn to_map(&self, api_key: Option<&HeaderValue>) -> HeaderMap;
}
