//! The admin HTTP API (axum): routes, the admin-token layer, the JSON body
//! extractor and the checks every resource shares. Every route is registered through
//! [`RouteTable`], which also lists them, so a test can hold the OpenAPI document to
//! the router. The handlers live one file per resource: `keys`, `tenants`, `pools`,
//! `drains` (regions and nodes), `cluster` (cluster view, leader, service discovery,
//! health, OpenAPI).

use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::{header, Method};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{self, MethodRouter};
use axum::{Json, Router};
use strait_node::schema::valid_name;

use crate::app::App;
use crate::error::{Error, ErrorKind, Result};

mod cluster;
mod drains;
mod keys;
mod pools;
mod tenants;

use cluster::{cluster_view, healthz, leader, openapi, prometheus_sd};
use drains::{drain_node, drain_region, put_region, undrain_node, undrain_region};
pub use keys::CLIENT_KEY_PREFIX;
use keys::{create_key, get_key, list_keys, revoke_key, update_key};
use pools::{add_pool_key, list_pools, remove_pool_key, update_pool_key};
use tenants::{delete_tenant, get_tenant, list_tenants, put_tenant};

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
            Method::PATCH,
            "/v1/pools/{name}/keys/{id}",
            patch(update_pool_key),
        )
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
// Validation helpers shared by the resources.

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
