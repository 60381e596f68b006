//! The client subcommands: each one request (or a read then a write) to the admin
//! API, answers printed as JSON; a write refused by a standby is retried at the leader.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

use super::{Command, DrainTarget, KeysCmd, LimitArgs, NodesCmd, PoolsCmd, RegionsCmd, TenantsCmd};
use crate::error::{Error, Result};

impl LimitArgs {
    fn any(&self) -> bool {
        self.rpm.is_some()
            || self.itpm.is_some()
            || self.otpm.is_some()
            || self.concurrency.is_some()
            || self.daily_tokens.is_some()
    }

    /// `base` with the given flags overlaid.
    fn overlay(&self, base: &Value) -> Value {
        let mut m = base.as_object().cloned().unwrap_or_default();
        for (k, v) in [
            ("rpm", self.rpm),
            ("itpm", self.itpm),
            ("otpm", self.otpm),
            ("concurrency", self.concurrency),
            ("daily_tokens", self.daily_tokens),
        ] {
            if let Some(v) = v {
                m.insert(k.to_string(), json!(v));
            }
        }
        Value::Object(m)
    }
}

/// A minimal admin API client (HTTP or HTTPS).
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl AdminClient {
    pub fn new(base: String, token: Option<String>) -> AdminClient {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: Client::builder(TokioExecutor::new()).build(https),
        }
    }

    /// Sends one request; a JSON answer on 2xx, else an error with the API's message.
    /// A `not_leader` answer naming another coordinator is retried there once.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        match self
            .call_at(&self.base, method.clone(), path, body.clone())
            .await
        {
            Err((Some(leader_url), _)) if leader_url.trim_end_matches('/') != self.base => {
                eprintln!(
                    "note: {} is not the leader; sending to {leader_url}",
                    self.base
                );
                self.call_at(leader_url.trim_end_matches('/'), method, path, body)
                    .await
                    .map_err(|(_, e)| e)
            }
            r => r.map_err(|(_, e)| e),
        }
    }

    /// [`AdminClient::call`], then prints the answer as pretty JSON.
    pub async fn show(&self, method: Method, path: &str, body: Option<Value>) -> Result<()> {
        print(&self.call(method, path, body).await?);
        Ok(())
    }

    async fn call_at(
        &self,
        base: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> std::result::Result<Value, (Option<String>, Error)> {
        let plain = |e: Error| (None, e);
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{base}{path}"));
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let bytes = match &body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                Bytes::from(serde_json::to_vec(b).map_err(|e| plain(Error::client(e.to_string())))?)
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(bytes))
            .map_err(|e| plain(Error::client(format!("bad URL {base}{path}: {e}"))))?;
        let resp = tokio::time::timeout(Duration::from_secs(15), self.http.request(req))
            .await
            .map_err(|_| plain(Error::client(format!("{base}: no answer within 15 s"))))?
            .map_err(|e| plain(Error::client(format!("cannot reach {base}: {e}"))))?;
        let status = resp.status();
        let data = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| plain(Error::client(e.to_string())))?
            .to_bytes();
        let value: Value = serde_json::from_slice(&data)
            .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&data) }));
        if status.is_success() {
            return Ok(value);
        }
        let kind = value["error"]["type"]
            .as_str()
            .unwrap_or("error")
            .to_string();
        let msg = value["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| value.to_string());
        let leader = if status == StatusCode::SERVICE_UNAVAILABLE && kind == "not_leader" {
            value["error"]["leader"]["url"].as_str().map(str::to_string)
        } else {
            None
        };
        Err((
            leader,
            Error::client(format!("HTTP {}: {kind}: {msg}", status.as_u16())),
        ))
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn regions_value(list: &[String]) -> Option<Value> {
    (!list.is_empty()).then(|| json!(list))
}

/// Runs one client subcommand against the admin API.
pub async fn run_client(c: &AdminClient, cmd: Command) -> Result<()> {
    match cmd {
        Command::Serve(_) | Command::Deferred(_) => unreachable!("handled by run"),
        Command::Keys(k) => match k {
            KeysCmd::Create {
                name,
                tenant,
                pool,
                limits,
                allow,
            } => {
                let mut body = json!({ "name": name, "limits": limits.overlay(&json!({})) });
                if let Some(t) = tenant {
                    body["tenant"] = json!(t);
                }
                if let Some(p) = pool {
                    body["pool"] = json!(p);
                }
                if let Some(r) = regions_value(&allow) {
                    body["allowed_regions"] = r;
                }
                c.show(Method::POST, "/v1/keys", Some(body)).await?;
                eprintln!(
                    "Store the key now: it is not shown again (etcd keeps only its SHA-256)."
                );
            }
            KeysCmd::List => c.show(Method::GET, "/v1/keys", None).await?,
            KeysCmd::Get { id } => c.show(Method::GET, &format!("/v1/keys/{id}"), None).await?,
            KeysCmd::Update {
                id,
                name,
                tenant,
                pool,
                limits,
            } => {
                let mut body = json!({});
                if let Some(n) = name {
                    body["name"] = json!(n);
                }
                if let Some(t) = tenant {
                    body["tenant"] = json!(t);
                }
                if let Some(p) = pool {
                    body["pool"] = json!(p);
                }
                if limits.any() {
                    let current = c.call(Method::GET, &format!("/v1/keys/{id}"), None).await?;
                    body["limits"] = limits.overlay(&current["limits"]);
                }
                c.show(Method::PATCH, &format!("/v1/keys/{id}"), Some(body))
                    .await?;
            }
            KeysCmd::Revoke { id } => {
                c.show(Method::DELETE, &format!("/v1/keys/{id}"), None)
                    .await?
            }
        },
        Command::Tenants(t) => match t {
            TenantsCmd::Set {
                name,
                limits,
                allow,
            } => {
                // Read-modify-write so that unspecified flags keep their values.
                let current = match c
                    .call(Method::GET, &format!("/v1/tenants/{name}"), None)
                    .await
                {
                    Ok(v) => v,
                    Err(e) if e.message.contains("not_found") => json!({}),
                    Err(e) => return Err(e),
                };
                let mut body = json!({ "limits": limits.overlay(&current["limits"]) });
                if let Some(r) = regions_value(&allow) {
                    body["allowed_regions"] = r;
                } else if !current["allowed_regions"].is_null() {
                    body["allowed_regions"] = current["allowed_regions"].clone();
                }
                c.show(Method::PUT, &format!("/v1/tenants/{name}"), Some(body))
                    .await?;
            }
            TenantsCmd::List => c.show(Method::GET, "/v1/tenants", None).await?,
            TenantsCmd::Get { name } => {
                c.show(Method::GET, &format!("/v1/tenants/{name}"), None)
                    .await?
            }
            TenantsCmd::Delete { name } => {
                c.show(Method::DELETE, &format!("/v1/tenants/{name}"), None)
                    .await?
            }
        },
        Command::Pools(p) => match p {
            PoolsCmd::AddKey {
                pool,
                label,
                org,
                key,
            } => {
                let key = match key {
                    Some(k) => k,
                    None => {
                        eprintln!("reading the upstream key from standard input...");
                        let mut s = String::new();
                        std::io::stdin()
                            .read_to_string(&mut s)
                            .map_err(|e| Error::client(format!("reading standard input: {e}")))?;
                        s
                    }
                };
                let key = key.trim().to_string();
                if key.is_empty() {
                    return Err(Error::client(
                        "no upstream key: set STRAIT_UPSTREAM_KEY or pipe the key in",
                    ));
                }
                let mut body = json!({ "label": label, "key": key });
                if let Some(o) = org {
                    body["org"] = json!(o);
                }
                c.show(Method::POST, &format!("/v1/pools/{pool}/keys"), Some(body))
                    .await?;
            }
            PoolsCmd::SetOrg { pool, id, org } => {
                c.show(
                    Method::PATCH,
                    &format!("/v1/pools/{pool}/keys/{id}"),
                    Some(json!({ "org": org })),
                )
                .await?
            }
            PoolsCmd::List => c.show(Method::GET, "/v1/pools", None).await?,
            PoolsCmd::RemoveKey { pool, id } => {
                c.show(Method::DELETE, &format!("/v1/pools/{pool}/keys/{id}"), None)
                    .await?
            }
        },
        Command::Regions(r) => match r {
            RegionsCmd::Policy {
                key,
                tenant,
                allow,
                all,
            } => {
                let regions = if all { json!([]) } else { json!(allow) };
                if let Some(id) = key {
                    c.show(
                        Method::PATCH,
                        &format!("/v1/keys/{id}"),
                        Some(json!({ "allowed_regions": regions })),
                    )
                    .await?;
                } else if let Some(name) = tenant {
                    let current = c
                        .call(Method::GET, &format!("/v1/tenants/{name}"), None)
                        .await?;
                    let body =
                        json!({ "limits": current["limits"].clone(), "allowed_regions": regions });
                    c.show(Method::PUT, &format!("/v1/tenants/{name}"), Some(body))
                        .await?;
                }
            }
            RegionsCmd::Drain { region } => {
                c.show(Method::POST, &format!("/v1/regions/{region}/drain"), None)
                    .await?
            }
            RegionsCmd::Undrain { region } => {
                c.show(Method::POST, &format!("/v1/regions/{region}/undrain"), None)
                    .await?
            }
        },
        Command::Nodes(NodesCmd::List) => {
            let v = c.call(Method::GET, "/v1/cluster", None).await?;
            print_nodes(&v);
        }
        Command::Drain(t) => c.show(Method::POST, &drain_path(&t, "drain"), None).await?,
        Command::Undrain(t) => {
            c.show(Method::POST, &drain_path(&t, "undrain"), None)
                .await?
        }
        Command::Cluster => c.show(Method::GET, "/v1/cluster", None).await?,
        Command::Leader => c.show(Method::GET, "/v1/leader", None).await?,
    }
    Ok(())
}

fn drain_path(t: &DrainTarget, verb: &str) -> String {
    match t {
        DrainTarget::Node { region, id } => format!("/v1/nodes/{region}/{id}/{verb}"),
        DrainTarget::Region { region } => format!("/v1/regions/{region}/{verb}"),
    }
}

fn print_nodes(cluster: &Value) {
    println!(
        "{:<12} {:<20} {:<9} {:<6} {:<5} {:>9} {:<22} VERSION",
        "REGION", "NODE", "STATE", "DRAIN", "PATH", "TTFB_MS", "ADMIN"
    );
    for r in cluster["regions"].as_array().into_iter().flatten() {
        let nodes = r["nodes"].as_array().cloned().unwrap_or_default();
        if nodes.is_empty() {
            println!(
                "{:<12} (no live nodes){}",
                r["name"].as_str().unwrap_or(""),
                if r["draining"] == json!(true) {
                    " draining"
                } else {
                    ""
                }
            );
        }
        for n in nodes {
            let ttfb = n["path"]["ttfb_ms"]
                .as_f64()
                .map(|t| format!("{t:.1}"))
                .unwrap_or_else(|| "-".into());
            println!(
                "{:<12} {:<20} {:<9} {:<6} {:<5} {:>9} {:<22} {}",
                n["region"].as_str().unwrap_or(""),
                n["id"].as_str().unwrap_or(""),
                n["state"].as_str().unwrap_or(""),
                if n["drain_requested"] == json!(true) {
                    "yes"
                } else {
                    "no"
                },
                n["path"]["status"].as_str().unwrap_or(""),
                ttfb,
                n["admin_addr"].as_str().unwrap_or(""),
                n["version"].as_str().unwrap_or("")
            );
        }
    }
}
