//! Phase 4, route: decide how a request leaves the node. Route decides; forward
//! carries the decision out. Today there is one way out, the direct upstream path
//! with a key from the pool ([`pool`]), picked for the request's upstream limit
//! scope ([`scope`]); the failover issue adds a relay through a peer region and the
//! deferred-delivery issue the durable queue, each as a variant of [`Route`] that
//! the later phases execute.

mod pool;
mod scope;

pub use pool::{Census, KeyPool, KeyRef, NoKey, PoolSettings, Reason, Verdict};
pub use scope::{Scope, ScopeKey};

use crate::config::KeyMode;

/// How a request leaves the node.
#[derive(Clone, Copy)]
pub enum Route<'a> {
    /// Straight to the upstream API. In managed mode each attempt takes a key from
    /// `pool` that can serve `scope` (and avoids the one that just failed); passing
    /// through, the client's own key goes and `pool` is not used.
    Direct {
        pool: &'a KeyPool,
        mode: KeyMode,
        scope: Scope<'a>,
    },
}

/// The route for a request of `scope` served with `pool` (the principal's pool) in
/// key `mode`.
pub fn decide<'a>(pool: &'a KeyPool, mode: KeyMode, scope: Scope<'a>) -> Route<'a> {
    Route::Direct { pool, mode, scope }
}
