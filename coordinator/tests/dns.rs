//! The smart DNS server against a real etcd: node records written into etcd as nodes
//! write them, queries sent as raw DNS packets over UDP and TCP.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Etcd, KEK_HEX, TOKEN};
use etcd_client::{Client, PutOptions};
use hickory_server::proto::op::{Edns, Message, Query, ResponseCode};
use hickory_server::proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_server::proto::rr::{Name, RData, RecordType};
use http::Method;
use strait_coordinator::config::{Config, RawConfig, RawDns, SecretSources};
use strait_coordinator::server::Running;
use strait_node::config::Secret;
use strait_node::schema::{node_key, NodeRecord, NodeState, PathHealth, Ready};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ZONE: &str = "api.strait.test";

/// A coordinator serving DNS for [`ZONE`] on a free port, with `regions` as its map.
async fn coordinator(etcd: &Etcd, regions: &[(&str, &str)]) -> (Running, SocketAddr) {
    let raw = RawConfig {
        id: Some("c1".into()),
        region: Some("r1".into()),
        listen: Some("127.0.0.1:0".into()),
        etcd_endpoints: Some(vec![etcd.endpoint.clone()]),
        lease_ttl: Some("2s".into()),
        dns: Some(RawDns {
            listen: Some("127.0.0.1:0".into()),
            name: Some(ZONE.into()),
            ttl: Some("7s".into()),
            nameservers: Some(vec!["ns1.strait.test".into(), "ns2.strait.test".into()]),
            hostmaster: None,
            regions: regions
                .iter()
                .map(|(n, r)| (n.to_string(), r.to_string()))
                .collect::<BTreeMap<_, _>>(),
        }),
        ..Default::default()
    };
    let config = Config::build(
        raw,
        SecretSources {
            admin_token: Some(Secret::new(TOKEN)),
            kek: Some(Secret::new(KEK_HEX)),
            cluster_secret: None,
        },
    )
    .expect("valid config");
    let running = strait_coordinator::server::start(config)
        .await
        .expect("coordinator starts");
    let addr = running.dns_addr.expect("dns is on");
    (running, addr)
}

/// Writes a node record as a node does (optionally under `lease`).
async fn put_node(
    etcd: &mut Client,
    id: &str,
    region: &str,
    public_addr: &str,
    state: NodeState,
    status: &str,
    lease: Option<i64>,
) {
    let rec = NodeRecord {
        id: id.into(),
        region: region.into(),
        public_addr: public_addr.into(),
        admin_addr: "127.0.0.1:1".into(),
        version: "test".into(),
        started_at: "2026-01-01T00:00:00Z".into(),
        state,
        path: PathHealth {
            status: status.into(),
            ..Default::default()
        },
        // What a node publishes as its `/readyz` verdict.
        ready: match status {
            "fail" => Ready::Fail,
            "warn" => Ready::Warn,
            _ => Ready::Pass,
        },
        tls: false,
    };
    let opts = lease.map(|l| PutOptions::new().with_lease(l));
    etcd.put(
        node_key(region, id),
        serde_json::to_vec(&rec).unwrap(),
        opts,
    )
    .await
    .expect("put node record");
}

/// One query; `ecs` adds an EDNS Client Subnet option ("10.2.5.0/24").
async fn query(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    ecs: Option<&str>,
    tcp: bool,
) -> Message {
    let mut msg = Message::query();
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(subnet) = ecs {
        let mut edns = Edns::new();
        edns.options_mut()
            .insert(EdnsOption::Subnet(subnet.parse::<ClientSubnet>().unwrap()));
        msg.set_edns(edns);
    }
    let bytes = msg.to_vec().unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(3), async {
        if tcp {
            let mut s = tokio::net::TcpStream::connect(server).await.unwrap();
            s.write_all(&(bytes.len() as u16).to_be_bytes())
                .await
                .unwrap();
            s.write_all(&bytes).await.unwrap();
            let len = s.read_u16().await.unwrap() as usize;
            let mut buf = vec![0; len];
            s.read_exact(&mut buf).await.unwrap();
            buf
        } else {
            let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            s.send_to(&bytes, server).await.unwrap();
            let mut buf = vec![0; 4096];
            let (n, _) = s.recv_from(&mut buf).await.unwrap();
            buf.truncate(n);
            buf
        }
    })
    .await
    .expect("a DNS reply within 3 s");
    let reply = Message::from_vec(&reply).expect("a valid DNS message");
    assert_eq!(reply.metadata.id, msg.metadata.id);
    reply
}

