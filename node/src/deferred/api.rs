//! The deferred API on the public listener:
//! - `POST /v1/strait/deferred/messages`: always queues (202);
//! - `GET /v1/strait/deferred/{id}`: 202 with the state while open, then exactly what
//!   `POST /v1/messages` would have answered; 404 for an unknown id or another key's,
//!   410 once expired;
//! - `DELETE /v1/strait/deferred/{id}`: cancels while queued.
//!
//! And the 202 answer itself, shared with `POST /v1/messages` and `strait-defer`.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};

use crate::auth::Principal;
use crate::config::KeyMode;
use crate::defer::store::{Cancel, Lookup, Record, State, StoredResult};
use crate::defer::{
    Accepted, Deferral, DeferredId, Enqueue, DEFERRED_HEADER, QUEUE_PATH, RESULT_PATH,
};
use crate::error::{Error, ErrorKind, Result};
use crate::head::HeaderFields;
use crate::meta::RequestMeta;
use crate::stream::ProxyBody;

/// Header naming a deferred result's state on answers about it.
pub const STATUS_HEADER: &str = "x-strait-deferred-status";

/// Serves one request under [`RESULT_PATH`] for an authenticated `principal`.
pub async fn serve(
    deferral: Option<&Deferral>,
    mode: KeyMode,
    principal: &Principal,
    method: &Method,
    path: &str,
    headers: &HeaderFields,
    admitted: impl std::future::Future<Output = Result<(Bytes, RequestMeta)>>,
) -> Result<Response<ProxyBody>> {
    if path != QUEUE_PATH && mode == KeyMode::Passthrough {
        // Nothing is ever deferred here, so no id exists.
        return Err(Error::new(
            ErrorKind::NotFound,
            "no deferred request with this id: this gateway passes clients' own keys \
             through and does not defer requests",
        ));
    }
    let deferral = available(deferral, mode)?;
    if path == QUEUE_PATH {
        if method != Method::POST {
            return Err(Error::new(
                ErrorKind::MethodNotAllowed,
                "use POST on /v1/strait/deferred/messages",
            ));
        }
        let (body, meta) = admitted.await?;
        let accepted = deferral
            .enqueue(enqueue_request(
                principal,
                headers,
                "/v1/messages",
                body,
                &meta,
                "always",
            ))
            .await?;
        return Ok(accepted_response(&accepted));
    }
    let raw = &path[RESULT_PATH.len()..];
    let id = DeferredId::parse(raw).ok_or_else(unknown_id)?;
    let foreign = id.region() != deferral.region;
    let answer = match *method {
        Method::GET => lookup(deferral, principal, &id).await,
        Method::DELETE => cancel(deferral, principal, &id).await,
        _ => Err(Error::new(
            ErrorKind::MethodNotAllowed,
            "use GET or DELETE on /v1/strait/deferred/{id}",
        )),
    };
    match answer {
        // Another region's id is found here only once its backlog was moved here;
        // otherwise the client is told where to ask.
        Err(e) if foreign && e.kind == ErrorKind::NotFound => Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "deferred request {id} belongs to region {}: ask a node of that region",
                id.region()
            ),
        )),
        other => other,
    }
}

/// The deferral, or why this node cannot defer: passthrough mode (it cannot store
/// the client's credential) or no queue configured.
pub fn available(deferral: Option<&Deferral>, mode: KeyMode) -> Result<&Deferral> {
    if mode == KeyMode::Passthrough {
        return Err(Error::new(
            ErrorKind::InvalidRequest,
            "deferred delivery is not available on a passthrough gateway: it would have to \
             store your API key to send the request later, and it never stores client \
             credentials; use a gateway with managed upstream keys",
        ));
    }
    deferral.ok_or_else(|| {
        Error::new(
            ErrorKind::Unavailable,
            "the request was NOT queued: deferred delivery is not set up on this node",
        )
    })
}

/// What to queue for a Messages request: the owner, the headers that matter upstream,
/// the body. Never the client's key.
pub fn enqueue_request<'a>(
    principal: &'a Principal,
    headers: &'a HeaderFields,
    path: &'a str,
    body: Bytes,
    meta: &'a RequestMeta,
    how: &'static str,
) -> Enqueue<'a> {
    let text = |name: &str| {
        headers
            .get(&http::HeaderName::from_bytes(name.as_bytes()).expect("valid name"))
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    Enqueue {
        owner: &principal.name,
        idempotency_key: text(crate::defer::IDEMPOTENCY_HEADER),
        path,
        anthropic_version: text("anthropic-version"),
        anthropic_beta: text("anthropic-beta"),
        stream: meta.stream,
        model: meta.model.as_deref(),
        body,
        how,
    }
}

/// `202 Accepted` with the id's location.
pub fn accepted_response(accepted: &Accepted) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "type": "deferred_request",
        "id": accepted.id.as_str(),
        "status": accepted.state.as_str(),
    })
    .to_string();
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = StatusCode::ACCEPTED;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(loc) = HeaderValue::from_str(&format!("{RESULT_PATH}{}", accepted.id)) {
        h.insert(header::LOCATION, loc);
    }
    h.insert(DEFERRED_HEADER, id_value(&accepted.id));
    h.insert(
        STATUS_HEADER,
        HeaderValue::from_static(accepted.state.as_str()),
    );
    resp
}

