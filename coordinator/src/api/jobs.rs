//! The `Jobs` service: what users call.

use super::capacity::refusal;
use super::convert::{job_event, job_status, result_info, task_info, worker_info};
use super::estimate::estimate_job;
use super::waiting::waiting_for;
use super::{
    async_stream, new_id, now_ms, read_upload, stream_artifact, Coordinator, MessageStream,
};
use crate::auth::{Principal, Role};
use crate::state::{
    CancelOutcome, ControlOutcome, EventKind, JobRecord, JobState, NewJob, Quota, ResultState,
};
use crate::store::{check_name, check_upload, describe, preview_key, upload_key, upload_usable_by};
use std::sync::Arc;
use std::time::Duration;
use tessera_core::job::{
    parse_prompts_json, parse_prompts_jsonl, parse_prompts_text, InputImage, JobError, JobRequest,
    JobSource, Limits, PromptEntry,
};
use tessera_core::plan::{plan_job, JobPlan};
use tessera_core::sweep::Sweep;
use tessera_core::task::job_of_task;
use tessera_proto::v1;
use tessera_proto::v1::jobs_server::Jobs;
use tessera_telemetry::propagation::current_traceparent;
use tonic::{Request, Response, Status, Streaming};
use tracing::Span;

/// Most events sent per read of a job's stream.
const EVENT_BATCH: usize = 256;
/// How long a watch waits for events before checking that its client is still there.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// The client-facing service.
pub struct JobsApi {
    c: Arc<Coordinator>,
}

impl JobsApi {
    /// The service over the shared coordinator.
    pub fn new(c: Arc<Coordinator>) -> Self {
        JobsApi { c }
    }

    /// A job request from its wire form, reading the uploaded pictures' sizes.
    async fn request(&self, spec: v1::JobSpec, tenant: &str) -> Result<JobRequest, Status> {
        use v1::job_spec::Source;
        let invalid = |e: JobError| Status::invalid_argument(e.to_string());
        let source =
            match spec.source {
                Some(Source::Prompts(list)) => JobSource::Prompts(
                    list.prompts
                        .into_iter()
                        .map(|p| PromptEntry {
                            text: p.text,
                            seeds: (!p.seeds.is_empty()).then_some(p.seeds),
                            settings: p.settings.unwrap_or_default().into(),
                            line: 0,
                        })
                        .collect(),
                ),
                Some(Source::PromptsText(text)) => {
                    JobSource::Prompts(parse_prompts_text(&text).map_err(invalid)?)
                }
                Some(Source::PromptsJsonl(text)) => {
                    JobSource::Prompts(parse_prompts_jsonl(&text).map_err(invalid)?)
                }
                Some(Source::PromptsJson(text)) => {
                    JobSource::Prompts(parse_prompts_json(&text).map_err(invalid)?)
                }
                Some(Source::Images(list)) => {
                    let mut images = Vec::with_capacity(list.images.len());
                    for image in list.images {
                        images.push(self.input_image(image, tenant).await?);
                    }
                    JobSource::Images(images)
                }
                None => return Err(Status::invalid_argument(
                    "the job has no prompts: give prompts, prompts_text, prompts_jsonl, prompts_json or images",
                )),
            };
        let sweeps = spec
            .sweeps
            .iter()
            .map(|s| Sweep::new(&s.key, &s.values))
            .collect::<Result<_, _>>()
            .map_err(|e| invalid(e.into()))?;
        Ok(JobRequest {
            name: spec.name,
            priority: spec.priority,
            settings: spec.settings.unwrap_or_default().into(),
            seeds: spec.seeds,
            source,
            sweeps,
        })
    }

