//! Which header fields cross the node, each way: the client's fields as they go
//! upstream ([`UpstreamHeaders`]: hop-by-hop fields, `host`, framing and, unless
//! passing through, the client's credentials stay behind; `x-forwarded-for` gets the
//! peer) and the upstream's as they come back ([`RelayedHeaders`]). Gateway policy;
//! the protocol wing writes what these choose.

use std::net::SocketAddr;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use crate::config::KeyMode;
use crate::head::{HeaderFields, Known, X_API_KEY, X_FORWARDED_FOR};
use crate::http1::framing as wire;
use crate::http1::OutgoingFields;

/// The client's header fields as they go upstream: hop-by-hop fields (and those the
/// client's `Connection` names), `host`, the framing fields and, unless passing
/// through, the client's credentials stay behind; `x-forwarded-for` is rewritten
/// with the peer appended. `host`, the framing and the upstream key are added by the
/// client that sends the request.
pub struct UpstreamHeaders<'a> {
    client: &'a HeaderFields,
    mode: KeyMode,
    /// Fields named in the client's `Connection` header (rare: an empty `Vec` does
    /// not allocate).
    named: Vec<&'a [u8]>,
    forwarded_for: HeaderValue,
}

impl<'a> UpstreamHeaders<'a> {
    pub fn new(client: &'a HeaderFields, peer: SocketAddr, mode: KeyMode) -> Self {
        UpstreamHeaders {
            client,
            mode,
            named: connection_names(client),
            forwarded_for: forwarded_for(client, peer),
        }
    }

    fn keeps(&self, name: &[u8], kind: Known) -> bool {
        !stays_behind(kind, self.mode) && !self.named.iter().any(|n| n.eq_ignore_ascii_case(name))
    }

    /// The client's fields that go upstream, as they came.
    pub fn fields(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + '_ {
        self.client
            .iter()
            .filter(|(name, _)| self.keeps(name, Known::of(name)))
    }
}

impl OutgoingFields for UpstreamHeaders<'_> {
    fn write_lines(&self, out: &mut Vec<u8>) {
        self.client
            .write_lines(out, |name, kind| self.keeps(name, kind));
    }

    fn forwarded_for(&self) -> &HeaderValue {
        &self.forwarded_for
    }

    fn to_map(&self, api_key: Option<&HeaderValue>) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.client.len() + 2);
        for (name, value) in self.fields().filter_map(|(n, v)| typed(n, v)) {
            map.append(name, value);
        }
        map.insert(X_FORWARDED_FOR, self.forwarded_for.clone());
        if let Some(key) = api_key {
            map.insert(X_API_KEY, key.clone());
        }
        map
    }
}

