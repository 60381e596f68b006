//! The shared dashboard at `/` of the coordinator's listener: sign-in with the admin
//! token, then server-rendered pages (cluster, traffic, limits, config, audit log)
//! whose live part reloads every 2 s. Layout: `session` (signed cookies, CSRF,
//! sign-in rate limit), `actions` (each change is an admin API call, sent to the
//! leader when this coordinator stands by), `pages` (the HTML), `assets/` (CSS and
//! the small script, embedded). Numbers come from [`crate::scrape`].

pub mod actions;
pub mod pages;
pub mod session;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use maud::Markup;
use serde::Deserialize;
use strait_node::schema::ClusterConfig;

use crate::app::App;
use crate::leader::LeaderInfo;
use crate::scrape::{now_unix, NodeSeries, RoundInfo, Scraper};
use actions::{Action, ActionForm, Executor};
use session::{Attempts, Keys, Session, COOKIE, PRE_COOKIE};

/// Audit entries kept in memory (shown while etcd cannot be read) and on the page.
const AUDIT_KEEP: usize = 1000;

/// One line of the audit log, kept in etcd (`/strait/audit/`) for every coordinator.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    pub at: String,
    pub who: String,
    pub from: String,
    pub what: String,
    pub outcome: String,
}

/// What the dashboard's handlers share.
pub struct Dash {
    app: Arc<App>,
    scraper: Arc<Scraper>,
    keys: Keys,
    attempts: Attempts,
    audit: Mutex<VecDeque<AuditEntry>>,
    exec: Arc<Executor>,
    cookie_secure: bool,
    session_ttl: Duration,
}

/// Settings of the dashboard, from the coordinator's config.
pub struct Settings<'a> {
    pub admin_token: &'a str,
    /// Signs sessions when set; else the admin token does.
    pub cluster_secret: Option<&'a str>,
    pub cookie_secure: bool,
    pub session_ttl: Duration,
}

impl Dash {
    pub fn new(app: Arc<App>, scraper: Arc<Scraper>, s: Settings) -> Arc<Dash> {
        let exec = Executor::new(crate::api::router(app.clone()), s.admin_token);
        Arc::new(Dash {
            app,
            scraper,
            keys: Keys::derive(s.cluster_secret.unwrap_or(s.admin_token)),
            attempts: Attempts::default(),
            audit: Mutex::new(VecDeque::new()),
            exec,
            cookie_secure: s.cookie_secure,
            session_ttl: s.session_ttl,
        })
    }

    fn record(&self, who: &str, from: IpAddr, what: &str, outcome: &str) {
        tracing::info!(target: "audit", who, from = %from, what, outcome, "dashboard action");
        let mut log = self.audit.lock().unwrap_or_else(|e| e.into_inner());
        if log.len() >= AUDIT_KEEP {
            log.pop_front();
        }
        let entry = AuditEntry {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            who: who.to_string(),
            from: from.to_string(),
            what: what.to_string(),
            outcome: outcome.to_string(),
        };
        let json = serde_json::to_vec(&entry).expect("an entry serialises");
        log.push_back(entry);
        // The cluster's copy: every coordinator reads the same log from etcd.
        let store = self.app.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.audit_append(json).await {
                tracing::warn!(target: "audit", "audit entry not written to etcd (kept in this coordinator's memory): {e}");
            }
        });
    }

    fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let h = headers.get(header::COOKIE)?.to_str().ok()?;
        self.keys.verify(session::cookie(h, COOKIE)?)
    }
}

/// The data every page draws from, read once per request.
pub struct View {
    pub config: ClusterConfig,
    pub leader: Option<LeaderInfo>,
    pub nodes: Vec<NodeSeries>,
    pub info: RoundInfo,
    pub now: f64,
}

/// The client's address (the proxy's, behind a reverse proxy).
struct ClientIp(IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        Ok(ClientIp(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip()),
        ))
    }
}

type DashState = Arc<Dash>;

/// The dashboard's routes (merged with the API's on the same listener).
pub fn router(dash: DashState) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/cluster") }))
        .route("/signin", get(signin_form).post(signin))
        .route("/signout", post(signout))
        .route("/cluster", get(cluster_page))
        .route("/traffic", get(traffic_page))
        .route("/limits", get(limits_page))
        .route("/config", get(config_page))
        .route("/audit", get(audit_page))
        .route("/confirm", get(confirm))
        .route("/action", post(action))
        .route("/assets/dash.css", get(css))
        .route("/assets/dash.js", get(js))
        .layer(middleware::map_response(security_headers))
        .with_state(dash)
}

/// No framing, no sniffing, no caching, nothing loaded from elsewhere.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

fn html(status: StatusCode, m: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        m.into_string(),
    )
        .into_response()
}

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/dash.css"),
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        include_str!("assets/dash.js"),
    )
        .into_response()
}

/// A state-changing request from another site: refused even before the CSRF token
/// is checked (browsers send `Origin` on POST).
fn cross_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (
        headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()),
        headers.get(header::HOST).and_then(|v| v.to_str().ok()),
    ) else {
        return false;
    };
    let origin_host = origin.split_once("://").map_or(origin, |(_, h)| h);
    origin_host != host
}

