//! Region evacuation end to end with the `rabbitmq_shovel` plugin: a region-a node
//! whose upstream path is cut queues requests and stops; a dynamic shovel
//! (`ack-mode: on-confirm`, `src-delete-after: queue-length`) moves a's backlog to
//! b's broker; a region-b node (its own broker and Redis) adopts the ids, delivers
//! each once, and answers `GET` for them (docs/deferred.md, "Evacuating a region").

mod common;

use std::time::{Duration, Instant};

use common::deferred::*;
use common::redis::RedisServer;
use common::*;
use http::StatusCode;
use strait_chaos::faultproxy::FaultProxy;
use strait_chaos::mock::{MockConfig, MockUpstream};
use strait_chaos::rabbitmq::RabbitMq;

/// Ready messages in a queue (a passive declare: `list_queues` lags by seconds).
async fn queue_length(broker: &RabbitMq, queue: &str) -> u32 {
    let uri = strait_node::defer::amqp::parse_url(&broker.url()).unwrap();
    let conn = lapin::Connection::connect_uri(uri, Default::default())
        .await
        .expect("connect to the broker");
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
        .expect("the queue exists");
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shovelled_backlog_is_delivered_once_by_the_target_region() {
    // Both brokers boot at once (about 7 s each); a has the shovel plugin.
    let brokers = tokio::task::spawn_blocking(|| {
        std::thread::scope(|s| {
            let a = s.spawn(|| RabbitMq::start_with_plugins(&["rabbitmq_shovel"]));
            let b = s.spawn(RabbitMq::start);
            (a.join().unwrap(), b.join().unwrap())
        })
    });
    let (redis_a, redis_b) = (RedisServer::start(), RedisServer::start());
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let proxy = FaultProxy::start(mock.addr()).await.unwrap();
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (mut a, mut b) = brokers.await.unwrap();

    // Region a: the upstream path is cut, so its deferred requests wait in its queue.
    let node_a = broker_node(
        "a",
        &a.url(),
        &format!("redis://127.0.0.1:{}/", redis_a.port),
        proxy.addr(),
        dir_a.path(),
        |raw| raw.limits.drain_timeout = Duration::from_secs(3),
    )
    .await;
    let url_a = format!("http://{}", node_a.public_addr());
    proxy.set_refuse(true);
    proxy.reset_all();
    let mut ids = Vec::new();
    for i in 0..4 {
        let mut h = auth(CLIENT_KEY).to_vec();
        h.push(("strait-defer", "always"));
        let r = post_json(
            &format!("{url_a}/v1/messages"),
            &h,
            &marked(&format!("ev-{i}"), false),
        )
        .await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
        let id = r.json()["id"].as_str().unwrap().to_string();
        assert!(id.starts_with("dfr_a_"), "{id}");
        ids.push(id);
    }
    // Region a goes away; its unacked deliveries return to its queue.
    node_a.drain().await;
    let started = Instant::now();
    loop {
        let n = queue_length(&a, "strait.deferred.a").await;
        if n == 4 {
            break;
        }
        if started.elapsed() >= Duration::from_secs(10) {
            // What each id's record says and where the messages are, for the failure.
            let reached: usize = (0..4).map(|i| received(&mock, &format!("ev-{i}"))).sum();
            let records: Vec<String> = ids
                .iter()
                .map(|id| redis_a.cmd(&["HGETALL", &format!("strait:dfr:{{a}}:r:{id}")]))
                .collect();
            let queues = a.ctl(&[
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ]);
            panic!(
                "a's queue holds {n} ready messages, not 4 ({reached} reached the upstream \
                 through the cut path)\nrecords: {records:?}\nqueues: {}",
                String::from_utf8_lossy(&queues.stdout)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Region b's node first (it declares b's queue), then the shovel on broker a.
    let node_b = broker_node(
        "b",
        &b.url(),
        &format!("redis://127.0.0.1:{}/", redis_b.port),
        mock.addr(),
        dir_b.path(),
        |raw| raw.limits.drain_timeout = Duration::from_secs(3),
    )
    .await;
    let url_b = format!("http://{}", node_b.public_addr());
    let shovel = serde_json::json!({
        "src-protocol": "amqp091",
        "src-uri": a.url(),
        "src-queue": "strait.deferred.a",
        "dest-protocol": "amqp091",
        "dest-uri": b.url(),
        "dest-queue": "strait.deferred.b",
        "ack-mode": "on-confirm",
        "src-delete-after": "queue-length",
    })
    .to_string();
    let shovelled = Instant::now();
    a.ctl_ok(&["set_parameter", "shovel", "evacuate-a", &shovel]);

    for (i, id) in ids.iter().enumerate() {
        let done = settled(&url_b, id, Duration::from_secs(30)).await;
        assert_eq!(done.status, StatusCode::OK, "{}", done.text());
        assert_eq!(done.json()["type"], "message", "{}", done.text());
        assert_eq!(done.header("x-strait-deferred"), Some(id.as_str()));
        assert_eq!(received(&mock, &format!("ev-{i}")), 1, "delivered once");
    }
    eprintln!("shovel to the last result on b: {:?}", shovelled.elapsed());
    assert_eq!(queue_length(&a, "strait.deferred.a").await, 0);
    // A moment for a duplicate, if any, to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..4 {
        assert_eq!(received(&mock, &format!("ev-{i}")), 1, "delivered once");
    }

    node_b.drain().await;
    tokio::task::spawn_blocking(move || {
        std::thread::scope(|s| {
            s.spawn(|| a.stop());
            s.spawn(|| b.stop());
        })
    })
    .await
    .unwrap();
}
