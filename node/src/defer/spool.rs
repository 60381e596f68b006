//! The embedded deferred queue and result store: one redb database in
//! `deferred.spool_dir`, the default on a node without `--amqp`. [`Spool`] is both
//! the [`Queue`] and the [`Store`], with the Redis store's state machine and rules.
//!
//! Durability: every write is one redb write transaction, and transactions
//! serialize, which makes each transition atomic. Only the steps whose loss in a
//! crash would break a promise are committed with an fsync ([`DURABLE_OPS`] and
//! `publish`: the 202's message, `sent` before the request goes upstream, the result
//! before the ack, a cancel the client was told of); the others are committed
//! without one and reach the disk with the next fsynced commit (redb keeps the file
//! consistent either way). A lost `pending`, `queued`, claim or release only means
//! another delivery, which the state machine handles; a lost ack or requeue likewise.
//! So a deferral costs one fsync and a delivery two. Disk work runs on tokio's
//! blocking pool.
//!
//! Tables: `queue` and `dead` (sequence number -> delivery count (u32 BE) and the
//! envelope), `records` (id -> JSON record), `bodies` (id -> result body), `open`
//! (queued_at (u64 BE) + id -> (), the backlog index).
//!
//! Queue: FIFO by sequence number; a requeued message goes to the back with its
//! count + 1, and past `delivery_limit` requeues (RabbitMQ's `x-delivery-limit`
//! rule) it moves to `dead`. Which messages are handed out is kept in memory only:
//! after a restart every message still on disk is delivered again.
//!
//! Time and expiry: the caller's `now_ms()`, as with Redis. A record past
//! `expires_at_ms` answers `Expired`, past `expires_at_ms + ttl` it is `Missing`;
//! a periodic sweep deletes what has expired.

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, Notify, OwnedSemaphorePermit, Semaphore};

use super::queue::{Acker, BoxFuture, Delivery, Queue};
use super::store::{
    Backlog, Cancel, Claim, Created, Finish, Lookup, NewRecord, Record, State, Store, StoredResult,
};
use super::{now_ms, BackendState, DeferredId, Envelope};
use crate::config::Deferred;
use crate::error::{Error, ErrorKind, Result};

/// Store steps committed with an fsync: `sent` (before the request goes upstream, so
/// a takeover never resends), `finish` (the result, before the ack) and `cancel` (the
/// client was told). `publish` fsyncs too, in its own transaction.
const DURABLE_OPS: [&str; 3] = ["mark_sent", "finish", "cancel"];

const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("queue");
const DEAD: TableDefinition<u64, &[u8]> = TableDefinition::new("dead");
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const BODIES: TableDefinition<&str, &[u8]> = TableDefinition::new("bodies");
const OPEN: TableDefinition<&[u8], ()> = TableDefinition::new("open");

/// The database file inside `spool_dir`.
pub const SPOOL_FILE: &str = "deferred.redb";

/// How long [`Spool::open`] waits for a previous instance's last disk task to let go
/// of the file (a restart inside one process).
const OPEN_WAIT: Duration = Duration::from_secs(5);
/// A consumer re-checks the queue this often even without a wake-up.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// The two queues a consumer can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Ready,
    Dead,
}

impl Lane {
    fn table(self) -> TableDefinition<'static, u64, &'static [u8]> {
        match self {
            Lane::Ready => QUEUE,
            Lane::Dead => DEAD,
        }
    }
}

/// In-memory state of one lane: what is handed out and unsettled, and the wake-up.
struct LaneState {
    inflight: Mutex<HashSet<u64>>,
    notify: Arc<Notify>,
}

impl LaneState {
    fn new() -> LaneState {
        LaneState {
            inflight: Mutex::new(HashSet::new()),
            notify: Arc::new(Notify::new()),
        }
    }