// ---------------------------------------------------------------------------------
// Sign-in and sign-out.

#[derive(Deserialize)]
struct SignIn {
    #[serde(default)]
    token: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    csrf: String,
}

fn signin_page(d: &Dash, status: StatusCode, error: Option<&str>) -> Response {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let csrf = d.keys.csrf(&format!("signin:{nonce}"));
    let me = d.app.store.me();
    let body = pages::signin(error, &csrf);
    let mut r = html(
        status,
        pages::layout("Sign in", "", None, &me.id, None, body),
    );
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        PRE_COOKIE,
        &nonce,
        Duration::from_secs(3600),
        d.cookie_secure,
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

async fn signin_form(State(d): State<DashState>, headers: HeaderMap) -> Response {
    if d.session(&headers).is_some() {
        return Redirect::to("/cluster").into_response();
    }
    signin_page(&d, StatusCode::OK, None)
}

async fn signin(
    State(d): State<DashState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(f): Form<SignIn>,
) -> Response {
    if let Err(wait) = d.attempts.check(ip) {
        d.record("-", ip, "sign in", "refused: too many failed attempts");
        return signin_page(
            &d,
            StatusCode::TOO_MANY_REQUESTS,
            Some(&format!(
                "Too many failed sign-ins from this address; wait {} s.",
                wait.as_secs().max(1)
            )),
        );
    }
    let nonce = headers
        .get(header::COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| session::cookie(c, PRE_COOKIE))
        .unwrap_or("");
    if cross_origin(&headers)
        || nonce.is_empty()
        || !d.keys.csrf_ok(&format!("signin:{nonce}"), &f.csrf)
    {
        return signin_page(
            &d,
            StatusCode::FORBIDDEN,
            Some("The form expired; sign in again."),
        );
    }
    let who: String = f
        .name
        .trim()
        .chars()
        .filter(|c| c.is_alphanumeric() || " .-_@".contains(*c))
        .take(64)
        .collect();
    let who = if who.is_empty() {
        "admin".to_string()
    } else {
        who
    };
    if !d.app.token_matches(f.token.trim()) {
        d.attempts.failed(ip);
        d.record(&who, ip, "sign in", "failed: wrong token");
        return signin_page(&d, StatusCode::UNAUTHORIZED, Some("Wrong admin token."));
    }
    d.attempts.succeeded(ip);
    d.record(&who, ip, "sign in", "ok");
    let (_, cookie) = d.keys.issue(&who, d.session_ttl);
    let mut r = Redirect::to("/cluster").into_response();
    for c in [
        session::set_cookie(COOKIE, &cookie, d.session_ttl, d.cookie_secure),
        session::set_cookie(PRE_COOKIE, "", Duration::ZERO, d.cookie_secure),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

#[derive(Deserialize)]
struct CsrfOnly {
    #[serde(default)]
    csrf: String,
}

async fn signout(
    State(d): State<DashState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(f): Form<CsrfOnly>,
) -> Response {
    let Some(s) = d.session(&headers) else {
        return Redirect::to("/signin").into_response();
    };
    if cross_origin(&headers) || !d.keys.csrf_ok(&s.sid, &f.csrf) {
        return html(
            StatusCode::FORBIDDEN,
            pages::error_page("The form expired; reload the page."),
        );
    }
    d.record(&s.who, ip, "sign out", "ok");
    let mut r = Redirect::to("/signin").into_response();
    if let Ok(v) = HeaderValue::from_str(&session::set_cookie(
        COOKIE,
        "",
        Duration::ZERO,
        d.cookie_secure,
    )) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

// ---------------------------------------------------------------------------------
// Pages.

#[derive(Deserialize, Default)]
struct PageQuery {
    #[serde(default)]
    live: Option<String>,
}

async fn view(d: &Dash) -> Result<View, String> {
    let config = d
        .app
        .store
        .load()
        .await
        .map_err(|e| format!("cannot read the cluster config: {e}"))?;
    Ok(View {
        config,
        leader: d.app.store.leader().await.ok().flatten(),
        nodes: d.scraper.nodes(),
        info: d.scraper.info(),
        now: now_unix(),
    })
}

/// A page: the live fragment alone with `?live=1`, else the whole page. Without a
/// session: sign-in (or 401 for the live fetch, which then reloads).
async fn page(
    d: &Dash,
    headers: &HeaderMap,
    q: &PageQuery,
    path: &str,
    title: &str,
    draw: fn(&View) -> Markup,
) -> Response {
    let Some(s) = d.session(headers) else {
        return if q.live.is_some() {
            StatusCode::UNAUTHORIZED.into_response()
        } else {
            Redirect::to("/signin").into_response()
        };
    };
    let body = match view(d).await {
        Ok(v) => draw(&v),
        Err(e) => pages::error_page(&e),
    };
    if q.live.is_some() {
        return html(StatusCode::OK, body);
    }
    let csrf = d.keys.csrf(&s.sid);
    let viewer = pages::Viewer {
        who: &s.who,
        csrf: &csrf,
    };
    let me = d.app.store.me();
    let live = format!("{path}?live=1");
    html(
        StatusCode::OK,
        pages::layout(title, path, Some(&viewer), &me.id, Some(&live), body),
    )
}

async fn cluster_page(
    State(d): State<DashState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    page(&d, &headers, &q, "/cluster", "Cluster", pages::cluster).await
}

async fn traffic_page(
    State(d): State<DashState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    page(&d, &headers, &q, "/traffic", "Traffic", pages::traffic).await
}

async fn limits_page(
    State(d): State<DashState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    page(&d, &headers, &q, "/limits", "Limits", pages::limits).await
}

async fn config_page(
    State(d): State<DashState>,
    headers: HeaderMap,
    Query(q): Query<PageQuery>,
) -> Response {
    page(&d, &headers, &q, "/config", "Config", pages::config).await
}

async fn audit_page(State(d): State<DashState>, headers: HeaderMap) -> Response {
    let Some(s) = d.session(&headers) else {
        return Redirect::to("/signin").into_response();
    };
    // The cluster's log from etcd; this coordinator's own entries while it cannot be read.
    let entries: Vec<AuditEntry> = match d.app.store.audit_recent(AUDIT_KEEP).await {
        Ok(docs) => docs
            .iter()
            .filter_map(|doc| serde_json::from_slice(doc).ok())
            .collect(),
        Err(e) => {
            tracing::warn!("audit log: etcd unreadable, showing this coordinator's entries: {e}");
            d.audit
                .lock()
                .map(|l| l.iter().rev().cloned().collect())
                .unwrap_or_default()
        }
    };
    let csrf = d.keys.csrf(&s.sid);
    let viewer = pages::Viewer {
        who: &s.who,
        csrf: &csrf,
    };
    html(
        StatusCode::OK,
        pages::layout(
            "Audit log",
            "/audit",
            Some(&viewer),
            &d.app.store.me().id,
            None,
            pages::audit(&entries),
        ),
    )
}

// ---------------------------------------------------------------------------------
// Actions: confirm, then do.

fn action_page(d: &Dash, s: &Session, title: &str, status: StatusCode, body: Markup) -> Response {
    let csrf = d.keys.csrf(&s.sid);
    let viewer = pages::Viewer {
        who: &s.who,
        csrf: &csrf,
    };
    html(
        status,
        pages::layout(title, "", Some(&viewer), &d.app.store.me().id, None, body),
    )
}

async fn confirm(
    State(d): State<DashState>,
    headers: HeaderMap,
    Query(f): Query<ActionForm>,
) -> Response {
    let Some(s) = d.session(&headers) else {
        return Redirect::to("/signin").into_response();
    };
    match f.action() {
        Ok(a) => {
            let editable = matches!(
                a,
                Action::CreateKey { .. } | Action::KeyLimits { .. } | Action::TenantLimits { .. }
            );
            let body = pages::confirm(&a.describe(), &f, &d.keys.csrf(&s.sid), editable);
            action_page(&d, &s, "Confirm", StatusCode::OK, body)
        }
        Err(e) => action_page(
            &d,
            &s,
            "Confirm",
            StatusCode::BAD_REQUEST,
            pages::error_page(&e),
        ),
    }
}

async fn action(
    State(d): State<DashState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Form(f): Form<ActionForm>,
) -> Response {
    let Some(s) = d.session(&headers) else {
        return Redirect::to("/signin").into_response();
    };
    if cross_origin(&headers) || !d.keys.csrf_ok(&s.sid, &f.csrf) {
        d.record(&s.who, ip, &f.op, "refused: missing or wrong CSRF token");
        return action_page(
            &d,
            &s,
            "Refused",
            StatusCode::FORBIDDEN,
            pages::error_page("The form expired or came from another site; nothing was changed."),
        );
    }
    let a = match f.action() {
        Ok(a) => a,
        Err(e) => {
            return action_page(
                &d,
                &s,
                "Refused",
                StatusCode::BAD_REQUEST,
                pages::error_page(&e),
            )
        }
    };
    let tenant_regions = match &a {
        Action::TenantLimits { name, .. } => d
            .app
            .store
            .load()
            .await
            .ok()
            .and_then(|c| c.tenants.get(name).and_then(|t| t.allowed_regions.clone())),
        _ => None,
    };
    let (method, path, body) = a.request(tenant_regions);
    let what = a.describe();
    let out = d.exec.call(method, &path, body).await;
    let ok = out.status.is_success();
    let outcome = if ok {
        format!("ok ({})", out.at)
    } else {
        format!("failed: {}", out.message())
    };
    d.record(&s.who, ip, &what, &outcome);
    let key = match (&a, ok) {
        (Action::CreateKey { .. }, true) => Some((
            out.json["id"].as_str().unwrap_or("").to_string(),
            out.json["key"].as_str().unwrap_or("").to_string(),
        )),
        _ => None,
    };
    let body = pages::result(
        ok,
        &what,
        &out.message(),
        &out.at,
        key.as_ref().map(|(i, k)| (i.as_str(), k.as_str())),
    );
    let status = out.status;
    action_page(&d, &s, if ok { "Done" } else { "Failed" }, status, body)
}
