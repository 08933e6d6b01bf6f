//! State records in their wire form.

use crate::state::{
    Event, EventKind, JobRecord, JobState, ResultRecord, ResultState, StateCounts, TaskRecord,
    TaskState, WebhookStatus, WorkerRecord,
};
use tessera_proto::convert::task_spec;
use tessera_proto::v1;

/// A job's state on the wire.
pub fn job_state(state: JobState) -> v1::JobState {
    match state {
        JobState::Running => v1::JobState::Running,
        JobState::Succeeded => v1::JobState::Succeeded,
        JobState::Failed => v1::JobState::Failed,
        JobState::Cancelled => v1::JobState::Cancelled,
    }
}

fn task_state(state: TaskState) -> v1::TaskState {
    match state {
        TaskState::Queued => v1::TaskState::Queued,
        TaskState::Blocked => v1::TaskState::Blocked,
        TaskState::Running => v1::TaskState::Running,
        TaskState::Done => v1::TaskState::Done,
        TaskState::Failed => v1::TaskState::Failed,
        TaskState::Cancelled => v1::TaskState::Cancelled,
    }
}

fn counts(c: &StateCounts, planned: u64) -> v1::TaskCounts {
    v1::TaskCounts {
        queued: c.queued,
        blocked: c.blocked,
        running: c.running,
        done: c.done,
        failed: c.failed,
        cancelled: c.cancelled,
        planned,
    }
}

/// A job's status.
pub fn job_status(job: &JobRecord) -> v1::JobStatus {
    v1::JobStatus {
        job_id: job.id.clone(),
        name: job.name.clone(),
        priority: job.priority,
        state: job_state(job.state) as i32,
        upscale_only: job.upscale_only,
        tasks: Some(counts(&job.counts, job.planned())),
        results_total: job.units_total,
        results_done: job.units_done,
        results_failed: job.units_failed,
        queue_position: job.queue_position,
        eta_ms: job.eta_ms(),
        submitted_at_ms: job.submitted_ms,
        finished_at_ms: job.finished_ms,
        settings: Some((&job.settings).into()),
        // Needs the workers: `JobsApi::status` fills it in.
        waiting_for: String::new(),
        attempts: job.attempts,
        retries: job.retries,
        paused: job.paused,
        webhook: webhook_status(&job.webhook),
    }
}

/// A job's webhook status; `None` without a webhook.
fn webhook_status(w: &WebhookStatus) -> Option<v1::WebhookStatus> {
    (!w.url.is_empty()).then(|| v1::WebhookStatus {
        url: w.url.clone(),
        delivered: w.delivered,
        failures: w.failures,
        dropped: w.dropped,
        last_error: w.last_error.clone(),
        pending: w.pending,
        next_attempt_ms: w.next_ms,
    })
}

/// A result with what it was made from.
pub fn result_info(r: &ResultRecord) -> v1::ResultInfo {
    let state = match r.state {
        ResultState::Pending => v1::ResultState::Pending,
        ResultState::Done => v1::ResultState::Done,
        ResultState::Failed => v1::ResultState::Failed,
        ResultState::Cancelled => v1::ResultState::Cancelled,
    };
    v1::ResultInfo {
        index: r.unit.index,
        state: state as i32,
        prompt_index: r.unit.prompt_index,
        prompt: r.unit.prompt.clone().unwrap_or_default(),
        seed: r.unit.seed,
        input_name: r.unit.input_name.clone().unwrap_or_default(),
        settings: Some((&r.unit.settings).into()),
        output: r.output.clone().map(Into::into),
        error: r.error.clone().unwrap_or_default(),
        sweep: r
            .unit
            .sweep
            .iter()
            .map(|v| v1::SweepValue {
                key: v.key.clone(),
                value: v.value.clone(),
            })
            .collect(),
        label: tessera_core::sweep::label(&r.unit.sweep),
    }
}

/// A task's whole record.
pub fn task_info(t: &TaskRecord) -> v1::TaskInfo {
    v1::TaskInfo {
        task_id: t.id.clone(),
        job_id: t.job.clone(),
        kind: v1::TaskKind::from(t.kind) as i32,
        state: task_state(t.state) as i32,
        result_index: t.unit,
        attempt: t.attempt,
        failures: t.failures,
        expiries: t.expiries,
        worker_id: t.worker.clone(),
        errors: t.errors.clone(),
        iteration: t.iteration,
        loss: t.loss,
        checkpoint: t.checkpoint.clone().map(Into::into),
        checkpoint_iteration: t.checkpoint_iteration,
        output: t.output.clone().map(Into::into),
    }
}

