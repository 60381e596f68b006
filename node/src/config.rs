//! Typed node configuration: the raw TOML shape with named defaults, and the
//! validated runtime form every other module reads.
//!
//! The file is optional: every field has a default, and `cli` overlays flags and the
//! `STRAIT_*` environment variables on top. `deploy/node.example.toml` documents every
//! option and is parsed by a test so it cannot drift from this file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
pub use crate::secret::{hash_key, hash_key_bytes, Secret};

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
/// Default time a client has to send its request headers (and finish TLS): slowloris guard.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
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
    #[serde(with = "humantime_serde_compat")]
    pub header_read_timeout: Duration,
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

impl RawLimitSpec {
    fn to_spec(&self) -> crate::limit_spec::LimitSpec {
        crate::limit_spec::LimitSpec {
            rpm: self.rpm,
            itpm: self.itpm,
            otpm: self.otpm,
            concurrency: self.concurrency,
            daily_tokens: self.daily_tokens,
        }
    }
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
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
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
    #[serde(with = "humantime_serde_compat")]
    pub key_cooldown: Duration,
    /// File with one upstream key per line (never put keys in this file itself).
    pub keys_file: Option<PathBuf>,
    /// Extra PEM CA certificates to trust upstream (besides the public web roots).
    pub ca_file: Option<PathBuf>,
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
            keys_file: None,
            ca_file: None,
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
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            format: "text".into(),
            level: "info".into(),
            access_log: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawRuntime {
    /// Runtime worker threads; 0 or absent means one per core.
    pub workers: Option<usize>,
}

/// Default lease TTL of a node's registration in etcd; kept alive every TTL/3.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// Default directory for the node id and the last good cluster config.
pub const DEFAULT_STATE_DIR: &str = "strait-state";

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

// ---------------------------------------------------------------------------------
// Validated form.

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
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub header_read_timeout: Duration,
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
    /// Keys the node sends upstream. Empty means passthrough mode.
    pub keys: Vec<Secret>,
    pub ca_file: Option<PathBuf>,
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

