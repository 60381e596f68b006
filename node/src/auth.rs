//! Phase 2, authenticate: find who is calling from the `x-api-key` or
//! `Authorization: Bearer` header, by SHA-256 hash of the presented key.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::Arc;

use subtle::ConstantTimeEq;

use crate::config::{hash_key_bytes, Config, KeyMode};
use crate::error::{Error, ErrorKind, Result};
use crate::head::HeaderFields;
use crate::schema::LimitsDoc;

/// Who made a request, as far as the rest of the pipeline needs to know.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The client key's configured name (never the key), or a mode label.
    pub name: Arc<str>,
    /// The tenant the key belongs to (cluster config only).
    pub tenant: Option<Arc<str>>,
    /// Limits and region policy from the cluster config; `None` for keys from the
    /// file or the environment, which have neither.
    pub policy: Option<Arc<KeyPolicy>>,
    /// Which upstream pool of the snapshot serves this key (0 = the default pool).
    pub pool: usize,
}

/// What the cluster config says about one client key, kept on the principal for the
/// limiter and the region policy.
#[derive(Debug, Clone, Default)]
pub struct KeyPolicy {
    pub limits: LimitsDoc,
    pub tenant_limits: LimitsDoc,
    /// Regions whose nodes may serve the key: the key's list and its tenant's list
    /// together (both must allow a region). `None`: every region.
    pub allowed_regions: Option<Vec<String>>,
}

impl Principal {
    /// A principal with no tenant, no policy, on the default pool.
    pub fn plain(name: Arc<str>) -> Self {
        Principal {
            name,
            tenant: None,
            policy: None,
            pool: 0,
        }
    }

    /// Whether a node of `region` may serve this principal.
    pub fn region_allowed(&self, region: &str) -> bool {
        match self
            .policy
            .as_ref()
            .and_then(|p| p.allowed_regions.as_ref())
        {
            Some(list) => list.iter().any(|r| r == region),
            None => true,
        }
    }
}

/// Hashes a SHA-256 digest by its first eight bytes. The digests are uniform
/// already, and no caller chooses them (finding keys whose digests collide in a
/// bucket costs a preimage search), so rehashing them with SipHash, as the
/// default hasher did, bought nothing for 200 instructions a request (callgrind).
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // A `[u8; 32]` is hashed as its length, then its bytes.
        if let Some(first) = bytes.first_chunk::<8>() {
            self.0 = u64::from_le_bytes(*first);
        }
    }

    fn write_usize(&mut self, _len: usize) {}
}

/// Looks client keys up by hash. Built once per config snapshot.
pub struct Authenticator {
    mode: KeyMode,
    by_hash: HashMap<[u8; 32], Principal, BuildHasherDefault<DigestHasher>>,
    passthrough: Principal,
    anonymous: Principal,
}

impl Authenticator {
    pub fn new(config: &Config) -> Self {
        let keys = config
            .auth
            .client_keys
            .iter()
            .map(|k| (k.sha256, Principal::plain(Arc::from(k.name.as_str()))))
            .collect();
        Self::from_keys(config.key_mode(), keys)
    }

    /// An authenticator over keys already resolved to principals (cluster snapshots).
    pub fn from_keys(mode: KeyMode, by_hash: HashMap<[u8; 32], Principal>) -> Self {
        Authenticator {
            mode,
            by_hash: by_hash.into_iter().collect(),
            passthrough: Principal::plain(Arc::from("passthrough")),
            anonymous: Principal::plain(Arc::from("anonymous")),
        }
    }

    /// Number of client keys known.
    pub fn key_count(&self) -> usize {
        self.by_hash.len()
    }

    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    /// The principal of the client key named `name`: a deferred request is delivered
    /// as its owner, found again by name (a revoked key is gone, and so is its
    /// right to have the request sent).
    pub fn principal_named(&self, name: &str) -> Option<Principal> {
        match self.mode {
            KeyMode::Anonymous => (*self.anonymous.name == *name).then(|| self.anonymous.clone()),
            KeyMode::Passthrough => None,
            KeyMode::Managed => self.by_hash.values().find(|p| *p.name == *name).cloned(),
        }
    }

    /// Decides who the caller is. In passthrough mode the client's own key is checked
    /// only for presence; Anthropic judges it.
    pub fn authenticate(&self, headers: &HeaderFields) -> Result<Principal> {
        match self.mode {
            KeyMode::Anonymous => Ok(self.anonymous.clone()),
            KeyMode::Passthrough => match presented_key(headers) {
                Some(_) => Ok(self.passthrough.clone()),
                None => Err(missing_key()),
            },
            KeyMode::Managed => {
                let key = presented_key(headers).ok_or_else(missing_key)?;
                let hash = hash_recent(key);
                // The map lookup branches on the hash, which reveals nothing usable about
                // the key; the final comparison is constant-time all the same.
                match self.by_hash.get_key_value(&hash) {
                    Some((stored, principal)) if bool::from(stored.ct_eq(&hash)) => {
                        Ok(principal.clone())
                    }
                    _ => Err(Error::new(ErrorKind::Authentication, "invalid x-api-key")),
                }
            }
        }
    }
}

