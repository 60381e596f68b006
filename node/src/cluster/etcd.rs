//! The etcd implementation of [`super::store::ClusterStore`] (started by
//! [`super::supervisor`]): connection options and the few calls the supervisor makes. Errors become strings that name the operation and
//! never carry a value read from etcd.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions, GetOptions};

use super::config_watch::Applier;

/// Time to open a TCP connection to an etcd endpoint.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for a unary call (or a stream's first response) to answer.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 pings find a silently dead connection (etcd paused, network cut) even
/// when the watch is idle; a closed socket is noticed at once anyway.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// A node in an etcd cluster.
pub struct EtcdStore {
    pub endpoints: Vec<String>,
    pub lease_ttl: Duration,
    pub applier: Applier,
}

/// Opens a client. etcd-client never reconnects a broken stream by itself, so the
/// supervisor calls this again after every failure.
pub async fn connect(endpoints: &[String]) -> Result<Client, String> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(CALL_TIMEOUT)
        .with_keep_alive(KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT)
        .with_keep_alive_while_idle(true);
    Client::connect(endpoints, Some(opts))
        .await
        .map_err(|e| format!("connect: {e}"))
}

/// Everything under `prefix` and the revision it was read at.
pub async fn load_prefix(
    client: &mut Client,
    prefix: &str,
) -> Result<(i64, Vec<(String, Vec<u8>)>), String> {
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| format!("get {prefix}: {e}"))?;
    let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
    let kvs = resp
        .kvs()
        .iter()
        .filter_map(|kv| Some((kv.key_str().ok()?.to_string(), kv.value().to_vec())))
        .collect();
    Ok((revision, kvs))
}
