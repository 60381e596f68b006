//! The RabbitMQ deferred queue against real brokers (started per test on free ports):
//! confirmed publishes, consume and ack, the broker stopped and started again,
//! requeues counted up to dead-lettering, returned messages, the declared topology, a
//! consumer dropped during its setup, and a region's backlog moved to another broker
//! by a dynamic shovel.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use strait_chaos::rabbitmq::RabbitMq;
use strait_node::config::Deferred;
use strait_node::defer::amqp::AmqpQueue;
use strait_node::defer::queue::{Delivery, Queue};
use strait_node::defer::{BackendState, DeferredId, Envelope, EnvelopeHead};
use strait_node::error::ErrorKind;
use tokio::sync::mpsc;

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(2);

fn settings(delivery_limit: u32) -> Deferred {
    Deferred {
        amqp_url: None,
        redis_url: None,
        spool_dir: std::env::temp_dir(),
        result_ttl: Duration::from_secs(3600),
        delivery_limit,
        prefetch: 8,
        confirm_timeout: CONFIRM_TIMEOUT,
        claim_lease: Duration::from_secs(30),
        resend_unknown: false,
        max_result_bytes: 1 << 20,
        key_prefix: "strait:".into(),
    }
}

fn envelope(region: &str, n: usize) -> Envelope {
    Envelope {
        head: EnvelopeHead {
            id: DeferredId::random(region),
            owner: format!("team-{n}"),
            path: "/v1/messages".into(),
            anthropic_version: Some("2023-06-01".into()),
            anthropic_beta: None,
            stream: n % 2 == 0,
            model: Some("claude-sonnet-4-5".into()),
            queued_at_ms: 1_700_000_000_000 + n as u64,
        },
        body: Bytes::from(format!("{{\"n\":{n},\"pad\":\"{}\"}}", "x".repeat(n % 97))),
    }
}

async fn connected(url: &str, region: &str, limit: u32) -> AmqpQueue {
    let q = AmqpQueue::connect(url, region, &settings(limit))
        .await
        .expect("a valid URL");
    assert!(
        q.wait_connected(Duration::from_secs(15)).await,
        "no connection to the broker at {url}"
    );
    q
}

async fn next(rx: &mut mpsc::Receiver<Delivery>, within: Duration) -> Delivery {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a delivery in time")
        .expect("the consumer is alive")
}

