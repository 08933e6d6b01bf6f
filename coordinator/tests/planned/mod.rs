//! What the state-store tests (`conformance.rs`, `differential.rs`) share: jobs planned as the
//! coordinator plans them, and the outputs and follow-up tasks a worker's completion brings.

use tessera_coordinator::state::{NewJob, Quota, TaskRecord};
use tessera_core::job::{
    JobRequest, JobSource, Limits, ModelCatalog, PromptEntry, Settings, SettingsPatch,
};
use tessera_core::plan::{plan_followups, plan_job};
use tessera_core::task::{ArtifactRef, NewTask};

/// Settings of small jobs: 64 px renders of 20 steps, upscaled 4x in 4 tiles of 32 px when
/// `upscale` is set, on `device` when given.
pub fn small_settings(upscale: bool, device: Option<&str>) -> SettingsPatch {
    SettingsPatch {
        width: Some(64),
        height: Some(64),
        iterations: Some(20),
        upscale_model: Some(if upscale { "realesrgan-x4plus" } else { "none" }.into()),
        tile: Some(32),
        tile_pad: Some(8),
        tile_overlap: Some(4),
        device: device.map(str::to_string),
        ..SettingsPatch::default()
    }
}

/// `count` numbered prompts.
pub fn prompts(count: usize) -> JobSource {
    JobSource::Prompts(
        (0..count)
            .map(|i| PromptEntry {
                text: format!("a lighthouse number {i}"),
                ..PromptEntry::default()
            })
            .collect(),
    )
}

/// Every model of the catalogue, as a worker that has them all lists them.
pub fn all_models() -> Vec<String> {
    let catalog = ModelCatalog::default();
    let mut models: Vec<String> = catalog.clip.iter().chain(&catalog.vqgan).cloned().collect();
    models.extend(catalog.upscale.iter().map(|m| m.name.clone()));
    models
}

/// The job `request` stands for, planned with the farm's defaults, as `tenant`'s under `quota`.
pub fn new_job(id: &str, request: JobRequest, tenant: &str, quota: Quota) -> NewJob {
    let plan = plan_job(
        id,
        &request,
        &Settings::farm_defaults(),
        &ModelCatalog::default(),
        &Limits::default(),
    )
    .unwrap();
    NewJob::planned(
        id,
        request.name,
        request.priority,
        plan,
        tenant.into(),
        quota,
    )
}

/// The picture a task is asked for, stored as `name` under its attempt's key prefix (the
/// content is not read by the state store).
pub fn output_for(task: &TaskRecord, name: &str) -> ArtifactRef {
    let (width, height) = task.spec.output_size().unwrap();
    ArtifactRef {
        key: format!("jobs/{}/{}/{}/{name}", task.job, task.id, task.attempt),
        size: 100,
        sha256: format!("{:064x}", task.attempt),
        width,
        height,
    }
}

/// The tasks the coordinator plans when `task` completes with `output`.
pub fn followups(task: &TaskRecord, output: &ArtifactRef) -> Vec<NewTask> {
    plan_followups(&task.finished(), output).unwrap()
}
