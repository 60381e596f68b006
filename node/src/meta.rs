//! What the phases learn about a request and share with each other: which API it
//! is for ([`RouteKind`]), what its body says ([`RequestMeta`]), what kind of body
//! its answer carries ([`BodyKind`]) and the tokens it used ([`Usage`]). Vocabulary:
//! it imports no phase, so any phase can use it.

use serde::Deserialize;

/// Response header carrying the gateway's request id on every response.
pub const REQUEST_ID_HEADER: &str = "x-strait-request-id";

/// [`REQUEST_ID_HEADER`] as a header name: inserting by `&str` parses the name again
/// on every request.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static(REQUEST_ID_HEADER);

/// Which Anthropic API a request is for; used for body handling and metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Messages,
    CountTokens,
    Batches,
    Models,
    Files,
    /// Another `/v1/...` path, relayed as is.
    OtherV1,
}

impl RouteKind {
    /// Every route, in [`RouteKind::index`] order.
    pub const ALL: [RouteKind; 6] = [
        RouteKind::Messages,
        RouteKind::CountTokens,
        RouteKind::Batches,
        RouteKind::Models,
        RouteKind::Files,
        RouteKind::OtherV1,
    ];

    /// Position in [`RouteKind::ALL`], for per-route tables.
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn label(self) -> &'static str {
        match self {
            RouteKind::Messages => "messages",
            RouteKind::CountTokens => "count_tokens",
            RouteKind::Batches => "batches",
            RouteKind::Models => "models",
            RouteKind::Files => "files",
            RouteKind::OtherV1 => "other",
        }
    }

    /// Routes whose POST bodies are JSON documents the gateway reads in full (and can
    /// therefore replay on retry). File uploads are streamed instead.
    pub fn buffers_body(self) -> bool {
        matches!(
            self,
            RouteKind::Messages | RouteKind::CountTokens | RouteKind::Batches
        )
    }
}

/// What the gateway reads from a Messages request. Every field is optional here:
/// Anthropic validates the request itself and its answer passes through.
#[derive(Debug, Default, Clone)]
pub struct RequestMeta {
    pub model: Option<String>,
    pub stream: bool,
    pub max_tokens: Option<u64>,
}

/// Token usage as Anthropic reports it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_creation_input_tokens: u64,
    pub cache_read_input_tokens: u64,
}

/// What kind of body a response carries, decided from the route and content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Plain,
    MessagesJson,
    Sse,
}
