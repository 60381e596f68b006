//! Upstream key pools (`/v1/pools`): keys are sealed with the KEK here, before
//! anything reaches the store, and only ids, labels and organisations are ever shown.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use strait_node::schema::{ClusterConfig, SealedKey, UpstreamPoolDoc};

use super::{check_name, random_hex, AppState, Body};
use crate::error::{Error, Result};

/// Longest organisation label accepted.
const ORG_MAX_LEN: usize = 64;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddPoolKey {
    label: String,
    key: String,
    /// The Anthropic organisation the key belongs to; absent: an organisation of its own.
    #[serde(default)]
    org: Option<String>,
}

// Never print the key, even in debug logs of the request.
impl std::fmt::Debug for AddPoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddPoolKey")
            .field("label", &self.label)
            .field("org", &self.org)
            .field("key", &"***")
            .finish()
    }
}

/// `PATCH /v1/pools/{name}/keys/{id}`: regroups a key without re-entering its secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdatePoolKey {
    /// Absent: refused (the only field); `null` or `""`: an organisation of its own.
    #[serde(default, deserialize_with = "present")]
    org: Option<Option<String>>,
}

/// Tells a field given as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D: Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize)]
pub(super) struct PoolKeyView {
    pool: String,
    id: String,
    label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<String>,
}

impl PoolKeyView {
    fn new(pool: String, k: &SealedKey) -> Self {
        PoolKeyView {
            pool,
            id: k.id.clone(),
            label: k.label.clone(),
            org: k.org.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct KeyLabel {
    id: String,
    label: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    org: Option<String>,
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

/// An organisation label is not a name of ours but the operator's handle for an
/// Anthropic organisation (its id is a UUID, its display name has capitals), hence a
/// wider alphabet than [`check_name`]; still short and free of spaces and quotes, as
/// it lands in logs and metrics labels.
fn check_org(org: &str) -> Result<()> {
    let ok = !org.is_empty()
        && org.len() <= ORG_MAX_LEN
        && org
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "org {org:?}: use 1 to {ORG_MAX_LEN} letters, digits, '.', '-' or '_'"
        )))
    }
}

/// `""` and `null` both mean "an organisation of its own".
fn optional_org(org: Option<String>) -> Result<Option<String>> {
    match org {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => check_org(&s).map(|()| Some(s)),
    }
}

pub(super) async fn add_pool_key(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Body(req): Body<AddPoolKey>,
) -> Result<(StatusCode, Json<PoolKeyView>)> {
    check_name("pool", &name)?;
    check_name("label", &req.label)?;
    let org = optional_org(req.org.clone())?;
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
    // The org is not secret and not part of the associated data: it can change later.
    let mut sealed: SealedKey = app.kek.seal(&id, &req.label, key);
    sealed.org = org;
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
    tracing::info!(pool = %name, key_id = %id, label = %label, org = sealed.org.as_deref().unwrap_or("-"), "upstream key added");
    Ok((StatusCode::CREATED, Json(PoolKeyView::new(name, &sealed))))
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
                    org: k.org,
                })
                .collect(),
        })
        .collect();
    Ok(Json(PoolList {
        revision: c.revision,
        pools,
    }))
}

/// The key `id` of pool `name` in `c`, to change or remove.
fn key_at<'a>(
    c: &'a mut ClusterConfig,
    name: &str,
    id: &str,
) -> Result<(usize, &'a mut Vec<SealedKey>)> {
    let pool = c
        .pools
        .get_mut(name)
        .ok_or_else(|| Error::not_found(format!("no upstream pool {name:?}")))?;
    let at = pool
        .keys
        .iter()
        .position(|k| k.id == id)
        .ok_or_else(|| Error::not_found(format!("pool {name}: no key {id:?}")))?;
    Ok((at, &mut pool.keys))
}

