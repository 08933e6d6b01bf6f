//! A worker that speaks the `tessera.v1` protocol and does no real work: it answers every task
//! with a picture of the size the task asks for. Tests of the coordinator and the CLI use it to
//! play the farm's workers without models.

use tessera_proto::access::{Access, Bearer};
use tessera_proto::transfer::{read_download, upload_messages};
use tessera_proto::v1;
use tessera_proto::v1::workers_client::WorkersClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::Service;

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
        // A tile hands back its contribution to the final picture.
        v1::task::Spec::UpscaleTile(t) => {
            let r = t.output.unwrap();
            (r.width, r.height)
        }
        v1::task::Spec::Stitch(s) => {
            let p = s.plan.unwrap();
            (p.width * p.scale, p.height * p.scale)
        }
    }
}

/// An interceptor that adds nothing, under the bearer token of [`Access`].
pub type NoMetadata = fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>;

/// A client of the workers' service, with a token when its [`Access`] has one.
pub type WorkersApi = WorkersClient<InterceptedService<Channel, Bearer<NoMetadata>>>;

/// Connects a client of the workers' service to `url` (TLS for `https://`).
pub async fn workers_client(url: &str, access: &Access) -> WorkersApi {
    let channel = access.endpoint(url).unwrap().connect().await.unwrap();
    let nothing: NoMetadata = Ok;
    WorkersClient::with_interceptor(channel, access.interceptor(nothing).unwrap())
}

/// A worker that speaks the protocol and does no real work.
pub struct ProtocolWorker {
    /// Its connection.
    pub client: WorkersApi,
    /// The id the coordinator gave it.
    pub id: String,
}

impl ProtocolWorker {
    /// Registers a CPU worker that runs every kind of task with the default models.
    pub async fn register(service: &Service, name: &str) -> ProtocolWorker {
        Self::register_at(&service.url(), &Access::default(), name).await
    }

    /// Registers like [`ProtocolWorker::register`] with the coordinator at `url`, reached
    /// through `access` (a secured farm).
    pub async fn register_at(url: &str, access: &Access, name: &str) -> ProtocolWorker {
        let models = ["ViT-B/32", "vqgan_imagenet_f16_16384", "realesrgan-x4plus"];
        Self::register_with(url, access, name, &models).await
    }

    /// Registers a CPU worker that runs every kind of task with `models` (a farm whose
    /// coordinator knows other models than the defaults).
    pub async fn register_with(
        url: &str,
        access: &Access,
        name: &str,
        models: &[&str],
    ) -> ProtocolWorker {
        let capabilities = v1::Capabilities {
            kinds: vec![
                v1::TaskKind::Generate as i32,
                v1::TaskKind::UpscaleTile as i32,
                v1::TaskKind::Stitch as i32,
            ],
            models: models.iter().map(|m| m.to_string()).collect(),
            device: "cpu".into(),
            ..v1::Capabilities::default()
        };
        Self::register_offering(url, access, name, capabilities).await
    }

    /// Registers a worker offering `capabilities` (limits of its own, say).
    pub async fn register_offering(
        url: &str,
        access: &Access,
        name: &str,
        capabilities: v1::Capabilities,
    ) -> ProtocolWorker {
        let mut client = workers_client(url, access).await;
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
        download(&mut self.client, key).await
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

/// Downloads the stored file `key` whole through the workers' API (what a worker fetches).
pub async fn download(client: &mut WorkersApi, key: &str) -> Vec<u8> {
    let request = v1::DownloadArtifactRequest {
        key: key.into(),
        offset: 0,
    };
    let stream = client
        .download_artifact(request)
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    read_download(stream, &mut out).await.unwrap();
    out
}
