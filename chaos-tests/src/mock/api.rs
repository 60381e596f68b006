//! The other endpoints: count_tokens, models, message batches and files.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::conn::ConnCtl;
use super::faults::Fault;
use super::messages::{self, RawRequest, Reply};
use super::response::{self, body_with_faults, new_id, now_secs, rfc3339, Resp};
use super::State;

/// Writes the usual success headers and applies body faults to a JSON reply.
fn ok_json(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault, value: &impl Serialize) -> Resp {
    let body = match serde_json::to_vec(value) {
        Ok(body) => body,
        Err(e) => return response::error(500, &format!("mock could not encode reply: {e}")),
    };
    let mut resp = response::with_body(
        StatusCode::OK,
        HeaderValue::from_static("application/json"),
        body_with_faults(body.into(), fault, ctl),
    );
    state
        .limits
        .write_headers(resp.headers_mut(), state.limits.consume(0, 0), None);
    resp
}

/// `POST /v1/messages/count_tokens`.
pub(crate) fn count_tokens(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault, body: &Bytes) -> Resp {
    match messages::parse(body, false) {
        Ok(req) => ok_json(
            state,
            ctl,
            fault,
            &json!({ "input_tokens": req.input_tokens }),
        ),
        Err(msg) => response::error(400, &msg),
    }
}

/// (id, display name, created_at), newest first like the real list.
const MODELS: &[(&str, &str, &str)] = &[
    (
        "claude-haiku-4-5",
        "Claude Haiku 4.5",
        "2025-10-15T00:00:00Z",
    ),
    (
        "claude-sonnet-4-5",
        "Claude Sonnet 4.5",
        "2025-09-29T00:00:00Z",
    ),
    ("claude-opus-4-1", "Claude Opus 4.1", "2025-08-05T00:00:00Z"),
];

fn model_object(&(id, name, created): &(&str, &str, &str)) -> serde_json::Value {
    json!({"type": "model", "id": id, "display_name": name, "created_at": created})
}

fn list<T: Serialize>(data: &[T], id: impl Fn(&T) -> String) -> serde_json::Value {
    json!({
        "data": data,
        "has_more": false,
        "first_id": data.first().map(&id),
        "last_id": data.last().map(&id),
    })
}

/// `GET /v1/models`.
pub(crate) fn list_models(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault) -> Resp {
    let data: Vec<_> = MODELS.iter().map(model_object).collect();
    let body = list(&data, |m| m["id"].as_str().unwrap_or_default().to_owned());
    ok_json(state, ctl, fault, &body)
}

/// `GET /v1/models/{id}`.
pub(crate) fn get_model(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault, id: &str) -> Resp {
    match MODELS.iter().find(|m| m.0 == id) {
        Some(m) => ok_json(state, ctl, fault, &model_object(m)),
        None => response::error(404, &format!("model: {id}")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum BatchState {
    InProgress,
    Canceling,
    Ended { canceled: bool },
}

struct BatchItem {
    custom_id: String,
    model: String,
    max_tokens: u64,
    input_tokens: u64,
}

struct Batch {
    id: String,
    created_at: u64,
    state: BatchState,
    cancel_initiated_at: Option<u64>,
    ended_at: Option<u64>,
    items: Vec<BatchItem>,
}

impl Batch {
    /// Batches finish on the first read after creation (or cancel), so tests never poll.
    fn advance(&mut self) {
        let canceled = match self.state {
            BatchState::InProgress => false,
            BatchState::Canceling => true,
            BatchState::Ended { .. } => return,
        };
        self.state = BatchState::Ended { canceled };
        self.ended_at = Some(now_secs());
    }

    fn object(&self, base_url: &str) -> serde_json::Value {
        let n = self.items.len();
        let (status, processing, succeeded, canceled) = match self.state {
            BatchState::InProgress => ("in_progress", n, 0, 0),
            BatchState::Canceling => ("canceling", n, 0, 0),
            BatchState::Ended { canceled: false } => ("ended", 0, n, 0),
            BatchState::Ended { canceled: true } => ("ended", 0, 0, n),
        };
        let ended = matches!(self.state, BatchState::Ended { .. });
        json!({
            "id": self.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": {
                "processing": processing,
                "succeeded": succeeded,
                "errored": 0,
                "canceled": canceled,
                "expired": 0,
            },
            "ended_at": self.ended_at.map(rfc3339),
            "created_at": rfc3339(self.created_at),
            "expires_at": rfc3339(self.created_at + 24 * 3600),
            "cancel_initiated_at": self.cancel_initiated_at.map(rfc3339),
            "archived_at": null,
            "results_url": ended.then(|| format!("{base_url}/v1/messages/batches/{}/results", self.id)),
        })
    }
}

/// Batches in creation order.
#[derive(Default)]
pub(crate) struct Batches {
    order: Vec<String>,
    by_id: HashMap<String, Batch>,
}

#[derive(Deserialize)]
struct BatchCreate<'a> {
    #[serde(borrow)]
    requests: Vec<BatchRequest<'a>>,
}

#[derive(Deserialize)]
struct BatchRequest<'a> {
    custom_id: String,
    #[serde(borrow)]
    params: RawRequest<'a>,
}