    async fn input_image(&self, image: v1::InputImage, tenant: &str) -> Result<InputImage, Status> {
        let refuse = |why: &str| {
            Status::invalid_argument(format!(
                "input image '{}' (key '{}'): {why}",
                image.name, image.key
            ))
        };
        if !upload_usable_by(&image.key, tenant) {
            return Err(refuse("not a key UploadInput returned to this tenant"));
        }
        let data = self
            .c
            .store
            .read(&image.key)
            .await
            .map_err(|e| refuse(&e.to_string()))?;
        let artifact = describe(&image.key, &data);
        if artifact.width == 0 {
            return Err(refuse("not a PNG, JPEG or WebP picture"));
        }
        Ok(InputImage {
            name: image.name,
            artifact,
        })
    }

    /// A job the caller may see. Another tenant's job is reported as missing, so tenants
    /// cannot even learn which ids exist.
    async fn record(&self, caller: &Principal, id: &str) -> Result<JobRecord, Status> {
        check_id("job", id)?;
        self.c
            .backend
            .job(id)
            .await?
            .filter(|job| caller.may_access(&job.tenant))
            .ok_or_else(|| Status::not_found(format!("no job {id}")))
    }

    /// A job's status, with why it waits when no connected worker can take its work.
    async fn status(&self, caller: &Principal, id: &str) -> Result<v1::JobStatus, Status> {
        let record = self.record(caller, id).await?;
        let mut status = job_status(&record);
        if status.eta_ms.is_none() && record.state == JobState::Running {
            let rates = self.c.backend.rates().await?;
            status.eta_ms = record.eta_with(Some(&rates));
        }
        if record.counts.queued > 0 {
            let workers = self.c.backend.workers().await?;
            status.waiting_for = waiting_for(&record, &workers, now_ms(), 3 * self.c.lease_ms);
        }
        Ok(status)
    }

    /// Applies a change to a running job the caller may see (`change` runs it on the state
    /// store), answering the job's status after it; an ended job is left as it is and refused
    /// with FAILED_PRECONDITION naming its state.
    async fn control<F, Fut>(
        &self,
        caller: &Principal,
        id: &str,
        what: &str,
        change: F,
    ) -> Result<Response<v1::JobStatus>, Status>
    where
        F: FnOnce(Arc<Coordinator>, String) -> Fut,
        Fut: std::future::Future<Output = crate::state::StateResult<ControlOutcome>>,
    {
        Span::current().record("job", id);
        self.record(caller, id).await?;
        match change(self.c.clone(), id.to_string()).await? {
            ControlOutcome::NotFound => Err(Status::not_found(format!("no job {id}"))),
            ControlOutcome::AlreadyEnded(state) => Err(Status::failed_precondition(format!(
                "job {id} has ended ({}): there is nothing left to {what}",
                state.as_str()
            ))),
            ControlOutcome::Applied => {
                tracing::info!(job = %id, "job {what}d");
                Ok(Response::new(self.status(caller, id).await?))
            }
        }
    }

    /// The job of `spec`, validated and planned as job `id` of `caller`, with the caller's
    /// tenant quota: what SubmitJob stores and EstimateJob prices.
    async fn plan(
        &self,
        caller: &Principal,
        spec: v1::JobSpec,
        id: &str,
    ) -> Result<(JobRequest, JobPlan, Quota), Status> {
        let request = self.request(spec, caller.owner()).await?;
        let (limits, quota) = self.limits_of(caller);
        let plan = plan_job(id, &request, &self.c.defaults, &self.c.catalog, &limits)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((request, plan, quota))
    }

    /// Refuses a job no registered worker could ever run, saying why and how to queue it
    /// anyway.
    async fn check_capacity(&self, job: &NewJob) -> Result<(), Status> {
        let workers = self.c.backend.workers().await?;
        match refusal(job, &workers) {
            None => Ok(()),
            Some(reason) => Err(Status::failed_precondition(format!(
                "{reason}; submit with --queue-anyway to queue it until such a worker joins"
            ))),
        }
    }

    /// The limits of the caller's jobs and its tenant's admission quota.
    fn limits_of(&self, caller: &Principal) -> (Limits, Quota) {
        let Some(auth) = &self.c.auth else {
            return (self.c.limits.clone(), Quota::default());
        };
        let tenant = auth.tenant_limits(caller.owner());
        let quota = Quota {
            jobs_in_flight: tenant.jobs_in_flight,
            submissions_per_minute: tenant.submissions_per_minute,
        };
        (tenant.job_limits(&self.c.limits), quota)
    }
}

