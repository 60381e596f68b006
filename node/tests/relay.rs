//! Relay through a peer region: in-process nodes of two or three regions on
//! 127.0.0.1 sharing one etcd and one mock upstream, each node's path through its
//! own fault proxy. A cut path relays with no client error; a key pinned to its
//! region is never relayed; forged, stale and replayed signatures get 401; a relayed
//! request is never relayed again; a stream comes through byte for byte.

mod common;

use std::time::Duration;

use common::etcd::Etcd;
use common::*;
use strait_chaos::faultproxy::{FaultProxy, FaultProxyHandle};
use strait_chaos::mock::{MockConfig, MockHandle, MockUpstream};
use strait_node::config::{hash_key, RawConfig, Secret};
use strait_node::relay::Channel;
use strait_node::schema::{client_key_key, ClientKeyDoc, LimitsDoc};
use strait_node::Node;

const SECRET: &str = "relay-test-cluster-secret-0123456789";
/// A cluster key allowed in `east` only.
const PINNED_KEY: &str = "strait-client-key-pinned-east";
/// The name the node gives the environment's client key ([`CLIENT_KEY`]).
const ENV_KEY_NAME: &str = "key-1";

/// A node of `region` whose upstream is the shared mock behind its own fault proxy.
struct RegionNode {
    _node: Node,
    proxy: FaultProxyHandle,
    url: String,
    admin: String,
    _state: tempfile::TempDir,
}

impl RegionNode {
    async fn start(etcd: Option<&Etcd>, mock: &MockHandle, region: &str) -> RegionNode {
        RegionNode::start_with(etcd, mock, region, |_| {}).await
    }

    /// [`RegionNode::start`], with the raw config changed by `tweak`.
    async fn start_with(
        etcd: Option<&Etcd>,
        mock: &MockHandle,
        region: &str,
        tweak: impl FnOnce(&mut RawConfig),
    ) -> RegionNode {
        let proxy = FaultProxy::start(mock.addr())
            .await
            .expect("fault proxy starts");
        let state = tempfile::tempdir().unwrap();
        let mut raw = RawConfig::default();
        raw.listen.public = "127.0.0.1:0".into();
        raw.listen.admin = "127.0.0.1:0".into();
        raw.upstream.base_url = format!("http://{}", proxy.addr());
        raw.upstream.connect_timeout = Duration::from_millis(500);
        raw.log.access_log = false;
        raw.cluster.state_dir = state.path().to_path_buf();
        raw.cluster.cluster_secret = Some(Secret::new(SECRET));
        raw.health.probe_interval = Duration::from_millis(300);
        raw.health.probe_timeout = Duration::from_millis(200);
        if let Some(etcd) = etcd {
            raw.cluster.etcd = vec![etcd.url.clone()];
            raw.cluster.region = region.into();
            raw.cluster.node_id = Some(format!("{region}-1"));
            raw.cluster.lease_ttl = Duration::from_secs(5);
        }
        common::one_event_loop(&mut raw);
        tweak(&mut raw);
        let config = raw
            .validate(
                UPSTREAM_KEYS.iter().map(|k| Secret::new(*k)).collect(),
                vec![Secret::new(CLIENT_KEY)],
            )
            .expect("test config is valid");
        let node = Node::start(config).await.expect("node starts");
        RegionNode {
            url: format!("http://{}", node.public_addr()),
            admin: format!("http://{}", node.admin_addr()),
            _node: node,
            proxy,
            _state: state,
        }
    }

    fn cut(&self) {
        self.proxy.set_refuse(true);
        self.proxy.reset_all();
    }

    async fn message(&self, key: &str, stream: bool) -> Resp {
        post_json(
            &format!("{}/v1/messages", self.url),
            &auth(key),
            &message_body(stream),
        )
        .await
    }

    async fn metric(&self, series: &str) -> f64 {
        metric_at(&self.admin, series).await
    }

    /// Waits until this node sees `n` nodes in etcd (its peers' records included).
    async fn sees(&self, n: usize) {
        eventually(
            &format!("{n} live nodes"),
            Duration::from_secs(10),
            async || self.metric("strait_cluster_nodes").await == n as f64,
        )
        .await;
    }

