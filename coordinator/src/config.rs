//! Typed coordinator configuration: an optional TOML file overlaid by flags and
//! environment variables (see `cli::ServeArgs`), validated once into [`Config`].
//! Secrets (admin token, KEK) come from files or the environment, never the file body.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use strait_node::config::Secret;
use strait_node::schema::valid_name;
use strait_node::secret::Kek;

use crate::error::{Error, Result};

/// The file as written (`deploy/coordinator.example.toml`). Every field is optional;
/// the default is stated on each.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    /// This coordinator's id in the election and in `/v1/leader`. Default: `coordinator-<region>`.
    pub id: Option<String>,
    /// The region this coordinator runs in. Default: `default`.
    pub region: Option<String>,
    /// Admin API listener. Default: `127.0.0.1:7070`.
    pub listen: Option<String>,
    /// URL other coordinators and the CLI use to reach this one (named in `not_leader`
    /// errors). Default: `http://<listen address>`.
    pub advertise_url: Option<String>,
    /// etcd client URLs. Default: `["http://127.0.0.1:2379"]`.
    pub etcd_endpoints: Option<Vec<String>>,
    /// File holding the admin token (one line, at least 16 characters). Or `STRAIT_ADMIN_TOKEN`.
    pub admin_token_file: Option<PathBuf>,
    /// File holding the KEK (64 hex characters or base64 of 32 bytes). Or `STRAIT_KEK`.
    pub kek_file: Option<PathBuf>,
    /// Election lease time-to-live; a dead leader is replaced within about this long. Default: `5s`.
    pub lease_ttl: Option<String>,
    /// Deadline for one etcd request. Default: `3s`.
    pub etcd_timeout: Option<String>,
    /// Log filter. Default: `info`.
    pub log_level: Option<String>,
    /// File holding the cluster secret shared with the nodes (at least 16 characters):
    /// the dashboard reads each node's `/stats` with it, and signs its session cookies
    /// with a key derived from it. Or `STRAIT_CLUSTER_SECRET`. Default: none (node stats
    /// then need loopback admin listeners; sessions are signed from the admin token).
    pub cluster_secret_file: Option<PathBuf>,
    /// Mark the dashboard's session cookie `Secure` (sent over HTTPS only): set it when
    /// browsers reach the coordinator through TLS. Default: `false`.
    pub cookie_secure: Option<bool>,
    /// How long a dashboard sign-in lasts. Default: `12h`.
    pub session_ttl: Option<String>,
    /// The smart DNS server (`[dns]`, see `docs/failover.md`). Default: off.
    pub dns: Option<RawDns>,
}

/// `[dns]`: an authoritative DNS server for the cluster's name. It runs when both
/// `listen` and `name` are set (from here or `--dns-listen` / `--dns-name`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawDns {
    /// UDP and TCP address to answer on, e.g. `0.0.0.0:53`. Default: none (DNS off).
    pub listen: Option<String>,
    /// The name this server is authoritative for, e.g. `api.example.com`. Default: none.
    pub name: Option<String>,
    /// TTL of the A/AAAA answers (and of negative answers). Default: `15s`.
    pub ttl: Option<String>,
    /// Names of the servers the parent zone delegates `name` to (the coordinators),
    /// served as NS records and as the SOA's primary. Default: `["ns.<name>"]`.
    pub nameservers: Option<Vec<String>>,
    /// The SOA's contact mailbox in DNS form. Default: `hostmaster.<name>`.
    pub hostmaster: Option<String>,
    /// Client subnet (CIDR, IPv4 or IPv6) -> region of the nodes to answer with.
    /// Default: empty (every ready node for every client).
    pub regions: std::collections::BTreeMap<String, String>,
}

impl RawConfig {
    pub fn from_toml(text: &str) -> Result<RawConfig> {
        toml::from_str(text).map_err(|e| Error::config(format!("config file: {e}")))
    }

    pub fn from_file(path: &Path) -> Result<RawConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
        RawConfig::from_toml(&text)
            .map_err(|e| Error::config(format!("{}: {}", path.display(), e.message)))
    }
}

/// Secrets given directly (from the environment) rather than by file.
#[derive(Default)]
pub struct SecretSources {
    pub admin_token: Option<Secret>,
    pub kek: Option<Secret>,
    pub cluster_secret: Option<Secret>,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: String,
    pub region: String,
    pub listen: SocketAddr,
    pub advertise_url: Option<String>,
    pub etcd_endpoints: Vec<String>,
    pub admin_token: Secret,
    pub kek: Kek,
    pub lease_ttl: Duration,
    pub etcd_timeout: Duration,
    pub log_level: String,
    /// The secret nodes and coordinators share; `None` when not configured.
    pub cluster_secret: Option<Secret>,
    pub cookie_secure: bool,
    pub session_ttl: Duration,
    /// The smart DNS server; `None` when off.
    pub dns: Option<DnsConfig>,
}

