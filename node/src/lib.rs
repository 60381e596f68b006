//! Strait node: the data plane of a multi-region gateway for the Anthropic API.
//!
//! # Layout
//! A request goes through the modules in this order (see `proxy::handle`):
//! - [`accept`]: listeners, TLS (ALPN h2/http1.1), connection limits, drain.
//! - [`auth`]: client key lookup by SHA-256 hash.
//! - [`admit`]: route classification, body limits, JSON checks.
//! - [`limits`]: rate limits, token budgets and concurrency per key and tenant
//!   (in process, or shared through Redis).
//! - [`route`]: the upstream key pool, cooldowns after 429/529.
//! - [`forward`]: pooled upstream client, header rewriting, retries.
//! - [`stream`]: relaying the body, usage read on the side, SSE error events.
//! - [`account`]: metrics and the access log.
//!
//! Around them: [`proxy`] (the pipeline), [`error`] (the one error type and its HTTP
//! mapping), [`config`] and [`cli`] (typed, validated configuration), [`health`] and
//! [`admin`] (health and metrics endpoints), [`server`] (start, signals, drain),
//! [`body`] and [`head`] (the request and body types), [`telemetry`] (logging), [`cluster`] (membership and live
//! config in etcd; the node alone on its file config when no etcd is configured).

pub mod accept;
pub mod account;
pub mod admin;
pub mod admit;
pub mod auth;
pub mod body;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod error;
pub mod forward;
pub mod head;
pub mod health;
pub mod json_scan;
pub mod limit_spec;
pub mod limits;
pub mod meta;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod schema;
pub mod secret;
pub mod server;
pub mod sse;
pub mod state;
pub mod stream;
pub mod telemetry;
pub mod wire;

pub use error::{Error, ErrorKind};
pub use server::Node;

pub use meta::REQUEST_ID_HEADER;
