//! Admin API against a real etcd: the token, client keys (secret shown once, hash
//! only in etcd), sealed upstream keys, validation before writes, the cluster view,
//! Prometheus service discovery, the OpenAPI document, the example config.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use etcd_client::PutOptions;
use http::{Method, StatusCode};
use serde_json::json;
use sha2::{Digest, Sha256};
use strait_node::schema::{self, NodeRecord, NodeState, PathHealth, UpstreamPoolDoc};
use strait_node::secret::Kek;

fn concrete(path: &str) -> String {
    // Fill every `{param}` with a plausible value.
    let mut out = String::new();
    let mut rest = path;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').unwrap() + start;
        out.push_str("x1");
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

const OPEN: [&str; 3] = ["/healthz", "/openapi.json", "/v1/sd/prometheus"];

#[tokio::test]
async fn admin_api_rejects_requests_without_the_token() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let before = etcd.dump().await;
    let mut checked = 0;
    for (method, path) in strait_coordinator::api::route_list() {
        let target = format!("{url}{}", concrete(path));
        if OPEN.contains(&path) {
            let r = call(method.clone(), &target, None, None).await;
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{method} {path} is open: {}",
                r.text
            );
            continue;
        }
        let body = matches!(method, Method::POST | Method::PUT | Method::PATCH)
            .then(|| json!({"name": "x1", "draining": true}));
        for token in [
            None,
            Some("wrong-token-0123456789abcdef"),
            Some(""),
            Some(&TOKEN[..TOKEN.len() - 1]),
        ] {
            let r = call(method.clone(), &target, token, body.clone()).await;
            assert_eq!(
                r.status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} with {token:?}: {}",
                r.text
            );
            assert_eq!(r.json["error"]["type"], "unauthorized");
            assert!(!r.text.contains(TOKEN));
        }
        // A token in another scheme is not accepted either.
        let client_req = call(method.clone(), &target, None, None).await;
        assert_eq!(client_req.status, StatusCode::UNAUTHORIZED);
        checked += 1;
    }
    assert!(
        checked >= 15,
        "every admin route group was checked ({checked})"
    );
    assert_eq!(
        etcd.dump().await,
        before,
        "nothing was written without the token"
    );
    running.shutdown().await;
}

