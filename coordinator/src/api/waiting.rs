//! Why a job is not moving: the work it has queued needs something no live worker offers. A
//! farm accepts such a job (a worker with the model may join, or KEDA may start one), but its
//! owner should not have to guess why nothing happens, so `GetJob` says it in words.

use tessera_core::job::{sorted_models, Settings};
use tessera_core::task::{Capabilities, Requirements, TaskKind};

use crate::state::{JobRecord, JobState, WorkerRecord};

/// What `job` waits for that none of `workers` heard from within `alive_ms` of `now` can
/// give; empty when its queued work has a worker to go to (or it has none queued).
pub fn waiting_for(job: &JobRecord, workers: &[WorkerRecord], now: u64, alive_ms: u64) -> String {
    if job.state != JobState::Running || job.counts.queued == 0 {
        return String::new();
    }
    if job.paused {
        return format!(
            "paused: none of its tasks is offered to workers until `tessera resume {}`",
            job.id
        );
    }
    let live: Vec<&Capabilities> = workers
        .iter()
        .filter(|w| now.saturating_sub(w.last_seen_ms) <= alive_ms)
        .map(|w| &w.capabilities)
        .collect();
    if live.is_empty() {
        return "waiting for a worker: none is connected to the farm".into();
    }
    let unmet = next_work(job)
        .into_iter()
        .find(|(needs, _)| !live.iter().any(|caps| needs.satisfied_by(caps)));
    match unmet {
        Some((needs, models)) => format!(
            "waiting for a worker that can run its {} tasks: none of the {} connected worker(s) \
             offers {}",
            needs.kind,
            live.len(),
            describe(&needs, &models)
        ),
        None => String::new(),
    }
}

/// The requirements of the work the job has left, from its settings: its renders while any is
/// left, then their upscaling; each with its models as the job names them.
fn next_work(job: &JobRecord) -> Vec<(Requirements, Vec<String>)> {
    let left = |kind| job.expected.get(kind) > job.ended.get(kind);
    let settings: &Settings = &job.settings;
    let mut needs = Vec::new();
    if left(TaskKind::Generate) {
        let models = vec![settings.clip_model.clone(), settings.vqgan_model.clone()];
        needs.push((settings.generate_requirements(), models));
    }
    if let Some(upscale) = settings
        .upscale
        .as_ref()
        .filter(|_| left(TaskKind::UpscaleTile))
    {
        let requirements = Requirements {
            kind: TaskKind::UpscaleTile,
            models: sorted_models([&upscale.model]),
            device: settings.device.clone(),
            pixels: 0,
            side: 0,
            iterations: 0,
        };
        needs.push((requirements, vec![upscale.model.clone()]));
    }
    needs
}

/// "the models ViT-B/32 and vqgan_imagenet_f16_16384 on cuda", "pictures of 262144 pixels".
fn describe(needs: &Requirements, models: &[String]) -> String {
    let models = match models {
        [] => "its task kind".to_string(),
        [one] => format!("the model {one}"),
        many => format!("the models {}", many.join(" and ")),
    };
    let device = match needs.device.as_str() {
        "" => String::new(),
        device => format!(" on {device}"),
    };
    let pixels = match needs.pixels {
        0 => String::new(),
        n => format!(", for pictures of {n} pixels"),
    };
    let side = match needs.side {
        0 => String::new(),
        n => format!(" with a {n}-pixel side"),
    };
    let iterations = match needs.iterations {
        0 => String::new(),
        n => format!(" and {n} iterations"),
    };
    format!("{models}{device}{pixels}{side}{iterations}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tessera_core::task::KindCounts;

    fn job(queued: u64) -> JobRecord {
        let mut job = JobRecord {
            id: "j".into(),
            name: String::new(),
            tenant: String::new(),
            priority: 0,
            state: JobState::Running,
            upscale_only: false,
            settings: Settings::farm_defaults(),
            submitted_ms: 0,
            finished_ms: 0,
            counts: Default::default(),
            expected: KindCounts {
                generate: 1,
                upscale_tile: 4,
                stitch: 1,
            },
            ended: KindCounts::default(),
            busy_ms: KindCounts::default(),
            timed: KindCounts::default(),
            units_total: 1,
            units_done: 0,
            units_failed: 0,
            attempts: 0,
            retries: 0,
            paused: false,
            queue_position: 0,
            webhook: Default::default(),
        };
        job.counts.queued = queued;
        job
    }

    fn worker(kinds: Vec<TaskKind>, models: &[&str], last_seen_ms: u64) -> WorkerRecord {
        WorkerRecord {
            id: "w".into(),
            name: "w".into(),
            capabilities: Capabilities {
                kinds,
                models: sorted_models(&models.iter().map(|m| m.to_string()).collect::<Vec<_>>()),
                device: "cpu".into(),
                ..Capabilities::default()
            },
            version: String::new(),
            registered_ms: 0,
            last_seen_ms,
            current_task: None,
            ahead_task: None,
            tasks_done: 0,
        }
    }

    #[test]
    fn a_job_says_which_models_no_live_worker_has_and_nothing_once_one_has_them() {
        let upscaler = worker(vec![TaskKind::UpscaleTile], &["realesrgan-x4plus"], 1_000);
        let said = waiting_for(&job(1), std::slice::from_ref(&upscaler), 1_000, 100);
        assert_eq!(
            said,
            "waiting for a worker that can run its generate tasks: none of the 1 connected \
             worker(s) offers the models ViT-B/32 and vqgan_imagenet_f16_16384, for pictures of \
             246016 pixels with a 496-pixel side and 500 iterations"
        );
        let renderer = worker(
            vec![TaskKind::Generate],
            &["ViT-B/32", "vqgan_imagenet_f16_16384"],
            1_000,
        );
        assert_eq!(
            waiting_for(&job(1), &[upscaler.clone(), renderer.clone()], 1_000, 100),
            ""
        );
        let gone = WorkerRecord {
            last_seen_ms: 0,
            ..renderer
        };
        assert!(waiting_for(&job(1), &[gone], 1_000, 100).contains("none is connected"));
        assert_eq!(waiting_for(&job(0), &[], 1_000, 100), "", "nothing queued");
    }
}
