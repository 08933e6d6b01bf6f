//! The worker's calls to the coordinator. Every call that fails because the coordinator is
//! unreachable is retried with backoff (and said on stderr), so a restarting coordinator costs
//! a pause, never a result. Each call carries the current span's trace context.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tessera_core::task::{sha256_hex, ArtifactRef};
use tessera_proto::access::{Access, Bearer};
use tessera_proto::transfer::{read_download, upload_messages};
use tessera_proto::v1;
use tessera_proto::v1::workers_client::WorkersClient;
use tessera_telemetry::propagation::TraceContextInterceptor;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Longest pause between retries when the coordinator is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long one lease request waits for work.
const LEASE_WAIT_MS: u32 = 5_000;

/// A registered worker's connection, cheap to clone into background work.
#[derive(Clone)]
pub struct Link {
    client: WorkersClient<InterceptedService<Channel, Bearer<TraceContextInterceptor>>>,
    url: String,
    /// The id the coordinator gave; replaced when it asks the worker to register again.
    id: Arc<RwLock<String>>,
    /// What registration sends, kept for registering again.
    registration: Arc<v1::RegisterRequest>,
    /// The heartbeat interval the coordinator asked for: the longest pause between retries.
    heartbeat_every: Duration,
}

/// A task the coordinator handed over, and how long the request waited for one to exist.
pub struct Lease {
    /// The task to run, with its spec, attempt number and inputs.
    pub task: v1::Task,
    /// The coordinator's wait for work: idle time, not protocol time.
    pub waited: Duration,
}

/// Whether a failed call is worth retrying: the coordinator is down or restarting.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::Cancelled
    )
}

/// Retries `call` with doubling pauses of at most `max_pause` while it fails transiently, saying
/// so on stderr.
async fn retrying<T, F, Fut>(
    url: &str,
    what: &str,
    max_pause: Duration,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut pause = Duration::from_millis(100).min(max_pause);
    loop {
        match call().await {
            Err(status) if transient(&status) => {
                eprintln!(
                    "tessera-worker: coordinator at {url} unreachable during {what} ({}); retrying in {:.1} s",
                    status.message(),
                    pause.as_secs_f64()
                );
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(max_pause);
            }
            other => return other,
        }
    }
}

impl Link {
    /// Registers with the coordinator at `url`, retrying until it answers or `stop` fires;
    /// returns the link and the heartbeat interval the coordinator asks for.
    pub async fn register(
        url: &str,
        access: &Access,
        request: v1::RegisterRequest,
        stop: &CancellationToken,
    ) -> anyhow::Result<(Link, Duration)> {
        let endpoint = access.endpoint(url)?;
        let interceptor = access.interceptor(TraceContextInterceptor)?;
        let client = WorkersClient::with_interceptor(endpoint.connect_lazy(), interceptor);
        let register = retrying(url, "registration", MAX_BACKOFF, || {
            let mut client = client.clone();
            let request = request.clone();
            async move { client.register(request).await }
        });
        let reply = tokio::select! {
            reply = register => reply?.into_inner(),
            _ = stop.cancelled() => anyhow::bail!("stopped before the coordinator at {url} answered"),
        };
        let heartbeat_every = Duration::from_millis(reply.heartbeat_interval_ms);
        let link = Link {
            client,
            url: url.to_string(),
            id: Arc::new(RwLock::new(reply.worker_id)),
            registration: Arc::new(request),
            heartbeat_every,
        };
        Ok((link, heartbeat_every))
    }

    /// Retries `call` like [`retrying`], pausing at most one heartbeat interval: a heartbeat or
    /// completion retried through an outage lands within an interval of the coordinator's (or
    /// its store's) return, inside the one lease of grace the reaper gives held tasks then.
    async fn retrying<T, F, Fut>(&self, what: &str, call: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        let most = self
            .heartbeat_every
            .clamp(Duration::from_millis(100), MAX_BACKOFF);
        retrying(&self.url, what, most, call).await
    }

    /// The id the coordinator gave this worker.
    pub fn id(&self) -> String {
        self.id
            .read()
            .expect("the id lock is never poisoned")
            .clone()
    }

