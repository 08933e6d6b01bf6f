//! The Tessera coordinator: plans render jobs into tasks, leases them to workers that pull
//! them, keeps every transition in a state store (Redis, or embedded for one machine), keeps
//! artifacts in object storage, and serves the `tessera.v1` gRPC API.

pub mod api;
pub mod auth;
pub mod config;
pub mod metrics;
pub mod reaper;
pub mod server;
pub mod state;
pub mod store;
pub mod webhooks;
