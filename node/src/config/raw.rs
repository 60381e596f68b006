//! The configuration file's shape: `Raw*` structs that refuse unknown fields, with
//! every default named in a `DEFAULT_*` constant, and the parsing of the TOML text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::Secret;
use crate::error::{Error, Result};

/// Default public listener: all interfaces, port 8080.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// Default admin listener (metrics, health): loopback only, port 9090.
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";
/// Default upstream: the Anthropic API.
pub const DEFAULT_UPSTREAM: &str = "https://api.anthropic.com";
/// Default cap on all request headers together (bytes).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default cap on a request body: 32 MiB, Anthropic's own limit for Messages requests.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
/// Default budget over all request bodies held in memory at once: 256 MiB, room for
/// eight bodies at the 32 MiB cap or thousands of ordinary ones, and a bound a node
/// on a small (1-2 GiB) machine can afford beside its connections.
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: u64 = 256 * 1024 * 1024;
/// Default time a client has to send its request headers (and finish TLS): slowloris guard.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default longest wait for the next byte of a request body (the first included):
/// three times the header read timeout, and longer than TCP's retransmission backoff
/// over a few lost segments (1 + 2 + 4 + 8 s), so a stall on a bad link survives it.
pub const DEFAULT_BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default floor on a client's upload rate, in bytes per second, measured over each
/// `body_read_timeout` of waiting on the client: 1 KiB/s (8 kbit/s) is below what
/// the slowest mobile data link still in use carries, and makes a trickle of a few
/// bytes every few seconds give up its connection within one window. 0 turns it off.
pub const DEFAULT_MIN_UPLOAD_RATE: u64 = 1024;
/// Default cap on concurrent client connections; further clients wait in the backlog.
pub const DEFAULT_MAX_CONNECTIONS: usize = 20_000;
/// Default time in-flight requests get to finish after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default upstream connect timeout (nginx field setup: 5 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default upstream send timeout: extra time a streamed upload gets, on top of the
/// read timeout, before the response must start.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(60);
/// Default upstream read timeout: time to response headers and between body chunks
/// of non-streaming responses.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default idle timeout between events of a streaming (SSE) response.
pub const DEFAULT_STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Default time an idle pooled upstream connection is kept.
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default idle upstream connections kept per host.
pub const DEFAULT_POOL_MAX_IDLE: usize = 64;
/// Default number of streams one upstream HTTP/2 connection carries before the node
/// opens another: 100, the floor RFC 9113 recommends servers allow, so it stays at or
/// under what the upstream advertises (past that, streams would wait in the node).
pub const DEFAULT_H2_MAX_STREAMS: usize = 100;
/// Default cap on how long a DNS answer is cached, whatever its TTL says.
pub const DEFAULT_DNS_TTL_CAP: Duration = Duration::from_secs(60);
/// Default number of upstream attempts per request (1 = no retry).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Default cooldown of an upstream key after a 429/529 without `retry-after`.
pub const DEFAULT_KEY_COOLDOWN: Duration = Duration::from_secs(5);
/// How long a billing (402) or spend-limit error rests every key of the
/// organisation: such errors do not clear by themselves within seconds.
pub const DEFAULT_ORG_REST: Duration = Duration::from_secs(3600);
/// Default limiter mode with Redis: nodes lease quota in chunks (no round trip per request).
pub const DEFAULT_LIMIT_MODE: &str = "leased";
/// Default number of nodes sharing each limit: the divisor of the safe share a node
/// falls back to while Redis is unreachable. Errs towards admitting too little.
pub const DEFAULT_EXPECTED_NODES: u32 = 3;
/// Default interval of the leased-mode background sync (returns surplus and refunds).
pub const DEFAULT_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Default fraction of its fair share (remaining / expected_nodes) a node leases at once.
pub const DEFAULT_LEASE_FRACTION: f64 = 0.5;
/// Default lifetime of a node's concurrency slots in Redis without a heartbeat: the
/// bound on how long a killed node's slots stay taken.
pub const DEFAULT_SLOT_TTL: Duration = Duration::from_secs(10);
/// Default timeout of one limiter round trip to Redis before the node degrades.
pub const DEFAULT_REDIS_OP_TIMEOUT: Duration = Duration::from_millis(250);
/// Default prefix of every limiter key in Redis.
pub const DEFAULT_REDIS_PREFIX: &str = "strait";
/// Default lease TTL of a node's registration in etcd; kept alive every TTL/3.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default directory for the node id and the last good cluster config.
pub const DEFAULT_STATE_DIR: &str = "strait-state";
/// Region of a node that names none (`--region`): the deferred queue and ids carry it.
pub const DEFAULT_REGION: &str = "default";
/// How long a deferred result (and an unfinished id) is kept before `GET` says 410.
pub const DEFAULT_DEFERRED_RESULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Deliveries of one deferred message before it is dead-lettered.
pub const DEFAULT_DEFERRED_DELIVERY_LIMIT: u32 = 20;
/// Deferred requests one node delivers at once (the consumer's prefetch).
pub const DEFAULT_DEFERRED_PREFETCH: u16 = 8;
/// Longest wait for RabbitMQ's publisher confirm before a 503 (not queued).
pub const DEFAULT_DEFERRED_CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// A consumer's claim on a deferred id, renewed while its request runs.
pub const DEFAULT_DEFERRED_CLAIM_LEASE: Duration = Duration::from_secs(30);
/// Largest stored deferred result.
pub const DEFAULT_DEFERRED_MAX_RESULT_BYTES: u64 = 32 * 1024 * 1024;
/// The embedded spool's directory, under the state directory.
pub const DEFAULT_SPOOL_SUBDIR: &str = "spool";
/// Default time between two active probes of the upstream path (`GET /v1/models`),
/// jittered by ±20% so a region's nodes do not probe in step.
pub const DEFAULT_PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// Default longest wait for a probe's answer before it counts as a failure.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Default transport failures in a row (probes and requests) that open the path's
/// circuit: two, so one lost packet does not move DNS, and a dead path is seen
/// within one probe interval (a failed probe is confirmed at once).
pub const DEFAULT_FAILURE_THRESHOLD: u32 = 2;
/// Default of the "peer much faster" relay trigger: off. A node relays only when its
/// direct path cannot be used unless the operator turns it on.
pub const DEFAULT_RELAY_WHEN_FASTER: bool = false;
/// Default factor by which a peer's path must beat the direct one for the "peer
/// much faster" trigger: 2, so a peer must take at most half our direct latency.
pub const DEFAULT_FASTER_RATIO: f64 = 2.0;
/// Default time the peer must stay that much faster before requests move (and the
/// direct path must stay no longer beaten that much before they move back): 30 s,
/// long enough that a few slow answers do not move traffic.
pub const DEFAULT_FASTER_FOR: Duration = Duration::from_secs(30);

