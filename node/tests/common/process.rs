//! Runs `strait-node` as a real process (for signals, exit codes and log capture).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct NodeProcess {
    pub child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    pub log: Arc<Mutex<String>>,
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
        .env_remove("STRAIT_KEK")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("strait-node binary runs");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("strait-node listening") {
                        let _ = tx.send(line.clone());
                    }
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let line = loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(100)) {
                break line;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "strait-node exited early ({status}): {}",
                    log.lock().unwrap()
                );
            }
            assert!(
                Instant::now() < deadline,
                "strait-node did not start: {}",
                log.lock().unwrap()
            );
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        let public = v["public"].as_str().unwrap().parse().unwrap();
        let admin = v["admin"].as_str().unwrap().parse().unwrap();
        NodeProcess {
            child,
            public,
            admin,
            log,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.public)
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }

    /// Waits for exit and returns the exit code.
    pub fn wait(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("strait-node did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
