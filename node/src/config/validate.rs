//! Checks a parsed file ([`RawConfig::validate`]) and builds the runtime form: every
//! refusal names the field it is about.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use super::raw::{
    RawCluster, RawConfig, RawDeferred, RawHealth, RawLimitSpec, RawRedis, RawTenant,
    DEFAULT_REDIS_PREFIX, DEFAULT_REGION, DEFAULT_SPOOL_SUBDIR,
};
use super::{
    hash_key, Auth, ClientKey, Cluster, Config, Deferred, FasterPeer, HealthChecks, LimitMode,
    Limits, Log, LogFormat, RateLimits, RedisSettings, Secret, Tenant, TlsConfig, Upstream,
    UpstreamKey, UpstreamTarget,
};
use crate::error::{Error, Result};

impl RawLimitSpec {
    /// The limits as the limiter reads them.
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

impl RawConfig {
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
                    client_ca: self.cluster.peer_ca_file.clone(),
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
        // A smaller budget would refuse the largest allowed body forever, with a 503
        // that tells the client to retry.
        if l.max_inflight_body_bytes < l.max_body_bytes {
            return Err(Error::config(
                "limits.max_inflight_body_bytes must be at least limits.max_body_bytes",
            ));
        }
        if l.max_connections == 0 {
            return Err(Error::config("limits.max_connections must be positive"));
        }
        nonzero("limits.header_read_timeout", l.header_read_timeout)?;
        nonzero("limits.body_read_timeout", l.body_read_timeout)?;

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
        let mut entries = extra_upstream_keys;
        if let Some(path) = &u.keys_file {
            entries.extend(read_key_file("upstream.keys_file", path)?);
        }
        let keys = parse_upstream_keys(&entries)?;
        for (prefix, class) in &u.model_classes {
            let ok = |s: &str| {
                !s.is_empty()
                    && s.len() <= 64
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            };
            if !ok(prefix) || !ok(class) {
                return Err(Error::config(format!(
                    "upstream.model_classes: {prefix:?} = {class:?}: prefixes and classes are 1 to 64 \
                     characters of letters, digits, '.', '_' and '-'"
                )));
            }
        }
        if u.org_rest.is_zero() {
            return Err(Error::config(
                "upstream.org_rest must be positive (a billing error would otherwise be retried at once)",
            ));
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
        let state_dir = self.cluster.state_dir.clone();
        let region = if self.cluster.region.is_empty() {
            DEFAULT_REGION.to_string()
        } else {
            self.cluster.region.clone()
        };
        let cluster_secret = validate_cluster_secret(&self.cluster)?;
        let peer_ca_file = self.cluster.peer_ca_file.clone();
        if let Some(p) = &peer_ca_file {
            if !p.exists() {
                return Err(Error::config(format!(
                    "cluster.peer_ca_file: no such file {}",
                    p.display()
                )));
            }
        }
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
        if !crate::schema::valid_name(&region) {
            return Err(Error::config(format!(
                "cluster.region {region:?}: use lowercase letters, digits, '-' and '_'"
            )));
        }
        let deferred = validate_deferred(self.deferred, &state_dir, &rate_limits)?;
        let health = validate_health(&self.health)?;

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
                max_inflight_body_bytes: l.max_inflight_body_bytes,
                header_read_timeout: l.header_read_timeout,
                body_read_timeout: l.body_read_timeout,
                min_upload_rate: l.min_upload_rate,
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
                org_rest: u.org_rest,
                model_classes: u.model_classes.into_iter().collect(),
                keys,
                ca_file: u.ca_file,
                pass_unknown_routes: u.pass_unknown_routes,
            },
            auth: Auth {
                client_keys,
                allow_anonymous: self.auth.allow_anonymous,
            },
            log: Log {
                format,
                level: self.log.level,
                access_log: self.log.access_log,
                access_log_file: match self.log.access_log_file {
                    Some(p) if p.trim().is_empty() => {
                        return Err(Error::config(
                            "log.access_log_file: empty (leave it out for stdout)",
                        ))
                    }
                    p => p.map(std::path::PathBuf::from),
                },
            },
            workers,
            cluster,
            rate_limits,
            region,
            deferred,
            cluster_secret,
            peer_ca_file,
            health,
        })
    }
}

fn validate_health(h: &RawHealth) -> Result<HealthChecks> {
    if h.probe_interval < Duration::from_millis(100) || h.probe_interval > Duration::from_secs(3600)
    {
        return Err(Error::config(
            "health.probe_interval must be between 100ms and 1h",
        ));
    }
    if h.probe_timeout.is_zero() || h.probe_timeout > h.probe_interval {
        return Err(Error::config(
            "health.probe_timeout must be above 0 and at most health.probe_interval",
        ));
    }
    if !(1..=100).contains(&h.failure_threshold) {
        return Err(Error::config(
            "health.failure_threshold must be between 1 and 100",
        ));
    }
    if !(h.faster_ratio.is_finite() && h.faster_ratio > 1.0 && h.faster_ratio <= 100.0) {
        return Err(Error::config(
            "health.faster_ratio must be above 1 and at most 100",
        ));
    }
    if h.faster_for > Duration::from_secs(24 * 3600) {
        return Err(Error::config("health.faster_for must be at most 24h"));
    }
    Ok(HealthChecks {
        probe_interval: h.probe_interval,
        probe_timeout: h.probe_timeout,
        failure_threshold: h.failure_threshold,
        relay_when_faster: h.relay_when_faster.then_some(FasterPeer {
            ratio: h.faster_ratio,
            sustain: h.faster_for,
        }),
    })
}

