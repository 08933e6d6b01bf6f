//! `tessera-coordinator`: serves the `tessera.v1` API (see `tessera-coordinator --help`).

use clap::Parser;
use tessera_coordinator::config::Config;
use tessera_coordinator::server::{serve, shutdown_on_signals};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = tessera_telemetry::init("tessera-coordinator", config.log_format)?;
    serve(config, shutdown_on_signals()).await
}