    fn inflight(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.inflight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The embedded queue and store. Open it once per directory with [`Spool::open`];
/// the same `Arc` serves as `Arc<dyn Queue>` and `Arc<dyn Store>`.
pub struct Spool {
    /// Itself, for the consumer tasks (which must not keep the spool open).
    me: Weak<Spool>,
    db: Arc<Database>,
    region: String,
    ttl_ms: u64,
    /// How long a `pending` record is left to its publisher (see `pending_grace`).
    grace_ms: u64,
    delivery_limit: u32,
    next_seq: AtomicU64,
    ready: LaneState,
    dead: LaneState,
    up: AtomicBool,
    /// Never sent on: its receivers see it close when the spool drops, which ends
    /// the consumers wherever they wait.
    alive: watch::Sender<()>,
}

/// A failure inside a disk task, turned into the crate's error at the boundary.
#[derive(Debug)]
struct SpoolErr(String);

macro_rules! spool_err_from {
    ($($t:ty),*) => {$(
        impl From<$t> for SpoolErr {
            fn from(e: $t) -> SpoolErr {
                SpoolErr(e.to_string())
            }
        }
    )*};
}
spool_err_from!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    serde_json::Error,
    std::io::Error
);

type TxResult<T> = std::result::Result<T, SpoolErr>;

/// A record as stored in `records`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Rec {
    #[serde(with = "state_name")]
    state: State,
    owner: String,
    fp: String,
    attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    err: Option<String>,
    qat: u64,
    uat: u64,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    holder: Option<String>,
    lease: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ctype: Option<String>,
}

