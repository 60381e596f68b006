//! A running node: binds the listeners, wires the shared state, and drains on request.
//! `run` adds the process concerns: SIGHUP reloads TLS, SIGTERM/SIGINT drain and exit,
//! and a second signal during the drain (or SIGQUIT) stops at once.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::accept::{self, TlsState};
use crate::cluster::config_watch::Applier;
use crate::cluster::etcd::EtcdStore;
use crate::cluster::membership;
use crate::cluster::store::{ClusterHandle, ClusterStore, Embedded, NodeCtx};
use crate::cluster::ClusterMetrics;
use crate::config::{Config, KeyMode};
use crate::error::{Error, Result};
use crate::forward::Upstream;
use crate::health::Health;
use crate::http1::server::NoFields;
use crate::http1::Reply;
use crate::metrics::Metrics;
use crate::proxy;
use crate::state::{RequestIds, Shared, Snapshot};
use crate::stream::DrainCut;

/// A started node. Dropping it does not drain it (call [`Node::drain`]): the public
/// listener's first event loop runs on until its runtime ends, the others stop at once.
pub struct Node {
    shared: Arc<Shared>,
    public_addr: SocketAddr,
    admin_addr: SocketAddr,
    tls: Option<Arc<TlsState>>,
    stop_public: watch::Sender<bool>,
    stop_admin: watch::Sender<bool>,
    public_task: JoinHandle<usize>,
    /// The public listener's other event loops, kept until the node is dropped.
    _public_loops: accept::loops::Loops,
    admin_task: JoinHandle<usize>,
    cluster: ClusterHandle,
    deferred: Option<crate::deferred::worker::Workers>,
    /// The upstream path's active probes (`forward::probe`), stopped after the drain.
    prober: JoinHandle<()>,
}

/// How long a starting node waits for its first etcd sync before it serves anyway
/// (from the disk snapshot or the file config), so a healthy cluster's config is in
/// force from the first request.
pub const INITIAL_SYNC_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// After the drain cut (at `limits.drain_timeout`, or at once on a forced stop): how long
/// the responses it ended get to write their last bytes and close their connections
/// before the process exits regardless.
pub const CUT_GRACE: Duration = Duration::from_secs(1);

