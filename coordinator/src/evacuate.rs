//! `strait-coordinator deferred evacuate`: moves a region's deferred backlog to a
//! peer region's broker, message by message, and leaves (and reports) every message
//! whose client key may not be served in the target region (docs/deferred.md).
//!
//! A plain shovel cannot look inside a message; this can. Each message is taken from
//! `strait.deferred.<from>` with `basic_get` and manual ack, decoded, checked against
//! the residency policy read from etcd (the key's regions and its tenant's, the rule
//! nodes use), published to `strait.deferred.<to>` exactly as a node publishes (the
//! node's own [`AmqpQueue`]: persistent, mandatory, publisher confirm), and acked on
//! the source only after that confirm. What is not moved stays unacked until the
//! source channel closes at the end, so it returns to the source queue for the
//! source region's nodes. The target region's nodes adopt the moved ids.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use serde::Serialize;
use strait_node::config::{
    Deferred, DEFAULT_DEFERRED_CLAIM_LEASE, DEFAULT_DEFERRED_DELIVERY_LIMIT,
    DEFAULT_DEFERRED_MAX_RESULT_BYTES, DEFAULT_DEFERRED_PREFETCH, DEFAULT_DEFERRED_RESULT_TTL,
};
use strait_node::defer::amqp::{self, AmqpQueue};
use strait_node::defer::queue::Queue;
use strait_node::defer::{BackendState, Envelope};
use strait_node::schema::{valid_name, ClusterConfig};
use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};
use crate::leader::LeaderInfo;
use crate::store::{self, Store};

/// A broker that accepts TCP but never finishes the handshake must not hang the run.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the target's publisher connection may take to come up and declare.
const TARGET_READY: Duration = Duration::from_secs(15);

/// What to move where.
#[derive(Debug, Clone)]
pub struct Evacuation {
    pub from_region: String,
    /// Source broker URL (holds a password: never shown unredacted).
    pub from_amqp: String,
    pub to_region: String,
    pub to_amqp: String,
    /// The target queue's `x-delivery-limit`; `None`: read from the queue if it
    /// exists, else the node default (20).
    pub delivery_limit: Option<u32>,
    /// Longest wait for the target's publisher confirm of one message.
    pub confirm_timeout: Duration,
    /// Classify and report only: every message goes back to the source queue.
    pub dry_run: bool,
}

/// Which regions may serve each client key, by the key's name (a queued message
/// names its owner by the key's name, not its id).
#[derive(Debug, Clone, Default)]
pub struct Residency {
    by_name: BTreeMap<String, Vec<Pin>>,
}

#[derive(Debug, Clone)]
struct Pin {
    regions: Vec<String>,
    tenant: Option<String>,
    by_key: bool,
    by_tenant: bool,
}

impl Residency {
    /// From the cluster config, with the nodes' rule
    /// ([`strait_node::schema::ClientKeyDoc::effective_regions`]). Revoked keys count
    /// too: their messages are refused at delivery anyway, and their bodies must not
    /// leave a pinned region meanwhile. Keys sharing a name all have to allow a region.
    pub fn from_config(cc: &ClusterConfig) -> Residency {
        let mut by_name: BTreeMap<String, Vec<Pin>> = BTreeMap::new();
        for k in cc.client_keys.values() {
            let tenant = k.tenant.as_ref().and_then(|t| cc.tenants.get(t));
            if let Some(regions) = k.effective_regions(tenant) {
                by_name.entry(k.name.clone()).or_default().push(Pin {
                    regions,
                    tenant: k.tenant.clone(),
                    by_key: k.allowed_regions.is_some(),
                    by_tenant: tenant.is_some_and(|t| t.allowed_regions.is_some()),
                });
            }
        }
        Residency { by_name }
    }

