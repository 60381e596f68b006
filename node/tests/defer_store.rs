//! The deferred store's state machine, one suite run against both backends (a real
//! Redis with AOF, started per test on a free port, and the embedded redb spool),
//! plus what only one backend has: Redis restarts and outages, its durability
//! checks, and the spool's queue (order, prefetch, requeue, dead lane, reopen).

#[allow(dead_code)]
#[path = "common/redis.rs"]
mod redis_server;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis_server::RedisServer;
use strait_node::config::Deferred;
use strait_node::defer::queue::{Delivery, Queue};
use strait_node::defer::redis_store::RedisStore;
use strait_node::defer::spool::Spool;
use strait_node::defer::store::{
    Backlog, Cancel, Claim, Created, Finish, Lookup, NewRecord, State, Store, StoredResult,
};
use strait_node::defer::{now_ms, BackendState, DeferredId, Envelope, EnvelopeHead};
use strait_node::error::ErrorKind;
use tokio::sync::mpsc;

const AOF: &[&str] = &["--appendonly", "yes", "--appendfsync", "always"];
const LONG: Duration = Duration::from_secs(60);
/// The short result TTL of the expiry checks: long enough for a few fsyncs on a
/// busy machine, short enough to keep the file quick.
const SHORT_TTL: Duration = Duration::from_millis(1000);

/// A creation time past the pending grace (its publisher has certainly decided), so
/// a pending record made with it is claimed like a queued one.
fn stale() -> u64 {
    now_ms() - 60_000
}

fn settings(dir: &Path, ttl: Duration, delivery_limit: u32) -> Deferred {
    Deferred {
        amqp_url: None,
        redis_url: None,
        spool_dir: dir.to_path_buf(),
        result_ttl: ttl,
        delivery_limit,
        prefetch: 8,
        confirm_timeout: Duration::from_secs(5),
        claim_lease: Duration::from_secs(30),
        resend_unknown: false,
        max_result_bytes: 1 << 20,
        key_prefix: "test:dfr:".into(),
    }
}

fn rec(id: &DeferredId, owner: &str, qat: u64) -> NewRecord {
    NewRecord {
        id: id.clone(),
        owner: owner.into(),
        fingerprint: format!("fp-{owner}"),
        queued_at_ms: qat,
    }
}

fn envelope(n: u32) -> Envelope {
    Envelope {
        head: EnvelopeHead {
            id: DeferredId::random("spool"),
            owner: "team".into(),
            path: "/v1/messages".into(),
            anthropic_version: Some("2023-06-01".into()),
            anthropic_beta: None,
            stream: false,
            model: None,
            queued_at_ms: u64::from(n),
        },
        body: Bytes::from(format!("{{\"n\":{n}}}")),
    }
}

fn result() -> StoredResult {
    StoredResult {
        status: 200,
        content_type: Some("application/json".into()),
        // Not UTF-8 on purpose: the body is stored as bytes.
        body: Bytes::from_static(b"{\"type\":\"message\"}\x00\xff"),
    }
}

fn state_of(l: &Lookup) -> Option<State> {
    match l {
        Lookup::Found(r, _) | Lookup::Expired(r) => Some(r.state),
        Lookup::Missing => None,
    }
}

async fn state(s: &dyn Store, id: &DeferredId) -> Option<State> {
    state_of(&s.lookup(id).await.unwrap())
}

