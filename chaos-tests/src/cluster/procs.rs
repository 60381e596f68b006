//! The cluster's processes: a child started by the harness and stopped by its PID, with
//! signals (SIGKILL, SIGTERM, SIGSTOP, SIGCONT) and its memory and descriptors read from
//! `/proc`; etcd members and a Redis server built on it.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (closed again at once; a race with another process is
/// possible but rare on a test machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// Finds `name` on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Sends `sig` (`-STOP`, `-CONT`, `-TERM`, `-9`) to `pid` with the `kill` command (the
/// crate has no `unsafe`, so no libc). Returns whether it was delivered.
pub fn signal(pid: u32, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Resident memory (kB) and open descriptors of a process, from `/proc`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub rss_kb: u64,
    pub fds: u64,
}

/// `None` once the process is gone.
pub fn usage(pid: u32) -> Option<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    Some(Usage { rss_kb, fds })
}

/// Waits until something listens on `addr`, or panics naming `what` after `limit`.
pub fn wait_port(addr: &str, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr} within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed (SIGKILL, then reaped) on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn new(name: &str, child: Child) -> Proc {
        Proc {
            child: Some(child),
            name: name.to_string(),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (a stopped process counts as running).
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A stopped process dies of SIGKILL too; CONT first is not needed.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then waits up to `limit` for the exit (SIGKILL after that). Returns the
    /// exit code when it exited on its own.
    pub fn term(&mut self, limit: Duration) -> Option<i32> {
        let mut c = self.child.take()?;
        signal(c.id(), "-TERM");
        let deadline = Instant::now() + limit;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => return status.code(),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(25))
                }
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    return None;
                }
            }
        }
    }

    pub fn stop_signal(&self) -> bool {
        self.pid().is_some_and(|p| signal(p, "-STOP"))
    }

    pub fn cont_signal(&self) -> bool {
        self.pid().is_some_and(|p| signal(p, "-CONT"))
    }

    pub fn usage(&self) -> Option<Usage> {
        usage(self.pid()?)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = self.pid() {
            // A SIGSTOPped child still dies of SIGKILL, but CONT keeps its output readers
            // from hanging on a half-written line.
            signal(pid, "-CONT");
        }
        self.kill9();
    }
}

/// One etcd member of the cluster.
pub struct EtcdMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    initial_cluster: String,
    dir: PathBuf,
    pub proc: Proc,
}

impl EtcdMember {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&self, state: &str) -> Proc {
        let bin = which("etcd").unwrap_or_else(|| {
            panic!("etcd is not installed: the chaos cluster needs a real etcd (Debian: apt-get install etcd-server etcd-client)")
        });
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.name)))
            .unwrap_or_else(|e| panic!("etcd log file: {e}"));
        let child = Command::new(bin)
            .args(["--name", &self.name, "--data-dir"])
            .arg(self.dir.join(&self.name))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "strait-chaos"])
            .args(["--logger=zap", "--log-outputs=stderr"])
            // Loopback round trips are sub-millisecond: elect a new leader fast.
            .args(["--heartbeat-interval", "100", "--election-timeout", "1000"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run etcd: {e}"));
        Proc::new(&self.name, child)
    }

    /// Starts the member again on its data directory (after a kill).
    pub fn restart(&mut self) {
        self.proc.kill9();
        self.proc = self.spawn("existing");
    }
}

