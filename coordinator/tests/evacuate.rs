//! `strait-coordinator deferred evacuate` against a real etcd (keys and pins made
//! through the admin API) and two real brokers (regions a and b): a dry run moves
//! nothing; a run moves exactly the messages whose key may be served in b, intact,
//! leaves the pinned and undecodable ones in a, and exits 1 when b refuses some.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, StatusCode};
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicPublishOptions};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{json, Value};
use strait_chaos::rabbitmq::RabbitMq;
use strait_node::config::Deferred;
use strait_node::defer::amqp::AmqpQueue;
use strait_node::defer::queue::Queue;
use strait_node::defer::{DeferredId, Envelope, EnvelopeHead};

fn settings(delivery_limit: u32) -> Deferred {
    Deferred {
        amqp_url: None,
        redis_url: None,
        spool_dir: Default::default(),
        result_ttl: Duration::from_secs(3600),
        delivery_limit,
        prefetch: 8,
        confirm_timeout: Duration::from_secs(5),
        claim_lease: Duration::from_secs(30),
        resend_unknown: false,
        max_result_bytes: 1 << 20,
        key_prefix: String::new(),
    }
}

fn envelope(owner: &str, n: usize) -> Envelope {
    Envelope {
        head: EnvelopeHead {
            id: DeferredId::random("a"),
            owner: owner.into(),
            path: "/v1/messages".into(),
            anthropic_version: Some("2023-06-01".into()),
            anthropic_beta: None,
            stream: false,
            model: Some("claude-sonnet-4-5".into()),
            queued_at_ms: 1_700_000_000_000 + n as u64,
        },
        body: Bytes::from(format!(
            "{{\"model\":\"claude-sonnet-4-5\",\"max_tokens\":8,\"messages\":[],\"n\":{n}}}"
        )),
    }
}

/// A plain lapin connection (the node's URL parser keeps an IP host an IP).
async fn connect(url: &str) -> Connection {
    let uri = strait_node::defer::amqp::parse_url(url).unwrap();
    Connection::connect_uri(uri, ConnectionProperties::default())
        .await
        .expect("connect to the broker")
}

/// Every message of `queue`, taken and acked: the raw bodies.
async fn take_all(url: &str, queue: &str) -> Vec<Vec<u8>> {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.unwrap();
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("basic_get")
    {
        // How many deliveries the broker counted (each evacuation run that left the
        // message counts one on RabbitMQ 3.10): shown for the docs.
        let count = m
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-delivery-count").cloned());
        eprintln!("{queue}: x-delivery-count {count:?}");
        out.push(m.delivery.data.clone());
        m.delivery
            .acker
            .ack(BasicAckOptions::default())
            .await
            .unwrap();
    }
    let _ = conn.close(200, "done".into()).await;
    out
}