/// The cluster secret from the environment or its file (not both), at least 16 characters.
fn validate_cluster_secret(c: &RawCluster) -> Result<Option<Secret>> {
    let secret = match (&c.cluster_secret, &c.cluster_secret_file) {
        (Some(_), Some(_)) => {
            return Err(Error::config(
                "the cluster secret is given twice: set either STRAIT_CLUSTER_SECRET or cluster.cluster_secret_file",
            ))
        }
        (Some(s), None) => s.clone(),
        (None, Some(path)) => Secret::new(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    Error::config(format!("cluster.cluster_secret_file {}: {e}", path.display()))
                })?
                .trim(),
        ),
        (None, None) => return Ok(None),
    };
    if secret.expose().trim().len() < 16 {
        return Err(Error::config(
            "the cluster secret needs at least 16 characters (e.g. `openssl rand -hex 32`)",
        ));
    }
    Ok(Some(secret))
}

fn validate_deferred(d: RawDeferred, state_dir: &Path, limits: &RateLimits) -> Result<Deferred> {
    let redis_url = d.redis.or_else(|| {
        limits
            .redis
            .as_ref()
            .filter(|r| !r.cluster)
            .and_then(|r| r.urls.first().cloned())
    });
    if let Some(url) = &d.amqp_url {
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(Error::config(
                "deferred.amqp_url must be an amqp:// or amqps:// URL",
            ));
        }
        if redis_url.is_none() {
            return Err(Error::config(
                "deferred.amqp_url (--amqp) needs a Redis for deferred claims and results: set \
                 deferred.redis, or a single-node limiter Redis (--redis) to share it",
            ));
        }
    }
    if let Some(url) = &redis_url {
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::config("deferred.redis must be a redis:// URL"));
        }
    }
    if d.delivery_limit == 0 {
        return Err(Error::config("deferred.delivery_limit must be at least 1"));
    }
    if d.prefetch == 0 {
        return Err(Error::config("deferred.prefetch must be at least 1"));
    }
    if d.claim_lease < std::time::Duration::from_secs(1) {
        return Err(Error::config("deferred.claim_lease must be at least 1s"));
    }
    if d.result_ttl < std::time::Duration::from_secs(1) {
        return Err(Error::config("deferred.result_ttl must be at least 1s"));
    }
    if d.confirm_timeout.is_zero() {
        return Err(Error::config("deferred.confirm_timeout must be above 0"));
    }
    Ok(Deferred {
        amqp_url: d.amqp_url,
        redis_url,
        spool_dir: d
            .spool_dir
            .unwrap_or_else(|| state_dir.join(DEFAULT_SPOOL_SUBDIR)),
        result_ttl: d.result_ttl,
        delivery_limit: d.delivery_limit,
        prefetch: d.prefetch,
        confirm_timeout: d.confirm_timeout,
        claim_lease: d.claim_lease,
        resend_unknown: d.resend_unknown,
        max_result_bytes: d.max_result_bytes,
        key_prefix: format!(
            "{}:dfr:",
            limits
                .redis
                .as_ref()
                .map_or(DEFAULT_REDIS_PREFIX, |r| r.key_prefix.as_str())
        ),
    })
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