    /// Checks every field and builds the runtime form. `extra_upstream_keys` and
    /// `extra_client_keys` come from flags or the environment (plain keys; client keys
    /// are hashed here and the plain text dropped).
    pub fn validate(
        self,
        extra_upstream_keys: Vec<Secret>,
        extra_client_keys: Vec<Secret>,
    ) -> Result<Config> {
        let public_listen = parse_addr("listen.public", &self.listen.public)?;
        let admin_listen = parse_addr("listen.admin", &self.listen.admin)?;
        if public_listen == admin_listen && public_listen.port() != 0 {
            return Err(Error::config("listen.admin must differ from listen.public"));
        }

        let tls = match self.tls {
            None => None,
            Some(t) => {
                for (field, p) in [("tls.cert", &t.cert), ("tls.key", &t.key)] {
                    if p.as_os_str().is_empty() {
                        return Err(Error::config(format!(
                            "{field} is required when [tls] is set"
                        )));
                    }
                    if !p.exists() {
                        return Err(Error::config(format!(
                            "{field}: no such file {}",
                            p.display()
                        )));
                    }
                }
                Some(TlsConfig {
                    cert: t.cert,
                    key: t.key,
                    tls13_only: t.tls13_only,
                })
            }
        };

        let l = self.limits;
        if l.max_header_bytes < 8 * 1024 {
            return Err(Error::config(
                "limits.max_header_bytes must be at least 8192",
            ));
        }
        if l.max_body_bytes == 0 {
            return Err(Error::config("limits.max_body_bytes must be positive"));
        }
        if l.max_connections == 0 {
            return Err(Error::config("limits.max_connections must be positive"));
        }
        nonzero("limits.header_read_timeout", l.header_read_timeout)?;

        let u = self.upstream;
        let target = parse_upstream(&u.base_url)?;
        for (field, d) in [
            ("upstream.connect_timeout", u.connect_timeout),
            ("upstream.send_timeout", u.send_timeout),
            ("upstream.read_timeout", u.read_timeout),
            ("upstream.stream_idle_timeout", u.stream_idle_timeout),
        ] {
            nonzero(field, d)?;
        }
        if u.h2_max_streams_per_connection == 0 {
            return Err(Error::config(
                "upstream.h2_max_streams_per_connection must be positive",
            ));
        }
        if u.max_attempts == 0 || u.max_attempts > 10 {
            return Err(Error::config(
                "upstream.max_attempts must be between 1 and 10",
            ));
        }
        if let Some(ca) = &u.ca_file {
            if !ca.exists() {
                return Err(Error::config(format!(
                    "upstream.ca_file: no such file {}",
                    ca.display()
                )));
            }
        }
        let mut keys = extra_upstream_keys;
        if let Some(path) = &u.keys_file {
            keys.extend(read_key_file("upstream.keys_file", path)?);
        }
        dedup_secrets(&mut keys);
        for k in &keys {
            if http::HeaderValue::from_str(k.expose()).is_err() {
                return Err(Error::config(
                    "an upstream key contains characters not allowed in a header",
                ));
            }
        }

        let mut client_keys = Vec::new();
        for (i, ck) in self.auth.client_keys.into_iter().enumerate() {
            let bytes = hex::decode(ck.sha256.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .ok_or_else(|| {
                    Error::config(format!(
                        "auth.client_keys[{i}].sha256 must be 64 hex characters"
                    ))
                })?;
            if ck.name.is_empty() {
                return Err(Error::config(format!(
                    "auth.client_keys[{i}].name must not be empty"
                )));
            }
            let mut sha256 = [0u8; 32];
            sha256.copy_from_slice(&bytes);
            check_name(&format!("auth.client_keys[{i}].name"), &ck.name)?;
            if let Some(t) = &ck.tenant {
                if !self.tenants.iter().any(|x| &x.name == t) {
                    return Err(Error::config(format!(
                        "auth.client_keys[{i}].tenant: no [[tenants]] entry named {t:?}"
                    )));
                }
            }
            client_keys.push(ClientKey {
                name: ck.name,
                sha256,
                tenant: ck.tenant,
                limits: ck.limits.to_spec(),
            });
        }
        let mut plain = extra_client_keys;
        if let Some(path) = &self.auth.client_keys_file {
            plain.extend(read_key_file("auth.client_keys_file", path)?);
        }
        dedup_secrets(&mut plain);
        for (i, k) in plain.iter().enumerate() {
            client_keys.push(ClientKey {
                name: format!("key-{}", i + 1),
                sha256: hash_key(k.expose()),
                tenant: None,
                limits: Default::default(),
            });
        }

        if keys.is_empty() && !client_keys.is_empty() {
            return Err(Error::config(
                "client keys are configured but no upstream keys: a client's Strait key would be \
                 forwarded to Anthropic. Configure upstream keys (STRAIT_UPSTREAM_KEYS or \
                 upstream.keys_file), or remove the client keys for passthrough mode",
            ));
        }
        // In a cluster, client keys may come from etcd: until they do, a node with
        // upstream keys answers 401 to everyone (see `Config::key_mode`).
        let cluster = validate_cluster(self.cluster)?;
        if !keys.is_empty()
            && client_keys.is_empty()
            && !self.auth.allow_anonymous
            && cluster.is_none()
        {
            return Err(Error::config(
                "upstream keys are configured but no client keys: anyone reaching this node \
                 could spend them. Configure client keys (STRAIT_CLIENT_KEYS or \
                 auth.client_keys), or pass --allow-anonymous if that is intended",
            ));
        }

        let format = match self.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(Error::config(format!(
                    "log.format must be text or json, not {other:?}"
                )))
            }
        };
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(Error::config(format!(
                "log.level {:?} is not a valid filter",
                self.log.level
            )));
        }

        let rate_limits = validate_rate_limits(&l.default, &self.tenants, &self.redis)?;

        let workers = match self.runtime.workers {
            Some(0) | None => None,
            Some(n) if n > 1024 => {
                return Err(Error::config("runtime.workers must be at most 1024"))
            }
            Some(n) => Some(n),
        };

        Ok(Config {
            public_listen,
            admin_listen,
            tls,
            limits: Limits {
                max_header_bytes: l.max_header_bytes,
                max_body_bytes: l.max_body_bytes,
                header_read_timeout: l.header_read_timeout,
                max_connections: l.max_connections,
                drain_timeout: l.drain_timeout,
            },
            upstream: Upstream {
                target,
                connect_timeout: u.connect_timeout,
                send_timeout: u.send_timeout,
                read_timeout: u.read_timeout,
                stream_idle_timeout: u.stream_idle_timeout,
                pool_idle_timeout: u.pool_idle_timeout,
                pool_max_idle_per_host: u.pool_max_idle_per_host,
                h2_max_streams_per_connection: u.h2_max_streams_per_connection,
                dns_ttl_cap: u.dns_ttl_cap,
                max_attempts: u.max_attempts,
                key_cooldown: u.key_cooldown,
                keys,
                ca_file: u.ca_file,
            },
            auth: Auth {
                client_keys,
                allow_anonymous: self.auth.allow_anonymous,
            },
            log: Log {
                format,
                level: self.log.level,
                access_log: self.log.access_log,
            },
            workers,
            cluster,
            rate_limits,
        })
    }
}

