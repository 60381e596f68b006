//! The dashboard's HTML (maud): the layout, the sign-in form, one function per page
//! and the live fragment each page refreshes every 2 s. Charts are inline SVG
//! polylines drawn here; nothing is loaded from elsewhere.

use std::collections::BTreeMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;
use strait_node::schema::{ClusterConfig, LimitsDoc};
use strait_node::stats::NodeStats;

use super::{AuditEntry, View};
use crate::scrape::{merge_rounds, points, NodeSeries, Point};

/// The pages of the navigation bar: (path, title).
pub const PAGES: &[(&str, &str)] = &[
    ("/cluster", "Cluster"),
    ("/traffic", "Traffic"),
    ("/limits", "Limits"),
    ("/config", "Config"),
    ("/audit", "Audit log"),
];

/// Who is signed in, for the header and the forms.
pub struct Viewer<'a> {
    pub who: &'a str,
    pub csrf: &'a str,
}

/// The whole page around `body`; `live`: the URL the live part reloads from.
pub fn layout(
    title: &str,
    active: &str,
    viewer: Option<&Viewer>,
    coordinator: &str,
    live: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Strait" }
                link rel="stylesheet" href="/assets/dash.css";
                script src="/assets/dash.js" defer {}
            }
            body {
                header {
                    span.brand { "Strait" }
                    @if let Some(v) = viewer {
                        nav {
                            @for (path, name) in PAGES {
                                a href=(path) class=@if *path == active { "active" } { (name) }
                            }
                        }
                        form.signout method="post" action="/signout" {
                            span.who { (v.who) " · " (coordinator) }
                            input type="hidden" name="csrf" value=(v.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    @if let Some(src) = live {
                        p.updated { "Live: updates every 2 s. Last update " span #updated { "now" } "." }
                        div #live data-src=(src) { (body) }
                    } @else {
                        (body)
                    }
                }
            }
        }
    }
}

pub fn signin(error: Option<&str>, csrf: &str) -> Markup {
    html! {
        form.signin method="post" action="/signin" {
            @if let Some(e) = error { p.error #signin-error { (e) } }
            label { "Admin token" input #token type="password" name="token" autocomplete="current-password" required autofocus; }
            label { "Your name (for the audit log)" input #name type="text" name="name" maxlength="64" placeholder="admin"; }
            input type="hidden" name="csrf" value=(csrf);
            button #signin type="submit" { "Sign in" }
        }
    }
}

// ---------------------------------------------------------------------------------
// Formatting.

fn ms(secs: Option<f64>) -> String {
    match secs {
        None => "–".into(),
        Some(s) if s < 0.01 => format!("{:.1} ms", s * 1000.0),
        Some(s) if s < 1.0 => format!("{:.0} ms", s * 1000.0),
        Some(s) => format!("{s:.2} s"),
    }
}

fn rate(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}/s")
    } else {
        format!("{v:.1}/s")
    }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn age(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

fn limits_text(l: &LimitsDoc) -> String {
    let parts: Vec<String> = [
        ("rpm", l.rpm),
        ("itpm", l.itpm),
        ("otpm", l.otpm),
        ("concurrency", l.concurrency),
        ("daily_tokens", l.daily_tokens),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|v| format!("{k}={v}")))
    .collect();
    if parts.is_empty() {
        "unlimited".into()
    } else {
        parts.join(", ")
    }
}

fn limits_query(l: &LimitsDoc) -> String {
    let f = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
    format!(
        "rpm={}&itpm={}&otpm={}&concurrency={}&daily_tokens={}",
        f(l.rpm),
        f(l.itpm),
        f(l.otpm),
        f(l.concurrency),
        f(l.daily_tokens)
    )
}

/// An inline SVG line of `values` (oldest first), scaled to its own maximum.
fn spark(values: &[f64], label: &str) -> Markup {
    let (w, h) = (300.0, 48.0);
    // One value is drawn as a level line rather than an invisible point.
    let one;
    let values = if values.len() == 1 {
        one = [values[0], values[0]];
        &one[..]
    } else {
        values
    };
    let max = values.iter().copied().fold(0.0_f64, f64::max);
    let n = values.len();
    let pts: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = if n > 1 {
                i as f64 * w / (n - 1) as f64
            } else {
                w
            };
            let y = if max > 0.0 {
                h - 2.0 - (v / max) * (h - 4.0)
            } else {
                h - 2.0
            };
            format!("{x:.1},{y:.1}")
        })
        .collect();
    let svg = format!(
        r#"<svg class="spark" viewBox="0 0 {w} {h}" preserveAspectRatio="none" role="img" aria-label="{label}"><polyline fill="none" stroke="currentColor" stroke-width="1.5" vector-effect="non-scaling-stroke" points="{}"/></svg>"#,
        pts.join(" ")
    );
    PreEscaped(svg)
}

fn chart(title: &str, values: &[f64], now: String) -> Markup {
    html! {
        figure.chart {
            figcaption { span { (title) } b { (now) } }
            (spark(values, title))
        }
    }
}

fn status_badge(s: &str) -> Markup {
    let class = match s {
        "pass" | "serving" | "ok" | "usable" => "b pass",
        "warn" | "draining" | "drain requested" | "cooling" => "b warn",
        _ => "b fail",
    };
    html! { span class=(class) { (s) } }
}

// ---------------------------------------------------------------------------------
// Data shared by the pages.

/// Regions in display order: from the config, from node records, from gone nodes.
fn regions(v: &View) -> Vec<String> {
    let mut r: Vec<String> = v.config.regions.keys().cloned().collect();
    for n in &v.nodes {
        if !r.contains(&n.record.region) {
            r.push(n.record.region.clone());
        }
    }
    r.sort();
    r
}

fn nodes_in<'a>(v: &'a View, region: &str) -> Vec<&'a NodeSeries> {
    v.nodes
        .iter()
        .filter(|n| n.record.region == region)
        .collect()
}