mod state_name {
    use super::State;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(s: &State, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(s.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(de: D) -> Result<State, D::Error> {
        let s = String::deserialize(de)?;
        State::parse(&s).ok_or_else(|| serde::de::Error::custom("unknown state"))
    }
}

impl Rec {
    fn live(&self, now: u64) -> bool {
        now < self.exp
    }

    fn is_open(&self) -> bool {
        !self.state.is_final()
    }

    fn record(&self, id: &DeferredId) -> Record {
        Record {
            id: id.clone(),
            owner: self.owner.clone(),
            fingerprint: self.fp.clone(),
            state: self.state,
            attempts: self.attempts,
            last_error: self.err.clone(),
            queued_at_ms: self.qat,
            updated_at_ms: self.uat,
            expires_at_ms: self.exp,
            holder: self.holder.clone(),
            lease_until_ms: self.lease,
        }
    }

    fn held_by(&self, holder: &str) -> bool {
        matches!(self.state, State::Claimed | State::Sent) && self.holder.as_deref() == Some(holder)
    }
}

fn open_key(qat: u64, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + id.len());
    k.extend_from_slice(&qat.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

/// Reads a record; `None` when missing or past its tombstone window.
fn load_from(
    t: &impl ReadableTable<&'static str, &'static [u8]>,
    id: &str,
    now: u64,
    ttl: u64,
) -> TxResult<Option<Rec>> {
    let Some(v) = t.get(id)? else {
        return Ok(None);
    };
    let r: Rec = serde_json::from_slice(v.value())?;
    Ok((now < r.exp.saturating_add(ttl)).then_some(r))
}

/// One transition's view of the store tables inside a write transaction.
struct Tx<'t> {
    recs: redb::Table<'t, &'static str, &'static [u8]>,
    bodies: redb::Table<'t, &'static str, &'static [u8]>,
    open: redb::Table<'t, &'static [u8], ()>,
    now: u64,
    ttl: u64,
    dirty: bool,
}

impl Tx<'_> {
    fn load(&self, id: &DeferredId) -> TxResult<Option<Rec>> {
        load_from(&self.recs, id.as_str(), self.now, self.ttl)
    }

    fn save(&mut self, id: &DeferredId, r: &mut Rec) -> TxResult<()> {
        r.uat = self.now;
        let v = serde_json::to_vec(r)?;
        self.recs.insert(id.as_str(), v.as_slice())?;
        self.dirty = true;
        Ok(())
    }

    fn open_del(&mut self, r: &Rec, id: &DeferredId) -> TxResult<()> {
        if self
            .open
            .remove(open_key(r.qat, id.as_str()).as_slice())?
            .is_some()
        {
            self.dirty = true;
        }
        Ok(())
    }

    fn delete(&mut self, r: &Rec, id: &DeferredId) -> TxResult<()> {
        self.recs.remove(id.as_str())?;
        self.bodies.remove(id.as_str())?;
        self.open_del(r, id)?;
        self.dirty = true;
        Ok(())
    }
}

impl Spool {
    /// Opens (or creates) the spool in `dir` for `region`, redelivering whatever
    /// was on disk and unacknowledged, and starts its expiry sweep.
    pub async fn open(dir: &Path, region: &str, settings: &Deferred) -> Result<Arc<Spool>> {
        let dir = dir.to_path_buf();
        let db = tokio::task::spawn_blocking(move || open_db(&dir))
            .await
            .map_err(|e| spool_error("open", &e.to_string()))?
            .map_err(|e| {
                Error::config("deferred.spool_dir: could not open the spool").with_detail(e.0)
            })?;
        let db = Arc::new(db);
        let db2 = db.clone();
        let last = tokio::task::spawn_blocking(move || -> TxResult<u64> {
            let rtx = db2.begin_read()?;
            let mut last = 0;
            for lane in [Lane::Ready, Lane::Dead] {
                if let Some((k, _)) = rtx.open_table(lane.table())?.last()? {
                    last = last.max(k.value());
                }
            }
            Ok(last)
        })
        .await
        .map_err(|e| spool_error("open", &e.to_string()))?
        .map_err(|e| spool_error("open", &e.0))?;
        let spool = Arc::new_cyclic(|me| Spool {
            me: me.clone(),
            db,
            region: region.to_string(),
            grace_ms: u64::try_from(super::pending_grace(settings).as_millis()).unwrap_or(u64::MAX),
            ttl_ms: u64::try_from(settings.result_ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1),
            delivery_limit: settings.delivery_limit,
            next_seq: AtomicU64::new(last + 1),
            ready: LaneState::new(),
            dead: LaneState::new(),
            up: AtomicBool::new(true),
            alive: watch::channel(()).0,
        });
        tokio::spawn(sweep_loop(Arc::downgrade(&spool)));
        Ok(spool)
    }

    /// The region this spool queues for.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// Deletes expired records (past their tombstone window), expired bodies and
    /// expired backlog entries. Runs periodically; returns how many records went.
    pub async fn sweep(&self) -> Result<u64> {
        self.tx("sweep", |t| {
            let now = t.now;
            let mut gone = Vec::new();
            let mut stale = Vec::new();
            for item in t.recs.iter()? {
                let (k, v) = item?;
                let r: Rec = serde_json::from_slice(v.value())?;
                if now >= r.exp.saturating_add(t.ttl) {
                    gone.push((k.value().to_string(), r));
                } else if now >= r.exp {
                    stale.push((k.value().to_string(), r));
                }
            }
            let n = gone.len() as u64;
            for (id, r) in gone {
                t.recs.remove(id.as_str())?;
                t.bodies.remove(id.as_str())?;
                t.open.remove(open_key(r.qat, &id).as_slice())?;
                t.dirty = true;
            }
            for (id, r) in stale {
                if t.bodies.remove(id.as_str())?.is_some()
                    | t.open.remove(open_key(r.qat, &id).as_slice())?.is_some()
                {
                    t.dirty = true;
                }
            }
            Ok(n)
        })
        .await
    }

    fn lane(&self, lane: Lane) -> &LaneState {
        match lane {
            Lane::Ready => &self.ready,
            Lane::Dead => &self.dead,
        }
    }

