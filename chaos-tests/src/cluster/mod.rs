//! A whole Strait cluster on loopback for chaos runs: etcd (one or three members), Redis,
//! one RabbitMQ broker per region, regions x nodes (`strait-node` processes, each on its
//! own 127.0.0.x address and one shared port, since DNS answers carry no port), two
//! coordinators serving the smart DNS, the mock upstream, and a fault proxy in front of
//! every region's upstream path and before etcd, Redis and each broker. Every process is
//! the harness's child and is stopped by its PID when the [`Cluster`] is dropped.
//!
//! # Layout
//! - `procs.rs`: child processes, signals, `/proc` usage, etcd members, Redis.
//! - `dns.rs`: the stub DNS client the workload resolves with.
//! - `workload.rs`: the client workload and what each request's outcome was.
//! - `scenario.rs`: the fault scenarios, the count, and the verdict.

pub mod dns;
pub mod procs;
pub mod scenario;
pub mod workload;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::faultproxy::{FaultProxy, FaultProxyHandle};
use crate::mock::{MockConfig, MockHandle, MockUpstream, Pacing};
use crate::process::Captured;
use crate::rabbitmq::RabbitMq;
use procs::{free_port, EtcdMember, RedisServer, Usage};

/// The KEK nodes and coordinators share (a test value; nothing is sealed with it here).
pub const KEK_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// The cluster secret: signs relayed requests between regions.
pub const CLUSTER_SECRET: &str = "chaos-cluster-secret-0123456789";
/// The coordinators' admin token.
pub const ADMIN_TOKEN: &str = "chaos-admin-token-0123456789abcdef";
/// The name the coordinators' DNS serves.
pub const DNS_NAME: &str = "api.chaos.test";

/// A client key of the workload.
#[derive(Clone, Debug)]
pub struct ClientKey {
    /// Its configured name (limits are kept by name).
    pub name: String,
    /// The key the client sends.
    pub key: String,
    /// Requests per minute, if limited.
    pub rpm: Option<u64>,
}

/// What to start.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub regions: usize,
    pub nodes_per_region: usize,
    pub etcd_members: usize,
    pub coordinators: usize,
    /// The `strait-node` binary.
    pub node_bin: PathBuf,
    /// The `strait-coordinator` binary.
    pub coordinator_bin: PathBuf,
    pub keys: Vec<ClientKey>,
    /// Node lease TTL in etcd (how fast a dead node leaves DNS).
    pub lease_ttl: Duration,
    /// DNS answer TTL.
    pub dns_ttl: Duration,
    /// The limiter on a three-master Redis Cluster (direct, no fault proxy: the cluster's
    /// slot map announces the masters' own ports) instead of the single Redis, which
    /// keeps the deferred results either way.
    pub redis_cluster: bool,
    /// Region r1's broker is a three-node RabbitMQ cluster (its quorum queue replicated
    /// to all three); the region's broker proxy points at the first member.
    pub broker_cluster: bool,
}

impl ClusterSpec {
    /// Three regions of two nodes, three etcd members, two coordinators, three keys
    /// (two unlimited, one at `limited_rpm` requests per minute).
    pub fn standard(node_bin: PathBuf, coordinator_bin: PathBuf, limited_rpm: u64) -> ClusterSpec {
        ClusterSpec {
            regions: 3,
            nodes_per_region: 2,
            etcd_members: 3,
            coordinators: 2,
            node_bin,
            coordinator_bin,
            keys: vec![
                ClientKey {
                    name: "team-a".into(),
                    key: "sk-strait-chaos-team-a-0001".into(),
                    rpm: None,
                },
                ClientKey {
                    name: "team-b".into(),
                    key: "sk-strait-chaos-team-b-0002".into(),
                    rpm: None,
                },
                ClientKey {
                    name: "limited".into(),
                    key: "sk-strait-chaos-limited-0003".into(),
                    rpm: Some(limited_rpm),
                },
            ],
            lease_ttl: Duration::from_secs(3),
            dns_ttl: Duration::from_secs(1),
            redis_cluster: false,
            broker_cluster: false,
        }
    }
}

