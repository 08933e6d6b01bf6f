//! What the API tests share: a real `tessera-coordinator` process, clients over loopback, and a
//! protocol-only worker that answers every task with a picture of the right size.

#![allow(dead_code)] // each test file uses its own part of this module

use std::path::Path;
use std::process::Command;

use tessera_proto::transfer::{read_download, upload_messages};
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_proto::v1::workers_client::WorkersClient;
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

/// A client of the worker-facing service.
pub async fn workers_client(service: &Service) -> WorkersClient<Channel> {
    WorkersClient::connect(service.url()).await.unwrap()
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

/// Submits `spec` and returns the job id.
pub async fn submit(client: &mut JobsClient<Channel>, spec: v1::JobSpec) -> String {
    let request = v1::SubmitJobRequest { spec: Some(spec) };
    client
        .submit_job(request)
        .await
        .unwrap()
        .into_inner()
        .job_id
}

/// A PNG of `width` x `height` whose pixels depend on `seed`.
pub fn png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let picture = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x + seed) as u8, (y * 3 + seed) as u8, (x ^ y) as u8])
    });
    let mut out = Vec::new();
    picture
        .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

/// Size of the picture a leased task must produce.
pub fn output_size(task: &v1::Task) -> (u32, u32) {
    match task.spec.as_ref().expect("a leased task has a spec") {
        v1::task::Spec::Generate(g) => {
            let s = g.settings.as_ref().unwrap();
            (s.width.unwrap(), s.height.unwrap())
        }
        // A tile is its input rectangle (context included) upscaled; the stitch crops it.
        v1::task::Spec::UpscaleTile(t) => {
            let (r, scale) = (t.input.unwrap(), t.plan.unwrap().scale);
            (r.width * scale, r.height * scale)
        }
        v1::task::Spec::Stitch(s) => {
            let p = s.plan.unwrap();
            (p.width * p.scale, p.height * p.scale)
        }
    }
}

/// A worker that speaks the protocol and does no real work.
pub struct ProtocolWorker {
    /// Its connection.
    pub client: WorkersClient<Channel>,
    /// The id the coordinator gave it.
    pub id: String,
}

impl ProtocolWorker {
    /// Registers a CPU worker that runs every kind of task with the default models.
    pub async fn register(service: &Service, name: &str) -> ProtocolWorker {
        let mut client = workers_client(service).await;
        let capabilities = v1::Capabilities {
            kinds: vec![
                v1::TaskKind::Generate as i32,
                v1::TaskKind::UpscaleTile as i32,
                v1::TaskKind::Stitch as i32,
            ],
            models: ["ViT-B/32", "vqgan_imagenet_f16_16384", "realesrgan-x4plus"]
                .map(String::from)
                .to_vec(),
            device: "cpu".into(),
            max_pixels: 0,
        };
        let reply = client
            .register(v1::RegisterRequest {
                name: name.into(),
                capabilities: Some(capabilities),
                version: "test".into(),
            })
            .await
            .unwrap()
            .into_inner();
        ProtocolWorker {
            client,
            id: reply.worker_id,
        }
    }

    /// The next task, waiting up to `wait_ms` for one.
    pub async fn lease(&mut self, wait_ms: u32) -> Option<v1::Task> {
        let request = v1::LeaseTaskRequest {
            worker_id: self.id.clone(),
            wait_ms,
        };
        self.client
            .lease_task(request)
            .await
            .unwrap()
            .into_inner()
            .task
    }

    /// Uploads `data` as file `name` of the task's current attempt.
    pub async fn upload(&mut self, task: &v1::Task, name: &str, data: &[u8]) -> v1::ArtifactRef {
        let header = v1::UploadHeader {
            name: name.into(),
            worker_id: self.id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
        };
        self.client
            .upload_artifact(upload_messages(header, data))
            .await
            .unwrap()
            .into_inner()
    }

    /// Downloads a stored file.
    pub async fn download(&mut self, key: &str) -> Vec<u8> {
        let request = v1::DownloadArtifactRequest {
            key: key.into(),
            offset: 0,
        };
        let stream = self
            .client
            .download_artifact(request)
            .await
            .unwrap()
            .into_inner();
        let mut out = Vec::new();
        read_download(stream, &mut out).await.unwrap();
        out
    }

    /// Reports progress, and a checkpoint when given one.
    pub async fn heartbeat(
        &mut self,
        task: &v1::Task,
        iteration: u32,
        checkpoint: Option<v1::ArtifactRef>,
    ) -> v1::HeartbeatVerdict {
        let request = v1::HeartbeatRequest {
            worker_id: self.id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            iteration,
            iterations: 20,
            loss: Some(1.0 / f64::from(iteration + 1)),
            checkpoint_iteration: if checkpoint.is_some() { iteration } else { 0 },
            checkpoint,
            preview: Vec::new(),
        };
        let reply = self.client.heartbeat(request).await.unwrap().into_inner();
        reply.verdict()
    }

    /// Uploads a picture of the right size and completes the task with it.
    pub async fn finish(&mut self, task: &v1::Task) -> v1::CompletionVerdict {
        let (width, height) = output_size(task);
        let data = png(width, height, task.attempt);
        let output = self.upload(task, "out.png", &data).await;
        self.complete(task, output).await
    }

    /// Completes the task with an uploaded output.
    pub async fn complete(
        &mut self,
        task: &v1::Task,
        output: v1::ArtifactRef,
    ) -> v1::CompletionVerdict {
        let request = v1::CompleteTaskRequest {
            worker_id: self.id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            output: Some(output),
        };
        let reply = self.client.complete_task(request).await.unwrap();
        reply.into_inner().verdict()
    }

    /// Leases and finishes tasks until none comes within `wait_ms`; returns how many.
    pub async fn drain(&mut self, wait_ms: u32) -> usize {
        let mut done = 0;
        while let Some(task) = self.lease(wait_ms).await {
            assert_eq!(self.finish(&task).await, v1::CompletionVerdict::Accepted);
            done += 1;
        }
        done
    }
}

/// The job's status.
pub async fn status(client: &mut JobsClient<Channel>, job: &str) -> v1::JobStatus {
    let request = v1::GetJobRequest { job_id: job.into() };
    client.get_job(request).await.unwrap().into_inner()
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
