//! The admin HTTP API (axum): routes, the admin-token layer, and one handler per
//! route. Every route is registered through [`RouteTable`], which also lists them,
//! so a test can hold the OpenAPI document to the router.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{FromRequest, Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use strait_node::cluster::schema::{
    valid_name, ClientKeyDoc, DrainDoc, LimitsDoc, NodeRecord, NodeState, PathHealth, RegionDoc,
    SealedKey, TenantDoc, UpstreamPoolDoc,
};
use strait_node::config::hash_key;

use crate::app::App;
use crate::leader::LeaderInfo;
use crate::error::{Error, ErrorKind, Result};

/// Prefix of generated client keys.
pub const CLIENT_KEY_PREFIX: &str = "sk-strait-";

type AppState = Arc<App>;

/// A router under construction that remembers every (method, path) it was given.
pub struct RouteTable {
    router: Router<AppState>,
    routes: Vec<(Method, &'static str)>,
}

impl RouteTable {
    fn new() -> Self {
        RouteTable {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    fn add(mut self, method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Self {
        self.routes.push((method, path));
        self.router = self.router.route(path, handler);
        self
    }

    fn merge(mut self, other: RouteTable) -> Self {
        self.routes.extend(other.routes);
        self.router = self.router.merge(other.router);
        self
    }
}

/// Routes behind the admin token.
fn admin_routes() -> RouteTable {
    use routing::{delete, get, patch, post, put};
    RouteTable::new()
        .add(Method::POST, "/v1/keys", post(create_key))
        .add(Method::GET, "/v1/keys", get(list_keys))
        .add(Method::GET, "/v1/keys/{id}", get(get_key))
        .add(Method::PATCH, "/v1/keys/{id}", patch(update_key))
        .add(Method::DELETE, "/v1/keys/{id}", delete(revoke_key))
        .add(Method::GET, "/v1/tenants", get(list_tenants))
        .add(Method::GET, "/v1/tenants/{name}", get(get_tenant))
        .add(Method::PUT, "/v1/tenants/{name}", put(put_tenant))
        .add(Method::DELETE, "/v1/tenants/{name}", delete(delete_tenant))
        .add(Method::GET, "/v1/pools", get(list_pools))
        .add(Method::POST, "/v1/pools/{name}/keys", post(add_pool_key))
        .add(
            Method::DELETE,
            "/v1/pools/{name}/keys/{id}",
            delete(remove_pool_key),
        )
        .add(Method::PUT, "/v1/regions/{region}", put(put_region))
        .add(
            Method::POST,
            "/v1/regions/{region}/drain",
            post(drain_region),
        )
        .add(
            Method::POST,
            "/v1/regions/{region}/undrain",
            post(undrain_region),
        )
        .add(
            Method::POST,
            "/v1/nodes/{region}/{id}/drain",
            post(drain_node),
        )
        .add(
            Method::POST,
            "/v1/nodes/{region}/{id}/undrain",
            post(undrain_node),
        )
        .add(Method::GET, "/v1/cluster", get(cluster_view))
        .add(Method::GET, "/v1/leader", get(leader))
}

/// Routes anyone who can reach the listener may call: liveness, the API description,
/// and Prometheus service discovery (node metrics addresses only, so Prometheus needs
/// no admin token, which would also allow writes).
fn open_routes() -> RouteTable {
    use routing::get;
    RouteTable::new()
        .add(Method::GET, "/healthz", get(healthz))
        .add(Method::GET, "/openapi.json", get(openapi))
        .add(Method::GET, "/v1/sd/prometheus", get(prometheus_sd))
}

/// Every route the router serves, as (method, path template).
pub fn route_list() -> Vec<(Method, &'static str)> {
    let mut all = admin_routes().routes;
    all.extend(open_routes().routes);
    all
}

/// The complete admin API.
pub fn router(app: AppState) -> Router {
    let admin = admin_routes();
    let admin = RouteTable {
        router: admin
            .router
            .route_layer(middleware::from_fn_with_state(app.clone(), require_token)),
        routes: admin.routes,
    };
    let table = admin.merge(open_routes());
    table.router.fallback(no_route).with_state(app)
}

async fn no_route(method: Method, uri: axum::http::Uri) -> Error {
    Error::new(
        ErrorKind::NoRoute,
        format!("no route for {method} {}", uri.path()),
    )
}

/// Rejects a request without `Authorization: Bearer <admin token>`.
async fn require_token(State(app): State<AppState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match presented {
        Some(t) if app.token_matches(t) => next.run(req).await,
        Some(_) => Error::new(ErrorKind::Unauthorized, "wrong admin token").into_response(),
        None => Error::new(
            ErrorKind::Unauthorized,
            "send the admin token as Authorization: Bearer <token>",
        )
        .into_response(),
    }
}

/// A JSON body whose parse errors become this API's JSON errors.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(rej) => Err(Error::bad_request(rej.body_text())),
        }
    }
}

// ---------------------------------------------------------------------------------
// Validation helpers.

fn check_name(what: &str, s: &str) -> Result<()> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(Error::bad_request(format!(
            "{what} {s:?}: use 1 to 64 lowercase letters, digits, '-' or '_'"
        )))
    }
}