/// [`crate::config::hash_key`], remembered for the last few keys this thread saw. A connection sends
/// the same key on every request, and SHA-256 was the largest single cost of a proxied
/// request (3,600 instructions, docs/benchmarks.md). The cache maps key to hash only:
/// which principal a hash names is still looked up in the current snapshot, so a
/// revoked key stops working at once. Keys are compared in constant time and wiped
/// from memory when evicted.
fn hash_recent(key: &str) -> [u8; 32] {
    const SLOTS: usize = 4;
    struct Recent {
        keys: [(zeroize::Zeroizing<Vec<u8>>, [u8; 32]); SLOTS],
        next: usize,
    }
    thread_local! {
        static RECENT: std::cell::RefCell<Recent> = std::cell::RefCell::new(Recent {
            keys: Default::default(),
            next: 0,
        });
    }
    let key = key.as_bytes();
    RECENT.with_borrow_mut(|recent| {
        for (k, hash) in &recent.keys {
            if !k.is_empty() && bool::from(k.as_slice().ct_eq(key)) {
                return *hash;
            }
        }
        let hash = hash_key_bytes(key);
        let slot = recent.next;
        recent.next = (slot + 1) % SLOTS;
        // Assigning drops (and so wipes) the evicted key.
        recent.keys[slot] = (zeroize::Zeroizing::new(key.to_vec()), hash);
        hash
    })
}

fn missing_key() -> Error {
    Error::new(
        ErrorKind::Authentication,
        "x-api-key header is required (or Authorization: Bearer <key>)",
    )
}

/// The key a client presented: `x-api-key` first, then a Bearer token.
pub fn presented_key(headers: &HeaderFields) -> Option<&str> {
    fn text(v: &[u8]) -> Option<&str> {
        std::str::from_utf8(v).ok()
    }
    if let Some(v) = headers
        .get_known(crate::head::Known::XApiKey)
        .and_then(text)
    {
        let v = v.trim();
        if !v.is_empty() {
            return Some(v);
        }
    }
    let auth = text(headers.get_known(crate::head::Known::Authorization)?)?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawConfig, Secret};
    use http::HeaderMap;

    fn managed() -> Authenticator {
        let c = RawConfig::default()
            .validate(vec![Secret::new("sk-up")], vec![Secret::new("strait-a")])
            .unwrap();
        Authenticator::new(&c)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderFields {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        HeaderFields::Map(h)
    }

    #[test]
    fn accepts_x_api_key_and_bearer() {
        let a = managed();
        assert_eq!(
            &*a.authenticate(&headers(&[("x-api-key", "strait-a")]))
                .unwrap()
                .name,
            "key-1"
        );
        let bearer = headers(&[("authorization", "Bearer strait-a")]);
        assert_eq!(&*a.authenticate(&bearer).unwrap().name, "key-1");
    }

    #[test]
    fn remembered_hashes_match_fresh_ones_through_evictions() {
        let keys: Vec<String> = (0..9).map(|i| format!("strait-key-{i}")).collect();
        for round in 0..3 {
            for k in keys.iter().chain(keys.iter().take(round)) {
                assert_eq!(hash_recent(k), crate::config::hash_key(k), "{k}");
            }
        }
        // A key one character off a remembered one is not taken for it.
        assert_eq!(
            hash_recent("strait-key-1"),
            crate::config::hash_key("strait-key-1")
        );
        assert_eq!(
            hash_recent("strait-key-10"),
            crate::config::hash_key("strait-key-10")
        );
        assert_eq!(
            hash_recent("strait-key-"),
            crate::config::hash_key("strait-key-")
        );
    }

    #[test]
    fn rejects_missing_and_unknown_keys() {
        let a = managed();
        assert_eq!(
            a.authenticate(&HeaderFields::Map(HeaderMap::new()))
                .unwrap_err()
                .kind,
            ErrorKind::Authentication
        );
        let e = a
            .authenticate(&headers(&[("x-api-key", "nope")]))
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::Authentication);
        assert!(!e.message.contains("nope"));
        let basic = headers(&[("authorization", "Basic strait-a")]);
        assert!(a.authenticate(&basic).is_err());
    }
}
