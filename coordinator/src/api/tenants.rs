//! Tenants (`/v1/tenants`): groups of keys sharing limits and a region policy.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use strait_node::schema::{LimitsDoc, TenantDoc};

use super::{check_name, normalize_regions, AppState, Body};
use crate::error::{Error, Result};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TenantBody {
    #[serde(default)]
    limits: Option<LimitsDoc>,
    #[serde(default)]
    allowed_regions: Option<Vec<String>>,
}

#[derive(Serialize)]
pub(super) struct TenantList {
    revision: i64,
    tenants: Vec<TenantDoc>,
}

pub(super) async fn list_tenants(State(app): State<AppState>) -> Result<Json<TenantList>> {
    let c = app.store.load().await?;
    Ok(Json(TenantList {
        revision: c.revision,
        tenants: c.tenants.into_values().collect(),
    }))
}

pub(super) async fn get_tenant(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TenantDoc>> {
    let mut c = app.store.load().await?;
    c.tenants
        .remove(&name)
        .map(Json)
        .ok_or_else(|| Error::not_found(format!("no tenant {name:?}")))
}

pub(super) async fn put_tenant(
    State(app): State<AppState>,
    Path(name): Path<String>,
    Body(req): Body<TenantBody>,
) -> Result<Json<TenantDoc>> {
    check_name("tenant", &name)?;
    let doc = TenantDoc {
        name: name.clone(),
        limits: req.limits.unwrap_or_default(),
        allowed_regions: normalize_regions(req.allowed_regions)?,
    };
    app.mutate(|c| {
        c.tenants.insert(name.clone(), doc.clone());
        Ok(())
    })
    .await?;
    Ok(Json(doc))
}

pub(super) async fn delete_tenant(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TenantDoc>> {
    let (doc, _) = app
        .mutate(|c| {
            c.tenants
                .remove(&name)
                .ok_or_else(|| Error::not_found(format!("no tenant {name:?}")))
        })
        .await?;
    Ok(Json(doc))
}
