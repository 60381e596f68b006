//! Dashboard sessions without server state: a cookie holding who signed in and until
//! when, signed with HMAC-SHA256 under a key derived from a secret every coordinator
//! of the cluster shares (the cluster secret, else the admin token), so any of them
//! accepts it. CSRF tokens are MACs of the session id; sign-in attempts are rate
//! limited per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::scrape::now_unix;

pub const COOKIE: &str = "strait_session";
/// Holds the nonce the sign-in form's CSRF token is bound to (before a session exists).
pub const PRE_COOKIE: &str = "strait_signin";

/// Failed sign-ins allowed per client address per [`ATTEMPT_WINDOW`].
pub const MAX_FAILURES: u32 = 5;
pub const ATTEMPT_WINDOW: Duration = Duration::from_secs(60);

type HmacSha256 = Hmac<Sha256>;

/// What a session cookie says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    /// The name given at sign-in (for the audit log), or `admin`.
    pub who: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Random id: CSRF tokens are bound to it.
    pub sid: String,
}

/// Signs and checks cookies and CSRF tokens.
pub struct Keys {
    key: [u8; 32],
}

impl Keys {
    /// Derives the signing key from `shared` (the cluster secret or the admin token).
    pub fn derive(shared: &str) -> Keys {
        Keys {
            key: mac(shared.as_bytes(), b"strait dashboard session v1"),
        }
    }

    fn mac(&self, msg: &[u8]) -> [u8; 32] {
        mac(&self.key, msg)
    }

    /// A fresh session for `who` living `ttl`, as a cookie value.
    pub fn issue(&self, who: &str, ttl: Duration) -> (Session, String) {
        let s = Session {
            who: who.to_string(),
            exp: now_unix() as u64 + ttl.as_secs(),
            sid: hex::encode(rand::random::<[u8; 16]>()),
        };
        let payload = B64.encode(serde_json::to_vec(&s).unwrap_or_default());
        let sig = B64.encode(self.mac(payload.as_bytes()));
        (s, format!("v1.{payload}.{sig}"))
    }

    /// The session a cookie value carries, if its signature holds and it has not expired.
    pub fn verify(&self, cookie: &str) -> Option<Session> {
        let rest = cookie.strip_prefix("v1.")?;
        let (payload, sig) = rest.split_once('.')?;
        let sig = B64.decode(sig).ok()?;
        if !bool::from(sig.ct_eq(&self.mac(payload.as_bytes()))) {
            return None;
        }
        let s: Session = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
        (s.exp as f64 > now_unix()).then_some(s)
    }

    /// The CSRF token of a session's forms.
    pub fn csrf(&self, sid: &str) -> String {
        B64.encode(self.mac(format!("csrf:{sid}").as_bytes()))
    }

    pub fn csrf_ok(&self, sid: &str, presented: &str) -> bool {
        bool::from(self.csrf(sid).as_bytes().ct_eq(presented.as_bytes()))
    }
}

fn mac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// Failed sign-ins per client address in the current window.
#[derive(Default)]
pub struct Attempts {
    by_ip: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl Attempts {
    /// `Err(wait)` when `ip` has used up its failures for this window.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&ip) {
            Some((start, n)) if *n >= MAX_FAILURES && start.elapsed() < ATTEMPT_WINDOW => {
                Err(ATTEMPT_WINDOW - start.elapsed())
            }
            _ => Ok(()),
        }
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut map = self.by_ip.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: old windows are dropped whenever the map grows.
        if map.len() > 10_000 {
            map.retain(|_, (s, _)| s.elapsed() < ATTEMPT_WINDOW);
        }
        let e = map.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= ATTEMPT_WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.by_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, Path=/, `Secure` if asked.
pub fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
        max_age.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_verify_only_with_the_same_secret_and_before_expiry() {
        let a = Keys::derive("cluster-secret-one-0001");
        let (s, c) = a.issue("alice", Duration::from_secs(60));
        // Another coordinator with the same secret accepts it.
        let same = Keys::derive("cluster-secret-one-0001");
        assert_eq!(same.verify(&c).map(|x| x.who), Some("alice".into()));
        assert!(Keys::derive("another-secret-0002").verify(&c).is_none());
        // A changed payload fails the signature.
        let (_, other) = a.issue("mallory", Duration::from_secs(60));
        let forged = format!(
            "{}.{}",
            other.rsplit_once('.').unwrap().0,
            c.rsplit_once('.').unwrap().1
        );
        assert!(a.verify(&forged).is_none());
        let (_, expired) = a.issue("bob", Duration::ZERO);
        assert!(a.verify(&expired).is_none());
        assert!(a.csrf_ok(&s.sid, &a.csrf(&s.sid)));
        assert!(!a.csrf_ok(&s.sid, &a.csrf("another-sid")));
        assert_eq!(cookie("x=1; strait_session=abc", COOKIE), Some("abc"));
    }

    #[test]
    fn sign_in_failures_are_limited_per_address() {
        let at = Attempts::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..MAX_FAILURES {
            assert!(at.check(ip).is_ok());
            at.failed(ip);
        }
        assert!(at.check(ip).is_err());
        assert!(at.check("10.0.0.2".parse().unwrap()).is_ok());
        at.succeeded(ip);
        assert!(at.check(ip).is_ok());
    }
}
