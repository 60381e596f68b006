//! Command-line flags and environment variables, overlaid on the config file.
//! Flags win over the file; `STRAIT_UPSTREAM_KEYS` / `STRAIT_CLIENT_KEYS` add keys.

use std::path::PathBuf;

use clap::Parser;

use crate::config::{split_keys, Config, RawConfig, RawTls, Secret};
use crate::error::Result;

/// Strait gateway node: a multi-region gateway for the Anthropic Claude API.
///
/// Quick start (passthrough: clients use their own Anthropic keys):
///   strait-node --listen 0.0.0.0:8080
///
/// Managed keys (clients use Strait keys; the node holds the Anthropic keys):
///   STRAIT_UPSTREAM_KEYS=sk-ant-... STRAIT_CLIENT_KEYS=team-a-secret strait-node
#[derive(Debug, Parser)]
#[command(name = "strait-node", version, about, long_about)]
pub struct Cli {
    /// TOML config file (see deploy/node.example.toml). Optional.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Validate the configuration, print a summary, and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,

    /// Public listener address [default: 0.0.0.0:8080].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,

    /// Admin listener for /metrics, /livez, /readyz [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,

    /// Upstream base URL [default: https://api.anthropic.com].
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,

    /// Event loops serving the public listener, one thread each [default: one per core].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,

    /// Serve with upstream keys but no client keys (anyone reaching the node may use it).
    #[arg(long)]
    pub allow_anonymous: bool,

    /// PEM certificate chain: serve HTTPS (HTTP/2 and HTTP/1.1 by ALPN) on the public listener.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Accept TLS 1.3 only.
    #[arg(long)]
    pub tls13_only: bool,

    /// Log format: text or json.
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,

    /// Log filter, e.g. info or strait_node=debug.
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Do not write one access-log line per request.
    #[arg(long)]
    pub no_access_log: bool,

    /// Append access-log lines to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    pub access_log_file: Option<String>,

    /// Upstream Anthropic keys, comma-separated. Prefer the environment variable.
    #[arg(
        long,
        env = "STRAIT_UPSTREAM_KEYS",
        hide_env_values = true,
        value_name = "KEYS"
    )]
    pub upstream_keys: Option<String>,

    /// Rate limits for every client key, e.g. 'rpm=60,itpm=40000,otpm=8000,concurrency=4'
    /// (also daily_tokens=N). Overrides the same fields of [limits.default].
    #[arg(long, value_name = "LIMITS")]
    pub default_limits: Option<String>,

    /// Redis URL for limits shared by every node (redis://host:port); a comma-separated
    /// list of seeds means Redis Cluster. Without it, limits are per node, in process.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// How nodes share limits through Redis: leased (default; no round trip per request)
    /// or exact (one atomic Redis script per request).
    #[arg(long, value_name = "MODE")]
    pub limit_mode: Option<String>,

    /// Nodes sharing the limits (the divisor of each node's safe share while Redis is
    /// down) [default: 3].
    #[arg(long, value_name = "N")]
    pub expected_nodes: Option<u32>,

    /// Client (Strait) keys, comma-separated; stored only as hashes.
    #[arg(
        long,
        env = "STRAIT_CLIENT_KEYS",
        hide_env_values = true,
        value_name = "KEYS"
    )]
    pub client_keys: Option<String>,

    /// etcd endpoints, comma-separated: join the cluster (membership, live config).
    #[arg(long, value_name = "URL[,URL...]")]
    pub etcd: Option<String>,

    /// This node's region (required with --etcd); names the deferred queue and ids
    /// [default: default].
    #[arg(long, value_name = "NAME")]
    pub region: Option<String>,

    /// RabbitMQ URL for deferred delivery (a quorum queue per region) [default: the
    /// embedded spool under the state directory]. The password is never logged.
    #[arg(
        long,
        env = "STRAIT_AMQP_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub amqp: Option<String>,

    /// Node id [default: kept in the state directory, made from the host name].
    #[arg(long, value_name = "ID")]
    pub node_id: Option<String>,

    /// Directory for the node id and the last good cluster config [default: ./strait-state].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// File with the key-encryption key for upstream keys stored in etcd.
    /// Or the STRAIT_KEK environment variable.
    #[arg(long, value_name = "FILE")]
    pub kek_file: Option<PathBuf>,

    /// File with the cluster secret nodes and coordinators share (guards /stats on the
    /// admin listener). Or the STRAIT_CLUSTER_SECRET environment variable.
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
}

