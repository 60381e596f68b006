//! The RabbitMQ [`Queue`]: one durable quorum queue per region, publisher confirms
//! behind every `Ok`, and connections that come back by themselves.
//!
//! Topology (declared by every connection, idempotently):
//! - `strait.deferred.<region>`: quorum queue, `x-delivery-limit`, dead-lettered
//!   at least once to `strait.deferred.dlx`, `x-overflow: reject-publish` (a full
//!   queue nacks, which at-least-once dead-lettering requires);
//! - `strait.deferred.dlx`: durable direct exchange;
//! - `strait.deferred.<region>.dead`: quorum queue bound to it with the main queue's
//!   name (dead-lettering keeps the original routing key, which is that name, since
//!   messages are published to the default exchange).
//!
//! Connections: [`AmqpQueue::connect`] never waits for the broker, so a node starts
//! while its broker is down. A background task connects, declares the topology and
//! opens a confirm-mode channel; when the connection drops it reconnects with backoff
//! (100 ms doubling to 5 s). Until then `state()` is `Down` and `publish` fails at
//! once. Each consumer has its own connection and the same loop (RabbitMQ advises
//! separate connections for publishing and consuming: flow control on one does not
//! stall the other). No URL password reaches a log line or an error: see [`redact`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use tokio::sync::{mpsc, watch};

use super::queue::{Acker, BoxFuture, Delivery, Queue};
use super::{BackendState, Envelope};
use crate::config::Deferred;
use crate::error::{Error, ErrorKind, Result};

/// The dead-letter exchange shared by every region's queue on a broker.
pub const DEAD_LETTER_EXCHANGE: &str = "strait.deferred.dlx";
/// First pause after a failed connection attempt; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A broker that accepts TCP but never finishes the handshake must not hold the loop.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat asked for when the URL sets none: a silently dead peer is noticed
/// within about two intervals (by an idle node; a publish notices at its confirm
/// timeout) instead of the broker's 60 s default.
const DEFAULT_HEARTBEAT_S: u16 = 5;
/// How often a connection's health is looked at by its task.
const WATCH_INTERVAL: Duration = Duration::from_millis(100);

/// The queue for `region`: `strait.deferred.<region>`.
pub fn queue_name(region: &str) -> String {
    format!("strait.deferred.{region}")
}

/// Its dead-letter queue: `strait.deferred.<region>.dead`.
pub fn dead_queue_name(region: &str) -> String {
    format!("strait.deferred.{region}.dead")
}

/// `url` with any password replaced by `***`, for logs and error messages. Text that
/// does not look like a URL is hidden whole (it might be a mistyped secret).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not a URL, hidden)".into();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let hidden = if userinfo.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{tail}")
        }
        None => url.to_string(),
    }
}

/// The host part of a URL's authority, without port or IPv6 brackets.
fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = hostport.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(hostport.rsplit_once(':').map_or(hostport, |(h, _)| h))
}

/// Parses an AMQP URL. `amq-protocol-uri` keeps only DNS names as the host (an IP
/// address would silently become `localhost`), so an IP host is put back here.
pub fn parse_url(url: &str) -> Result<AMQPUri> {
    let invalid = || {
        Error::config(format!(
            "deferred.amqp_url ({}) is not an AMQP URL: expected amqp://user:password@host:port/vhost \
             (amqps:// for TLS; the default vhost `/` is written %2f)",
            redact(url)
        ))
    };
    // The parser's own message may quote the whole URL, password included.
    let mut uri: AMQPUri = url.parse().map_err(|_| invalid())?;
    if let Some(ip) = url_host(url).and_then(|h| h.parse::<IpAddr>().ok()) {
        uri.authority.host = ip.to_string();
    }
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT_S);
    }
    Ok(uri)
}

/// The error every failed publish returns: the request was not queued, and why.
fn not_queued(why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("the request was NOT queued: {why}"),
    )
}