/// Starts `members` etcd members as one cluster in `dir` and waits until every one
/// answers `etcdctl endpoint health`.
pub fn start_etcd(dir: &Path, members: usize) -> Vec<EtcdMember> {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let ports: Vec<(u16, u16)> = (0..members).map(|_| (free_port(), free_port())).collect();
    let initial_cluster = ports
        .iter()
        .enumerate()
        .map(|(i, (_, p))| format!("e{}=http://127.0.0.1:{p}", i + 1))
        .collect::<Vec<_>>()
        .join(",");
    let mut out = Vec::new();
    for (i, (c, p)) in ports.into_iter().enumerate() {
        let mut m = EtcdMember {
            name: format!("e{}", i + 1),
            client_port: c,
            peer_port: p,
            initial_cluster: initial_cluster.clone(),
            dir: dir.to_path_buf(),
            proc: Proc {
                child: None,
                name: String::new(),
            },
        };
        m.proc = m.spawn("new");
        out.push(m);
    }
    let endpoints: Vec<String> = out.iter().map(EtcdMember::endpoint).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if etcd_healthy(&endpoints) {
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "etcd ({members} members) did not become healthy within 30 s; logs in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn etcdctl(endpoints: &[String], args: &[&str]) -> Option<String> {
    let out = Command::new(which("etcdctl")?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg("--command-timeout=2s")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether every endpoint answers a health check.
pub fn etcd_healthy(endpoints: &[String]) -> bool {
    etcdctl(endpoints, &["endpoint", "health"]).is_some()
}

/// The index (in `endpoints`) of the current leader, asking every member.
pub fn etcd_leader(endpoints: &[String]) -> Option<usize> {
    let text = etcdctl(endpoints, &["endpoint", "status", "-w", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let rows = v.as_array()?;
    rows.iter().enumerate().find_map(|(i, row)| {
        let status = &row["Status"];
        let me = status["header"]["member_id"].as_u64()?;
        (status["leader"].as_u64()? == me).then_some(i)
    })
}

/// A Redis server on a fixed port, restartable on the same port and data (AOF, fsync
/// on every write, no eviction: what docs/deferred.md asks of the results store).
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    pub proc: Proc,
}

impl RedisServer {
    pub fn start(dir: &Path) -> RedisServer {
        RedisServer::start_with(dir, &[])
    }

    /// As [`RedisServer::start`], with more `redis-server` arguments.
    pub fn start_with(dir: &Path, extra: &[&str]) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            dir: dir.to_path_buf(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            proc: Proc {
                child: None,
                name: String::new(),
            },
        };
        r.spawn();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn spawn(&mut self) {
        let bin = which("redis-server").unwrap_or_else(|| {
            panic!("redis-server is not installed: the chaos cluster needs a real Redis (Debian: apt-get install redis-server)")
        });
        std::fs::create_dir_all(&self.dir).unwrap_or_else(|e| panic!("redis dir: {e}"));
        let child = Command::new(bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--maxmemory-policy", "noeviction"])
            .args(&self.extra)
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run redis-server: {e}"));
        self.proc = Proc::new("redis", child);
        wait_port(
            &format!("127.0.0.1:{}", self.port),
            "redis-server",
            Duration::from_secs(10),
        );
    }

    /// SIGKILL (no shutdown save) and start again on the same port and AOF.
    pub fn restart_after(&mut self, down: Duration) {
        self.proc.kill9();
        std::thread::sleep(down);
        self.spawn();
    }
}

fn redis_cli(args: &[&str]) -> Option<String> {
    let out = Command::new(which("redis-cli")?)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether every master of a Redis Cluster says `cluster_state:ok`.
pub fn redis_cluster_ok(masters: &[RedisServer]) -> bool {
    masters.iter().all(|m| {
        redis_cli(&["-p", &m.port.to_string(), "cluster", "info"])
            .is_some_and(|t| t.contains("cluster_state:ok"))
    })
}

/// Starts a Redis Cluster of three masters (no replicas, every slot assigned) under
/// `dir` and waits until each master reports the cluster ok.
pub fn start_redis_cluster(dir: &Path) -> Vec<RedisServer> {
    let masters: Vec<RedisServer> = (0..3)
        .map(|i| {
            RedisServer::start_with(
                &dir.join(format!("m{}", i + 1)),
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ],
            )
        })
        .collect();
    let addrs: Vec<String> = masters
        .iter()
        .map(|m| format!("127.0.0.1:{}", m.port))
        .collect();
    let mut args = vec!["--cluster", "create"];
    args.extend(addrs.iter().map(String::as_str));
    args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
    assert!(
        redis_cli(&args).is_some(),
        "redis-cli --cluster create failed for {addrs:?} (is redis-tools installed?)"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !redis_cluster_ok(&masters) {
        assert!(
            Instant::now() < deadline,
            "the Redis Cluster {addrs:?} did not reach cluster_state:ok within 20 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    masters
}
