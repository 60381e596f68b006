//! The signed node-to-node channel: HMAC-SHA256 with the cluster secret over the
//! request's method, path, timestamp, nonce, hop count and original principal (the
//! client key's name). The body is not signed: it streams, and signing it would
//! mean buffering it. A signature is good for [`WINDOW`] either side of the
//! receiver's clock and once only (its nonce is remembered until it would be stale).

use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, ErrorKind, Result};
use crate::head::HeaderFields;

/// `x-strait-relay-signature`: hex HMAC-SHA256 of [`canonical`].
pub const SIGNATURE: http::HeaderName = http::HeaderName::from_static("x-strait-relay-signature");
/// `x-strait-relay-ts`: Unix seconds when the sender signed.
pub const TS: http::HeaderName = http::HeaderName::from_static("x-strait-relay-ts");
/// `x-strait-relay-nonce`: 16 random bytes, hex.
pub const NONCE: http::HeaderName = http::HeaderName::from_static("x-strait-relay-nonce");
/// `x-strait-relay-principal`: the client key's configured name (never the key).
pub const PRINCIPAL: http::HeaderName = http::HeaderName::from_static("x-strait-relay-principal");
/// `x-strait-relay-hop`: relays so far; always `1` (a relayed request is never relayed).
pub const HOP: http::HeaderName = http::HeaderName::from_static("x-strait-relay-hop");
/// On the response to the client: the region whose node carried the request.
pub const RELAYED_VIA: http::HeaderName = http::HeaderName::from_static("x-strait-relayed-via");

/// How far a signature's timestamp may be from the receiver's clock.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Nonces remembered at most; past it the oldest is forgotten (a replay of it would
/// then pass only within its remaining seconds of validity: at 10,000 relayed
/// requests a second and more).
const MAX_NONCES: usize = 200_000;

/// The relay fields of one signed request, as sent.
pub struct Signed {
    pub signature: HeaderValue,
    pub ts: HeaderValue,
    pub nonce: HeaderValue,
    pub principal: HeaderValue,
}

impl Signed {
    /// The five fields as (name, value) pairs, the hop count included.
    pub fn fields(&self) -> [(http::HeaderName, HeaderValue); 5] {
        [
            (SIGNATURE, self.signature.clone()),
            (TS, self.ts.clone()),
            (NONCE, self.nonce.clone()),
            (PRINCIPAL, self.principal.clone()),
            (HOP, HeaderValue::from_static("1")),
        ]
    }
}

/// Signs and verifies relayed requests with the cluster secret, and remembers the
/// nonces it accepted.
pub struct Channel {
    key: [u8; 64],
    seen: Mutex<Nonces>,
}

#[derive(Default)]
struct Nonces {
    set: HashSet<[u8; 16]>,
    /// Oldest first, with the Unix second after which each may be forgotten.
    order: VecDeque<([u8; 16], u64)>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The text the signature covers, one field a line.
pub fn canonical(method: &str, path: &str, ts: u64, nonce: &str, principal: &[u8]) -> Vec<u8> {
    let mut s = Vec::with_capacity(64 + path.len() + principal.len());
    s.extend_from_slice(b"strait-relay-v1\n");
    for part in [
        method.as_bytes(),
        path.as_bytes(),
        ts.to_string().as_bytes(),
    ] {
        s.extend_from_slice(part);
        s.push(b'\n');
    }
    s.extend_from_slice(nonce.as_bytes());
    s.push(b'\n');
    s.extend_from_slice(principal);
    s.extend_from_slice(b"\n1");
    s
}

impl Channel {
    /// A channel keyed with the cluster secret.
    pub fn new(secret: &[u8]) -> Self {
        let mut key = [0u8; 64];
        if secret.len() > 64 {
            key[..32].copy_from_slice(&Sha256::digest(secret));
        } else {
            key[..secret.len()].copy_from_slice(secret);
        }
        Channel {
            key,
            seen: Mutex::new(Nonces::default()),
        }
    }