/// `[]` (or absent) means every region; names are checked and deduplicated.
fn normalize_regions(regions: Option<Vec<String>>) -> Result<Option<Vec<String>>> {
    match regions {
        None => Ok(None),
        Some(list) if list.is_empty() => Ok(None),
        Some(list) => {
            let mut out: Vec<String> = Vec::new();
            for r in list {
                check_name("region", &r)?;
                if !out.contains(&r) {
                    out.push(r);
                }
            }
            Ok(Some(out))
        }
    }
}

/// `""` clears an optional reference (tenant, pool).
fn optional_ref(what: &str, v: Option<String>) -> Result<Option<String>> {
    match v {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) => {
            check_name(what, &s)?;
            Ok(Some(s))
        }
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn random_hex<const N: usize>() -> String {
    // rand's thread RNG is a CSPRNG seeded from the OS.
    hex::encode(rand::random::<[u8; N]>())
}

// ---------------------------------------------------------------------------------
// Client keys.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
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
struct UpdateKey {
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
struct KeyView {
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
struct CreatedKey {
    #[serde(flatten)]
    view: KeyView,
    /// The secret, shown in this response only.
    key: String,
    revision: i64,
}

async fn create_key(
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
struct KeyList {
    revision: i64,
    keys: Vec<KeyView>,
}

async fn list_keys(State(app): State<AppState>) -> Result<Json<KeyList>> {
    let c = app.store.load().await?;
    Ok(Json(KeyList {
        revision: c.revision,
        keys: c.client_keys.values().map(KeyView::from).collect(),
    }))
}

async fn get_key(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<KeyView>> {
    let c = app.store.load().await?;
    c.client_keys
        .get(&id)
        .map(|d| Json(KeyView::from(d)))
        .ok_or_else(|| Error::not_found(format!("no client key {id:?}")))
}

async fn update_key(
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
            let d = c
                .client_keys
                .get_mut(&id)
                .ok_or_else(|| Error::not_found(format!("no client key {id:?}")))?;
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

async fn revoke_key(State(app): State<AppState>, Path(id): Path<String>) -> Result<Json<KeyView>> {
    let (view, _) = app
        .mutate(|c| {
            let d = c
                .client_keys
                .get_mut(&id)
                .ok_or_else(|| Error::not_found(format!("no client key {id:?}")))?;
            d.revoked = true;
            Ok(KeyView::from(&*d))
        })
        .await?;
    tracing::info!(key_id = %view.id, "client key revoked");
    Ok(Json(view))
}

// ---------------------------------------------------------------------------------
// Tenants.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    #[serde(default)]
    limits: Option<LimitsDoc>,
    #[serde(default)]
    allowed_regions: Option<Vec<String>>,
}

#[derive(Serialize)]
struct TenantList {
    revision: i64,
    tenants: Vec<TenantDoc>,
}

async fn list_tenants(State(app): State<AppState>) -> Result<Json<TenantList>> {
    let c = app.store.load().await?;
    Ok(Json(TenantList {
        revision: c.revision,
        tenants: c.tenants.into_values().collect(),
    }))
}

async fn get_tenant(
    State(app): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TenantDoc>> {
    let mut c = app.store.load().await?;
    c.tenants
        .remove(&name)
        .map(Json)
        .ok_or_else(|| Error::not_found(format!("no tenant {name:?}")))
}

async fn put_tenant(
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

async fn delete_tenant(
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

// ---------------------------------------------------------------------------------
// Upstream key pools.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddPoolKey {
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
struct PoolKeyView {
    pool: String,
    id: String,
    label: String,
}

#[derive(Debug, Serialize)]
struct KeyLabel {
    id: String,
    label: String,
}

#[derive(Debug, Serialize)]
struct PoolView {
    name: String,
    keys: Vec<KeyLabel>,
}

#[derive(Serialize)]
struct PoolList {
    revision: i64,
    pools: Vec<PoolView>,
}

async fn add_pool_key(
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

async fn list_pools(State(app): State<AppState>) -> Result<Json<PoolList>> {
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

async fn remove_pool_key(
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

// ---------------------------------------------------------------------------------
// Regions and drains.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionBody {
    draining: bool,
}

#[derive(Debug, Serialize)]
struct RegionView {
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

async fn put_region(
    State(app): State<AppState>,
    Path(region): Path<String>,
    Body(req): Body<RegionBody>,
) -> Result<Json<RegionView>> {
    set_region(&app, region, req.draining).await
}

async fn drain_region(
    State(app): State<AppState>,
    Path(region): Path<String>,
) -> Result<Json<RegionView>> {
    set_region(&app, region, true).await
}

async fn undrain_region(
    State(app): State<AppState>,
    Path(region): Path<String>,
) -> Result<Json<RegionView>> {
    set_region(&app, region, false).await
}

#[derive(Debug, Serialize)]
struct NodeDrainView {
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

async fn drain_node(
    State(app): State<AppState>,
    Path((region, id)): Path<(String, String)>,
) -> Result<Json<NodeDrainView>> {
    set_node_drain(&app, region, id, true).await
}

async fn undrain_node(
    State(app): State<AppState>,
    Path((region, id)): Path<(String, String)>,
) -> Result<Json<NodeDrainView>> {
    set_node_drain(&app, region, id, false).await
}

// ---------------------------------------------------------------------------------
// Cluster view, leader, service discovery, health, OpenAPI.

#[derive(Debug, Serialize)]
struct NodeView {
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
struct RegionStatus {
    name: String,
    draining: bool,
    nodes: Vec<NodeView>,
}

#[derive(Serialize)]
struct ClusterView {
    revision: i64,
    leader: Option<LeaderInfo>,
    regions: Vec<RegionStatus>,
}

async fn cluster_view(State(app): State<AppState>) -> Result<Json<ClusterView>> {
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
struct LeaderView {
    leader: Option<LeaderInfo>,
    #[serde(rename = "self")]
    me: LeaderInfo,
    is_leader: bool,
}

async fn leader(State(app): State<AppState>) -> Result<Json<LeaderView>> {
    let leader = app.store.leader().await?;
    Ok(Json(LeaderView {
        leader,
        me: app.store.me().clone(),
        is_leader: app.store.is_leader(),
    }))
}

#[derive(Debug, Serialize)]
struct SdTarget {
    targets: Vec<String>,
    labels: BTreeMap<String, String>,
}

/// Prometheus HTTP service discovery: one target group per live node.
async fn prometheus_sd(State(app): State<AppState>) -> Result<Json<Vec<SdTarget>>> {
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

async fn healthz(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(
        serde_json::json!({ "status": "pass", "id": app.store.me().id, "is_leader": app.store.is_leader() }),
    )
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}