/// Every transition of the diagram, the answers that do not apply, concurrent
/// claims, lease takeovers and the backlog. `store` keeps results `LONG`; `short`
/// has a result TTL of `SHORT_TTL`. Both start empty.
async fn state_machine(store: Arc<dyn Store>, short: Arc<dyn Store>) {
    let s = &*store;
    let region = "t";
    let lease = Duration::from_secs(30);
    assert_eq!(s.backlog().await.unwrap(), Backlog::default());

    // Backlog: counted by open ids, oldest by queued_at; finished ids leave it.
    let (a, b, c) = (
        DeferredId::random(region),
        DeferredId::random(region),
        DeferredId::random(region),
    );
    assert_eq!(s.create(&rec(&a, "o", 1_000)).await.unwrap(), Created::New);
    assert_eq!(s.create(&rec(&b, "o", 2_000)).await.unwrap(), Created::New);
    assert_eq!(s.create(&rec(&c, "o", 3_000)).await.unwrap(), Created::New);
    let bl = s.backlog().await.unwrap();
    assert_eq!((bl.open, bl.oldest_queued_at_ms), (3, Some(1_000)));
    assert!(s
        .finish(
            &a,
            None,
            Finish::Dead {
                error: "over the limit".into()
            }
        )
        .await
        .unwrap());
    let bl = s.backlog().await.unwrap();
    assert_eq!((bl.open, bl.oldest_queued_at_ms), (2, Some(2_000)));
    assert_eq!(s.cancel(&b, "o").await.unwrap(), Cancel::Cancelled);
    let bl = s.backlog().await.unwrap();
    assert_eq!((bl.open, bl.oldest_queued_at_ms), (1, Some(3_000)));
    assert!(matches!(
        s.claim(&c, "h", lease).await.unwrap(),
        Claim::Mine(_)
    ));
    assert_eq!(s.backlog().await.unwrap().open, 1, "claimed is still open");
    assert!(s
        .finish(&c, Some("h"), Finish::Done(result()))
        .await
        .unwrap());
    assert_eq!(s.backlog().await.unwrap(), Backlog::default());

    // The whole happy path, with every foreign or late step refused on the way.
    let id = DeferredId::random(region);
    let qat = now_ms();
    assert_eq!(
        s.create(&rec(&id, "alice", qat)).await.unwrap(),
        Created::New
    );
    match s.create(&rec(&id, "alice", qat + 5)).await.unwrap() {
        Created::Existing(r) => {
            assert_eq!((r.state, r.owner.as_str()), (State::Pending, "alice"));
            assert_eq!((r.fingerprint.as_str(), r.queued_at_ms), ("fp-alice", qat));
            assert_eq!(
                (r.attempts, r.holder.clone(), r.lease_until_ms),
                (0, None, 0)
            );
            assert!(r.expires_at_ms >= qat + LONG.as_millis() as u64);
        }
        other => panic!("a second create must find the first: {other:?}"),
    }
    match s.lookup(&id).await.unwrap() {
        Lookup::Found(r, None) => assert_eq!(r.state, State::Pending),
        other => panic!("{other:?}"),
    }
    // A fresh pending record is left to its publisher (it may yet be abandoned).
    match s.claim(&id, "h0", lease).await.unwrap() {
        Claim::Pending { until_ms } => assert!(until_ms >= qat + 10_000, "{until_ms}"),
        other => panic!("a fresh pending record is not claimed: {other:?}"),
    }
    s.mark_queued(&id).await.unwrap();
    s.mark_queued(&id).await.unwrap();
    assert_eq!(state(s, &id).await, Some(State::Queued));
    s.abandon(&id).await.unwrap();
    assert_eq!(
        state(s, &id).await,
        Some(State::Queued),
        "abandon is for pending only"
    );

    let before = now_ms();
    let mine = match s.claim(&id, "h1", lease).await.unwrap() {
        Claim::Mine(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!((mine.state, mine.attempts), (State::Claimed, 1));
    assert_eq!(mine.holder.as_deref(), Some("h1"));
    assert!(mine.lease_until_ms >= before + 30_000);
    assert_eq!(
        s.claim(&id, "h2", lease).await.unwrap(),
        Claim::HeldElsewhere {
            until_ms: mine.lease_until_ms
        }
    );
    match s.claim(&id, "h1", lease).await.unwrap() {
        Claim::Mine(r) => assert_eq!(r.attempts, 2, "its own claim again counts"),
        other => panic!("{other:?}"),
    }
    assert!(!s.renew(&id, "h2", lease).await.unwrap());
    assert!(s.renew(&id, "h1", lease).await.unwrap());
    assert!(!s.mark_sent(&id, "h2").await.unwrap());
    assert!(s.mark_sent(&id, "h1").await.unwrap());
    assert_eq!(state(s, &id).await, Some(State::Sent));
    assert_eq!(
        s.cancel(&id, "alice").await.unwrap(),
        Cancel::TooLate(State::Sent)
    );
    assert!(!s.release(&id, "h2", "x").await.unwrap());
    assert!(!s
        .finish(&id, Some("h2"), Finish::Done(result()))
        .await
        .unwrap());
    let before = now_ms();
    assert!(s
        .finish(&id, Some("h1"), Finish::Done(result()))
        .await
        .unwrap());
    match s.lookup(&id).await.unwrap() {
        Lookup::Found(r, Some(res)) => {
            assert_eq!((r.state, r.holder), (State::Done, None));
            assert!(r.expires_at_ms >= before + LONG.as_millis() as u64);
            assert_eq!(res, result());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.claim(&id, "h3", lease).await.unwrap(),
        Claim::Finished(State::Done)
    );
    assert!(!s.renew(&id, "h1", lease).await.unwrap());
    assert!(!s.mark_sent(&id, "h1").await.unwrap());
    assert!(!s.release(&id, "h1", "x").await.unwrap());
    assert!(!s
        .finish(
            &id,
            None,
            Finish::Dead {
                error: "late".into()
            }
        )
        .await
        .unwrap());
    assert_eq!(
        s.cancel(&id, "alice").await.unwrap(),
        Cancel::TooLate(State::Done)
    );
    assert!(matches!(
        s.create(&rec(&id, "alice", qat)).await.unwrap(),
        Created::Existing(_)
    ));

    // Released (nothing reached the upstream): queued again with its error, then a
    // second holder ends it as outcome unknown.
    let id = DeferredId::random(region);
    s.create(&rec(&id, "bob", stale())).await.unwrap();
    assert!(matches!(
        s.claim(&id, "h1", lease).await.unwrap(),
        Claim::Mine(_)
    ));
    assert!(s.release(&id, "h1", "connect refused").await.unwrap());
    match s.lookup(&id).await.unwrap() {
        Lookup::Found(r, None) => {
            assert_eq!(
                (r.state, r.holder, r.lease_until_ms),
                (State::Queued, None, 0)
            );
            assert_eq!(r.last_error.as_deref(), Some("connect refused"));
        }
        other => panic!("{other:?}"),
    }
    match s.claim(&id, "h2", lease).await.unwrap() {
        Claim::Mine(r) => assert_eq!(r.attempts, 2),
        other => panic!("{other:?}"),
    }
    assert!(!s.release(&id, "h1", "stale").await.unwrap());
    assert!(s.mark_sent(&id, "h2").await.unwrap());
    assert!(s
        .finish(
            &id,
            Some("h2"),
            Finish::OutcomeUnknown {
                error: "cut".into()
            }
        )
        .await
        .unwrap());
    match s.lookup(&id).await.unwrap() {
        Lookup::Found(r, None) => {
            assert_eq!(r.state, State::OutcomeUnknown);
            assert_eq!(r.last_error.as_deref(), Some("cut"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.claim(&id, "h3", lease).await.unwrap(),
        Claim::Finished(State::OutcomeUnknown)
    );

    // Abandoned (publish failed): gone, and the id can be created again. Cancel:
    // another owner sees nothing; the owner cancels once; then it is final.
    let id = DeferredId::random(region);
    s.create(&rec(&id, "carol", stale())).await.unwrap();
    s.abandon(&id).await.unwrap();
    assert_eq!(s.lookup(&id).await.unwrap(), Lookup::Missing);
    assert_eq!(
        s.create(&rec(&id, "carol", stale())).await.unwrap(),
        Created::New
    );
    s.mark_queued(&id).await.unwrap();
    assert_eq!(s.cancel(&id, "mallory").await.unwrap(), Cancel::Missing);
    assert_eq!(state(s, &id).await, Some(State::Queued));
    assert_eq!(s.cancel(&id, "carol").await.unwrap(), Cancel::Cancelled);
    assert_eq!(state(s, &id).await, Some(State::Cancelled));
    assert_eq!(
        s.cancel(&id, "carol").await.unwrap(),
        Cancel::TooLate(State::Cancelled)
    );
    assert_eq!(
        s.claim(&id, "h", lease).await.unwrap(),
        Claim::Finished(State::Cancelled)
    );
    s.abandon(&id).await.unwrap();
    assert_eq!(state(s, &id).await, Some(State::Cancelled));

    // Dead-lettered from the queue consumer (no holder) while queued.
    let id = DeferredId::random(region);
    s.create(&rec(&id, "dan", stale())).await.unwrap();
    s.mark_queued(&id).await.unwrap();
    assert!(s
        .finish(
            &id,
            None,
            Finish::Dead {
                error: "delivery limit".into()
            }
        )
        .await
        .unwrap());
    match s.lookup(&id).await.unwrap() {
        Lookup::Found(r, None) => {
            assert_eq!(r.state, State::Dead);
            assert_eq!(r.last_error.as_deref(), Some("delivery limit"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.claim(&id, "h", lease).await.unwrap(),
        Claim::Finished(State::Dead)
    );

    // An unknown id: every step says so, none errs.
    let ghost = DeferredId::random(region);
    assert_eq!(s.lookup(&ghost).await.unwrap(), Lookup::Missing);
    assert_eq!(s.claim(&ghost, "h", lease).await.unwrap(), Claim::Missing);
    assert!(!s.renew(&ghost, "h", lease).await.unwrap());
    assert!(!s.mark_sent(&ghost, "h").await.unwrap());
    assert!(!s.release(&ghost, "h", "x").await.unwrap());
    assert!(!s
        .finish(&ghost, None, Finish::Dead { error: "x".into() })
        .await
        .unwrap());
    assert_eq!(s.cancel(&ghost, "o").await.unwrap(), Cancel::Missing);
    s.mark_queued(&ghost).await.unwrap();
    s.abandon(&ghost).await.unwrap();
    assert_eq!(s.lookup(&ghost).await.unwrap(), Lookup::Missing);

    // Eight consumers claim one id at once: exactly one wins.
    let id = DeferredId::random(region);
    s.create(&rec(&id, "erin", stale())).await.unwrap();
    s.mark_queued(&id).await.unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (store, id) = (store.clone(), id.clone());
            tokio::spawn(async move { store.claim(&id, &format!("c{i}"), lease).await.unwrap() })
        })
        .collect();
    let mut mine = 0;
    for t in tasks {
        match t.await.unwrap() {
            Claim::Mine(r) => {
                mine += 1;
                assert_eq!(r.attempts, 1);
            }
            Claim::HeldElsewhere { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(mine, 1, "two consumers both won a claim");

    // Leases run out: a claimed id is taken over; a sent one comes back as WasSent
    // and the old holder can neither send nor finish.
    let short_lease = Duration::from_millis(300);
    let (claimed, sent) = (DeferredId::random(region), DeferredId::random(region));
    for id in [&claimed, &sent] {
        s.create(&rec(id, "frank", now_ms())).await.unwrap();
        s.mark_queued(id).await.unwrap();
        assert!(matches!(
            s.claim(id, "old", short_lease).await.unwrap(),
            Claim::Mine(_)
        ));
    }
    assert!(s.mark_sent(&sent, "old").await.unwrap());
    assert!(matches!(
        s.claim(&sent, "new", lease).await.unwrap(),
        Claim::HeldElsewhere { .. }
    ));
    tokio::time::sleep(short_lease + Duration::from_millis(150)).await;
    match s.claim(&claimed, "new", lease).await.unwrap() {
        Claim::Mine(r) => assert_eq!((r.attempts, r.holder.as_deref()), (2, Some("new"))),
        other => panic!("{other:?}"),
    }
    assert!(!s.renew(&claimed, "old", lease).await.unwrap());
    assert!(!s.mark_sent(&claimed, "old").await.unwrap());
    match s.claim(&sent, "new", lease).await.unwrap() {
        Claim::WasSent(r) => {
            assert_eq!((r.state, r.attempts), (State::Sent, 2));
            assert_eq!(r.holder.as_deref(), Some("new"));
        }
        other => panic!("{other:?}"),
    }
    assert!(!s
        .finish(&sent, Some("old"), Finish::Done(result()))
        .await
        .unwrap());
    assert!(s
        .finish(
            &sent,
            Some("new"),
            Finish::OutcomeUnknown {
                error: "holder died".into()
            }
        )
        .await
        .unwrap());

    // Expiry on the short-TTL store: Expired (410) for one more TTL, then Missing.
    let s = &*short;
    let (queued, done, again) = (
        DeferredId::random(region),
        DeferredId::random(region),
        DeferredId::random(region),
    );
    let t0 = Instant::now();
    for id in [&queued, &done, &again] {
        s.create(&rec(id, "gina", now_ms())).await.unwrap();
        s.mark_queued(id).await.unwrap();
    }
    assert!(matches!(
        s.claim(&done, "h", lease).await.unwrap(),
        Claim::Mine(_)
    ));
    assert!(s
        .finish(&done, Some("h"), Finish::Done(result()))
        .await
        .unwrap());
    let t1 = Instant::now();
    assert!(
        t1 - t0 < SHORT_TTL / 3,
        "setting up took {:?}: the expiry checks below need it quicker",
        t1 - t0
    );
    tokio::time::sleep_until((t1 + SHORT_TTL + SHORT_TTL / 4).into()).await;
    match s.lookup(&queued).await.unwrap() {
        Lookup::Expired(r) => assert_eq!(r.state, State::Queued),
        other => panic!("past its TTL a record is Expired: {other:?}"),
    }
    match s.lookup(&done).await.unwrap() {
        Lookup::Expired(r) => assert_eq!(r.state, State::Done),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.claim(&queued, "h", lease).await.unwrap(), Claim::Missing);
    assert_eq!(s.cancel(&queued, "gina").await.unwrap(), Cancel::Missing);
    assert!(!s
        .finish(&queued, None, Finish::Dead { error: "x".into() })
        .await
        .unwrap());
    assert_eq!(
        s.backlog().await.unwrap().open,
        0,
        "expired ids are not open work"
    );
    assert_eq!(
        s.create(&rec(&again, "gina", stale())).await.unwrap(),
        Created::New,
        "an expired id is created afresh"
    );
    tokio::time::sleep_until((t1 + 2 * SHORT_TTL + SHORT_TTL / 4).into()).await;
    assert_eq!(s.lookup(&queued).await.unwrap(), Lookup::Missing);
    assert_eq!(s.lookup(&done).await.unwrap(), Lookup::Missing);
    assert_eq!(state(s, &again).await, Some(State::Pending));
}

async fn redis_store(url: &str, region: &str, ttl: Duration) -> RedisStore {
    let dir = std::env::temp_dir();
    RedisStore::new(url, region, &settings(&dir, ttl, 20))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_state_machine() {
    let srv = RedisServer::start_with(AOF);
    let store = redis_store(&srv.url(), "main", LONG).await;
    assert_eq!(store.state(), BackendState::Up);
    assert_eq!(store.kind(), "redis");
    let short = redis_store(&srv.url(), "short", SHORT_TTL).await;
    state_machine(Arc::new(store), Arc::new(short)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_state_machine() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let store = Spool::open(d1.path(), "t", &settings(d1.path(), LONG, 20))
        .await
        .unwrap();
    assert_eq!(Store::kind(&*store), "spool");
    let short = Spool::open(d2.path(), "t", &settings(d2.path(), SHORT_TTL, 20))
        .await
        .unwrap();
    state_machine(store, short.clone()).await;
    // The periodic sweep runs meanwhile; an explicit one finds nothing it cannot do.
    short.sweep().await.unwrap();
    assert_eq!(Store::state(&*short), BackendState::Up);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_with_aof_keeps_a_done_result() {
    let mut srv = RedisServer::start_with(AOF);
    let store = redis_store(&srv.url(), "r", LONG).await;
    let id = DeferredId::random("r");
    store.create(&rec(&id, "o", stale())).await.unwrap();
    store.mark_queued(&id).await.unwrap();
    assert!(matches!(
        store.claim(&id, "h", LONG).await.unwrap(),
        Claim::Mine(_)
    ));
    assert!(store.mark_sent(&id, "h").await.unwrap());
    assert!(store
        .finish(&id, Some("h"), Finish::Done(result()))
        .await
        .unwrap());
    srv.kill();
    srv.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        match store.lookup(&id).await {
            Ok(l) => break l,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store did not come back after the restart: {e:?}"),
        }
    };
    match found {
        Lookup::Found(r, Some(res)) => {
            assert_eq!(r.state, State::Done);
            assert_eq!(res, result());
        }
        other => panic!("the done result did not survive kill -9 with AOF: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_fails_fast_then_recovers() {
    let mut srv = RedisServer::start_with(AOF);
    srv.kill();
    let started = Instant::now();
    let store = redis_store(&srv.url(), "r", LONG).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "new() waited too long"
    );
    assert_eq!(store.state(), BackendState::Down);
    let id = DeferredId::random("r");
    let t = Instant::now();
    let err = store.create(&rec(&id, "o", stale())).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
    assert_eq!(err.kind, ErrorKind::Unavailable);
    assert_eq!(store.state(), BackendState::Down);

    srv.restart();
    // The background probe notices without any operation.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.state() != BackendState::Up {
        assert!(
            Instant::now() < deadline,
            "state() stayed Down after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        store.create(&rec(&id, "o", stale())).await.unwrap(),
        Created::New
    );
}

#[tokio::test]
async fn redis_errors_do_not_carry_the_url_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://:hunter2-secret@127.0.0.1:{port}");
    let store = redis_store(&url, "r", LONG).await;
    let err = store.lookup(&DeferredId::random("r")).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable);
    let all = format!("{} {:?} {:?}", err.message, err.detail, err);
    assert!(!all.contains("hunter2"), "{all}");
    let warnings = store.durability_warnings().await;
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("could not check"), "{warnings:?}");
    assert!(!warnings[0].contains("hunter2"));
}

#[tokio::test]
async fn redis_durability_warnings() {
    let plain = RedisServer::start();
    let w = redis_store(&plain.url(), "r", LONG)
        .await
        .durability_warnings()
        .await;
    assert!(
        w.iter()
            .any(|w| w.contains("appendonly no") && w.contains("lost on restart")),
        "{w:?}"
    );

    let lru =
        RedisServer::start_with(&["--appendonly", "yes", "--maxmemory-policy", "allkeys-lru"]);
    let w = redis_store(&lru.url(), "r", LONG)
        .await
        .durability_warnings()
        .await;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("allkeys-lru"), "{w:?}");

    let good = RedisServer::start_with(AOF);
    let w = redis_store(&good.url(), "r", LONG)
        .await
        .durability_warnings()
        .await;
    assert!(w.is_empty(), "{w:?}");

    let locked = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let w = redis_store(&locked.url(), "r", LONG)
        .await
        .durability_warnings()
        .await;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("could not check"), "{w:?}");
}

async fn recv(rx: &mut mpsc::Receiver<Delivery>) -> Delivery {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("no delivery within 5 s")
        .expect("the consumer ended")
}

async fn nothing_within(rx: &mut mpsc::Receiver<Delivery>, wait: Duration) -> bool {
    tokio::time::timeout(wait, rx.recv()).await.is_err()
}

fn n_of(d: &Delivery) -> u64 {
    d.envelope.as_ref().expect("an envelope").head.queued_at_ms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_queue_order_prefetch_and_ack() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), "t", &settings(dir.path(), LONG, 20))
        .await
        .unwrap();
    let q: Arc<dyn Queue> = spool.clone();
    assert_eq!(q.kind(), "spool");
    assert_eq!(q.state(), BackendState::Up);
    let sent: Vec<Envelope> = (0..5).map(envelope).collect();
    for e in &sent {
        q.publish(e).await.unwrap();
    }
    assert_eq!(q.depth().await.unwrap(), 5);
    let mut rx = q.consume(2);
    let first = recv(&mut rx).await;
    let second = recv(&mut rx).await;
    assert_eq!((n_of(&first), n_of(&second)), (0, 1));
    assert_eq!(first.envelope.as_ref(), Some(&sent[0]));
    assert_eq!(first.delivery_count, 0);
    assert!(
        nothing_within(&mut rx, Duration::from_millis(300)).await,
        "more than prefetch (2) unacknowledged"
    );
    assert_eq!(
        q.depth().await.unwrap(),
        3,
        "handed-out messages are not ready"
    );
    first.acker.ack().await.unwrap();
    assert_eq!(n_of(&recv(&mut rx).await), 2);
    second.acker.ack().await.unwrap();
    // A publish wakes the waiting consumer (no polling delay).
    let d = recv(&mut rx).await;
    assert_eq!(n_of(&d), 3);
    d.acker.ack().await.unwrap();
    let d = recv(&mut rx).await;
    assert_eq!(n_of(&d), 4);
    d.acker.ack().await.unwrap();
    let t = Instant::now();
    q.publish(&envelope(9)).await.unwrap();
    let d = recv(&mut rx).await;
    assert_eq!(n_of(&d), 9);
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "woken late: {:?}",
        t.elapsed()
    );
    d.acker.ack().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_requeue_counts_then_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), "t", &settings(dir.path(), LONG, 2))
        .await
        .unwrap();
    let q: Arc<dyn Queue> = spool;
    let e = envelope(7);
    q.publish(&e).await.unwrap();
    q.publish(&envelope(8)).await.unwrap();
    let mut rx = q.consume(1);
    let mut dead = q.consume_dead();
    // delivery_limit 2, as RabbitMQ's x-delivery-limit: counts 0, 1, 2 are
    // delivered; the third requeue dead-letters. A requeue goes to the back.
    let mut order = Vec::new();
    for _ in 0..4 {
        let d = recv(&mut rx).await;
        order.push((n_of(&d), d.delivery_count));
        if n_of(&d) == 8 {
            d.acker.ack().await.unwrap();
        } else {
            d.acker.requeue().await.unwrap();
        }
    }
    assert_eq!(order, vec![(7, 0), (8, 0), (7, 1), (7, 2)]);
    let d = recv(&mut dead).await;
    assert_eq!(d.envelope.as_ref(), Some(&e));
    assert_eq!(d.delivery_count, 3);
    assert!(nothing_within(&mut rx, Duration::from_millis(300)).await);
    assert_eq!(q.depth().await.unwrap(), 0);
    d.acker.ack().await.unwrap();
    assert!(nothing_within(&mut dead, Duration::from_millis(200)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_survives_drop_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = settings(dir.path(), LONG, 20);
    let id = DeferredId::random("t");
    {
        let spool = Spool::open(dir.path(), "t", &cfg).await.unwrap();
        let (q, s): (Arc<dyn Queue>, Arc<dyn Store>) = (spool.clone(), spool.clone());
        q.publish(&envelope(1)).await.unwrap();
        q.publish(&envelope(2)).await.unwrap();
        let mut rx = q.consume(1);
        let d = recv(&mut rx).await;
        assert_eq!(n_of(&d), 1);
        // Never settled: still handed out when the spool goes away.
        drop(d);
        s.create(&rec(&id, "o", 5)).await.unwrap();
        assert!(matches!(
            s.claim(&id, "h", LONG).await.unwrap(),
            Claim::Mine(_)
        ));
        assert!(s
            .finish(&id, Some("h"), Finish::Done(result()))
            .await
            .unwrap());
        drop((q, s, spool));
        // The consumer ends once the spool is gone.
        let t = tokio::time::timeout(Duration::from_secs(5), async {
            while rx.recv().await.is_some() {}
        });
        t.await
            .expect("the receiver did not end after the spool was dropped");
    }
    // Published and immediately reopened: still there.
    {
        let spool = Spool::open(dir.path(), "t", &cfg).await.unwrap();
        let q: Arc<dyn Queue> = spool.clone();
        q.publish(&envelope(3)).await.unwrap();
    }
    let spool = Spool::open(dir.path(), "t", &cfg).await.unwrap();
    let (q, s): (Arc<dyn Queue>, Arc<dyn Store>) = (spool.clone(), spool.clone());
    assert_eq!(q.depth().await.unwrap(), 3);
    let mut rx = q.consume(8);
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = recv(&mut rx).await;
        got.push(n_of(&d));
        d.acker.ack().await.unwrap();
    }
    assert_eq!(
        got,
        vec![1, 2, 3],
        "the unacked message comes back first, in order"
    );
    match s.lookup(&id).await.unwrap() {
        Lookup::Found(r, Some(res)) => {
            assert_eq!((r.state, r.queued_at_ms), (State::Done, 5));
            assert_eq!(res, result());
        }
        other => panic!("the stored result did not survive a reopen: {other:?}"),
    }
}