/// Longest id the coordinator gives (a task's: a job's 16 characters, a result index, a suffix).
const MAX_ID_CHARS: usize = 64;

/// Refuses what cannot be an id the coordinator gave, before it is looked up or echoed: a
/// long one would otherwise come back in the error and break the reply's header limit.
fn check_id(what: &str, id: &str) -> Result<(), Status> {
    let fits = id.len() <= MAX_ID_CHARS
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if fits {
        return Ok(());
    }
    let count = id.chars().count();
    let mut start: String = id
        .chars()
        .take(24)
        .collect::<String>()
        .escape_debug()
        .to_string();
    if count > 24 {
        start.push('…');
    }
    Err(Status::invalid_argument(format!(
        "'{start}' ({count} characters) is not a {what} id: ids are at most {MAX_ID_CHARS} \
         letters, digits, '.', '-' or '_', as `tessera submit` and `tessera status` print them"
    )))
}

#[tonic::async_trait]
impl Jobs for JobsApi {
    async fn ping(&self, _: Request<v1::PingRequest>) -> Result<Response<v1::PingReply>, Status> {
        // Passing the gate is the check: any client or admin token may ask.
        Ok(Response::new(v1::PingReply {
            version: env!("CARGO_PKG_VERSION").to_string(),
        }))
    }

