//! `tessera status`, `jobs`, `cancel`, `priority`, `pause`, `resume` and `workers`: one call
//! each, printed as a table or JSON.

use tessera_proto::v1;

use crate::farm::Farm;
use crate::output::{ago, duration, job_json, job_state, print_json, shown, table, worker_json};

/// Prints one job's state.
pub async fn status(farm: &mut Farm, job: &str, json: bool) -> anyhow::Result<()> {
    let status = farm.job(job).await?;
    show_job(&status, json);
    Ok(())
}

/// Prints a job's state, as `status` does: after a change (cancel, priority, pause, resume),
/// it shows what the change did.
pub fn show_job(job: &v1::JobStatus, json: bool) {
    if json {
        print_json(&job_json(job));
        return;
    }
    let c = job.tasks.unwrap_or_default();
    let s = job.settings.clone().unwrap_or_default();
    let eta = job.eta_ms.map_or("-".into(), duration);
    let rows = [
        ("job", job.job_id.clone()),
        ("name", job.name.clone()),
        ("state", shown_state(job)),
        (
            "results",
            format!(
                "{} of {} done, {} failed",
                job.results_done, job.results_total, job.results_failed
            ),
        ),
        (
            "tasks",
            format!(
                "{} queued, {} blocked, {} running, {} done, {} failed, {} cancelled, {} planned",
                c.queued, c.blocked, c.running, c.done, c.failed, c.cancelled, c.planned
            ),
        ),
        (
            "attempts",
            format!("{} leased, {} retried", job.attempts, job.retries),
        ),
        ("priority", job.priority.to_string()),
        ("queue", format!("{} task(s) ahead", job.queue_position)),
        ("eta", eta),
        ("submitted", ago(job.submitted_at_ms)),
        ("finished", ago(job.finished_at_ms)),
        what_it_does(job.upscale_only, job.results_total, &s),
    ];
    for (key, value) in rows {
        println!("{key:<10}{}", shown(&value));
    }
    if !job.waiting_for.is_empty() {
        println!("{:<10}{}", "waiting", shown(&job.waiting_for));
    }
    if let Some(hook) = &job.webhook {
        println!("{:<10}{}", "webhook", shown(&webhook_line(hook)));
        if !hook.last_error.is_empty() {
            println!("{:<10}{}", "  error", shown(&hook.last_error));
        }
    }
}

/// The status row of a job's webhook: where, what was delivered, what failed, what waits.
fn webhook_line(hook: &v1::WebhookStatus) -> String {
    let mut line = format!(
        "{}: {} delivered, {} failed attempt(s), {} dropped",
        hook.url, hook.delivered, hook.failures, hook.dropped
    );
    if hook.pending {
        line.push_str(", events pending");
        if hook.next_attempt_ms > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let wait = duration(hook.next_attempt_ms.saturating_sub(now));
            line.push_str(&format!(" (next attempt in {wait})"));
        }
    }
    line
}

/// A job's state as the status table shows it: a paused job is still running, but waits.
fn shown_state(job: &v1::JobStatus) -> String {
    let state = job_state(job.state());
    if job.paused && job.state() == v1::JobState::Running {
        format!(
            "{state} (paused: `tessera resume {}` continues it)",
            job.job_id
        )
    } else {
        state.to_string()
    }
}

/// The status row saying what a job makes: a render job by its render settings, an
/// upscale-only job by its pictures, model and tiles, since it renders nothing and its render
/// settings are only the farm's defaults.
fn what_it_does(upscale_only: bool, pictures: u64, s: &v1::Settings) -> (&'static str, String) {
    if !upscale_only {
        let render = format!(
            "{}x{}, {} iterations, upscale {}",
            s.width(),
            s.height(),
            s.iterations(),
            s.upscale_model()
        );
        return ("settings", render);
    }
    let tiles = match s.tile() {
        0 => "each picture in one tile".to_string(),
        tile => format!(
            "tiles of {tile} px (pad {}, overlap {})",
            s.tile_pad(),
            s.tile_overlap()
        ),
    };
    let upscale = format!(
        "{pictures} picture(s) with {} (x{}), {tiles}",
        s.upscale_model(),
        s.upscale_scale()
    );
    ("upscale", upscale)
}

/// Lists the newest jobs.
pub async fn jobs(farm: &mut Farm, json: bool) -> anyhow::Result<()> {
    let reply = farm.jobs().await?;
    if json {
        let jobs: Vec<_> = reply.jobs.iter().map(job_json).collect();
        print_json(&serde_json::json!({"jobs": jobs, "total": reply.total}));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = reply
        .jobs
        .iter()
        .map(|j| {
            vec![
                j.job_id.clone(),
                j.name.clone(),
                job_state(j.state()).into(),
                format!("{}/{}", j.results_done, j.results_total),
                j.results_failed.to_string(),
                j.priority.to_string(),
                ago(j.submitted_at_ms),
            ]
        })
        .collect();
    let headers = [
        "JOB",
        "NAME",
        "STATE",
        "DONE",
        "FAILED",
        "PRIORITY",
        "SUBMITTED",
    ];
    println!("{}", table(&headers, &rows));
    if reply.total > reply.jobs.len() as u64 {
        println!("({} of {} jobs shown)", reply.jobs.len(), reply.total);
    }
    Ok(())
}

/// Lists the workers.
/// The largest work a worker takes, e.g. "496 px side, 300 iterations" ("any" when unlimited).
fn limits(caps: &v1::Capabilities) -> String {
    let limits: Vec<String> = [
        (u64::from(caps.max_side), "px side"),
        (u64::from(caps.max_iterations), "iterations"),
        (caps.max_pixels, "pixels"),
    ]
    .into_iter()
    .filter(|(limit, _)| *limit > 0)
    .map(|(limit, what)| format!("{limit} {what}"))
    .collect();
    if limits.is_empty() {
        "any".into()
    } else {
        limits.join(", ")
    }
}

/// Prints the workers the farm knows: what each offers and takes, and what it is doing.
pub async fn workers(farm: &mut Farm, json: bool) -> anyhow::Result<()> {
    let workers = farm.workers().await?;
    if json {
        let list: Vec<_> = workers.iter().map(worker_json).collect();
        print_json(&serde_json::json!({ "workers": list }));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = workers
        .iter()
        .map(|w| {
            let caps = w.capabilities.clone().unwrap_or_default();
            let task = match (w.current_task.as_str(), w.leased_ahead.as_str()) {
                ("", _) => "idle".to_string(),
                (current, "") => current.to_string(),
                (current, ahead) => format!("{current} (next {ahead})"),
            };
            vec![
                w.worker_id.clone(),
                w.name.clone(),
                caps.device.clone(),
                limits(&caps),
                if w.alive { "yes" } else { "no" }.into(),
                task,
                w.tasks_done.to_string(),
                ago(w.last_seen_ms),
            ]
        })
        .collect();
    let headers = [
        "WORKER", "NAME", "DEVICE", "TAKES", "ALIVE", "TASK", "DONE", "SEEN",
    ];
    println!("{}", table(&headers, &rows));
    Ok(())
}
