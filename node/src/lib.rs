//! Strait node: the data plane of a multi-region gateway for the Anthropic API.
//!
//! # Layout
//! In layers, lowest first (docs/architecture.md; `tests/layers.rs` keeps imports
//! flowing down):
//! - vocabulary: [`meta`] (what the phases learn about a request), [`error`] (the one
//!   error type and its HTTP mapping), [`head`] and [`body`] (the request), [`sse`]
//!   (event framing), [`json_scan`] (the one hand JSON scanner), [`secret`] (keys and the KEK), [`schema`] (the cluster's
//!   documents), [`limit_spec`] (what a limit counts), [`boxed`] (values built in
//!   their box).
//! - protocol: [`http1`] (HTTP/1.1 server and client, the upstream pool, TLS, DNS).
//! - settings and signals: [`config`], [`telemetry`], [`metrics`], [`health`].
//! - phases, in a request's order (see `proxy::handle`):
//!   - [`accept`]: listeners, TLS (ALPN h2/http1.1), connection limits, drain.
//!   - [`auth`]: client key lookup by SHA-256 hash.
//!   - [`admit`]: body limits, JSON checks, the request's facts.
//!   - [`limits`]: rate limits, token budgets and concurrency per key and tenant
//!     (in process, or shared through Redis).
//!   - [`route`]: decides how the request leaves (the key pool, cooldowns).
//!   - [`forward`]: carries the decision out: header rewriting, the attempt loop.
//!   - [`relay`]: the second way out, through a node of a peer region, over the
//!     signed node-to-node channel.
//!   - [`defer`]: the third way out: the durable queue and the deferred ids' state
//!     machine, each behind its trait (RabbitMQ and Redis, or the embedded spool).
//!   - [`stream`]: relaying the body, usage read on the side, SSE error events.
//!   - [`account`]: settling, metrics and the access log for a finished request.
//! - [`state`]: what every connection shares.
//! - [`proxy`] (the pipeline), [`deferred`] (the deferred API and the consumer that
//!   delivers), [`admin`] (health and metrics endpoints; [`stats`], the JSON the
//!   coordinators' dashboard scrapes), [`cluster`]
//!   (membership and live config in etcd; the node alone on its file config when no
//!   etcd is configured).
//! - [`server`] (start, signals, drain), [`cli`] (flags and environment) and
//!   [`threads`] (the serving thread's own descriptor table).
//! - `fuzz`: entry points for the property tests and `cargo fuzz` (docs/fuzzing.md);
//!   nothing on the request path uses it.

pub mod accept;
pub mod account;
pub mod admin;
pub mod admit;
pub mod auth;
pub mod body;
pub mod boxed;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod defer;
pub mod deferred;
pub mod error;
pub mod forward;
#[doc(hidden)]
pub mod fuzz;
pub mod head;
pub mod health;
pub mod http1;
pub mod json_scan;
pub mod limit_spec;
pub mod limits;
pub mod meta;
pub mod metrics;
pub mod proxy;
pub mod relay;
pub mod route;
pub mod schema;
pub mod secret;
pub mod server;
pub mod sse;
pub mod state;
pub mod stats;
pub mod stream;
pub mod telemetry;
pub mod threads;

pub use error::{Error, ErrorKind};
pub use server::Node;

pub use meta::REQUEST_ID_HEADER;