pub(super) async fn update_pool_key(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
    Body(req): Body<UpdatePoolKey>,
) -> Result<Json<PoolKeyView>> {
    let Some(org) = req.org else {
        return Err(Error::bad_request(
            "org: give the key's organisation, or null (or \"\") for an organisation of its own",
        ));
    };
    let org = optional_org(org)?;
    let (view, _) = app
        .mutate(|c| {
            let (at, keys) = key_at(c, &name, &id)?;
            keys[at].org = org.clone();
            Ok(PoolKeyView::new(name.clone(), &keys[at]))
        })
        .await?;
    tracing::info!(pool = %name, key_id = %id, org = view.org.as_deref().unwrap_or("-"), "upstream key regrouped");
    Ok(Json(view))
}

pub(super) async fn remove_pool_key(
    State(app): State<AppState>,
    Path((name, id)): Path<(String, String)>,
) -> Result<Json<PoolKeyView>> {
    let (removed, _) = app
        .mutate(|c| {
            let (at, keys) = key_at(c, &name, &id)?;
            Ok(keys.remove(at))
        })
        .await?;
    tracing::info!(pool = %name, key_id = %id, "upstream key removed");
    Ok(Json(PoolKeyView::new(name, &removed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::app_for_tests;
    use crate::error::ErrorKind;
    use crate::store::Store;
    use serde_json::json;

    fn body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Body<T> {
        Body(serde_json::from_value(v).expect("a well-formed test body"))
    }

    #[test]
    fn org_labels_are_short_and_plain() {
        for good in ["acme", "Acme-Prod", "org_01.eu", &"a".repeat(ORG_MAX_LEN)] {
            assert!(check_org(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "acme corp",
            "acme\"",
            "ac/me",
            "ä",
            &"a".repeat(ORG_MAX_LEN + 1),
        ] {
            let e = check_org(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains("letters, digits"), "{}", e.message);
        }
    }

    /// PATCH regroups a key in place; it tells `null` (an organisation of its own) from
    /// an absent field (refused, as a no-op is likely a mistake).
    #[tokio::test]
    async fn a_key_is_regrouped_without_its_secret() {
        let (app, store) = app_for_tests();
        let (_, Json(added)) = add_pool_key(
            State(app.clone()),
            Path("default".into()),
            body(json!({"label": "prod-1", "key": "sk-ant-upstream-1", "org": "acme"})),
        )
        .await
        .unwrap();
        assert_eq!(added.org.as_deref(), Some("acme"));
        let path = || Path(("default".to_string(), added.id.clone()));
        let stored = || async { store.load().await.unwrap().pools["default"].keys[0].clone() };
        let sealed_before = stored().await;

        let Json(v) = update_pool_key(
            State(app.clone()),
            path(),
            body(json!({"org": "other-org"})),
        )
        .await
        .unwrap();
        assert_eq!(v.org.as_deref(), Some("other-org"));
        let after = stored().await;
        assert_eq!(after.org.as_deref(), Some("other-org"));
        // Same ciphertext: the secret was not touched, and it still opens.
        assert_eq!(
            (&after.nonce, &after.ciphertext),
            (&sealed_before.nonce, &sealed_before.ciphertext)
        );
        assert_eq!(app.kek.open(&after).unwrap().expose(), "sk-ant-upstream-1");

        for clear in [json!({"org": null}), json!({"org": ""})] {
            let Json(set) = update_pool_key(State(app.clone()), path(), body(json!({"org": "x"})))
                .await
                .unwrap();
            assert_eq!(stored().await.org, set.org);
            let Json(v) = update_pool_key(State(app.clone()), path(), body(clear.clone()))
                .await
                .unwrap();
            assert_eq!(v.org, None, "{clear}");
            assert_eq!(stored().await.org, None, "{clear}");
        }

        let before = store.revision();
        for (req, needle) in [
            (json!({}), "org: give"),
            (json!({"org": "a b"}), "letters, digits"),
        ] {
            let e = update_pool_key(State(app.clone()), path(), body(req))
                .await
                .unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains(needle), "{}", e.message);
        }
        let e = update_pool_key(
            State(app.clone()),
            Path(("default".into(), "uk_nope".into())),
            body(json!({"org": "acme"})),
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert_eq!(store.revision(), before, "a refused change was written");
    }
}
