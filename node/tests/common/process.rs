//! Runs `strait-node` as a real process (for signals, exit codes and log capture).

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use strait_chaos::process::Captured;

pub struct NodeProcess {
    pub proc: Captured,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    /// The state directory made for it when the arguments name none (each node
    /// needs its own: the deferred spool in it is locked by one process).
    pub state: Option<tempfile::TempDir>,
}

impl NodeProcess {
    /// Starts the binary with JSON logs on port 0 and waits for its "listening" line.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> NodeProcess {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait-node"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .args(args)
        .env_remove("STRAIT_UPSTREAM_KEYS")
        .env_remove("STRAIT_CLIENT_KEYS")
        .env_remove("RUST_LOG")
        .env_remove("STRAIT_KEK");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let state = (!args.contains(&"--state-dir")).then(|| {
            let dir = tempfile::tempdir().expect("a state directory");
            cmd.arg("--state-dir").arg(dir.path());
            dir
        });
        let (proc, line) =
            Captured::spawn_until(&mut cmd, "strait-node listening", Duration::from_secs(20));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let public = v["public"].as_str().unwrap().parse().unwrap();
        let admin = v["admin"].as_str().unwrap().parse().unwrap();
        NodeProcess {
            proc,
            public,
            admin,
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.proc.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for exit and returns the exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.proc.child.try_wait().unwrap() {
                self.proc.wait_for_output(Duration::from_secs(2));
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.proc.child.kill();
                panic!("strait-node did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// From async code: waits for exit off the runtime; the exit code and the log.
    pub async fn exited(mut self, limit: Duration) -> (Option<i32>, String) {
        tokio::task::spawn_blocking(move || {
            let code = self.wait(limit);
            (code, self.log())
        })
        .await
        .unwrap()
    }

    pub fn log(&self) -> String {
        self.proc.log()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}