/// A raw field as a map entry (for HTTP/2). Names and values were checked when the
/// head was parsed, so this does not fail in practice.
fn typed(name: &[u8], value: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    Some((
        wire::header_name(name).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

/// Fields named in a message's `Connection` header: hop-by-hop too (RFC 9110 7.6.1).
/// `keep-alive` and `close` name nothing relayed, and are by far the most common: the
/// list then stays empty, which does not allocate.
fn connection_names(fields: &HeaderFields) -> Vec<&[u8]> {
    let names_nothing = |n: &[u8]| {
        n.is_empty() || n.eq_ignore_ascii_case(b"keep-alive") || n.eq_ignore_ascii_case(b"close")
    };
    let mut names = Vec::new();
    for value in fields.get_all_known(Known::Connection) {
        if names_nothing(value) {
            continue;
        }
        for name in value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
            if !names_nothing(name) {
                names.push(name);
            }
        }
    }
    names
}

/// Request fields never relayed as the client sent them: hop-by-hop fields (RFC 9110
/// 7.6.1), `host` and `expect`, the client's credentials unless passing through, the
/// client's request to the gateway (`strait-defer`), framing (the sender's to decide,
/// from the body it actually sends), `x-forwarded-for` (rewritten) and a peer's
/// signed relay fields, which stop at the node that checked them.
fn stays_behind(kind: Known, mode: KeyMode) -> bool {
    match kind {
        Known::Other | Known::Date | Known::RequestId | Known::RateLimit => false,
        Known::XApiKey | Known::Authorization => mode != KeyMode::Passthrough,
        Known::Host
        | Known::Expect
        | Known::StraitDefer
        | Known::ContentLength
        | Known::XForwardedFor
        | Known::StraitRelay => true,
        hop => hop.is_hop_by_hop(),
    }
}

/// `x-forwarded-for` for the upstream: the client's own values, then the peer.
fn forwarded_for(client: &HeaderFields, peer: SocketAddr) -> HeaderValue {
    use std::fmt::Write;
    let mut joined = String::new();
    for v in client.get_all_known(Known::XForwardedFor) {
        let Ok(v) = std::str::from_utf8(v.trim_ascii()) else {
            continue;
        };
        if !v.is_empty() {
            joined.push_str(v);
            joined.push_str(", ");
        }
    }
    if joined.is_empty() {
        return peer_value(peer.ip());
    }
    let _ = write!(joined, "{}", peer.ip());
    HeaderValue::try_from(joined).unwrap_or_else(|_| peer_value(peer.ip()))
}

/// The peer address as a header value. A connection's requests share it, and
/// formatting an address costs more than the rest of this function: the last one
/// is kept.
fn peer_value(ip: std::net::IpAddr) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(std::net::IpAddr, HeaderValue)>> =
            const { std::cell::RefCell::new(None) };
    }
    LAST.with_borrow_mut(|last| match last {
        Some((at, v)) if *at == ip => v.clone(),
        _ => {
            let v = HeaderValue::try_from(ip.to_string()).expect("an address is a valid value");
            *last = Some((ip, v.clone()));
            v
        }
    })
}

/// The upstream's response fields as they go to the client, carried with the relayed
/// body (`stream::Relay`) and written by the HTTP/1.1 server straight into the head
/// (the HTTP/2 server puts them in its map: [`RelayedHeaders::insert_into`]).
/// Hop-by-hop fields stay behind, the upstream's `anthropic-ratelimit-*` when the
/// client has limits of its own (its own are written instead), and any field the
/// gateway sets on the response itself (`x-strait-request-id`, say: the gateway's
/// replaces an upstream's).
pub struct RelayedHeaders {
    fields: HeaderFields,
    strip_rate_limits: bool,
}

impl RelayedHeaders {
    pub fn new(fields: HeaderFields, strip_rate_limits: bool) -> Self {
        RelayedHeaders {
            fields,
            strip_rate_limits,
        }
    }

    fn keeps(
        &self,
        name: &[u8],
        kind: Known,
        bodiless: bool,
        named: &[&[u8]],
        own: &HeaderMap,
    ) -> bool {
        !(kind.is_hop_by_hop()
            || (!bodiless && kind == Known::ContentLength)
            // The gateway answers with its own request id, which may not be in `own`
            // (it travels beside the map: `ReplyFields`).
            || kind == Known::RequestId
            || (self.strip_rate_limits && kind == Known::RateLimit)
            || named.iter().any(|n| n.eq_ignore_ascii_case(name))
            || own
                .keys()
                .any(|k| k.as_str().as_bytes().eq_ignore_ascii_case(name)))
    }

