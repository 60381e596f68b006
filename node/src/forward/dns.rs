//! Upstream name resolution with hickory, so DNS answers are cached with a TTL cap
//! (a region's view of api.anthropic.com can change; we never pin one answer for long).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::Resolver;
use hyper_util::client::legacy::connect::dns::Name;

/// A hyper-util resolver backed by hickory's caching resolver.
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
}

type Addrs = std::vec::IntoIter<SocketAddr>;

impl tower_service::Service<Name> for HickoryDns {
    type Response = Addrs;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Addrs, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let resolver = self.resolver.clone();
        Box::pin(async move {
            let host = name.as_str();
            // IP literals need no lookup (tests and private upstreams use them).
            if let Ok(ip) = host.trim_start_matches('[').trim_end_matches(']').parse() {
                return Ok(vec![SocketAddr::new(ip, 0)].into_iter());
            }
            let lookup = resolver
                .lookup_ip(host)
                .await
                .map_err(std::io::Error::other)?;
            let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            if addrs.is_empty() {
                return Err(std::io::Error::other(format!("no addresses for {host}")));
            }
            Ok(addrs.into_iter())
        })
    }
}
