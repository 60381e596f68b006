//! Key material, in one place and never printed: client and upstream keys
//! ([`Secret`]), the SHA-256 hashes client keys are stored as, and the envelope
//! encryption of upstream keys kept in etcd (XChaCha20-Poly1305 under a
//! key-encryption key, [`Kek`], from a file or the environment), so etcd never holds
//! an upstream key in clear.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::schema::SealedKey;

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Hex SHA-256 of a client key, as stored in config.
pub fn hash_key(key: &str) -> [u8; 32] {
    hash_key_bytes(key.as_bytes())
}

pub fn hash_key_bytes(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The key-encryption key. Never printed.
#[derive(Clone)]
pub struct Kek(XChaCha20Poly1305);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(***)")
    }
}

impl Kek {
    /// Parses a KEK written as 64 hex characters or standard base64 of 32 bytes
    /// (`openssl rand -hex 32`). Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Kek, String> {
        let t = text.trim();
        let bytes = if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
            hex::decode(t).map_err(|e| e.to_string())?
        } else {
            B64.decode(t)
                .map_err(|_| "KEK must be 32 bytes as 64 hex characters or base64".to_string())?
        };
        if bytes.len() != 32 {
            return Err(format!("KEK must be 32 bytes, got {}", bytes.len()));
        }
        Ok(Kek(
            XChaCha20Poly1305::new_from_slice(&bytes).map_err(|e| e.to_string())?
        ))
    }

    /// Reads a KEK from a file (one line).
    pub fn from_file(path: &std::path::Path) -> Result<Kek, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read KEK file {}: {e}", path.display()))?;
        Kek::parse(&text)
    }

    /// Seals `plaintext` for the key `id`; a fresh random nonce every time.
    pub fn seal(&self, id: &str, label: &str, plaintext: &str) -> SealedKey {
        let nonce_bytes: [u8; 24] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        let ct = self
            .0
            .encrypt(
                nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: id.as_bytes(),
                },
            )
            .expect("encryption with a valid key cannot fail");
        SealedKey {
            id: id.to_string(),
            label: label.to_string(),
            org: None,
            nonce: B64.encode(nonce_bytes),
            ciphertext: B64.encode(ct),
        }
    }

    /// Opens a sealed key. Fails if the KEK is wrong or the document was altered.
    pub fn open(&self, sealed: &SealedKey) -> Result<Secret, String> {
        let nonce = B64
            .decode(&sealed.nonce)
            .map_err(|_| format!("key {}: bad nonce", sealed.id))?;
        if nonce.len() != 24 {
            return Err(format!("key {}: bad nonce length", sealed.id));
        }
        let ct = B64
            .decode(&sealed.ciphertext)
            .map_err(|_| format!("key {}: bad ciphertext", sealed.id))?;
        let pt = self
            .0
            .decrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &ct,
                    aad: sealed.id.as_bytes(),
                },
            )
            .map_err(|_| {
                format!(
                    "key {}: cannot decrypt (wrong KEK or altered document)",
                    sealed.id
                )
            })?;
        String::from_utf8(pt)
            .map(Secret::new)
            .map_err(|_| format!("key {}: not UTF-8", sealed.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_and_tamper_detection() {
        let kek = Kek::parse(&"ab".repeat(32)).unwrap();
        let sealed = kek.seal("k1", "prod-1", "sk-ant-secret");
        assert!(!sealed.ciphertext.contains("sk-ant"));
        assert_eq!(kek.open(&sealed).unwrap().expose(), "sk-ant-secret");
        let mut moved = sealed.clone();
        moved.id = "k2".into();
        assert!(kek.open(&moved).is_err(), "ciphertext bound to its id");
        let other = Kek::parse(&"cd".repeat(32)).unwrap();
        assert!(other.open(&sealed).is_err());
        assert!(Kek::parse("short").is_err());
    }
}
