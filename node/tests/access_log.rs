//! The access log as an operator sees it: one line per request, in batches, to its
//! own file (`--access-log-file`), JSON or text, never a key.

mod common;

use std::time::{Duration, Instant};

use common::{get, post_json};
use strait_chaos::mock::{MockConfig, MockUpstream};
use strait_chaos::process::Captured;

const UPSTREAM_KEY: &str = "sk-ant-upstream-access-log-01";
const CLIENT_KEY: &str = "client-key-access-log-0001";

struct Node {
    proc: Captured,
    public: String,
    admin: String,
    _state: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
    }
}

/// Starts a node with logs in `format` and access lines to `file`.
fn spawn(format: &str, upstream: &str, file: &std::path::Path) -> Node {
    let state = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_strait-node"));
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--log-format", format, "--upstream", upstream])
        .arg("--access-log-file")
        .arg(file)
        .arg("--state-dir")
        .arg(state.path())
        .env_remove("RUST_LOG")
        .env("STRAIT_UPSTREAM_KEYS", UPSTREAM_KEY)
        .env("STRAIT_CLIENT_KEYS", CLIENT_KEY);
    let (proc, line) =
        Captured::spawn_until(&mut cmd, "strait-node listening", Duration::from_secs(20));
    // `public=ADDR` in text, `"public":"ADDR"` in JSON.
    let addr = |field: &str| {
        let at = line
            .find(&format!("{field}="))
            .map(|i| i + field.len() + 1)
            .or_else(|| {
                line.find(&format!("\"{field}\":\""))
                    .map(|i| i + field.len() + 4)
            })
            .unwrap_or_else(|| panic!("no {field} address in {line}"));
        line[at..].split([' ', '"']).next().unwrap().to_string()
    };
    Node {
        public: addr("public"),
        admin: addr("admin"),
        proc,
        _state: state,
    }
}

/// Waits (bounded) until `path` holds `n` lines.
async fn lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} access lines after 5 s: {text}",
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn access_lines_go_to_their_file_in_both_formats() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("mock starts");
    let dir = tempfile::tempdir().unwrap();
    for format in ["json", "text"] {
        let file = dir.path().join(format!("access-{format}.log"));
        let node = spawn(format, mock.url(), &file);
        let body = serde_json::json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": "Hi"}],
        });
        for _ in 0..3 {
            let r = post_json(
                &format!("http://{}/v1/messages", node.public),
                &[
                    ("x-api-key", CLIENT_KEY),
                    ("anthropic-version", "2023-06-01"),
                ],
                &body,
            )
            .await;
            assert_eq!(r.status, 200, "{}", r.text());
        }
        let lines = lines(&file, 3).await;
        assert_eq!(lines.len(), 3, "{lines:?}");
        for line in &lines {
            assert!(!line.contains(UPSTREAM_KEY) && !line.contains(CLIENT_KEY));
            match format {
                "json" => {
                    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
                    assert_eq!(v["target"], "strait::access");
                    assert_eq!(v["path"], "/v1/messages");
                    assert_eq!(v["status"], 200);
                    assert_eq!(v["client"], "key-1");
                    assert_eq!(v["outcome"], "complete");
                    assert!(v["input_tokens"].as_u64().unwrap() > 0, "{v}");
                    assert!(v["duration_ms"].as_f64().unwrap() > 0.0, "{v}");
                }
                _ => {
                    assert!(line.contains(" INFO strait::access: request "), "{line}");
                    assert!(line.contains(" status=200 ") && line.contains(" client=key-1 "));
                }
            }
        }
        // Not in the process's own output as well.
        assert!(
            !node.proc.log().contains("strait::access"),
            "{}",
            node.proc.log()
        );
        let metrics = get(&format!("http://{}/metrics", node.admin), &[])
            .await
            .text();
        assert!(
            metrics.contains("strait_access_log_dropped_total 0"),
            "{metrics}"
        );
    }
}

#[test]
fn an_access_log_file_that_cannot_be_opened_stops_the_start_with_its_path() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_strait-node"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--access-log-file",
            "/nonexistent-dir/access.log",
        ])
        .env("STRAIT_UPSTREAM_KEYS", UPSTREAM_KEY)
        .env("STRAIT_CLIENT_KEYS", CLIENT_KEY)
        .output()
        .expect("strait-node runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("log.access_log_file /nonexistent-dir/access.log"),
        "{err}"
    );
}