/// The file's shape. Unknown fields are errors so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub listen: RawListen,
    pub tls: Option<RawTls>,
    pub limits: RawLimits,
    pub upstream: RawUpstream,
    pub auth: RawAuth,
    pub log: RawLog,
    pub runtime: RawRuntime,
    pub cluster: RawCluster,
    /// Tenants: groups of client keys sharing one set of limits.
    pub tenants: Vec<RawTenant>,
    /// Shared limiter state. Without a URL the limiter runs in process.
    pub redis: RawRedis,
    /// Deferred delivery (docs/deferred.md).
    pub deferred: RawDeferred,
    /// Path health: active probes and the circuit breaker (docs/failover.md).
    pub health: RawHealth,
}

/// `[health]`: how the node watches its direct upstream path.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawHealth {
    /// Default [`DEFAULT_PROBE_INTERVAL`] (2 s), jittered ±20%.
    #[serde(with = "humantime_serde_compat")]
    pub probe_interval: Duration,
    /// Default [`DEFAULT_PROBE_TIMEOUT`] (1 s); at most `probe_interval`.
    #[serde(with = "humantime_serde_compat")]
    pub probe_timeout: Duration,
    /// Default [`DEFAULT_FAILURE_THRESHOLD`] (2).
    pub failure_threshold: u32,
    /// Relay while a peer region's path has been much faster than the direct one
    /// (`faster_ratio`, for `faster_for`), not only when the direct path fails.
    /// Default [`DEFAULT_RELAY_WHEN_FASTER`] (false).
    pub relay_when_faster: bool,
    /// How many times faster (peer's path latency plus our round trip to it, against
    /// the direct path's) counts as much faster; above 1. Default
    /// [`DEFAULT_FASTER_RATIO`] (2).
    pub faster_ratio: f64,
    /// How long the peer must stay that much faster before requests relay, and not
    /// be before they go direct again. Default [`DEFAULT_FASTER_FOR`] (30 s).
    #[serde(with = "humantime_serde_compat")]
    pub faster_for: Duration,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            probe_interval: DEFAULT_PROBE_INTERVAL,
            probe_timeout: DEFAULT_PROBE_TIMEOUT,
            failure_threshold: DEFAULT_FAILURE_THRESHOLD,
            relay_when_faster: DEFAULT_RELAY_WHEN_FASTER,
            faster_ratio: DEFAULT_FASTER_RATIO,
            faster_for: DEFAULT_FASTER_FOR,
        }
    }
}