/// The validated `[dns]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    /// The zone apex, lowercase, without the trailing dot.
    pub name: String,
    pub ttl: Duration,
    /// Lowercase, without trailing dots.
    pub nameservers: Vec<String>,
    pub hostmaster: String,
    /// (subnet, region), most specific first.
    pub regions: Vec<(ipnet::IpNet, String)>,
}

/// A DNS name as configured: lowercase, no trailing dot, labels of 1 to 63 letters,
/// digits, `-` or `_`.
fn dns_name(field: &str, text: &str) -> Result<String> {
    let name = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(name)
    } else {
        Err(Error::config(format!(
            "{field} {text:?}: not a DNS name (e.g. \"api.example.com\")"
        )))
    }
}

impl DnsConfig {
    /// `None` when neither `listen` nor `name` is set; an error when only one is.
    fn build(raw: RawDns) -> Result<Option<DnsConfig>> {
        let (listen, name) = match (raw.listen, raw.name) {
            (None, None) => return Ok(None),
            (Some(l), Some(n)) => (l, n),
            _ => {
                return Err(Error::config(
                    "dns: set both listen and name (--dns-listen, --dns-name), or neither",
                ))
            }
        };
        let listen: SocketAddr = listen
            .parse()
            .map_err(|e| Error::config(format!("dns listen {listen:?}: {e}")))?;
        let name = dns_name("dns name", &name)?;
        let ttl = duration("dns ttl", raw.ttl.as_deref(), Duration::from_secs(15))?;
        if ttl.is_zero() || ttl > Duration::from_secs(86_400) {
            return Err(Error::config("dns ttl: between 1s and 1d"));
        }
        let nameservers = match raw.nameservers {
            None => vec![format!("ns.{name}")],
            Some(list) if list.is_empty() => {
                return Err(Error::config("dns nameservers: give at least one name"))
            }
            Some(list) => list
                .iter()
                .map(|n| dns_name("dns nameserver", n))
                .collect::<Result<_>>()?,
        };
        let hostmaster = match raw.hostmaster {
            None => format!("hostmaster.{name}"),
            Some(h) => dns_name("dns hostmaster", &h)?,
        };
        let mut regions = Vec::with_capacity(raw.regions.len());
        for (cidr, region) in raw.regions {
            let net: ipnet::IpNet = cidr.trim().parse().map_err(|e| {
                Error::config(format!(
                    "dns regions {cidr:?}: {e} (e.g. \"10.1.0.0/16\" or \"2001:db8::/32\")"
                ))
            })?;
            if !valid_name(&region) {
                return Err(Error::config(format!(
                    "dns regions {cidr:?} = {region:?}: use lowercase letters, digits, '-' or '_'"
                )));
            }
            regions.push((net.trunc(), region));
        }
        // IPv4 then IPv6, longest prefix first: the first subnet holding an address
        // is its match.
        regions.sort_by_key(|(net, _)| (net.addr().is_ipv6(), std::cmp::Reverse(net.prefix_len())));
        Ok(Some(DnsConfig {
            listen,
            name,
            ttl,
            nameservers,
            hostmaster,
            regions,
        }))
    }
}

fn duration(field: &str, text: Option<&str>, default: Duration) -> Result<Duration> {
    match text {
        None => Ok(default),
        Some(t) => humantime::parse_duration(t)
            .map_err(|e| Error::config(format!("{field}: {e} (e.g. \"5s\")"))),
    }
}

fn read_secret_file(field: &str, path: &Path) -> Result<Secret> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("{field} {}: {e}", path.display())))?;
    Ok(Secret::new(text.trim().to_string()))
}

