//! TLS on the public listener (TLS 1.2/1.3, 1.3-only, ALPN h2) with certificate reload,
//! and HTTPS with HTTP/2 to the upstream.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use strait_chaos::mock::MockConfig;
use strait_chaos::tls::{client_config, SelfSignedCert};

struct TlsFiles {
    _dir: tempfile::TempDir,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
}

fn write_cert(cert: &SelfSignedCert) -> TlsFiles {
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&c, cert.cert_pem()).unwrap();
    std::fs::write(&k, cert.key_pem()).unwrap();
    TlsFiles {
        _dir: dir,
        cert: c,
        key: k,
    }
}

async fn tls_node(files: &TlsFiles, tls13_only: bool) -> Harness {
    let (cert, key) = (files.cert.clone(), files.key.clone());
    Harness::build(
        MockConfig::default(),
        move |raw| {
            raw.tls = Some(strait_node::config::RawTls {
                cert,
                key,
                tls13_only,
            })
        },
        &UPSTREAM_KEYS,
        &[CLIENT_KEY],
    )
    .await
}

/// An HTTPS request; the ALPN list offered is the one in `cfg` (h2 and/or http/1.1).
async fn https_request(
    mut cfg: rustls::ClientConfig,
    port: u16,
    http2_only: bool,
) -> Result<Resp, String> {
    let offers_h2 = cfg.alpn_protocols.iter().any(|p| p == b"h2");
    let offers_h1 = cfg.alpn_protocols.iter().any(|p| p == b"http/1.1");
    // hyper-rustls sets ALPN itself from the enabled versions.
    cfg.alpn_protocols.clear();
    let b = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(cfg)
        .https_only();
    let https = match (offers_h2, offers_h1) {
        (true, true) => b.enable_all_versions().build(),
        (true, false) => b.enable_http2().build(),
        _ => b.enable_http1().build(),
    };
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(http2_only)
        .build(https);
    let req = Request::post(format!("https://localhost:{port}/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(message_body(false).to_string())))
        .unwrap();
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    Ok(collect(resp, Instant::now()).await)
}

#[tokio::test]
async fn https_with_http2_by_alpn_and_http1_fallback() {
    let cert = SelfSignedCert::localhost().unwrap();
    let files = write_cert(&cert);
    let h = tls_node(&files, false).await;
    let port = h.node().public_addr().port();

    let r = https_request(
        client_config(cert.ca_pem(), &[b"h2", b"http/1.1"]).unwrap(),
        port,
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.version, http::Version::HTTP_2, "h2 chosen by ALPN");

    let r = https_request(
        client_config(cert.ca_pem(), &[b"http/1.1"]).unwrap(),
        port,
        false,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.version, http::Version::HTTP_11);
}

fn tls12_client(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    use rustls_pki_types::pem::PemObject;
    for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg
}

#[tokio::test]
async fn tls13_only_refuses_tls12_clients() {
    let cert = SelfSignedCert::localhost().unwrap();
    let files = write_cert(&cert);

    let both = tls_node(&files, false).await;
    let r = https_request(
        tls12_client(cert.ca_pem()),
        both.node().public_addr().port(),
        true,
    )
    .await;
    assert_eq!(r.expect("TLS 1.2 accepted by default").status, 200);

    let strict = tls_node(&files, true).await;
    let r = https_request(
        tls12_client(cert.ca_pem()),
        strict.node().public_addr().port(),
        true,
    )
    .await;
    assert!(r.is_err(), "TLS 1.2 refused in 1.3-only mode");
    let r = https_request(
        client_config(cert.ca_pem(), &[b"h2"]).unwrap(),
        strict.node().public_addr().port(),
        true,
    )
    .await;
    assert_eq!(r.unwrap().status, 200);
}

#[tokio::test]
async fn certificate_reload_serves_the_new_certificate_to_new_connections() {
    let old = SelfSignedCert::localhost().unwrap();
    let files = write_cert(&old);
    let h = tls_node(&files, false).await;
    let port = h.node().public_addr().port();
    assert!(
        https_request(client_config(old.ca_pem(), &[b"h2"]).unwrap(), port, true)
            .await
            .is_ok()
    );

    let new = SelfSignedCert::localhost().unwrap();
    std::fs::write(&files.cert, new.cert_pem()).unwrap();
    std::fs::write(&files.key, new.key_pem()).unwrap();
    // Before the reload the old certificate is still served.
    assert!(
        https_request(client_config(new.ca_pem(), &[b"h2"]).unwrap(), port, true)
            .await
            .is_err()
    );
    h.node().reload_tls().expect("reload");
    let r = https_request(client_config(new.ca_pem(), &[b"h2"]).unwrap(), port, true).await;
    assert_eq!(r.expect("new certificate served").status, 200);

    // A broken file is refused and the current certificate stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    assert!(h.node().reload_tls().is_err());
    let r = https_request(client_config(new.ca_pem(), &[b"h2"]).unwrap(), port, true).await;
    assert_eq!(r.unwrap().status, 200);
}

/// A node whose upstream is `mock_cfg`'s mock over HTTPS (the node trusts its CA).
/// The mock's CA is known only after it starts, so the node is built by hand here.
async fn node_on_https_mock(
    mock_cfg: MockConfig,
    tweak: impl FnOnce(&mut strait_node::config::RawConfig),
) -> (
    strait_chaos::mock::MockHandle,
    strait_node::Node,
    tempfile::TempDir,
) {
    let mock = strait_chaos::mock::MockUpstream::start(MockConfig {
        tls: true,
        ..mock_cfg
    })
    .await
    .unwrap();
    let ca_dir = tempfile::tempdir().unwrap();
    let ca_path = ca_dir.path().join("ca.pem");
    std::fs::write(&ca_path, mock.cert_pem().unwrap()).unwrap();
    let mut raw = strait_node::config::RawConfig::default();
    raw.listen.public = "127.0.0.1:0".into();
    raw.listen.admin = "127.0.0.1:0".into();
    raw.upstream.base_url = format!("https://localhost:{}", mock.addr().port());
    raw.upstream.ca_file = Some(ca_path);
    // The node's state (its deferred spool) beside the CA, removed with it.
    raw.cluster.state_dir = ca_dir.path().join("state");
    common::quiet_probes(&mut raw);
    common::one_event_loop(&mut raw);
    tweak(&mut raw);
    let cfg = raw
        .validate(
            vec![strait_node::config::Secret::new(UPSTREAM_KEYS[0])],
            vec![strait_node::config::Secret::new(CLIENT_KEY)],
        )
        .unwrap();
    let node = strait_node::Node::start(cfg).await.unwrap();
    (mock, node, ca_dir)
}

#[tokio::test]
async fn upstream_over_https_uses_http2_when_offered() {
    let (mock, node, _ca) = node_on_https_mock(MockConfig::default(), |_| {}).await;
    let url = format!("http://{}", node.public_addr());
    // A burst before the node knows what the upstream speaks: the first dial answers
    // for all of them, and they share its one HTTP/2 connection.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let url = url.clone();
        burst.spawn(async move {
            post_json(
                &format!("{url}/v1/messages"),
                &auth(CLIENT_KEY),
                &message_body(false),
            )
            .await
            .status
        });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.unwrap(), 200);
    }
    assert_eq!(
        mock.connections_accepted(),
        1,
        "one HTTP/2 connection for the whole burst"
    );
    for stream in [false, true] {
        let r = post_json(
            &format!("{url}/v1/messages"),
            &auth(CLIENT_KEY),
            &message_body(stream),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let seen = mock.requests();
    assert!(
        seen.iter().all(|r| r.version == http::Version::HTTP_2),
        "{:?}",
        seen.iter().map(|r| r.version).collect::<Vec<_>>()
    );
    assert_eq!(seen[0].header("x-api-key"), Some(UPSTREAM_KEYS[0]));
}

/// Streams past an HTTP/2 connection's stream cap go on a new connection instead of
/// waiting for a stream on a full one to end: ten slow streams at a cap of four are
/// all under way before the first of them ends, on three connections. When they are
/// done, the extra connections are let go.
#[tokio::test]
async fn upstream_http2_streams_past_the_cap_open_new_connections() {
    let mock_cfg = MockConfig {
        h2_max_streams: 4,
        pacing: strait_chaos::mock::Pacing {
            ttft: std::time::Duration::ZERO,
            interval: std::time::Duration::from_millis(150),
            tokens: 10,
        },
        ..MockConfig::default()
    };
    let (mock, node, _ca) = node_on_https_mock(mock_cfg, |raw| {
        raw.upstream.h2_max_streams_per_connection = 4;
    })
    .await;
    let url = format!("http://{}/v1/messages", node.public_addr());
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let url = url.clone();
        streams.spawn(async move {
            let sent = Instant::now();
            let r = post_json(&url, &auth(CLIENT_KEY), &message_body(true)).await;
            assert_eq!(r.status, 200, "{}", r.text());
            assert!(r.text().contains("message_stop"), "{}", r.text());
            let first = r.chunks.first().expect("a first event").0;
            let last = r.chunks.last().expect("a last event").0;
            (sent + first, sent + last)
        });
    }
    let mut spans = Vec::new();
    while let Some(span) = streams.join_next().await {
        spans.push(span.unwrap());
    }
    let last_start = spans.iter().map(|s| s.0).max().unwrap();
    let first_end = spans.iter().map(|s| s.1).min().unwrap();
    assert!(
        last_start < first_end,
        "a stream waited for another to end before it started ({:?} after the first end)",
        last_start - first_end
    );
    assert_eq!(
        mock.connections_accepted(),
        3,
        "ten streams at four per connection"
    );
    // The next request takes the first connection and lets the idle extras go.
    let r = post_json(&url, &auth(CLIENT_KEY), &message_body(false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let admin = format!("http://{}/metrics", node.admin_addr());
    eventually(
        "the extra upstream connections to close",
        std::time::Duration::from_secs(10),
        async || {
            get(&admin, &[])
                .await
                .text()
                .lines()
                .any(|l| l == "strait_upstream_connections 1")
        },
    )
    .await;
    assert_eq!(
        mock.connections_accepted(),
        3,
        "no new connection was needed"
    );
}