/// Reads upstream key entries (from `STRAIT_UPSTREAM_KEYS`, `--upstream-keys` or
/// `upstream.keys_file`): each is a key, optionally preceded by `org=NAME` and
/// `label=NAME` separated by spaces. Keys without a label are named `k1`, `k2`, ...
/// by position; a key given twice counts once. Errors name the entry by position and
/// never quote it (it holds a key).
pub fn parse_upstream_keys(entries: &[Secret]) -> Result<Vec<UpstreamKey>> {
    let mut keys: Vec<UpstreamKey> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let n = i + 1;
        let words: Vec<&str> = entry.expose().split_whitespace().collect();
        let Some((key, attrs)) = words.split_last() else {
            continue;
        };
        let (mut org, mut label) = (None, None);
        for attr in attrs {
            let (name, value) = attr.split_once('=').ok_or_else(|| {
                Error::config(format!(
                    "upstream key entry {n}: expected `[org=NAME] [label=NAME] KEY`, and a word \
                     before the key is neither org= nor label= (a key cannot contain spaces)"
                ))
            })?;
            let ok = !value.is_empty()
                && value.len() <= 64
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            let slot = match name {
                "org" => &mut org,
                "label" => &mut label,
                _ => {
                    return Err(Error::config(format!(
                        "upstream key entry {n}: unknown attribute before the key (only org= and label=)"
                    )))
                }
            };
            if !ok {
                return Err(Error::config(format!(
                    "upstream key entry {n}: {name}= takes 1 to 64 letters, digits, '.', '_' or '-'"
                )));
            }
            *slot = Some(value.to_string());
        }
        if http::HeaderValue::from_str(key).is_err() {
            return Err(Error::config(format!(
                "upstream key entry {n}: the key contains characters not allowed in a header"
            )));
        }
        if keys.iter().any(|k| k.secret.expose() == *key) {
            continue;
        }
        let label = label.unwrap_or_else(|| format!("k{}", keys.len() + 1));
        if keys.iter().any(|k| k.label == label) {
            return Err(Error::config(format!(
                "upstream key entry {n}: label {label:?} is used twice"
            )));
        }
        keys.push(UpstreamKey {
            label,
            org,
            secret: Secret::new(*key),
        });
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{
        KeyMode, DEFAULT_BODY_READ_TIMEOUT, DEFAULT_EXPECTED_NODES, DEFAULT_LEASE_TTL,
        DEFAULT_MAX_BODY_BYTES, DEFAULT_MIN_UPLOAD_RATE, DEFAULT_SLOT_TTL,
    };

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
    fn upstream_key_entries_name_their_organisation_and_label() {
        let parsed = parse_upstream_keys(&keys(&[
            "org=acme label=prod-1 sk-ant-a",
            "org=acme   sk-ant-b",
            "sk-ant-c",
            "sk-ant-a",
        ]))
        .unwrap();
        let seen: Vec<_> = parsed
            .iter()
            .map(|k| (k.label.as_str(), k.org.as_deref(), k.secret.expose()))
            .collect();
        assert_eq!(
            seen,
            [
                ("prod-1", Some("acme"), "sk-ant-a"),
                ("k2", Some("acme"), "sk-ant-b"),
                ("k3", None, "sk-ant-c"),
            ]
        );
        for (bad, says) in [
            ("acme sk-ant-secret-value", "neither org= nor label="),
            ("team=x sk-ant-secret-value", "only org= and label="),
            ("org= sk-ant-secret-value", "org= takes"),
            ("org=a/b sk-ant-secret-value", "org= takes"),
        ] {
            let e = parse_upstream_keys(&keys(&[bad])).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
            assert!(e.contains("entry 1"), "{e}");
            assert!(!e.contains("secret-value"), "never the key: {e}");
        }
        let e = parse_upstream_keys(&keys(&["label=x sk-1", "label=x sk-2"])).unwrap_err();
        assert!(e.to_string().contains("used twice"), "{e}");
    }

    #[test]
    fn model_classes_and_org_rest_are_checked() {
        let mut raw = RawConfig::default();
        raw.upstream
            .model_classes
            .insert("claude-nova".into(), "nova".into());
        let c = raw.validate(vec![], vec![]).unwrap();
        assert_eq!(
            c.upstream.model_classes,
            [("claude-nova".to_string(), "nova".to_string())]
        );
        assert_eq!(c.upstream.org_rest, crate::config::DEFAULT_ORG_REST);
        let mut raw = RawConfig::default();
        raw.upstream
            .model_classes
            .insert("claude nova".into(), "nova".into());
        let e = raw.validate(vec![], vec![]).unwrap_err();
        assert!(e.to_string().contains("upstream.model_classes"), "{e}");
        let mut raw = RawConfig::default();
        raw.upstream.org_rest = Duration::ZERO;
        let e = raw.validate(vec![], vec![]).unwrap_err();
        assert!(e.to_string().contains("upstream.org_rest"), "{e}");
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
    fn body_timing_limits_have_defaults_and_are_checked() {
        let c = RawConfig::default().validate(vec![], vec![]).unwrap();
        assert_eq!(c.limits.body_read_timeout, DEFAULT_BODY_READ_TIMEOUT);
        assert_eq!(c.limits.min_upload_rate, DEFAULT_MIN_UPLOAD_RATE);
        let c = RawConfig::from_toml("[limits]\nbody_read_timeout = \"5s\"\nmin_upload_rate = 0\n")
            .unwrap()
            .validate(vec![], vec![])
            .unwrap();
        assert_eq!(c.limits.body_read_timeout, Duration::from_secs(5));
        assert_eq!(c.limits.min_upload_rate, 0, "0 turns the floor off");
        assert!(
            refusal("[limits]\nbody_read_timeout = \"0s\"\n").contains("limits.body_read_timeout")
        );
        for bad in [
            "[limits]\nmin_upload_rate = -1\n",
            "[limits]\nmin_upload_rate = \"1KiB\"\n",
            "[limits]\nbody_read_timeout = 30\n",
        ] {
            assert!(RawConfig::from_toml(bad).is_err(), "{bad}");
        }
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