/// What a publisher confirm means for the request. Only a plain ack is durable: a
/// returned message (`Ack(Some(_))`, no queue took it) and a nack are failures, and
/// `NotRequested` would mean the channel is not in confirm mode (a bug here).
pub fn confirmation_result(confirmation: Confirmation) -> Result<()> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(not_queued(
            "the broker returned it (no queue took it; was the queue deleted?)",
        )
        .with_detail(format!(
            "basic.return {} {}",
            returned.reply_code, returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(not_queued(
            "the broker refused it (nack: the queue is full or cannot store it)",
        )),
        Confirmation::NotRequested => Err(not_queued(
            "the broker was not asked to confirm it (channel not in confirm mode)",
        )),
    }
}

/// A deferred-request queue on RabbitMQ. Dropping it ends its connections and
/// consumers (their receivers then end).
pub struct AmqpQueue {
    shared: Arc<Shared>,
    /// Never sent on: its drop tells every task to close and end.
    _shutdown: watch::Sender<()>,
    shutdown_rx: watch::Receiver<()>,
}

struct Shared {
    uri: AMQPUri,
    /// The URL with its password hidden: the only form that is ever logged.
    shown: String,
    region: String,
    queue: String,
    dead: String,
    delivery_limit: u32,
    confirm_timeout: Duration,
    /// The publisher's connection and confirm channel while they are up.
    link: ArcSwapOption<Link>,
}

struct Link {
    conn: Connection,
    channel: Channel,
    /// Set when a publish went unconfirmed: a broker that went silent (a partition,
    /// a stalled disk) keeps its TCP connection "connected" until heartbeats lapse,
    /// so the link is given up at once, `/readyz` says the broker is unreachable,
    /// and the publisher reconnects (and stays down while the broker cannot answer).
    given_up: std::sync::atomic::AtomicBool,
}

impl Link {
    fn alive(&self) -> bool {
        !self.given_up.load(std::sync::atomic::Ordering::Relaxed)
            && self.conn.status().connected()
            && self.channel.status().connected()
    }
}

impl AmqpQueue {
    /// Checks `url` and starts connecting in the background; does not wait for the
    /// broker, so a node starts (with `state()` `Down`, publishes failing fast) while
    /// the broker is down. `Err` (kind `Config`) only for a URL that is not an AMQP
    /// URL; the message shows the URL with its password hidden. Needs a Tokio runtime.
    pub async fn connect(url: &str, region: &str, settings: &Deferred) -> Result<AmqpQueue> {
        let uri = parse_url(url)?;
        let (tx, rx) = watch::channel(());
        let shared = Arc::new(Shared {
            uri,
            shown: redact(url),
            region: region.to_string(),
            queue: queue_name(region),
            dead: dead_queue_name(region),
            delivery_limit: settings.delivery_limit,
            confirm_timeout: settings.confirm_timeout,
            link: ArcSwapOption::empty(),
        });
        tokio::spawn(publisher_task(shared.clone(), rx.clone()));
        Ok(AmqpQueue {
            shared,
            _shutdown: tx,
            shutdown_rx: rx,
        })
    }

    /// Waits up to `limit` for the publisher connection; `true` once it is up. For
    /// start-up logs and tests; nothing needs it for correctness.
    pub async fn wait_connected(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.shared.live_link().is_some() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The main queue's name, `strait.deferred.<region>`.
    pub fn queue(&self) -> &str {
        &self.shared.queue
    }

    /// The dead-letter queue's name, `strait.deferred.<region>.dead`.
    pub fn dead_queue(&self) -> &str {
        &self.shared.dead
    }

    fn spawn_consumer(&self, queue: String, prefetch: u16) -> mpsc::Receiver<Delivery> {
        let (tx, rx) = mpsc::channel(usize::from(prefetch.max(1)));
        tokio::spawn(consumer_task(
            self.shared.clone(),
            queue,
            prefetch.max(1),
            tx,
            self.shutdown_rx.clone(),
        ));
        rx
    }
}

impl Shared {
    fn live_link(&self) -> Option<Arc<Link>> {
        self.link.load_full().filter(|l| l.alive())
    }

    async fn open_connection(&self, role: &str) -> Result<Connection> {
        let props = ConnectionProperties::default()
            .with_connection_name(format!("strait-node {} {role}", self.region).into());
        match tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_uri(self.uri.clone(), props),
        )
        .await
        {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(Error::new(
                ErrorKind::Unavailable,
                format!("cannot connect to RabbitMQ at {}", self.shown),
            )
            .with_detail(e)),
            Err(_) => Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "RabbitMQ at {} did not complete the handshake within {CONNECT_TIMEOUT:?}",
                    self.shown
                ),
            )),
        }
    }

    /// Declares the exchange and both queues. Idempotent while the arguments match;
    /// a queue declared earlier with other arguments (say another delivery limit) is
    /// refused by the broker, which the error says.
    async fn declare(&self, channel: &Channel) -> Result<()> {
        let failed = |what: &str, e: lapin::Error| {
            Error::new(
                ErrorKind::Unavailable,
                format!(
                    "RabbitMQ at {} refused to declare {what} (a queue that exists with other \
                     arguments, e.g. another delivery limit, must be deleted or migrated)",
                    self.shown
                ),
            )
            .with_detail(e)
        };
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        channel
            .exchange_declare(
                DEAD_LETTER_EXCHANGE.into(),
                ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| failed(DEAD_LETTER_EXCHANGE, e))?;
        channel
            .queue_declare(self.dead.as_str().into(), durable, dead_queue_arguments())
            .await
            .map_err(|e| failed(&self.dead, e))?;
        channel
            .queue_bind(
                self.dead.as_str().into(),
                DEAD_LETTER_EXCHANGE.into(),
                self.queue.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| failed(&format!("the binding of {}", self.dead), e))?;
        channel
            .queue_declare(
                self.queue.as_str().into(),
                durable,
                queue_arguments(self.delivery_limit),
            )
            .await
            .map_err(|e| failed(&self.queue, e))?;
        Ok(())
    }

    async fn open_publisher(&self) -> Result<Link> {
        let conn = self.open_connection("publisher").await?;
        let setup = async {
            let channel = conn.create_channel().await.map_err(|e| {
                Error::new(ErrorKind::Unavailable, "cannot open a RabbitMQ channel").with_detail(e)
            })?;
            self.declare(&channel).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| {
                    Error::new(
                        ErrorKind::Unavailable,
                        "RabbitMQ refused publisher confirms",
                    )
                    .with_detail(e)
                })?;
            Ok(channel)
        };
        match setup.await {
            Ok(channel) => Ok(Link {
                conn,
                channel,
                given_up: Default::default(),
            }),
            Err(e) => {
                close(&conn, "setup failed").await;
                Err(e)
            }
        }
    }
}

