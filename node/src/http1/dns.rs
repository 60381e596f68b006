//! Upstream name resolution with hickory, so DNS answers are cached with a TTL cap
//! (a region's view of api.anthropic.com can change; we never pin one answer for long).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;

/// Hickory's caching resolver, shared by every dial.
#[derive(Clone)]
pub struct HickoryDns {
    resolver: Arc<Resolver<TokioRuntimeProvider>>,
}

impl HickoryDns {
    /// Uses the system configuration (/etc/resolv.conf and the hosts file); falls back
    /// to hickory's defaults when the system has none.
    pub fn new(ttl_cap: Duration) -> std::io::Result<Self> {
        let mut builder = match Resolver::builder_tokio() {
            Ok(b) => b,
            Err(_) => Resolver::builder_with_config(
                hickory_resolver::config::ResolverConfig::default(),
                TokioRuntimeProvider::default(),
            ),
        };
        let opts = builder.options_mut();
        opts.positive_max_ttl = Some(ttl_cap);
        opts.negative_max_ttl = Some(ttl_cap.min(Duration::from_secs(5)));
        let resolver = builder.build().map_err(std::io::Error::other)?;
        Ok(HickoryDns {
            resolver: Arc::new(resolver),
        })
    }

    /// The addresses of `host`; IP literals are returned as they are.
    pub async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        // IP literals need no lookup (tests and private upstreams use them).
        if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
            return Ok(vec![ip]);
        }
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(std::io::Error::other)?;
        let addrs: Vec<IpAddr> = lookup.iter().collect();
        if addrs.is_empty() {
            return Err(std::io::Error::other(format!("no addresses for {host}")));
        }
        Ok(addrs)
    }
}
