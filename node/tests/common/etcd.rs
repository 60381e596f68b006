//! A real etcd for cluster tests: started on free ports with its own data directory,
//! stoppable and restartable on the same ports and data (so nodes can reconnect),
//! always stopped by PID. A missing binary fails the test: it never skips.

use super::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const ETCD_BIN: &str = "/usr/bin/etcd";
pub const ETCDCTL_BIN: &str = "/usr/bin/etcdctl";

pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    peer_url: String,
    name: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl Etcd {
    /// Starts etcd and waits until it answers `endpoint health`.
    pub fn start() -> Etcd {
        for bin in [ETCD_BIN, ETCDCTL_BIN] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: install etcd 3.4+ (Debian: apt-get install etcd-server etcd-client); \
                 the cluster tests need a real etcd"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let (client, peer) = (free_port(), free_port());
        let mut e = Etcd {
            child: None,
            url: format!("http://127.0.0.1:{client}"),
            peer_url: format!("http://127.0.0.1:{peer}"),
            name: format!("t{client}"),
            data: dir.path().join("data"),
            _dir: dir,
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._dir.path().join("etcd.log"))
            .unwrap();
        let child = Command::new(ETCD_BIN)
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data)
            .args([
                "--listen-client-urls",
                &self.url,
                "--advertise-client-urls",
                &self.url,
            ])
            .args([
                "--listen-peer-urls",
                &self.peer_url,
                "--initial-advertise-peer-urls",
                &self.peer_url,
            ])
            .args([
                "--initial-cluster",
                &format!("{}={}", self.name, self.peer_url),
            ])
            .args(["--logger=zap", "--log-level=warn"])
            .env_remove("ETCD_NAME")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("etcd starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.etcdctl(&["endpoint", "health"]).status.success() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("etcd exited ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd not healthy in 20 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills etcd (SIGKILL by PID); the data directory stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Deletes the data directory of a stopped etcd: the next start is a new,
    /// empty cluster (revisions start over).
    pub fn wipe(&mut self) {
        assert!(self.child.is_none(), "stop before wipe");
        std::fs::remove_dir_all(&self.data).unwrap();
        // A fresh cluster needs a fresh member name as well as empty data.
        self.name.push('w');
    }

    /// Starts etcd again on the same ports and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop before restart");
        self.spawn();
    }

    /// Runs etcdctl (API v3) against this instance.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        Command::new(ETCDCTL_BIN)
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.url,
                "--command-timeout=2s",
                "--dial-timeout=1s",
            ])
            .args(args)
            .output()
            .expect("etcdctl runs")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("etcd.log")).unwrap_or_default()
    }

    pub async fn client(&self) -> etcd_client::Client {
        etcd_client::Client::connect([self.url.as_str()], None)
            .await
            .expect("etcd client connects")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