    /// `None` when `owner` may be served in `region` (or has no policy: a key from
    /// a node's file, or one deleted since); otherwise why not.
    pub fn refusal(&self, owner: &str, region: &str) -> Option<String> {
        let pin = self
            .by_name
            .get(owner)?
            .iter()
            .find(|p| !p.regions.iter().any(|r| r == region))?;
        let how = match (&pin.tenant, pin.by_key, pin.by_tenant) {
            (Some(t), true, true) => format!(" (its own list and its tenant {t}'s together)"),
            (Some(t), false, true) => format!(" by its tenant {t}"),
            _ => String::new(),
        };
        Some(format!(
            "key {owner} is pinned to regions [{}]{how}",
            pin.regions.join(", ")
        ))
    }
}

/// Reads the residency policy from etcd: the same documents the coordinator serves.
pub async fn load_residency(endpoints: &[String], timeout: Duration) -> Result<Residency> {
    let client = store::etcd::connect_etcd(endpoints, timeout).await?;
    // Read-only: this store never leads, so it can never write.
    let me = LeaderInfo {
        id: "deferred-evacuate".into(),
        region: String::new(),
        url: String::new(),
    };
    let (_never_leads, leadership) = watch::channel(None);
    let cc = store::EtcdStore::new(client, me, leadership, timeout)
        .load()
        .await?;
    Ok(Residency::from_config(&cc))
}

/// One message moved (or, in a dry run, that would be).
#[derive(Debug, Clone, Serialize)]
pub struct Moved {
    pub id: String,
    pub owner: String,
}

/// One message left in the source queue, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// `None` for a message that is not an envelope and has no message id.
    pub id: Option<String>,
    pub owner: Option<String>,
    pub reason: String,
}

/// One message whose publish to the target failed; it stays in the source queue.
#[derive(Debug, Clone, Serialize)]
pub struct Failed {
    pub id: String,
    pub owner: String,
    pub error: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub moved: usize,
    pub skipped: usize,
    pub failed: usize,
}

/// What a run did. `--json` prints it as is; [`Report::text`] for people.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub from_region: String,
    pub to_region: String,
    /// Queue and broker, the URL's password hidden.
    pub source: String,
    pub target: String,
    pub dry_run: bool,
    /// The target queue's `x-delivery-limit` the publisher declared with (not in a dry run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_limit: Option<u32>,
    pub counts: Counts,
    pub moved: Vec<Moved>,
    pub skipped: Vec<Skipped>,
    pub failed: Vec<Failed>,
    /// Why the run ended before the source queue was empty.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

impl Report {
    /// Every message was moved or deliberately left: exit code 0.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.stopped.is_none()
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let queue = amqp::queue_name(&self.from_region);
        out.push_str(&format!(
            "deferred evacuate: region {} -> region {}{}\n  from {}\n  to   {}\n",
            self.from_region,
            self.to_region,
            if self.dry_run {
                " (dry run: nothing moved)"
            } else {
                ""
            },
            self.source,
            self.target
        ));
        let c = &self.counts;
        if self.dry_run {
            out.push_str(&format!("would move {}, skip {}\n", c.moved, c.skipped));
        } else {
            out.push_str(&format!(
                "moved {}, skipped {}, failed {}\n",
                c.moved, c.skipped, c.failed
            ));
        }
        for s in &self.skipped {
            out.push_str(&format!(
                "skipped {} (owner {}): {}\n",
                s.id.as_deref().unwrap_or("(no id)"),
                s.owner.as_deref().unwrap_or("unknown"),
                s.reason
            ));
        }
        for f in &self.failed {
            out.push_str(&format!(
                "failed  {} (owner {}): {}\n",
                f.id, f.owner, f.error
            ));
        }
        if let Some(why) = &self.stopped {
            out.push_str(&format!("stopped early: {why}\n"));
        }
        if self.dry_run || c.skipped + c.failed > 0 || self.stopped.is_some() {
            out.push_str(&format!(
                "messages not moved are back in {queue} for region {}'s nodes\n",
                self.from_region
            ));
        }
        out
    }
}

fn shown(url: &str, region: &str) -> String {
    format!("{} queue {}", amqp::redact(url), amqp::queue_name(region))
}

