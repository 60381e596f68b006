//! Client keys (`/v1/keys`): create (the secret is shown once, etcd keeps its
//! SHA-256), list, show, change and revoke.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use strait_node::config::hash_key;
use strait_node::schema::{ClientKeyDoc, ClusterConfig, LimitsDoc};

use super::{check_name, normalize_regions, now_rfc3339, optional_ref, random_hex, AppState, Body};
use crate::error::{Error, ErrorKind, Result};

/// Prefix of generated client keys.
pub const CLIENT_KEY_PREFIX: &str = "sk-strait-";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateKey {
    name: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    limits: Option<LimitsDoc>,
    #[serde(default)]
    allowed_regions: Option<Vec<String>>,
    #[serde(default)]
    pool: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateKey {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    limits: Option<LimitsDoc>,
    #[serde(default)]
    allowed_regions: Option<Vec<String>>,
    #[serde(default)]
    pool: Option<String>,
}

/// A client key as the API shows it: never the key, never its hash.
#[derive(Debug, Serialize)]
pub(super) struct KeyView {
    id: String,
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pool: Option<String>,
    limits: LimitsDoc,
    #[serde(skip_serializing_if = "Option::is_none")]
    allowed_regions: Option<Vec<String>>,
    created_at: String,
    revoked: bool,
}

impl From<&ClientKeyDoc> for KeyView {
    fn from(d: &ClientKeyDoc) -> Self {
        KeyView {
            id: d.id.clone(),
            name: d.name.clone(),
            tenant: d.tenant.clone(),
            pool: d.pool.clone(),
            limits: d.limits.clone(),
            allowed_regions: d.allowed_regions.clone(),
            created_at: d.created_at.clone(),
            revoked: d.revoked,
        }
    }
}

#[derive(Serialize)]
pub(super) struct CreatedKey {
    #[serde(flatten)]
    view: KeyView,
    /// The secret, shown in this response only.
    key: String,
    revision: i64,
}

pub(super) async fn create_key(
    State(app): State<AppState>,
    Body(req): Body<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>)> {
    check_name("name", &req.name)?;
    let tenant = optional_ref("tenant", req.tenant)?;
    let pool = optional_ref("pool", req.pool)?;
    let allowed_regions = normalize_regions(req.allowed_regions)?;
    // Drawn once, outside the retried closure.
    let id = format!("ck_{}", random_hex::<8>());
    let secret = format!("{CLIENT_KEY_PREFIX}{}", random_hex::<32>());
    let doc = ClientKeyDoc {
        id: id.clone(),
        name: req.name,
        tenant,
        sha256: hex::encode(hash_key(&secret)),
        created_at: now_rfc3339(),
        revoked: false,
        limits: req.limits.unwrap_or_default(),
        allowed_regions,
        pool,
    };
    let (view, revision) = app
        .mutate(|c| {
            if c.client_keys.contains_key(&id) {
                return Err(Error::new(ErrorKind::Conflict, "key id collision; retry"));
            }
            c.client_keys.insert(id.clone(), doc.clone());
            Ok(KeyView::from(&doc))
        })
        .await?;
    tracing::info!(key_id = %view.id, name = %view.name, "client key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            view,
            key: secret,
            revision,
        }),
    ))
}

#[derive(Serialize)]
pub(super) struct KeyList {
    revision: i64,
    keys: Vec<KeyView>,
}

pub(super) async fn list_keys(State(app): State<AppState>) -> Result<Json<KeyList>> {
    let c = app.store.load().await?;
    Ok(Json(KeyList {
        revision: c.revision,
        keys: c.client_keys.values().map(KeyView::from).collect(),
    }))
}

