//! The command line (clap): `serve` runs a coordinator ([`serve`]); every other
//! subcommand is a small client of the admin API ([`client`]; `--url`, `--token` /
//! `STRAIT_ADMIN_TOKEN`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

mod client;
mod deferred;
mod serve;

pub use client::{run_client, AdminClient};
pub use deferred::{DeferredCmd, EvacuateArgs};
pub use serve::serve_config;

const EXAMPLES: &str = "\
Examples:
  # Run a coordinator (one per region; they elect one writer among themselves):
  STRAIT_ADMIN_TOKEN=$(cat /etc/strait/admin-token) STRAIT_KEK=$(cat /etc/strait/kek) \\
    strait-coordinator serve --etcd http://etcd-1:2379 --region r1 --listen 0.0.0.0:7070

  # Everything else talks to a running coordinator:
  export STRAIT_COORDINATOR_URL=http://coord-r1:7070 STRAIT_ADMIN_TOKEN=...
  strait-coordinator tenants set team-a --rpm 600 --allow-region r1
  strait-coordinator keys create alice --tenant team-a --otpm 50000   # prints the key once
  echo \"$ANTHROPIC_KEY\" | strait-coordinator pools add-key default --label prod-1 --org acme
  strait-coordinator regions policy --key ck_0123abcd --allow r1,r2
  strait-coordinator drain node r1 node-a      # or: drain region r1
  strait-coordinator nodes list
  strait-coordinator keys revoke ck_0123abcd

  # Move region r1's deferred backlog to r2 (keys pinned away from r2 stay in r1):
  STRAIT_EVACUATE_FROM_AMQP=amqp://... STRAIT_EVACUATE_TO_AMQP=amqp://... \\
    strait-coordinator deferred evacuate --etcd http://etcd-1:2379 --from-region r1 --to-region r2

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

// Parsed once per run, so the size of the serve flags does not matter.
#[allow(clippy::large_enum_variant)]
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
    /// Deferred delivery: move a region's backlog to another region (reads etcd and
    /// the brokers directly, not the admin API).
    #[command(subcommand)]
    Deferred(DeferredCmd),
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
    /// File holding the cluster secret shared with the nodes (instead of STRAIT_CLUSTER_SECRET).
    #[arg(long, value_name = "FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// The cluster secret: reads the nodes' /stats, signs dashboard sessions.
    #[arg(
        long,
        env = "STRAIT_CLUSTER_SECRET",
        hide_env_values = true,
        hide = true
    )]
    pub cluster_secret: Option<String>,
    /// Mark the dashboard session cookie Secure (browsers reach the coordinator over HTTPS).
    #[arg(long)]
    pub cookie_secure: bool,
    /// Serve DNS for --dns-name on this address, UDP and TCP (e.g. 0.0.0.0:53) [default: off].
    #[arg(long, value_name = "ADDR")]
    pub dns_listen: Option<String>,
    /// The name the DNS server is authoritative for (e.g. api.example.com).
    #[arg(long, value_name = "NAME")]
    pub dns_name: Option<String>,
    /// TTL of DNS answers [default: 15s].
    #[arg(long, value_name = "DURATION")]
    pub dns_ttl: Option<String>,
    /// Nameserver names for the NS records, repeatable [default: ns.<dns-name>].
    #[arg(long = "dns-ns", value_name = "NAME")]
    pub dns_nameservers: Vec<String>,
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
        /// The Anthropic organisation the key belongs to (letters, digits, . - _).
        /// Keys of one organisation share its rate limits and billing, so the nodes
        /// cool and rest them together [default: an organisation of its own].
        #[arg(long)]
        org: Option<String>,
        #[arg(long, env = "STRAIT_UPSTREAM_KEY", hide_env_values = true, hide = true)]
        key: Option<String>,
    },
    /// Move a key to another organisation without re-entering it ("" for one of its own).
    SetOrg {
        pool: String,
        /// Key id (uk_...).
        id: String,
        org: String,
    },
    /// List pools with key ids, labels and organisations.
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
        Command::Serve(args) => serve::serve(&rt, args, cli.token),
        Command::Deferred(cmd) => deferred::run(&rt, cmd),
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
