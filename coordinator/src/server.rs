//! Starting and stopping a coordinator: bind the admin listener, connect to etcd,
//! run the election and the node scraper, serve the API and the dashboard until
//! shutdown. The one place the etcd store, the election, the app, the API and the
//! dashboard are wired together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::config::Config;
use crate::dashboard::{Dash, Settings};
use crate::dns::{DnsMetrics, DnsServer};
use crate::election::Election;
use crate::error::{Error, Result};
use crate::leader::LeaderInfo;
use crate::scrape::Scraper;
use crate::store::etcd::{connect_etcd, watch_nodes, EtcdElector, EtcdStore};

/// A started coordinator. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    /// The bound admin listener (useful with port 0).
    pub addr: SocketAddr,
    /// The URL this coordinator advertises.
    pub url: String,
    pub election: Election,
    /// The DNS server's address (UDP and TCP), when `[dns]` is configured.
    pub dns_addr: Option<SocketAddr>,
    /// The coordinator's metrics (served at `GET /metrics`).
    pub metrics: DnsMetrics,
    dns: Option<(DnsServer, JoinHandle<()>)>,
    shutdown: watch::Sender<bool>,
    election_task: JoinHandle<()>,
    scrape_task: JoinHandle<()>,
    http_task: JoinHandle<()>,
}

/// Binds, connects, starts campaigning and serving. Returns once the listener is bound.
pub async fn start(config: Config) -> Result<Running> {
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::config(format!("cannot listen on {}: {e}", config.listen)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::internal(e.to_string()))?;
    let url = config
        .advertise_url
        .clone()
        .unwrap_or_else(|| format!("http://{addr}"));
    let client = connect_etcd(&config.etcd_endpoints, config.etcd_timeout).await?;
    let me = LeaderInfo {
        id: config.id.clone(),
        region: config.region.clone(),
        url: url.clone(),
    };
    let election = Election::new(me, config.lease_ttl);
    let store = Arc::new(EtcdStore::new(
        client.clone(),
        election.me().clone(),
        election.subscribe(),
        config.etcd_timeout,
    ));
    let app = Arc::new(App::new(
        store,
        config.kek.clone(),
        config.admin_token.expose(),
    ));

    let (shutdown, shutdown_rx) = watch::channel(false);
    let elector = EtcdElector::new(client.clone(), config.etcd_timeout);
    let election_task = tokio::spawn(election.clone().run(elector, shutdown_rx.clone()));
    let scraper = Scraper::new(config.cluster_secret.clone());
    let scrape_task = tokio::spawn(scraper.clone().run(app.store.clone(), shutdown_rx.clone()));
    let dash = Dash::new(
        app.clone(),
        scraper,
        Settings {
            admin_token: config.admin_token.expose(),
            cluster_secret: config.cluster_secret.as_ref().map(|s| s.expose()),
            cookie_secure: config.cookie_secure,
            session_ttl: config.session_ttl,
        },
    );
    let metrics = DnsMetrics::new();
    let dns = match config.dns.clone() {
        None => None,
        Some(dns_config) => {
            let (docs_tx, docs_rx) = watch::channel(Arc::default());
            let watch_task = tokio::spawn(watch_nodes(
                client.clone(),
                config.etcd_timeout,
                docs_tx,
                shutdown_rx.clone(),
            ));
            match crate::dns::start(dns_config, docs_rx, metrics.clone()).await {
                Ok(server) => Some((server, watch_task)),
                Err(e) => {
                    let _ = shutdown.send(true);
                    return Err(e);
                }
            }
        }
    };
    let dns_addr = dns.as_ref().map(|(s, _)| s.addr);
    let router = crate::api::router(app)
        .merge(crate::dashboard::router(dash))
        .merge(crate::dns::metrics_router(metrics.clone()));
    let mut http_shutdown = shutdown_rx;
    let http_task = tokio::spawn(async move {
        // The peer address feeds the dashboard's sign-in rate limit.
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        let serve = axum::serve(listener, service).with_graceful_shutdown(async move {
            let _ = http_shutdown.wait_for(|s| *s).await;
        });
        if let Err(e) = serve.await {
            tracing::error!(error = %e, "admin listener failed");
        }
    });
    tracing::info!(id = %config.id, region = %config.region, %addr, %url, "coordinator started");
    Ok(Running {
        addr,
        url,
        election,
        dns_addr,
        metrics,
        dns,
        shutdown,
        election_task,
        scrape_task,
        http_task,
    })
}

impl Running {
    /// Gives up leadership (revoking the lease so a standby takes over at once),
    /// then stops serving after in-flight requests finish.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        if let Some((server, watch_task)) = self.dns {
            server.shutdown().await;
            let _ = watch_task.await;
        }
        let _ = self.election_task.await;
        let _ = self.scrape_task.await;
        let _ = tokio::time::timeout(Duration::from_secs(5), self.http_task).await;
    }
}