fn validate_cluster(c: RawCluster) -> Result<Option<Cluster>> {
    use crate::schema::valid_name;
    use crate::secret::Kek;
    if c.etcd.is_empty() {
        return Ok(None);
    }
    for e in &c.etcd {
        let uri: http::Uri = e.parse().map_err(|_| {
            Error::config(format!(
                "cluster.etcd: {e:?} is not a URL like http://127.0.0.1:2379"
            ))
        })?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(Error::config(format!(
                "cluster.etcd: {e:?} must be an http:// URL with a host and port"
            )));
        }
    }
    if !valid_name(&c.region) {
        return Err(Error::config(
            "cluster.region is required with cluster.etcd: 1 to 64 lowercase letters, digits, '-' or '_'",
        ));
    }
    if let Some(id) = &c.node_id {
        if !valid_name(id) {
            return Err(Error::config(
                "cluster.node_id: 1 to 64 lowercase letters, digits, '-' or '_'",
            ));
        }
    }
    if c.lease_ttl < Duration::from_secs(2) || c.lease_ttl > Duration::from_secs(300) {
        return Err(Error::config(
            "cluster.lease_ttl must be between 2s and 300s",
        ));
    }
    if c.state_dir.as_os_str().is_empty() {
        return Err(Error::config("cluster.state_dir must not be empty"));
    }
    let kek = match (&c.kek, &c.kek_file) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "the KEK is given twice: set either STRAIT_KEK or cluster.kek_file",
            ))
        }
        (Some(k), None) => {
            Some(Kek::parse(k.expose()).map_err(|e| Error::config(format!("STRAIT_KEK: {e}")))?)
        }
        (None, Some(path)) => Some(
            Kek::from_file(path).map_err(|e| Error::config(format!("cluster.kek_file: {e}")))?,
        ),
        (None, None) => None,
    };
    for (field, v) in [
        ("cluster.advertise_public", &c.advertise_public),
        ("cluster.advertise_admin", &c.advertise_admin),
    ] {
        if v.as_deref()
            .is_some_and(|s| s.trim().is_empty() || s.contains(char::is_whitespace))
        {
            return Err(Error::config(format!("{field} must be host:port")));
        }
    }
    Ok(Some(Cluster {
        etcd: c.etcd,
        region: c.region,
        node_id: c.node_id,
        lease_ttl: c.lease_ttl,
        state_dir: c.state_dir,
        kek,
        advertise_public: c.advertise_public,
        advertise_admin: c.advertise_admin,
    }))
}

