//! Start-up and configuration: the example config parses, `--check-config` reports,
//! and a node refuses to become an open relay.

mod common;

use std::process::Command;

use strait_node::config::{KeyMode, RawConfig, Secret};

fn example_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/node.example.toml")
}

#[test]
fn example_config_parses_and_validates() {
    let raw = RawConfig::from_file(&example_path()).expect("deploy/node.example.toml parses");
    let c = raw
        .validate(vec![Secret::new("sk-ant-example")], vec![])
        .expect("deploy/node.example.toml validates");
    assert_eq!(
        c.key_mode(),
        KeyMode::Managed,
        "the example defines client key hashes"
    );
    assert_eq!(c.upstream.target.authority.as_str(), "api.anthropic.com");
    assert_eq!(c.rate_limits.default.rpm, Some(60));
    assert_eq!(c.rate_limits.tenants[0].name, "research");
    assert!(
        c.rate_limits.redis.is_none(),
        "the example runs the in-process limiter"
    );
}

fn node() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_strait-node"));
    c.env_remove("STRAIT_UPSTREAM_KEYS")
        .env_remove("STRAIT_CLIENT_KEYS");
    c
}

#[test]
fn check_config_accepts_the_example_and_names_bad_fields() {
    let out = node()
        .args(["--check-config", "--config"])
        .arg(example_path())
        .env("STRAIT_UPSTREAM_KEYS", "sk-ant-example")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("config ok"));
    assert!(!stdout.contains("sk-ant-example"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[upstream]\nread_timeout = \"soon\"\n").unwrap();
    let out = node()
        .args(["--check-config", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("read_timeout") || stderr.contains("invalid duration"),
        "{stderr}"
    );
}

#[test]
fn upstream_keys_without_client_keys_refuse_to_start_unless_allowed() {
    let out = node()
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env("STRAIT_UPSTREAM_KEYS", "sk-ant-secret-xyz")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-anonymous"), "{stderr}");
    assert!(!stderr.contains("sk-ant-secret-xyz"));

    let out = node()
        .args(["--check-config", "--allow-anonymous"])
        .env("STRAIT_UPSTREAM_KEYS", "sk-ant-secret-xyz")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Anonymous"));
}

#[test]
fn quick_start_needs_no_file() {
    let out = node()
        .args([
            "--check-config",
            "--listen",
            "127.0.0.1:8181",
            "--workers",
            "1",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("127.0.0.1:8181") && stdout.contains("Passthrough"),
        "{stdout}"
    );
}
