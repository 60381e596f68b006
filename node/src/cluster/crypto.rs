//! Envelope encryption of upstream keys (the key-encryption key); lives with the
//! other key material in [`crate::secret`].

pub use crate::secret::Kek;