/// Names become Redis hash tags and metric labels: braces would break the tags.
fn check_name(field: &str, name: &str) -> Result<()> {
    if name.contains(['{', '}']) || name.chars().any(char::is_control) {
        return Err(Error::config(format!(
            "{field}: {name:?} must not contain braces or control characters"
        )));
    }
    Ok(())
}

fn validate_rate_limits(
    default: &RawLimitSpec,
    tenants: &[RawTenant],
    redis: &RawRedis,
) -> Result<RateLimits> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, t) in tenants.iter().enumerate() {
        if t.name.is_empty() {
            return Err(Error::config(format!(
                "tenants[{i}].name must not be empty"
            )));
        }
        check_name(&format!("tenants[{i}].name"), &t.name)?;
        if !seen.insert(t.name.as_str()) {
            return Err(Error::config(format!(
                "tenants[{i}].name {:?} appears twice",
                t.name
            )));
        }
        out.push(Tenant {
            name: t.name.clone(),
            limits: t.limits.to_spec(),
        });
    }
    let redis = if redis.url.trim().is_empty() {
        None
    } else {
        let urls: Vec<String> = redis
            .url
            .split(',')
            .map(|u| u.trim().to_string())
            .filter(|u| !u.is_empty())
            .collect();
        for u in &urls {
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return Err(Error::config(
                    "redis.url must start with redis:// or rediss://",
                ));
            }
        }
        if urls.len() > 1 && !redis.cluster {
            return Err(Error::config(
                "redis.url lists several servers: set redis.cluster = true for Redis Cluster",
            ));
        }
        let mode = match redis.mode.as_str() {
            "leased" => LimitMode::Leased,
            "exact" => LimitMode::Exact,
            other => {
                return Err(Error::config(format!(
                    "redis.mode must be leased or exact, not {other:?}"
                )))
            }
        };
        if redis.expected_nodes == 0 || redis.expected_nodes > 10_000 {
            return Err(Error::config(
                "redis.expected_nodes must be between 1 and 10000",
            ));
        }
        if !(redis.lease_fraction > 0.0 && redis.lease_fraction <= 1.0) {
            return Err(Error::config("redis.lease_fraction must be in (0, 1]"));
        }
        nonzero("redis.sync_interval", redis.sync_interval)?;
        nonzero("redis.op_timeout", redis.op_timeout)?;
        if redis.slot_ttl < Duration::from_secs(1) {
            return Err(Error::config("redis.slot_ttl must be at least 1s"));
        }
        if redis.key_prefix.is_empty() || redis.key_prefix.contains(['{', '}']) {
            return Err(Error::config(
                "redis.key_prefix must be non-empty and without braces",
            ));
        }
        Some(RedisSettings {
            urls,
            cluster: redis.cluster,
            mode,
            expected_nodes: redis.expected_nodes,
            sync_interval: redis.sync_interval,
            lease_fraction: redis.lease_fraction,
            slot_ttl: redis.slot_ttl,
            op_timeout: redis.op_timeout,
            key_prefix: redis.key_prefix.clone(),
        })
    };
    Ok(RateLimits {
        default: default.to_spec(),
        tenants: out,
        redis,
    })
}

fn parse_addr(field: &str, s: &str) -> Result<SocketAddr> {
    s.parse().map_err(|_| {
        Error::config(format!(
            "{field}: {s:?} is not an address like 127.0.0.1:8080"
        ))
    })
}

fn nonzero(field: &str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::config(format!("{field} must be greater than zero")));
    }
    Ok(())
}