    /// Registers again after the coordinator forgot this worker (its state was reset, e.g. a
    /// Redis without persistence restarted), so the worker goes on instead of exiting.
    async fn register_again(&self) -> Result<(), Status> {
        let reply = self
            .retrying("registration", || {
                let mut client = self.client.clone();
                let request = (*self.registration).clone();
                async move { client.register(request).await }
            })
            .await?
            .into_inner();
        eprintln!(
            "tessera-worker: the coordinator at {} no longer knew this worker; registered again as {}",
            self.url, reply.worker_id
        );
        *self.id.write().expect("the id lock is never poisoned") = reply.worker_id;
        Ok(())
    }

    /// The next task, waiting for one to become available; `None` when none came in time or
    /// `stop` fired.
    pub async fn lease(&self, stop: &CancellationToken) -> Result<Option<Lease>, Status> {
        let reply = loop {
            let request = v1::LeaseTaskRequest {
                worker_id: self.id(),
                wait_ms: LEASE_WAIT_MS,
            };
            let lease = self.retrying("lease", || {
                let mut client = self.client.clone();
                let request = request.clone();
                async move { client.lease_task(request).await }
            });
            let reply = tokio::select! {
                reply = lease => reply,
                _ = stop.cancelled() => return Ok(None),
            };
            match reply {
                Err(status) if status.code() == Code::NotFound => self.register_again().await?,
                reply => break reply?.into_inner(),
            }
        };
        Ok(reply.task.map(|task| Lease {
            task,
            waited: Duration::from_millis(u64::from(reply.waited_ms)),
        }))
    }

    /// Reports progress (and a checkpoint uploaded before) on a task this worker holds.
    pub async fn heartbeat(
        &self,
        request: v1::HeartbeatRequest,
    ) -> Result<v1::HeartbeatReply, Status> {
        let reply = self
            .retrying("heartbeat", || {
                let mut client = self.client.clone();
                let request = request.clone();
                async move { client.heartbeat(request).await }
            })
            .await?;
        Ok(reply.into_inner())
    }