    /// The fields to relay. `content-length` is among them only for a response
    /// without a body (to a HEAD request, say); otherwise framing is the server's.
    pub fn fields<'a>(
        &'a self,
        bodiless: bool,
        own: &'a HeaderMap,
    ) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let named = connection_names(&self.fields);
        self.fields
            .iter()
            .filter(move |(name, _)| self.keeps(name, Known::of(name), bodiless, &named, own))
    }

    /// [`RelayedHeaders::fields`] as HTTP/1.1 lines. Returns whether a `date` was
    /// among them.
    /// `own` holds the fields the gateway sets itself.
    pub fn write_lines(&self, out: &mut Vec<u8>, bodiless: bool, own: &HeaderMap) -> bool {
        let named = connection_names(&self.fields);
        let mut date = false;
        self.fields.write_lines(out, |name, kind| {
            date |= kind == Known::Date;
            self.keeps(name, kind, bodiless, &named, own)
        });
        date
    }

    /// Whether the upstream sent `name`.
    #[cfg(test)]
    fn contains(&self, name: &HeaderName) -> bool {
        self.fields.get(name).is_some()
    }

    /// Appends the fields to an HTTP/2 response's map.
    /// The map's own fields (the gateway's) replace the upstream's of the same name.
    pub fn insert_into(&self, map: &mut HeaderMap) {
        // Decided against the map as it was, before any of these are added.
        let relayed: Vec<_> = self
            .fields(false, map)
            .filter_map(|(n, v)| typed(n, v))
            .collect();
        for (name, value) in relayed {
            map.append(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header;

    #[test]
    fn framing_fields_are_not_relayed_with_a_body() {
        let h = crate::http1::client::head_fields(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 9\r\n\r\n",
            &http::Method::POST,
        );
        let relayed = RelayedHeaders::new(h, false);
        assert!(
            relayed
                .fields(false, &http::HeaderMap::new())
                .next()
                .is_none(),
            "neither framing field is relayed with a body"
        );
    }

    fn upstream(h: &HeaderFields, mode: KeyMode) -> Vec<(String, String)> {
        let up = UpstreamHeaders::new(h, "127.0.0.9:1234".parse().unwrap(), mode);
        let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        let mut out: Vec<_> = up.fields().map(|(n, v)| (text(n), text(v))).collect();
        out.push((
            "x-forwarded-for".into(),
            text(up.forwarded_for().as_bytes()),
        ));
        out
    }

    fn raw(head: &'static [u8]) -> HeaderFields {
        let head = bytes::Bytes::from_static(head);
        let mut raw = crate::head::RawFields::new(&head, 8);
        let mut at = 0;
        while let Some(end) = head[at..].windows(2).position(|w| w == b"\r\n") {
            let line = &head[at..at + end];
            let colon = line.iter().position(|b| *b == b':').unwrap();
            raw.push(&line[..colon], line[colon + 1..].trim_ascii());
            at += end + 2;
        }
        HeaderFields::Raw(raw.into_headers(head))
    }

    #[test]
    fn strips_hop_by_hop_and_credentials_and_appends_xff() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("x-api-key", HeaderValue::from_static("strait-client-key"));
        h.insert("anthropic-version", HeaderValue::from_static("2023-06-01"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("host", HeaderValue::from_static("gateway.example"));
        h.insert("content-length", HeaderValue::from_static("12"));
        let out = upstream(&HeaderFields::Map(h), KeyMode::Managed);
        assert_eq!(
            out,
            [
                ("anthropic-version".into(), "2023-06-01".into()),
                ("x-forwarded-for".into(), "10.0.0.1, 127.0.0.9".into()),
            ]
        );
    }

    #[test]
    fn raw_heads_are_filtered_whatever_the_case_of_their_names() {
        let h = raw(
            b"Host: gw\r\nX-Api-Key: strait-client-key\r\nAuthorization: Bearer s\r\n\
            Connection: X-Hop\r\nx-hop: 1\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\
            Anthropic-Beta: a\r\nX-Forwarded-For: 10.0.0.1\r\nx-forwarded-for: 10.0.0.2\r\n\
            Proxy-Authorization: p\r\nTE: trailers\r\nanthropic-beta: b\r\n",
        );
        let out = upstream(&h, KeyMode::Managed);
        assert_eq!(
            out,
            [
                ("Anthropic-Beta".into(), "a".into()),
                ("anthropic-beta".into(), "b".into()),
                (
                    "x-forwarded-for".into(),
                    "10.0.0.1, 10.0.0.2, 127.0.0.9".into()
                ),
            ]
        );
        let map = UpstreamHeaders::new(&h, "127.0.0.9:1".parse().unwrap(), KeyMode::Managed)
            .to_map(Some(&HeaderValue::from_static("sk-up")));
        assert_eq!(map.get_all("anthropic-beta").iter().count(), 2);
        assert_eq!(map["x-api-key"], "sk-up");
        assert!(map.get("authorization").is_none() && map.get("te").is_none());
    }

    #[test]
    fn relayed_response_fields_leave_hop_by_hop_framing_and_replaced_limits_behind() {
        let h = raw(
            b"Content-Type: application/json\r\nConnection: keep-alive, X-Hop\r\n\
            X-Hop: 1\r\nKeep-Alive: timeout=5\r\nTransfer-Encoding: chunked\r\n\
            Content-Length: 12\r\nAnthropic-RateLimit-Requests-Remaining: 4\r\n\
            request-id: req_1\r\nDate: Fri, 27 Nov 2026 17:00:00 GMT\r\n",
        );
        let none = HeaderMap::new();
        let names = |r: &RelayedHeaders, bodiless: bool| -> Vec<String> {
            r.fields(bodiless, &none)
                .map(|(n, _)| String::from_utf8(n.to_vec()).unwrap())
                .collect()
        };
        let own_limits = RelayedHeaders::new(h, true);
        assert_eq!(
            names(&own_limits, false),
            ["Content-Type", "request-id", "Date"]
        );
        assert_eq!(
            names(&own_limits, true),
            ["Content-Type", "Content-Length", "request-id", "Date"],
            "a bodiless response keeps its length"
        );
        assert!(own_limits.contains(&header::DATE));
        let shared = RelayedHeaders::new(
            raw(b"anthropic-ratelimit-requests-remaining: 4\r\nx-a: b\r\n"),
            false,
        );
        let mut map = HeaderMap::new();
        shared.insert_into(&mut map);
        assert_eq!(map["anthropic-ratelimit-requests-remaining"], "4");
        assert_eq!(map["x-a"], "b");
        assert!(!shared.contains(&header::DATE));

        // The gateway's own fields replace the upstream's; repeated upstream fields
        // stay repeated.
        let chained = RelayedHeaders::new(
            raw(b"X-Strait-Request-Id: upstream\r\nset-cookie: a\r\nset-cookie: b\r\n"),
            false,
        );
        let mut own = HeaderMap::new();
        own.insert(
            crate::meta::REQUEST_ID,
            HeaderValue::from_static("strait_1"),
        );
        let mut out = Vec::new();
        chained.write_lines(&mut out, false, &own);
        assert_eq!(out, b"set-cookie: a\r\nset-cookie: b\r\n");
        chained.insert_into(&mut own);
        assert_eq!(own.get_all(crate::meta::REQUEST_ID).iter().count(), 1);
        assert_eq!(own[crate::meta::REQUEST_ID], "strait_1");
        assert_eq!(own.get_all("set-cookie").iter().count(), 2);
    }

    #[test]
    fn the_gateways_own_field_names_are_known() {
        assert_eq!(
            Known::of(crate::defer::DEFER_HEADER.as_bytes()),
            Known::StraitDefer
        );
        assert_eq!(
            Known::of(crate::meta::REQUEST_ID_HEADER.as_bytes()),
            Known::RequestId
        );
    }

    #[test]
    fn passthrough_keeps_the_client_key() {
        let h = raw(b"X-Api-Key: sk-ant-own\r\nauthorization: Bearer sk-ant-own\r\n");
        let out = upstream(&h, KeyMode::Passthrough);
        assert_eq!(out[0], ("X-Api-Key".into(), "sk-ant-own".into()));
        assert_eq!(out[1].0, "authorization");
    }
}
