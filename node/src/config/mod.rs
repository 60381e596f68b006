//! Typed node configuration: the raw TOML shape with named defaults, and the
//! validated runtime form every other module reads.
//!
//! The file is optional: every field has a default, and `cli` overlays flags and the
//! `STRAIT_*` environment variables on top. `deploy/node.example.toml` documents every
//! option and is parsed by a test so it cannot drift from the `raw` structs.
//!
//! Layout: `raw` (the file's shape and named defaults), `validate` (the checks that
//! turn it into the runtime form), and here the runtime types every module reads.

mod raw;
mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use self::raw::*;
pub use self::validate::{parse_upstream_keys, split_keys};
pub use crate::secret::{hash_key, hash_key_bytes, Secret};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub tls13_only: bool,
    /// `cluster.peer_ca_file`: client certificates signed by it are asked for and
    /// verified (optional for clients; required of relayed requests). `None`: no
    /// client certificates.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// Budget over buffered request bodies held at once (`admit::budget`).
    pub max_inflight_body_bytes: u64,
    pub header_read_timeout: Duration,
    /// Longest wait for the next byte of a request body, the first included.
    pub body_read_timeout: Duration,
    /// Bytes per second over each `body_read_timeout` of waiting; 0: no floor.
    pub min_upload_rate: u64,
    pub max_connections: usize,
    pub drain_timeout: Duration,
}

/// Where the upstream is: scheme, authority and an optional path prefix.
#[derive(Debug, Clone)]
pub struct UpstreamTarget {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Prefix joined before the request path, without a trailing slash ("" usually).
    pub path_prefix: String,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub target: UpstreamTarget,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    pub stream_idle_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    /// Streams per upstream HTTP/2 connection before another is opened.
    pub h2_max_streams_per_connection: usize,
    pub dns_ttl_cap: Duration,
    pub max_attempts: u32,
    pub key_cooldown: Duration,
    pub org_rest: Duration,
    /// The operator's model-class entries (prefix, class), on top of the defaults.
    pub model_classes: Vec<(String, String)>,
    /// Keys the node sends upstream. Empty means passthrough mode.
    pub keys: Vec<UpstreamKey>,
    pub ca_file: Option<PathBuf>,
    /// Relay `/v1/` paths outside the known API routes instead of answering 404.
    pub pass_unknown_routes: bool,
}

/// An upstream key and what the operator said about it.
#[derive(Debug, Clone)]
pub struct UpstreamKey {
    /// For logs and metrics, never the key: `label=` in the key list, else `k1`, `k2`, ...
    pub label: String,
    /// The Anthropic organisation (`org=` in the key list); `None`: one of its own.
    pub org: Option<String>,
    pub secret: Secret,
}

/// A client key the node accepts, known only by its hash.
#[derive(Debug, Clone)]
pub struct ClientKey {
    pub name: String,
    pub sha256: [u8; 32],
    pub tenant: Option<String>,
    /// The key's own limits (not yet merged with the defaults).
    pub limits: crate::limit_spec::LimitSpec,
}

/// How the limiter uses Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitMode {
    /// One atomic script per decision: never over a limit, one round trip per request.
    Exact,
    /// Quota leased in chunks and decided locally: no round trip on the hot path.
    Leased,
}

#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// One URL, or the seed nodes of a cluster.
    pub urls: Vec<String>,
    pub cluster: bool,
    pub mode: LimitMode,
    pub expected_nodes: u32,
    pub sync_interval: Duration,
    pub lease_fraction: f64,
    pub slot_ttl: Duration,
    pub op_timeout: Duration,
    pub key_prefix: String,
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub name: String,
    pub limits: crate::limit_spec::LimitSpec,
}

/// Rate limits and where their state lives.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    pub default: crate::limit_spec::LimitSpec,
    pub tenants: Vec<Tenant>,
    /// `None`: the in-process limiter.
    pub redis: Option<RedisSettings>,
}

#[derive(Debug, Clone)]
pub struct Auth {
    pub client_keys: Vec<ClientKey>,
    pub allow_anonymous: bool,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub format: LogFormat,
    pub level: String,
    pub access_log: bool,
    /// `None`: stdout, with the other logs.
    pub access_log_file: Option<PathBuf>,
}

/// Validated `[cluster]` settings; present only when etcd endpoints are configured.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub etcd: Vec<String>,
    pub region: String,
    /// `None`: resolved at start from the state directory (see `cluster::membership`).
    pub node_id: Option<String>,
    pub lease_ttl: Duration,
    pub state_dir: PathBuf,
    pub kek: Option<crate::secret::Kek>,
    pub advertise_public: Option<String>,
    pub advertise_admin: Option<String>,
}

