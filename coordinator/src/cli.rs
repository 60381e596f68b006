//! The command line: `serve` runs a coordinator; every other subcommand is a small
//! client of the admin API (`--url`, `--token` / `STRAIT_ADMIN_TOKEN`).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use strait_node::config::Secret;

use crate::config::{Config, RawConfig, SecretSources};
use crate::error::{Error, Result};

const EXAMPLES: &str = "\
Examples:
  # Run a coordinator (one per region; they elect one writer among themselves):
  STRAIT_ADMIN_TOKEN=$(cat /etc/strait/admin-token) STRAIT_KEK=$(cat /etc/strait/kek) \\
    strait-coordinator serve --etcd http://etcd-1:2379 --region r1 --listen 0.0.0.0:7070

  # Everything else talks to a running coordinator:
  export STRAIT_COORDINATOR_URL=http://coord-r1:7070 STRAIT_ADMIN_TOKEN=...
  strait-coordinator tenants set team-a --rpm 600 --allow-region r1
  strait-coordinator keys create alice --tenant team-a --otpm 50000   # prints the key once
  echo \"$ANTHROPIC_KEY\" | strait-coordinator pools add-key default --label prod-1
  strait-coordinator regions policy --key ck_0123abcd --allow r1,r2
  strait-coordinator drain node r1 node-a      # or: drain region r1
  strait-coordinator nodes list
  strait-coordinator keys revoke ck_0123abcd

Writes sent to a coordinator that is not the leader are retried once at the leader.
See docs/coordinator.md for the API and every route.";

/// Strait coordinator: the control plane of a Strait cluster (admin API, cluster
/// view, Prometheus service discovery) and a command-line client for it.
#[derive(Debug, Parser)]
#[command(name = "strait-coordinator", version, about, long_about, after_help = EXAMPLES)]
pub struct Cli {
    /// Coordinator admin API URL (client commands).
    #[arg(
        long,
        global = true,
        env = "STRAIT_COORDINATOR_URL",
        default_value = "http://127.0.0.1:7070",
        value_name = "URL"
    )]
    pub url: String,

    /// Admin token. For `serve`, the token clients must present; for the client
    /// commands, the one to send. Prefer the environment variable over the flag.
    #[arg(
        long,
        global = true,
        env = "STRAIT_ADMIN_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a coordinator server.
    Serve(ServeArgs),
    /// Client keys: the keys your users send to Strait nodes.
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Tenants: groups of keys sharing limits and a region policy.
    #[command(subcommand)]
    Tenants(TenantsCmd),
    /// Upstream (Anthropic) key pools; keys are sealed with the KEK before storage.
    #[command(subcommand)]
    Pools(PoolsCmd),
    /// Region policies: which regions may serve a key or tenant; region drains.
    #[command(subcommand)]
    Regions(RegionsCmd),
    /// Live nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Drain a node or a whole region (nodes stop taking new requests; DNS health fails over).
    #[command(subcommand)]
    Drain(DrainTarget),
    /// Undo a drain.
    #[command(subcommand)]
    Undrain(DrainTarget),
    /// The whole cluster: regions, nodes, state and path health (JSON).
    Cluster,
    /// Which coordinator leads (accepts writes).
    Leader,
}

/// Flags of `serve`; each overrides the config file's field of the same name.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// TOML config file (see deploy/coordinator.example.toml). Optional.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate the configuration, print a summary, and exit (0 valid, 2 invalid).
    #[arg(long)]
    pub check_config: bool,
    /// Admin API listener [default: 127.0.0.1:7070].
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// URL others reach this coordinator at [default: http://<listen address>].
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// etcd endpoints, comma-separated [default: http://127.0.0.1:2379].
    #[arg(
        long,
        env = "STRAIT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URLS"
    )]
    pub etcd: Vec<String>,
    /// This coordinator's id [default: coordinator-<region>].
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// The region this coordinator runs in [default: default].
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// File holding the admin token (instead of STRAIT_ADMIN_TOKEN).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// File holding the key-encryption key (instead of STRAIT_KEK).
    #[arg(long, value_name = "FILE")]
    pub kek_file: Option<PathBuf>,
    /// The key-encryption key, 64 hex characters (`openssl rand -hex 32`). Same KEK as the nodes.
    #[arg(long, env = "STRAIT_KEK", hide_env_values = true, hide = true)]
    pub kek: Option<String>,
    /// Election lease TTL; a dead leader is replaced within about this long [default: 5s].
    #[arg(long, value_name = "DURATION")]
    pub lease_ttl: Option<String>,
    /// Log filter [default: info].
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

