//! `tessera status`, `jobs`, `cancel` and `workers`: one call each, printed as a table or JSON.

use tessera_proto::v1;

use crate::farm::Farm;
use crate::output::{ago, duration, job_json, job_state, print_json, shown, table, worker_json};

/// Prints one job's state.
pub async fn status(farm: &mut Farm, job: &str, json: bool) -> anyhow::Result<()> {
    let status = farm.job(job).await?;
    show_job(&status, json);
    Ok(())
}

/// Cancels a job and prints its state afterwards.
pub async fn cancel(farm: &mut Farm, job: &str, json: bool) -> anyhow::Result<()> {
    let status = farm.cancel(job).await?;
    show_job(&status, json);
    Ok(())
}

fn show_job(job: &v1::JobStatus, json: bool) {
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
        ("state", job_state(job.state()).to_string()),
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
                caps.device,
                if w.alive { "yes" } else { "no" }.into(),
                task,
                w.tasks_done.to_string(),
                ago(w.last_seen_ms),
            ]
        })
        .collect();
    let headers = ["WORKER", "NAME", "DEVICE", "ALIVE", "TASK", "DONE", "SEEN"];
    println!("{}", table(&headers, &rows));
    Ok(())
}
