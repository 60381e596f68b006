//! Strait coordinator: the control plane of a Strait cluster.
//!
//! # Layout
//! - [`config`]: typed, validated configuration (file, flags, environment).
//! - [`election`]: etcd election among coordinators; one writer, standbys take over.
//! - [`store`]: the etcd view behind a trait: config snapshot, node records, guarded commits.
//! - [`app`]: shared state, admin-token check, validate-then-commit of config changes.
//! - [`api`]: the admin HTTP API (axum) and its routes; [`openapi`] describes them.
//! - [`server`]: start and stop a coordinator.
//! - [`cli`]: `serve` and the command-line client of the admin API.
//! - [`error`]: the one error type and its JSON mapping.

#![recursion_limit = "256"]

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod election;
pub mod error;
pub mod leader;
pub mod openapi;
pub mod server;
pub mod store;

pub use error::{Error, ErrorKind};