pub(super) async fn get_key(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>> {
    let c = app.store.load().await?;
    c.client_keys
        .get(&id)
        .map(|d| Json(KeyView::from(d)))
        .ok_or_else(|| no_key(&id))
}

pub(super) async fn update_key(
    State(app): State<AppState>,
    Path(id): Path<String>,
    Body(req): Body<UpdateKey>,
) -> Result<Json<KeyView>> {
    if let Some(n) = &req.name {
        check_name("name", n)?;
    }
    let tenant = req
        .tenant
        .map(|t| optional_ref("tenant", Some(t)))
        .transpose()?;
    let pool = req
        .pool
        .map(|p| optional_ref("pool", Some(p)))
        .transpose()?;
    let regions = req
        .allowed_regions
        .map(|r| normalize_regions(Some(r)))
        .transpose()?;
    let (view, _) = app
        .mutate(|c| {
            let d = key_mut(c, &id)?;
            if let Some(n) = &req.name {
                d.name = n.clone();
            }
            if let Some(t) = &tenant {
                d.tenant = t.clone();
            }
            if let Some(p) = &pool {
                d.pool = p.clone();
            }
            if let Some(l) = &req.limits {
                d.limits = l.clone();
            }
            if let Some(r) = &regions {
                d.allowed_regions = r.clone();
            }
            Ok(KeyView::from(&*d))
        })
        .await?;
    Ok(Json(view))
}

pub(super) async fn revoke_key(
    State(app): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<KeyView>> {
    let (view, _) = app
        .mutate(|c| {
            let d = key_mut(c, &id)?;
            d.revoked = true;
            Ok(KeyView::from(&*d))
        })
        .await?;
    tracing::info!(key_id = %view.id, "client key revoked");
    Ok(Json(view))
}

fn no_key(id: &str) -> Error {
    Error::not_found(format!("no client key {id:?}"))
}

/// The key `id` in `c`, to change in place.
fn key_mut<'a>(c: &'a mut ClusterConfig, id: &str) -> Result<&'a mut ClientKeyDoc> {
    c.client_keys.get_mut(id).ok_or_else(|| no_key(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::app_for_tests;
    use crate::store::Store;
    use serde_json::json;

    fn body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Body<T> {
        Body(serde_json::from_value(v).expect("a well-formed test body"))
    }

    #[tokio::test]
    async fn a_key_is_created_then_listed_then_revoked() {
        let (app, store) = app_for_tests();
        // Nodes refuse client keys with no upstream key to use: refused, nothing written.
        // No unwrap_err: the created key has no Debug, so that its secret never prints.
        let Err(e) = create_key(State(app.clone()), body(json!({"name": "early"}))).await else {
            panic!("a key with no upstream key to use was created");
        };
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("no keys"), "{}", e.message);
        assert_eq!(store.revision(), 0);

        let (pool_status, _) = super::super::pools::add_pool_key(
            State(app.clone()),
            Path("default".into()),
            body(json!({"label": "prod-1", "key": "sk-ant-upstream-1"})),
        )
        .await
        .unwrap();
        assert_eq!(pool_status, StatusCode::CREATED);
        let (status, Json(created)) = create_key(
            State(app.clone()),
            body(
                json!({"name": "alice", "limits": {"otpm": 5000}, "allowed_regions": ["r1", "r1"]}),
            ),
        )
        .await
        .unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert!(created.key.starts_with(CLIENT_KEY_PREFIX));
        assert_eq!(created.revision, store.revision());
        let id = created.view.id.clone();
        assert_eq!(created.view.allowed_regions, Some(vec!["r1".to_string()]));

        // The store holds the key's hash, never the key.
        let stored = store.load().await.unwrap().client_keys[&id].clone();
        assert_eq!(stored.sha256, hex::encode(hash_key(&created.key)));
        assert_eq!(stored.limits.otpm, Some(5000));

        let Json(list) = list_keys(State(app.clone())).await.unwrap();
        assert_eq!(list.revision, store.revision());
        assert_eq!(list.keys.len(), 1);
        assert_eq!(
            (list.keys[0].id.as_str(), list.keys[0].revoked),
            (id.as_str(), false)
        );

        let Json(revoked) = revoke_key(State(app.clone()), Path(id.clone()))
            .await
            .unwrap();
        assert!(revoked.revoked);
        assert!(store.load().await.unwrap().client_keys[&id].revoked);
        let Json(one) = get_key(State(app.clone()), Path(id.clone())).await.unwrap();
        assert!(one.revoked);

        // An unknown id: not found for every verb, and nothing written.
        let before = store.revision();
        let nope = || Path("ck_nope".to_string());
        assert_eq!(
            revoke_key(State(app.clone()), nope())
                .await
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            update_key(State(app.clone()), nope(), body(json!({"name": "x"})))
                .await
                .unwrap_err()
                .kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            get_key(State(app), nope()).await.unwrap_err().kind,
            ErrorKind::NotFound
        );
        assert_eq!(store.revision(), before);
    }
}
