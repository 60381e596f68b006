//! Strait coordinator: the control plane of a Strait cluster.
//!
//! # Layout
//! Lowest layer first; a module imports only its own layer and those below
//! (`tests/layers.rs` checks it).
//! - [`leader`], [`error`]: vocabulary. Who leads, and the one error type with its
//!   JSON mapping.
//! - [`config`]: typed, validated configuration (file, flags, environment).
//! - [`store`]: etcd behind two traits: [`store::Store`] (config snapshot, node
//!   records, guarded commits) and [`store::Elector`] (lease and election calls).
//!   `store/etcd.rs` is the only module using `etcd_client`; `store/memory.rs` is
//!   the in-memory twin for unit tests.
//! - [`election`]: one writer among coordinators; standbys take over.
//! - [`app`]: shared state, admin-token check, validate-then-commit of config changes.
//! - [`api`]: the admin HTTP API (axum): router and token layer in `api/mod.rs`, one
//!   file per resource; [`openapi`] describes it.
//! - [`dns`]: the smart DNS server: an authoritative zone answered from the node
//!   records (ready nodes, nearest region first), and the coordinator's metrics.
//! - [`server`]: start and stop a coordinator (wires etcd, election, app and api).
//! - [`evacuate`]: `deferred evacuate`, an operator's job: reads the residency policy
//!   from the store and moves a region's deferred backlog between brokers.
//! - [`cli`]: clap definitions; `cli/serve.rs` runs a server, `cli/client.rs` is the
//!   command-line client of the admin API.

#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod dashboard;
pub mod dns;
pub mod election;
pub mod error;
pub mod evacuate;
pub mod leader;
pub mod openapi;
pub mod scrape;
pub mod server;
pub mod store;

pub use error::{Error, ErrorKind};