    /// Reports that a task failed here; the coordinator decides whether it runs again (or has
    /// a corrupt input made again).
    pub async fn fail(&self, task: &v1::Task, failure: Failure<'_>) -> Result<(), Status> {
        let request = v1::FailTaskRequest {
            worker_id: self.id(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            error: failure.error,
            retryable: failure.retryable,
            corrupt_input: failure.corrupt_input.unwrap_or_default().to_string(),
        };
        self.retrying("failure report", || {
            let mut client = self.client.clone();
            let request = request.clone();
            async move { client.fail_task(request).await }
        })
        .await?;
        Ok(())
    }

    /// Gives back, unfinished, a task whose job was paused (its checkpoint went out with the
    /// last heartbeat), so it is queued again at once instead of when its lease runs out.
    pub async fn release(&self, task: &v1::Task) -> Result<bool, Status> {
        let request = v1::ReleaseTaskRequest {
            worker_id: self.id(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
        };
        let reply = self
            .retrying("release", || {
                let mut client = self.client.clone();
                let request = request.clone();
                async move { client.release_task(request).await }
            })
            .await?;
        Ok(reply.into_inner().released)
    }

    /// Removes this worker from the farm; the task it holds, if any, is queued again.
    pub async fn deregister(&self) -> Result<(), Status> {
        let request = v1::DeregisterRequest {
            worker_id: self.id(),
        };
        self.client.clone().deregister(request).await?;
        Ok(())
    }

    /// Uploads the output and completes the task, retrying while the coordinator is away. An
    /// output the coordinator will not use (the lease ended meanwhile, the job was cancelled)
    /// is dropped, and the worker's log says so once, naming the task and the coordinator's
    /// reason.
    pub async fn hand_back(&self, task: &v1::Task, output: Vec<u8>) -> anyhow::Result<()> {
        let artifact = match self.upload(task, "output.png", &output).await {
            Ok(artifact) => artifact,
            Err(status) if status.code() == Code::FailedPrecondition => {
                eprintln!(
                    "tessera-worker: task {} attempt {}: its output was refused ({}); dropped",
                    task.task_id,
                    task.attempt,
                    status.message()
                );
                return Ok(());
            }
            Err(status) => return Err(status.into()),
        };
        let request = v1::CompleteTaskRequest {
            worker_id: self.id(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            output: Some(artifact),
        };
        let reply = self
            .retrying("completion", || {
                let mut client = self.client.clone();
                let request = request.clone();
                async move { client.complete_task(request).await }
            })
            .await?
            .into_inner();
        match reply.verdict() {
            v1::CompletionVerdict::Accepted | v1::CompletionVerdict::Duplicate => {}
            verdict => eprintln!(
                "tessera-worker: task {} attempt {}: its output was not used ({verdict:?}); dropped",
                task.task_id, task.attempt
            ),
        }
        Ok(())
    }

    /// Stores `data` as an artifact of the task this worker holds.
    pub async fn upload(
        &self,
        task: &v1::Task,
        name: &str,
        data: &[u8],
    ) -> Result<v1::ArtifactRef, Status> {
        let header = v1::UploadHeader {
            name: name.into(),
            worker_id: self.id(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
        };
        let reply = self
            .retrying("upload", || {
                let mut client = self.client.clone();
                let messages = upload_messages(header.clone(), data);
                async move { client.upload_artifact(messages).await }
            })
            .await?;
        Ok(reply.into_inner())
    }

    /// Downloads one artifact whole and checks it against its length and SHA-256: a file
    /// damaged in storage or on the way, or gone from the store (an object deleted from a
    /// bucket), is a [`CorruptInput`] error, never used.
    pub async fn download(&self, artifact: &v1::ArtifactRef) -> anyhow::Result<Vec<u8>> {
        let request = v1::DownloadArtifactRequest {
            key: artifact.key.clone(),
            offset: 0,
        };
        let answer = self
            .retrying("download", || {
                let mut client = self.client.clone();
                let request = request.clone();
                async move { client.download_artifact(request).await }
            })
            .await;
        let stream = match answer {
            Ok(stream) => stream.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => {
                return Err(CorruptInput {
                    key: artifact.key.clone(),
                    problem: format!("missing: {}", status.message()),
                }
                .into())
            }
            Err(status) => return Err(status.into()),
        };
        let mut out = Vec::new();
        read_download(stream, &mut out).await?;
        check(artifact, &out)?;
        Ok(out)
    }

    /// Downloads every artifact at once (a stitch has one per tile), in their order.
    pub async fn download_all(&self, inputs: &[v1::ArtifactRef]) -> anyhow::Result<Vec<Vec<u8>>> {
        let mut downloads = tokio::task::JoinSet::new();
        for (index, input) in inputs.iter().enumerate() {
            let (link, input) = (self.clone(), input.clone());
            downloads.spawn(async move { (index, link.download(&input).await) });
        }
        let mut out = vec![Vec::new(); inputs.len()];
        while let Some(joined) = downloads.join_next().await {
            let (index, bytes) = joined?;
            out[index] = bytes?;
        }
        Ok(out)
    }

    /// An upscale source picture: `cached` when it is the one asked for (artifacts never
    /// change once stored), else downloaded.
    pub async fn source(
        &self,
        artifact: &v1::ArtifactRef,
        cached: Option<Source>,
    ) -> anyhow::Result<Source> {
        match cached {
            Some(source) if source.0 == artifact.key => Ok(source),
            _ => Ok((
                artifact.key.clone(),
                Arc::new(self.download(artifact).await?),
            )),
        }
    }
}

/// A task's failure as the coordinator is told it.
#[derive(Debug)]
pub struct Failure<'a> {
    /// The whole error chain, for the task's error history.
    pub error: String,
    /// Whether another attempt could succeed (false fails the task at once).
    pub retryable: bool,
    /// The input found corrupt, when that was why.
    pub corrupt_input: Option<&'a str>,
}

/// An input whose bytes are not the file the coordinator recorded (damaged in storage or on
/// the way), or that the store no longer has. Reported with the failure, so the coordinator can
/// have the file made again.
#[derive(Debug, thiserror::Error)]
#[error("input {key} is {problem}")]
pub struct CorruptInput {
    /// Its artifact key.
    pub key: String,
    /// What is wrong with it.
    problem: String,
}

/// Checks downloaded `data` against what the coordinator recorded of `artifact`.
fn check(artifact: &v1::ArtifactRef, data: &[u8]) -> Result<(), CorruptInput> {
    if ArtifactRef::from(artifact.clone()).holds(data) {
        return Ok(());
    }
    Err(CorruptInput {
        key: artifact.key.clone(),
        problem: format!(
            "corrupt: {} bytes with SHA-256 {}, expected {} bytes with SHA-256 {}",
            data.len(),
            sha256_hex(data),
            artifact.size,
            artifact.sha256
        ),
    })
}

/// A tile's source picture with its artifact key: the tiles of one picture often come to the
/// same worker in a row, so the last one is kept.
pub type Source = (String, Arc<Vec<u8>>);
