//! The connection to a coordinator's `Jobs` service. Every call turns a refusal into an error
//! carrying the coordinator's own message (which already names the field, line or limit to fix)
//! and a lost connection into [`Unreachable`], so commands never format gRPC statuses themselves.

use std::time::Duration;

use tessera_proto::access::{Access, Bearer};
use tessera_proto::transfer::{read_download, upload_messages};
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_telemetry::propagation::TraceContextInterceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::error::{with_causes, NotACoordinator, StoreDown, Unreachable};

/// How long to wait for the coordinator to accept a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Results asked for per ListResults page.
const RESULTS_PAGE: u32 = 1000;

/// Whether `status` is tonic's account of an answer that was not gRPC at all: an HTTP
/// response without a gRPC status (a metrics or web port), or a peer breaking HTTP/2.
fn not_grpc(status: &Status) -> bool {
    status.message().contains("grpc-status header missing")
        || with_causes(status).contains("protocol error")
}

/// Where a coordinator is, and the CA and token to reach it with.
#[derive(Clone, Debug)]
pub struct Address {
    /// Its gRPC URL (`https://` for TLS).
    pub url: String,
    /// CA and token.
    pub access: Access,
}

impl Address {
    /// A coordinator without TLS or tokens, such as the one `tessera up` starts.
    pub fn open(url: &str) -> Address {
        Address {
            url: url.to_string(),
            access: Access::default(),
        }
    }
}

/// A connected client of one coordinator.
pub struct Farm {
    client: JobsClient<InterceptedService<Channel, Bearer<TraceContextInterceptor>>>,
    url: String,
}

impl Farm {
    /// Connects to the coordinator at `address`.
    pub async fn connect(address: &Address) -> anyhow::Result<Farm> {
        let url = &address.url;
        let endpoint = address
            .access
            .endpoint(url)?
            .connect_timeout(CONNECT_TIMEOUT);
        let interceptor = address.access.interceptor(TraceContextInterceptor)?;
        let channel = endpoint.connect().await.map_err(|e| Unreachable {
            url: url.to_string(),
            detail: with_causes(&e),
        })?;
        Ok(Farm {
            client: JobsClient::with_interceptor(channel, interceptor),
            url: url.to_string(),
        })
    }

    /// The coordinator's address, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The error for a failed call.
    pub fn refused(&self, status: Status) -> anyhow::Error {
        let detail = with_causes(&status);
        if status
            .metadata()
            .contains_key(tessera_proto::STATE_STORE_DOWN)
        {
            StoreDown {
                url: self.url.clone(),
                detail: status.message().to_string(),
            }
            .into()
        } else if status.code() == Code::Unavailable {
            Unreachable {
                url: self.url.clone(),
                detail,
            }
            .into()
        } else if not_grpc(&status) {
            NotACoordinator {
                url: self.url.clone(),
                detail,
            }
            .into()
        } else {
            anyhow::anyhow!("{}", status.message())
        }
    }

