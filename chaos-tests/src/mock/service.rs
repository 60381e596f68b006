//! The per-request pipeline: read and record the body, authenticate, check the account, apply
//! faults and limits, route.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use super::accounts::{MockEndpoint, Take};
use super::conn::ConnCtl;
use super::faults::{Fault, Pacing};
use super::response::{self, MockBody, Resp};
use super::{api, messages, State};

/// Anthropic's request size limit for the Messages API.
const MAX_BODY: usize = 32 * 1024 * 1024;
/// Anthropic's per-file upload limit.
const MAX_FILE: u64 = 500 * 1024 * 1024;

enum Route<'a> {
    Messages,
    CountTokens,
    BatchCreate,
    BatchList,
    BatchGet(&'a str),
    BatchCancel(&'a str),
    BatchResults(&'a str),
    ModelList,
    ModelGet(&'a str),
    FileUpload,
    FileList,
    FileGet(&'a str),
    NotFound,
}

impl<'a> Route<'a> {
    /// The limit family a route is counted under; unknown routes are never limited.
    fn endpoint(&self) -> Option<MockEndpoint> {
        Some(match self {
            Route::Messages => MockEndpoint::Messages,
            Route::CountTokens => MockEndpoint::CountTokens,
            Route::BatchCreate
            | Route::BatchList
            | Route::BatchGet(_)
            | Route::BatchCancel(_)
            | Route::BatchResults(_) => MockEndpoint::Batches,
            Route::ModelList | Route::ModelGet(_) => MockEndpoint::Models,
            Route::FileUpload | Route::FileList | Route::FileGet(_) => MockEndpoint::Files,
            Route::NotFound => return None,
        })
    }

    fn of(method: &Method, path: &'a str) -> Route<'a> {
        let get = method == Method::GET;
        let post = method == Method::POST;
        match path {
            "/v1/messages" if post => Route::Messages,
            "/v1/messages/count_tokens" if post => Route::CountTokens,
            "/v1/messages/batches" if post => Route::BatchCreate,
            "/v1/messages/batches" if get => Route::BatchList,
            "/v1/models" if get => Route::ModelList,
            "/v1/files" if post => Route::FileUpload,
            "/v1/files" if get => Route::FileList,
            _ => {
                if let Some(rest) = path.strip_prefix("/v1/messages/batches/") {
                    match rest.split_once('/') {
                        None if get && !rest.is_empty() => Route::BatchGet(rest),
                        Some((id, "cancel")) if post => Route::BatchCancel(id),
                        Some((id, "results")) if get => Route::BatchResults(id),
                        _ => Route::NotFound,
                    }
                } else if let Some(id) = path
                    .strip_prefix("/v1/models/")
                    .filter(|id| get && !id.is_empty() && !id.contains('/'))
                {
                    Route::ModelGet(id)
                } else if let Some(id) = path
                    .strip_prefix("/v1/files/")
                    .filter(|id| get && !id.is_empty() && !id.contains('/'))
                {
                    Route::FileGet(id)
                } else {
                    Route::NotFound
                }
            }
        }
    }
}

pub(crate) async fn handle(
    state: Arc<State>,
    ctl: Arc<ConnCtl>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, Infallible> {
    Ok(serve(&state, &ctl, req).await)
}

enum BodyError {
    TooLarge,
    Read(String),
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

async fn read_body(headers: &HeaderMap, body: Incoming) -> Result<Bytes, BodyError> {
    if declared_length(headers).is_some_and(|n| n > MAX_BODY as u64) {
        return Err(BodyError::TooLarge);
    }
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(BodyError::TooLarge),
        Err(e) => Err(BodyError::Read(e.to_string())),
    }
}

/// Counts an upload's bytes as they arrive instead of holding them.
async fn count_body(headers: &HeaderMap, mut body: Incoming) -> Result<u64, BodyError> {
    if declared_length(headers).is_some_and(|n| n > MAX_FILE) {
        return Err(BodyError::TooLarge);
    }
    let mut total = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            total += data.len() as u64;
            if total > MAX_FILE {
                return Err(BodyError::TooLarge);
            }
        }
    }
    Ok(total)
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    let key = headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if key.is_some() {
        return key;
    }
    let auth = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

async fn serve(state: &Arc<State>, ctl: &Arc<ConnCtl>, req: Request<Incoming>) -> Resp {
    let received_at = Instant::now();
    let (parts, body) = req.into_parts();
    let route = Route::of(&parts.method, parts.uri.path());
    let read = match route {
        Route::FileUpload => count_body(&parts.headers, body)
            .await
            .map(|n| (Bytes::new(), n)),
        _ => read_body(&parts.headers, body).await.map(|b| {
            let n = b.len() as u64;
            (b, n)
        }),
    };
    let (body, body_len) = match read {
        Ok(read) => read,
        Err(e) => {
            state.record(&parts, Bytes::new(), 0, received_at);
            return match e {
                BodyError::TooLarge => {
                    response::error(413, "Request exceeds the maximum allowed number of bytes.")
                }
                BodyError::Read(msg) => {
                    response::error(400, &format!("could not read request body: {msg}"))
                }
            };
        }
    };
    state.record(&parts, body.clone(), body_len, received_at);

    let Some(key) = api_key(&parts.headers) else {
        return response::error(401, "x-api-key header is required");
    };
    if !state.key_allowed(key) {
        return response::error(401, "invalid x-api-key");
    }
    if let Some(refused) = state.accounts.refuse_key(key) {
        return refused;
    }
    if !parts.headers.contains_key("anthropic-version") {
        return response::error(400, "anthropic-version: header is required");
    }
    if let Some(refused) = state.accounts.refuse_org(key) {
        return refused;
    }
    let fault = match fault_for(state, &parts, key) {
        Ok(f) => f.unwrap_or_default(),
        Err(msg) => return response::error(400, &msg),
    };
    let pacing = match parts.headers.get("x-mock-pacing") {
        None => state.pacing(),
        Some(v) => match v
            .to_str()
            .map_err(|e| e.to_string())
            .and_then(|s| state.pacing().with_overrides(s).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => return response::error(400, &format!("invalid x-mock-pacing header: {e}")),
        },
    };

    if let Some(delay) = fault.latency {
        tokio::time::sleep(delay).await;
    }
    if fault.reset {
        ctl.abort();
        // The connection task drops this future along with the connection.
        return std::future::pending().await;
    }
    if let Some(status) = fault.status {
        return response::fault_error(state, &fault, status);
    }
    match state
        .accounts
        .take(&state.limits, key, route.endpoint(), &body)
    {
        Take::Unlimited => dispatch(state, ctl, &parts, route, &body, body_len, &fault, pacing),
        Take::Passed(bucket) => {
            let mut resp = dispatch(state, ctl, &parts, route, &body, body_len, &fault, pacing);
            bucket.write(resp.headers_mut());
            resp
        }
        Take::Limited(refused) => refused,
    }
}

/// Header fault first (explicit in the request), then the FIFO queue, then the key's fault.
fn fault_for(state: &State, parts: &Parts, key: &str) -> Result<Option<Fault>, String> {
    if let Some(v) = parts.headers.get("x-mock-fault") {
        let text = v
            .to_str()
            .map_err(|e| format!("invalid x-mock-fault header: {e}"))?;
        return text
            .parse()
            .map(Some)
            .map_err(|e| format!("invalid x-mock-fault header: {e}"));
    }
    Ok(state.pop_fault().or_else(|| state.key_fault(key)))
}

#[allow(clippy::too_many_arguments)]
fn dispatch(
    state: &State,
    ctl: &Arc<ConnCtl>,
    parts: &Parts,
    route: Route<'_>,
    body: &Bytes,
    body_len: u64,
    fault: &Fault,
    pacing: Pacing,
) -> Resp {
    match route {
        Route::Messages => {
            state.count_executed(body);
            messages::create(state, ctl, body, fault, pacing)
        }
        Route::CountTokens => api::count_tokens(state, ctl, fault, body),
        Route::BatchCreate => api::create_batch(state, ctl, fault, body),
        Route::BatchList => api::list_batches(state, ctl, fault),
        Route::BatchGet(id) => api::get_batch(state, ctl, fault, id),
        Route::BatchCancel(id) => api::cancel_batch(state, ctl, fault, id),
        Route::BatchResults(id) => api::batch_results(state, ctl, fault, id),
        Route::ModelList => api::list_models(state, ctl, fault),
        Route::ModelGet(id) => api::get_model(state, ctl, fault, id),
        Route::FileUpload => {
            let content_type = parts
                .headers
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            api::upload_file(state, ctl, fault, content_type, body_len)
        }
        Route::FileList => api::list_files(state, ctl, fault),
        Route::FileGet(id) => api::get_file(state, ctl, fault, id),
        Route::NotFound => response::error(
            404,
            &format!("Not found: {} {}", parts.method, parts.uri.path()),
        ),
    }
}
