//! Each deferred id's state machine and stored result: one trait, two backends.
//! Redis (`redis_store`: every transition one Lua script, so two nodes never both
//! win) in a cluster; the embedded spool (`spool`: one write transaction per
//! transition) on a node alone.
//!
//! ```text
//!  create ──> Pending ──(broker confirmed)──> Queued ──claim──> Claimed ──mark_sent──> Sent
//!               │ abandon (publish failed)      │ cancel          │ release (not sent)   │
//!               v                               v                 v                      v
//!             (gone)                        Cancelled          Queued      finish: Done | OutcomeUnknown
//!  any open state ──(dead-lettered)──> Dead
//! ```
//! A claim is a lease: a holder that dies loses it when the lease runs out, and the
//! next delivery takes over. A takeover that finds `Sent` does not resend (the outcome
//! is unknown) unless the operator allows resending.
//!
//! Expiry: every record has `expires_at_ms` (creation + result TTL, moved to
//! finish + TTL when it finishes). After it, `lookup` says `Expired` (410) for one
//! more TTL, then `Missing` (404). The stored body is dropped at `expires_at_ms`.

use std::time::Duration;

use bytes::Bytes;

use super::queue::BoxFuture;
use super::{BackendState, DeferredId};
use crate::error::Result;

/// Where a deferred id is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Recorded, publish not yet confirmed (no 202 sent for it yet).
    Pending,
    /// Confirmed by the queue: waiting for a consumer.
    Queued,
    /// A consumer holds it under a lease.
    Claimed,
    /// The request's first byte is going (or went) upstream.
    Sent,
    /// The upstream answered; the result is stored.
    Done,
    /// It was sent and its holder died before the result was stored: whether the
    /// upstream ran it is unknown, and it is not resent.
    OutcomeUnknown,
    /// Cancelled by its owner while queued.
    Cancelled,
    /// Over the delivery limit: dead-lettered, `last_error` says why.
    Dead,
}

impl State {
    /// The stable name used by the backends, in `GET` answers and in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Queued => "queued",
            State::Claimed => "delivering",
            State::Sent => "sent",
            State::Done => "done",
            State::OutcomeUnknown => "outcome_unknown",
            State::Cancelled => "cancelled",
            State::Dead => "dead_lettered",
        }
    }

    pub fn parse(s: &str) -> Option<State> {
        Some(match s {
            "pending" => State::Pending,
            "queued" => State::Queued,
            "delivering" => State::Claimed,
            "sent" => State::Sent,
            "done" => State::Done,
            "outcome_unknown" => State::OutcomeUnknown,
            "cancelled" => State::Cancelled,
            "dead_lettered" => State::Dead,
            _ => return None,
        })
    }

    /// No further transition: a delivery of it is acked without sending.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Done | State::OutcomeUnknown | State::Cancelled | State::Dead
        )
    }
}

/// What a new id starts with.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub id: DeferredId,
    /// The client key's name; only it may read or cancel the id.
    pub owner: String,
    /// [`super::fingerprint`] of the body (an idempotency key reused with another body
    /// is refused).
    pub fingerprint: String,
    pub queued_at_ms: u64,
}

/// An id's state as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: DeferredId,
    pub owner: String,
    pub fingerprint: String,
    pub state: State,
    /// Claims so far (deliveries that got as far as the state machine).
    pub attempts: u32,
    /// The last failure, client-safe (no secrets, no upstream payload).
    pub last_error: Option<String>,
    pub queued_at_ms: u64,
    pub updated_at_ms: u64,
    pub expires_at_ms: u64,
    /// The consumer holding the claim (a node id plus a delivery tag), while claimed or sent.
    pub holder: Option<String>,
    /// Unix ms when the holder's claim runs out.
    pub lease_until_ms: u64,
}

/// What the upstream answered, stored for `GET`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResult {
    pub status: u16,
    /// The upstream's content type (`application/json`, `text/event-stream`).
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// [`Store::create`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created {
    /// Written in state `Pending`.
    New,
    /// The id exists (an idempotency key used again) and has not expired: nothing
    /// was written. An expired record is replaced, as if it were missing.
    Existing(Record),
}

/// [`Store::lookup`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Missing,
    /// Past `expires_at_ms` (its result, if any, is gone).
    Expired(Record),
    /// The record, and the result once `Done`.
    Found(Record, Option<StoredResult>),
}