/// Runs one evacuation: drains the source queue's ready messages (those another
/// consumer holds unacked are not seen), moves what may move, returns the rest.
/// `Err` before anything was taken (bad regions, a broker unreachable, the source
/// queue missing, the target queue not declarable); once messages are taken, a
/// failure ends the run with a [`Report`] whose `stopped` says why.
pub async fn run(plan: &Evacuation, residency: &Residency) -> Result<Report> {
    for r in [&plan.from_region, &plan.to_region] {
        if !valid_name(r) {
            return Err(Error::bad_request(format!(
                "region {r:?}: use lowercase letters, digits, '-' and '_'"
            )));
        }
    }
    if plan.from_region == plan.to_region {
        return Err(Error::bad_request(
            "--from-region and --to-region must differ",
        ));
    }
    let mut report = Report {
        from_region: plan.from_region.clone(),
        to_region: plan.to_region.clone(),
        source: shown(&plan.from_amqp, &plan.from_region),
        target: shown(&plan.to_amqp, &plan.to_region),
        dry_run: plan.dry_run,
        delivery_limit: None,
        counts: Counts::default(),
        moved: Vec::new(),
        skipped: Vec::new(),
        failed: Vec::new(),
        stopped: None,
    };
    let source_queue = amqp::queue_name(&plan.from_region);
    let source = connect(&plan.from_amqp, "source").await?;
    let result = async {
        let channel = source.create_channel().await.map_err(|e| {
            broker_error(
                format!(
                    "cannot open a channel on the source broker {}",
                    report.source
                ),
                e,
            )
        })?;
        // Passive: a mistyped region must not create an empty queue on the source.
        let probe = source
            .create_channel()
            .await
            .map_err(|e| broker_error(format!("cannot open a channel on {}", report.source), e))?;
        probe
            .queue_declare(
                source_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                broker_error(format!("the source broker has no queue {source_queue}"), e)
            })?;
        let _ = probe.close(200, "checked".into()).await;
        let target = if plan.dry_run {
            None
        } else {
            let limit = target_delivery_limit(plan).await?;
            report.delivery_limit = Some(limit);
            Some(open_target(plan, limit).await?)
        };
        drain(plan, residency, &channel, target.as_ref(), &mut report).await;
        Ok::<(), Error>(())
    }
    .await;
    // Closing the connection returns every unacked message (skipped, failed, and all
    // of a dry run) to the source queue.
    let _ = source.close(200, "evacuation done".into()).await;
    result?;
    report.counts = Counts {
        moved: report.moved.len(),
        skipped: report.skipped.len(),
        failed: report.failed.len(),
    };
    Ok(report)
}

async fn drain(
    plan: &Evacuation,
    residency: &Residency,
    channel: &Channel,
    target: Option<&AmqpQueue>,
    report: &mut Report,
) {
    let source_queue = amqp::queue_name(&plan.from_region);
    loop {
        let got = channel
            .basic_get(
                source_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            )
            .await;
        let message = match got {
            Ok(Some(m)) => m.delivery,
            Ok(None) => return,
            Err(e) => {
                report.stopped = Some(format!("lost the source broker: {e}"));
                return;
            }
        };
        let Some(envelope) = Envelope::decode(&message.data) else {
            report.skipped.push(Skipped {
                id: message
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|m| m.to_string()),
                owner: None,
                reason: "not a deferred-request envelope (undecodable)".into(),
            });
            continue;
        };
        let id = envelope.head.id.to_string();
        let owner = envelope.head.owner.clone();
        // The node's publish re-encodes the envelope: a message it would not
        // reproduce byte for byte (written by another version) is left alone.
        if envelope.encode() != message.data {
            report.skipped.push(Skipped {
                id: Some(id),
                owner: Some(owner),
                reason: "re-encoding would change it (written by another node version?)".into(),
            });
            continue;
        }
        if let Some(reason) = residency.refusal(&owner, &plan.to_region) {
            report.skipped.push(Skipped {
                id: Some(id),
                owner: Some(owner),
                reason,
            });
            continue;
        }
        let Some(target) = target else {
            report.moved.push(Moved { id, owner });
            continue;
        };
        if let Err(e) = target.publish(&envelope).await {
            report.failed.push(Failed {
                id,
                owner,
                error: e.message.to_string(),
            });
            if target.state() == BackendState::Down {
                report.stopped = Some("the target broker became unreachable".into());
                return;
            }
            continue;
        }
        match message.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => report.moved.push(Moved { id, owner }),
            _ => {
                // Confirmed on the target, still on the source: both regions may
                // deliver it now. Said loudly, and the run stops.
                report.failed.push(Failed {
                    id,
                    owner,
                    error: format!(
                        "copied to {} but the source ack failed: a copy stays in {source_queue} too",
                        amqp::queue_name(&plan.to_region)
                    ),
                });
                report.stopped = Some("lost the source broker after a confirm".into());
                return;
            }
        }
    }
}