/// The main queue's declare arguments. Public so a tool that declares or checks
/// the queue (the coordinator's evacuation) uses exactly the node's.
pub fn queue_arguments(delivery_limit: u32) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        long_string(DEAD_LETTER_EXCHANGE),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        long_string("at-least-once"),
    );
    args.insert("x-overflow".into(), long_string("reject-publish"));
    args
}

fn dead_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), long_string("quorum"));
    args
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Sleeps for the current backoff (or until shutdown, then `false`) and doubles it.
async fn back_off(backoff: &mut Duration, shutdown: &mut watch::Receiver<()>) -> bool {
    let pause = *backoff;
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = shutdown.changed() => false,
    }
}

/// Keeps the publisher's connection up: connect, publish the link, watch it, and
/// start again with backoff when it drops.
async fn publisher_task(shared: Arc<Shared>, mut shutdown: watch::Receiver<()>) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            r = shared.open_publisher() => r,
            _ = shutdown.changed() => return,
        };
        match attempt {
            Ok(link) => {
                tracing::info!(url = %shared.shown, queue = %shared.queue, "deferred queue: connected to RabbitMQ");
                backoff = MIN_BACKOFF;
                failures = 0;
                let link = Arc::new(link);
                shared.link.store(Some(link.clone()));
                let mut tick = tokio::time::interval(WATCH_INTERVAL);
                let closing = loop {
                    tokio::select! {
                        _ = tick.tick() => if !link.alive() { break false },
                        _ = shutdown.changed() => break true,
                    }
                };
                shared.link.store(None);
                if closing {
                    close(&link.conn, "node stopping").await;
                    return;
                }
                tracing::warn!(url = %shared.shown, "deferred queue: lost the RabbitMQ connection; deferral answers 503 until it is back");
                close(&link.conn, "reconnecting").await;
            }
            Err(e) => {
                failures += 1;
                // The first failure in a row is worth a warning; the retries every few
                // seconds after it are not.
                if failures == 1 {
                    tracing::warn!(error = %e.message, detail = ?e.detail, "deferred queue: RabbitMQ unreachable; retrying with backoff");
                } else {
                    tracing::debug!(error = %e.message, detail = ?e.detail, failures, "deferred queue: RabbitMQ still unreachable");
                }
            }
        }
        if !back_off(&mut backoff, &mut shutdown).await {
            return;
        }
    }
}

