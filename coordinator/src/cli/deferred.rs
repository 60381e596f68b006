//! `deferred` subcommands: `evacuate` moves a region's deferred backlog to a peer
//! region's broker ([`crate::evacuate`]), reading the residency policy from etcd.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::evacuate::{self, Evacuation};

#[derive(Debug, Subcommand)]
pub enum DeferredCmd {
    /// Move region FROM's queued deferred requests to region TO's broker, leaving
    /// (and reporting) those whose key may not be served in TO. TO's nodes take the
    /// ids over; clients then read results from TO. Exit 1 when a move failed.
    Evacuate(EvacuateArgs),
}

#[derive(Debug, Args)]
pub struct EvacuateArgs {
    /// The region whose backlog moves (its queue: strait.deferred.<region>).
    #[arg(long, value_name = "REGION")]
    pub from_region: String,
    /// Its broker, amqp://user:password@host:port/vhost. Prefer the environment variable.
    #[arg(
        long,
        env = "STRAIT_EVACUATE_FROM_AMQP",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub from_amqp: String,
    /// The region that takes it over.
    #[arg(long, value_name = "REGION")]
    pub to_region: String,
    /// Its broker.
    #[arg(
        long,
        env = "STRAIT_EVACUATE_TO_AMQP",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub to_amqp: String,
    /// etcd endpoints, comma-separated, to read client keys and tenants (their region pins).
    #[arg(
        long,
        env = "STRAIT_ETCD_ENDPOINTS",
        value_delimiter = ',',
        value_name = "URLS",
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd: Vec<String>,
    /// The target queue's x-delivery-limit [default: the existing queue's, else 20].
    #[arg(long, value_name = "N")]
    pub delivery_limit: Option<u32>,
    /// Longest wait for the target's confirm of one message.
    #[arg(long, value_name = "DURATION", default_value = "5s")]
    pub confirm_timeout: String,
    /// Report what would move and what would stay; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs `deferred evacuate`; prints the report (stdout) or the error (stderr).
pub fn run(rt: &tokio::runtime::Runtime, cmd: DeferredCmd) -> ExitCode {
    let DeferredCmd::Evacuate(args) = cmd;
    let confirm_timeout = match humantime::parse_duration(&args.confirm_timeout) {
        Ok(d) if !d.is_zero() => d,
        _ => {
            eprintln!("error: --confirm-timeout: expected a duration such as 5s");
            return ExitCode::from(2);
        }
    };
    let plan = Evacuation {
        from_region: args.from_region,
        from_amqp: args.from_amqp,
        to_region: args.to_region,
        to_amqp: args.to_amqp,
        delivery_limit: args.delivery_limit,
        confirm_timeout,
        dry_run: args.dry_run,
    };
    let run = async {
        let residency = evacuate::load_residency(&args.etcd, Duration::from_secs(5)).await?;
        evacuate::run(&plan, &residency).await
    };
    match rt.block_on(run) {
        Ok(report) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("the report serialises")
                );
            } else {
                print!("{}", report.text());
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {}", e.message);
            ExitCode::FAILURE
        }
    }
}
