//! Phase 4, route: decide how a request leaves the node. Route decides; forward
//! carries the decision out. Today there is one way out, the direct upstream path
//! with a key from the pool ([`pool`]), picked for the request's upstream limit
//! scope ([`scope`]), or a relay through a node of a peer region (carried out by
//! [`crate::relay`]) when the direct path's circuit is open.

mod pool;
mod scope;

pub use pool::{Census, KeyPool, KeyRef, NoKey, PoolSettings, Reason, Verdict};
pub use scope::{Scope, ScopeKey};

use crate::auth::Principal;
use crate::config::KeyMode;
use crate::schema::NodeRecord;

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
    /// Through `peers` (nodes of other regions, best first; the next is tried only
    /// when the one before could not be reached), which serve the request as its
    /// principal over their own direct paths.
    Relay { peers: &'a [&'a NodeRecord] },
}

/// The route for a request of `scope` served with `pool` (the principal's pool) in
/// key `mode`: through `relay` when it names peers (the caller passes them when the
/// direct path's circuit is open), else direct.
pub fn decide<'a>(
    pool: &'a KeyPool,
    mode: KeyMode,
    scope: Scope<'a>,
    relay: &'a [&'a NodeRecord],
) -> Route<'a> {
    if relay.is_empty() {
        Route::Direct { pool, mode, scope }
    } else {
        Route::Relay { peers: relay }
    }
}

/// Peers the relay tried to use do not count beyond this (the first is nearly
/// always reached; a second covers a node that died before its lease expired).
pub const MAX_RELAY_PEERS: usize = 2;

/// Why no peer can carry a request.
#[derive(Debug, PartialEq, Eq)]
pub enum NoPeer {
    /// No other region has a node ready with a healthy path.
    None,
    /// Some have, but the principal may not be served in their regions.
    Residency,
}

/// The peers that may carry `principal`'s request, best first (`peers` comes
/// ranked from the membership view): only regions the key and its tenant allow,
/// so a key pinned to its region is never relayed.
pub fn relay_peers<'p>(
    peers: &'p [NodeRecord],
    principal: &Principal,
) -> Result<Vec<&'p NodeRecord>, NoPeer> {
    if peers.is_empty() {
        return Err(NoPeer::None);
    }
    let allowed: Vec<_> = peers
        .iter()
        .filter(|p| principal.region_allowed(&p.region))
        .take(MAX_RELAY_PEERS)
        .collect();
    if allowed.is_empty() {
        Err(NoPeer::Residency)
    } else {
        Ok(allowed)
    }
}