/// Deferred delivery (`[deferred]`, docs/deferred.md).
#[derive(Debug, Clone)]
pub struct Deferred {
    /// RabbitMQ URL (`--amqp`); `None`: the embedded spool in `spool_dir`.
    pub amqp_url: Option<String>,
    /// Redis for claims and results; `None` with `amqp_url`: refused at load unless
    /// the limiter has a Redis, whose first URL is then used.
    pub redis_url: Option<String>,
    /// The embedded queue and result store (used without `amqp_url`).
    pub spool_dir: std::path::PathBuf,
    /// How long a result (and an unfinished id) is kept; then `GET` says 410.
    pub result_ttl: Duration,
    /// Deliveries of one message before it is dead-lettered (`x-delivery-limit`).
    pub delivery_limit: u32,
    /// Unacknowledged deliveries per consumer (the node's concurrent deliveries).
    pub prefetch: u16,
    /// Longest wait for the broker's publisher confirm before answering 503.
    pub confirm_timeout: Duration,
    /// A consumer's claim on an id; renewed at a third of it while the request runs.
    pub claim_lease: Duration,
    /// Resend an id found `sent` without a result (default: `outcome_unknown`).
    pub resend_unknown: bool,
    /// Largest stored result; a longer answer is stored as an error result.
    pub max_result_bytes: u64,
    /// Prefix of every Redis key the deferred store writes.
    pub key_prefix: String,
}

/// Path health (`[health]`, docs/failover.md): the active probes of the direct
/// upstream path and the circuit breaker they feed.
#[derive(Debug, Clone)]
pub struct HealthChecks {
    /// Mean time between probes; each wait is jittered by ±20%.
    pub probe_interval: Duration,
    /// A probe not answered within this counts as a failure.
    pub probe_timeout: Duration,
    /// Transport failures in a row (probes and requests) that open the circuit.
    pub failure_threshold: u32,
    /// The "peer much faster" relay trigger: `None` when off, else the ratio and
    /// how long it must hold.
    pub relay_when_faster: Option<FasterPeer>,
}

/// When a peer region counts as much faster than the direct path.
#[derive(Debug, Clone, Copy)]
pub struct FasterPeer {
    /// The peer's cost times this must stay below the direct path's latency.
    pub ratio: f64,
    /// For this long, before requests move (and back).
    pub sustain: Duration,
}

/// The validated configuration a node runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub public_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
    pub upstream: Upstream,
    pub auth: Auth,
    pub log: Log,
    pub workers: Option<usize>,
    /// Membership and live config in etcd; `None` runs on the file config alone.
    pub cluster: Option<Cluster>,
    pub rate_limits: RateLimits,
    /// This node's region: names the deferred queue and ids; with etcd, its record.
    pub region: String,
    pub deferred: Deferred,
    /// The secret nodes and coordinators share (`cluster.cluster_secret_file` or
    /// `STRAIT_CLUSTER_SECRET`): the bearer token of `/stats`. `None`: `/stats` answers
    /// only on a loopback admin listener.
    pub cluster_secret: Option<Secret>,
    /// `cluster.peer_ca_file`: trust for peers' server certificates when relaying over
    /// TLS (`None`: the public web roots and `upstream.ca_file`).
    pub peer_ca_file: Option<PathBuf>,
    pub health: HealthChecks,
}

/// The key-handling mode a node runs in, derived from which keys are configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyMode {
    /// Clients present Strait keys; the node sends keys from its pool.
    Managed,
    /// Upstream keys but no client keys, explicitly allowed by `--allow-anonymous`.
    Anonymous,
    /// No upstream keys: the client's own Anthropic key goes upstream.
    Passthrough,
}

impl Config {
    /// How many event loops serve the public listener: `workers`, or one per core.
    pub fn event_loops(&self) -> usize {
        self.workers.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        })
    }

    pub fn key_mode(&self) -> KeyMode {
        match (
            self.upstream.keys.is_empty(),
            self.auth.client_keys.is_empty(),
        ) {
            (true, _) => KeyMode::Passthrough,
            (false, true) if self.auth.allow_anonymous => KeyMode::Anonymous,
            // Upstream keys, no client keys and no --allow-anonymous: only in a
            // cluster, whose client keys have not arrived yet. Nobody gets in.
            (false, _) => KeyMode::Managed,
        }
    }
}