impl Node {
    /// Binds both listeners and starts serving. Must run inside a Tokio runtime.
    pub async fn start(config: Config) -> Result<Node> {
        let config = Arc::new(config);
        let metrics = Metrics::new();
        let tls = match &config.tls {
            Some(t) => Some(Arc::new(TlsState::load(t)?)),
            None => None,
        };
        let upstream = Upstream::new(&config.upstream, config.event_loops(), &metrics)?;
        let limiter = Arc::new(crate::limits::Limiter::new(&config, &metrics.registry)?);
        limiter.connect().await;
        // Deferred delivery: not on a passthrough node alone, which cannot defer (it
        // would have to store the client's key) and so makes no spool directory.
        let deferral = if config.key_mode() != crate::config::KeyMode::Passthrough
            || config.cluster.is_some()
            || config.deferred.amqp_url.is_some()
        {
            Some(Arc::new(
                crate::defer::Deferral::open(&config, &metrics.registry).await?,
            ))
        } else {
            None
        };
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::new(&config)),
            config: config.clone(),
            upstream,
            metrics: metrics.clone(),
            health: Arc::new(Health::new()),
            request_ids: RequestIds::new(),
            limiter: limiter.clone(),
            drain_cut: Arc::new(DrainCut::default()),
            body_budget: crate::admit::budget::BodyBudget::new(
                config.limits.max_inflight_body_bytes,
                &metrics,
            ),
            deferral,
            relay: crate::relay::Relays::new(&config, &metrics)?,
        });

        shared
            .health
            .upstream
            .circuit
            .set_threshold(config.health.failure_threshold);
        // Path health with or without traffic: `/readyz` and the node record follow
        // the probes' verdict within one interval.
        let prober = {
            let s = shared.clone();
            tokio::spawn(async move {
                let probes = crate::forward::probe::run(
                    &s.upstream,
                    &s.health.upstream,
                    &s.metrics,
                    &s.config.health,
                );
                // Our round trips to the relay candidates, beside the direct path's.
                let peers = async {
                    match &s.relay {
                        Some(relay) if s.config.cluster.is_some() => {
                            relay
                                .measure(&s.health.cluster, &s.health.upstream, &s.config.health)
                                .await
                        }
                        _ => std::future::pending().await,
                    }
                };
                tokio::join!(probes, peers);
            })
        };

        // Cluster mode: serve the last good config from disk until etcd answers.
        let applier = match &config.cluster {
            Some(c) => {
                let node_id = membership::resolve_node_id(c.node_id.as_deref(), &c.state_dir)?;
                shared.health.cluster.enabled.store(true, Ordering::Relaxed);
                let applier = Applier {
                    shared: shared.clone(),
                    metrics: ClusterMetrics::register(&metrics.registry),
                    kek: c.kek.clone(),
                    region: c.region.clone(),
                    node_id,
                    state_dir: c.state_dir.clone(),
                };
                applier.load_from_disk();
                Some(applier)
            }
            None => None,
        };

        let public = bind(config.public_listen, "listen.public", config.event_loops())?;
        let event_loops = public.len();
        let admin = bind(config.admin_listen, "listen.admin", 1)?;
        let admin = admin
            .into_iter()
            .next()
            .map(TcpListener::from_std)
            .transpose()
            .map_err(|e| Error::config("admin listener").with_detail(e))?
            .ok_or_else(|| Error::config("admin listener: no socket"))?;
        let public_addr = public[0]
            .local_addr()
            .map_err(|e| Error::config("public listener").with_detail(e))?;
        let admin_addr = admin
            .local_addr()
            .map_err(|e| Error::config("admin listener").with_detail(e))?;

        let (store, node_id): (Box<dyn ClusterStore>, Option<String>) =
            match (applier, &config.cluster) {
                (Some(applier), Some(c)) => {
                    let id = applier.node_id.clone();
                    (
                        Box::new(EtcdStore {
                            endpoints: c.etcd.clone(),
                            lease_ttl: c.lease_ttl,
                            applier,
                        }),
                        Some(id),
                    )
                }
                _ => (Box::new(Embedded), None),
            };
        let mut cluster = store.start(NodeCtx {
            shared: shared.clone(),
            public_addr,
            admin_addr,
        });
        if !cluster.wait_first_sync(INITIAL_SYNC_WAIT).await {
            tracing::warn!(
                "etcd did not answer within {INITIAL_SYNC_WAIT:?}; serving without it for now"
            );
        }

        let deferred = shared.deferral.as_ref().map(|deferral| {
            let holder = node_id
                .clone()
                .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
            crate::deferred::worker::spawn(shared.clone(), deferral.clone(), holder)
        });

        let (stop_public, stop_public_rx) = watch::channel(false);
        let (stop_admin, stop_admin_rx) = watch::channel(false);
        let http = Arc::new(accept::http_settings(&config.limits, &metrics));

        let s = shared.clone();
        // The node cuts what is still running at `drain_timeout` itself (`drain`); the
        // accept loop then waits CUT_GRACE more for the cut connections to close.
        let mut public_limits = config.limits.clone();
        public_limits.drain_timeout += CUT_GRACE;
        let (public_loops, public_task) = accept::loops::serve_on_loops(
            public,
            accept::Listening::new(
                tls.clone(),
                http.clone(),
                public_limits,
                metrics.clone(),
                stop_public_rx,
            ),
            move |req, peer| proxy::handle(s.clone(), req, peer),
        )
        .map_err(|e| Error::config("cannot start the event loops").with_detail(e))?;
        let s = shared.clone();
        let mut admin_limits = config.limits.clone();
        admin_limits.max_connections = 256;
        admin_limits.drain_timeout = std::time::Duration::from_secs(1);
        let admin_task = tokio::spawn(accept::serve(
            admin,
            accept::Listening::new(None, http, admin_limits, metrics, stop_admin_rx),
            move |req, _peer| {
                let s = s.clone();
                async move { Reply::<_, NoFields>::new(crate::admin::handle(&s, req)) }
            },
        ));

        let snap = shared.snapshot.load();
        let mode = match snap.auth.mode() {
            KeyMode::Managed => "managed",
            KeyMode::Anonymous => "anonymous",
            KeyMode::Passthrough => "passthrough",
        };
        tracing::info!(
            public = %public_addr,
            admin = %admin_addr,
            event_loops,
            tls = tls.is_some(),
            upstream = %config.upstream.target.authority,
            mode,
            upstream_keys = snap.upstream_key_count(),
            client_keys = snap.auth.key_count(),
            region = config.cluster.as_ref().map(|c| c.region.as_str()),
            node_id = node_id.as_deref(),
            config_revision = snap.revision,
            limiter = match limiter.mode() {
                None => "in process",
                Some(crate::config::LimitMode::Exact) => "redis exact",
                Some(crate::config::LimitMode::Leased) => "redis leased",
            },
            "strait-node listening"
        );
        drop(snap);
        Ok(Node {
            shared,
            public_addr,
            admin_addr,
            tls,
            stop_public,
            stop_admin,
            public_task,
            _public_loops: public_loops,
            admin_task,
            cluster,
            deferred,
            prober,
        })
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Re-reads the TLS certificate and key; open connections are not touched.
    /// Whether the public listener speaks TLS.
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn reload_tls(&self) -> Result<()> {
        match &self.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Graceful stop: `/readyz` turns to fail, the public listener stops accepting,
    /// in-flight requests and streams get up to `limits.drain_timeout`, then the admin
    /// listener closes. At the deadline the responses still being relayed are cut (an
    /// event stream ends with an `overloaded_error` event, "node shutting down"; other
    /// bodies are aborted) and get [`CUT_GRACE`] to be written. Returns how many were
    /// cut: the responses ended, plus connections still open after the grace (a request
    /// still waiting for its upstream's answer, a client not reading).
    pub async fn drain(self) -> usize {
        self.shared.health.draining.store(true, Ordering::Relaxed);
        self.shared.metrics.draining.set(1);
        // The node record says `draining` while in-flight requests finish.
        self.shared.health.cluster.record_changed.notify_one();
        tracing::info!("draining: no new connections; waiting for in-flight requests");
        let _ = self.stop_public.send(true);
        let mut public = self.public_task;
        let until = tokio::time::Instant::now() + self.shared.config.limits.drain_timeout;
        let deadline = tokio::time::sleep_until(until);
        let left = tokio::select! {
            left = &mut public => left.unwrap_or(0),
            () = deadline => {
                tracing::warn!("drain deadline passed: ending the responses still in flight");
                self.shared.drain_cut.fire();
                public.await.unwrap_or(0)
            }
        };
        // Deferred deliveries already under way finish too (no new ones start while
        // draining): one cut after it was sent would end as `outcome_unknown`.
        if let Some(d) = &self.shared.deferral {
            while d.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        if let Some(workers) = self.deferred {
            workers.stop();
        }
        let cut = self.shared.drain_cut.ended() + left;
        self.prober.abort();
        // A clean stop deletes the record rather than letting the lease expire.
        self.cluster.stop(std::time::Duration::from_secs(3)).await;
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        tracing::info!(cut, "drained");
        cut
    }
}

/// `count` listening sockets on `addr` ([`accept::loops::bind`]), the error naming
/// the config field.
fn bind(addr: SocketAddr, field: &str, count: usize) -> Result<Vec<std::net::TcpListener>> {
    accept::loops::bind(addr, count)
        .map_err(|e| Error::config(format!("{field}: cannot listen on {addr}: {e}")))
}

/// A signal that stops the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Term,
    Int,
    Quit,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Term => "SIGTERM",
            Signal::Int => "SIGINT",
            Signal::Quit => "SIGQUIT",
        }
    }

    /// The signal's number (the same on Linux and the BSDs).
    pub fn number(self) -> u8 {
        match self {
            Signal::Term => 15,
            Signal::Int => 2,
            Signal::Quit => 3,
        }
    }
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// The drain ran its course (whatever was left at `limits.drain_timeout` was cut).
    Drained,
    /// Told to stop at once by this signal.
    Forced(Signal),
}

