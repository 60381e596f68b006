//! Graceful drain: readiness fails, no new connections, in-flight streams finish.
//! Also as a real process on SIGTERM, with the access log checked for secrets; what the
//! drain deadline cuts (and how the client and the access log see it); and a second
//! signal during the drain, which stops at once.

mod common;

use std::time::Duration;

use common::process::NodeProcess;
use common::*;
use strait_chaos::mock::{MockConfig, MockUpstream, Pacing};

fn slow_stream() -> MockConfig {
    MockConfig {
        pacing: Pacing {
            ttft: Duration::ZERO,
            interval: Duration::from_millis(100),
            tokens: 10,
        },
        ..MockConfig::default()
    }
}

#[tokio::test]
async fn drain_lets_streams_finish_and_refuses_new_work() {
    let mut h = Harness::build(slow_stream(), |_| {}, &UPSTREAM_KEYS, &[CLIENT_KEY]).await;
    let url = format!("{}/v1/messages", h.url);
    let inflight =
        tokio::spawn(async move { post_json(&url, &auth(CLIENT_KEY), &message_body(true)).await });
    tokio::time::sleep(Duration::from_millis(250)).await;

    let node = h.node.take().unwrap();
    let public = node.public_addr();
    let admin = format!("http://{}", node.admin_addr());
    let drained = tokio::spawn(node.drain());
    tokio::time::sleep(Duration::from_millis(100)).await;

    let r = get(&format!("{admin}/readyz"), &[]).await;
    assert_eq!(r.status, 503, "readiness fails while draining");
    assert_eq!(r.json()["checks"]["node:draining"][0]["status"], "fail");
    assert!(
        tokio::net::TcpStream::connect(public).await.is_err(),
        "no new connections"
    );

    inflight.await.unwrap().assert_stream_finished();
    assert_eq!(drain_result(drained).await, 0, "nothing was cut");
}

