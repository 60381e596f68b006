//! Phase 2, authenticate: find who is calling from the `x-api-key` or
//! `Authorization: Bearer` header, by SHA-256 hash of the presented key.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{hash_key, Config, KeyMode};
use crate::error::{Error, ErrorKind, Result};

/// Who made a request, as far as the rest of the pipeline needs to know.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The client key's configured name (never the key), or a mode label.
    pub name: Arc<str>,
}

/// Looks client keys up by hash. Built once per config snapshot.
pub struct Authenticator {
    mode: KeyMode,
    by_hash: HashMap<[u8; 32], Arc<str>>,
    passthrough: Arc<str>,
    anonymous: Arc<str>,
}

impl Authenticator {
    pub fn new(config: &Config) -> Self {
        let by_hash = config
            .auth
            .client_keys
            .iter()
            .map(|k| (k.sha256, Arc::<str>::from(k.name.as_str())))
            .collect();
        Authenticator {
            mode: config.key_mode(),
            by_hash,
            passthrough: Arc::from("passthrough"),
            anonymous: Arc::from("anonymous"),
        }
    }

    pub fn mode(&self) -> KeyMode {
        self.mode
    }

    /// Decides who the caller is. In passthrough mode the client's own key is checked
    /// only for presence; Anthropic judges it.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal> {
        match self.mode {
            KeyMode::Anonymous => Ok(Principal {
                name: self.anonymous.clone(),
            }),
            KeyMode::Passthrough => match presented_key(headers) {
                Some(_) => Ok(Principal {
                    name: self.passthrough.clone(),
                }),
                None => Err(missing_key()),
            },
            KeyMode::Managed => {
                let key = presented_key(headers).ok_or_else(missing_key)?;
                let hash = hash_key(key);
                // The map lookup branches on the hash, which reveals nothing usable about
                // the key; the final comparison is constant-time all the same.
                match self.by_hash.get_key_value(&hash) {
                    Some((stored, name)) if bool::from(stored.ct_eq(&hash)) => {
                        Ok(Principal { name: name.clone() })
                    }
                    _ => Err(Error::new(ErrorKind::Authentication, "invalid x-api-key")),
                }
            }
        }
    }
}

fn missing_key() -> Error {
    Error::new(
        ErrorKind::Authentication,
        "x-api-key header is required (or Authorization: Bearer <key>)",
    )
}

/// The key a client presented: `x-api-key` first, then a Bearer token.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if !v.is_empty() {
            return Some(v);
        }
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RawConfig, Secret};

    fn managed() -> Authenticator {
        let c = RawConfig::default()
            .validate(vec![Secret::new("sk-up")], vec![Secret::new("strait-a")])
            .unwrap();
        Authenticator::new(&c)
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
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
    fn rejects_missing_and_unknown_keys() {
        let a = managed();
        assert_eq!(
            a.authenticate(&HeaderMap::new()).unwrap_err().kind,
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