/// [`Store::claim`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The caller holds it now (`Pending`, `Queued`, or a claim whose lease ran out,
    /// or its own): state `Claimed`, `attempts` counted.
    Mine(Record),
    /// Another holder's lease is live until this Unix ms: requeue later, never ack.
    HeldElsewhere { until_ms: u64 },
    /// Still `Pending` and younger than [`super::pending_grace`]: its publisher is
    /// deciding (the confirm, then `queued`; or a timeout, then removal). Ask again
    /// shortly; after `until_ms` a pending record is claimed like a queued one.
    Pending { until_ms: u64 },
    /// Found `Sent` with its lease run out: the caller decides (outcome unknown, or
    /// resend when the operator allows). The caller now holds it, still `Sent`.
    WasSent(Record),
    /// Nothing more to do (`Done`, `OutcomeUnknown`, `Cancelled`, `Dead`): ack.
    Finished(State),
    /// Unknown or expired id: ack and drop.
    Missing,
}

/// How a delivery ended, for [`Store::finish`].
#[derive(Debug, Clone)]
pub enum Finish {
    /// The upstream answered (any status the client should see).
    Done(StoredResult),
    /// Sent, and no complete answer came back.
    OutcomeUnknown { error: String },
    /// Dead-lettered: the message went over the delivery limit.
    Dead { error: String },
}

/// [`Store::cancel`]'s answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    Cancelled,
    /// Already claimed, sent or finished: too late to cancel.
    TooLate(State),
    /// Unknown, expired, or another owner's.
    Missing,
}

/// Open work in the store, for the depth and oldest-age metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Ids not yet final (pending, queued, claimed, sent).
    pub open: u64,
    /// `queued_at_ms` of the oldest open id.
    pub oldest_queued_at_ms: Option<u64>,
}

/// The state machine's storage. Every method is one atomic step. Errors (store
/// unreachable, bad data) have kind `ErrorKind::Unavailable` and say so without
/// secrets; a transition that does not apply is an answer, not an error.
pub trait Store: Send + Sync + 'static {
    /// Writes `new` in state `Pending` unless the id exists and has not expired.
    fn create<'a>(&'a self, new: &'a NewRecord) -> BoxFuture<'a, Result<Created>>;
    /// `Pending` → `Queued` once the queue confirmed; any other state is left as is.
    fn mark_queued<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<()>>;
    /// The publish failed: removes the record if it is still `Pending`.
    fn abandon<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<()>>;
    fn lookup<'a>(&'a self, id: &'a DeferredId) -> BoxFuture<'a, Result<Lookup>>;
    /// Takes the id for `holder` for `lease` (see [`Claim`]).
    fn claim<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim>>;
    /// Extends the holder's lease; `false` if it no longer holds the id.
    fn renew<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool>>;
    /// `Claimed` → `Sent`, just before the first byte goes upstream; `false` if the
    /// holder lost its claim (then it must not send).
    fn mark_sent<'a>(&'a self, id: &'a DeferredId, holder: &'a str) -> BoxFuture<'a, Result<bool>>;
    /// The holder gives the id back (`Claimed` or `Sent` → `Queued`) because nothing
    /// reached the upstream (connect failure, no key, an error status before any
    /// work); records `error` as the last error. `false` if it no longer held it.
    fn release<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: &'a str,
        error: &'a str,
    ) -> BoxFuture<'a, Result<bool>>;
    /// Ends the id. With a `holder`, only if it still holds the id (`false` if not);
    /// `None` (the dead-letter consumer) ends any state that is not final. `Done`
    /// stores the result and moves `expires_at_ms` to now + TTL.
    fn finish<'a>(
        &'a self,
        id: &'a DeferredId,
        holder: Option<&'a str>,
        outcome: Finish,
    ) -> BoxFuture<'a, Result<bool>>;
    /// The owner cancels while `Pending` or `Queued`.
    fn cancel<'a>(&'a self, id: &'a DeferredId, owner: &'a str) -> BoxFuture<'a, Result<Cancel>>;
    /// Open ids of this region and the oldest's age.
    fn backlog(&self) -> BoxFuture<'_, Result<Backlog>>;
    /// Whether the store answered lately (for readiness: `warn` when down).
    fn state(&self) -> BackendState;
    /// `redis` or `spool`, for logs and metrics.
    fn kind(&self) -> &'static str;
}
