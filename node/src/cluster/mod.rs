//! Cluster membership and live configuration through etcd.
//!
//! Layout (the documents it reads and writes are [`crate::schema`], shared with the
//! coordinator; sealed upstream keys are opened with [`crate::secret::Kek`]):
//! - [`store`]: the [`store::ClusterStore`] trait; its embedded default is the node
//!   alone on its file config.
//! - [`etcd`]: the etcd implementation (connection options, reads, record writes).
//! - [`supervisor`]: the one task that keeps the etcd session alive: lease, record,
//!   keep-alive, watch; reconnects and resumes after any error.
//! - [`membership`]: the node's record, its id, and the live node count.
//! - [`config_watch`]: cluster config → validated [`crate::state::Snapshot`] → swap.
//! - [`snapshot_file`]: the last good config on local disk, for starts with etcd down.

pub mod config_watch;
pub mod etcd;
pub mod membership;
pub mod snapshot_file;
pub mod store;
pub mod supervisor;

use prometheus::{IntCounter, IntGauge, Registry};

pub use crate::health::ClusterStatus;

/// The cluster's Prometheus metrics, registered in the node's registry.
#[derive(Clone)]
pub struct ClusterMetrics {
    pub etcd_connected: IntGauge,
    pub config_revision: IntGauge,
    pub config_reloads: IntCounter,
    pub config_rejected: IntCounter,
    pub live_nodes: IntGauge,
    pub etcd_errors: IntCounter,
    pub registrations: IntCounter,
}

impl ClusterMetrics {
    pub fn register(registry: &Registry) -> Self {
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        ClusterMetrics {
            etcd_connected: gauge(
                "etcd_connected",
                "1 while the etcd session (lease, record, watch) is up",
            ),
            config_revision: gauge(
                "config_revision",
                "etcd revision of the cluster config being served",
            ),
            config_reloads: counter("config_reloads_total", "Cluster config snapshots applied"),
            config_rejected: counter(
                "config_rejected_total",
                "Cluster config changes rejected as invalid (previous snapshot kept)",
            ),
            live_nodes: gauge(
                "cluster_nodes",
                "Node records registered in etcd, all regions",
            ),
            etcd_errors: counter(
                "etcd_errors_total",
                "etcd session failures (each followed by a reconnect)",
            ),
            registrations: counter(
                "etcd_registrations_total",
                "Times this node granted a lease and wrote its record",
            ),
        }
    }
}
