//! Test harness for Strait: a mock Anthropic API, a TCP fault proxy, and TLS helpers.
//!
//! # Layout
//! - [`mock`]: the mock Anthropic API server ([`mock::MockUpstream`], [`mock::MockHandle`]).
//!   - `mock/mod.rs`: configuration, startup, recorded requests, the steering handle.
//!   - `mock/conn.rs`: accept loop, HTTP/1.1 + HTTP/2 serving, aborting a connection with RST.
//!   - `mock/service.rs`: per-request pipeline (body, recording, auth, faults) and routing.
//!   - `mock/messages.rs`: `POST /v1/messages`, the token estimate, SSE streams.
//!   - `mock/api.rs`: count_tokens, models, message batches, files.
//!   - `mock/faults.rs`: [`mock::Fault`] / [`mock::Pacing`] and their header grammar.
//!   - `mock/accounts.rs`: organisations, per-org request limits, refused keys and orgs.
//!   - `mock/ratelimit.rs`: the usage window behind the `anthropic-ratelimit-*` headers.
//!   - `mock/response.rs`: body type, ids, Anthropic error shape, paced sending.
//! - [`cluster`]: a whole cluster on loopback (etcd, Redis, brokers, nodes, coordinators
//!   with DNS, fault proxies on every path), the client workload, and the chaos scenarios
//!   with their Jepsen-style count (the `strait-chaos` binary drives it).
//! - [`layers`]: an architecture check holding a crate's imports to a layer table.
//! - [`faultproxy`]: a userspace TCP proxy injecting latency (with jitter and spikes),
//!   blackholes, refusals and resets.
//! - [`process`]: a binary under test as a child process, output captured, started when ready.
//! - [`rabbitmq`]: a private RabbitMQ broker on free ports: start, stop, SIGKILL, restart.
//! - [`tls`]: a throwaway CA and server certificate, and rustls configs for both ends.
//!
//! The `strait-mock-upstream` binary (`src/bin/mock_upstream.rs`) runs the mock as its own
//! process for benchmarks and multi-process tests.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod faultproxy;
pub mod layers;
pub mod mock;
pub mod process;
pub mod rabbitmq;
pub mod tls;
