//! The coordinator's one error type, and its mapping to a JSON error response in
//! one place ([`Error::into_response`]), so every handler fails the same way.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::leader::LeaderInfo;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, which decides the HTTP status and the `error.type` string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Missing or wrong admin token.
    Unauthorized,
    /// The request is malformed or would make the cluster config invalid.
    BadRequest,
    NotFound,
    /// No route matches the request path (distinct from a missing object).
    NoRoute,
    /// The config changed under a write too many times in a row.
    Conflict,
    /// This coordinator is not the elected writer; the error names the leader.
    NotLeader,
    /// etcd cannot be reached or timed out.
    Unavailable,
    /// Bad configuration at start-up.
    Config,
    /// The CLI got an error answer or none from the admin API.
    Client,
    Internal,
}

impl ErrorKind {
    /// Exhaustive on purpose: a new kind must decide its status.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorKind::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorKind::BadRequest => StatusCode::BAD_REQUEST,
            ErrorKind::NotFound | ErrorKind::NoRoute => StatusCode::NOT_FOUND,
            ErrorKind::Conflict => StatusCode::CONFLICT,
            ErrorKind::NotLeader | ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Config | ErrorKind::Client | ErrorKind::Internal => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::BadRequest => "invalid_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::Conflict => "conflict",
            ErrorKind::NotLeader => "not_leader",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Config => "config",
            ErrorKind::Client => "client",
            ErrorKind::Internal => "internal",
        }
    }
}

/// An error with its kind and a message safe to show (never a secret).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    /// Set on [`ErrorKind::NotLeader`] when the leader is known.
    pub leader: Option<LeaderInfo>,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            leader: None,
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::BadRequest, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Internal, message)
    }
    pub fn config(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Config, message)
    }
    pub fn client(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Client, message)
    }
    pub fn not_leader(leader: Option<LeaderInfo>) -> Self {
        let message = match &leader {
            Some(l) => format!(
                "this coordinator is not the leader; send writes to {} ({})",
                l.id, l.url
            ),
            None => {
                "this coordinator is not the leader and no leader is elected yet; retry shortly"
                    .to_string()
            }
        };
        Error {
            kind: ErrorKind::NotLeader,
            message,
            leader,
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<&'a LeaderInfo>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.kind.status();
        // A standby refusing a write is routine, not worth a warning.
        if status.is_server_error() && self.kind != ErrorKind::NotLeader {
            tracing::warn!(kind = self.kind.as_str(), message = %self.message, "request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.as_str(),
                message: &self.message,
                leader: self.leader.as_ref(),
            },
        };
        let mut resp = (status, axum::Json(body)).into_response();
        if self.kind == ErrorKind::Unauthorized {
            resp.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
        }
        if self.kind == ErrorKind::NotLeader {
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        resp
    }
}