fn drain_requested(c: &ClusterConfig, region: &str, node: &str) -> bool {
    c.regions.get(region).is_some_and(|r| r.draining)
        || c.drains
            .get(&(region.to_string(), node.to_string()))
            .is_some_and(|d| d.draining)
}

fn node_state(v: &View, n: &NodeSeries) -> &'static str {
    if n.gone_since.is_some() {
        return "gone";
    }
    match n.record.state {
        strait_node::schema::NodeState::Draining => "draining",
        strait_node::schema::NodeState::Serving
            if drain_requested(&v.config, &n.record.region, &n.record.id) =>
        {
            "drain requested"
        }
        strait_node::schema::NodeState::Serving => "serving",
    }
}

fn confirm_link(query: &str, text: &str, id: &str) -> Markup {
    html! { a.button href=(format!("/confirm?{query}")) id=(id) { (text) } }
}

// ---------------------------------------------------------------------------------
// Cluster.

pub fn cluster(v: &View) -> Markup {
    html! {
        section.panel {
            p {
                "Leader: "
                @match &v.leader {
                    Some(l) => { b #leader { (l.id) } " (" (l.region) ", " (l.url) ")" },
                    None => { b.fail { "none elected" } },
                }
                " · config revision " (v.config.revision)
                " · scrape round " (v.info.round)
            }
            @if let Some(e) = &v.info.store_error {
                p.error { "etcd: " (e) " (showing the last known nodes)" }
            }
        }
        @for region in regions(v) {
            @let draining = v.config.regions.get(&region).is_some_and(|r| r.draining);
            section.panel.region id=(format!("region-{region}")) {
                h2 {
                    "Region " (region) " "
                    @if draining { (status_badge("draining")) }
                    span.actions {
                        @if draining {
                            (confirm_link(&format!("op=undrain_region&region={region}"), "Undrain region", &format!("undrain-region-{region}")))
                        } @else {
                            (confirm_link(&format!("op=drain_region&region={region}"), "Drain region", &format!("drain-region-{region}")))
                        }
                    }
                }
                @let nodes = nodes_in(v, &region);
                @if nodes.is_empty() {
                    p.muted { "No nodes registered." }
                } @else {
                    div.scroll { table {
                        thead { tr {
                            th { "Node" } th { "State" } th { "Readiness" } th { "Path" }
                            th { "Relaying" } th { "Version" } th { "Uptime" } th { "Last scrape" } th {}
                        } }
                        tbody {
                            @for n in nodes {
                                (node_row(v, n))
                            }
                        }
                    } }
                }
            }
        }
    }
}

fn node_row(v: &View, n: &NodeSeries) -> Markup {
    let state = node_state(v, n);
    let latest = n.latest();
    let last = n.last();
    let r = &n.record;
    let p = &r.path;
    html! {
        tr id=(format!("node-{}-{}", r.region, r.id)) data-state=(state) {
            td { b { (r.id) } br; small.muted { (r.public_addr) } }
            td.state { (status_badge(state)) }
            td {
                @match latest {
                    Some(s) => {
                        (status_badge(&s.ready.status))
                        @for c in &s.ready.failing {
                            br; small { (c.name) ": " (c.status) @if !c.output.is_empty() { " – " (c.output) } }
                        }
                    },
                    None => { span.muted { "unknown" } },
                }
            }
            td {
                @if !p.status.is_empty() { (status_badge(&p.status)) " " }
                small {
                    "TTFB " (ms(p.ttfb_ms.map(|x| x / 1000.0)))
                    " · errors " (pct(p.error_rate))
                    @if p.consecutive_failures > 0 { " · " (p.consecutive_failures) " failing in a row" }
                }
            }
            td { @match latest {
                Some(s) => { (s.active_streams) " streams · " (s.downstream_connections) " conns" },
                None => { "–" },
            } }
            td { (r.version) }
            td { @match latest { Some(s) => { (age(s.uptime_seconds as f64)) }, None => { "–" } } }
            td.scrape {
                @match (n.gone_since, last) {
                    (Some(g), _) => { span.fail { "gone " (age(v.now - g)) " ago" } },
                    (None, Some(s)) if s.error.is_some() => {
                        span.fail { "failed: " (s.error.as_deref().unwrap_or("")) }
                    },
                    (None, Some(s)) => { "ok, " (age(v.now - s.at)) " ago" },
                    (None, None) => { span.muted { "not yet" } },
                }
            }
            td.actions {
                @if n.gone_since.is_none() {
                    @if drain_requested(&v.config, &r.region, &r.id) {
                        (confirm_link(&format!("op=undrain_node&region={}&node={}", r.region, r.id), "Undrain", &format!("undrain-{}-{}", r.region, r.id)))
                    } @else {
                        (confirm_link(&format!("op=drain_node&region={}&node={}", r.region, r.id), "Drain", &format!("drain-{}-{}", r.region, r.id)))
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Traffic.

fn summary(p: &Point) -> Markup {
    html! {
        dl.numbers {
            div { dt { "Requests" } dd.rps { (rate(p.rps)) } }
            div { dt { "Error rate" } dd { (pct(p.error_rate())) } }
            div { dt { "p50 / p99" } dd { (ms(p.latency.quantile(0.5))) " / " (ms(p.latency.quantile(0.99))) } }
            div { dt { "TTFT p50 / p99" } dd { (ms(p.ttft.quantile(0.5))) " / " (ms(p.ttft.quantile(0.99))) } }
            div { dt { "Tokens in / out" } dd { (rate(p.tokens_in_ps)) " / " (rate(p.tokens_out_ps)) } }
        }
    }
}

/// The counts of each kind over the last minute (from the sample about 60 s back).
fn recent_errors(nodes: &[&NodeSeries], now: f64) -> BTreeMap<(String, String), (u64, u64)> {
    let mut out: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for n in nodes {
        let Some(latest) = n.latest() else { continue };
        let before = n
            .samples
            .iter()
            .filter(|s| s.at <= now - 60.0)
            .filter_map(|s| s.stats.as_deref())
            .next_back();
        let mut add =
            |group: &str, m: &BTreeMap<String, u64>, old: Option<&BTreeMap<String, u64>>| {
                for (k, total) in m {
                    let prev = old.and_then(|o| o.get(k)).copied().unwrap_or(0);
                    let e = out.entry((group.to_string(), k.clone())).or_default();
                    e.0 += total.saturating_sub(prev);
                    e.1 += total;
                }
            };
        add(
            "upstream",
            &latest.errors.upstream,
            before.map(|b| &b.errors.upstream),
        );
        add(
            "gateway",
            &latest.errors.gateway,
            before.map(|b| &b.errors.gateway),
        );
        add(
            "stream",
            &latest.errors.stream,
            before.map(|b| &b.errors.stream),
        );
    }
    out
}

fn deferred_panel(nodes: &[&NodeSeries]) -> Markup {
    let reports: Vec<&Value> = nodes
        .iter()
        .filter(|n| n.gone_since.is_none())
        .filter_map(|n| n.latest().and_then(|s| s.deferred.as_ref()))
        .collect();
    html! {
        div.deferred {
            h3 { "Deferred queue" }
            @if reports.is_empty() {
                p.muted { "not configured" }
            } @else {
                @let depth: u64 = reports.iter().filter_map(|d| d["depth"].as_u64()).sum();
                @let oldest = reports.iter().filter_map(|d| d["oldest_age_seconds"].as_f64()).fold(0.0, f64::max);
                @let dead: u64 = reports.iter().filter_map(|d| d["dead_lettered"].as_u64()).sum();
                @let down = reports.iter().filter(|d| d["reachable"] == Value::Bool(false)).count();
                @let kind = reports.iter().find_map(|d| Some(format!("{} + {}", d["queue"].as_str()?, d["store"].as_str()?))).unwrap_or_default();
                dl.numbers {
                    div { dt { "Queue" } dd.queue-kind { (kind) } }
                    @if down > 0 {
                        div { dt { "Unreachable" } dd.bad { (down) " node(s): deferral answers 503" } }
                    }
                    div { dt { "Depth" } dd { (depth) } }
                    div { dt { "Oldest" } dd { (age(oldest)) } }
                    div { dt { "Dead letters" } dd { (dead) } }
                }
            }
        }
    }
}

pub fn traffic(v: &View) -> Markup {
    html! {
        @for region in regions(v) {
            @let nodes = nodes_in(v, &region);
            @let per_node: Vec<(&NodeSeries, Vec<Point>)> = nodes.iter().map(|n| (*n, points(&n.samples))).collect();
            @let merged = merge_rounds(per_node.iter().map(|(_, p)| p));
            @let now = merged.last().cloned().unwrap_or_default();
            section.panel.region id=(format!("traffic-{region}")) {
                h2 { "Region " (region) }
                (summary(&now))
                div.charts {
                    (chart("Requests/s", &merged.iter().map(|p| p.rps).collect::<Vec<_>>(), rate(now.rps)))
                    (chart("Error rate", &merged.iter().map(Point::error_rate).collect::<Vec<_>>(), pct(now.error_rate())))
                    (chart("p99 latency", &merged.iter().map(|p| p.latency.quantile(0.99).unwrap_or(0.0)).collect::<Vec<_>>(), ms(now.latency.quantile(0.99))))
                    (chart("TTFT p50", &merged.iter().map(|p| p.ttft.quantile(0.5).unwrap_or(0.0)).collect::<Vec<_>>(), ms(now.ttft.quantile(0.5))))
                    (chart("Tokens out/s", &merged.iter().map(|p| p.tokens_out_ps).collect::<Vec<_>>(), rate(now.tokens_out_ps)))
                }
                div.scroll { table {
                    thead { tr { th { "Node" } th { "Req/s" } th { "Errors" } th { "p50" } th { "p99" } th { "TTFT p50" } th { "Tokens in/out per s" } th { "Total requests" } th { "Last 15 min" } } }
                    tbody {
                        @for (n, pts) in &per_node {
                            @let p = pts.last().cloned().unwrap_or_default();
                            tr id=(format!("traffic-node-{}", n.record.id)) {
                                td { (n.record.id) @if n.gone_since.is_some() { " " (status_badge("gone")) } }
                                td.rps { (rate(p.rps)) }
                                td { (pct(p.error_rate())) }
                                td { (ms(p.latency.quantile(0.5))) }
                                td { (ms(p.latency.quantile(0.99))) }
                                td { (ms(p.ttft.quantile(0.5))) }
                                td { (rate(p.tokens_in_ps)) " / " (rate(p.tokens_out_ps)) }
                                td.total { (n.latest().map_or(0, |s| s.requests.total)) }
                                td { (spark(&pts.iter().map(|p| p.rps).collect::<Vec<_>>(), "requests per second")) }
                            }
                        }
                    }
                } }
                @let errors = recent_errors(&nodes, v.now);
                h3 { "Errors by kind" }
                @if errors.is_empty() {
                    p.muted { "None since the nodes started." }
                } @else {
                    table.compact {
                        thead { tr { th { "Source" } th { "Kind" } th { "Last minute" } th { "Since start" } } }
                        tbody { @for ((g, k), (recent, total)) in &errors {
                            tr { td { (g) } td { (k) } td { (recent) } td { (total) } }
                        } }
                    }
                }
                (deferred_panel(&nodes))
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Limits.

pub fn limits(v: &View) -> Markup {
    let live: Vec<(&NodeSeries, &NodeStats)> = v
        .nodes
        .iter()
        .filter(|n| n.gone_since.is_none())
        .filter_map(|n| n.latest().map(|s| (n, s.as_ref())))
        .collect();
    // With Redis every node reports the same cluster-wide figures: one row per scope.
    let mut seen = std::collections::HashSet::new();
    let mut scopes: Vec<(&str, &strait_node::stats::ScopeStats)> = live
        .iter()
        .flat_map(|(n, s)| {
            let shared = s.limiter.backend == "redis";
            s.limiter.scopes.iter().map(move |sc| (n, shared, sc))
        })
        .filter(|(_, shared, sc)| {
            !*shared || sc.used.is_empty() || seen.insert((sc.kind.as_str(), sc.name.as_str()))
        })
        .map(|(n, shared, sc)| {
            let who = if shared && !sc.used.is_empty() {
                "cluster (Redis)"
            } else {
                n.record.id.as_str()
            };
            (who, sc)
        })
        .collect();
    scopes.sort_by(|a, b| b.1.fullness().total_cmp(&a.1.fullness()));
    scopes.truncate(15);
    html! {
        section.panel {
            h2 { "Closest to their limits" }
            @if scopes.is_empty() {
                p.muted { "No key or tenant has limits on the live nodes." }
            } @else {
                div.scroll { table #closest {
                    thead { tr { th { "Node" } th { "Scope" } th { "Name" } th { "Usage (current windows)" } th { "Fullest" } } }
                    tbody { @for (who, sc) in &scopes {
                        tr {
                            td { (who) }
                            td { (sc.kind) }
                            td { (sc.name) }
                            td { @for (dim, limit) in &sc.limits {
                                @match sc.used.get(dim) {
                                    Some(u) => { (dim) " " (u) "/" (limit) br; },
                                    None => { (dim) " ?/" (limit) " (not read from Redis yet, or Redis unreachable)" br; },
                                }
                            } }
                            td { meter min="0" max="1" low="0.7" high="0.9" value=(format!("{:.3}", sc.fullness().min(1.0))) {} " " (pct(sc.fullness())) }
                        }
                    } }
                } }
            }
        }
        section.panel {
            h2 { "429s: gateway vs upstream" }
            div.scroll { table {
                thead { tr { th { "Node" } th { "Limiter" } th { "Gateway 429s" } th { "Upstream 429s" } th { "Gateway/s now" } th { "Upstream/s now" } } }
                tbody { @for (n, s) in &live {
                    @let pts = points(&n.samples);
                    @let p = pts.last().cloned().unwrap_or_default();
                    tr {
                        td { (n.record.id) }
                        td { (s.limiter.backend) @if s.limiter.degraded { " " (status_badge("degraded")) } }
                        td { (s.rate_limited.gateway) }
                        td { (s.rate_limited.upstream) }
                        td { (rate(p.gateway_429_ps)) }
                        td { (rate(p.upstream_429_ps)) }
                    }
                } }
            } }
        }
        section.panel {
            h2 { "Upstream key pools" }
            p.muted { "Cooling: a scope paused after an upstream 429 (transient, seconds). Resting or retired: the key or its organisation is exhausted or refused (billing, spend limit, revoked) and stays out until it rests out or is replaced." }
            div.scroll { table {
                thead { tr { th { "Node" } th { "Ready" } th { "Cooling" } th { "Resting" } th { "Retired" } th { "Keys not fully usable" } } }
                tbody { @for (n, s) in &live {
                    tr {
                        td { (n.record.id) }
                        td { (s.keys.ready) } td { (s.keys.cooling) } td { (s.keys.resting) } td { (s.keys.retired) }
                        td { @for pool in &s.keys.pools { @for k in &pool.keys {
                            @if k.state != "usable" || !k.cooling.is_empty() {
                                (pool.pool) "/" (k.label) ": "
                                @if k.state != "usable" { (status_badge(&k.state)) " exhausted" }
                                @for (scope, left) in &k.cooling { " " (status_badge("cooling")) " " (scope) " " (age(*left)) " (transient)" }
                                br;
                            }
                        } } }
                    }
                } }
            } }
        }
    }
}

// ---------------------------------------------------------------------------------
// Config.

pub fn config(v: &View) -> Markup {
    let c = &v.config;
    html! {
        section.panel {
            h2 { "Client keys" }
            div.scroll { table #keys {
                thead { tr { th { "Id" } th { "Name" } th { "Tenant" } th { "Pool" } th { "Limits" } th { "Regions" } th { "Created" } th { "State" } th {} } }
                tbody { @for k in c.client_keys.values() {
                    tr id=(format!("key-{}", k.name)) {
                        td { code { (k.id) } }
                        td { (k.name) }
                        td { (k.tenant.as_deref().unwrap_or("–")) }
                        td { (k.pool.as_deref().unwrap_or("default")) }
                        td { (limits_text(&k.limits)) }
                        td { (k.allowed_regions.as_ref().map_or("all".to_string(), |r| r.join(", "))) }
                        td { (k.created_at) }
                        td { @if k.revoked { (status_badge("revoked")) } @else { (status_badge("ok")) } }
                        td.actions { @if !k.revoked {
                            (confirm_link(&format!("op=key_limits&id={}&{}", k.id, limits_query(&k.limits)), "Limits", &format!("limits-{}", k.name)))
                            " "
                            (confirm_link(&format!("op=revoke_key&id={}", k.id), "Revoke", &format!("revoke-{}", k.name)))
                        } }
                    }
                } }
            } }
            h3 { "Create a key" }
            form.inline method="get" action="/confirm" {
                input type="hidden" name="op" value="create_key";
                label { "Name" input #new-key-name name="name" required pattern="[a-z0-9_-]{1,64}"; }
                label { "Tenant" input name="tenant" placeholder="none"; }
                label { "rpm" input name="rpm" inputmode="numeric"; }
                label { "otpm" input name="otpm" inputmode="numeric"; }
                button #new-key type="submit" { "Create…" }
            }
        }
        section.panel {
            h2 { "Tenants" }
            @if c.tenants.is_empty() { p.muted { "None." } } @else {
                table.compact {
                    thead { tr { th { "Name" } th { "Limits" } th { "Regions" } th {} } }
                    tbody { @for t in c.tenants.values() {
                        tr {
                            td { (t.name) }
                            td { (limits_text(&t.limits)) }
                            td { (t.allowed_regions.as_ref().map_or("all".to_string(), |r| r.join(", "))) }
                            td { (confirm_link(&format!("op=tenant_limits&name={}&{}", t.name, limits_query(&t.limits)), "Limits", &format!("tenant-limits-{}", t.name))) }
                        }
                    } }
                }
            }
        }
        section.panel {
            h2 { "Upstream pools" }
            p.muted { "Labels and organisations only; keys are sealed in etcd and never shown." }
            @if c.pools.is_empty() { p.muted { "None." } } @else {
                table.compact {
                    thead { tr { th { "Pool" } th { "Keys" } } }
                    tbody { @for p in c.pools.values() {
                        tr { td { (p.name) } td { @for k in &p.keys { (k.label) @if let Some(o) = &k.org { " (" (o) ")" } br; } } }
                    } }
                }
            }
        }
        section.panel {
            h2 { "Region policies" }
            @if c.regions.is_empty() && c.drains.is_empty() { p.muted { "None: every region serves." } } @else {
                table.compact {
                    thead { tr { th { "Region" } th { "Policy" } } }
                    tbody {
                        @for (name, r) in &c.regions { tr { td { (name) } td { @if r.draining { "draining" } @else { "serving" } } } }
                        @for ((region, node), d) in &c.drains { tr { td { (region) "/" (node) } td { @if d.draining { "node draining" } @else { "serving" } } } }
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Actions and the audit log.

/// The confirmation step: what will happen, the editable limits where they apply.
pub fn confirm(
    what: &str,
    form: &super::actions::ActionForm,
    csrf: &str,
    editable_limits: bool,
) -> Markup {
    html! {
        section.panel.confirm {
            p { "You are about to " b #confirm-what { (what) } "." }
            form method="post" action="/action" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="op" value=(form.op);
                input type="hidden" name="region" value=(form.region);
                input type="hidden" name="node" value=(form.node);
                input type="hidden" name="id" value=(form.id);
                input type="hidden" name="name" value=(form.name);
                input type="hidden" name="tenant" value=(form.tenant);
                @if editable_limits {
                    fieldset {
                        legend { "Limits (empty: unlimited)" }
                        label { "rpm" input name="rpm" value=(form.rpm) inputmode="numeric"; }
                        label { "itpm" input name="itpm" value=(form.itpm) inputmode="numeric"; }
                        label { "otpm" input name="otpm" value=(form.otpm) inputmode="numeric"; }
                        label { "concurrency" input name="concurrency" value=(form.concurrency) inputmode="numeric"; }
                        label { "daily_tokens" input name="daily_tokens" value=(form.daily_tokens) inputmode="numeric"; }
                    }
                }
                button #confirm type="submit" { "Confirm" }
                " "
                a href="javascript:history.back()" { "Cancel" }
            }
        }
    }
}

pub fn result(ok: bool, what: &str, message: &str, at: &str, key: Option<(&str, &str)>) -> Markup {
    html! {
        section.panel {
            @if ok {
                p.ok #result { "Done: " (what) " (applied by " (at) ")." }
            } @else {
                p.error #result { "Failed: " (what) ": " (message) }
            }
            @if let Some((id, secret)) = key {
                p { "The new key " code { (id) } " is shown once; copy it now:" }
                pre #new-key-secret { (secret) }
            }
            p { a href="/cluster" { "Cluster" } " · " a href="/config" { "Config" } }
        }
    }
}

pub fn error_page(message: &str) -> Markup {
    html! { section.panel { p.error { (message) } p { a href="/cluster" { "Back" } } } }
}

pub fn audit(entries: &[AuditEntry]) -> Markup {
    html! {
        section.panel {
            p.muted { "The cluster's log, newest first: kept in etcd and shown by every coordinator (the last 1000 here; 10,000 kept), and logged with target \"audit\"." }
            div.scroll { table #audit {
                thead { tr { th { "When" } th { "Who" } th { "From" } th { "What" } th { "Outcome" } } }
                tbody { @for e in entries {
                    tr { td { (e.at) } td { (e.who) } td { (e.from) } td { (e.what) } td { (e.outcome) } }
                } }
            } }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::Arc;

    use strait_node::stats::{LimiterStats, ScopeStats};

    use super::*;
    use crate::scrape::Sample;

    fn node(id: &str, backend: &str, used: u64) -> NodeSeries {
        let record = serde_json::from_value(serde_json::json!({
            "id": id, "region": "r1", "public_addr": "127.0.0.2:8080",
            "admin_addr": "127.0.0.2:9090", "version": "test",
            "started_at": "2026-12-03T00:00:00Z", "state": "serving",
            "path": serde_json::to_value(strait_node::schema::PathHealth::default()).unwrap(),
        }))
        .expect("a node record");
        let scope = ScopeStats {
            kind: "key".into(),
            name: "busy-key".into(),
            limits: [("requests".to_string(), 10)].into(),
            used: [("requests".to_string(), used)].into(),
        };
        let stats = NodeStats {
            limiter: LimiterStats {
                backend: backend.into(),
                scopes: vec![scope],
                ..Default::default()
            },
            ..Default::default()
        };
        NodeSeries {
            record,
            gone_since: None,
            samples: VecDeque::from([Sample {
                at: 0.0,
                round: 1,
                stats: Some(Arc::new(stats)),
                error: None,
            }]),
        }
    }

    fn view(nodes: Vec<NodeSeries>) -> View {
        View {
            config: ClusterConfig::default(),
            leader: None,
            nodes,
            info: Default::default(),
            now: 0.0,
        }
    }

    #[test]
    fn redis_usage_is_one_cluster_row_and_local_usage_one_row_per_node() {
        let shared = limits(&view(vec![
            node("n-a", "redis", 7),
            node("n-b", "redis", 7),
        ]))
        .into_string();
        assert_eq!(shared.matches("busy-key").count(), 1, "{shared}");
        assert!(shared.contains("cluster (Redis)") && shared.contains("requests 7/10"));

        let local = limits(&view(vec![
            node("n-a", "local", 3),
            node("n-b", "local", 4),
        ]))
        .into_string();
        assert_eq!(local.matches("busy-key").count(), 2, "{local}");
        assert!(local.contains("n-a") && local.contains("n-b"));
    }
}