/// Finds a binary of this workspace: `$ENV` if set, else next to the running executable
/// (or one folder up, for a test binary under `deps/`).
pub fn locate_binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return candidate;
        }
        dir = d.parent().map(Path::to_path_buf);
        if dir.as_ref().is_some_and(|d| d.join("Cargo.toml").exists()) {
            break;
        }
    }
    panic!(
        "{name} not found next to {} (build it with `cargo build -p {name}` or set {env})",
        exe.display()
    )
}

/// One `strait-node` process of the cluster.
pub struct Node {
    pub id: String,
    pub region: String,
    pub ip: Ipv4Addr,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    config: PathBuf,
    bin: PathBuf,
    upstream_key: String,
    proc: Option<Captured>,
}

impl Node {
    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("--config")
            .arg(&self.config)
            .env("STRAIT_KEK", KEK_HEX)
            .env("STRAIT_CLUSTER_SECRET", CLUSTER_SECRET)
            .env("STRAIT_UPSTREAM_KEYS", &self.upstream_key)
            .env_remove("STRAIT_CLIENT_KEYS")
            .env_remove("STRAIT_AMQP_URL")
            .env_remove("RUST_LOG");
        let (proc, _) =
            Captured::spawn_until(&mut cmd, "strait-node listening", Duration::from_secs(30));
        self.proc = Some(proc);
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    pub fn running(&mut self) -> bool {
        self.proc
            .as_mut()
            .is_some_and(|p| matches!(p.child.try_wait(), Ok(None)))
    }

    /// SIGKILL, no goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERM (drain) and wait for the exit; returns the exit code.
    pub fn term(&mut self, limit: Duration) -> Option<i32> {
        let mut p = self.proc.take()?;
        procs::signal(p.child.id(), "-TERM");
        let deadline = std::time::Instant::now() + limit;
        loop {
            match p.child.try_wait() {
                Ok(Some(s)) => return s.code(),
                Ok(None) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                _ => {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    return None;
                }
            }
        }
    }

    /// Starts the node again with the same config, address and state directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn sigstop(&self) -> bool {
        self.pid().is_some_and(|p| procs::signal(p, "-STOP"))
    }

    pub fn sigcont(&self) -> bool {
        self.pid().is_some_and(|p| procs::signal(p, "-CONT"))
    }

    pub fn usage(&self) -> Option<Usage> {
        procs::usage(self.pid()?)
    }

    /// Everything the process printed (for a failure report).
    pub fn log(&self) -> String {
        self.proc.as_ref().map(Captured::log).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigcont();
        self.kill9();
    }
}

/// One region: its nodes, its broker, and the fault proxies on its paths.
pub struct Region {
    pub name: String,
    /// The upstream (Anthropic) key its nodes use; the mock's per-key faults hit only it.
    pub upstream_key: String,
    pub nodes: Vec<Node>,
    pub broker: RabbitMq,
    /// The other members when the region's broker is a cluster.
    pub broker_peers: Vec<RabbitMq>,
    /// Between the region's nodes and the upstream.
    pub upstream_proxy: FaultProxyHandle,
    /// Between the region's nodes and each etcd member.
    pub etcd_proxies: Vec<FaultProxyHandle>,
    /// Between the region's nodes and Redis.
    pub redis_proxy: FaultProxyHandle,
    /// Between the region's nodes and its broker.
    pub broker_proxy: FaultProxyHandle,
}

/// A coordinator process with its DNS listener.
pub struct Coordinator {
    pub id: String,
    pub url: String,
    pub dns: SocketAddr,
    proc: Option<Captured>,
    cmd_args: Vec<String>,
    bin: PathBuf,
}

