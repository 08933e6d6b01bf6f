//! `tessera`: the user's command line to the farm.

use clap::{Parser, Subcommand};
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_proto::v1::PingRequest;

#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// The coordinator's gRPC address.
    #[arg(
        long,
        env = "TESSERA_COORDINATOR",
        default_value = "http://127.0.0.1:7470",
        global = true
    )]
    coordinator: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check that the coordinator answers, and print its version.
    Ping,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Ping => {
            let mut client = JobsClient::connect(cli.coordinator.clone())
                .await
                .map_err(|e| {
                    anyhow::anyhow!("cannot reach the coordinator at {}: {e}", cli.coordinator)
                })?;
            let reply = client.ping(PingRequest {}).await?.into_inner();
            println!(
                "coordinator {} answers, version {}",
                cli.coordinator, reply.version
            );
        }
    }
    Ok(())
}
