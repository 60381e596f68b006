//! Phase 3, admit: decide whether a request may go on. Today: the route is one the
//! gateway relays, the body is within limits, and a Messages body is valid JSON
//! (whose `model`, `stream` and `max_tokens` are read for routing and accounting),
//! read whole only within the node's in-flight body budget ([`budget`]).

pub mod budget;
mod peek;
pub mod target;

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use serde::Deserialize;

use self::budget::BodyBudget;
use crate::body::{ClientBody, RequestBody};
use crate::error::{Error, ErrorKind, Result};
use crate::head::HeaderFields;
use crate::meta::{RequestMeta, RouteKind};

#[derive(Deserialize)]
struct MessagesPeek {
    #[serde(default)]
    model: Option<serde_json::Value>,
    #[serde(default)]
    stream: Option<serde_json::Value>,
    #[serde(default)]
    max_tokens: Option<serde_json::Value>,
}

/// Reads and checks a request body according to its route. Returns the body to send
/// upstream and what was learnt from it. A body that is buffered holds its bytes of
/// `budget` until its last copy is dropped; one that does not fit is refused (503).
pub async fn admit_body(
    route: RouteKind,
    method: &Method,
    headers: &HeaderFields,
    body: ClientBody,
    max_body: u64,
    budget: &Arc<BodyBudget>,
) -> Result<(RequestBody, RequestMeta)> {
    // The HTTP/1.1 server has read the declared length already (and refused a bad
    // one): only an HTTP/2 body needs the header looked up again.
    let declared = match &body {
        ClientBody::Full(data) => data.as_ref().map(|d| d.len() as u64),
        ClientBody::Channel { left, .. } => *left,
        ClientBody::Hyper(..) => content_length(headers)?,
    };
    if let Some(len) = declared {
        if len > max_body {
            return Err(too_large(max_body));
        }
    }
    if method == Method::GET || method == Method::HEAD || method == Method::DELETE {
        // Bodies on these methods are not part of Anthropic's API; drop them.
        return Ok((RequestBody::Full(None), RequestMeta::default()));
    }
    if !route.buffers_body() {
        return Ok((
            RequestBody::Stream {
                inner: body,
                seen: 0,
                limit: max_body,
            },
            RequestMeta::default(),
        ));
    }
    let bytes = budget::read_body(body, declared, max_body, budget).await?;
    let meta = match route {
        RouteKind::Messages | RouteKind::CountTokens => peek_messages(&bytes)?,
        _ => {
            if !bytes.is_empty() {
                serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).map_err(invalid_json)?;
            }
            RequestMeta::default()
        }
    };
    Ok((RequestBody::Full(Some(bytes)), meta))
}

fn peek_messages(bytes: &Bytes) -> Result<RequestMeta> {
    match peek::scan(bytes) {
        Some(meta) => Ok(meta),
        None => peek_messages_serde(bytes),
    }
}

/// The body checked and read by serde: for what the hand scan hands over, and for
/// the error messages.
fn peek_messages_serde(bytes: &[u8]) -> Result<RequestMeta> {
    // serde would accept a JSON array as a struct in sequence form; Anthropic would not.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(invalid_json)?;
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            "request body must be a JSON object",
        ));
    }
    let peek: MessagesPeek = serde_json::from_slice(bytes).map_err(invalid_json)?;
    Ok(RequestMeta {
        model: peek.model.and_then(|v| match v {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        }),
        stream: matches!(peek.stream, Some(serde_json::Value::Bool(true))),
        max_tokens: peek.max_tokens.and_then(|v| v.as_u64()),
    })
}

fn invalid_json(e: serde_json::Error) -> Error {
    // A field the gateway reads, given twice: the gateway could decide limits and
    // routing on one value while the API uses the other. (The name is one of the
    // gateway's own fields, never the client's text.)
    let text = e.to_string();
    if let Some(field) = text
        .strip_prefix("duplicate field `")
        .and_then(|rest| rest.split('`').next())
    {
        return Error::new(
            ErrorKind::InvalidRequest,
            format!(
                "request body has more than one `{field}` field (line {}, column {}); send it once",
                e.line(),
                e.column()
            ),
        );
    }
    let what = if e.is_data() {
        "request body must be a JSON object"
    } else {
        "request body is not valid JSON"
    };
    // Line and column help the caller; the error never quotes the body itself.
    Error::new(
        ErrorKind::InvalidRequest,
        format!("{what} (line {}, column {})", e.line(), e.column()),
    )
}

fn too_large(max: u64) -> Error {
    Error::new(
        ErrorKind::RequestTooLarge,
        format!("request body exceeds the gateway limit of {max} bytes"),
    )
}

fn content_length(headers: &HeaderFields) -> Result<Option<u64>> {
    match headers.get_known(crate::head::Known::ContentLength) {
        None => Ok(None),
        Some(v) => crate::http1::framing::parse_length(v)
            .map(Some)
            .ok_or_else(|| Error::new(ErrorKind::InvalidRequest, "invalid content-length header")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_anthropic_paths() {
        let kind = |m: Method, p: &str| target::check(&m, p, false).map_err(|e| e.kind);
        assert_eq!(kind(Method::POST, "/v1/messages"), Ok(RouteKind::Messages));
        assert_eq!(
            kind(Method::POST, "/v1/messages/count_tokens"),
            Ok(RouteKind::CountTokens)
        );
        assert_eq!(
            kind(Method::GET, "/v1/messages/batches/abc/results"),
            Ok(RouteKind::Batches)
        );
        assert_eq!(
            kind(Method::GET, "/v1/models/claude-x"),
            Ok(RouteKind::Models)
        );
        assert_eq!(
            kind(Method::GET, "/v1/files/f1/content"),
            Ok(RouteKind::Files)
        );
        assert_eq!(kind(Method::POST, "/v1/complete"), Ok(RouteKind::OtherV1));
        assert_eq!(kind(Method::GET, "/admin"), Err(ErrorKind::NotFound));
    }

    #[test]
    fn a_repeated_field_the_gateway_reads_is_refused_by_name() {
        for field in ["model", "stream", "max_tokens"] {
            let body = format!(r#"{{"{field}":1,"messages":[],"{field}":2}}"#);
            let e = peek_messages(&Bytes::from(body)).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidRequest);
            assert!(
                e.message
                    .starts_with(&format!("request body has more than one `{field}` field")),
                "{}",
                e.message
            );
        }
        // Fields the gateway does not read may repeat: the API decides about them.
        assert!(peek_messages(&Bytes::from_static(br#"{"model":"m","x":1,"x":2}"#)).is_ok());
    }

    #[test]
    fn peeks_model_stream_and_max_tokens() {
        let m = peek_messages(&Bytes::from_static(
            br#"{"model":"claude-x","stream":true,"max_tokens":5,"messages":[]}"#,
        ))
        .unwrap();
        assert_eq!(m.model.as_deref(), Some("claude-x"));
        assert!(m.stream);
        assert_eq!(m.max_tokens, Some(5));
        let e = peek_messages(&Bytes::from_static(b"{\"model\": ")).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidRequest);
        let e = peek_messages(&Bytes::from_static(b"[1,2]")).unwrap_err();
        assert!(e.message.contains("JSON object"), "{}", e.message);
    }
}