impl Cli {
    /// Reads the file (if any), applies flags over it, and validates the result.
    pub fn into_config(self) -> Result<Config> {
        let mut raw = match &self.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        if let Some(v) = self.listen {
            raw.listen.public = v;
        }
        if let Some(v) = self.admin_listen {
            raw.listen.admin = v;
        }
        if let Some(v) = self.upstream {
            raw.upstream.base_url = v;
        }
        if let Some(v) = self.workers {
            raw.runtime.workers = Some(v);
        }
        if self.allow_anonymous {
            raw.auth.allow_anonymous = true;
        }
        if let (Some(cert), Some(key)) = (self.tls_cert, self.tls_key) {
            let tls13_only = raw.tls.as_ref().is_some_and(|t| t.tls13_only);
            raw.tls = Some(RawTls {
                cert,
                key,
                tls13_only,
            });
        }
        if self.tls13_only {
            if let Some(t) = raw.tls.as_mut() {
                t.tls13_only = true;
            }
        }
        if let Some(v) = self.log_format {
            raw.log.format = v;
        }
        if let Some(v) = self.log_level {
            raw.log.level = v;
        }
        if self.no_access_log {
            raw.log.access_log = false;
        }
        if let Some(v) = self.access_log_file {
            raw.log.access_log_file = Some(v);
        }
        if let Some(v) = self.etcd {
            raw.cluster.etcd = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect();
        }
        if let Some(v) = self.region {
            raw.cluster.region = v;
        }
        if let Some(v) = self.amqp {
            raw.deferred.amqp_url = Some(v);
        }
        if let Some(v) = self.node_id {
            raw.cluster.node_id = Some(v);
        }
        if let Some(v) = self.state_dir {
            raw.cluster.state_dir = v;
        }
        if let Some(v) = self.kek_file {
            raw.cluster.kek_file = Some(v);
        }
        // The KEK is read from the environment here and nowhere else; never a flag,
        // so it cannot show in `ps`.
        if let Ok(v) = std::env::var("STRAIT_KEK") {
            if !v.trim().is_empty() {
                raw.cluster.kek = Some(Secret::new(v));
            }
        }
        if let Some(v) = self.cluster_secret_file {
            raw.cluster.cluster_secret_file = Some(v);
        }
        if let Ok(v) = std::env::var("STRAIT_CLUSTER_SECRET") {
            if !v.trim().is_empty() {
                raw.cluster.cluster_secret = Some(Secret::new(v.trim()));
            }
        }
        if let Some(v) = &self.default_limits {
            let spec = crate::limit_spec::LimitSpec::parse(v)
                .map_err(|e| crate::error::Error::config(format!("--default-limits: {e}")))?;
            let d = &mut raw.limits.default;
            d.rpm = spec.rpm.or(d.rpm);
            d.itpm = spec.itpm.or(d.itpm);
            d.otpm = spec.otpm.or(d.otpm);
            d.concurrency = spec.concurrency.or(d.concurrency);
            d.daily_tokens = spec.daily_tokens.or(d.daily_tokens);
        }
        if let Some(v) = self.redis {
            raw.redis.cluster |= v.contains(',');
            raw.redis.url = v;
        }
        if let Some(v) = self.limit_mode {
            raw.redis.mode = v;
        }
        if let Some(v) = self.expected_nodes {
            raw.redis.expected_nodes = v;
        }
        let upstream_keys = self
            .upstream_keys
            .as_deref()
            .map(split_keys)
            .unwrap_or_default();
        let client_keys = self
            .client_keys
            .as_deref()
            .map(split_keys)
            .unwrap_or_default();
        raw.validate(upstream_keys, client_keys)
    }
}

/// A human summary for `--check-config` (no secrets).
pub fn summary(c: &Config) -> String {
    format!(
        "config ok\n  public listener: {} ({})\n  admin listener:  {}\n  upstream:        {}://{}{}\n  key mode:        {:?} ({} upstream keys, {} client keys)\n  limits:          body {} bytes, headers {} bytes, {} connections\n  workers:         {}\n  cluster:         {}\n  rate limits:     {}\n",
        c.public_listen,
        match &c.tls {
            Some(t) if t.tls13_only => "TLS 1.3",
            Some(_) => "TLS 1.2/1.3",
            None => "plain HTTP",
        },
        c.admin_listen,
        c.upstream.target.scheme,
        c.upstream.target.authority,
        c.upstream.target.path_prefix,
        c.key_mode(),
        c.upstream.keys.len(),
        c.auth.client_keys.len(),
        c.limits.max_body_bytes,
        c.limits.max_header_bytes,
        c.limits.max_connections,
        match c.workers {
            Some(n) => format!("{n} event loops"),
            None => format!("{} event loops (one per core)", c.event_loops()),
        },
        match &c.cluster {
            Some(cl) => format!(
                "etcd {} (region {}, lease {:?}, state {}, KEK {})",
                cl.etcd.join(","),
                cl.region,
                cl.lease_ttl,
                cl.state_dir.display(),
                if cl.kek.is_some() { "set" } else { "not set" }
            ),
            None => "none (file config only)".to_string(),
        },
        match &c.rate_limits.redis {
            None => "in process".to_string(),
            Some(r) => format!("redis ({:?} mode, {} expected nodes)", r.mode, r.expected_nodes),
        },
    )
}