    async fn submit_job(
        &self,
        request: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobReply>, Status> {
        let caller = Principal::of(&request)?;
        let spec = request
            .into_inner()
            .spec
            .ok_or_else(|| Status::invalid_argument("the request has no job spec"))?;
        let queue_anyway = spec.queue_anyway;
        let id = new_id();
        Span::current().record("job", &id);
        let c = &self.c;
        let webhook = c
            .webhooks
            .admit(&spec.webhook, caller.owner())
            .await
            .map_err(Status::invalid_argument)?;
        let (request, mut plan, quota) = self.plan(&caller, spec, &id).await?;
        let trace = current_traceparent();
        for t in &mut plan.tasks {
            t.trace.clone_from(&trace);
        }
        let tenant = caller.owner().to_string();
        let mut job = NewJob::planned(&id, request.name, request.priority, plan, tenant, quota);
        job.webhook = webhook;
        if !queue_anyway {
            self.check_capacity(&job).await?;
        }
        c.backend.create_job(&job, now_ms()).await?;
        c.metrics.job_planned(&job.expected);
        tracing::info!(job = %id, tenant = %job.tenant, results = job.units.len(), "job submitted");
        let status = self.status(&caller, &id).await?;
        Ok(Response::new(v1::SubmitJobReply {
            job_id: id,
            status: Some(status),
        }))
    }

    async fn upload_input(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::ArtifactRef>, Status> {
        let caller = Principal::of(&request)?;
        let (header, data) = read_upload(request.into_inner(), self.c.store.max_bytes()).await?;
        check_name(&header.name)?;
        // Decoding a large picture takes a while: off the async threads.
        let (name, picture, max_pixels) = (
            header.name.clone(),
            data.clone(),
            self.c.limits.max_input_pixels,
        );
        tokio::task::spawn_blocking(move || check_upload(&name, &picture, max_pixels))
            .await
            .map_err(|e| Status::internal(format!("checking the upload: {e}")))?
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = upload_key(caller.owner(), &new_id(), &header.name);
        let artifact = self.c.store.put(&key, data).await?;
        Ok(Response::new(artifact.into()))
    }

    async fn get_job(
        &self,
        request: Request<v1::GetJobRequest>,
    ) -> Result<Response<v1::JobStatus>, Status> {
        let caller = Principal::of(&request)?;
        let id = request.into_inner().job_id;
        Span::current().record("job", &id);
        Ok(Response::new(self.status(&caller, &id).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsReply>, Status> {
        let caller = Principal::of(&request)?;
        let r = request.into_inner();
        let limit = if r.limit == 0 { 100 } else { r.limit.min(1000) };
        let (jobs, total) = self
            .c
            .backend
            .jobs(caller.scope(), r.offset as usize, limit as usize)
            .await?;
        Ok(Response::new(v1::ListJobsReply {
            jobs: jobs.iter().map(job_status).collect(),
            total,
        }))
    }

    type WatchJobStream = MessageStream<v1::JobEvent>;

    async fn watch_job(
        &self,
        request: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let caller = Principal::of(&request)?;
        let r = request.into_inner();
        Span::current().record("job", &r.job_id);
        self.record(&caller, &r.job_id).await?;
        let c = self.c.clone();
        let stream = async_stream(move |tx| async move {
            let mut after = r.after;
            loop {
                let read = c.backend.events(&r.job_id, &after, EVENT_BATCH, WATCH_POLL);
                let batch = tokio::select! {
                    _ = c.shutdown.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("the coordinator is shutting down; watch again"))).await;
                        return;
                    }
                    _ = tx.closed() => return,
                    batch = read => batch,
                };
                let batch = match batch {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                for event in batch {
                    let preview = match &event.kind {
                        EventKind::Preview { task, .. } if r.include_previews => c
                            .store
                            .read(&preview_key(job_of_task(task), task))
                            .await
                            .ok()
                            .map(|b| b.to_vec()),
                        _ => None,
                    };
                    let done = matches!(event.kind, EventKind::JobDone { .. });
                    after = event.cursor.clone();
                    if tx
                        .send(Ok(job_event(&r.job_id, &event, preview)))
                        .await
                        .is_err()
                        || done
                    {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn cancel_job(
        &self,
        request: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::JobStatus>, Status> {
        let caller = Principal::of(&request)?;
        let id = request.into_inner().job_id;
        Span::current().record("job", &id);
        self.record(&caller, &id).await?;
        match self.c.backend.cancel(&id, &self.c.policy, now_ms()).await? {
            CancelOutcome::NotFound => Err(Status::not_found(format!("no job {id}"))),
            CancelOutcome::Cancelled => {
                tracing::info!(job = %id, "job cancelled");
                let job = self.record(&caller, &id).await?;
                self.c.metrics.job_ended(&job);
                Ok(Response::new(job_status(&job)))
            }
            CancelOutcome::AlreadyEnded(_) => Ok(Response::new(self.status(&caller, &id).await?)),
        }
    }

    async fn set_priority(
        &self,
        request: Request<v1::SetPriorityRequest>,
    ) -> Result<Response<v1::JobStatus>, Status> {
        let caller = Principal::of(&request)?;
        let r = request.into_inner();
        tessera_core::job::check_priority(r.priority)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.control(&caller, &r.job_id, "reprioritise", |c, id| async move {
            c.backend
                .set_priority(&id, r.priority, &c.policy, now_ms())
                .await
        })
        .await
    }

    async fn pause_job(
        &self,
        request: Request<v1::PauseJobRequest>,
    ) -> Result<Response<v1::JobStatus>, Status> {
        let caller = Principal::of(&request)?;
        let id = request.into_inner().job_id;
        self.control(&caller, &id, "pause", |c, id| async move {
            c.backend.pause(&id, &c.policy, now_ms()).await
        })
        .await
    }

    async fn resume_job(
        &self,
        request: Request<v1::ResumeJobRequest>,
    ) -> Result<Response<v1::JobStatus>, Status> {
        let caller = Principal::of(&request)?;
        let id = request.into_inner().job_id;
        self.control(&caller, &id, "resume", |c, id| async move {
            c.backend.resume(&id, &c.policy, now_ms()).await
        })
        .await
    }

    async fn list_results(
        &self,
        request: Request<v1::ListResultsRequest>,
    ) -> Result<Response<v1::ListResultsReply>, Status> {
        let caller = Principal::of(&request)?;
        let r = request.into_inner();
        Span::current().record("job", &r.job_id);
        self.record(&caller, &r.job_id).await?;
        let limit = if r.limit == 0 {
            1000
        } else {
            r.limit.min(1000)
        };
        let (results, total) = self
            .c
            .backend
            .results(&r.job_id, r.offset as usize, limit as usize)
            .await?
            .ok_or_else(|| Status::not_found(format!("no job {}", r.job_id)))?;
        Ok(Response::new(v1::ListResultsReply {
            results: results.iter().map(result_info).collect(),
            total,
        }))
    }

    type FetchResultStream = MessageStream<v1::DataChunk>;

    async fn fetch_result(
        &self,
        request: Request<v1::FetchResultRequest>,
    ) -> Result<Response<Self::FetchResultStream>, Status> {
        let caller = Principal::of(&request)?;
        let r = request.into_inner();
        Span::current().record("job", &r.job_id);
        self.record(&caller, &r.job_id).await?;
        let (results, total) = self
            .c
            .backend
            .results(&r.job_id, r.index as usize, 1)
            .await?
            .ok_or_else(|| Status::not_found(format!("no job {}", r.job_id)))?;
        let result = results.first().ok_or_else(|| {
            Status::not_found(format!(
                "job {} has no result {} (it has {total})",
                r.job_id, r.index
            ))
        })?;
        let output = match (&result.state, &result.output) {
            (ResultState::Done, Some(output)) => output,
            (state, _) => {
                return Err(Status::failed_precondition(format!(
                    "result {} of job {} is not done: it is {state:?}{}",
                    r.index,
                    r.job_id,
                    result
                        .error
                        .as_ref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                )))
            }
        };
        let stream = stream_artifact(&self.c.store, &output.key, r.offset).await?;
        Ok(Response::new(stream))
    }

    async fn get_task(
        &self,
        request: Request<v1::GetTaskRequest>,
    ) -> Result<Response<v1::TaskInfo>, Status> {
        let caller = Principal::of(&request)?;
        let id = request.into_inner().task_id;
        check_id("task", &id)?;
        Span::current().record("task", &id);
        let missing = || Status::not_found(format!("no task {id}"));
        self.record(&caller, job_of_task(&id))
            .await
            .map_err(|_| missing())?;
        let task = self.c.backend.task(&id).await?.ok_or_else(missing)?;
        Ok(Response::new(task_info(&task)))
    }

    async fn discard_upload(
        &self,
        request: Request<v1::DiscardUploadRequest>,
    ) -> Result<Response<v1::DiscardUploadReply>, Status> {
        let caller = Principal::of(&request)?;
        let key = request.into_inner().key;
        let owned = upload_usable_by(&key, caller.owner()) && !key.contains("..");
        if !owned {
            return Err(Status::not_found(format!(
                "no upload {}",
                key.escape_debug()
            )));
        }
        self.c.store.delete(&key).await?;
        tracing::info!(key = %key, "upload discarded");
        Ok(Response::new(v1::DiscardUploadReply {}))
    }

    async fn list_workers(
        &self,
        request: Request<v1::ListWorkersRequest>,
    ) -> Result<Response<v1::ListWorkersReply>, Status> {
        if Principal::of(&request)?.role != Role::Admin {
            return Err(Status::permission_denied(
                "only an admin token may list the workers",
            ));
        }
        let now = now_ms();
        let workers = self.c.backend.workers().await?;
        Ok(Response::new(v1::ListWorkersReply {
            workers: workers
                .iter()
                .map(|w| worker_info(w, now, 3 * self.c.lease_ms))
                .collect(),
        }))
    }

    async fn estimate_job(
        &self,
        request: Request<v1::JobSpec>,
    ) -> Result<Response<v1::JobEstimate>, Status> {
        let caller = Principal::of(&request)?;
        let spec = request.into_inner();
        let (request, plan, _) = self.plan(&caller, spec, "estimate").await?;
        let estimate = estimate_job(&self.c, &plan, request.priority).await?;
        Ok(Response::new(estimate))
    }
}