impl Config {
    /// Validates `raw` with secrets from `secrets` (which win over the files).
    pub fn build(raw: RawConfig, secrets: SecretSources) -> Result<Config> {
        let region = raw.region.unwrap_or_else(|| "default".to_string());
        if !valid_name(&region) {
            return Err(Error::config(format!(
                "region {region:?}: use lowercase letters, digits, '-' or '_'"
            )));
        }
        let id = raw.id.unwrap_or_else(|| format!("coordinator-{region}"));
        if !valid_name(&id) {
            return Err(Error::config(format!(
                "id {id:?}: use lowercase letters, digits, '-' or '_'"
            )));
        }
        let listen_text = raw.listen.unwrap_or_else(|| "127.0.0.1:7070".to_string());
        let listen: SocketAddr = listen_text
            .parse()
            .map_err(|e| Error::config(format!("listen {listen_text:?}: {e}")))?;
        if let Some(u) = &raw.advertise_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                return Err(Error::config(format!(
                    "advertise_url {u:?}: must start with http:// or https://"
                )));
            }
        }
        let etcd_endpoints = raw
            .etcd_endpoints
            .unwrap_or_else(|| vec!["http://127.0.0.1:2379".to_string()]);
        if etcd_endpoints.is_empty() || etcd_endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(Error::config("etcd_endpoints: give at least one endpoint"));
        }
        let admin_token = match (secrets.admin_token, &raw.admin_token_file) {
            (Some(t), _) => t,
            (None, Some(path)) => read_secret_file("admin_token_file", path)?,
            (None, None) => {
                return Err(Error::config(
                    "no admin token: set STRAIT_ADMIN_TOKEN or admin_token_file",
                ));
            }
        };
        if admin_token.expose().len() < 16 {
            return Err(Error::config(
                "admin token: at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        let kek = match (secrets.kek, &raw.kek_file) {
            (Some(k), _) => {
                Kek::parse(k.expose()).map_err(|e| Error::config(format!("STRAIT_KEK: {e}")))?
            }
            (None, Some(path)) => {
                Kek::from_file(path).map_err(|e| Error::config(format!("kek_file: {e}")))?
            }
            (None, None) => {
                return Err(Error::config(
                    "no KEK: set STRAIT_KEK or kek_file (`openssl rand -hex 32`)",
                ))
            }
        };
        let lease_ttl = duration(
            "lease_ttl",
            raw.lease_ttl.as_deref(),
            Duration::from_secs(5),
        )?;
        if lease_ttl < Duration::from_secs(2) || lease_ttl > Duration::from_secs(60) {
            return Err(Error::config("lease_ttl: between 2s and 60s"));
        }
        let etcd_timeout = duration(
            "etcd_timeout",
            raw.etcd_timeout.as_deref(),
            Duration::from_secs(3),
        )?;
        if etcd_timeout.is_zero() {
            return Err(Error::config("etcd_timeout: must be positive"));
        }
        let cluster_secret = match (secrets.cluster_secret, &raw.cluster_secret_file) {
            (Some(s), _) => Some(s),
            (None, Some(path)) => Some(read_secret_file("cluster_secret_file", path)?),
            (None, None) => None,
        };
        if cluster_secret
            .as_ref()
            .is_some_and(|s| s.expose().len() < 16)
        {
            return Err(Error::config(
                "cluster secret: at least 16 characters (e.g. `openssl rand -hex 32`)",
            ));
        }
        let session_ttl = duration(
            "session_ttl",
            raw.session_ttl.as_deref(),
            Duration::from_secs(12 * 3600),
        )?;
        if session_ttl < Duration::from_secs(60) || session_ttl > Duration::from_secs(30 * 86_400) {
            return Err(Error::config("session_ttl: between 1m and 30d"));
        }
        let dns = DnsConfig::build(raw.dns.unwrap_or_default())?;
        Ok(Config {
            id,
            region,
            listen,
            advertise_url: raw.advertise_url,
            etcd_endpoints,
            admin_token,
            kek,
            lease_ttl,
            etcd_timeout,
            log_level: raw.log_level.unwrap_or_else(|| "info".to_string()),
            cluster_secret,
            cookie_secure: raw.cookie_secure.unwrap_or(false),
            session_ttl,
            dns,
        })
    }

    /// One-paragraph summary for `--check-config` (no secrets).
    pub fn summary(&self) -> String {
        format!(
            "coordinator {} in region {}\nlisten: {}\nadvertise_url: {}\netcd: {}\nlease_ttl: {:?}, etcd_timeout: {:?}\nadmin token: set ({} characters), KEK: set\ncluster secret: {}, cookie_secure: {}, session_ttl: {:?}",
            self.id,
            self.region,
            self.listen,
            self.advertise_url.as_deref().unwrap_or("(http://<listen address>)"),
            self.etcd_endpoints.join(", "),
            self.lease_ttl,
            self.etcd_timeout,
            self.admin_token.expose().len(),
            if self.cluster_secret.is_some() { "set" } else { "not set" },
            self.cookie_secure,
            self.session_ttl
        ) + &match &self.dns {
            None => "\ndns: off".to_string(),
            Some(d) => format!(
                "\ndns: {} on {} (udp, tcp), ttl {:?}, nameservers {}, {} subnet(s) mapped to regions",
                d.name,
                d.listen,
                d.ttl,
                d.nameservers.join(", "),
                d.regions.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets(token: &str) -> SecretSources {
        SecretSources {
            admin_token: Some(Secret::new(token)),
            kek: Some(Secret::new("ab".repeat(32))),
            cluster_secret: None,
        }
    }

    #[test]
    fn defaults_and_bad_values_are_named() {
        let c = Config::build(RawConfig::default(), secrets("0123456789abcdef")).unwrap();
        assert_eq!(
            (c.id.as_str(), c.region.as_str()),
            ("coordinator-default", "default")
        );
        assert_eq!(c.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "the token never prints"
        );

        let err =
            |raw: RawConfig, token: &str| Config::build(raw, secrets(token)).unwrap_err().message;
        assert!(err(RawConfig::default(), "short").contains("at least 16"));
        assert!(err(
            RawConfig {
                region: Some("EU West".into()),
                ..Default::default()
            },
            "0123456789abcdef"
        )
        .contains("region"));
        assert!(err(
            RawConfig {
                lease_ttl: Some("1s".into()),
                ..Default::default()
            },
            "0123456789abcdef"
        )
        .contains("lease_ttl"));
        assert!(err(
            RawConfig {
                lease_ttl: Some("soon".into()),
                ..Default::default()
            },
            "0123456789abcdef"
        )
        .contains("lease_ttl"));
        assert!(err(
            RawConfig {
                advertise_url: Some("coord:7070".into()),
                ..Default::default()
            },
            "0123456789abcdef"
        )
        .contains("advertise_url"));
        assert!(err(
            RawConfig {
                etcd_endpoints: Some(vec![]),
                ..Default::default()
            },
            "0123456789abcdef"
        )
        .contains("etcd"));
        assert!(RawConfig::from_toml("listen = 1").is_err());
        assert!(RawConfig::from_toml("surprise = true")
            .unwrap_err()
            .message
            .contains("surprise"));

        let no_kek = Config::build(
            RawConfig::default(),
            SecretSources {
                admin_token: Some(Secret::new("0123456789abcdef")),
                kek: None,
                cluster_secret: None,
            },
        );
        assert!(no_kek.unwrap_err().message.contains("KEK"));
    }

    #[test]
    fn dns_section_is_validated() {
        let build = |text: &str| {
            Config::build(
                RawConfig::from_toml(text).unwrap(),
                secrets("0123456789abcdef"),
            )
        };
        assert!(build("").unwrap().dns.is_none());
        let c = build(
            "[dns]\nlisten = \"127.0.0.1:5353\"\nname = \"API.Example.com.\"\n[dns.regions]\n\"10.1.0.0/16\" = \"east\"\n\"10.1.2.9/24\" = \"west\"\n\"2001:db8::/32\" = \"west\"\n",
        )
        .unwrap();
        let d = c.dns.unwrap();
        assert_eq!(d.name, "api.example.com");
        assert_eq!(d.ttl, Duration::from_secs(15));
        assert_eq!(d.nameservers, ["ns.api.example.com"]);
        assert_eq!(d.hostmaster, "hostmaster.api.example.com");
        // Most specific first, host bits cleared.
        let nets: Vec<String> = d.regions.iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(nets, ["10.1.2.0/24", "10.1.0.0/16", "2001:db8::/32"]);

        let err = |text: &str| build(text).unwrap_err().message;
        assert!(err("[dns]\nlisten = \"127.0.0.1:53\"\n").contains("both"));
        assert!(err("[dns]\nlisten = \"127.0.0.1:53\"\nname = \"a b\"\n").contains("DNS name"));
        assert!(
            err("[dns]\nlisten = \"127.0.0.1:53\"\nname = \"a.b\"\nttl = \"0s\"\n").contains("ttl")
        );
        assert!(err("[dns]\nlisten = \"127.0.0.1:53\"\nname = \"a.b\"\n[dns.regions]\n\"10.0.0.0/33\" = \"east\"\n").contains("10.0.0.0/33"));
        assert!(err("[dns]\nlisten = \"127.0.0.1:53\"\nname = \"a.b\"\n[dns.regions]\n\"10.0.0.0/8\" = \"East\"\n").contains("East"));
        assert!(RawConfig::from_toml("[dns]\nport = 53\n").is_err());
    }
}
