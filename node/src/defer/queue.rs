//! Where deferred requests wait: one trait, two backends. RabbitMQ (`amqp`) is the
//! cluster's queue, one quorum queue per region; the embedded spool (`spool`) is the
//! default without `--amqp`. The contract is the same for both: `publish` returns
//! `Ok` only once the envelope is durable, deliveries are at least once, and a
//! message is gone only after `ack`.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::mpsc;

use super::{BackendState, Envelope};
use crate::error::Result;

/// A boxed, sendable future: the traits here are used as `dyn` objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A durable queue of [`Envelope`]s for this node's region.
pub trait Queue: Send + Sync + 'static {
    /// Persists `envelope`. `Ok` only once it is durable: the broker confirmed the
    /// publish (a nack, a returned message or no confirm within the timeout is an
    /// `Err`), or the spool's commit is on disk. Errors have kind
    /// `ErrorKind::Unavailable`; their message says the request was not queued and why,
    /// without secrets.
    fn publish<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>>;

    /// Starts a consumer that keeps itself alive across broker restarts (reconnecting
    /// with backoff). At most `prefetch` deliveries are unacknowledged at once. The
    /// receiver ends only when the queue is dropped.
    fn consume(&self, prefetch: u16) -> mpsc::Receiver<Delivery>;

    /// Messages that went over the delivery limit (RabbitMQ: the dead-letter queue fed
    /// by the dead-letter exchange, at-least-once). The consumer marks each id dead in
    /// the store, then acks.
    fn consume_dead(&self) -> mpsc::Receiver<Delivery>;

    /// Messages ready in the queue, as far as the backend knows.
    fn depth(&self) -> BoxFuture<'_, Result<u64>>;

    /// Whether the backend answered lately (for readiness: `warn` when down).
    fn state(&self) -> BackendState;

    /// `rabbitmq` or `spool`, for logs and metrics.
    fn kind(&self) -> &'static str;
}

/// One delivered message.
pub struct Delivery {
    /// `None` when the bytes are not an envelope: the consumer acks and counts it.
    pub envelope: Option<Envelope>,
    /// Deliveries of this message before this one (0 the first time). RabbitMQ: the
    /// quorum queue's `x-delivery-count` header.
    pub delivery_count: u32,
    /// Settles the message; dropping it without settling leaves the message unacked
    /// until the connection ends (then it is redelivered).
    pub acker: Box<dyn Acker>,
}

/// Settles one delivery.
pub trait Acker: Send + Sync {
    /// Done: the message leaves the queue.
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
    /// Back to the queue for another delivery. Counts toward the delivery limit; past
    /// it the message is dead-lettered instead.
    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<()>>;
}