    async fn readyz(&self) -> serde_json::Value {
        get(&format!("{}/readyz", self.admin), &[]).await.json()
    }
}

async fn mock() -> MockHandle {
    MockUpstream::start(MockConfig::default())
        .await
        .expect("mock upstream starts")
}

/// Messages requests the mock has seen (probes left out).
fn messages_seen(mock: &MockHandle) -> Vec<strait_chaos::mock::RecordedRequest> {
    mock.requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/v1/messages"))
        .collect()
}

/// A body with its message id (`msg_` and 24 characters) blanked.
fn unnamed(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).into_owned();
    match text.find("\"id\":\"msg_") {
        Some(at) => {
            let start = at + "\"id\":\"msg_".len();
            format!("{}{}", &text[..start], &text[start + 24..])
        }
        None => text,
    }
}

async fn put_pinned_key(etcd: &Etcd) {
    let doc = ClientKeyDoc {
        id: "ck-pinned".into(),
        name: "pinned".into(),
        tenant: None,
        sha256: hex::encode(hash_key(PINNED_KEY)),
        created_at: "2026-11-27T00:00:00Z".into(),
        revoked: false,
        limits: LimitsDoc::default(),
        allowed_regions: Some(vec!["east".into()]),
        pool: None,
    };
    etcd.client()
        .await
        .put(
            client_key_key("ck-pinned"),
            serde_json::to_vec(&doc).unwrap(),
            None,
        )
        .await
        .expect("etcd put");
}

/// Signed relay fields as a peer would send them, for `path` as `principal`.
fn signed(
    channel: &Channel,
    path: &str,
    principal: &str,
    ts: Option<u64>,
) -> Vec<(String, String)> {
    let s = match ts {
        Some(ts) => channel.sign_at("POST", path, principal, ts, rand::random()),
        None => channel.sign("POST", path, principal),
    }
    .unwrap();
    s.fields()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
        .collect()
}