    /// The coordinator's version.
    pub async fn ping(&mut self) -> anyhow::Result<String> {
        match self.client.ping(v1::PingRequest {}).await {
            Ok(reply) => Ok(reply.into_inner().version),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Submits a job; the coordinator validates it whole.
    pub async fn submit(&mut self, spec: v1::JobSpec) -> anyhow::Result<v1::SubmitJobReply> {
        let request = v1::SubmitJobRequest { spec: Some(spec) };
        match self.client.submit_job(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Plans and prices a job without submitting it.
    pub async fn estimate(&mut self, spec: v1::JobSpec) -> anyhow::Result<v1::JobEstimate> {
        match self.client.estimate_job(spec).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Stores a picture for an upscale-only job under `name` (letters, digits, '.', '-', '_').
    pub async fn upload_input(
        &mut self,
        name: &str,
        data: &[u8],
    ) -> anyhow::Result<v1::ArtifactRef> {
        let header = v1::UploadHeader {
            name: name.to_string(),
            ..v1::UploadHeader::default()
        };
        match self
            .client
            .upload_input(upload_messages(header, data))
            .await
        {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Deletes an upload of a job that was refused.
    pub async fn discard_upload(&mut self, key: &str) -> anyhow::Result<()> {
        let request = v1::DiscardUploadRequest { key: key.into() };
        match self.client.discard_upload(request).await {
            Ok(_) => Ok(()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// A job's state.
    pub async fn job(&mut self, job: &str) -> anyhow::Result<v1::JobStatus> {
        let request = v1::GetJobRequest { job_id: job.into() };
        match self.client.get_job(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// The newest jobs (the coordinator's default page) and how many there are in all.
    pub async fn jobs(&mut self) -> anyhow::Result<v1::ListJobsReply> {
        match self.client.list_jobs(v1::ListJobsRequest::default()).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Cancels a job and returns its state afterwards.
    pub async fn cancel(&mut self, job: &str) -> anyhow::Result<v1::JobStatus> {
        let request = v1::CancelJobRequest { job_id: job.into() };
        match self.client.cancel_job(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Gives a job another priority and returns its state afterwards.
    pub async fn set_priority(
        &mut self,
        job: &str,
        priority: i32,
    ) -> anyhow::Result<v1::JobStatus> {
        let request = v1::SetPriorityRequest {
            job_id: job.into(),
            priority,
        };
        match self.client.set_priority(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Pauses a job and returns its state afterwards.
    pub async fn pause(&mut self, job: &str) -> anyhow::Result<v1::JobStatus> {
        let request = v1::PauseJobRequest { job_id: job.into() };
        match self.client.pause_job(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Resumes a paused job and returns its state afterwards.
    pub async fn resume(&mut self, job: &str) -> anyhow::Result<v1::JobStatus> {
        let request = v1::ResumeJobRequest { job_id: job.into() };
        match self.client.resume_job(request).await {
            Ok(reply) => Ok(reply.into_inner()),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// The workers the farm knows.
    pub async fn workers(&mut self) -> anyhow::Result<Vec<v1::WorkerInfo>> {
        match self.client.list_workers(v1::ListWorkersRequest {}).await {
            Ok(reply) => Ok(reply.into_inner().workers),
            Err(status) => Err(self.refused(status)),
        }
    }

    /// Every result of a job, page by page.
    pub async fn results(&mut self, job: &str) -> anyhow::Result<Vec<v1::ResultInfo>> {
        let mut all = Vec::new();
        loop {
            let request = v1::ListResultsRequest {
                job_id: job.into(),
                offset: all.len() as u32,
                limit: RESULTS_PAGE,
            };
            let page = match self.client.list_results(request).await {
                Ok(reply) => reply.into_inner(),
                Err(status) => return Err(self.refused(status)),
            };
            let empty = page.results.is_empty();
            all.extend(page.results);
            if empty || all.len() as u64 >= page.total {
                return Ok(all);
            }
        }
    }

    /// Appends result `index` of `job` to `have`, which holds its first bytes (empty for the
    /// whole file); returns the file's length as the coordinator reported it.
    pub async fn fetch_result(
        &mut self,
        job: &str,
        index: u32,
        have: &mut Vec<u8>,
    ) -> anyhow::Result<u64> {
        let request = v1::FetchResultRequest {
            job_id: job.into(),
            index,
            offset: have.len() as u64,
        };
        let stream = match self.client.fetch_result(request).await {
            Ok(reply) => reply.into_inner(),
            Err(status) => return Err(self.refused(status)),
        };
        read_download(stream, have)
            .await
            .map_err(|status| self.refused(status))
    }

    /// A job's events after `after` ("" from the start). The raw status comes back so the
    /// watcher can tell a lost connection (retry) from a refusal (give up).
    pub async fn watch(
        &mut self,
        job: &str,
        after: &str,
    ) -> Result<Streaming<v1::JobEvent>, Status> {
        let request = v1::WatchJobRequest {
            job_id: job.into(),
            after: after.into(),
            include_previews: false,
        };
        Ok(self.client.watch_job(request).await?.into_inner())
    }
}