/// `POST /v1/messages/batches`.
pub(crate) fn create_batch(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault, body: &Bytes) -> Resp {
    let create: BatchCreate<'_> = match serde_json::from_slice(body) {
        Ok(c) => c,
        Err(e) => return response::error(400, &format!("invalid request body: {e}")),
    };
    if create.requests.is_empty() {
        return response::error(400, "requests: at least one request is required");
    }
    let mut items: Vec<BatchItem> = Vec::with_capacity(create.requests.len());
    for (i, r) in create.requests.into_iter().enumerate() {
        if items.iter().any(|it| it.custom_id == r.custom_id) {
            return response::error(400, &format!("requests.{i}.custom_id: duplicate custom_id"));
        }
        let req = match r.params.validate(true, &format!("requests.{i}.params.")) {
            Ok(req) => req,
            Err(msg) => return response::error(400, &msg),
        };
        items.push(BatchItem {
            custom_id: r.custom_id,
            model: req.model.into_owned(),
            max_tokens: req.max_tokens,
            input_tokens: req.input_tokens,
        });
    }
    let batch = Batch {
        id: new_id("msgbatch_"),
        created_at: now_secs(),
        state: BatchState::InProgress,
        cancel_initiated_at: None,
        ended_at: None,
        items,
    };
    let object = batch.object(&state.base_url);
    {
        let mut batches = state.batches();
        batches.order.push(batch.id.clone());
        batches.by_id.insert(batch.id.clone(), batch);
    }
    ok_json(state, ctl, fault, &object)
}

fn batch_not_found(id: &str) -> Resp {
    response::error(404, &format!("message batch {id} not found"))
}

/// `GET /v1/messages/batches` (newest first).
pub(crate) fn list_batches(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault) -> Resp {
    let data: Vec<serde_json::Value> = {
        let mut batches = state.batches();
        let Batches { order, by_id } = &mut *batches;
        let mut data = Vec::with_capacity(order.len());
        for id in order.iter().rev() {
            if let Some(b) = by_id.get_mut(id) {
                b.advance();
                data.push(b.object(&state.base_url));
            }
        }
        data
    };
    let body = list(&data, |b| b["id"].as_str().unwrap_or_default().to_owned());
    ok_json(state, ctl, fault, &body)
}

/// `GET /v1/messages/batches/{id}`.
pub(crate) fn get_batch(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault, id: &str) -> Resp {
    let object = state.batches().by_id.get_mut(id).map(|b| {
        b.advance();
        b.object(&state.base_url)
    });
    match object {
        Some(o) => ok_json(state, ctl, fault, &o),
        None => batch_not_found(id),
    }
}

/// `POST /v1/messages/batches/{id}/cancel`: an unfinished batch becomes `canceling` and ends
/// with every request canceled on the next read; an ended batch is returned unchanged.
pub(crate) fn cancel_batch(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault, id: &str) -> Resp {
    let object = state.batches().by_id.get_mut(id).map(|b| {
        if b.state == BatchState::InProgress {
            b.state = BatchState::Canceling;
            b.cancel_initiated_at = Some(now_secs());
        }
        b.object(&state.base_url)
    });
    match object {
        Some(o) => ok_json(state, ctl, fault, &o),
        None => batch_not_found(id),
    }
}

/// `GET /v1/messages/batches/{id}/results`: JSONL, one line per request.
pub(crate) fn batch_results(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault, id: &str) -> Resp {
    let tokens = state.pacing().tokens;
    let body = {
        let mut batches = state.batches();
        let Some(batch) = batches.by_id.get_mut(id) else {
            return batch_not_found(id);
        };
        batch.advance();
        let canceled = batch.state == (BatchState::Ended { canceled: true });
        let mut out = String::new();
        for item in &batch.items {
            let line = if canceled {
                json!({"custom_id": item.custom_id, "result": {"type": "canceled"}})
            } else {
                let reply = Reply::new(&item.model, item.max_tokens, item.input_tokens, tokens);
                let text = reply.text();
                json!({
                    "custom_id": item.custom_id,
                    "result": {"type": "succeeded", "message": reply.object(Some(&text))},
                })
            };
            let _ = writeln!(out, "{line}");
        }
        out
    };
    let mut resp = response::with_body(
        StatusCode::OK,
        HeaderValue::from_static("application/x-jsonl"),
        body_with_faults(body.into(), fault, ctl),
    );
    state
        .limits
        .write_headers(resp.headers_mut(), state.limits.consume(0, 0), None);
    resp
}

/// A stored upload (metadata only; the bytes are counted, not kept).
#[derive(Clone, Serialize)]
pub(crate) struct FileObject {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    filename: &'static str,
    mime_type: String,
    size_bytes: u64,
    created_at: String,
    downloadable: bool,
}

/// `POST /v1/files`; `size_bytes` is the number of request-body bytes received.
pub(crate) fn upload_file(
    state: &State,
    ctl: &Arc<ConnCtl>,
    fault: &Fault,
    content_type: Option<&str>,
    size: u64,
) -> Resp {
    let mime_type = content_type
        .and_then(|ct| ct.split(';').next())
        .map(str::trim)
        .filter(|ct| !ct.is_empty())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let file = FileObject {
        id: new_id("file_"),
        kind: "file",
        filename: "upload",
        mime_type,
        size_bytes: size,
        created_at: rfc3339(now_secs()),
        downloadable: false,
    };
    state.files().push(file.clone());
    ok_json(state, ctl, fault, &file)
}

/// `GET /v1/files` (newest first).
pub(crate) fn list_files(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault) -> Resp {
    let data: Vec<FileObject> = state.files().iter().rev().cloned().collect();
    let body = list(&data, |f| f.id.clone());
    ok_json(state, ctl, fault, &body)
}

/// `GET /v1/files/{id}`.
pub(crate) fn get_file(state: &State, ctl: &Arc<ConnCtl>, fault: &Fault, id: &str) -> Resp {
    let file = state.files().iter().find(|f| f.id == id).cloned();
    match file {
        Some(f) => ok_json(state, ctl, fault, &f),
        None => response::error(404, &format!("file {id} not found")),
    }
}
