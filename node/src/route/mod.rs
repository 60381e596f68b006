//! Phase 4, route: decide how a request leaves the node. Route decides; forward
//! carries the decision out. Today there is one way out, the direct upstream path
//! with a key from the pool ([`pool`]); the failover issue adds a relay through a
//! peer region and the deferred-delivery issue the durable queue, each as a variant
//! of [`Route`] that the later phases execute.

mod pool;

pub use pool::{classify_limit, Cooldown, KeyPool, KeyRef};

use crate::config::KeyMode;

/// How a request leaves the node.
#[derive(Clone, Copy)]
pub enum Route<'a> {
    /// Straight to the upstream API. In managed mode each attempt takes a key from
    /// `pool` (and avoids the one that just failed); passing through, the client's
    /// own key goes and `pool` is not used.
    Direct { pool: &'a KeyPool, mode: KeyMode },
}

/// The route for a request served with `pool` (the principal's pool) in key `mode`.
pub fn decide(pool: &KeyPool, mode: KeyMode) -> Route<'_> {
    Route::Direct { pool, mode }
}