/// `[deferred]`: where deferred requests wait and their results live.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDeferred {
    /// RabbitMQ URL (`amqp://user:pass@host:5672/vhost`), or `--amqp` /
    /// `STRAIT_AMQP_URL`. Without it: the embedded spool in `spool_dir`.
    pub amqp_url: Option<String>,
    /// Redis URL for claims and results (run it with AOF and `noeviction`). Default:
    /// the limiter's first `redis.urls` entry. Required with `amqp_url`.
    pub redis: Option<String>,
    /// The embedded queue and results. Default `<cluster.state_dir>/spool`.
    pub spool_dir: Option<PathBuf>,
    /// Default [`DEFAULT_DEFERRED_RESULT_TTL`] (24 h).
    #[serde(with = "humantime_serde_compat")]
    pub result_ttl: Duration,
    /// Default [`DEFAULT_DEFERRED_DELIVERY_LIMIT`] (20).
    pub delivery_limit: u32,
    /// Default [`DEFAULT_DEFERRED_PREFETCH`] (8).
    pub prefetch: u16,
    /// Default [`DEFAULT_DEFERRED_CONFIRM_TIMEOUT`] (5 s).
    #[serde(with = "humantime_serde_compat")]
    pub confirm_timeout: Duration,
    /// Default [`DEFAULT_DEFERRED_CLAIM_LEASE`] (30 s).
    #[serde(with = "humantime_serde_compat")]
    pub claim_lease: Duration,
    /// Resend an id found sent without a result instead of ending it as
    /// `outcome_unknown`. Default false: it may run twice upstream.
    pub resend_unknown: bool,
    /// Default [`DEFAULT_DEFERRED_MAX_RESULT_BYTES`] (32 MiB).
    pub max_result_bytes: u64,
}

