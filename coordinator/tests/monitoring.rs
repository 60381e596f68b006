//! The files for teams that run Prometheus and Grafana: `deploy/prometheus/` alert
//! rules pass `promtool check rules`, and every metric a rule or a Grafana panel names
//! is one the node registers (read from the node's source: a metric family with no
//! series yet is absent from a live `/metrics`, so the source is the complete list).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `strait_*` metric the node registers: the `"name", "help"` pairs its
/// registration helpers are called with, prefixed as the registry does.
fn exported() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![repo().join("node/src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                names.extend(registered(&text).into_iter().map(|n| format!("strait_{n}")));
            }
        }
    }
    names
}

/// Names in `text` written as a metric registration: a snake_case literal directly
/// followed by a comma and another string literal (the help text).
fn registered(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('"') {
        let after = &rest[i + 1..];
        let Some(end) = after.find('"') else { break };
        let lit = &after[..end];
        let tail = after[end + 1..].trim_start();
        let snake = !lit.is_empty()
            && lit
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if snake {
            if let Some(t) = tail.strip_prefix(',') {
                if t.trim_start().starts_with('"') {
                    out.push(lit.to_string());
                }
            }
        }
        rest = &after[end + 1..];
    }
    out
}

/// `strait_*` identifiers in a PromQL expression or rules file.
fn named(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("strait_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(text[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

/// A histogram's series names carry a suffix the family name does not.
fn family(series: &str) -> &str {
    ["_bucket", "_sum", "_count"]
        .iter()
        .find_map(|s| series.strip_suffix(s))
        .unwrap_or(series)
}

fn check_all_exported(what: &str, names: &BTreeSet<String>, exported: &BTreeSet<String>) {
    assert!(!names.is_empty(), "{what} names no metric at all");
    let unknown: Vec<&String> = names
        .iter()
        .filter(|n| !exported.contains(*n) && !exported.contains(family(n)))
        .collect();
    assert!(
        unknown.is_empty(),
        "{what} names metrics the node does not export: {unknown:?}"
    );
}

#[test]
fn the_source_scan_finds_the_node_metrics() {
    let e = exported();
    for known in [
        "strait_requests_total",
        "strait_request_duration_seconds",
        "strait_time_to_first_token_seconds",
        "strait_limiter_degraded",
        "strait_config_reloads_total",
        "strait_upstream_keys",
    ] {
        assert!(e.contains(known), "{known} not found in {e:?}");
    }
    assert!(!e.contains("strait_request_duration"), "{e:?}");
}

#[test]
fn alert_rules_pass_promtool_and_name_only_exported_metrics() {
    let rules = repo().join("deploy/prometheus/strait-alerts.yml");
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&rules)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is not installed ({e}): Debian package `prometheus`; ./test.sh installs it")
        });
    assert!(
        out.status.success(),
        "promtool check rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&rules).unwrap();
    check_all_exported(
        "deploy/prometheus/strait-alerts.yml",
        &named(&text),
        &exported(),
    );
    for alert in [
        "StraitNodeDown",
        "StraitHighErrorRate",
        "StraitLimiterDegraded",
        "StraitNoUsableUpstreamKey",
    ] {
        assert!(text.contains(&format!("alert: {alert}")), "{alert} missing");
    }
}

#[test]
fn grafana_panels_name_only_exported_metrics() {
    let path = repo().join("deploy/grafana/strait-dashboard.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("valid JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().expect("a PromQL expr").to_string());
        }
    }
    assert!(exprs.len() >= 15, "{} queries", exprs.len());
    let names: BTreeSet<String> = exprs.iter().flat_map(|e| named(e)).collect();
    check_all_exported("deploy/grafana/strait-dashboard.json", &names, &exported());
    for want in [
        "strait_requests_total",
        "strait_time_to_first_token_seconds_bucket",
        "strait_tokens_total",
        "strait_limiter_degraded",
        "strait_upstream_keys",
    ] {
        assert!(names.contains(want), "no panel shows {want}");
    }
}
