//! A real `redis-server` per test on a free port: start, kill -9, restart on the same
//! port, a tiny RESP client for assertions, and kill on drop. A missing redis-server
//! fails the test (it is a declared test dependency; see test.sh), never skips it.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// Its own copy of the harness's `free_port`: the limiter benchmark
/// (`benches/limiter.rs`) includes this file without the rest of the harness.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl RedisServer {
    /// Starts a throwaway server (no persistence) and waits until it answers PING.
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Like [`RedisServer::start`] with extra server arguments (e.g. cluster mode).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        let mut s = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let bin = std::env::var("STRAIT_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("these tests need a real redis-server ({bin}: {e}); install it with `apt-get install redis-server` or run ./test.sh")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if self.try_cmd(&["PING"]).is_some_and(|r| r == "PONG") {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "redis-server exited at start-up ({status}) on port {}",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no goodbye to clients.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and directory: empty, unless it was started
    /// with `--appendonly yes` (then it replays its AOF).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Runs one command and returns its reply flattened to text (arrays joined by
    /// newlines). Panics if the server does not answer.
    pub fn cmd(&self, args: &[&str]) -> String {
        self.try_cmd(args)
            .unwrap_or_else(|| panic!("redis on port {} did not answer {args:?}", self.port))
    }

    fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{}\r\n", a.len(), a));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut r = BufReader::new(s);
        read_reply(&mut r)
    }
}

fn read_reply(r: &mut impl BufRead) -> Option<String> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(1.min(line.len()));
    match kind {
        "+" | ":" => Some(rest.to_string()),
        "-" => Some(format!("ERR {rest}")),
        "$" => {
            let n: i64 = rest.parse().ok()?;
            if n < 0 {
                return Some(String::new());
            }
            let mut buf = vec![0u8; n as usize + 2];
            std::io::Read::read_exact(r, &mut buf).ok()?;
            buf.truncate(n as usize);
            Some(String::from_utf8_lossy(&buf).into_owned())
        }
        "*" => {
            let n: i64 = rest.parse().ok()?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_reply(r)?);
            }
            Some(items.join("\n"))
        }
        _ => None,
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `n` primaries (no replicas) on free ports, slots split evenly.
pub struct RedisCluster {
    pub servers: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start(n: usize) -> RedisCluster {
        let args = [
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        let servers: Vec<RedisServer> = (0..n).map(|_| RedisServer::start_with(&args)).collect();
        for (i, s) in servers.iter().enumerate() {
            let (lo, hi) = (16384 * i / n, 16384 * (i + 1) / n - 1);
            let r = s.cmd(&["CLUSTER", "ADDSLOTSRANGE", &lo.to_string(), &hi.to_string()]);
            assert_eq!(r, "OK", "ADDSLOTSRANGE on port {}", s.port);
        }
        for s in &servers[1..] {
            assert_eq!(
                servers[0].cmd(&["CLUSTER", "MEET", "127.0.0.1", &s.port.to_string()]),
                "OK"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !servers
            .iter()
            .all(|s| s.cmd(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        {
            assert!(
                Instant::now() < deadline,
                "the Redis Cluster did not converge"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { servers }
    }

    /// Seed URLs, comma-separated (the form `--redis` and `redis.url` take).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }
}
