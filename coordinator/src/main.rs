//! `tessera-coordinator`: serves the `tessera.v1` API.

use clap::Parser;
use tessera_proto::v1::jobs_server::{Jobs, JobsServer};
use tessera_proto::v1::{PingReply, PingRequest};
use tonic::{Request, Response, Status};

/// Command-line and environment configuration of the coordinator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to serve gRPC on.
    #[arg(long, env = "TESSERA_LISTEN", default_value = "127.0.0.1:7470")]
    listen: std::net::SocketAddr,
}

/// The client-facing service.
#[derive(Default)]
struct JobsService;

#[tonic::async_trait]
impl Jobs for JobsService {
    async fn ping(&self, _: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        Ok(Response::new(PingReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt::init();
    let args = Args::parse();
    tracing::info!(listen = %args.listen, "serving tessera.v1");
    tonic::transport::Server::builder()
        .add_service(JobsServer::new(JobsService))
        .serve_with_shutdown(args.listen, async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