    fn outcome<T>(
        &self,
        op: &'static str,
        r: std::result::Result<TxResult<T>, tokio::task::JoinError>,
    ) -> Result<T> {
        let r = match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.0),
            Err(e) => Err(e.to_string()),
        };
        match r {
            Ok(v) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("deferred spool: writes succeed again");
                }
                Ok(v)
            }
            Err(why) => {
                if self.up.swap(false, Ordering::Relaxed) {
                    tracing::warn!(op, reason = %why, "deferred spool: disk operation failed");
                }
                Err(spool_error(op, &why))
            }
        }
    }

    /// Runs `f` in one write transaction on the blocking pool; commits when it changed
    /// something: with an fsync for the steps in [`DURABLE_OPS`], without one for the
    /// others (see the module's "Durability").
    async fn tx<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Tx<'_>) -> TxResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        let (now, ttl) = (now_ms(), self.ttl_ms);
        let r = tokio::task::spawn_blocking(move || -> TxResult<T> {
            let mut wtx = db.begin_write()?;
            if !DURABLE_OPS.contains(&op) {
                wtx.set_durability(redb::Durability::None)?;
            }
            let (out, dirty) = {
                let mut t = Tx {
                    recs: wtx.open_table(RECORDS)?,
                    bodies: wtx.open_table(BODIES)?,
                    open: wtx.open_table(OPEN)?,
                    now,
                    ttl,
                    dirty: false,
                };
                let out = f(&mut t)?;
                (out, t.dirty)
            };
            if dirty {
                wtx.commit()?;
            } else {
                wtx.abort()?;
            }
            Ok(out)
        })
        .await;
        self.outcome(op, r)
    }

    /// Runs `f` on a read snapshot on the blocking pool.
    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&redb::ReadTransaction, u64, u64) -> TxResult<T> + Send + 'static,
    {
        let db = self.db.clone();
        let (now, ttl) = (now_ms(), self.ttl_ms);
        let r = tokio::task::spawn_blocking(move || -> TxResult<T> {
            let rtx = db.begin_read()?;
            f(&rtx, now, ttl)
        })
        .await;
        self.outcome(op, r)
    }

    /// The first message of `lane` not handed out yet, now marked handed out.
    async fn take_next(&self, lane: Lane) -> Result<Option<(u64, u32, Vec<u8>)>> {
        loop {
            let skip = self.lane(lane).inflight().clone();
            let found = self
                .read("consume", move |rtx, _, _| {
                    let t = rtx.open_table(lane.table())?;
                    for item in t.iter()? {
                        let (k, v) = item?;
                        if !skip.contains(&k.value()) {
                            let (count, env) = split_message(v.value());
                            return Ok(Some((k.value(), count, env.to_vec())));
                        }
                    }
                    Ok(None)
                })
                .await?;
            match found {
                None => return Ok(None),
                // Another consumer of the lane may have taken it meanwhile.
                Some(m) if self.lane(lane).inflight().insert(m.0) => return Ok(Some(m)),
                Some(_) => continue,
            }
        }
    }

    /// Acks or requeues one handed-out message.
    async fn settle(&self, lane: Lane, seq: u64, requeue: bool) -> Result<()> {
        let db = self.db.clone();
        let limit = self.delivery_limit;
        let new_seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let r = tokio::task::spawn_blocking(move || -> TxResult<Option<Lane>> {
            let mut wtx = db.begin_write()?;
            // An ack or a requeue lost in a crash only means one more delivery, which
            // the state machine skips or runs as before: no fsync of its own.
            wtx.set_durability(redb::Durability::None)?;
            let moved = {
                let mut from = wtx.open_table(lane.table())?;
                let Some(v) = from.remove(seq)? else {
                    drop(from);
                    wtx.abort()?;
                    return Ok(None);
                };
                let (count, env) = split_message(v.value());
                let msg = join_message(count.saturating_add(1), env);
                drop(v);
                drop(from);
                if requeue {
                    let to = if lane == Lane::Ready && count.saturating_add(1) > limit {
                        Lane::Dead
                    } else {
                        lane
                    };
                    wtx.open_table(to.table())?
                        .insert(new_seq, msg.as_slice())?;
                    Some(to)
                } else {
                    None
                }
            };
            wtx.commit()?;
            Ok(moved)
        })
        .await;
        let moved = self.outcome(if requeue { "requeue" } else { "ack" }, r)?;
        self.lane(lane).inflight().remove(&seq);
        if let Some(to) = moved {
            self.lane(to).notify.notify_waiters();
        }
        Ok(())
    }

    fn start_consumer(&self, lane: Lane, prefetch: u16) -> mpsc::Receiver<Delivery> {
        let prefetch = usize::from(prefetch.max(1));
        let (tx, rx) = mpsc::channel(prefetch);
        let notify = self.lane(lane).notify.clone();
        tokio::spawn(consume_loop(
            self.me.clone(),
            self.alive.subscribe(),
            lane,
            notify,
            Arc::new(Semaphore::new(prefetch)),
            tx,
        ));
        rx
    }
}

