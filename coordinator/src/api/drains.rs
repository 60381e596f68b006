//! Drains (`/v1/regions/...`, `/v1/nodes/.../drain`): take a region or one node out
//! of service and back; nodes act on it from their next config snapshot.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use strait_node::schema::{DrainDoc, RegionDoc};

use super::{check_name, AppState, Body};
use crate::app::App;
use crate::error::Result;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegionBody {
    draining: bool,
}

#[derive(Debug, Serialize)]
pub(super) struct RegionView {
    region: String,
    draining: bool,
}

async fn set_region(app: &App, region: String, draining: bool) -> Result<Json<RegionView>> {
    check_name("region", &region)?;
    app.mutate(|c| {
        c.regions
            .entry(region.clone())
            .or_insert_with(RegionDoc::default)
            .draining = draining;
        Ok(())
    })
    .await?;
    tracing::info!(region = %region, draining, "region drain set");
    Ok(Json(RegionView { region, draining }))
}

pub(super) async fn put_region(
    State(app): State<AppState>,
    Path(region): Path<String>,
    Body(req): Body<RegionBody>,
) -> Result<Json<RegionView>> {
    set_region(&app, region, req.draining).await
}

pub(super) async fn drain_region(
    State(app): State<AppState>,
    Path(region): Path<String>,
) -> Result<Json<RegionView>> {
    set_region(&app, region, true).await
}

pub(super) async fn undrain_region(
    State(app): State<AppState>,
    Path(region): Path<String>,
) -> Result<Json<RegionView>> {
    set_region(&app, region, false).await
}

#[derive(Debug, Serialize)]
pub(super) struct NodeDrainView {
    region: String,
    node: String,
    draining: bool,
    /// Whether a node with this id is registered right now (a drain may be set ahead).
    registered: bool,
}

async fn set_node_drain(
    app: &App,
    region: String,
    node: String,
    draining: bool,
) -> Result<Json<NodeDrainView>> {
    check_name("region", &region)?;
    check_name("node id", &node)?;
    app.mutate(|c| {
        let k = (region.clone(), node.clone());
        if draining {
            c.drains.insert(k, DrainDoc { draining: true });
        } else {
            c.drains.remove(&k);
        }
        Ok(())
    })
    .await?;
    let registered = app
        .store
        .nodes()
        .await
        .map(|ns| ns.iter().any(|n| n.region == region && n.id == node))
        .unwrap_or(false);
    tracing::info!(region = %region, node = %node, draining, "node drain set");
    Ok(Json(NodeDrainView {
        region,
        node,
        draining,
        registered,
    }))
}

pub(super) async fn drain_node(
    State(app): State<AppState>,
    Path((region, id)): Path<(String, String)>,
) -> Result<Json<NodeDrainView>> {
    set_node_drain(&app, region, id, true).await
}

pub(super) async fn undrain_node(
    State(app): State<AppState>,
    Path((region, id)): Path<(String, String)>,
) -> Result<Json<NodeDrainView>> {
    set_node_drain(&app, region, id, false).await
}
