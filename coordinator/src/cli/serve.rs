//! `strait-coordinator serve`: the server config from file, flags and environment,
//! then run until SIGTERM or Ctrl-C.

use std::process::ExitCode;

use strait_node::config::Secret;

use super::ServeArgs;
use crate::config::{Config, RawConfig, SecretSources};
use crate::error::Result;

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
    set!(cluster_secret_file, args.cluster_secret_file.clone());
    if args.cookie_secure {
        raw.cookie_secure = Some(true);
    }
    if args.dns_listen.is_some()
        || args.dns_name.is_some()
        || args.dns_ttl.is_some()
        || !args.dns_nameservers.is_empty()
    {
        let dns = raw.dns.get_or_insert_with(Default::default);
        for (field, value) in [
            (&mut dns.listen, &args.dns_listen),
            (&mut dns.name, &args.dns_name),
            (&mut dns.ttl, &args.dns_ttl),
        ] {
            if let Some(v) = value {
                *field = Some(v.clone());
            }
        }
        if !args.dns_nameservers.is_empty() {
            dns.nameservers = Some(args.dns_nameservers.clone());
        }
    }
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
    let cluster_secret = if args.cluster_secret_file.is_some() {
        None
    } else {
        args.cluster_secret
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Secret::new)
    };
    Config::build(
        raw,
        SecretSources {
            admin_token,
            kek,
            cluster_secret,
        },
    )
}

pub(super) fn serve(
    rt: &tokio::runtime::Runtime,
    args: ServeArgs,
    token: Option<String>,
) -> ExitCode {
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
