//! What the API tests share: a real `tessera-coordinator` process and clients over loopback.

#![allow(dead_code)] // each test file uses its own part of this module

use std::path::Path;
use std::process::Command;

use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::Service;
use tonic::transport::Channel;

/// Starts a coordinator on a free port with artifacts in `store` and state in `state`
/// (`--redis URL` or `--embedded ...`), plus `extra` flags.
pub fn coordinator(store: &Path, state: &[&str], extra: &[&str]) -> Service {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-coordinator"));
    command
        .args(["--listen", "127.0.0.1:0", "--store"])
        .arg(store)
        .args(state)
        .args(extra)
        .env("RUST_LOG", "warn");
    Service::start(command).expect("the coordinator starts")
}

/// A client of the user-facing service.
pub async fn jobs(service: &Service) -> JobsClient<Channel> {
    JobsClient::connect(service.url()).await.unwrap()
}

/// A job of `prompts` small renders (64x64, 4 tiles each when upscaled).
pub fn spec(prompts: usize, upscale: bool) -> v1::JobSpec {
    let text: String = (0..prompts)
        .map(|i| format!("a lighthouse in a storm, number {i}\n"))
        .collect();
    v1::JobSpec {
        name: "test".into(),
        settings: Some(v1::Settings {
            width: Some(64),
            height: Some(64),
            iterations: Some(20),
            upscale_model: Some(if upscale { "realesrgan-x4plus" } else { "none" }.into()),
            tile: Some(32),
            tile_pad: Some(8),
            tile_overlap: Some(4),
            ..v1::Settings::default()
        }),
        source: Some(v1::job_spec::Source::PromptsText(text)),
        ..v1::JobSpec::default()
    }
}

/// Every event of a job until its `JobDone`, from the start.
pub async fn watch_to_end(client: &mut JobsClient<Channel>, job: &str) -> Vec<v1::JobEvent> {
    let request = v1::WatchJobRequest {
        job_id: job.into(),
        ..v1::WatchJobRequest::default()
    };
    let mut stream = client.watch_job(request).await.unwrap().into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.message().await.unwrap() {
        let done = matches!(event.event, Some(v1::job_event::Event::JobDone(_)));
        events.push(event);
        if done {
            break;
        }
    }
    events
}