async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_ack_topology_and_returns() {
    let mq = RabbitMq::start();
    let q = connected(&mq.url(), "t", 5).await;
    assert_eq!(q.kind(), "rabbitmq");
    assert_eq!(q.state(), BackendState::Up);

    let queues = mq.ctl_ok(&["-q", "list_queues", "name", "type", "arguments"]);
    let main = queues
        .lines()
        .find(|l| l.starts_with("strait.deferred.t\t"))
        .unwrap_or_else(|| panic!("no main queue in:\n{queues}"));
    for arg in [
        "quorum",
        "{\"x-queue-type\",\"quorum\"}",
        "{\"x-delivery-limit\",5}",
        "{\"x-dead-letter-exchange\",\"strait.deferred.dlx\"}",
        "{\"x-dead-letter-strategy\",\"at-least-once\"}",
        "{\"x-overflow\",\"reject-publish\"}",
    ] {
        assert!(main.contains(arg), "{arg} missing from: {main}");
    }
    assert!(
        queues
            .lines()
            .any(|l| l.starts_with("strait.deferred.t.dead\tquorum")),
        "no quorum dead-letter queue in:\n{queues}"
    );
    let bindings = mq.ctl_ok(&[
        "-q",
        "list_bindings",
        "source_name",
        "destination_name",
        "routing_key",
    ]);
    assert!(
        bindings.contains("strait.deferred.dlx\tstrait.deferred.t.dead\tstrait.deferred.t"),
        "{bindings}"
    );

    let sent = envelope("t", 1);
    q.publish(&sent).await.expect("a confirmed publish");
    assert_eq!(q.depth().await.unwrap(), 1);
    let mut rx = q.consume(4);
    let d = next(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(d.envelope.as_ref(), Some(&sent));
    assert_eq!(d.delivery_count, 0);
    d.acker.ack().await.expect("ack");
    eventually(Duration::from_secs(5), "depth 0 after the ack", || async {
        q.depth().await.unwrap() == 0
    })
    .await;
    drop(rx);

    // A hung broker (SIGSTOP): the confirm never comes, and the publish says so in time.
    mq.freeze();
    let started = Instant::now();
    let e = q.publish(&envelope("t", 3)).await.unwrap_err();
    let waited = started.elapsed();
    mq.thaw();
    assert!(
        waited >= CONFIRM_TIMEOUT && waited < CONFIRM_TIMEOUT + Duration::from_millis(500),
        "{waited:?}"
    );
    assert!(e.message.contains("did not confirm"), "{}", e.message);

    // No queue to route to: the broker returns the mandatory message, and the ack that
    // follows the return is not a success.
    mq.ctl_ok(&["-q", "delete_queue", "strait.deferred.t"]);
    let e = q.publish(&envelope("t", 2)).await.unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(
        e.message.starts_with("the request was NOT queued") && e.message.contains("returned"),
        "{}",
        e.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_while_the_broker_is_down_and_fails_fast() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("amqp://guest:sup3rsecret@127.0.0.1:{port}/%2f");
    let q = AmqpQueue::connect(&url, "t", &settings(5))
        .await
        .expect("start-up does not need the broker");
    assert_eq!(q.state(), BackendState::Down);
    let started = Instant::now();
    let e = q.publish(&envelope("t", 1)).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("NOT queued"), "{}", e.message);
    assert!(q.depth().await.is_err());
    // The consumer waits for the broker instead of ending.
    let mut rx = q.consume(2);
    assert!(tokio::time::timeout(Duration::from_millis(500), rx.recv())
        .await
        .is_err());

    let bad = AmqpQueue::connect("amqp://u:sup3rsecret@h:nope", "t", &settings(5)).await;
    let e = bad.err().expect("a URL with a bad port is refused");
    assert_eq!(e.kind, ErrorKind::Config);
    assert!(!e.message.contains("sup3rsecret"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_then_restarted_keeps_messages() {
    let mut mq = RabbitMq::start();
    let q = connected(&mq.url(), "t", 5).await;
    let before = envelope("t", 1);
    q.publish(&before).await.expect("a confirmed publish");

    mq.stop();
    eventually(
        Duration::from_secs(5),
        "state Down after the broker stopped",
        || async { q.state() == BackendState::Down },
    )
    .await;
    let started = Instant::now();
    let e = q.publish(&envelope("t", 2)).await.unwrap_err();
    assert!(
        started.elapsed() < CONFIRM_TIMEOUT + Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(e.kind, ErrorKind::Unavailable);
    assert!(e.message.contains("NOT queued"), "{}", e.message);
    // A consumer started while the broker is down connects once it is back.
    let mut rx = q.consume(4);

    mq.start_again();
    assert!(
        q.wait_connected(Duration::from_secs(15)).await,
        "no reconnect after the broker came back"
    );
    let after = envelope("t", 3);
    q.publish(&after).await.expect("publishing works again");

    let mut got = Vec::new();
    for _ in 0..2 {
        let d = next(&mut rx, Duration::from_secs(15)).await;
        got.push(d.envelope.clone().expect("an envelope"));
        d.acker.ack().await.expect("ack");
    }
    assert!(
        got.contains(&before),
        "the message from before the stop was lost"
    );
    assert!(got.contains(&after));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "the failed publish must not have been queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeues_count_up_then_dead_letter() {
    let mq = RabbitMq::start();
    let limit = 2;
    let q = connected(&mq.url(), "t", limit).await;
    let sent = envelope("t", 7);
    q.publish(&sent).await.expect("a confirmed publish");
    let mut rx = q.consume(1);
    let mut counts = Vec::new();
    // Deliveries 0..=limit are requeued; the one past the limit is dead-lettered.
    for _ in 0..=limit {
        let d = next(&mut rx, Duration::from_secs(10)).await;
        assert_eq!(d.envelope.as_ref(), Some(&sent));
        counts.push(d.delivery_count);
        d.acker.requeue().await.expect("requeue");
    }
    assert_eq!(counts, (0..=limit).collect::<Vec<_>>());
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "delivered again past the delivery limit"
    );
    let mut dead = q.consume_dead();
    let d = next(&mut dead, Duration::from_secs(10)).await;
    assert_eq!(d.envelope.as_ref(), Some(&sent));
    d.acker.ack().await.expect("ack the dead letter");
    eventually(Duration::from_secs(5), "main queue empty", || async {
        q.depth().await.unwrap() == 0
    })
    .await;
}

/// A consumer whose receiver is dropped while it is still being set up leaves nothing
/// behind. Once `basic.consume` is out, lapin keeps the consumer, and with it the
/// connection, unless the connection is closed; the broker then pushes messages there
/// that nothing settles, unacked for as long as the process lives (a drained node's
/// backlog stuck there, not back in the queue). Dropped at forty points across the
/// setup, every message is ready again and no consumer remains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_dropped_during_its_setup_leaves_no_delivery_behind() {
    let mq = RabbitMq::start();
    // Every drop after a delivery returns the messages and counts: no dead letters here.
    let q = connected(&mq.url(), "t", 1000).await;
    for n in 0..3 {
        q.publish(&envelope("t", n))
            .await
            .expect("a confirmed publish");
    }
    // How long a consumer takes here from `consume` to its first delivery.
    let started = Instant::now();
    let mut rx = q.consume(8);
    next(&mut rx, Duration::from_secs(10)).await;
    let setup = started.elapsed();
    drop(rx);
    for step in 0..40u32 {
        let rx = q.consume(8);
        tokio::time::sleep(setup * step / 40).await;
        drop(rx);
    }
    eventually(
        Duration::from_secs(10),
        "all 3 messages ready again (none held by a dropped consumer)",
        || async { q.depth().await.unwrap() == 3 },
    )
    .await;
    eventually(Duration::from_secs(15), "no consumer left", || async {
        mq.ctl_ok(&["-q", "list_queues", "name", "consumers"])
            .lines()
            .any(|l| l == "strait.deferred.t\t0")
    })
    .await;
}

/// Region evacuation: region a's backlog moves to region b's broker with a dynamic
/// shovel (docs/deferred.md), and b's consumer gets every message intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shovel_moves_a_regions_backlog_to_another_broker() {
    let a = RabbitMq::start_with_plugins(&["rabbitmq_shovel"]);
    let b = RabbitMq::start_with_plugins(&["rabbitmq_shovel"]);
    let qa = connected(&a.url(), "a", 5).await;
    let qb = connected(&b.url(), "b", 5).await;
    let n = 200;
    let mut sent = HashMap::new();
    for i in 0..n {
        let e = envelope("a", i);
        qa.publish(&e).await.expect("a confirmed publish");
        sent.insert(e.head.id.clone(), e);
    }
    assert_eq!(qa.depth().await.unwrap(), n as u64);

    let definition = format!(
        r#"{{"src-protocol":"amqp091","src-uri":"{}","src-queue":"strait.deferred.a","dest-protocol":"amqp091","dest-uri":"{}","dest-queue":"strait.deferred.b","ack-mode":"on-confirm","src-delete-after":"queue-length"}}"#,
        a.url(),
        b.url()
    );
    a.ctl_ok(&["-q", "set_parameter", "shovel", "evacuate-a", &definition]);

    let mut rx = qb.consume(16);
    let mut got = HashMap::new();
    while got.len() < n {
        let d = next(&mut rx, Duration::from_secs(20)).await;
        let e = d.envelope.clone().expect("an intact envelope");
        d.acker.ack().await.expect("ack");
        assert_eq!(
            sent.get(&e.head.id),
            Some(&e),
            "changed or unknown: {}",
            e.head.id
        );
        assert!(
            got.insert(e.head.id.clone(), e).is_none(),
            "delivered twice"
        );
    }
    eventually(Duration::from_secs(10), "region a drained", || async {
        qa.depth().await.unwrap() == 0
    })
    .await;
    // queue-length: the shovel deletes itself once it moved what was there.
    eventually(
        Duration::from_secs(10),
        "the shovel removed itself",
        || async { !a.ctl_ok(&["-q", "list_parameters"]).contains("evacuate-a") },
    )
    .await;
}
