//! Deferred delivery: a request that may wait is persisted, acknowledged with a 202
//! only once it is durable, and delivered upstream later, once (docs/deferred.md).
//!
//! The third way out of `route` (beside the direct path and, later, the relay). This
//! module is the vocabulary and the two external systems behind their traits:
//! - [`Envelope`] and [`DeferredId`]: what is queued (never a client credential);
//! - [`queue::Queue`]: where envelopes wait: RabbitMQ (`amqp`, a quorum queue per
//!   region, publisher confirms) or the embedded on-disk spool (`spool`);
//! - [`store::Store`]: each id's state machine and stored result: Redis (`redis_store`,
//!   one Lua script per transition) or the embedded spool (`spool`).
//!
//! The pipeline's `deferred` module drives them: the 202 path, `GET`/`DELETE`, and the
//! consumer that delivers.

pub mod amqp;
mod deferral;
mod metrics;
pub mod queue;
pub mod redis_store;
pub mod spool;
pub mod store;

pub use deferral::{not_queued, Accepted, Deferral, Enqueue};
pub use metrics::DeferMetrics;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The request header that asks for deferral.
pub const DEFER_HEADER: &str = "strait-defer";
/// Set on a stored result served by `GET /v1/strait/deferred/{id}`.
pub const DEFERRED_HEADER: &str = "x-strait-deferred";
/// The IETF httpapi draft's header: same tenant and key, same id.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Where results are read.
pub const RESULT_PATH: &str = "/v1/strait/deferred/";
/// The route that always queues.
pub const QUEUE_PATH: &str = "/v1/strait/deferred/messages";

/// What the client asked for with [`DEFER_HEADER`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeferMode {
    /// Served as usual; queued only when no attempt could be sent upstream.
    OnOutage,
    /// Queued at once.
    Always,
}

impl DeferMode {
    /// `None` for an absent header; an error for a value we do not know.
    pub fn parse(value: Option<&[u8]>) -> crate::error::Result<Option<DeferMode>> {
        match value {
            None => Ok(None),
            Some(v) if v.eq_ignore_ascii_case(b"on-outage") => Ok(Some(DeferMode::OnOutage)),
            Some(v) if v.eq_ignore_ascii_case(b"always") => Ok(Some(DeferMode::Always)),
            Some(_) => Err(crate::error::Error::new(
                crate::error::ErrorKind::InvalidRequest,
                "strait-defer must be on-outage or always",
            )),
        }
    }
}

/// A deferred request's id: `dfr_<region>_<32 hex>`. The region part tells any node
/// which region's store holds the state (a client moved by DNS still finds it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DeferredId(String);

impl DeferredId {
    /// A fresh random id in `region`.
    pub fn random(region: &str) -> DeferredId {
        DeferredId(format!("dfr_{region}_{:032x}", rand::random::<u128>()))
    }