impl Stopped {
    /// 0 after a drain; 128 + the signal's number after a forced stop (130 SIGINT, 131
    /// SIGQUIT, 143 SIGTERM), as a shell reports a process the signal ended.
    pub fn exit_code(self) -> u8 {
        match self {
            Stopped::Drained => 0,
            Stopped::Forced(s) => 128 + s.number(),
        }
    }
}

/// Runs a node until a signal. SIGTERM (what Kubernetes and systemd send) and SIGINT
/// drain; during the drain a second SIGTERM, or SIGINT or SIGQUIT, stops at once: what
/// is still in flight is cut as at the drain deadline, given [`CUT_GRACE`], and the
/// process exits. SIGQUIT stops at once at any time. SIGHUP reloads TLS certificates.
pub async fn run(config: Config) -> Result<Stopped> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = |kind| signal(kind).map_err(|e| Error::config("signals").with_detail(e));
    let mut term = listen(SignalKind::terminate())?;
    let mut int = listen(SignalKind::interrupt())?;
    let mut quit = listen(SignalKind::quit())?;
    let mut hup = listen(SignalKind::hangup())?;
    let node = Node::start(config).await?;
    let first = loop {
        tokio::select! {
            _ = term.recv() => break Signal::Term,
            _ = int.recv() => break Signal::Int,
            _ = quit.recv() => break Signal::Quit,
            _ = hup.recv() => match node.reload_tls() {
                Ok(()) if node.serves_tls() => tracing::info!("SIGHUP: TLS certificate reloaded"),
                Ok(()) => tracing::info!("SIGHUP: no TLS configured, nothing to reload"),
                Err(e) => tracing::error!("SIGHUP: TLS reload failed, keeping the old certificate: {e}"),
            },
        }
    };
    let cut = node.shared().drain_cut.clone();
    let drain = node.drain();
    tokio::pin!(drain);
    let forced = if first == Signal::Quit {
        first
    } else {
        tracing::info!(
            signal = first.name(),
            "stop requested: draining (a second SIGTERM, or SIGINT or SIGQUIT, stops at once)"
        );
        loop {
            tokio::select! {
                _ = &mut drain => return Ok(Stopped::Drained),
                _ = term.recv() => break Signal::Term,
                _ = int.recv() => break Signal::Int,
                _ = quit.recv() => break Signal::Quit,
                _ = hup.recv() => tracing::info!("SIGHUP: ignored while draining"),
            }
        }
    };
    tracing::warn!(
        signal = forced.name(),
        "stopping at once: responses still in flight are cut"
    );
    cut.fire();
    if tokio::time::timeout(CUT_GRACE, &mut drain).await.is_err() {
        tracing::warn!(grace = ?CUT_GRACE, "stopped with connections still open after the grace");
    }
    Ok(Stopped::Forced(forced))
}