/// One consumer on `queue`: its own connection, `basic_qos(prefetch)`, deliveries
/// forwarded to `tx`; reconnects with backoff until `tx`'s receiver or the queue is
/// dropped.
async fn consumer_task(
    shared: Arc<Shared>,
    queue: String,
    prefetch: u16,
    tx: mpsc::Sender<Delivery>,
    mut shutdown: watch::Receiver<()>,
) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    loop {
        let conn = tokio::select! {
            r = shared.open_connection("consumer") => r,
            _ = shutdown.changed() => return,
            _ = tx.closed() => return,
        };
        // From here every way out closes the connection itself. Once `basic.consume`
        // is sent, lapin keeps the consumer registered, and with it the channel and
        // the connection, even if the setup future is dropped; the broker would then
        // push up to `prefetch` deliveries there that nothing settles, unacked (not
        // back in the queue) for as long as the process lives.
        let setup = match conn {
            Ok(conn) => tokio::select! {
                r = start_consuming(&shared, &conn, &queue, prefetch) => match r {
                    Ok((channel, consumer)) => Ok((conn, channel, consumer)),
                    Err(e) => {
                        close(&conn, "setup failed").await;
                        Err(e)
                    }
                },
                _ = shutdown.changed() => return close(&conn, "consumer ending").await,
                _ = tx.closed() => return close(&conn, "consumer ending").await,
            },
            Err(e) => Err(e),
        };
        match setup {
            Ok((conn, channel, mut consumer)) => {
                tracing::info!(url = %shared.shown, %queue, prefetch, "deferred queue: consuming");
                backoff = MIN_BACKOFF;
                failures = 0;
                let mut tick = tokio::time::interval(WATCH_INTERVAL);
                let ending = loop {
                    tokio::select! {
                        item = consumer.next() => match item {
                            Some(Ok(d)) => {
                                let delivery = to_delivery(d);
                                tokio::select! {
                                    sent = tx.send(delivery) => if sent.is_err() { break true },
                                    _ = shutdown.changed() => break true,
                                }
                            }
                            Some(Err(e)) => {
                                tracing::debug!(%queue, error = %e, "deferred queue: consumer failed");
                                break false;
                            }
                            None => break false,
                        },
                        _ = tick.tick() => if !(conn.status().connected() && channel.status().connected()) { break false },
                        _ = shutdown.changed() => break true,
                        _ = tx.closed() => break true,
                    }
                };
                // Unsettled deliveries go back to the queue when the connection ends.
                close(&conn, "consumer ending").await;
                if ending {
                    return;
                }
                tracing::warn!(url = %shared.shown, %queue, "deferred queue: consumer lost its RabbitMQ connection; reconnecting");
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(%queue, error = %e.message, detail = ?e.detail, "deferred queue: cannot consume; retrying with backoff");
                } else {
                    tracing::debug!(%queue, error = %e.message, failures, "deferred queue: still cannot consume");
                }
            }
        }
        if !back_off(&mut backoff, &mut shutdown).await {
            return;
        }
    }
}

/// Closes a connection, waiting at most [`CONNECT_TIMEOUT`] for the broker to agree
/// (a silent broker drops it when the socket goes).
async fn close(conn: &Connection, why: &str) {
    let _ = tokio::time::timeout(CONNECT_TIMEOUT, conn.close(200, why.into())).await;
}

