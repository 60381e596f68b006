//! Upstream key pools (`/v1/pools`): keys are sealed with the KEK here, before
//! anything reaches the store, and only ids and labels are ever shown.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use strait_node::schema::{SealedKey, UpstreamPoolDoc};

use super::{check_name, random_hex, AppState, Body};
use crate::error::{Error, Result};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddPoolKey {
    label: String,
    key: String,
}

// Never print the key, even in debug logs of the request.
impl std::fmt::Debug for AddPoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddPoolKey")
            .field("label", &self.label)
            .field("key", &"***")
            .finish()
    }
}

#[derive(Debug, Serialize)]
pub(super) struct PoolKeyView {
    pool: String,
    id: String,
    label: String,
}

#[derive(Debug, Serialize)]
pub(super) struct KeyLabel {
    id: String,
    label: String,
}

#[derive(Debug, Serialize)]
pub(super) struct PoolView {
    name: String,
    keys: Vec<KeyLabel>,
}

#[derive(Serialize)]
pub(super) struct PoolList {
    revision: i64,
    pools: Vec<PoolView>,
}

pub(super) async fn add_pool_key(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Body(req): Body<AddPoolKey>,
) -> Result<(StatusCode, Json<PoolKeyView>)> {
    check_name("pool", &name)?;
    check_name("label", &req.label)?;
    let key = req.key.trim();
    if key.is_empty()
        || key.len() > 1024
        || key.chars().any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Err(Error::bad_request(
            "key: give the upstream API key (1 to 1024 characters, no spaces)",
        ));
    }
    let id = format!("uk_{}", random_hex::<8>());
    // Sealed here, before anything reaches etcd; the plaintext is dropped with `req`.
    let sealed: SealedKey = app.kek.seal(&id, &req.label, key);
    let label = req.label.clone();
    app.mutate(|c| {
        let pool = c.pools.entry(name.clone()).or_insert_with(|| UpstreamPoolDoc { name: name.clone(), keys: Vec::new() });
        if pool.keys.iter().any(|k| k.label == label) {
            return Err(Error::bad_request(format!("pool {name}: label {label:?} is taken; remove that key first or pick another label")));
        }
        pool.keys.push(sealed.clone());
        Ok(())
    })
    .await?;
    tracing::info!(pool = %name, key_id = %id, label = %label, "upstream key added");
    Ok((
        StatusCode::CREATED,
        Json(PoolKeyView {
            pool: name,
            id,
            label,
        }),
    ))
}

pub(super) async fn list_pools(State(app): State<AppState>) -> Result<Json<PoolList>> {
    let c = app.store.load().await?;
    let pools = c
        .pools
        .into_values()
        .map(|p| PoolView {
            name: p.name,
            keys: p
                .keys
                .into_iter()
                .map(|k| KeyLabel {
                    id: k.id,
                    label: k.label,
                })
                .collect(),
        })
        .collect();
    Ok(Json(PoolList {
        revision: c.revision,
        pools,
    }))
}

pub(super) async fn remove_pool_key(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<PoolKeyView>> {
    let (label, _) = app
        .mutate(|c| {
            let pool = c
                .pools
                .get_mut(&name)
                .ok_or_else(|| Error::not_found(format!("no upstream pool {name:?}")))?;
            let at = pool
                .keys
                .iter()
                .position(|k| k.id == id)
                .ok_or_else(|| Error::not_found(format!("pool {name}: no key {id:?}")))?;
            Ok(pool.keys.remove(at).label)
        })
        .await?;
    tracing::info!(pool = %name, key_id = %id, "upstream key removed");
    Ok(Json(PoolKeyView {
        pool: name,
        id,
        label,
    }))
}
