//! `tessera-coordinator`: serves the `tessera.v1` API (see `tessera-coordinator --help`).

use clap::Parser;
use tessera_coordinator::config::Config;
use tessera_coordinator::server::{serve, shutdown_on_signals};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let config = Config::parse();
    serve(config, shutdown_on_signals()).await
}