    /// HMAC-SHA256 (RFC 2104) of `msg`.
    fn mac(&self, msg: &[u8]) -> [u8; 32] {
        let pad = |b: u8| self.key.map(|k| k ^ b);
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(msg)
            .finalize();
        Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// Signs a request for `principal` now. `None` when the name cannot travel in a
    /// header field (it then is not relayed).
    pub fn sign(&self, method: &str, path: &str, principal: &str) -> Option<Signed> {
        self.sign_at(method, path, principal, unix_now(), rand::random())
    }

    /// [`Channel::sign`] with a given time and nonce (for tests of staleness).
    pub fn sign_at(
        &self,
        method: &str,
        path: &str,
        principal: &str,
        ts: u64,
        nonce: [u8; 16],
    ) -> Option<Signed> {
        let principal_value = HeaderValue::from_str(principal).ok()?;
        let nonce = hex::encode(nonce);
        let mac = self.mac(&canonical(method, path, ts, &nonce, principal.as_bytes()));
        Some(Signed {
            signature: HeaderValue::try_from(hex::encode(mac)).ok()?,
            ts: HeaderValue::from(ts),
            nonce: HeaderValue::try_from(nonce).ok()?,
            principal: principal_value,
        })
    }

    /// Checks a relayed request's fields; returns the principal's name. Refuses a
    /// missing or malformed field, a hop count other than 1, a timestamp outside
    /// [`WINDOW`], a wrong signature and a nonce seen before (in that order: only a
    /// genuine signature's nonce is remembered).
    pub fn verify(&self, method: &str, path: &str, fields: &HeaderFields) -> Result<String> {
        self.verify_at(method, path, fields, unix_now())
    }

    fn verify_at(
        &self,
        method: &str,
        path: &str,
        fields: &HeaderFields,
        now: u64,
    ) -> Result<String> {
        let get = |name: &http::HeaderName, what: &str| {
            fields
                .get(name)
                .and_then(|v| std::str::from_utf8(v).ok())
                .ok_or_else(|| refused(format!("missing or malformed {what}")))
        };
        let signature = get(&SIGNATURE, "signature")?;
        let ts_text = get(&TS, "timestamp")?;
        let nonce_text = get(&NONCE, "nonce")?;
        let principal = get(&PRINCIPAL, "principal")?;
        if get(&HOP, "hop count")? != "1" {
            return Err(refused("hop count is not 1"));
        }
        let ts: u64 = ts_text
            .parse()
            .map_err(|_| refused("malformed timestamp"))?;
        if now.abs_diff(ts) > WINDOW.as_secs() {
            return Err(refused("stale timestamp"));
        }
        let mut nonce = [0u8; 16];
        hex::decode_to_slice(nonce_text, &mut nonce).map_err(|_| refused("malformed nonce"))?;
        let mut given = [0u8; 32];
        hex::decode_to_slice(signature, &mut given).map_err(|_| refused("malformed signature"))?;
        let want = self.mac(&canonical(
            method,
            path,
            ts,
            nonce_text,
            principal.as_bytes(),
        ));
        if !bool::from(want.ct_eq(&given)) {
            return Err(refused("bad signature"));
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(&(old, until)) = seen.order.front() {
            if until >= now && seen.order.len() < MAX_NONCES {
                break;
            }
            seen.order.pop_front();
            seen.set.remove(&old);
        }
        if !seen.set.insert(nonce) {
            return Err(refused("replayed nonce"));
        }
        seen.order.push_back((nonce, ts + WINDOW.as_secs()));
        Ok(principal.to_string())
    }
}

/// The refusal of a relayed request: 401, with why (no secret in it).
fn refused(why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Authentication,
        format!("relayed request refused: {why}"),
    )
}

/// Whether a request carries any relay field: it then must verify (a client cannot
/// pose as a peer by sending some of them).
pub fn is_relayed(fields: &HeaderFields) -> bool {
    fields.has_any(&[&SIGNATURE, &HOP, &PRINCIPAL])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_fields_are_known_to_the_head_as_relay_fields() {
        for name in [SIGNATURE, HOP, PRINCIPAL] {
            assert_eq!(
                crate::head::Known::of(name.as_str().as_bytes()),
                crate::head::Known::StraitRelay
            );
        }
    }

    fn fields(s: &Signed) -> HeaderFields {
        let mut map = http::HeaderMap::new();
        for (n, v) in s.fields() {
            map.insert(n, v);
        }
        HeaderFields::Map(map)
    }

    fn set(f: &mut HeaderFields, name: &'static str, value: &'static [u8]) {
        let HeaderFields::Map(map) = f else {
            unreachable!()
        };
        map.insert(name, HeaderValue::from_bytes(value).unwrap());
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let c = Channel::new(b"Jefe");
        assert_eq!(
            hex::encode(c.mac(b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn sign_then_verify_then_replay() {
        let c = Channel::new(b"cluster-secret-0123456789");
        let s = c.sign("POST", "/v1/messages", "team-a").unwrap();
        let f = fields(&s);
        assert_eq!(c.verify("POST", "/v1/messages", &f).unwrap(), "team-a");
        let e = c.verify("POST", "/v1/messages", &f).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert!(e.message.contains("replayed"), "{}", e.message);
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let c = Channel::new(b"cluster-secret-0123456789");
        let now = unix_now();
        for ts in [now - 11, now + 11] {
            let s = c
                .sign_at("POST", "/v1/messages", "a", ts, rand::random())
                .unwrap();
            let e = c
                .verify_at("POST", "/v1/messages", &fields(&s), now)
                .unwrap_err();
            assert!(e.message.contains("stale"), "{}", e.message);
        }
        let s = c
            .sign_at("POST", "/v1/messages", "a", now - 9, rand::random())
            .unwrap();
        assert!(c
            .verify_at("POST", "/v1/messages", &fields(&s), now)
            .is_ok());
    }

    #[test]
    fn forged_or_altered_requests_are_refused() {
        let c = Channel::new(b"cluster-secret-0123456789");
        let other = Channel::new(b"another-secret-0123456789");
        let s = other.sign("POST", "/v1/messages", "a").unwrap();
        assert!(c
            .verify("POST", "/v1/messages", &fields(&s))
            .unwrap_err()
            .message
            .contains("bad signature"));
        // Signed for one path, principal or method; presented for another.
        let s = c.sign("POST", "/v1/messages", "a").unwrap();
        assert!(c.verify("POST", "/v1/complete", &fields(&s)).is_err());
        assert!(c.verify("GET", "/v1/messages", &fields(&s)).is_err());
        let mut f = fields(&s);
        set(&mut f, "x-strait-relay-principal", b"admin");
        assert!(c.verify("POST", "/v1/messages", &f).is_err());
        let mut f = fields(&s);
        set(&mut f, "x-strait-relay-hop", b"2");
        assert!(c
            .verify("POST", "/v1/messages", &f)
            .unwrap_err()
            .message
            .contains("hop"));
        let mut f = fields(&s);
        set(&mut f, "x-strait-relay-signature", b"zz");
        assert!(c.verify("POST", "/v1/messages", &f).is_err());
        // Refusals did not use the nonce up: the genuine request still passes.
        assert!(c.verify("POST", "/v1/messages", &fields(&s)).is_ok());
    }

    #[test]
    fn missing_fields_are_refused_and_detected() {
        let c = Channel::new(b"cluster-secret-0123456789");
        let mut f = HeaderFields::Map(http::HeaderMap::new());
        assert!(!is_relayed(&f));
        set(&mut f, "x-strait-relay-hop", b"1");
        assert!(is_relayed(&f));
        assert!(c.verify("POST", "/v1/messages", &f).is_err());
    }
}