fn parse_upstream(s: &str) -> Result<UpstreamTarget> {
    let uri: http::Uri = s
        .parse()
        .map_err(|_| Error::config(format!("upstream.base_url: {s:?} is not a URL")))?;
    let scheme = uri.scheme().cloned().ok_or_else(|| {
        Error::config(format!(
            "upstream.base_url: {s:?} needs a scheme (https:// or http://)"
        ))
    })?;
    if scheme != http::uri::Scheme::HTTPS && scheme != http::uri::Scheme::HTTP {
        return Err(Error::config(
            "upstream.base_url: scheme must be http or https",
        ));
    }
    let authority = uri
        .authority()
        .cloned()
        .ok_or_else(|| Error::config(format!("upstream.base_url: {s:?} has no host")))?;
    if uri.query().is_some() {
        return Err(Error::config("upstream.base_url must not have a query"));
    }
    let path_prefix = uri.path().trim_end_matches('/').to_string();
    Ok(UpstreamTarget {
        scheme,
        authority,
        path_prefix,
    })
}

fn read_key_file(field: &str, path: &Path) -> Result<Vec<Secret>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("{field}: cannot read {}: {e}", path.display())))?;
    Ok(split_keys(&text))
}

/// Splits a comma- or newline-separated key list, ignoring blanks and `#` comments.
pub fn split_keys(text: &str) -> Vec<Secret> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty() && !s.starts_with('#'))
        .map(Secret::new)
        .collect()
}

