//! Whether a job could ever run on the farm: a job whose renders are larger, or longer, than
//! every registered worker takes (or that needs a model none has) would wait forever, as AI
//! Horde's stuck "pending" jobs do. It is refused at submission with the reason, unless its
//! submitter asks to queue it anyway (a worker that takes it may join later).
//!
//! A farm with no worker registered at all refuses nothing: an autoscaled farm (KEDA) starts its
//! workers when work waits.

use std::collections::BTreeMap;

use tessera_core::task::{Capabilities, NewTask, Requirements, TaskKind, TaskSpec};

use crate::state::{NewJob, WorkerRecord};

/// Why no registered worker could ever run some of `job`'s work; `None` when every part of it
/// has a worker, or when no worker is registered.
pub fn refusal(job: &NewJob, workers: &[WorkerRecord]) -> Option<String> {
    if workers.is_empty() {
        return None;
    }
    let offered: Vec<&Capabilities> = workers.iter().map(|w| &w.capabilities).collect();
    work_of(job)
        .into_iter()
        .find_map(|(needs, work)| unmet(&needs, &work, &offered))
}

/// What a part of a job is, in words for the refusal.
#[derive(Clone, Debug)]
struct Work {
    /// "512x512 renders", "upscale tiles".
    what: String,
    /// Models it needs, as the job names them.
    models: Vec<String>,
}

/// Each distinct kind of work `job` has: its first tasks (its renders, or an upscale-only job's
/// tiles and stitches) and, for renders that are upscaled, the upscale that follows.
fn work_of(job: &NewJob) -> BTreeMap<Requirements, Work> {
    let mut work = BTreeMap::new();
    for task in &job.tasks {
        if let Some((needs, what)) = first_work(task) {
            work.entry(needs).or_insert(what);
        }
    }
    if let Some(upscale) = job.settings.upscale.as_ref().filter(|_| !job.upscale_only) {
        let needs = Requirements {
            kind: TaskKind::UpscaleTile,
            models: tessera_core::job::sorted_models([&upscale.model]),
            device: job.settings.device.clone(),
            pixels: 0,
            side: 0,
            iterations: 0,
        };
        let what = Work {
            what: "upscale tiles".into(),
            models: vec![upscale.model.clone()],
        };
        work.entry(needs).or_insert(what);
    }
    work
}

/// A task's requirements with what it is in words.
fn first_work(task: &NewTask) -> Option<(Requirements, Work)> {
    let needs = task.spec.requirements().ok()?;
    let work = match &task.spec {
        TaskSpec::Generate { settings, .. } => Work {
            what: format!("{}x{} renders", settings.width, settings.height),
            models: vec![settings.clip_model.clone(), settings.vqgan_model.clone()],
        },
        TaskSpec::UpscaleTile { model, .. } => Work {
            what: "upscale tiles".into(),
            models: vec![model.clone()],
        },
        TaskSpec::Stitch { .. } => Work {
            what: "stitches".into(),
            models: Vec::new(),
        },
    };
    Some((needs, work))
}

/// Why none of `offered` can run work needing `needs`; `None` when one can.
fn unmet(needs: &Requirements, work: &Work, offered: &[&Capabilities]) -> Option<String> {
    if offered.iter().any(|caps| needs.satisfied_by(caps)) {
        return None;
    }
    let unlimited = Requirements {
        pixels: 0,
        side: 0,
        iterations: 0,
        ..needs.clone()
    };
    let able: Vec<&Capabilities> = offered
        .iter()
        .copied()
        .filter(|caps| unlimited.satisfied_by(caps))
        .collect();
    if able.is_empty() {
        return Some(format!(
            "no registered worker runs {} with {}",
            work.what,
            offered_as(needs, &work.models)
        ));
    }
    let of_iterations = match needs.iterations {
        0 => String::new(),
        n => format!(" of {n} iterations"),
    };
    let limits = [
        Limit {
            needed: u64::from(needs.side),
            offered: |c| u64::from(c.max_side),
            what: String::new(),
            most: "the longest side any takes is",
        },
        Limit {
            needed: u64::from(needs.iterations),
            offered: |c| u64::from(c.max_iterations),
            what: of_iterations.clone(),
            most: "the most iterations any takes is",
        },
        Limit {
            needed: needs.pixels,
            offered: |c| c.max_pixels,
            what: String::new(),
            most: "the most pixels any takes is",
        },
    ];
    for limit in limits {
        let offered = limit.offered;
        if able
            .iter()
            .all(|caps| offered(caps) != 0 && limit.needed > offered(caps))
        {
            let most = able.iter().map(|caps| offered(caps)).max().unwrap_or(0);
            return Some(format!(
                "no registered worker takes {}{}; {} {most}",
                work.what, limit.what, limit.most
            ));
        }
    }
    Some(format!(
        "no single registered worker takes {}{of_iterations}: each is short of one limit",
        work.what
    ))
}

/// One of a worker's limits, as a part of a job needs it.
struct Limit {
    /// What the work needs.
    needed: u64,
    /// What a worker offers (0: no limit).
    offered: fn(&Capabilities) -> u64,
    /// The need in words, after the work's name (" of 80 iterations").
    what: String,
    /// The most workers offer, in words ("the longest side any takes is").
    most: &'static str,
}

/// "the models ViT-B/32 and vqgan_imagenet_f16_16384 on cuda".
fn offered_as(needs: &Requirements, models: &[String]) -> String {
    let models = match models {
        [] => "no model".to_string(),
        [one] => format!("the model {one}"),
        many => format!("the models {}", many.join(" and ")),
    };
    match needs.device.as_str() {
        "" => models,
        device => format!("{models} on {device}"),
    }
}