async fn connect(url: &str, role: &str) -> Result<Connection> {
    let uri = amqp::parse_url(url).map_err(|e| Error::config(e.message))?;
    let props = ConnectionProperties::default()
        .with_connection_name(format!("strait-coordinator evacuate {role}").into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect_uri(uri, props)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(broker_error(
            format!("cannot connect to the {role} broker {}", amqp::redact(url)),
            e,
        )),
        Err(_) => Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "the {role} broker {} did not complete the handshake within {CONNECT_TIMEOUT:?}",
                amqp::redact(url)
            ),
        )),
    }
}

/// lapin's errors name the broker's refusal (a missing queue, an inequivalent
/// argument) or the socket's; never a URL or a password.
fn broker_error(what: String, e: lapin::Error) -> Error {
    Error::new(ErrorKind::Unavailable, format!("{what}: {e}"))
}

/// The `x-delivery-limit` to declare the target queue with: the flag's, else the
/// existing queue's (read from the broker's refusal of another value), else the
/// node default. A mismatch would make every declare fail.
async fn target_delivery_limit(plan: &Evacuation) -> Result<u32> {
    let conn = connect(&plan.to_amqp, "target").await?;
    let queue = amqp::queue_name(&plan.to_region);
    let wanted = plan
        .delivery_limit
        .unwrap_or(DEFAULT_DEFERRED_DELIVERY_LIMIT);
    let attempt = async {
        let channel = conn.create_channel().await?;
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                amqp::queue_arguments(wanted),
            )
            .await
            .map(|_| ())
    }
    .await;
    let _ = conn.close(200, "checked".into()).await;
    let e = match attempt {
        Ok(()) => return Ok(wanted),
        Err(e) => e,
    };
    let text = e.to_string();
    match (plan.delivery_limit, current_delivery_limit(&text)) {
        (None, Some(existing)) => Ok(existing),
        (Some(given), Some(existing)) => Err(Error::bad_request(format!(
            "{queue} on the target broker has x-delivery-limit {existing}, not {given}: \
             pass --delivery-limit {existing}"
        ))),
        _ => Err(broker_error(
            format!(
                "the target broker {} refused to declare {queue}",
                amqp::redact(&plan.to_amqp)
            ),
            e,
        )),
    }
}

