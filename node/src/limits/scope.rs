//! What is limited: scopes (a client key or a tenant, with its effective limits) and
//! the subject a request is checked against (its key's scope and its tenant's).

use std::sync::Arc;

use super::LimitSpec;

/// Whether a scope is a client key or a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeKind {
    Key,
    Tenant,
}

impl ScopeKind {
    pub fn label(self) -> &'static str {
        match self {
            ScopeKind::Key => "key",
            ScopeKind::Tenant => "tenant",
        }
    }
}

/// One limited thing: a client key or a tenant, with its effective limits.
#[derive(Debug, Clone)]
pub struct Scope {
    pub kind: ScopeKind,
    pub name: Arc<str>,
    pub spec: LimitSpec,
    /// Redis Cluster hash tag: a key's state lives with its tenant's, so one script
    /// can check both atomically (`t:<tenant>` or, without a tenant, `k:<key>`).
    pub tag: String,
}

/// The scopes a request is checked against: its key, and its key's tenant. Indices
/// into [`Limiter::scopes`]; the key always comes first (lock order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub scopes: [Option<usize>; 2],
}

impl Subject {
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.scopes.iter().flatten().copied()
    }
}