#[tokio::test]
async fn client_key_secret_is_shown_once_and_etcd_holds_only_its_hash() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let r = admin(
        Method::PUT,
        &format!("{url}/v1/tenants/team-a"),
        Some(json!({"limits": {"rpm": 600}, "allowed_regions": ["r1"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // Nodes refuse client keys that have no upstream key to use.
    let r = admin(
        Method::POST,
        &format!("{url}/v1/keys"),
        Some(json!({"name": "early"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    assert!(r.text.contains("no keys"), "{}", r.text);
    add_pool_key(&url, "default", "prod-1", "sk-ant-upstream-1").await;

    let r = admin(
        Method::POST,
        &format!("{url}/v1/keys"),
        Some(json!({"name": "alice", "tenant": "team-a", "limits": {"otpm": 5000}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let secret = r.json["key"].as_str().unwrap().to_string();
    let id = r.json["id"].as_str().unwrap().to_string();
    assert!(
        secret.starts_with("sk-strait-") && secret.len() >= 60,
        "{secret}"
    );
    assert!(id.starts_with("ck_"));
    assert_eq!(r.json["tenant"], "team-a");
    assert_eq!(r.json["limits"]["otpm"], 5000);

    // Never again: not in the list, not in the single view, not in etcd.
    let list = admin(Method::GET, &format!("{url}/v1/keys"), None).await;
    assert_eq!(list.status, StatusCode::OK);
    assert_eq!(list.json["keys"].as_array().unwrap().len(), 1);
    assert!(!list.text.contains(&secret));
    let one = admin(Method::GET, &format!("{url}/v1/keys/{id}"), None).await;
    assert_eq!(one.json["name"], "alice");
    assert!(
        !one.text.contains(&secret)
            && one.json.get("key").is_none()
            && one.json.get("sha256").is_none()
    );
    let dump = etcd.dump().await;
    assert!(
        dump.iter().all(|(_, v)| !v.contains(&secret)),
        "the client key is stored in clear"
    );
    let stored = dump
        .iter()
        .find(|(k, _)| *k == schema::client_key_key(&id))
        .expect("key document stored");
    let doc: serde_json::Value = serde_json::from_str(&stored.1).unwrap();
    assert_eq!(
        doc["sha256"],
        hex::encode(Sha256::digest(secret.as_bytes()))
    );

    // Update keeps the rest; revoke marks it.
    let r = admin(
        Method::PATCH,
        &format!("{url}/v1/keys/{id}"),
        Some(json!({"allowed_regions": ["r1", "r2"], "limits": {"rpm": 10}})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["allowed_regions"], json!(["r1", "r2"]));
    assert_eq!(r.json["tenant"], "team-a");
    let r = admin(Method::DELETE, &format!("{url}/v1/keys/{id}"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json["revoked"], true);
    let r = admin(Method::GET, &format!("{url}/v1/keys/ck_missing"), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json["error"]["type"], "not_found");
    running.shutdown().await;
}

#[tokio::test]
async fn upstream_keys_never_appear_in_clear_in_etcd() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let upstream = "sk-ant-api03-PLAINTEXT-must-never-be-stored-0123456789";
    let r = admin(
        Method::POST,
        &format!("{url}/v1/pools/default/keys"),
        Some(json!({"label": "prod-1", "key": upstream})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(!r.text.contains(upstream), "the response repeats the key");
    let key_id = r.json["id"].as_str().unwrap().to_string();
    let r2 = admin(
        Method::POST,
        &format!("{url}/v1/pools/default/keys"),
        Some(json!({"label": "prod-2", "key": "sk-ant-second-key-abcdef"})),
    )
    .await;
    assert_eq!(r2.status, StatusCode::CREATED);

    let pools = admin(Method::GET, &format!("{url}/v1/pools"), None).await;
    assert!(
        !pools.text.contains(upstream) && !pools.text.contains("ciphertext"),
        "{}",
        pools.text
    );
    assert_eq!(pools.json["pools"][0]["keys"][0]["label"], "prod-1");

    // Scan everything under /strait/ for the plaintext, also base64 or hex encoded.
    let dump = etcd.dump().await;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(upstream);
    for (k, v) in &dump {
        assert!(
            !v.contains(upstream) && !v.contains(&b64) && !v.contains(&hex::encode(upstream)),
            "{k} holds the upstream key"
        );
    }
    // It is there, sealed: the KEK opens it.
    let raw = dump
        .iter()
        .find(|(k, _)| *k == schema::pool_key("default"))
        .expect("pool stored");
    let pool: UpstreamPoolDoc = serde_json::from_str(&raw.1).unwrap();
    let sealed = pool.keys.iter().find(|k| k.id == key_id).unwrap();
    assert_eq!(
        Kek::parse(KEK_HEX).unwrap().open(sealed).unwrap().expose(),
        upstream
    );

    // Removal.
    let r = admin(
        Method::DELETE,
        &format!("{url}/v1/pools/default/keys/{key_id}"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let pools = admin(Method::GET, &format!("{url}/v1/pools"), None).await;
    assert_eq!(pools.json["pools"][0]["keys"].as_array().unwrap().len(), 1);
    running.shutdown().await;
}

/// Keys of one Anthropic organisation share its limits: `org` is stored beside the
/// sealed key (not sealed), shown in every view, regrouped by PATCH, and left out of
/// the document entirely when absent, as a coordinator of the previous version wrote it.
#[tokio::test]
async fn pool_keys_carry_an_optional_org() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let keys_url = format!("{url}/v1/pools/default/keys");
    let upstream = "sk-ant-org-key-0123456789";
    let r = admin(
        Method::POST,
        &keys_url,
        Some(json!({"label": "prod-1", "key": upstream, "org": "Acme-Prod.eu"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json["org"], "Acme-Prod.eu");
    let with_org = r.json["id"].as_str().unwrap().to_string();
    let r = admin(
        Method::POST,
        &keys_url,
        Some(json!({"label": "prod-2", "key": "sk-ant-lone-key-abcdef"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.json.get("org").is_none(), "{}", r.text);
    let lone = r.json["id"].as_str().unwrap().to_string();

    let stored = || async {
        let dump = etcd.dump().await;
        let raw = dump
            .into_iter()
            .find(|(k, _)| *k == schema::pool_key("default"))
            .expect("pool stored")
            .1;
        let doc: serde_json::Value = serde_json::from_str(&raw).unwrap();
        let pool: UpstreamPoolDoc = serde_json::from_str(&raw).unwrap();
        (doc, pool)
    };
    let (doc, pool) = stored().await;
    assert_eq!(doc["keys"][0]["org"], "Acme-Prod.eu");
    assert!(
        !doc["keys"][1].as_object().unwrap().contains_key("org"),
        "a key without org has no org field: {doc}"
    );
    // The org sits beside the seal, which still opens.
    let kek = Kek::parse(KEK_HEX).unwrap();
    assert_eq!(pool.keys[0].org.as_deref(), Some("Acme-Prod.eu"));
    assert_eq!(kek.open(&pool.keys[0]).unwrap().expose(), upstream);

    let list = admin(Method::GET, &format!("{url}/v1/pools"), None).await;
    let listed = &list.json["pools"][0]["keys"];
    assert_eq!(
        (listed[0]["id"].as_str(), listed[0]["org"].as_str()),
        (Some(with_org.as_str()), Some("Acme-Prod.eu")),
        "{}",
        list.text
    );
    assert!(listed[1].get("org").is_none(), "{}", list.text);

    // Regrouped in place: same seal, new org; null puts it back in an org of its own.
    let r = admin(
        Method::PATCH,
        &format!("{keys_url}/{lone}"),
        Some(json!({"org": "Acme-Prod.eu"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["org"], "Acme-Prod.eu");
    let (_, regrouped) = stored().await;
    assert_eq!(regrouped.keys[1].org.as_deref(), Some("Acme-Prod.eu"));
    assert_eq!(regrouped.keys[1].ciphertext, pool.keys[1].ciphertext);
    let r = admin(
        Method::PATCH,
        &format!("{keys_url}/{with_org}"),
        Some(json!({"org": null})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.json.get("org").is_none(), "{}", r.text);
    let (doc, _) = stored().await;
    assert!(
        !doc["keys"][0].as_object().unwrap().contains_key("org"),
        "{doc}"
    );

    // A bad org is refused with a 400 naming the rule, and nothing is written.
    let before = etcd.dump().await;
    for (method, path, body) in [
        (
            Method::POST,
            keys_url.clone(),
            json!({"label": "prod-3", "key": "sk-ant-x", "org": "acme corp"}),
        ),
        (
            Method::POST,
            keys_url.clone(),
            json!({"label": "prod-3", "key": "sk-ant-x", "org": "a".repeat(65)}),
        ),
        (
            Method::PATCH,
            format!("{keys_url}/{lone}"),
            json!({"org": "acme/eu"}),
        ),
        (Method::PATCH, format!("{keys_url}/{lone}"), json!({})),
    ] {
        let r = admin(method.clone(), &path, Some(body.clone())).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{method} {body}: {}",
            r.text
        );
        assert_eq!(r.json["error"]["type"], "invalid_request");
        let msg = r.json["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("org"), "{method} {body}: {msg}");
    }
    assert_eq!(etcd.dump().await, before, "a refused org changed etcd");
    running.shutdown().await;
}

#[tokio::test]
async fn invalid_writes_are_rejected_before_they_reach_etcd() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let r = admin(
        Method::PUT,
        &format!("{url}/v1/tenants/t1"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let only_key = add_pool_key(&url, "default", "prod-1", "sk-ant-upstream-1").await;
    let r = admin(
        Method::POST,
        &format!("{url}/v1/keys"),
        Some(json!({"name": "k", "tenant": "t1"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let before = etcd.dump().await;

    let cases = [
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "bob", "tenant": "no-such-tenant"})),
            "unknown tenant",
        ),
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "bob", "pool": "no-such-pool"})),
            "unknown upstream pool",
        ),
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "Bad Name"})),
            "name",
        ),
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "bob", "limits": {"rpm": -1}})),
            "",
        ),
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "bob", "surprise": 1})),
            "surprise",
        ),
        (
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "bob", "allowed_regions": ["R 1"]})),
            "region",
        ),
        (Method::DELETE, "/v1/tenants/t1", None, "unknown tenant"),
        (
            Method::PUT,
            "/v1/tenants/t2",
            Some(json!({"limits": {"rpm": 1, "bogus": 2}})),
            "bogus",
        ),
        (
            Method::POST,
            "/v1/pools/default/keys",
            Some(json!({"label": "a", "key": ""})),
            "key",
        ),
        (
            Method::POST,
            "/v1/pools/default/keys",
            Some(json!({"label": "a", "key": "has space"})),
            "key",
        ),
        (
            Method::PUT,
            "/v1/regions/r1",
            Some(json!({"draining": "yes"})),
            "",
        ),
        (Method::POST, "/v1/nodes/R1/n1/drain", None, "region"),
        // The key "k" would be left without an upstream key.
        (
            Method::DELETE,
            "/v1/pools/default/keys/ONLY",
            None,
            "has no keys",
        ),
    ];
    for (method, path, body, needle) in cases {
        let path = path.replace("ONLY", &only_key);
        let r = admin(method.clone(), &format!("{url}{path}"), body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{method} {path} {body:?}: {}",
            r.text
        );
        assert_eq!(r.json["error"]["type"], "invalid_request", "{}", r.text);
        assert!(
            r.json["error"]["message"]
                .as_str()
                .unwrap()
                .contains(needle),
            "{method} {path}: {}",
            r.text
        );
    }
    let r = admin(
        Method::PATCH,
        &format!("{url}/v1/keys/ck_nope"),
        Some(json!({"name": "x"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = admin(Method::GET, &format!("{url}/v1/nothing-here"), None).await;
    assert_eq!(r.json["error"]["type"], "no_route");
    assert_eq!(etcd.dump().await, before, "a rejected write changed etcd");
    running.shutdown().await;
}

fn node(region: &str, id: &str, admin_port: u16) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        region: region.into(),
        public_addr: "127.0.0.1:8080".into(),
        admin_addr: format!("127.0.0.1:{admin_port}"),
        version: "0.1.0".into(),
        started_at: "2026-11-27T10:00:00Z".into(),
        state: NodeState::Serving,
        path: PathHealth {
            ttfb_ms: Some(81.5),
            error_rate: 0.0,
            consecutive_failures: 0,
            status: "pass".into(),
            ..PathHealth::default()
        },
        ready: schema::Ready::Pass,
        tls: false,
    }
}

#[tokio::test]
async fn prometheus_sd_and_cluster_view_list_live_nodes() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let mut c = etcd.client().await;
    let lease = c.lease_grant(30, None).await.unwrap().id();
    for (region, id, port) in [("r1", "node-a", 9101), ("r2", "node-b", 9102)] {
        let v = serde_json::to_vec(&node(region, id, port)).unwrap();
        c.put(
            schema::node_key(region, id),
            v,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .unwrap();
    }
    // Service discovery needs no token (documented), and carries region and node labels.
    let sd = call(Method::GET, &format!("{url}/v1/sd/prometheus"), None, None).await;
    assert_eq!(sd.status, StatusCode::OK);
    let groups = sd.json.as_array().unwrap();
    assert_eq!(groups.len(), 2, "{}", sd.text);
    assert_eq!(groups[0]["targets"], json!(["127.0.0.1:9101"]));
    assert_eq!(groups[0]["labels"]["region"], "r1");
    assert_eq!(groups[0]["labels"]["node"], "node-a");
    assert_eq!(groups[1]["labels"]["region"], "r2");

    // Drains show up in the cluster view.
    let r = admin(
        Method::POST,
        &format!("{url}/v1/nodes/r1/node-a/drain"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["registered"], true);
    let r = admin(Method::POST, &format!("{url}/v1/regions/r2/drain"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let view = admin(Method::GET, &format!("{url}/v1/cluster"), None).await;
    assert_eq!(view.status, StatusCode::OK);
    let regions = view.json["regions"].as_array().unwrap();
    assert_eq!(regions.len(), 2, "{}", view.text);
    assert_eq!(regions[0]["nodes"][0]["drain_requested"], true);
    assert_eq!(regions[0]["nodes"][0]["path"]["ttfb_ms"], 81.5);
    assert_eq!(regions[1]["draining"], true);
    assert_eq!(view.json["leader"]["id"], "c1");
    assert_eq!(
        etcd.dump()
            .await
            .iter()
            .filter(|(k, _)| k.starts_with("/strait/config/drain/"))
            .count(),
        1
    );
    let r = admin(
        Method::POST,
        &format!("{url}/v1/nodes/r1/node-a/undrain"),
        None,
    )
    .await;
    assert_eq!(r.json["draining"], false);
    assert_eq!(
        etcd.dump()
            .await
            .iter()
            .filter(|(k, _)| k.starts_with("/strait/config/drain/"))
            .count(),
        0
    );

    // A node whose lease ends leaves discovery.
    c.lease_revoke(lease).await.unwrap();
    let sd = call(Method::GET, &format!("{url}/v1/sd/prometheus"), None, None).await;
    assert_eq!(sd.json, json!([]));
    running.shutdown().await;
}

#[tokio::test]
async fn openapi_lists_every_route_and_nothing_else() {
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    let doc = call(Method::GET, &format!("{url}/openapi.json"), None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.json["openapi"], "3.0.3");
    let mut documented = BTreeSet::new();
    for (path, ops) in doc.json["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = strait_coordinator::api::route_list()
        .into_iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(documented, routed, "OpenAPI paths differ from the router's");
    // Every schema reference resolves.
    let text = doc.text.clone();
    for part in text.split("#/components/schemas/").skip(1) {
        let name: String = part.chars().take_while(|c| c.is_alphanumeric()).collect();
        assert!(
            doc.json["components"]["schemas"].get(&name).is_some(),
            "missing schema {name}"
        );
    }
    // And the list is the router's: each route is served (not a no_route 404 or a 405).
    for (method, path) in strait_coordinator::api::route_list() {
        let r = admin(
            method.clone(),
            &format!("{url}{}", concrete(path)),
            Some(json!({})),
        )
        .await;
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(r.json["error"]["type"], "no_route", "{method} {path}");
    }
    running.shutdown().await;
}

#[tokio::test]
async fn a_standby_serves_reads_and_refuses_writes_naming_the_leader() {
    let etcd = Etcd::start().await;
    let (first, url1) = leader(&etcd).await;
    add_pool_key(&url1, "default", "prod-1", "sk-ant-upstream-1").await;
    let second = strait_coordinator::server::start(config(&etcd, "c2", "r2"))
        .await
        .unwrap();
    let url2 = second.url.clone();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.election.is_leader());
    let r = admin(
        Method::POST,
        &format!("{url2}/v1/keys"),
        Some(json!({"name": "k"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json["error"]["type"], "not_leader");
    assert_eq!(r.json["error"]["leader"]["url"], url1.as_str());
    let r = admin(Method::GET, &format!("{url2}/v1/leader"), None).await;
    assert_eq!(r.json["leader"]["id"], "c1");
    assert_eq!(r.json["is_leader"], false);
    assert_eq!(
        admin(Method::GET, &format!("{url2}/v1/keys"), None)
            .await
            .status,
        StatusCode::OK
    );

    // A clean shutdown hands over at once (the lease is revoked, not left to expire).
    let t = std::time::Instant::now();
    first.shutdown().await;
    wait_until(Duration::from_secs(2), || second.election.is_leader()).await;
    eprintln!("clean handover took {:?}", t.elapsed());
    let r = admin(
        Method::POST,
        &format!("{url2}/v1/keys"),
        Some(json!({"name": "k"})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    second.shutdown().await;
}

#[test]
fn example_config_parses() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/coordinator.example.toml"
    );
    let raw = strait_coordinator::config::RawConfig::from_file(std::path::Path::new(path))
        .expect("example config parses");
    let c = strait_coordinator::config::Config::build(
        raw,
        strait_coordinator::config::SecretSources {
            admin_token: Some(strait_node::config::Secret::new(TOKEN)),
            kek: Some(strait_node::config::Secret::new(KEK_HEX)),
            cluster_secret: None,
        },
    )
    .expect("example config is valid");
    assert_eq!(c.lease_ttl, Duration::from_secs(5));
    assert!(!c.summary().contains(TOKEN));
}

#[tokio::test]
async fn a_leader_that_loses_etcd_steps_down_and_leads_again_when_it_returns() {
    let mut etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    etcd.stop();
    // Lease TTL 2 s: no renewal for 2/3 of it means stepping down.
    let t = std::time::Instant::now();
    wait_until(Duration::from_secs(4), || !running.election.is_leader()).await;
    eprintln!("stepped down {:?} after etcd died", t.elapsed());
    let r = admin(
        Method::PUT,
        &format!("{url}/v1/tenants/t1"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let r = admin(Method::GET, &format!("{url}/v1/keys"), None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json["error"]["type"], "unavailable");

    etcd.restart().await;
    let t = std::time::Instant::now();
    wait_until(Duration::from_secs(10), || running.election.is_leader()).await;
    eprintln!("leader again {:?} after etcd came back", t.elapsed());
    let r = admin(
        Method::PUT,
        &format!("{url}/v1/tenants/t1"),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_silently_steps_down_before_the_standby_takes_over() {
    let etcd = Etcd::start().await;
    // Coordinator A reaches etcd through a proxy that can hold packets (no reset).
    let proxy = strait_chaos::faultproxy::FaultProxy::start(
        etcd.endpoint.trim_start_matches("http://").parse().unwrap(),
    )
    .await
    .unwrap();
    let mut cfg = config(&etcd, "c-a", "r1");
    cfg.etcd_endpoints = vec![format!("http://{}", proxy.addr())];
    let a = strait_coordinator::server::start(cfg).await.unwrap();
    wait_until(Duration::from_secs(10), || a.election.is_leader()).await;
    let b = strait_coordinator::server::start(config(&etcd, "c-b", "r2"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.election.is_leader());

    proxy.set_blackhole(true);
    let cut = std::time::Instant::now();
    let (mut a_down, mut b_up) = (None, None);
    while b_up.is_none() {
        let (la, lb) = (a.election.is_leader(), b.election.is_leader());
        assert!(!(la && lb), "two coordinators believe they lead");
        if !la && a_down.is_none() {
            a_down = Some(cut.elapsed());
        }
        if lb {
            b_up = Some(cut.elapsed());
        }
        assert!(
            cut.elapsed() < Duration::from_secs(6),
            "no takeover: a leads {la}, b leads {lb}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("silent etcd (TTL 2 s): old leader stepped down after {a_down:?}, standby led after {b_up:?}");
    let r = admin(
        Method::PUT,
        &format!("{}/v1/tenants/t1", b.url),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Back on the network, A stays a standby and names B.
    proxy.set_blackhole(false);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!a.election.is_leader() && b.election.is_leader());
    let r = admin(
        Method::PUT,
        &format!("{}/v1/tenants/t2", a.url),
        Some(json!({})),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.json["error"]["leader"]["id"], "c-b", "{}", r.text);
    b.shutdown().await;
    proxy.set_blackhole(false);
    tokio::time::timeout(Duration::from_secs(10), a.shutdown())
        .await
        .ok();
}