/// The existing value in RabbitMQ's "inequivalent arg 'x-delivery-limit' for queue
/// ...: received '20' but current is '5'" (some versions say "the value '5' of type
/// 'long'").
fn current_delivery_limit(refusal: &str) -> Option<u32> {
    if !refusal.contains("'x-delivery-limit'") {
        return None;
    }
    let current = refusal.split("but current is").nth(1)?;
    let digits: String = current
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

async fn open_target(plan: &Evacuation, delivery_limit: u32) -> Result<AmqpQueue> {
    // Only these two settings reach the RabbitMQ queue; the rest are the defaults.
    let settings = Deferred {
        amqp_url: Some(plan.to_amqp.clone()),
        redis_url: None,
        spool_dir: Default::default(),
        result_ttl: DEFAULT_DEFERRED_RESULT_TTL,
        delivery_limit,
        prefetch: DEFAULT_DEFERRED_PREFETCH,
        confirm_timeout: plan.confirm_timeout,
        claim_lease: DEFAULT_DEFERRED_CLAIM_LEASE,
        resend_unknown: false,
        max_result_bytes: DEFAULT_DEFERRED_MAX_RESULT_BYTES,
        key_prefix: String::new(),
    };
    let queue = AmqpQueue::connect(&plan.to_amqp, &plan.to_region, &settings)
        .await
        .map_err(|e| Error::config(e.message))?;
    if !queue.wait_connected(TARGET_READY).await {
        return Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "the target broker {} did not accept a confirm channel and the topology of {} within {TARGET_READY:?}",
                amqp::redact(&plan.to_amqp),
                amqp::queue_name(&plan.to_region)
            ),
        ));
    }
    Ok(queue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_node::schema::{ClientKeyDoc, TenantDoc};

    fn key(id: &str, name: &str, tenant: Option<&str>, regions: Option<&[&str]>) -> ClientKeyDoc {
        ClientKeyDoc {
            id: id.into(),
            name: name.into(),
            tenant: tenant.map(Into::into),
            sha256: "00".repeat(32),
            created_at: "2026-12-01T00:00:00Z".into(),
            revoked: false,
            limits: Default::default(),
            allowed_regions: regions.map(|r| r.iter().map(|s| s.to_string()).collect()),
            pool: None,
        }
    }

    #[test]
    fn residency_follows_the_key_and_its_tenant() {
        let mut cc = ClusterConfig::default();
        cc.tenants.insert(
            "eu-only".into(),
            TenantDoc {
                name: "eu-only".into(),
                limits: Default::default(),
                allowed_regions: Some(vec!["a".into(), "c".into()]),
            },
        );
        for k in [
            key("ck_1", "free", None, None),
            key("ck_2", "pinned", None, Some(&["a"])),
            key("ck_3", "tenanted", Some("eu-only"), None),
            key("ck_4", "both", Some("eu-only"), Some(&["a", "b"])),
            key("ck_5", "wide", None, Some(&["a", "b"])),
        ] {
            cc.client_keys.insert(k.id.clone(), k);
        }
        let r = Residency::from_config(&cc);
        assert_eq!(r.refusal("free", "b"), None);
        assert_eq!(r.refusal("unknown", "b"), None);
        assert_eq!(r.refusal("wide", "b"), None);
        assert_eq!(
            r.refusal("pinned", "b").unwrap(),
            "key pinned is pinned to regions [a]"
        );
        assert_eq!(r.refusal("pinned", "a"), None);
        assert_eq!(
            r.refusal("tenanted", "b").unwrap(),
            "key tenanted is pinned to regions [a, c] by its tenant eu-only"
        );
        assert_eq!(r.refusal("tenanted", "c"), None);
        // Both lists: only `a` is on both.
        let both = r.refusal("both", "b").unwrap();
        assert!(
            both.starts_with("key both is pinned to regions [a]"),
            "{both}"
        );
        assert!(r.refusal("both", "c").is_some());
    }

    #[test]
    fn the_existing_delivery_limit_is_read_from_the_refusal() {
        let short = "PRECONDITION_FAILED - inequivalent arg 'x-delivery-limit' for queue \
                     'strait.deferred.b' in vhost '/': received '20' but current is '5'";
        assert_eq!(current_delivery_limit(short), Some(5));
        let long = "inequivalent arg 'x-delivery-limit' for queue 'q' in vhost '/': received \
                    the value '20' of type 'long' but current is the value '7' of type 'long'";
        assert_eq!(current_delivery_limit(long), Some(7));
        assert_eq!(
            current_delivery_limit("inequivalent arg 'x-overflow' ... but current is '5'"),
            None
        );
        assert_eq!(
            current_delivery_limit("inequivalent arg 'x-delivery-limit' but current is none"),
            None
        );
    }
}