fn spool_error(op: &str, why: &str) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        "the deferred spool could not read or write its disk",
    )
    .with_detail(format!("{op}: {why}"))
}

fn open_db(dir: &Path) -> TxResult<Database> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(SPOOL_FILE);
    let deadline = std::time::Instant::now() + OPEN_WAIT;
    let db = loop {
        match Database::create(&path) {
            Ok(db) => break db,
            // A previous instance in this process is still finishing a disk task.
            Err(redb::DatabaseError::DatabaseAlreadyOpen)
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let wtx = db.begin_write()?;
    wtx.open_table(QUEUE)?;
    wtx.open_table(DEAD)?;
    wtx.open_table(RECORDS)?;
    wtx.open_table(BODIES)?;
    wtx.open_table(OPEN)?;
    wtx.commit()?;
    Ok(db)
}

fn split_message(v: &[u8]) -> (u32, &[u8]) {
    if v.len() < 4 {
        return (0, &[]);
    }
    let (c, env) = v.split_at(4);
    (u32::from_be_bytes([c[0], c[1], c[2], c[3]]), env)
}

fn join_message(count: u32, env: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(4 + env.len());
    m.extend_from_slice(&count.to_be_bytes());
    m.extend_from_slice(env);
    m
}

/// Hands out messages of one lane, at most `sem`'s permits unsettled at once. Ends
/// when the spool or the receiver is dropped.
async fn consume_loop(
    spool: Weak<Spool>,
    mut alive: watch::Receiver<()>,
    lane: Lane,
    notify: Arc<Notify>,
    sem: Arc<Semaphore>,
    tx: mpsc::Sender<Delivery>,
) {
    loop {
        let permit = tokio::select! {
            p = sem.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = tx.closed() => return,
            _ = alive.changed() => return,
        };
        let (seq, count, bytes) = loop {
            // Registered before looking, so a publish in between is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let Some(s) = spool.upgrade() else { return };
            match s.take_next(lane).await {
                Ok(Some(m)) => break m,
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(detail = ?e.detail, "deferred spool: consumer could not read");
                }
            }
            drop(s);
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep(IDLE_CHECK) => {}
                _ = tx.closed() => return,
                _ = alive.changed() => return,
            }
        };
        let delivery = Delivery {
            envelope: Envelope::decode(&bytes),
            delivery_count: count,
            acker: Box::new(SpoolAcker {
                spool: spool.clone(),
                lane,
                seq,
                permit: Some(permit),
            }),
        };
        tokio::select! {
            r = tx.send(delivery) => if r.is_err() { return },
            _ = alive.changed() => return,
        }
    }
}

