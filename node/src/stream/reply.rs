//! What goes back to the client: the response body (bytes the gateway made, or the
//! upstream body being relayed) and the header fields that travel beside it to the
//! writer (the upstream's relayed fields and the client's own rate-limit lines).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};

use super::Relay;
use crate::body::BoxError;
use crate::forward::RelayedHeaders;
use crate::http1::HeadFields;
use crate::limits::headers::RateHeaders;

/// A response body: either bytes made here or an upstream body being relayed.
/// An enum rather than a trait object: one concrete type for hyper, and the relay
/// boxed once so small responses stay small.
pub enum ProxyBody {
    Full(Option<Bytes>),
    Relay(Box<Relay>),
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        ProxyBody::Full(if data.is_empty() { None } else { Some(data) })
    }

    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

/// Empty: what is left in a reply whose body the HTTP/1.1 server has taken.
impl Default for ProxyBody {
    fn default() -> Self {
        ProxyBody::empty()
    }
}

impl From<Bytes> for ProxyBody {
    fn from(data: Bytes) -> Self {
        ProxyBody::full(data)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ProxyBody::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBody::Relay(relay) => Pin::new(relay.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full(data) => data.is_none(),
            ProxyBody::Relay(relay) => relay.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full(Some(d)) => SizeHint::with_exact(d.len() as u64),
            ProxyBody::Full(None) => SizeHint::with_exact(0),
            ProxyBody::Relay(relay) => relay.size_hint(),
        }
    }
}

/// The start of the request id's line, as [`ReplyFields`] writes it.
const REQUEST_ID_LINE: &[u8] = b"x-strait-request-id: ";

/// The header fields of a response that are not in its map (see
/// [`crate::http1::Reply`]): the upstream's, filtered, and the client's own
/// rate-limit lines when it has limits. Written straight into an HTTP/1.1 head:
/// putting them in the map (or in response extensions) cost several allocations per
/// request.
#[derive(Default)]
pub struct ReplyFields {
    /// `x-strait-request-id`: every proxied response carries the gateway's own (an
    /// upstream's never passes: [`RelayedHeaders`]). Here rather than in the map,
    /// where one custom field cost a map allocation and a hashed insert per request.
    pub request_id: Option<HeaderValue>,
    pub relayed: Option<RelayedHeaders>,
    pub rate: Option<RateHeaders>,
}

impl HeadFields for ReplyFields {
    fn write_lines(&self, out: &mut Vec<u8>, bodiless: bool, own: &HeaderMap) -> bool {
        if let Some(id) = &self.request_id {
            out.extend_from_slice(REQUEST_ID_LINE);
            out.extend_from_slice(id.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        let date = self
            .relayed
            .as_ref()
            .is_some_and(|r| r.write_lines(out, bodiless, own));
        if let Some(rate) = &self.rate {
            rate.write_head(out);
        }
        date
    }

    fn insert_into(&self, map: &mut HeaderMap) {
        if let Some(id) = &self.request_id {
            map.insert(crate::meta::REQUEST_ID, id.clone());
        }
        if let Some(relayed) = &self.relayed {
            relayed.insert_into(map);
        }
        if let Some(rate) = &self.rate {
            rate.insert_into(map);
        }
    }
}