/// On `conn`: a channel, the topology, `basic_qos(prefetch)` and the consumer.
async fn start_consuming(
    shared: &Shared,
    conn: &Connection,
    queue: &str,
    prefetch: u16,
) -> Result<(Channel, lapin::Consumer)> {
    let failed = |e: lapin::Error| {
        Error::new(
            ErrorKind::Unavailable,
            format!("RabbitMQ refused a consumer on {queue}"),
        )
        .with_detail(e)
    };
    let channel = conn.create_channel().await.map_err(failed)?;
    shared.declare(&channel).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(failed)?;
    let consumer = channel
        .basic_consume(
            ShortString::from(queue),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(failed)?;
    Ok((channel, consumer))
}

fn to_delivery(d: lapin::message::Delivery) -> Delivery {
    let delivery_count = d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count"))
        .and_then(as_count)
        .unwrap_or(0);
    Delivery {
        envelope: Envelope::decode(&d.data),
        delivery_count,
        acker: Box::new(AmqpAcker(d.acker)),
    }
}

/// An integer header of any AMQP width as a count (negative or absurd: `None`).
fn as_count(v: &AMQPValue) -> Option<u32> {
    let n: i64 = match *v {
        AMQPValue::ShortShortInt(n) => n.into(),
        AMQPValue::ShortShortUInt(n) => n.into(),
        AMQPValue::ShortInt(n) => n.into(),
        AMQPValue::ShortUInt(n) => n.into(),
        AMQPValue::LongInt(n) => n.into(),
        AMQPValue::LongUInt(n) => n.into(),
        AMQPValue::LongLongInt(n) => n,
        _ => return None,
    };
    u32::try_from(n).ok()
}

struct AmqpAcker(lapin::Acker);

/// lapin answers `Ok(false)` when the delivery's channel is gone: nothing was
/// settled, and the broker redelivers the message on its own.
fn settled(r: lapin::Result<bool>, what: &str) -> Result<()> {
    let lost = || {
        Error::new(
            ErrorKind::Unavailable,
            format!("could not {what} the delivery: its RabbitMQ channel is closed (the broker will redeliver it)"),
        )
    };
    match r {
        Ok(true) => Ok(()),
        Ok(false) => Err(lost()),
        Err(e) => Err(lost().with_detail(e)),
    }
}

impl Acker for AmqpAcker {
    fn ack(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move { settled(self.0.ack(BasicAckOptions::default()).await, "ack") })
    }

    fn requeue(self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            let options = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            settled(self.0.nack(options).await, "requeue")
        })
    }
}

