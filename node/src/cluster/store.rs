//! Where membership and live config come from: one trait, two implementations.
//! [`Embedded`] (the default) is a node alone on its file config: no peers, no
//! changes. [`super::etcd::EtcdStore`] is the cluster.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::state::Shared;

/// What a store needs to know about the node it serves.
pub struct NodeCtx {
    pub shared: Arc<Shared>,
    pub public_addr: SocketAddr,
    pub admin_addr: SocketAddr,
}

/// Membership and live config for one node.
pub trait ClusterStore: Send {
    /// Starts keeping the node's record and config in step with the cluster. Returns
    /// at once; the handle tells when the first sync is done and stops the work.
    fn start(self: Box<Self>, node: NodeCtx) -> ClusterHandle;
}

/// The node alone on its file config (no etcd configured).
pub struct Embedded;

impl ClusterStore for Embedded {
    fn start(self: Box<Self>, _node: NodeCtx) -> ClusterHandle {
        ClusterHandle::idle()
    }
}

/// A running store: stop it to deregister.
pub struct ClusterHandle {
    stop: watch::Sender<bool>,
    first_sync: watch::Receiver<bool>,
    task: Option<JoinHandle<()>>,
}

impl ClusterHandle {
    /// A handle with nothing behind it (embedded default): already synced.
    pub fn idle() -> Self {
        let (stop, _) = watch::channel(false);
        let (_tx, first_sync) = watch::channel(true);
        ClusterHandle {
            stop,
            first_sync,
            task: None,
        }
    }

    /// A handle over a task that watches `stop` and reports its first sync (or first
    /// failed attempt) on `first_sync`.
    pub fn new(
        stop: watch::Sender<bool>,
        first_sync: watch::Receiver<bool>,
        task: JoinHandle<()>,
    ) -> Self {
        ClusterHandle {
            stop,
            first_sync,
            task: Some(task),
        }
    }

    /// Waits until the first attempt to sync ended (either way), at most `limit`.
    /// Returns whether it ended in time.
    pub async fn wait_first_sync(&mut self, limit: Duration) -> bool {
        tokio::time::timeout(limit, self.first_sync.wait_for(|done| *done))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the work; a connected store deletes its record and revokes its lease.
    /// Waits at most `limit`.
    pub async fn stop(mut self, limit: Duration) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let abort = task.abort_handle();
            if tokio::time::timeout(limit, task).await.is_err() {
                abort.abort();
                tracing::warn!(
                    "cluster store did not stop in time; its record expires with its lease"
                );
            }
        }
    }
}