async fn lookup(
    deferral: &Deferral,
    principal: &Principal,
    id: &DeferredId,
) -> Result<Response<ProxyBody>> {
    let found = deferral.store.lookup(id).await.map_err(store_down)?;
    match found {
        Lookup::Missing => Err(unknown_id()),
        Lookup::Expired(rec) if rec.owner == *principal.name => Err(Error::new(
            ErrorKind::Gone,
            format!("deferred request {id} has expired: results are kept for {}", ttl_text(deferral)),
        )),
        Lookup::Expired(_) => Err(unknown_id()),
        Lookup::Found(rec, _) if rec.owner != *principal.name => Err(unknown_id()),
        Lookup::Found(rec, result) => match (rec.state, result) {
            (State::Done, Some(result)) => Ok(stored_response(id, result)),
            (State::Cancelled, _) => Err(Error::new(
                ErrorKind::Gone,
                format!("deferred request {id} was cancelled"),
            )),
            (State::Dead, _) => Ok(final_answer(
                &rec,
                format!(
                    "deferred request {id} was given up after {} delivery attempts (dead-lettered); last error: {}",
                    rec.attempts,
                    rec.last_error.as_deref().unwrap_or("none recorded")
                ),
            )),
            (State::OutcomeUnknown, _) => Ok(final_answer(
                &rec,
                format!(
                    "deferred request {id} was sent upstream, but the node delivering it stopped \
                     before the answer was stored: whether it ran is unknown, and it was not resent"
                ),
            )),
            _ => Ok(status_response(&rec)),
        },
    }
}

async fn cancel(
    deferral: &Deferral,
    principal: &Principal,
    id: &DeferredId,
) -> Result<Response<ProxyBody>> {
    match deferral
        .store
        .cancel(id, &principal.name)
        .await
        .map_err(store_down)?
    {
        Cancel::Cancelled => {
            let body = serde_json::json!({
                "type": "deferred_request",
                "id": id.as_str(),
                "status": State::Cancelled.as_str(),
            });
            let mut resp = json_response(StatusCode::OK, body.to_string());
            resp.headers_mut().insert(
                STATUS_HEADER,
                HeaderValue::from_static(State::Cancelled.as_str()),
            );
            Ok(resp)
        }
        Cancel::TooLate(state) => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "deferred request {id} can no longer be cancelled: it is {}",
                state.as_str()
            ),
        )),
        Cancel::Missing => Err(unknown_id()),
    }
}

/// A finished request: exactly the upstream's status, content type and body.
fn stored_response(id: &DeferredId, result: StoredResult) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(result.body));
    *resp.status_mut() = StatusCode::from_u16(result.status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    if let Some(ct) = result
        .content_type
        .as_deref()
        .and_then(|c| HeaderValue::from_str(c).ok())
    {
        h.insert(header::CONTENT_TYPE, ct);
    }
    h.insert(DEFERRED_HEADER, id_value(id));
    h.insert(
        STATUS_HEADER,
        HeaderValue::from_static(State::Done.as_str()),
    );
    resp
}

/// `202` while open: where it is, how often it was tried, the last error.
fn status_response(rec: &Record) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "type": "deferred_request",
        "id": rec.id.as_str(),
        // `pending` is a record whose publish confirm is being written: queued.
        "status": match rec.state { State::Pending => State::Queued.as_str(), s => s.as_str() },
        "attempts": rec.attempts,
        "last_error": rec.last_error,
        "queued_at": httpdate::fmt_http_date(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(rec.queued_at_ms)
        ),
    });
    let mut resp = json_response(StatusCode::ACCEPTED, body.to_string());
    resp.headers_mut()
        .insert(DEFERRED_HEADER, id_value(&rec.id));
    resp.headers_mut()
        .insert(STATUS_HEADER, HeaderValue::from_static(rec.state.as_str()));
    resp
}

/// A deferred request that ended without an answer: an Anthropic-shaped 502 (the
/// upstream part failed), marked with its state.
fn final_answer(rec: &Record, message: String) -> Response<ProxyBody> {
    let mut resp: Response<ProxyBody> =
        Error::new(ErrorKind::UpstreamProtocol, message).bare_response();
    resp.headers_mut()
        .insert(DEFERRED_HEADER, id_value(&rec.id));
    resp.headers_mut()
        .insert(STATUS_HEADER, HeaderValue::from_static(rec.state.as_str()));
    resp
}

fn json_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn id_value(id: &DeferredId) -> HeaderValue {
    HeaderValue::from_str(id.as_str()).expect("ids are ASCII")
}

fn unknown_id() -> Error {
    Error::new(
        ErrorKind::NotFound,
        "no deferred request with this id for this API key",
    )
}

fn store_down(e: Error) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the deferred store is unreachable; retry later",
    )
    .with_detail(e)
    .with_retry_after(std::time::Duration::from_secs(5))
}

fn ttl_text(deferral: &Deferral) -> String {
    humantime::format_duration(deferral.settings.result_ttl).to_string()
}