/// The addresses in the answer section, sorted.
fn ips(m: &Message) -> Vec<String> {
    let mut v: Vec<String> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

/// The ECS option of a reply: (address, source, scope).
fn ecs(m: &Message) -> Option<(String, u8, u8)> {
    match m.edns.as_ref()?.option(EdnsCode::Subnet)? {
        EdnsOption::Subnet(s) => Some((s.addr().to_string(), s.source_prefix(), s.scope_prefix())),
        _ => None,
    }
}

async fn a(server: SocketAddr) -> Vec<String> {
    ips(&query(server, ZONE, RecordType::A, None, false).await)
}

/// Waits until DNS has seen `n` nodes with an address (every write so far, when
/// the last one added the n-th node: the watch applies writes in order).
async fn seen(running: &Running, n: i64) {
    common::wait_until(Duration::from_secs(3), || running.metrics.nodes.get() == n).await;
}

/// Polls the A answer until it equals `want`; how long that took.
async fn wait_for(server: SocketAddr, want: &[&str], limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let got = a(server).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "answer still {got:?}, want {want:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_records_and_refusals_over_udp_and_tcp() {
    let etcd = Etcd::start().await;
    let (running, dns) = coordinator(&etcd, &[]).await;
    for tcp in [false, true] {
        let soa = query(dns, ZONE, RecordType::SOA, None, tcp).await;
        assert_eq!(soa.metadata.response_code, ResponseCode::NoError);
        assert!(soa.metadata.authoritative, "authoritative answer");
        match soa.answers.first().map(|r| &r.data) {
            Some(RData::SOA(s)) => {
                assert_eq!(s.mname.to_ascii(), "ns1.strait.test.");
                assert_eq!(s.rname.to_ascii(), "hostmaster.api.strait.test.");
                assert!(s.serial > 0);
                assert_eq!(s.minimum, 7, "negative TTL follows the answer TTL");
            }
            other => panic!("no SOA in {other:?} (tcp {tcp})"),
        }
        let ns = query(dns, ZONE, RecordType::NS, None, tcp).await;
        let mut names: Vec<String> = ns
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::NS(n) => Some(n.0.to_ascii()),
                _ => None,
            })
            .collect();
        names.sort();
        assert_eq!(names, ["ns1.strait.test.", "ns2.strait.test."]);

        let other = query(dns, "www.api.strait.test.", RecordType::A, None, tcp).await;
        assert_eq!(other.metadata.response_code, ResponseCode::NXDomain);
        assert!(other.metadata.authoritative);
        assert!(
            matches!(
                other.authorities.first().map(|r| &r.data),
                Some(RData::SOA(_))
            ),
            "NXDOMAIN carries the SOA for negative caching"
        );
        let outside = query(dns, "example.org.", RecordType::A, None, tcp).await;
        assert_eq!(outside.metadata.response_code, ResponseCode::Refused);
        assert!(outside.answers.is_empty());
        // The parent of the zone is outside it too.
        let parent = query(dns, "strait.test.", RecordType::SOA, None, tcp).await;
        assert_eq!(parent.metadata.response_code, ResponseCode::Refused);
    }
    // No node yet: NODATA (name exists, no address), with the SOA.
    let empty = query(dns, ZONE, RecordType::A, None, false).await;
    assert_eq!(empty.metadata.response_code, ResponseCode::NoError);
    assert!(empty.answers.is_empty());
    assert!(matches!(
        empty.authorities.first().map(|r| &r.data),
        Some(RData::SOA(_))
    ));
    // Names are matched without regard to case; the answer keeps the query's case.
    let mut c = etcd.client().await;
    put_node(
        &mut c,
        "a",
        "r1",
        "10.9.0.1:8443",
        NodeState::Serving,
        "pass",
        None,
    )
    .await;
    wait_for(dns, &["10.9.0.1"], Duration::from_secs(2)).await;
    let mixed = query(dns, "Api.Strait.TEST.", RecordType::A, None, true).await;
    assert_eq!(ips(&mixed), ["10.9.0.1"]);
    assert_eq!(mixed.answers[0].name.to_ascii(), "Api.Strait.TEST.");
    assert_eq!(mixed.answers[0].ttl, 7);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_follow_readiness_drain_and_lease_expiry() {
    let etcd = Etcd::start().await;
    let (running, dns) = coordinator(&etcd, &[]).await;
    let mut c = etcd.client().await;
    use NodeState::{Draining, Serving};
    put_node(&mut c, "a", "east", "10.9.0.1:8443", Serving, "pass", None).await;
    put_node(&mut c, "b", "east", "10.9.0.2:8443", Serving, "warn", None).await;
    put_node(&mut c, "c", "west", "10.9.0.3:8443", Serving, "fail", None).await;
    put_node(&mut c, "d", "west", "10.9.0.4:8443", Draining, "pass", None).await;
    put_node(
        &mut c,
        "v6",
        "west",
        "[2001:db8::6]:8443",
        Serving,
        "pass",
        None,
    )
    .await;
    put_node(
        &mut c,
        "named",
        "west",
        "gw.example.com:8443",
        Serving,
        "pass",
        None,
    )
    .await;
    seen(&running, 5).await;
    assert_eq!(a(dns).await, ["10.9.0.1", "10.9.0.2"]);
    let aaaa = query(dns, ZONE, RecordType::AAAA, None, false).await;
    assert_eq!(ips(&aaaa), ["2001:db8::6"]);

    // Draining leaves the answer as soon as the record says so.
    put_node(&mut c, "a", "east", "10.9.0.1:8443", Draining, "pass", None).await;
    let drained = wait_for(dns, &["10.9.0.2"], Duration::from_secs(1)).await;
    // A failing path leaves it too; healing brings the node back.
    put_node(&mut c, "b", "east", "10.9.0.2:8443", Serving, "fail", None).await;
    put_node(&mut c, "c", "west", "10.9.0.3:8443", Serving, "pass", None).await;
    let failed = wait_for(dns, &["10.9.0.3"], Duration::from_secs(1)).await;
    put_node(&mut c, "a", "east", "10.9.0.1:8443", Serving, "pass", None).await;
    let back = wait_for(dns, &["10.9.0.1", "10.9.0.3"], Duration::from_secs(1)).await;

    // A node that dies stops refreshing its lease; its record goes when it expires.
    let lease = c.lease_grant(2, None).await.unwrap().id();
    let granted = Instant::now();
    put_node(
        &mut c,
        "e",
        "east",
        "10.9.0.5:8443",
        Serving,
        "pass",
        Some(lease),
    )
    .await;
    wait_for(
        dns,
        &["10.9.0.1", "10.9.0.3", "10.9.0.5"],
        Duration::from_secs(1),
    )
    .await;
    wait_for(dns, &["10.9.0.1", "10.9.0.3"], Duration::from_secs(6)).await;
    let expired = granted.elapsed();
    eprintln!(
        "dns left the answer: draining after {drained:?}, failing after {failed:?}, \
         back after {back:?}; lease (TTL 2s) expiry after {expired:?}"
    );
    assert!(
        expired >= Duration::from_millis(1500),
        "not before the lease ran out"
    );
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subnet_map_picks_the_region_with_and_without_ecs() {
    let etcd = Etcd::start().await;
    let map = [
        ("127.0.0.0/8", "east"),
        ("10.2.0.0/16", "west"),
        ("10.2.3.0/24", "east"),
        ("2001:db8::/32", "west"),
    ];
    let (running, dns) = coordinator(&etcd, &map).await;
    let mut c = etcd.client().await;
    put_node(
        &mut c,
        "e1",
        "east",
        "10.9.0.1:8443",
        NodeState::Serving,
        "pass",
        None,
    )
    .await;
    put_node(
        &mut c,
        "w1",
        "west",
        "10.9.1.1:8443",
        NodeState::Serving,
        "pass",
        None,
    )
    .await;
    put_node(
        &mut c,
        "w6",
        "west",
        "[2001:db8::1]:8443",
        NodeState::Serving,
        "pass",
        None,
    )
    .await;

    // No ECS: the packet comes from 127.0.0.1, mapped to east; no OPT asked, none sent.
    seen(&running, 3).await;
    let plain = query(dns, ZONE, RecordType::A, None, true).await;
    assert_eq!(ips(&plain), ["10.9.0.1"]);
    assert!(plain.edns.is_none());

    for tcp in [false, true] {
        // 10.2.5.0/24 is west; 10.2.3.0/24 (east) splits 10.2.0.0/16, so the answer
        // holds for 10.2.4.0/22 only: scope 22.
        let r = query(dns, ZONE, RecordType::A, Some("10.2.5.0/24"), tcp).await;
        assert_eq!(ips(&r), ["10.9.1.1"]);
        assert_eq!(ecs(&r), Some(("10.2.5.0".into(), 24, 22)));
    }
    let r = query(dns, ZONE, RecordType::A, Some("10.2.3.0/24"), false).await;
    assert_eq!(
        (ips(&r), ecs(&r)),
        (
            vec!["10.9.0.1".to_string()],
            Some(("10.2.3.0".into(), 24, 24))
        )
    );
    // ECS wins over the packet's source (127.0.0.1, east); 10.2.200.x and 10.2.3.x
    // part at bit 17, so the answer holds for 10.2.128.0/17.
    let r = query(dns, ZONE, RecordType::A, Some("10.2.200.0/24"), false).await;
    assert_eq!(
        (ips(&r), ecs(&r).map(|e| e.2)),
        (vec!["10.9.1.1".to_string()], Some(17))
    );
    // In no mapped subnet: every ready node, valid for 128.0.0.0/1.
    let r = query(dns, ZONE, RecordType::A, Some("192.0.2.0/24"), false).await;
    assert_eq!(
        (ips(&r), ecs(&r).map(|e| e.2)),
        (
            vec!["10.9.0.1".to_string(), "10.9.1.1".to_string()],
            Some(1)
        )
    );
    // IPv6 client subnet, west: the west node's AAAA, and its A.
    let r = query(dns, ZONE, RecordType::AAAA, Some("2001:db8:1::/48"), false).await;
    assert_eq!(ips(&r), ["2001:db8::1"]);
    assert_eq!(ecs(&r), Some(("2001:db8:1::".into(), 48, 32)));
    let r = query(dns, ZONE, RecordType::A, Some("2001:db8:1::/48"), false).await;
    assert_eq!(ips(&r), ["10.9.1.1"]);
    // Source length 0: the client asked not to be located; every ready node, scope 0.
    let r = query(dns, ZONE, RecordType::A, Some("0.0.0.0/0"), false).await;
    assert_eq!(
        (ips(&r), ecs(&r).map(|e| e.2)),
        (
            vec!["10.9.0.1".to_string(), "10.9.1.1".to_string()],
            Some(0)
        )
    );
    // Answers that do not depend on the client say so with scope 0.
    let r = query(dns, ZONE, RecordType::SOA, Some("10.2.5.0/24"), false).await;
    assert_eq!(ecs(&r).map(|e| e.2), Some(0));
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_region_when_the_nearest_has_none_and_fail_open_when_none_is_ready() {
    let etcd = Etcd::start().await;
    let (running, dns) =
        coordinator(&etcd, &[("127.0.0.0/8", "east"), ("10.2.0.0/16", "west")]).await;
    let mut c = etcd.client().await;
    use NodeState::{Draining, Serving};
    put_node(&mut c, "e1", "east", "10.9.0.1:8443", Serving, "pass", None).await;
    put_node(&mut c, "w1", "west", "10.9.1.1:8443", Serving, "pass", None).await;
    put_node(&mut c, "w2", "west", "10.9.1.2:8443", Serving, "warn", None).await;
    seen(&running, 3).await;
    assert_eq!(a(dns).await, ["10.9.0.1"]);

    // East's only node fails: east clients get west's ready nodes.
    put_node(&mut c, "e1", "east", "10.9.0.1:8443", Serving, "fail", None).await;
    wait_for(dns, &["10.9.1.1", "10.9.1.2"], Duration::from_secs(1)).await;
    let metrics = format!("{}/metrics", running.url);
    assert_eq!(fail_open_total(&metrics).await, 0);

    // Every node failing or draining: all of them, counted as fail open.
    put_node(&mut c, "w1", "west", "10.9.1.1:8443", Serving, "fail", None).await;
    put_node(
        &mut c,
        "w2",
        "west",
        "10.9.1.2:8443",
        Draining,
        "pass",
        None,
    )
    .await;
    wait_for(
        dns,
        &["10.9.0.1", "10.9.1.1", "10.9.1.2"],
        Duration::from_secs(1),
    )
    .await;
    let west = query(dns, ZONE, RecordType::A, Some("10.2.0.0/24"), false).await;
    assert_eq!(ips(&west), ["10.9.0.1", "10.9.1.1", "10.9.1.2"]);
    let counted = fail_open_total(&metrics).await;
    assert!(counted >= 2, "fail-open answers counted: {counted}");
    assert_eq!(running.metrics.fail_open.get(), counted);

    // One node healthy again: only it.
    put_node(&mut c, "w1", "west", "10.9.1.1:8443", Serving, "pass", None).await;
    wait_for(dns, &["10.9.1.1"], Duration::from_secs(1)).await;
    let settled = fail_open_total(&metrics).await;
    assert_eq!(a(dns).await, ["10.9.1.1"]);
    assert_eq!(
        fail_open_total(&metrics).await,
        settled,
        "no more fail open"
    );
    running.shutdown().await;
}

/// `strait_coordinator_dns_fail_open_total` from `GET /metrics`.
async fn fail_open_total(url: &str) -> u64 {
    let r = common::call(Method::GET, url, None, None).await;
    assert_eq!(r.status, http::StatusCode::OK);
    r.text
        .lines()
        .find_map(|l| l.strip_prefix("strait_coordinator_dns_fail_open_total "))
        .unwrap_or_else(|| panic!("no fail-open counter in:\n{}", r.text))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_dns_from_its_flags() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let etcd = Etcd::start().await;
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .args(["serve", "--listen", "127.0.0.1:0", "--etcd", &etcd.endpoint])
        .args(["--dns-listen", &format!("127.0.0.1:{port}")])
        .args(["--dns-name", "Api.Strait.Test.", "--dns-ttl", "3s"])
        .args(["--dns-ns", "ns1.strait.test", "--log-level", "warn"])
        .env("STRAIT_ADMIN_TOKEN", TOKEN)
        .env("STRAIT_KEK", KEK_HEX)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn strait-coordinator");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line:?}");
    let dns: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = etcd.client().await;
    put_node(
        &mut c,
        "a",
        "r1",
        "10.9.0.1:8443",
        NodeState::Serving,
        "pass",
        None,
    )
    .await;
    wait_for(dns, &["10.9.0.1"], Duration::from_secs(3)).await;
    let soa = query(dns, ZONE, RecordType::SOA, None, true).await;
    match soa.answers.first().map(|r| &r.data) {
        Some(RData::SOA(s)) => {
            assert_eq!(s.mname.to_ascii(), "ns1.strait.test.");
            assert_eq!(s.minimum, 3);
        }
        other => panic!("no SOA: {other:?}"),
    }
    let _ = child.kill();
    let _ = child.wait();
}