/// Ready messages in `queue` (passive declare).
async fn depth(url: &str, queue: &str) -> u32 {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("queue exists");
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

/// Runs the binary; exit code and stdout.
fn evacuate(etcd: &Etcd, a: &RabbitMq, b: &RabbitMq, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strait-coordinator"))
        .args(["deferred", "evacuate", "--etcd", &etcd.endpoint])
        .args(["--from-region", "a", "--to-region", "b"])
        .env("STRAIT_EVACUATE_FROM_AMQP", a.url())
        .env("STRAIT_EVACUATE_TO_AMQP", b.url())
        .args(extra)
        .output()
        .expect("run strait-coordinator");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    for text in [&stdout[..], &stderr[..]] {
        assert!(
            !text.contains("guest:guest"),
            "a broker password was printed: {text}"
        );
    }
    (out.status.code().unwrap_or(-1), format!("{stdout}{stderr}"))
}

fn ids(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evacuate_moves_what_the_target_may_serve_and_leaves_pinned_keys() {
    // Both brokers boot at once (about 7 s each).
    let brokers = tokio::task::spawn_blocking(|| {
        std::thread::scope(|s| {
            let a = s.spawn(RabbitMq::start);
            let b = s.spawn(RabbitMq::start);
            (a.join().unwrap(), b.join().unwrap())
        })
    });
    let etcd = Etcd::start().await;
    let (running, url) = leader(&etcd).await;
    add_pool_key(&url, "default", "prod-1", "sk-ant-upstream-1").await;
    let r = admin(
        Method::PUT,
        &format!("{url}/v1/tenants/a-only"),
        Some(json!({"allowed_regions": ["a"]})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    for body in [
        json!({"name": "free"}),
        json!({"name": "wide", "allowed_regions": ["a", "b"]}),
        json!({"name": "pinned", "allowed_regions": ["a"]}),
        json!({"name": "tenanted", "tenant": "a-only"}),
    ] {
        let r = admin(Method::POST, &format!("{url}/v1/keys"), Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let (a, b) = brokers.await.unwrap();

    // Region b's queue exists already, with another delivery limit than the default:
    // the command must read it, or its declare would be refused.
    let b_node = AmqpQueue::connect(&b.url(), "b", &settings(5))
        .await
        .unwrap();
    assert!(b_node.wait_connected(Duration::from_secs(10)).await);
    drop(b_node);

    let queue_a = AmqpQueue::connect(&a.url(), "a", &settings(20))
        .await
        .unwrap();
    assert!(queue_a.wait_connected(Duration::from_secs(10)).await);
    let movable: Vec<Envelope> = (0..3)
        .map(|n| envelope(["free", "wide", "nobody-in-etcd"][n], n))
        .collect();
    let staying: Vec<Envelope> = (3..5)
        .map(|n| envelope(["pinned", "tenanted"][n - 3], n))
        .collect();
    for e in movable.iter().chain(&staying) {
        queue_a.publish(e).await.expect("published to a");
    }
    // And one message that is not an envelope.
    let conn = connect(&a.url()).await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_publish(
        "".into(),
        "strait.deferred.a".into(),
        BasicPublishOptions::default(),
        b"not an envelope",
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id("garbage-1".into()),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let _ = conn.close(200, "done".into()).await;
    drop(queue_a);
    assert_eq!(depth(&a.url(), "strait.deferred.a").await, 6);
    let movable_ids: BTreeSet<String> = movable.iter().map(|e| e.head.id.to_string()).collect();
    let staying_ids: BTreeSet<String> = staying.iter().map(|e| e.head.id.to_string()).collect();

    // A dry run, as text: it says what would happen and moves nothing.
    let (code, text) = evacuate(&etcd, &a, &b, &["--dry-run"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("would move 3, skip 3"), "{text}");
    assert!(text.contains("guest:***@127.0.0.1"), "{text}");
    let pinned_id = staying[0].head.id.to_string();
    assert!(
        text.contains(&format!(
            "skipped {pinned_id} (owner pinned): key pinned is pinned to regions [a]"
        )),
        "{text}"
    );
    assert!(
        text.contains("key tenanted is pinned to regions [a] by its tenant a-only"),
        "{text}"
    );
    assert!(text.contains("skipped garbage-1"), "{text}");
    assert_eq!(depth(&a.url(), "strait.deferred.a").await, 6);
    assert_eq!(depth(&b.url(), "strait.deferred.b").await, 0);

    // b is capped at one message (quorum queues apply the cap with a little lag, so
    // one or two get in): the refused ones (nack) stay in a, and the command exits 1.
    b.ctl_ok(&[
        "set_policy",
        "--apply-to",
        "queues",
        "cap",
        "^strait\\.deferred\\.b$",
        "{\"max-length\":1}",
    ]);
    let (code, out) = evacuate(&etcd, &a, &b, &["--json"]);
    assert_eq!(code, 1, "{out}");
    let report: Value = serde_json::from_str(&out).expect(&out);
    let (moved, failed) = (
        report["counts"]["moved"].as_u64().unwrap(),
        report["counts"]["failed"].as_u64().unwrap(),
    );
    assert!(failed >= 1 && moved + failed == 3, "{report}");
    assert_eq!(report["counts"]["skipped"], 3);
    assert_eq!(report["delivery_limit"], 5, "read from b's queue");
    assert!(
        report["failed"][0]["error"]
            .as_str()
            .unwrap()
            .contains("nack"),
        "{report}"
    );
    assert_eq!(
        u64::from(depth(&a.url(), "strait.deferred.a").await),
        3 + failed
    );
    b.ctl_ok(&["clear_policy", "cap"]);

    // Once b accepts them, the rest move.
    let (code, out) = evacuate(&etcd, &a, &b, &["--json"]);
    assert_eq!(code, 0, "{out}");
    let report: Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(
        report["counts"],
        json!({"moved": failed, "skipped": 3, "failed": 0})
    );
    let skipped = ids(&report["skipped"]);
    assert_eq!(
        skipped,
        staying_ids
            .iter()
            .cloned()
            .chain(["garbage-1".to_string()])
            .collect()
    );

    // b holds exactly the movable ones, byte for byte; a exactly the rest.
    let in_b = take_all(&b.url(), "strait.deferred.b").await;
    let mut want: Vec<Vec<u8>> = movable.iter().map(Envelope::encode).collect();
    let mut got = in_b.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "b holds the movable envelopes intact");
    let got_ids: BTreeSet<String> = in_b
        .iter()
        .map(|m| Envelope::decode(m).unwrap().head.id.to_string())
        .collect();
    assert_eq!(got_ids, movable_ids);
    let in_a = take_all(&a.url(), "strait.deferred.a").await;
    assert_eq!(in_a.len(), 3);
    let left: BTreeSet<String> = in_a
        .iter()
        .filter_map(|m| Envelope::decode(m).map(|e| e.head.id.to_string()))
        .collect();
    assert_eq!(left, staying_ids);
    assert!(in_a.iter().any(|m| m == b"not an envelope"));

    running.shutdown().await;
    let (mut a, mut b) = (a, b);
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            s.spawn(|| a.stop());
            s.spawn(|| b.stop());
        })
    })
    .await
    .unwrap();
}