/// Deletes expired records now and then, while the spool lives.
async fn sweep_loop(spool: Weak<Spool>) {
    let every = match spool.upgrade() {
        Some(s) => Duration::from_millis(s.ttl_ms / 4)
            .clamp(Duration::from_millis(250), Duration::from_secs(60)),
        None => return,
    };
    loop {
        tokio::time::sleep(every).await;
        let Some(s) = spool.upgrade() else { return };
        if let Err(e) = s.sweep().await {
            tracing::warn!(detail = ?e.detail, "deferred spool: expiry sweep failed");
        }
    }
}

/// Settles one spool delivery. Dropped unsettled, the message stays handed out
/// (and its prefetch slot taken) until the spool is reopened, as with a broker.
struct SpoolAcker {
    spool: Weak<Spool>,
    lane: Lane,
    seq: u64,
    permit: Option<OwnedSemaphorePermit>,
}

impl SpoolAcker {
    fn settle(&mut self, requeue: bool) -> BoxFuture<'static, Result<()>> {
        let permit = self.permit.take();
        let (spool, lane, seq) = (self.spool.clone(), self.lane, self.seq);
        Box::pin(async move {
            let Some(s) = spool.upgrade() else {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    "the deferred spool is closed; the message is delivered again when it reopens",
                ));
            };
            let r = s.settle(lane, seq, requeue).await;
            if r.is_ok() {
                drop(permit);
            } else if let Some(p) = permit {
                // Still on disk and handed out: it keeps its prefetch slot.
                p.forget();
            }
            r
        })
    }
}

impl Acker for SpoolAcker {
    fn ack(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.settle(false)
    }

    fn requeue(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        self.settle(true)
    }
}

impl Drop for SpoolAcker {
    fn drop(&mut self) {
        if let Some(p) = self.permit.take() {
            p.forget();
        }
    }
}

impl Queue for Spool {
    fn publish<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let msg = join_message(0, &envelope.encode());
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let db = self.db.clone();
            let r = tokio::task::spawn_blocking(move || -> TxResult<()> {
                let wtx = db.begin_write()?;
                wtx.open_table(QUEUE)?.insert(seq, msg.as_slice())?;
                wtx.commit()?;
                Ok(())
            })
            .await;
            self.outcome("publish", r).map_err(|e| Error {
                message: "the request was not queued: the deferred spool could not write it".into(),
                ..e
            })?;
            self.ready.notify.notify_waiters();
            Ok(())
        })
    }

    fn consume(&self, prefetch: u16) -> mpsc::Receiver<Delivery> {
        self.start_consumer(Lane::Ready, prefetch)
    }

    fn consume_dead(&self) -> mpsc::Receiver<Delivery> {
        self.start_consumer(Lane::Dead, 16)
    }

    fn depth(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let total = self
                .read("depth", |rtx, _, _| Ok(rtx.open_table(QUEUE)?.len()?))
                .await?;
            let out = self.ready.inflight().len() as u64;
            Ok(total.saturating_sub(out))
        })
    }

    fn state(&self) -> BackendState {
        spool_state(self)
    }

    fn kind(&self) -> &'static str {
        "spool"
    }
}

fn spool_state(s: &Spool) -> BackendState {
    if s.up.load(Ordering::Relaxed) {
        BackendState::Up
    } else {
        BackendState::Down
    }
}

impl Store for Spool {
    fn create<'a>(&'a self, new: &'a NewRecord) -> BoxFuture<'a, Result<Created>> {
        let new = new.clone();
        Box::pin(self.tx("create", move |t| {
            let id = &new.id;
            let old = t.load(id)?;
            if let Some(r) = old.as_ref().filter(|r| r.live(t.now)) {
                return Ok(Created::Existing(r.record(id)));
            }
            if let Some(r) = old {
                t.delete(&r, id)?;
            }
            let mut r = Rec {
                state: State::Pending,
                owner: new.owner.clone(),
                fp: new.fingerprint.clone(),
                attempts: 0,
                err: None,
                qat: new.queued_at_ms,
                uat: t.now,
                exp: t.now.saturating_add(t.ttl),
                holder: None,
                lease: 0,
                status: None,
                ctype: None,
            };
            t.save(id, &mut r)?;
            t.open.insert(open_key(r.qat, id.as_str()).as_slice(), ())?;
            Ok(Created::New)
        }))
    }