fn dedup_secrets(v: &mut Vec<Secret>) {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.expose().to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<Secret> {
        v.iter().map(|s| Secret::new(*s)).collect()
    }

    #[test]
    fn defaults_validate_in_passthrough_mode() {
        let c = RawConfig::default().validate(vec![], vec![]).unwrap();
        assert_eq!(c.key_mode(), KeyMode::Passthrough);
        assert_eq!(c.upstream.target.authority.as_str(), "api.anthropic.com");
        assert_eq!(c.limits.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn upstream_keys_without_client_keys_is_refused() {
        let e = RawConfig::default()
            .validate(keys(&["sk-up"]), vec![])
            .unwrap_err();
        assert!(e.message.contains("--allow-anonymous"), "{e}");
        let mut raw = RawConfig::default();
        raw.auth.allow_anonymous = true;
        assert_eq!(
            raw.validate(keys(&["sk-up"]), vec![]).unwrap().key_mode(),
            KeyMode::Anonymous
        );
    }

    #[test]
    fn client_keys_are_hashed_and_never_kept_plain() {
        let c = RawConfig::default()
            .validate(keys(&["sk-up"]), keys(&["client-secret"]))
            .unwrap();
        assert_eq!(c.key_mode(), KeyMode::Managed);
        assert_eq!(c.auth.client_keys[0].sha256, hash_key("client-secret"));
        assert!(!format!("{c:?}").contains("client-secret"));
        assert!(!format!("{c:?}").contains("sk-up"));
    }

    /// Why `toml` parses but does not validate.
    fn refusal(toml: &str) -> std::borrow::Cow<'static, str> {
        RawConfig::from_toml(toml)
            .unwrap()
            .validate(vec![], vec![])
            .unwrap_err()
            .message
    }

    #[test]
    fn bad_values_are_named() {
        assert!(refusal("[upstream]\nbase_url = \"ftp://x\"\n").contains("upstream.base_url"));
        let e = RawConfig::from_toml("[upstream]\nread_timout = \"5s\"\n").unwrap_err();
        assert!(e.message.contains("read_timout"), "{e}");
        let e = RawConfig::from_toml("[limits]\nheader_read_timeout = \"soon\"\n").unwrap_err();
        assert!(e.message.contains("invalid duration"), "{e}");
        assert!(refusal("[upstream]\nh2_max_streams_per_connection = 0\n")
            .contains("upstream.h2_max_streams_per_connection"));
    }

    #[test]
    fn cluster_section_is_checked() {
        let c = RawConfig::from_toml("[cluster]\nregion = \"eu\"\n")
            .unwrap()
            .validate(vec![], vec![])
            .unwrap();
        assert!(c.cluster.is_none(), "no etcd: no cluster");
        let raw = RawConfig::from_toml("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\n").unwrap();
        assert!(raw
            .validate(vec![], vec![])
            .unwrap_err()
            .message
            .contains("cluster.region"));
        let toml = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nregion = \"eu-1\"\n";
        let raw = RawConfig::from_toml(&format!("{toml}lease_ttl = \"1s\"\n")).unwrap();
        assert!(raw
            .validate(vec![], vec![])
            .unwrap_err()
            .message
            .contains("lease_ttl"));
        let mut raw = RawConfig::from_toml(toml).unwrap();
        raw.cluster.kek = Some(Secret::new("ab".repeat(32)));
        let c = raw.validate(vec![], vec![]).unwrap().cluster.unwrap();
        assert_eq!(c.lease_ttl, DEFAULT_LEASE_TTL);
        assert!(c.kek.is_some());
        assert!(!format!("{c:?}").contains("abab"), "the KEK never prints");
    }

    #[test]
    fn a_cluster_node_with_upstream_keys_waits_for_client_keys_without_opening_up() {
        let toml = "[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nregion = \"eu\"\n";
        let c = RawConfig::from_toml(toml)
            .unwrap()
            .validate(keys(&["sk-up"]), vec![])
            .unwrap();
        assert_eq!(
            c.key_mode(),
            KeyMode::Managed,
            "401 for everyone until client keys arrive from etcd"
        );
        let e = RawConfig::from_toml(toml)
            .unwrap()
            .validate(vec![], keys(&["client"]))
            .unwrap_err();
        assert!(e.message.contains("no upstream keys"), "{e}");
    }

    #[test]
    fn rate_limit_settings_are_validated() {
        let raw =
            RawConfig::from_toml("[redis]\nurl = \"redis://127.0.0.1:6379\"\nmode = \"exact\"\n")
                .unwrap();
        let c = raw.validate(vec![], vec![]).unwrap();
        let r = c.rate_limits.redis.unwrap();
        assert_eq!(
            (r.mode, r.expected_nodes, r.slot_ttl),
            (LimitMode::Exact, DEFAULT_EXPECTED_NODES, DEFAULT_SLOT_TTL)
        );
        for (toml, field) in [
            ("[redis]\nurl = \"http://x\"\n", "redis.url"),
            (
                "[redis]\nurl = \"redis://a\"\nmode = \"fast\"\n",
                "redis.mode",
            ),
            (
                "[redis]\nurl = \"redis://a\"\nexpected_nodes = 0\n",
                "redis.expected_nodes",
            ),
            (
                "[redis]\nurl = \"redis://a\"\nlease_fraction = 1.5\n",
                "redis.lease_fraction",
            ),
            ("[redis]\nurl = \"redis://a,redis://b\"\n", "redis.cluster"),
            ("[[tenants]]\nname = \"a{b}\"\n", "braces"),
        ] {
            let e = RawConfig::from_toml(toml)
                .unwrap()
                .validate(vec![], vec![])
                .unwrap_err();
            assert!(e.message.contains(field), "{toml}: {e}");
        }
        let e = RawConfig::from_toml("[limits.default]\nrps = 1\n").unwrap_err();
        assert!(e.message.contains("rps"), "{e}");
    }

    #[test]
    fn a_key_tenant_must_exist() {
        let toml = "[[auth.client_keys]]\nname = \"a\"\nsha256 = \"5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8\"\ntenant = \"nope\"\n";
        let e = RawConfig::from_toml(toml)
            .unwrap()
            .validate(vec![Secret::new("sk")], vec![])
            .unwrap_err();
        assert!(e.message.contains("tenant"), "{e}");
    }

    #[test]
    fn key_lists_split_on_commas_and_lines() {
        let k = split_keys("a, b\n# comment\nc,,");
        assert_eq!(
            k.iter().map(Secret::expose).collect::<Vec<_>>(),
            ["a", "b", "c"]
        );
    }
}
