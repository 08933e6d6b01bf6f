//! `tessera-coordinator`: serves the `tessera.v1` API (see `tessera-coordinator --help`).

use clap::Parser;
use tessera_coordinator::config::Config;
use tessera_coordinator::server::serve;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = tessera_telemetry::init("tessera-coordinator", config.log_format)?;
    serve(
        config,
        tessera_telemetry::shutdown::on_signals("shutting down"),
    )
    .await
}
