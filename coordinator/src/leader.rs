//! Who leads: the identity a coordinator campaigns with and the proof of leadership
//! that guards its writes. Vocabulary shared by error, store, election and api, so
//! it imports none of them.

use serde::{Deserialize, Serialize};

/// Who a coordinator is; the value it campaigns with, so `/v1/leader` and
/// `not_leader` errors can name the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderInfo {
    pub id: String,
    pub region: String,
    /// Where its admin API is reached.
    pub url: String,
}

/// Proof of leadership used to guard writes: the election key this coordinator
/// created. A write transaction compares its create revision, so a coordinator that
/// lost its key can never write, whatever its local flag says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub key: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}
