//! Cluster membership and live configuration through etcd.
//!
//! Layout: `schema` (key layout and documents, shared with the coordinator),
//! `crypto` (sealing upstream keys with the KEK).

pub mod crypto;
pub mod schema;
