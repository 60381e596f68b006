//! Read-only views: the cluster (regions, nodes, drains), the leader, Prometheus
//! service discovery, health and the OpenAPI document. None needs the leader.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use strait_node::schema::{NodeRecord, NodeState, PathHealth};

use super::AppState;
use crate::error::Result;
use crate::leader::LeaderInfo;

#[derive(Debug, Serialize)]
pub(super) struct NodeView {
    id: String,
    region: String,
    state: NodeState,
    /// A drain was requested for this node or its region (the node reports
    /// `state: draining` once it acts on it).
    drain_requested: bool,
    public_addr: String,
    admin_addr: String,
    version: String,
    started_at: String,
    path: PathHealth,
}

#[derive(Debug, Serialize)]
pub(super) struct RegionStatus {
    name: String,
    draining: bool,
    nodes: Vec<NodeView>,
}

#[derive(Serialize)]
pub(super) struct ClusterView {
    revision: i64,
    leader: Option<LeaderInfo>,
    regions: Vec<RegionStatus>,
}

pub(super) async fn cluster_view(State(app): State<AppState>) -> Result<Json<ClusterView>> {
    let c = app.store.load().await?;
    let nodes = app.store.nodes().await?;
    let leader = app.store.leader().await.ok().flatten();
    let mut regions: BTreeMap<String, RegionStatus> = BTreeMap::new();
    for (name, d) in &c.regions {
        regions.insert(
            name.clone(),
            RegionStatus {
                name: name.clone(),
                draining: d.draining,
                nodes: Vec::new(),
            },
        );
    }
    for n in nodes {
        let region_draining = c.regions.get(&n.region).is_some_and(|r| r.draining);
        let node_draining = c
            .drains
            .get(&(n.region.clone(), n.id.clone()))
            .is_some_and(|d| d.draining);
        let r = regions
            .entry(n.region.clone())
            .or_insert_with(|| RegionStatus {
                name: n.region.clone(),
                draining: false,
                nodes: Vec::new(),
            });
        r.nodes.push(node_view(n, region_draining || node_draining));
    }
    Ok(Json(ClusterView {
        revision: c.revision,
        leader,
        regions: regions.into_values().collect(),
    }))
}

fn node_view(n: NodeRecord, drain_requested: bool) -> NodeView {
    NodeView {
        id: n.id,
        region: n.region,
        state: n.state,
        drain_requested,
        public_addr: n.public_addr,
        admin_addr: n.admin_addr,
        version: n.version,
        started_at: n.started_at,
        path: n.path,
    }
}

#[derive(Serialize)]
pub(super) struct LeaderView {
    leader: Option<LeaderInfo>,
    #[serde(rename = "self")]
    me: LeaderInfo,
    is_leader: bool,
}

pub(super) async fn leader(State(app): State<AppState>) -> Result<Json<LeaderView>> {
    let leader = app.store.leader().await?;
    Ok(Json(LeaderView {
        leader,
        me: app.store.me().clone(),
        is_leader: app.store.is_leader(),
    }))
}

#[derive(Debug, Serialize)]
pub(super) struct SdTarget {
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// Prometheus HTTP service discovery: one target group per live node.
pub(super) async fn prometheus_sd(State(app): State<AppState>) -> Result<Json<Vec<SdTarget>>> {
    let nodes = app.store.nodes().await?;
    let groups = nodes
        .into_iter()
        .map(|n| {
            let mut labels = BTreeMap::new();
            labels.insert("region".to_string(), n.region);
            labels.insert("node".to_string(), n.id);
            // Meta labels are for relabelling only; Prometheus drops them afterwards,
            // so a state change does not start a new series.
            let state = match n.state {
                NodeState::Serving => "serving",
                NodeState::Draining => "draining",
            };
            labels.insert("__meta_strait_state".to_string(), state.to_string());
            labels.insert("__meta_strait_version".to_string(), n.version);
            SdTarget {
                targets: vec![n.admin_addr],
                labels,
            }
        })
        .collect();
    Ok(Json(groups))
}

pub(super) async fn healthz(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "status": "pass", "id": app.store.me().id, "is_leader": app.store.is_leader() }),
    )
}

pub(super) async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