    fn mark_queued<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<()>> {
        let id = id.clone();
        Box::pin(self.tx("mark_queued", move |t| {
            if let Some(mut r) = t.load(&id)? {
                if r.live(t.now) && r.state == State::Pending {
                    r.state = State::Queued;
                    t.save(&id, &mut r)?;
                }
            }
            Ok(())
        }))
    }

    fn abandon<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<()>> {
        let id = id.clone();
        Box::pin(self.tx("abandon", move |t| {
            if let Some(r) = t.load(&id)? {
                if r.state == State::Pending {
                    t.delete(&r, &id)?;
                }
            }
            Ok(())
        }))
    }

    fn lookup<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<Lookup>> {
        let id = id.clone();
        Box::pin(self.read("lookup", move |rtx, now, ttl| {
            let recs = rtx.open_table(RECORDS)?;
            let Some(r) = load_from(&recs, id.as_str(), now, ttl)? else {
                return Ok(Lookup::Missing);
            };
            if !r.live(now) {
                return Ok(Lookup::Expired(r.record(&id)));
            }
            let result = if r.state == State::Done {
                let body = rtx
                    .open_table(BODIES)?
                    .get(id.as_str())?
                    .map(|b| Bytes::copy_from_slice(b.value()))
                    .unwrap_or_default();
                Some(StoredResult {
                    status: r.status.unwrap_or(0),
                    content_type: r.ctype.clone(),
                    body,
                })
            } else {
                None
            };
            Ok(Lookup::Found(r.record(&id), result))
        }))
    }

    fn claim<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>> {
        let (id, holder) = (id.clone(), holder.to_string());
        let lease = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let grace_ms = self.grace_ms;
        Box::pin(self.tx("claim", move |t| {
            let Some(mut r) = t.load(&id)? else {
                return Ok(Claim::Missing);
            };
            if !r.live(t.now) {
                t.open_del(&r, &id)?;
                return Ok(Claim::Missing);
            }
            if r.state.is_final() {
                return Ok(Claim::Finished(r.state));
            }
            let grace = r.qat.saturating_add(grace_ms);
            if r.state == State::Pending && grace > t.now {
                return Ok(Claim::Pending { until_ms: grace });
            }
            if matches!(r.state, State::Claimed | State::Sent)
                && r.holder.as_deref() != Some(holder.as_str())
                && r.lease > t.now
            {
                return Ok(Claim::HeldElsewhere { until_ms: r.lease });
            }
            r.attempts = r.attempts.saturating_add(1);
            r.holder = Some(holder);
            r.lease = t.now.saturating_add(lease);
            if r.state == State::Sent {
                t.save(&id, &mut r)?;
                return Ok(Claim::WasSent(r.record(&id)));
            }
            r.state = State::Claimed;
            t.save(&id, &mut r)?;
            Ok(Claim::Mine(r.record(&id)))
        }))
    }

    fn renew<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>> {
        let (id, holder) = (id.clone(), holder.to_string());
        let lease = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        Box::pin(self.tx("renew", move |t| match t.load(&id)? {
            Some(mut r) if r.live(t.now) && r.held_by(&holder) => {
                r.lease = t.now.saturating_add(lease);
                t.save(&id, &mut r)?;
                Ok(true)
            }
            _ => Ok(false),
        }))
    }