/// Limits flags shared by keys and tenants; absent = unchanged (or unlimited on create).
#[derive(Debug, Args, Default)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    pub rpm: Option<u64>,
    /// Input tokens per minute.
    #[arg(long)]
    pub itpm: Option<u64>,
    /// Output tokens per minute.
    #[arg(long)]
    pub otpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    pub concurrency: Option<u64>,
    /// Tokens per day.
    #[arg(long)]
    pub daily_tokens: Option<u64>,
}

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

#[derive(Debug, Subcommand)]
pub enum KeysCmd {
    /// Create a client key and print it. It is shown only this once.
    Create {
        /// Name for logs and metrics (lowercase, digits, - or _).
        name: String,
        /// Tenant whose limits and region policy also apply (must exist: `tenants set`).
        #[arg(long)]
        tenant: Option<String>,
        /// Upstream pool [default: default].
        #[arg(long)]
        pool: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Regions allowed to serve this key, comma-separated [default: all].
        #[arg(long = "allow-region", value_delimiter = ',', value_name = "REGIONS")]
        allow: Vec<String>,
    },
    /// List client keys (never the secrets).
    List,
    /// Show one key.
    Get { id: String },
    /// Change a key; only the given flags change.
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// New tenant ("" removes it).
        #[arg(long)]
        tenant: Option<String>,
        /// New pool ("" returns to the default pool).
        #[arg(long)]
        pool: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Revoke a key: nodes reject it from their next config snapshot on.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum TenantsCmd {
    /// Create or update a tenant; given limit flags change, others stay.
    Set {
        name: String,
        #[command(flatten)]
        limits: LimitArgs,
        /// Regions allowed to serve this tenant, comma-separated [default: unchanged, or all].
        #[arg(long = "allow-region", value_delimiter = ',', value_name = "REGIONS")]
        allow: Vec<String>,
    },
    /// List tenants.
    List,
    /// Show one tenant.
    Get { name: String },
    /// Delete a tenant no key refers to.
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PoolsCmd {
    /// Add an upstream key to a pool (created if missing). The key is read from
    /// STRAIT_UPSTREAM_KEY or, if unset, from standard input, so it stays out of
    /// shell history and `ps`.
    AddKey {
        pool: String,
        /// Label for operators and metrics, e.g. prod-1.
        #[arg(long)]
        label: String,
        #[arg(long, env = "STRAIT_UPSTREAM_KEY", hide_env_values = true, hide = true)]
        key: Option<String>,
    },
    /// List pools with key ids and labels.
    List,
    /// Remove a key from a pool by its id (uk_...).
    RemoveKey { pool: String, id: String },
}

#[derive(Debug, Subcommand)]
pub enum RegionsCmd {
    /// Pin a key or tenant to regions (failover never leaves them), or allow all.
    Policy {
        /// Client key id to change.
        #[arg(long, conflicts_with = "tenant", required_unless_present = "tenant")]
        key: Option<String>,
        /// Tenant to change.
        #[arg(long)]
        tenant: Option<String>,
        /// Allowed regions, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            value_name = "REGIONS",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        allow: Vec<String>,
        /// Allow every region.
        #[arg(long)]
        all: bool,
    },
    /// Drain a whole region.
    Drain { region: String },
    /// Undo a region drain.
    Undrain { region: String },
}

#[derive(Debug, Subcommand)]
pub enum NodesCmd {
    /// Live nodes as a table.
    List,
}

#[derive(Debug, Subcommand)]
pub enum DrainTarget {
    /// One node.
    Node { region: String, id: String },
    /// Every node of a region.
    Region { region: String },
}

/// Runs the parsed command line; the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve(args) => serve(&rt, args, cli.token),
        cmd => {
            let client = AdminClient::new(cli.url, cli.token);
            match rt.block_on(run_client(&client, cmd)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", e.message);
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Builds the validated server config from a file (optional), flags and environment.
pub fn serve_config(args: &ServeArgs, token: Option<String>) -> Result<Config> {
    let mut raw = match &args.config {
        Some(p) => RawConfig::from_file(p)?,
        None => RawConfig::default(),
    };
    macro_rules! set {
        ($field:ident, $value:expr) => {
            if let Some(v) = $value {
                raw.$field = Some(v);
            }
        };
    }
    set!(listen, args.listen.clone());
    set!(advertise_url, args.advertise_url.clone());
    set!(id, args.id.clone());
    set!(region, args.region.clone());
    set!(admin_token_file, args.admin_token_file.clone());
    set!(kek_file, args.kek_file.clone());
    set!(lease_ttl, args.lease_ttl.clone());
    set!(log_level, args.log_level.clone());
    if !args.etcd.is_empty() {
        raw.etcd_endpoints = Some(args.etcd.clone());
    }
    // A file named on the command line wins over the environment.
    let admin_token = if args.admin_token_file.is_some() {
        None
    } else {
        token.map(Secret::new)
    };
    let kek = if args.kek_file.is_some() {
        None
    } else {
        args.kek.clone().map(Secret::new)
    };
    Config::build(raw, SecretSources { admin_token, kek })
}

fn serve(rt: &tokio::runtime::Runtime, args: ServeArgs, token: Option<String>) -> ExitCode {
    let config = match serve_config(&args, token) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("invalid configuration: {}", e.message);
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration OK\n{}", config.summary());
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    rt.block_on(async move {
        let running = match crate::server::start(config).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("cannot start: {}", e.message);
                return ExitCode::FAILURE;
            }
        };
        // Tests and scripts read this line to learn the bound address.
        println!("strait-coordinator listening on http://{}", running.addr);
        wait_for_signal().await;
        tracing::info!("shutting down");
        running.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
        Command::Serve(_) => unreachable!("handled by run"),
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
                let v = c.call(Method::POST, "/v1/keys", Some(body)).await?;
                print(&v);
                eprintln!(
                    "Store the key now: it is not shown again (etcd keeps only its SHA-256)."
                );
            }
            KeysCmd::List => print(&c.call(Method::GET, "/v1/keys", None).await?),
            KeysCmd::Get { id } => {
                print(&c.call(Method::GET, &format!("/v1/keys/{id}"), None).await?)
            }
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
                print(
                    &c.call(Method::PATCH, &format!("/v1/keys/{id}"), Some(body))
                        .await?,
                );
            }
            KeysCmd::Revoke { id } => print(
                &c.call(Method::DELETE, &format!("/v1/keys/{id}"), None)
                    .await?,
            ),
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
                print(
                    &c.call(Method::PUT, &format!("/v1/tenants/{name}"), Some(body))
                        .await?,
                );
            }
            TenantsCmd::List => print(&c.call(Method::GET, "/v1/tenants", None).await?),
            TenantsCmd::Get { name } => print(
                &c.call(Method::GET, &format!("/v1/tenants/{name}"), None)
                    .await?,
            ),
            TenantsCmd::Delete { name } => print(
                &c.call(Method::DELETE, &format!("/v1/tenants/{name}"), None)
                    .await?,
            ),
        },
        Command::Pools(p) => match p {
            PoolsCmd::AddKey { pool, label, key } => {
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
                let v = c
                    .call(
                        Method::POST,
                        &format!("/v1/pools/{pool}/keys"),
                        Some(json!({ "label": label, "key": key })),
                    )
                    .await?;
                print(&v);
            }
            PoolsCmd::List => print(&c.call(Method::GET, "/v1/pools", None).await?),
            PoolsCmd::RemoveKey { pool, id } => print(
                &c.call(Method::DELETE, &format!("/v1/pools/{pool}/keys/{id}"), None)
                    .await?,
            ),
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
                    print(
                        &c.call(
                            Method::PATCH,
                            &format!("/v1/keys/{id}"),
                            Some(json!({ "allowed_regions": regions })),
                        )
                        .await?,
                    );
                } else if let Some(name) = tenant {
                    let current = c
                        .call(Method::GET, &format!("/v1/tenants/{name}"), None)
                        .await?;
                    let body =
                        json!({ "limits": current["limits"].clone(), "allowed_regions": regions });
                    print(
                        &c.call(Method::PUT, &format!("/v1/tenants/{name}"), Some(body))
                            .await?,
                    );
                }
            }
            RegionsCmd::Drain { region } => print(
                &c.call(Method::POST, &format!("/v1/regions/{region}/drain"), None)
                    .await?,
            ),
            RegionsCmd::Undrain { region } => print(
                &c.call(Method::POST, &format!("/v1/regions/{region}/undrain"), None)
                    .await?,
            ),
        },
        Command::Nodes(NodesCmd::List) => {
            let v = c.call(Method::GET, "/v1/cluster", None).await?;
            print_nodes(&v);
        }
        Command::Drain(t) => print(&c.call(Method::POST, &drain_path(&t, "drain"), None).await?),
        Command::Undrain(t) => print(
            &c.call(Method::POST, &drain_path(&t, "undrain"), None)
                .await?,
        ),
        Command::Cluster => print(&c.call(Method::GET, "/v1/cluster", None).await?),
        Command::Leader => print(&c.call(Method::GET, "/v1/leader", None).await?),
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