impl Coordinator {
    fn spawn(&mut self) {
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.cmd_args)
            .env("STRAIT_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("STRAIT_KEK", KEK_HEX)
            .env("STRAIT_CLUSTER_SECRET", CLUSTER_SECRET)
            .env_remove("STRAIT_ETCD_ENDPOINTS");
        let (proc, line) = Captured::spawn_until(
            &mut cmd,
            "strait-coordinator listening",
            Duration::from_secs(30),
        );
        self.url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        self.proc = Some(proc);
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The running cluster. Dropping it stops every process it started.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub mock: MockHandle,
    pub etcd: Vec<EtcdMember>,
    pub redis: RedisServer,
    /// The limiter's Redis Cluster masters when [`ClusterSpec::redis_cluster`] is set.
    pub redis_masters: Vec<RedisServer>,
    pub regions: Vec<Region>,
    pub coordinators: Vec<Coordinator>,
    /// The port every node's public listener uses (on its own address).
    pub public_port: u16,
    dir: tempfile::TempDir,
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// A port free on every address in `ips` (A records carry no port, so all public
/// listeners share one).
fn port_free_on(ips: &[Ipv4Addr]) -> u16 {
    for _ in 0..50 {
        let p = free_port();
        let ok = ips
            .iter()
            .all(|ip| std::net::TcpListener::bind(SocketAddr::from((*ip, p))).is_ok());
        if ok {
            return p;
        }
    }
    panic!("no port free on all of {ips:?}")
}

impl Cluster {
    /// Starts everything and waits until every node is listening and registered. Panics
    /// with a clear message when a service cannot start. Needs a multi-threaded runtime
    /// (brokers start on blocking threads, in parallel).
    pub async fn start(spec: ClusterSpec) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("strait-chaos-")
            .tempdir()
            .unwrap_or_else(|e| panic!("temp dir: {e}"));
        // Brokers first: they are the slowest (about 5 s each), so they start in
        // parallel while the rest comes up.
        let brokers: Vec<_> = (0..spec.regions)
            .map(|r| {
                let clustered = r == 0 && spec.broker_cluster;
                tokio::task::spawn_blocking(move || {
                    if clustered {
                        RabbitMq::start_cluster(3)
                    } else {
                        vec![RabbitMq::start()]
                    }
                })
            })
            .collect();
        let etcd = {
            let d = dir.path().join("etcd");
            let n = spec.etcd_members;
            tokio::task::spawn_blocking(move || procs::start_etcd(&d, n))
                .await
                .unwrap_or_else(|e| panic!("etcd start: {e}"))
        };
        let redis = RedisServer::start(&dir.path().join("redis"));
        let redis_masters = if spec.redis_cluster {
            let d = dir.path().join("redis-cluster");
            tokio::task::spawn_blocking(move || procs::start_redis_cluster(&d))
                .await
                .unwrap_or_else(|e| panic!("Redis Cluster start: {e}"))
        } else {
            Vec::new()
        };
        let limiter_redis: Option<String> = (!redis_masters.is_empty()).then(|| {
            redis_masters
                .iter()
                .map(|m| format!("redis://127.0.0.1:{}/", m.port))
                .collect::<Vec<_>>()
                .join(",")
        });
        let mock = MockUpstream::start(MockConfig {
            record: false,
            // Streams last about half a second: long enough to be cut by a fault.
            pacing: Pacing {
                ttft: Duration::from_millis(50),
                interval: Duration::from_millis(40),
                tokens: 20,
            },
            ..MockConfig::default()
        })
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"));

        let ips: Vec<Vec<Ipv4Addr>> = (0..spec.regions)
            .map(|r| {
                (0..spec.nodes_per_region)
                    .map(|n| Ipv4Addr::new(127, 0, 0, (10 * (r + 1) + n + 1) as u8))
                    .collect()
            })
            .collect();
        let all_ips: Vec<Ipv4Addr> = ips.iter().flatten().copied().collect();
        let public_port = port_free_on(&all_ips);
        let admin_port = port_free_on(&all_ips);

        let mut regions = Vec::new();
        for (r, broker) in brokers.into_iter().enumerate() {
            let mut members = broker
                .await
                .unwrap_or_else(|e| panic!("RabbitMQ broker of region {r} did not start: {e}"));
            let broker = members.remove(0);
            let broker_peers = members;
            let name = format!("r{}", r + 1);
            let upstream_key = format!("sk-ant-chaos-{name}-upstream");
            let proxy = |addr: SocketAddr| async move {
                FaultProxy::start(addr)
                    .await
                    .unwrap_or_else(|e| panic!("fault proxy: {e}"))
            };
            let upstream_proxy = proxy(mock.addr()).await;
            let mut etcd_proxies = Vec::new();
            for m in &etcd {
                etcd_proxies.push(proxy(SocketAddr::from(([127, 0, 0, 1], m.client_port))).await);
            }
            let redis_proxy = proxy(SocketAddr::from(([127, 0, 0, 1], redis.port))).await;
            let broker_proxy = proxy(SocketAddr::from(([127, 0, 0, 1], broker.port))).await;
            let mut nodes = Vec::new();
            for (n, ip) in ips[r].iter().enumerate() {
                let id = format!("{name}-n{}", n + 1);
                let state = dir.path().join(format!("state-{id}"));
                std::fs::create_dir_all(&state).unwrap_or_else(|e| panic!("state dir: {e}"));
                let config = dir.path().join(format!("{id}.toml"));
                let text = node_config(
                    &spec,
                    &name,
                    &id,
                    SocketAddr::from((*ip, public_port)),
                    SocketAddr::from((*ip, admin_port)),
                    &upstream_proxy,
                    &etcd_proxies,
                    &redis_proxy,
                    &broker_proxy,
                    limiter_redis.as_deref(),
                    &state,
                );
                std::fs::write(&config, text).unwrap_or_else(|e| panic!("node config: {e}"));
                nodes.push(Node {
                    id,
                    region: name.clone(),
                    ip: *ip,
                    public: SocketAddr::from((*ip, public_port)),
                    admin: SocketAddr::from((*ip, admin_port)),
                    config,
                    bin: spec.node_bin.clone(),
                    upstream_key: upstream_key.clone(),
                    proc: None,
                });
            }
            regions.push(Region {
                name,
                upstream_key,
                nodes,
                broker,
                broker_peers,
                upstream_proxy,
                etcd_proxies,
                redis_proxy,
                broker_proxy,
            });
        }
        // Nodes start one at a time on blocking threads: each waits up to 3 s for etcd's
        // first sync, and two cores are shared with the brokers.
        for region in &mut regions {
            for node in &mut region.nodes {
                tokio::task::block_in_place(|| node.spawn());
            }
        }
        let endpoints: Vec<String> = etcd.iter().map(EtcdMember::endpoint).collect();
        let mut coordinators = Vec::new();
        for c in 0..spec.coordinators {
            let id = format!("coord-{}", c + 1);
            let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let region = format!("r{}", c % spec.regions.max(1) + 1);
            let args = vec![
                "serve".to_string(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--etcd".into(),
                endpoints.join(","),
                "--id".into(),
                id.clone(),
                "--region".into(),
                region,
                "--lease-ttl".into(),
                "2s".into(),
                "--log-level".into(),
                "warn".into(),
                "--dns-listen".into(),
                dns.to_string(),
                "--dns-name".into(),
                DNS_NAME.into(),
                "--dns-ttl".into(),
                format!("{}s", spec.dns_ttl.as_secs().max(1)),
            ];
            let mut coord = Coordinator {
                id,
                url: String::new(),
                dns,
                proc: None,
                cmd_args: args,
                bin: spec.coordinator_bin.clone(),
            };
            tokio::task::block_in_place(|| coord.spawn());
            coordinators.push(coord);
        }
        let cluster = Cluster {
            spec,
            mock,
            etcd,
            redis,
            redis_masters,
            regions,
            coordinators,
            public_port,
            dir,
        };
        cluster.wait_all_in_dns(Duration::from_secs(30)).await;
        cluster
    }

    /// Every node address DNS should hold when all is well.
    pub fn all_ips(&self) -> Vec<Ipv4Addr> {
        self.regions
            .iter()
            .flat_map(|r| r.nodes.iter().map(|n| n.ip))
            .collect()
    }

    pub fn dns_servers(&self) -> Vec<SocketAddr> {
        self.coordinators.iter().map(|c| c.dns).collect()
    }

    pub fn etcd_endpoints(&self) -> Vec<String> {
        self.etcd.iter().map(EtcdMember::endpoint).collect()
    }

    /// Waits until DNS answers with every node (registered, serving, ready).
    pub async fn wait_all_in_dns(&self, limit: Duration) {
        let want = self.all_ips();
        let deadline = tokio::time::Instant::now() + limit;
        let mut last = None;
        while tokio::time::Instant::now() < deadline {
            let got = dns::resolve_any(&self.dns_servers(), DNS_NAME).await;
            if got
                .as_ref()
                .is_some_and(|ips| want.iter().all(|w| ips.contains(w)))
            {
                return;
            }
            last = got;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "DNS did not list every node within {limit:?}: wanted {want:?}, last answer {last:?}"
        );
    }

    pub fn node(&self, id: &str) -> &Node {
        self.regions
            .iter()
            .flat_map(|r| r.nodes.iter())
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    pub fn node_mut(&mut self, id: &str) -> &mut Node {
        self.regions
            .iter_mut()
            .flat_map(|r| r.nodes.iter_mut())
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Resident memory and descriptors of every running node, by id.
    pub fn usage(&self) -> Vec<(String, Option<Usage>)> {
        self.regions
            .iter()
            .flat_map(|r| r.nodes.iter())
            .map(|n| (n.id.clone(), n.usage()))
            .collect()
    }

    /// Lifts every proxy fault and mock fault.
    pub fn heal_all(&self) {
        self.mock.clear_key_faults();
        self.mock.clear_queued_faults();
        for r in &self.regions {
            r.upstream_proxy.heal();
            r.redis_proxy.heal();
            r.broker_proxy.heal();
            for p in &r.etcd_proxies {
                p.heal();
            }
        }
    }

    /// Where the run's files (configs, etcd logs) are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The id of the coordinator that currently leads, asked through a write-free read of
    /// the election key in etcd.
    pub fn coordinator_leader(&self) -> Option<usize> {
        let out = Command::new(procs::which("etcdctl")?)
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.etcd_endpoints().join(",")))
            .args([
                "get",
                "--prefix",
                "/strait/election/coordinator",
                "--sort-by=CREATE",
                "--order=ASCEND",
                "--print-value-only",
            ])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let first = text.lines().find(|l| !l.trim().is_empty())?;
        self.coordinators.iter().position(|c| first.contains(&c.id))
    }

    /// Stops every node (SIGKILL), coordinator, broker, Redis and etcd member, by PID.
    pub fn teardown(self) {
        drop(self);
    }
}

#[allow(clippy::too_many_arguments)]
fn node_config(
    spec: &ClusterSpec,
    region: &str,
    id: &str,
    public: SocketAddr,
    admin: SocketAddr,
    upstream: &FaultProxyHandle,
    etcd: &[FaultProxyHandle],
    redis: &FaultProxyHandle,
    broker: &FaultProxyHandle,
    limiter_redis: Option<&str>,
    state: &Path,
) -> String {
    use std::fmt::Write;
    let mut keys = String::new();
    for k in &spec.keys {
        let _ = writeln!(keys, "[[auth.client_keys]]");
        let _ = writeln!(keys, "name = {:?}", k.name);
        let _ = writeln!(keys, "sha256 = {:?}", sha256_hex(&k.key));
        if let Some(rpm) = k.rpm {
            let _ = writeln!(keys, "limits = {{ rpm = {rpm} }}");
        }
    }
    let etcd: Vec<String> = etcd
        .iter()
        .map(|p| format!("{:?}", format!("http://{}", p.addr())))
        .collect();
    format!(
        r#"# strait-chaos: node {id} of region {region}
[listen]
public = "{public}"
admin = "{admin}"

[limits]
drain_timeout = "5s"

[upstream]
base_url = "http://{upstream}"
connect_timeout = "1s"
read_timeout = "10s"
stream_idle_timeout = "5s"
max_attempts = 3

[auth]
{keys}
[redis]
url = "{limiter}"
cluster = {cluster}
mode = "leased"
expected_nodes = {nodes}

[log]
format = "json"
level = "info"
access_log = false

[cluster]
etcd = [{etcd}]
region = "{region}"
node_id = "{id}"
lease_ttl = "{ttl}s"
state_dir = "{state}"

[deferred]
amqp_url = "amqp://guest:guest@{broker}/%2f"
redis = "redis://{redis}/"
claim_lease = "5s"
confirm_timeout = "3s"

[health]
probe_interval = "1s"
probe_timeout = "500ms"
failure_threshold = 2
"#,
        upstream = upstream.addr(),
        redis = redis.addr(),
        limiter = limiter_redis.map_or_else(|| format!("redis://{}/", redis.addr()), str::to_owned),
        cluster = limiter_redis.is_some(),
        broker = broker.addr(),
        etcd = etcd.join(", "),
        nodes = spec.regions * spec.nodes_per_region,
        ttl = spec.lease_ttl.as_secs().max(2),
        state = state.display(),
    )
}