async fn post_signed(url: &str, fields: &[(String, String)]) -> Resp {
    let mut headers: Vec<(&str, &str)> = vec![("anthropic-version", "2023-06-01")];
    headers.extend(fields.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    post_json(
        &format!("{url}/v1/messages"),
        &headers,
        &message_body(false),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_path_relays_through_the_peer_and_a_pinned_key_is_never_relayed() {
    let etcd = Etcd::start();
    let mock = mock().await;
    put_pinned_key(&etcd).await;
    let east = RegionNode::start(Some(&etcd), &mock, "east").await;
    let west = RegionNode::start(Some(&etcd), &mock, "west").await;
    east.sees(2).await;
    eventually(
        "the pinned key is known",
        Duration::from_secs(10),
        async || east.message(PINNED_KEY, false).await.status == 200,
    )
    .await;
    let direct = east.message(CLIENT_KEY, true).await;
    assert_eq!(direct.status, 200);
    assert_eq!(direct.header("x-strait-relayed-via"), None);

    // Cut before the circuit knows: the failed connect turns into a relay within
    // the same request.
    east.cut();
    let before = messages_seen(&mock).len();
    let started = std::time::Instant::now();
    let r = east.message(CLIENT_KEY, false).await;
    let first_relay = started.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-strait-relayed-via"), Some("west"));
    let seen = messages_seen(&mock);
    assert_eq!(seen.len(), before + 1, "sent upstream once, by west");
    let last = seen.last().unwrap();
    assert!(
        last.header("x-strait-relay-signature").is_none()
            && last.header("x-strait-relay-principal").is_none(),
        "relay fields stop at the peer"
    );
    assert!(
        UPSTREAM_KEYS.contains(&last.header("x-api-key").unwrap()),
        "the upstream gets a gateway key, never the client's"
    );

    // A key pinned to east is not sent through west: today's 502, naming the policy.
    let r = east.message(PINNED_KEY, false).await;
    r.assert_gateway_error(502, "api_error");
    assert!(r.text().contains("not relayed"), "{}", r.text());
    assert_eq!(r.header("x-strait-relayed-via"), None);
    assert_eq!(
        messages_seen(&mock).len(),
        before + 1,
        "the pinned request went nowhere"
    );

    // The circuit opens; with a peer to relay through, /readyz warns (still 200).
    eventually("readyz warn", Duration::from_secs(3), async || {
        east.readyz().await["status"] == "warn"
    })
    .await;
    let v = east.readyz().await;
    assert_eq!(
        v["checks"]["upstream:path"][0]["observedValue"], "open",
        "{v}"
    );
    // Relayed from the start now (the circuit is open); streams byte for byte.
    let started = std::time::Instant::now();
    let r = east.message(CLIENT_KEY, false).await;
    let open_relay = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-strait-relayed-via"), Some("west"));
    let relayed = east.message(CLIENT_KEY, true).await;
    assert_eq!(relayed.status, 200);
    assert_eq!(relayed.header("x-strait-relayed-via"), Some("west"));
    let via_west = west.message(CLIENT_KEY, true).await;
    // The mock names each message afresh; every other byte is the same.
    assert_eq!(
        unnamed(&relayed.body),
        unnamed(&via_west.body),
        "the stream relayed byte for byte"
    );
    assert_eq!(unnamed(&relayed.body), unnamed(&direct.body));
    assert_eq!(relayed.body.len(), via_west.body.len());
    assert!(
        east.metric(r#"strait_relay_requests_total{direction="sent"}"#)
            .await
            >= 3.0
    );
    assert!(
        west.metric(r#"strait_relay_requests_total{direction="received"}"#)
            .await
            >= 3.0
    );
    eprintln!("measured: relay after a failed connect {first_relay:?}, relay on an open circuit {open_relay:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_stale_and_replayed_signatures_are_refused() {
    let mock = mock().await;
    let n = RegionNode::start(None, &mock, "east").await;
    let ours = Channel::new(SECRET.as_bytes());

    let good = signed(&ours, "/v1/messages", ENV_KEY_NAME, None);
    let r = post_signed(&n.url, &good).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The same signature again: a replay.
    let r = post_signed(&n.url, &good).await;
    r.assert_gateway_error(401, "authentication_error");
    assert!(r.text().contains("replayed"), "{}", r.text());

    let forged = signed(
        &Channel::new(b"not-the-cluster-secret-at-all"),
        "/v1/messages",
        ENV_KEY_NAME,
        None,
    );
    post_signed(&n.url, &forged)
        .await
        .assert_gateway_error(401, "authentication_error");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let stale = signed(&ours, "/v1/messages", ENV_KEY_NAME, Some(now - 30));
    let r = post_signed(&n.url, &stale).await;
    r.assert_gateway_error(401, "authentication_error");
    assert!(r.text().contains("stale"), "{}", r.text());

    // Signed for another path, and a principal the node does not know.
    let other = signed(&ours, "/v1/complete", ENV_KEY_NAME, None);
    post_signed(&n.url, &other)
        .await
        .assert_gateway_error(401, "authentication_error");
    let unknown = signed(&ours, "/v1/messages", "nobody", None);
    post_signed(&n.url, &unknown)
        .await
        .assert_gateway_error(401, "authentication_error");
    assert_eq!(
        n.metric(r#"strait_relay_requests_total{direction="refused"}"#)
            .await,
        4.0
    );
    assert_eq!(
        messages_seen(&mock).len(),
        1,
        "only the genuine request went upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_request_is_never_relayed_again_with_three_regions() {
    let etcd = Etcd::start();
    let mock = mock().await;
    let east = RegionNode::start(Some(&etcd), &mock, "east").await;
    let west = RegionNode::start(Some(&etcd), &mock, "west").await;
    let south = RegionNode::start(Some(&etcd), &mock, "south").await;
    for n in [&east, &west, &south] {
        n.sees(3).await;
    }
    // West's path is cut, its circuit not open yet: a request relayed to it fails
    // there with the direct path's error, and is not passed on to south.
    let channel = Channel::new(SECRET.as_bytes());
    west.cut();
    let r = post_signed(
        &west.url,
        &signed(&channel, "/v1/messages", ENV_KEY_NAME, None),
    )
    .await;
    r.assert_gateway_error(502, "api_error");
    assert_eq!(r.header("x-strait-relayed-via"), None);
    assert_eq!(
        south
            .metric(r#"strait_relay_requests_total{direction="received"}"#)
            .await,
        0.0
    );

    // East cut too: its request goes through south (west's path is open by now or
    // soon; either way the request is sent upstream exactly once).
    east.cut();
    eventually(
        "west's circuit open in east's view",
        Duration::from_secs(5),
        async || west.readyz().await["checks"]["upstream:path"][0]["observedValue"] == "open",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let before = messages_seen(&mock).len();
    let r = east.message(CLIENT_KEY, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-strait-relayed-via"), Some("south"));
    assert_eq!(messages_seen(&mock).len(), before + 1);
    assert_eq!(
        west.metric(r#"strait_relay_requests_total{direction="sent"}"#)
            .await,
        0.0,
        "west relayed nothing"
    );
    assert_eq!(
        south
            .metric(r#"strait_relay_requests_total{direction="sent"}"#)
            .await,
        0.0,
        "south relayed nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_path_times_out_once_then_the_circuit_opens_and_requests_relay() {
    let etcd = Etcd::start();
    let mock = mock().await;
    let east = RegionNode::start_with(Some(&etcd), &mock, "east", |raw| {
        raw.upstream.read_timeout = Duration::from_millis(800);
    })
    .await;
    let _west = RegionNode::start(Some(&etcd), &mock, "west").await;
    east.sees(2).await;
    assert_eq!(east.message(CLIENT_KEY, false).await.status, 200);

    // The path stalls: the request goes out and nothing comes back. Its outcome is
    // unknown, so it is neither relayed nor resent: the client gets the timeout.
    east.proxy.set_blackhole(true);
    let stalled = post_json(
        &format!("{}/v1/messages", east.url),
        &auth(CLIENT_KEY),
        &common::deferred::marked("stalled-1", false),
    )
    .await;
    stalled.assert_gateway_error(504, "api_error");
    assert_eq!(stalled.header("x-strait-relayed-via"), None);

    // The stall and the probes' timeouts open the circuit; new requests relay.
    eventually("the circuit opens", Duration::from_secs(5), async || {
        east.readyz().await["checks"]["upstream:path"][0]["observedValue"] == "open"
    })
    .await;
    let r = east.message(CLIENT_KEY, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-strait-relayed-via"), Some("west"));

    // Once the stall clears, the held request reaches the upstream at most once.
    east.proxy.set_blackhole(false);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        common::deferred::received(&mock, "stalled-1") <= 1,
        "the stalled request was never resent"
    );
}

/// A cluster CA and one node certificate it signed (for `localhost` and
/// `127.0.0.1`, usable as server and as client certificate), written to files.
struct ClusterPki {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    ca_pem: String,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn cluster_pki() -> ClusterPki {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Strait cluster test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "strait node");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &*ca).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let paths = ["ca.pem", "cert.pem", "key.pem"].map(|n| dir.path().join(n));
    std::fs::write(&paths[0], ca.pem()).unwrap();
    std::fs::write(&paths[1], cert.pem()).unwrap();
    std::fs::write(&paths[2], key.serialize_pem()).unwrap();
    let [ca_path, cert, key] = paths;
    ClusterPki {
        _dir: dir,
        ca: ca_path,
        ca_pem: ca.pem(),
        cert,
        key,
    }
}

/// A POST over HTTPS (HTTP/1.1) trusting only `ca_pem`, without a client certificate.
async fn https_post(
    ca_pem: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &serde_json::Value,
) -> Resp {
    use http_body_util::Full;
    let cfg = strait_chaos::tls::client_config(ca_pem, &[]).unwrap();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let mut req = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(bytes::Bytes::from(body.to_string())))
        .unwrap();
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("answer within 30 s")
        .expect("HTTPS request succeeds at the HTTP level");
    collect(resp, started).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_goes_over_mutual_tls_and_a_relayed_request_without_a_client_cert_is_refused() {
    let etcd = Etcd::start();
    let mock = mock().await;
    let pki = cluster_pki();
    let with_tls = |raw: &mut RawConfig| {
        raw.tls = Some(strait_node::config::RawTls {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
            tls13_only: false,
        });
        raw.cluster.peer_ca_file = Some(pki.ca.clone());
    };
    let east = RegionNode::start_with(Some(&etcd), &mock, "east", with_tls).await;
    let west = RegionNode::start_with(Some(&etcd), &mock, "west", with_tls).await;
    east.sees(2).await;
    let https = |n: &RegionNode| n.url.replace("http://", "https://");

    // The records say both listen with TLS.
    let mut etcd_client = etcd.client().await;
    let recs = etcd_client
        .get(
            "/strait/nodes/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert_eq!(recs.kvs().len(), 2);
    for kv in recs.kvs() {
        let rec: strait_node::schema::NodeRecord = serde_json::from_slice(kv.value()).unwrap();
        assert!(rec.tls, "{rec:?}");
    }

    // East's path is cut: its request goes to west over mutual TLS, signed as ever.
    east.cut();
    let r = https_post(
        &pki.ca_pem,
        &format!("{}/v1/messages", https(&east)),
        &auth(CLIENT_KEY),
        &message_body(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-strait-relayed-via"), Some("west"));
    assert_eq!(
        west.metric(r#"strait_relay_requests_total{direction="received"}"#)
            .await,
        1.0
    );

    // A correctly signed relayed request over TLS but without a client certificate:
    // refused, and its nonce left unspent (the signature was not even looked at).
    let channel = Channel::new(SECRET.as_bytes());
    let fields = signed(&channel, "/v1/messages", ENV_KEY_NAME, None);
    let mut headers: Vec<(&str, &str)> = vec![("anthropic-version", "2023-06-01")];
    headers.extend(fields.iter().map(|(n, v)| (n.as_str(), v.as_str())));
    let before = messages_seen(&mock).len();
    let r = https_post(
        &pki.ca_pem,
        &format!("{}/v1/messages", https(&west)),
        &headers,
        &message_body(false),
    )
    .await;
    r.assert_gateway_error(401, "authentication_error");
    assert!(r.text().contains("client certificate"), "{}", r.text());
    assert_eq!(messages_seen(&mock).len(), before, "nothing went upstream");
    assert_eq!(
        west.metric(r#"strait_relay_requests_total{direction="refused"}"#)
            .await,
        1.0
    );
    // Clients of the API need no certificate.
    let r = https_post(
        &pki.ca_pem,
        &format!("{}/v1/messages", https(&west)),
        &auth(CLIENT_KEY),
        &message_body(false),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A node of `region` whose peers reach it through a fault proxy (its advertised
/// public address) adding `one_way` each way: a peer that far from the others.
async fn far_node(
    etcd: &Etcd,
    mock: &MockHandle,
    region: &str,
    one_way: Duration,
) -> (RegionNode, FaultProxyHandle) {
    let port = free_port();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let front = FaultProxy::start(listen).await.expect("fault proxy starts");
    front.set_latency(one_way);
    let advertised = front.addr().to_string();
    let node = RegionNode::start_with(Some(etcd), mock, region, |raw| {
        raw.listen.public = listen.to_string();
        raw.cluster.advertise_public = Some(advertised);
    })
    .await;
    (node, front)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_with_the_lower_published_ttfb_plus_round_trip_carries_the_relay() {
    let etcd = Etcd::start();
    let mock = mock().await;
    let east = RegionNode::start(Some(&etcd), &mock, "east").await;
    // South would come first by name and publishes as good a path as west's; our
    // round trip to it is 160 ms longer.
    let (_south, _south_front) = far_node(&etcd, &mock, "south", Duration::from_millis(80)).await;
    let (_west, _west_front) = far_node(&etcd, &mock, "west", Duration::ZERO).await;
    east.sees(3).await;
    eventually(
        "both round trips measured",
        Duration::from_secs(10),
        async || {
            east.metric(r#"strait_relay_peer_rtt_seconds{node="south-1",region="south"}"#)
                .await
                > 0.1
                && east
                    .metric(r#"strait_relay_peer_rtt_seconds{node="west-1",region="west"}"#)
                    .await
                    > 0.0
        },
    )
    .await;
    let rtt_south = east
        .metric(r#"strait_relay_peer_rtt_seconds{node="south-1",region="south"}"#)
        .await;
    let rtt_west = east
        .metric(r#"strait_relay_peer_rtt_seconds{node="west-1",region="west"}"#)
        .await;
    assert!(rtt_west < 0.05, "west is near: {rtt_west}");

    east.cut();
    for _ in 0..3 {
        let r = east.message(CLIENT_KEY, false).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-strait-relayed-via"), Some("west"));
    }
    eprintln!("measured: round trip to south {rtt_south:.3} s, to west {rtt_west:.3} s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_much_faster_peer_takes_the_requests_once_its_lead_has_lasted() {
    let etcd = Etcd::start();
    let mock = mock().await;
    let east = RegionNode::start_with(Some(&etcd), &mock, "east", |raw| {
        raw.health.relay_when_faster = true;
        raw.health.faster_ratio = 2.0;
        raw.health.faster_for = Duration::from_millis(900);
        // Probes must get through the slow path, or it counts as broken.
        raw.health.probe_timeout = Duration::from_millis(300);
    })
    .await;
    let (_west, west_front) = far_node(&etcd, &mock, "west", Duration::ZERO).await;
    east.sees(2).await;
    // East's own path is slow (a 100 ms round trip) but works: its circuit stays closed.
    let started = std::time::Instant::now();
    east.proxy.set_latency(Duration::from_millis(50));
    let r = east.message(CLIENT_KEY, false).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-strait-relayed-via"), None, "direct at first");
    eventually(
        "the trigger moves requests to west",
        Duration::from_secs(10),
        async || east.metric("strait_relay_faster_peer").await == 1.0,
    )
    .await;
    let engaged = started.elapsed();
    assert!(
        engaged >= Duration::from_millis(900),
        "not before the lead has lasted faster_for: {engaged:?}"
    );
    let sent = std::time::Instant::now();
    let r = east.message(CLIENT_KEY, false).await;
    let took = sent.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-strait-relayed-via"), Some("west"));
    assert!(
        took < Duration::from_millis(80),
        "the relay avoids the slow path: {took:?}"
    );
    let v = east.readyz().await;
    assert_eq!(v["status"], "pass", "a working direct path: {v}");

    // West becomes unreachable: nothing was sent, so the request goes direct.
    west_front.set_refuse(true);
    west_front.reset_all();
    let r = east.message(CLIENT_KEY, false).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-strait-relayed-via"), None);
    eprintln!("measured: trigger engaged {engaged:?} after the path slowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_without_tls_still_relays_over_tls_to_a_peer_that_listens_with_it() {
    let etcd = Etcd::start();
    let mock = mock().await;
    let pki = cluster_pki();
    // East has no certificate of its own (no mTLS), but trusts the cluster CA.
    let east = RegionNode::start_with(Some(&etcd), &mock, "east", |raw| {
        raw.cluster.peer_ca_file = Some(pki.ca.clone());
    })
    .await;
    // West listens with TLS and asks no client certificate (no peer_ca_file).
    let west = RegionNode::start_with(Some(&etcd), &mock, "west", |raw| {
        raw.tls = Some(strait_node::config::RawTls {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
            tls13_only: true,
        });
    })
    .await;
    east.sees(2).await;
    east.cut();
    let r = east.message(CLIENT_KEY, true).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-strait-relayed-via"), Some("west"));
    // Only TLS reaches west's listener (a plain request there would not be answered
    // as HTTP), so the relay went over TLS; its signature still counted.
    assert_eq!(
        west.metric(r#"strait_relay_requests_total{direction="received"}"#)
            .await,
        1.0
    );
}