    /// The id for an `Idempotency-Key`: the same tenant and key give the same id.
    pub fn idempotent(region: &str, owner: &str, key: &str) -> DeferredId {
        let mut h = Sha256::new();
        h.update(owner.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        let d = h.finalize();
        DeferredId(format!("dfr_{region}_{}", hex::encode(&d[..16])))
    }

    /// Parses a client-supplied id; `None` when it is not one of ours.
    pub fn parse(s: &str) -> Option<DeferredId> {
        let rest = s.strip_prefix("dfr_")?;
        let (region, hexpart) = rest.rsplit_once('_')?;
        let ok = !region.is_empty()
            && region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && hexpart.len() == 32
            && hexpart
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        ok.then(|| DeferredId(s.to_string()))
    }

    pub fn region(&self) -> &str {
        let rest = &self.0[4..];
        rest.rsplit_once('_').map_or("", |(r, _)| r)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DeferredId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of a request body: an `Idempotency-Key` reused with another body is
/// refused (422), as the IETF draft asks.
pub fn fingerprint(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// What is queued: enough to send the request later, and nothing secret. The
/// client's key is not in it; `owner` names the client key (its configured name),
/// whose limits and upstream pool apply at delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub head: EnvelopeHead,
    /// The request body as the client sent it.
    pub body: Bytes,
}

/// The envelope's small part, JSON on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeHead {
    pub id: DeferredId,
    /// The client key's name (the principal), whose limits and pool apply.
    pub owner: String,
    /// The upstream path and query, e.g. `/v1/messages`.
    pub path: String,
    /// `anthropic-version`, if the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic_version: Option<String>,
    /// `anthropic-beta`, if the client sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anthropic_beta: Option<String>,
    /// The body asks for a stream (`"stream": true`): the stored result is the SSE.
    #[serde(default)]
    pub stream: bool,
    /// The model, for the upstream limit scope.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Unix milliseconds when the node accepted it.
    pub queued_at_ms: u64,
}

/// Format version byte of [`Envelope::encode`].
const ENVELOPE_V1: u8 = 1;

impl Envelope {
    /// `1`, the head's length (u32 big endian), the head as JSON, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let head = serde_json::to_vec(&self.head).expect("the head serialises");
        let mut out = Vec::with_capacity(5 + head.len() + self.body.len());
        out.push(ENVELOPE_V1);
        out.extend_from_slice(&(head.len() as u32).to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(&self.body);
        out
    }

    /// The inverse of [`Envelope::encode`]; `None` for bytes that are not an envelope.
    pub fn decode(bytes: &[u8]) -> Option<Envelope> {
        let (&version, rest) = bytes.split_first()?;
        if version != ENVELOPE_V1 || rest.len() < 4 {
            return None;
        }
        let len = u32::from_be_bytes(rest[..4].try_into().ok()?) as usize;
        let rest = &rest[4..];
        if rest.len() < len {
            return None;
        }
        let head = serde_json::from_slice(&rest[..len]).ok()?;
        Some(Envelope {
            head,
            body: Bytes::copy_from_slice(&rest[len..]),
        })
    }
}

/// How long a consumer leaves a `pending` record alone: its publisher may still be
/// waiting for the confirm, and on a timeout it removes the record and answers 503
/// (NOT queued). Twice the confirm timeout covers that decision; after it, a pending
/// record is one whose node died after the confirm and before writing `queued`, and
/// its message is delivered.
pub fn pending_grace(settings: &crate::config::Deferred) -> std::time::Duration {
    settings.confirm_timeout * 2
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Whether a backend answered lately: readiness shows `warn` when one did not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendState {
    Up,
    Down,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_region_and_parse_back() {
        let id = DeferredId::random("eu-west");
        assert_eq!(id.region(), "eu-west");
        assert_eq!(DeferredId::parse(id.as_str()), Some(id.clone()));
        let a = DeferredId::idempotent("us", "team-a", "k1");
        assert_eq!(a, DeferredId::idempotent("us", "team-a", "k1"));
        assert_ne!(a, DeferredId::idempotent("us", "team-b", "k1"));
        assert_eq!(a.region(), "us");
        for bad in [
            "",
            "dfr_",
            "dfr_us_",
            "dfr__0123",
            "x_us_00000000000000000000000000000000",
            "dfr_US_00000000000000000000000000000000",
            "dfr_us_0000000000000000000000000000000g",
        ] {
            assert!(DeferredId::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn envelopes_round_trip_and_reject_garbage() {
        let e = Envelope {
            head: EnvelopeHead {
                id: DeferredId::random("default"),
                owner: "team".into(),
                path: "/v1/messages".into(),
                anthropic_version: Some("2023-06-01".into()),
                anthropic_beta: None,
                stream: true,
                model: Some("claude-sonnet-4-5".into()),
                queued_at_ms: 7,
            },
            body: Bytes::from_static(b"{\"model\":\"x\"}"),
        };
        assert_eq!(Envelope::decode(&e.encode()), Some(e.clone()));
        assert!(Envelope::decode(b"").is_none());
        assert!(Envelope::decode(&[1, 0, 0, 0, 9, b'{']).is_none());
        let mut bad = e.encode();
        bad[0] = 2;
        assert!(Envelope::decode(&bad).is_none());
    }

    #[test]
    fn defer_header_values() {
        assert_eq!(DeferMode::parse(None).unwrap(), None);
        assert_eq!(
            DeferMode::parse(Some(b"On-Outage")).unwrap(),
            Some(DeferMode::OnOutage)
        );
        assert_eq!(
            DeferMode::parse(Some(b"always")).unwrap(),
            Some(DeferMode::Always)
        );
        assert!(DeferMode::parse(Some(b"later")).is_err());
    }
}