impl Queue for AmqpQueue {
    fn publish<'a>(&'a self, envelope: &'a Envelope) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let shared = &self.shared;
            let Some(link) = shared.live_link() else {
                return Err(not_queued("the broker is unreachable"));
            };
            if link.conn.status().blocked() {
                return Err(not_queued(
                    "the broker blocks publishers (a memory or disk alarm)",
                ));
            }
            let body = envelope.encode();
            let properties = BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(envelope.head.id.as_str().into())
                .with_content_type("application/octet-stream".into());
            let confirmed = async {
                let confirm = link
                    .channel
                    .basic_publish(
                        ShortString::from(""),
                        shared.queue.as_str().into(),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &body,
                        properties,
                    )
                    .await?;
                confirm.await
            };
            match tokio::time::timeout(shared.confirm_timeout, confirmed).await {
                Ok(Ok(confirmation)) => confirmation_result(confirmation),
                Ok(Err(e)) => Err(not_queued("the connection to the broker failed").with_detail(e)),
                Err(_) => {
                    link.given_up
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(url = %shared.shown, "deferred queue: a publish went unconfirmed; reconnecting to RabbitMQ");
                    Err(not_queued(format_args!(
                        "the broker did not confirm it within {:?}",
                        shared.confirm_timeout
                    )))
                }
            }
        })
    }

    fn consume(&self, prefetch: u16) -> mpsc::Receiver<Delivery> {
        self.spawn_consumer(self.shared.queue.clone(), prefetch)
    }

    fn consume_dead(&self) -> mpsc::Receiver<Delivery> {
        self.spawn_consumer(self.shared.dead.clone(), 16)
    }

    fn depth(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let shared = &self.shared;
            let unreachable = || {
                Error::new(
                    ErrorKind::Unavailable,
                    "the deferred queue's broker is unreachable",
                )
            };
            let link = shared.live_link().ok_or_else(unreachable)?;
            // A channel of its own: a failed passive declare closes the channel it ran on.
            let channel = link
                .conn
                .create_channel()
                .await
                .map_err(|e| unreachable().with_detail(e))?;
            let declared = channel
                .queue_declare(
                    shared.queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            let _ = channel.close(200, "depth read".into()).await;
            let queue = declared.map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot read the depth of {}", shared.queue),
                )
                .with_detail(e)
            })?;
            Ok(u64::from(queue.message_count()))
        })
    }

    fn state(&self) -> BackendState {
        match self.shared.live_link() {
            Some(_) => BackendState::Up,
            None => BackendState::Down,
        }
    }

    fn kind(&self) -> &'static str {
        "rabbitmq"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            redact("amqp://user:s3cr3t@mq.example:5672/%2f"),
            "amqp://user:***@mq.example:5672/%2f"
        );
        assert_eq!(
            redact("amqps://u:p%40ss@h/vh?heartbeat=5"),
            "amqps://u:***@h/vh?heartbeat=5"
        );
        assert_eq!(redact("amqp://h:5672"), "amqp://h:5672");
        assert_eq!(redact("amqp://onlyuser@h"), "amqp://onlyuser@h");
        // An '@' inside the password: the last '@' before the path ends the userinfo.
        assert_eq!(redact("amqp://u:a@b@h:1/x"), "amqp://u:***@h:1/x");
        assert!(!redact("u:secret@h").contains("secret"));
    }

    #[test]
    fn ip_hosts_survive_parsing() {
        let uri = parse_url("amqp://guest:guest@127.0.0.1:5999/%2f").unwrap();
        assert_eq!(uri.authority.host, "127.0.0.1");
        assert_eq!(uri.authority.port, 5999);
        assert_eq!(uri.vhost, "/");
        assert_eq!(uri.query.heartbeat, Some(DEFAULT_HEARTBEAT_S));
        let v6 = parse_url("amqp://[::1]:5999").unwrap();
        assert_eq!(v6.authority.host, "::1");
        assert_eq!(
            parse_url("amqp://mq.example").unwrap().authority.host,
            "mq.example"
        );
        assert_eq!(
            parse_url("amqp://h?heartbeat=3").unwrap().query.heartbeat,
            Some(3)
        );
    }

    #[test]
    fn bad_urls_are_config_errors_without_the_password() {
        for bad in [
            "http://u:hunter2@h",
            "amqp://u:hunter2@h:notaport",
            "hunter2",
        ] {
            let e = parse_url(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Config, "{bad}");
            assert!(!e.message.contains("hunter2"), "{}", e.message);
        }
    }

    #[test]
    fn only_a_plain_ack_is_a_success() {
        assert!(confirmation_result(Confirmation::Ack(None)).is_ok());
        let returned = lapin::message::BasicReturnMessage {
            delivery: lapin::message::Delivery::mock(
                1,
                "".into(),
                "strait.deferred.x".into(),
                false,
                vec![],
            ),
            reply_code: 312,
            reply_text: "NO_ROUTE".into(),
        };
        for (c, word) in [
            (Confirmation::Ack(Some(returned)), "returned"),
            (Confirmation::Nack(None), "nack"),
            (Confirmation::NotRequested, "confirm"),
        ] {
            let e = confirmation_result(c).unwrap_err();
            assert_eq!(e.kind, ErrorKind::Unavailable);
            assert!(
                e.message.starts_with("the request was NOT queued: "),
                "{}",
                e.message
            );
            assert!(e.message.contains(word), "{}", e.message);
        }
    }

    #[test]
    fn delivery_counts_read_any_integer_width() {
        assert_eq!(as_count(&AMQPValue::LongLongInt(3)), Some(3));
        assert_eq!(as_count(&AMQPValue::ShortShortUInt(2)), Some(2));
        assert_eq!(as_count(&AMQPValue::LongInt(-1)), None);
        assert_eq!(as_count(&long_string("3")), None);
    }

    #[test]
    fn topology_arguments() {
        let args = queue_arguments(5);
        let get = |k: &str| args.inner().get(k).cloned();
        assert_eq!(get("x-queue-type"), Some(long_string("quorum")));
        assert_eq!(get("x-delivery-limit"), Some(AMQPValue::LongLongInt(5)));
        assert_eq!(
            get("x-dead-letter-exchange"),
            Some(long_string(DEAD_LETTER_EXCHANGE))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(long_string("at-least-once"))
        );
        assert_eq!(get("x-overflow"), Some(long_string("reject-publish")));
        assert_eq!(queue_name("eu-west"), "strait.deferred.eu-west");
        assert_eq!(dead_queue_name("eu-west"), "strait.deferred.eu-west.dead");
    }
}