impl Default for RawDeferred {
    fn default() -> Self {
        RawDeferred {
            amqp_url: None,
            redis: None,
            spool_dir: None,
            result_ttl: DEFAULT_DEFERRED_RESULT_TTL,
            delivery_limit: DEFAULT_DEFERRED_DELIVERY_LIMIT,
            prefetch: DEFAULT_DEFERRED_PREFETCH,
            confirm_timeout: DEFAULT_DEFERRED_CONFIRM_TIMEOUT,
            claim_lease: DEFAULT_DEFERRED_CLAIM_LEASE,
            resend_unknown: false,
            max_result_bytes: DEFAULT_DEFERRED_MAX_RESULT_BYTES,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawListen {
    /// Public listener address. Default [`DEFAULT_LISTEN`].
    pub public: String,
    /// Admin listener (metrics, health). Default [`DEFAULT_ADMIN_LISTEN`].
    pub admin: String,
}

impl Default for RawListen {
    fn default() -> Self {
        RawListen {
            public: DEFAULT_LISTEN.into(),
            admin: DEFAULT_ADMIN_LISTEN.into(),
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain for the public listener.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Refuse TLS 1.2 clients. Default false.
    pub tls13_only: bool,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    /// Bytes of buffered request bodies (Messages, count_tokens, batches) held at once,
    /// over all connections; a body that does not fit is refused with 503 and
    /// `retry-after`. At least `max_body_bytes`. Default 256 MiB.
    pub max_inflight_body_bytes: u64,
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
    /// Longest wait for the next byte of a request body. Default 30s.
    #[serde(with = "humantime_serde_compat")]
    pub body_read_timeout: Duration,
    /// Bytes per second a client must send its body at, over each `body_read_timeout`
    /// of waiting; 0 turns it off. Default 1024.
    pub min_upload_rate: u64,
    pub max_connections: usize,
    #[serde(with = "humantime_serde_compat")]
    pub drain_timeout: Duration,
    /// Rate limits for every client key (fields a key sets override these). Default: none.
    pub default: RawLimitSpec,
}

/// Rate limits of a key or tenant; an absent field is unlimited.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLimitSpec {
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Input tokens per minute (reserved from an estimate, settled with real usage).
    pub itpm: Option<u64>,
    /// Output tokens per minute (`max_tokens` reserved, settled with real usage).
    pub otpm: Option<u64>,
    /// Requests in flight at once; a stream counts until it ends.
    pub concurrency: Option<u64>,
    /// Input plus output tokens per 24 hours.
    pub daily_tokens: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    /// Tenant name, referenced by `auth.client_keys[].tenant`; used in metrics and logs.
    pub name: String,
    /// Limits shared by all the tenant's keys together. Default: none.
    #[serde(default)]
    pub limits: RawLimitSpec,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRedis {
    /// `redis://host:port[/db]` (or `rediss://`). Empty (the default): in-process limiter.
    /// For Redis Cluster, a comma-separated list of seed nodes with `cluster = true`.
    pub url: String,
    /// Connect with the Redis Cluster protocol. Default false.
    pub cluster: bool,
    /// `leased` (default: nodes lease quota in chunks, no round trip per request) or
    /// `exact` (one atomic script per request).
    pub mode: String,
    /// Nodes sharing the limits: the safe-share divisor while Redis is down, and the
    /// lease sizing divisor. Default [`DEFAULT_EXPECTED_NODES`]. In a cluster the live
    /// node count from etcd replaces it once known.
    pub expected_nodes: u32,
    /// Leased mode: how often a node returns surplus quota and refunds. Default 100ms.
    #[serde(with = "humantime_serde_compat")]
    pub sync_interval: Duration,
    /// Leased mode: fraction of its fair share a node leases at once, in (0, 1]. Default 0.5.
    pub lease_fraction: f64,
    /// Concurrency slots of a node that stops heartbeating are freed after this. Default 10s.
    #[serde(with = "humantime_serde_compat")]
    pub slot_ttl: Duration,
    /// A Redis round trip slower than this counts as Redis being down. Default 250ms.
    #[serde(with = "humantime_serde_compat")]
    pub op_timeout: Duration,
    /// Prefix of every key the limiter writes. Default `strait`.
    pub key_prefix: String,
}

impl Default for RawRedis {
    fn default() -> Self {
        RawRedis {
            url: String::new(),
            cluster: false,
            mode: DEFAULT_LIMIT_MODE.into(),
            expected_nodes: DEFAULT_EXPECTED_NODES,
            sync_interval: DEFAULT_SYNC_INTERVAL,
            lease_fraction: DEFAULT_LEASE_FRACTION,
            slot_ttl: DEFAULT_SLOT_TTL,
            op_timeout: DEFAULT_REDIS_OP_TIMEOUT,
            key_prefix: DEFAULT_REDIS_PREFIX.into(),
        }
    }
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_inflight_body_bytes: DEFAULT_MAX_INFLIGHT_BODY_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_read_timeout: DEFAULT_BODY_READ_TIMEOUT,
            min_upload_rate: DEFAULT_MIN_UPLOAD_RATE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            default: RawLimitSpec::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawUpstream {
    pub base_url: String,
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub send_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub read_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub stream_idle_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub h2_max_streams_per_connection: usize,
    #[serde(with = "humantime_serde_compat")]
    pub dns_ttl_cap: Duration,
    pub max_attempts: u32,
    /// How long a 429 without `retry-after` cools its scope of the organisation.
    #[serde(with = "humantime_serde_compat")]
    pub key_cooldown: Duration,
    /// How long a billing (402) or spend-limit error rests the whole organisation.
    #[serde(with = "humantime_serde_compat")]
    pub org_rest: Duration,
    /// Model-id prefixes and the model class each belongs to, added to the defaults
    /// (an entry for a default prefix replaces it). Anthropic limits each class on
    /// its own, so a 429 on one class cools only that class.
    pub model_classes: std::collections::BTreeMap<String, String>,
    /// File with one upstream key per line (never put keys in this file itself). A
    /// line may name the key's organisation and label before it:
    /// `org=acme label=prod-1 sk-ant-...`.
    pub keys_file: Option<PathBuf>,
    /// Extra PEM CA certificates to trust upstream (besides the public web roots).
    pub ca_file: Option<PathBuf>,
    /// Relay `/v1/` paths that are not routes of the Anthropic API as the node knows
    /// it (default false: 404). Path hygiene and `/v1/strait/` hold either way.
    pub pass_unknown_routes: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        RawUpstream {
            base_url: DEFAULT_UPSTREAM.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            read_timeout: DEFAULT_READ_TIMEOUT,
            stream_idle_timeout: DEFAULT_STREAM_IDLE_TIMEOUT,
            pool_idle_timeout: DEFAULT_POOL_IDLE_TIMEOUT,
            pool_max_idle_per_host: DEFAULT_POOL_MAX_IDLE,
            h2_max_streams_per_connection: DEFAULT_H2_MAX_STREAMS,
            dns_ttl_cap: DEFAULT_DNS_TTL_CAP,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            key_cooldown: DEFAULT_KEY_COOLDOWN,
            org_rest: DEFAULT_ORG_REST,
            model_classes: Default::default(),
            keys_file: None,
            ca_file: None,
            pass_unknown_routes: false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawAuth {
    /// Client keys, stored as SHA-256 hashes only.
    pub client_keys: Vec<RawClientKey>,
    /// File with one plain client key per line (hashed at load).
    pub client_keys_file: Option<PathBuf>,
    /// Serve without client keys even though upstream keys are configured.
    pub allow_anonymous: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientKey {
    /// A name for logs and metrics (never the key).
    pub name: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The tenant (a `[[tenants]]` name) whose shared limits also apply. Default: none.
    #[serde(default)]
    pub tenant: Option<String>,
    /// This key's limits; fields left out fall back to `[limits.default]`.
    #[serde(default)]
    pub limits: RawLimitSpec,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawLog {
    /// `text` or `json`. Default `text`.
    pub format: String,
    /// A tracing filter, e.g. `info` or `strait_node=debug`. Default `info`.
    pub level: String,
    /// One line per request under target `strait::access`. Default true.
    pub access_log: bool,
    /// Where access lines go: a file (appended to, created if missing). Default: none,
    /// stdout with the other logs.
    pub access_log_file: Option<String>,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".into(),
            level: "info".into(),
            access_log: true,
            access_log_file: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRuntime {
    /// Event loops serving the public listener, one thread each (`accept::loops`); 0
    /// or absent means one per core.
    pub workers: Option<usize>,
}

/// `[cluster]`: membership and live config in etcd. Without `etcd` endpoints the
/// node runs alone on its file config (the embedded default) and the rest is ignored.
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawCluster {
    /// etcd client URLs, e.g. `["http://10.0.0.5:2379"]`. Default empty (no cluster).
    pub etcd: Vec<String>,
    /// This node's region (lowercase letters, digits, `-`, `_`). Required with `etcd`.
    pub region: String,
    /// Node id; default: read from `<state_dir>/node-id`, or made from the host
    /// name and a random suffix and written there.
    pub node_id: Option<String>,
    /// Registration lease TTL. Default [`DEFAULT_LEASE_TTL`] (10 s).
    #[serde(with = "humantime_serde_compat")]
    pub lease_ttl: Duration,
    /// Directory for the node id and the last good config snapshot. Default
    /// [`DEFAULT_STATE_DIR`] (relative to the working directory).
    pub state_dir: PathBuf,
    /// File holding the key-encryption key (64 hex characters) that opens the
    /// upstream keys stored in etcd. Or the `STRAIT_KEK` environment variable.
    pub kek_file: Option<PathBuf>,
    /// Public address written into the node record; default the bound address.
    pub advertise_public: Option<String>,
    /// Admin address written into the node record; default the bound address.
    pub advertise_admin: Option<String>,
    /// The KEK from the environment (`STRAIT_KEK`), set by `cli`; never in the file.
    #[serde(skip)]
    pub kek: Option<Secret>,
    /// File holding the cluster secret (at least 16 characters) shared by nodes and
    /// coordinators: it guards the admin listener's `/stats`. Or `STRAIT_CLUSTER_SECRET`.
    /// Default: none (then `/stats` answers only on a loopback admin listener).
    pub cluster_secret_file: Option<PathBuf>,
    /// PEM CA certificate(s) that sign the cluster's node certificates. Relays to a
    /// peer that listens with TLS verify its certificate against it (without it: the
    /// public web roots and `upstream.ca_file`); with `[tls]` the public listener also
    /// asks for client certificates signed by it and refuses relayed requests that
    /// come without one (mTLS). Default: none.
    pub peer_ca_file: Option<PathBuf>,
    /// The cluster secret from the environment (`STRAIT_CLUSTER_SECRET`), set by `cli`.
    #[serde(skip)]
    pub cluster_secret: Option<Secret>,
}

impl Default for RawCluster {
    fn default() -> Self {
        RawCluster {
            etcd: Vec::new(),
            region: String::new(),
            node_id: None,
            lease_ttl: DEFAULT_LEASE_TTL,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            kek_file: None,
            advertise_public: None,
            advertise_admin: None,
            kek: None,
            cluster_secret_file: None,
            peer_ca_file: None,
            cluster_secret: None,
        }
    }
}

/// Durations written as humantime strings ("5s", "300ms", "2m").
mod humantime_serde_compat {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?}: {e}")))
    }
}

impl RawConfig {
    /// Parses a TOML document; errors name the line and field.
    pub fn from_toml(text: &str) -> Result<RawConfig> {
        toml::from_str(text).map_err(|e| Error::config(format!("config: {e}")))
    }

    pub fn from_file(path: &Path) -> Result<RawConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read config {}: {e}", path.display())))?;
        Self::from_toml(&text)
            .map_err(|e| Error::config(format!("{}: {}", path.display(), e.message)))
    }
}