/// A leased task as a worker receives it.
pub fn leased_task(t: &TaskRecord, heartbeat_interval_ms: u64) -> v1::Task {
    v1::Task {
        task_id: t.id.clone(),
        job_id: t.job.clone(),
        kind: v1::TaskKind::from(t.kind) as i32,
        attempt: t.attempt,
        result_index: t.unit,
        spec: Some(task_spec(&t.spec)),
        inputs: t.inputs.values().cloned().map(Into::into).collect(),
        checkpoint: t.checkpoint.clone().map(Into::into),
        checkpoint_iteration: t.checkpoint_iteration,
        lease_deadline_ms: t.deadline_ms,
        heartbeat_interval_ms,
        traceparent: t.trace.clone(),
    }
}

/// A worker as listed; `alive` when heard from within `alive_ms`.
pub fn worker_info(w: &WorkerRecord, now: u64, alive_ms: u64) -> v1::WorkerInfo {
    v1::WorkerInfo {
        worker_id: w.id.clone(),
        name: w.name.clone(),
        capabilities: Some(w.capabilities.clone().into()),
        version: w.version.clone(),
        registered_at_ms: w.registered_ms,
        last_seen_ms: w.last_seen_ms,
        alive: now.saturating_sub(w.last_seen_ms) <= alive_ms,
        current_task: w.current_task.clone().unwrap_or_default(),
        leased_ahead: w.ahead_task.clone().unwrap_or_default(),
        tasks_done: w.tasks_done,
    }
}

/// An event on the wire; `preview` is the picture for preview events when asked for.
pub fn job_event(job: &str, e: &Event, preview: Option<Vec<u8>>) -> v1::JobEvent {
    use v1::job_event::Event as E;
    let event = match &e.kind {
        EventKind::TaskStarted {
            task,
            kind,
            attempt,
            worker,
            unit,
        } => E::TaskStarted(v1::TaskStarted {
            task_id: task.clone(),
            kind: v1::TaskKind::from(*kind) as i32,
            attempt: *attempt,
            worker_id: worker.clone(),
            result_index: *unit,
        }),
        EventKind::Progress {
            task,
            attempt,
            iteration,
            iterations,
            loss,
            checkpoint_iteration,
        } => E::Progress(v1::TaskProgress {
            task_id: task.clone(),
            attempt: *attempt,
            iteration: *iteration,
            iterations: *iterations,
            loss: *loss,
            checkpoint_iteration: *checkpoint_iteration,
        }),
        EventKind::Preview {
            task,
            attempt,
            iteration,
        } => E::Preview(v1::TaskPreview {
            task_id: task.clone(),
            attempt: *attempt,
            iteration: *iteration,
            image: preview.unwrap_or_default(),
        }),
        EventKind::TaskDone {
            task,
            kind,
            attempt,
            worker,
            unit,
            is_final,
            output,
        } => E::TaskDone(v1::TaskDone {
            task_id: task.clone(),
            kind: v1::TaskKind::from(*kind) as i32,
            attempt: *attempt,
            worker_id: worker.clone(),
            result_index: *unit,
            is_result: *is_final,
            output: Some(output.clone().into()),
        }),
        EventKind::TaskFailed {
            task,
            attempt,
            worker,
            error,
            will_retry,
        } => E::TaskFailed(v1::TaskFailed {
            task_id: task.clone(),
            attempt: *attempt,
            worker_id: worker.clone(),
            error: error.clone(),
            will_retry: *will_retry,
        }),
        EventKind::TaskRequeued {
            task,
            attempt,
            worker,
            reason,
        } => E::TaskRequeued(v1::TaskRequeued {
            task_id: task.clone(),
            attempt: *attempt,
            worker_id: worker.clone(),
            reason: reason.clone(),
        }),
        EventKind::JobDone {
            state,
            counts: c,
            units_done,
            units_failed,
        } => E::JobDone(v1::JobDone {
            state: job_state(*state) as i32,
            tasks: Some(counts(c, c.active() + c.done + c.failed + c.cancelled)),
            results_done: *units_done,
            results_failed: *units_failed,
        }),
    };
    v1::JobEvent {
        cursor: e.cursor.clone(),
        time_ms: e.time_ms,
        job_id: job.to_string(),
        event: Some(event),
    }
}
