//! `Jobs.EstimateJob` (`tessera submit --dry-run`): what a job would make and how long it
//! would take on the farm as it is now, from the farm's measured rates
//! ([`tessera_core::rates`]), without storing anything.

use super::{now_ms, Coordinator};
use crate::state::{JobState, Rates};
use tessera_core::plan::JobPlan;
use tessera_core::rates::{estimate, plan_work};
use tessera_proto::v1;
use tonic::Status;

/// Jobs looked at for the work ahead of a new one: the newest, which hold every running job
/// but on a farm with a very long queue.
const JOBS_AHEAD_READ: usize = 1000;

/// Prices `plan`, a job of priority `priority`: its tasks at the farm's rates, on the live
/// workers that could take its first tasks, after the work left in running jobs of its
/// priority or higher.
pub async fn estimate_job(
    c: &Coordinator,
    plan: &JobPlan,
    priority: i32,
) -> Result<v1::JobEstimate, Status> {
    let rates = c.backend.rates().await?;
    let workers = capable_workers(c, plan).await?;
    let ahead_ms = work_ahead(c, priority, &rates).await?;
    let work = plan_work(plan).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let e = estimate(&work, &rates, workers, ahead_ms);
    Ok(v1::JobEstimate {
        results: plan.units.len() as u64,
        generate_tasks: e.tasks.generate,
        upscale_tile_tasks: e.tasks.upscale_tile,
        stitch_tasks: e.tasks.stitch,
        worker_ms: e.worker_ms,
        wall_ms: e.wall_ms,
        workers,
        ahead_ms,
        unmeasured: e.unmeasured,
    })
}

/// Workers heard from within three leases that could take the job's first tasks.
async fn capable_workers(c: &Coordinator, plan: &JobPlan) -> Result<u32, Status> {
    let needs = match plan.tasks.first() {
        Some(task) => Some(
            task.spec
                .requirements()
                .map_err(|e| Status::invalid_argument(e.to_string()))?,
        ),
        None => None,
    };
    let now = now_ms();
    let workers = c.backend.workers().await?;
    let capable = workers
        .iter()
        .filter(|w| now.saturating_sub(w.last_seen_ms) <= 3 * c.lease_ms)
        .filter(|w| {
            needs
                .as_ref()
                .is_none_or(|n| n.satisfied_by(&w.capabilities))
        })
        .count();
    Ok(capable as u32)
}

/// Worker-milliseconds left in running jobs of priority `priority` or higher, at their own
/// averages or the farm's rates (jobs with neither count nothing).
async fn work_ahead(c: &Coordinator, priority: i32, rates: &Rates) -> Result<u64, Status> {
    let (jobs, _) = c.backend.jobs(None, 0, JOBS_AHEAD_READ).await?;
    Ok(jobs
        .iter()
        .filter(|j| j.state == JobState::Running && !j.paused && j.priority >= priority)
        .filter_map(|j| j.work_left_ms(Some(rates)))
        .sum())
}