#[tokio::test]
async fn drain_deadline_cuts_streams_that_run_too_long() {
    let mock = MockConfig {
        pacing: Pacing {
            ttft: Duration::ZERO,
            interval: Duration::from_millis(200),
            tokens: 50,
        },
        ..MockConfig::default()
    };
    let mut h = Harness::build(
        mock,
        |raw| raw.limits.drain_timeout = Duration::from_millis(500),
        &UPSTREAM_KEYS,
        &[CLIENT_KEY],
    )
    .await;
    let url = format!("{}/v1/messages", h.url);
    let inflight =
        tokio::spawn(async move { post_json(&url, &auth(CLIENT_KEY), &message_body(true)).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    let cut = h.node.take().unwrap().drain().await;
    assert_eq!(cut, 1);
    assert!(started.elapsed() < Duration::from_secs(3));
    let r = inflight.await.unwrap();
    assert_eq!(
        r.event_names().last().map(String::as_str),
        Some("error"),
        "the cut stream ends with an error event: {}",
        r.text()
    );
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero_and_logs_hold_no_secrets() {
    let mock = MockUpstream::start(slow_stream()).await.unwrap();
    let upstream_keys = UPSTREAM_KEYS.join(",");
    let node = NodeProcess::spawn(
        &["--upstream", mock.url()],
        &[
            ("STRAIT_UPSTREAM_KEYS", &upstream_keys),
            ("STRAIT_CLIENT_KEYS", CLIENT_KEY),
        ],
    );
    let url = format!("{}/v1/messages", node.url());
    // A failed auth, a plain message and a stream, so the log has a variety of lines.
    let r = post_json(&url, &auth("strait-wrong-key-zzz"), &message_body(false)).await;
    assert_eq!(r.status, 401);
    let r = post_json(&url, &auth(CLIENT_KEY), &message_body(false)).await;
    assert_eq!(r.status, 200);
    let u2 = url.clone();
    let inflight =
        tokio::spawn(async move { post_json(&u2, &auth(CLIENT_KEY), &message_body(true)).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.signal("TERM");
    let r = inflight.await.unwrap();
    assert_eq!(
        r.event_names().last().map(String::as_str),
        Some("message_stop")
    );
    let (code, log) = node.exited(Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("\"target\":\"strait::access\""),
        "access lines written: {log}"
    );
    assert_eq!(log.matches("\"message\":\"request\"").count(), 3, "{log}");
    assert!(log.contains("drained"));
    for secret in UPSTREAM_KEYS
        .iter()
        .chain([&CLIENT_KEY, &"strait-wrong-key-zzz"])
    {
        assert!(!log.contains(secret), "secret {secret} in logs:\n{log}");
    }
    assert!(!log.contains("Hello, Claude"), "no bodies in logs");
}

#[tokio::test]
async fn sighup_without_tls_says_there_was_nothing_to_reload() {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let node = NodeProcess::spawn(&["--upstream", mock.url()], &[]);
    node.signal("HUP");
    eventually("the SIGHUP log line", Duration::from_secs(5), async || {
        node.log().contains("no TLS configured, nothing to reload")
    })
    .await;
    node.signal("TERM");
    let (code, log) = node.exited(Duration::from_secs(15)).await;
    assert!(!log.contains("TLS certificate reloaded"), "{log}");
    assert_eq!(code, Some(0), "SIGHUP did not stop the node: {log}");
}

/// A node as a real process in front of its own mock, with `limits.drain_timeout` set.
struct Subject {
    node: NodeProcess,
    mock: strait_chaos::mock::MockHandle,
    _dir: tempfile::TempDir,
}

async fn subject(drain_timeout: &str) -> Subject {
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!("[limits]\ndrain_timeout = \"{drain_timeout}\"\n"),
    )
    .unwrap();
    let upstream_keys = UPSTREAM_KEYS.join(",");
    let node = NodeProcess::spawn(
        &[
            "--config",
            config.to_str().unwrap(),
            "--upstream",
            mock.url(),
        ],
        &[
            ("STRAIT_UPSTREAM_KEYS", &upstream_keys),
            ("STRAIT_CLIENT_KEYS", CLIENT_KEY),
        ],
    );
    Subject {
        node,
        mock,
        _dir: dir,
    }
}

impl Subject {
    /// Starts a Messages request with the given mock headers and returns once the
    /// node has been relaying it for a while (so some deltas have passed).
    async fn start(
        &self,
        stream: bool,
        mock_headers: &'static [(&'static str, &'static str)],
    ) -> tokio::task::JoinHandle<Resp> {
        let url = format!("{}/v1/messages", self.node.url());
        let inflight = tokio::spawn(async move {
            let mut headers = auth(CLIENT_KEY).to_vec();
            headers.extend_from_slice(mock_headers);
            post_json(&url, &headers, &message_body(stream)).await
        });
        eventually(
            "the upstream has the request",
            Duration::from_secs(10),
            async || !self.mock.requests().is_empty(),
        )
        .await;
        // Deltas are 50 ms apart: several pass before the signal.
        tokio::time::sleep(Duration::from_millis(400)).await;
        inflight
    }

    /// Waits for the process to exit; its exit code, how long that took, and its log.
    async fn exit(self, limit: Duration) -> (Option<i32>, Duration, String) {
        let started = std::time::Instant::now();
        let (code, log) = self.node.exited(limit).await;
        (code, started.elapsed(), log)
    }
}

/// The access line of the one Messages request in `log`.
fn access_line(log: &str) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["target"] == "strait::access" && v["path"] == "/v1/messages")
        .collect();
    assert_eq!(lines.len(), 1, "one access line for the request: {log}");
    lines.into_iter().next().unwrap()
}

/// Asserts the client saw a stream cut by the node: deltas, then Anthropic's
/// `overloaded_error` event saying why, and nothing after it. Returns the deltas seen.
fn assert_cut_stream(case: &str, r: &Resp) -> u64 {
    assert_eq!(r.status, 200, "{case}");
    let names = r.event_names();
    assert_eq!(
        names.last().map(String::as_str),
        Some("error"),
        "{case}: {}",
        r.text()
    );
    let text = r.text();
    let data = text
        .lines()
        .rev()
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    let error: serde_json::Value =
        serde_json::from_str(data.strip_prefix("data: ").unwrap_or(data)).unwrap();
    assert_eq!(error["type"], "error", "{case}: {error}");
    assert_eq!(
        error["error"]["type"], "overloaded_error",
        "{case}: {error}"
    );
    assert_eq!(
        error["error"]["message"], "node shutting down",
        "{case}: {error}"
    );
    assert!(!names.contains(&"message_stop".to_string()), "{case}");
    names.iter().filter(|n| *n == "content_block_delta").count() as u64
}

/// What the drain deadline cuts, as the client and the access log see it: a stream
/// still sending (paced), a stream whose upstream went quiet (the relay is parked on
/// it and must be woken), and a JSON reply whose upstream stalled mid-body.
#[tokio::test]
async fn the_drain_deadline_cuts_what_is_still_relayed_and_says_so() {
    struct Case {
        name: &'static str,
        stream: bool,
        mock: &'static [(&'static str, &'static str)],
    }
    let cases = [
        Case {
            name: "a paced stream",
            stream: true,
            mock: &[("x-mock-pacing", "interval-ms=50,tokens=400")],
        },
        Case {
            name: "a stream whose upstream went quiet",
            stream: true,
            mock: &[("x-mock-fault", "stall-after=6")],
        },
        Case {
            name: "a JSON reply whose upstream stalled",
            stream: false,
            mock: &[("x-mock-fault", "stall-after=40")],
        },
    ];
    let runs = cases.iter().map(async |case| {
        let subject = subject("1s").await;
        let inflight = subject.start(case.stream, case.mock).await;
        subject.node.signal("TERM");
        let (code, took, log) = subject.exit(Duration::from_secs(20)).await;
        let r = inflight.await.unwrap();
        let name = case.name;
        assert_eq!(
            code,
            Some(0),
            "{name}: a drain that reached its deadline is still a drain: {log}"
        );
        assert!(
            took >= Duration::from_millis(900),
            "{name}: the deadline was kept ({took:?})"
        );
        let line = access_line(&log);
        assert_eq!(line["outcome"], "drain_deadline", "{name}: {line}");
        assert_eq!(line["error"], "unavailable", "{name}: {line}");
        if case.stream {
            let deltas = assert_cut_stream(name, &r);
            assert!(
                deltas > 0,
                "{name}: deltas passed before the cut: {}",
                r.text()
            );
            assert_eq!(
                line["output_tokens"].as_u64(),
                Some(deltas),
                "{name}: output counted from the deltas relayed: {line}"
            );
        } else {
            assert!(
                serde_json::from_slice::<serde_json::Value>(&r.body).is_err(),
                "{name}: the reply was cut short: {}",
                r.text()
            );
        }
        assert!(log.contains("drain deadline passed"), "{name}: {log}");
        assert!(
            log.contains("\"cut\":1"),
            "{name}: the drain counts what it cut: {log}"
        );
    });
    futures_util::future::join_all(runs).await;
}

/// Signals: SIGTERM and SIGINT drain (a short stream finishes); a second SIGTERM, or
/// SIGINT or SIGQUIT during the drain, stops at once (the stream is cut as at the
/// deadline, the exit code says which signal); SIGQUIT alone stops at once. The drain
/// timeout (30 s) is far longer than any of these should take.
#[tokio::test]
async fn a_second_signal_during_the_drain_stops_at_once() {
    struct Case {
        signals: &'static [&'static str],
        /// The stream outlasts the drain: 400 deltas 50 ms apart, not 10.
        long: bool,
        exit: i32,
    }
    let cases = [
        Case {
            signals: &["TERM"],
            long: false,
            exit: 0,
        },
        Case {
            signals: &["INT"],
            long: false,
            exit: 0,
        },
        Case {
            signals: &["TERM", "TERM"],
            long: true,
            exit: 143,
        },
        Case {
            signals: &["TERM", "INT"],
            long: true,
            exit: 130,
        },
        Case {
            signals: &["INT", "QUIT"],
            long: true,
            exit: 131,
        },
        Case {
            signals: &["QUIT"],
            long: true,
            exit: 131,
        },
    ];
    let runs = cases.iter().map(async |case| {
        let name = case.signals.join(" then ");
        let subject = subject("30s").await;
        let pacing: &'static [(&str, &str)] = if case.long {
            &[("x-mock-pacing", "interval-ms=50,tokens=400")]
        } else {
            &[("x-mock-pacing", "interval-ms=50,tokens=10")]
        };
        let inflight = subject.start(true, pacing).await;
        let (first, rest) = case.signals.split_first().unwrap();
        subject.node.signal(first);
        if !rest.is_empty() {
            let node = &subject.node;
            eventually(
                &format!("{name}: draining"),
                Duration::from_secs(10),
                async || node.log().contains("stop requested: draining"),
            )
            .await;
        }
        for signal in rest {
            subject.node.signal(signal);
        }
        let (code, took, log) = subject.exit(Duration::from_secs(25)).await;
        let r = inflight.await.unwrap();
        assert_eq!(code, Some(case.exit), "{name}: {log}");
        let line = access_line(&log);
        if case.long {
            assert!(
                took < Duration::from_secs(10),
                "{name}: stopped at once, not after the 30 s drain ({took:?})"
            );
            let last = case.signals.last().unwrap();
            assert!(log.contains("stopping at once"), "{name}: {log}");
            assert!(
                log.contains(&format!("\"signal\":\"SIG{last}\"")),
                "{name}: {log}"
            );
            let deltas = assert_cut_stream(&name, &r);
            assert_eq!(line["outcome"], "drain_deadline", "{name}: {line}");
            assert_eq!(
                line["output_tokens"].as_u64(),
                Some(deltas.max(1)),
                "{name}: {line}"
            );
        } else {
            assert_eq!(
                r.event_names().last().map(String::as_str),
                Some("message_stop"),
                "{name}: the stream finished: {}",
                r.text()
            );
            assert_eq!(line["outcome"], "complete", "{name}: {line}");
            assert_eq!(line["output_tokens"], 10, "{name}: {line}");
            assert!(log.contains("drained"), "{name}: {log}");
        }
    });
    futures_util::future::join_all(runs).await;
}