    fn mark_sent<'a>(&'a self, id: &'a DeferredId, holder: &'a str) -> BoxFuture<'a, Result<bool>> {
        let (id, holder) = (id.clone(), holder.to_string());
        Box::pin(self.tx("mark_sent", move |t| match t.load(&id)? {
            Some(mut r) if r.live(t.now) && r.held_by(&holder) => {
                r.state = State::Sent;
                t.save(&id, &mut r)?;
                Ok(true)
            }
            _ => Ok(false),
        }))
    }

    fn release<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<bool>> {
        let (id, holder, error) = (id.clone(), holder.to_string(), error.to_string());
        Box::pin(self.tx("release", move |t| match t.load(&id)? {
            Some(mut r) if r.live(t.now) && r.held_by(&holder) => {
                r.state = State::Queued;
                r.holder = None;
                r.lease = 0;
                r.err = (!error.is_empty()).then_some(error);
                t.save(&id, &mut r)?;
                Ok(true)
            }
            _ => Ok(false),
        }))
    }

    fn finish<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: Option<&'a str>,
        outcome: Finish,
    ) -> BoxFuture<'a, Result<bool>> {
        let (id, holder) = (id.clone(), holder.map(str::to_string));
        Box::pin(self.tx("finish", move |t| {
            let Some(mut r) = t.load(&id)?.filter(|r| r.live(t.now)) else {
                return Ok(false);
            };
            let allowed = match &holder {
                Some(h) => r.held_by(h),
                None => r.is_open(),
            };
            if !allowed {
                return Ok(false);
            }
            r.holder = None;
            r.lease = 0;
            r.exp = t.now.saturating_add(t.ttl);
            match outcome {
                Finish::Done(res) => {
                    r.state = State::Done;
                    r.status = Some(res.status);
                    r.ctype = res.content_type;
                    t.bodies.insert(id.as_str(), &res.body[..])?;
                }
                Finish::OutcomeUnknown { error } => {
                    r.state = State::OutcomeUnknown;
                    r.err = (!error.is_empty()).then_some(error);
                }
                Finish::Dead { error } => {
                    r.state = State::Dead;
                    r.err = (!error.is_empty()).then_some(error);
                }
            }
            t.open_del(&r, &id)?;
            t.save(&id, &mut r)?;
            Ok(true)
        }))
    }

    fn cancel<'a>(&'a self, id: &'a DeferredId, owner: &'a str) -> BoxFuture<'a, Result<Cancel>> {
        let (id, owner) = (id.clone(), owner.to_string());
        Box::pin(self.tx("cancel", move |t| {
            let Some(mut r) = t.load(&id)?.filter(|r| r.live(t.now) && r.owner == owner) else {
                return Ok(Cancel::Missing);
            };
            if !matches!(r.state, State::Pending | State::Queued) {
                return Ok(Cancel::TooLate(r.state));
            }
            r.state = State::Cancelled;
            r.exp = t.now.saturating_add(t.ttl);
            t.open_del(&r, &id)?;
            t.save(&id, &mut r)?;
            Ok(Cancel::Cancelled)
        }))
    }

    fn backlog(&self) -> BoxFuture<'_, Result<Backlog>> {
        Box::pin(self.read("backlog", |rtx, now, ttl| {
            let open = rtx.open_table(OPEN)?;
            let recs = rtx.open_table(RECORDS)?;
            let mut b = Backlog::default();
            for item in open.iter()? {
                let (k, _) = item?;
                let k = k.value();
                if k.len() < 8 {
                    continue;
                }
                let id = std::str::from_utf8(&k[8..]).unwrap_or_default();
                match load_from(&recs, id, now, ttl)? {
                    Some(r) if r.live(now) && r.is_open() => {
                        b.open += 1;
                        b.oldest_queued_at_ms.get_or_insert(r.qat);
                    }
                    _ => {}
                }
            }
            Ok(b)
        }))
    }

    fn state(&self) -> BackendState {
        spool_state(self)
    }

    fn kind(&self) -> &'static str {
        "spool"
    }
}
