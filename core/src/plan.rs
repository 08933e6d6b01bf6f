//! Planning a job into tasks: one `generate` task per prompt and seed; once that finishes, its
//! picture is cut into `upscale_tile` tasks with the tested [`TilePlan`] geometry, and a
//! `stitch` task joins the tiles once all of them are done. An upscale-only job starts at the
//! tiles.
//!
//! Validation is complete before anything is planned: [`plan_job`] either returns every unit
//! and task of the job or the first problem, never half a job.

use crate::job::{
    check_shown_text, InputImage, JobError, JobRequest, JobSource, Limits, ModelCatalog,
    PromptEntry, Settings, Upscale, MAX_NAME_CHARS, NO_UPSCALE,
};
use crate::prompt::PromptSpec;
use crate::sweep::{self, Sweep, SweepValue};
use crate::task::{ArtifactRef, FinishedTask, ImagePlan, KindCounts, NewTask, TaskKind, TaskSpec};
use crate::tiles::TilePlan;
use serde::{Deserialize, Serialize};

/// One result a job delivers: a prompt with one seed, or one input picture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Position among the job's results.
    pub index: u32,
    /// Position of the prompt in the batch (prompt jobs).
    pub prompt_index: Option<u32>,
    /// The prompt (prompt jobs).
    pub prompt: Option<String>,
    /// The seed (prompt jobs).
    pub seed: Option<u64>,
    /// The input picture's name (upscale-only jobs).
    pub input_name: Option<String>,
    /// Every setting this result is made with.
    pub settings: Settings,
    /// Its values of the job's sweeps, in the sweeps' order (empty without sweeps): what its
    /// label ([`crate::sweep::label`]) in listings and file names is made of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweep: Vec<SweepValue>,
}

/// A validated job: its results, the tasks to store now, and how many tasks it will have in
/// all once every picture is upscaled.
#[derive(Clone, Debug, PartialEq)]
pub struct JobPlan {
    /// The job's settings (farm defaults with the job's patch).
    pub settings: Settings,
    /// One entry per result.
    pub units: Vec<Unit>,
    /// Tasks that exist from the start.
    pub tasks: Vec<NewTask>,
    /// Tasks of each kind the job will have once every generate task has finished.
    pub expected: KindCounts,
    /// Whether the job upscales users' pictures instead of rendering prompts.
    pub upscale_only: bool,
}

/// Validates `request` completely and plans it into the tasks of job `job_id`.
pub fn plan_job(
    job_id: &str,
    request: &JobRequest,
    defaults: &Settings,
    catalog: &ModelCatalog,
    limits: &Limits,
) -> Result<JobPlan, JobError> {
    check_shown_text("job name", &request.name, MAX_NAME_CHARS)?;
    crate::job::check_priority(request.priority)?;
    let render_limits = match &request.source {
        // An upscale-only job renders nothing: its pictures are held to `max_input_pixels`,
        // not the render size its settings carry to the side limit.
        JobSource::Images(_) => Limits {
            max_side: u32::MAX,
            ..limits.clone()
        },
        JobSource::Prompts(_) => limits.clone(),
    };
    let settings = defaults
        .apply(&request.settings, catalog, &render_limits)
        .map_err(|e| e.at("job settings"))?;
    let job_seeds = if request.seeds.is_empty() {
        vec![0]
    } else {
        request.seeds.clone()
    };
    check_seeds(&job_seeds, limits)?;
    match &request.source {
        JobSource::Prompts(prompts) => {
            let batch = Batch {
                seeds: &job_seeds,
                sweeps: &request.sweeps,
                settings: &settings,
                catalog,
                limits,
            };
            let units = batch.units(prompts)?;
            plan_prompts(job_id, units, settings)
        }
        JobSource::Images(_) if !request.sweeps.is_empty() => {
            Err(sweep::SweepError::UpscaleOnly.into())
        }
        JobSource::Images(images) => plan_images(job_id, images, settings, limits),
    }
}

fn check_seeds(seeds: &[u64], limits: &Limits) -> Result<(), JobError> {
    if seeds.is_empty() {
        return Err(JobError::out_of_range(
            "seeds",
            "[]",
            "at least one seed".into(),
        ));
    }
    if seeds.len() > limits.max_seeds {
        return Err(JobError::TooMany {
            what: "seeds per prompt",
            count: seeds.len(),
            max: limits.max_seeds,
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(seeds.len());
    match seeds.iter().find(|&&seed| !seen.insert(seed)) {
        Some(&seed) => Err(JobError::RepeatedSeed { seed }),
        None => Ok(()),
    }
}

/// What every prompt of a batch is rendered with: the job's seeds, sweeps and settings.
struct Batch<'a> {
    seeds: &'a [u64],
    sweeps: &'a [Sweep],
    settings: &'a Settings,
    catalog: &'a ModelCatalog,
    limits: &'a Limits,
}

impl Batch<'_> {
    /// The results of `prompts`: each prompt at each combination of the sweeps' values (which
    /// win over a prompt line's own, so a label always says what the result was made with),
    /// with each of its seeds.
    fn units(&self, prompts: &[PromptEntry]) -> Result<Vec<Unit>, JobError> {
        check_batch_size(prompts.len(), "prompts", self.limits)?;
        let combinations = sweep::combinations(self.sweeps, self.limits.max_results)?;
        let patches = combinations
            .iter()
            .map(|values| sweep::patch(values))
            .collect::<Result<Vec<_>, _>>()?;
        let mut units = Vec::new();
        for (p, entry) in prompts.iter().enumerate() {
            let place = if entry.line > 0 {
                format!("line {}", entry.line)
            } else {
                format!("prompt {}", p + 1)
            };
            let resolved = check_prompt(entry, self.settings, self.catalog, self.limits)
                .map_err(|e| e.at(&place))?;
            let seeds = entry.seeds.as_deref().unwrap_or(self.seeds);
            check_seeds(seeds, self.limits).map_err(|e| e.at(&place))?;
            let count = units.len() + seeds.len() * combinations.len();
            if count > self.limits.max_results {
                return Err(JobError::TooMany {
                    what: "results (prompts x sweeps x seeds)",
                    count,
                    max: self.limits.max_results,
                });
            }
            for (values, patch) in combinations.iter().zip(&patches) {
                let settings = resolved
                    .apply(patch, self.catalog, self.limits)
                    .map_err(|e| e.at(&format!("{place}, sweep {}", sweep::label(values))))?;
                for &seed in seeds {
                    units.push(Unit {
                        index: units.len() as u32,
                        prompt_index: Some(p as u32),
                        prompt: Some(entry.text.clone()),
                        seed: Some(seed),
                        input_name: None,
                        settings: settings.clone(),
                        sweep: values.clone(),
                    });
                }
            }
        }
        Ok(units)
    }
}

fn plan_prompts(job_id: &str, units: Vec<Unit>, settings: Settings) -> Result<JobPlan, JobError> {
    let mut expected = KindCounts::default();
    let mut tasks = Vec::with_capacity(units.len());
    for unit in &units {
        let spec = TaskSpec::Generate {
            prompt: unit.prompt.clone().unwrap_or_default(),
            seed: unit.seed.unwrap_or_default(),
            settings: unit.settings.clone(),
        };
        let (tiles, stitches) = match &unit.settings.upscale {
            Some(u) => upscale_task_counts(unit.settings.width, unit.settings.height, u)?,
            None => (0, 0),
        };
        expected.add(TaskKind::Generate, 1);
        expected.add(TaskKind::UpscaleTile, u64::from(tiles));
        expected.add(TaskKind::Stitch, u64::from(stitches));
        tasks.push(NewTask {
            id: format!("{job_id}.{}.g", unit.index),
            job: job_id.to_string(),
            kind: TaskKind::Generate,
            unit: unit.index,
            class: spec.requirements()?.class_key(),
            spec,
            parent: None,
            slot: 0,
            waiting: 0,
            is_final: unit.settings.upscale.is_none(),
            planned_tiles: tiles,
            planned_stitches: stitches,
            trace: String::new(),
        });
    }
    Ok(JobPlan {
        settings,
        units,
        tasks,
        expected,
        upscale_only: false,
    })
}

fn check_batch_size(count: usize, what: &'static str, limits: &Limits) -> Result<(), JobError> {
    if count == 0 {
        return Err(JobError::EmptyBatch { what });
    }
    if count > limits.max_prompts {
        return Err(JobError::TooMany {
            what,
            count,
            max: limits.max_prompts,
        });
    }
    Ok(())
}

fn check_prompt(
    entry: &PromptEntry,
    settings: &Settings,
    catalog: &ModelCatalog,
    limits: &Limits,
) -> Result<Settings, JobError> {
    check_shown_text("prompt", &entry.text, limits.max_prompt_chars)?;
    PromptSpec::parse(&entry.text, "", "").map_err(JobError::Prompt)?;
    settings.apply(&entry.settings, catalog, limits)
}

/// Tile tasks and stitch tasks (0 or 1) that upscaling a `width` x `height` picture makes.
fn upscale_task_counts(width: u32, height: u32, up: &Upscale) -> Result<(u32, u32), JobError> {
    let tiles = TilePlan::new(width, height, up.scale, up.tile)
        .map_err(JobError::Tile)?
        .tiles
        .len() as u32;
    Ok((tiles, u32::from(tiles > 1)))
}

fn plan_images(
    job_id: &str,
    images: &[InputImage],
    settings: Settings,
    limits: &Limits,
) -> Result<JobPlan, JobError> {
    check_batch_size(images.len(), "images", limits)?;
    let Some(up) = settings.upscale.clone() else {
        return Err(JobError::out_of_range(
            "upscale_model",
            NO_UPSCALE,
            "an upscale model for an upscale-only job".into(),
        ));
    };
    let mut plan = JobPlan {
        settings: settings.clone(),
        units: Vec::new(),
        tasks: Vec::new(),
        expected: KindCounts::default(),
        upscale_only: true,
    };
    for (i, image) in images.iter().enumerate() {
        check_shown_text("image name", &image.name, MAX_NAME_CHARS)
            .map_err(|e| e.at(&format!("image {}", i + 1)))?;
        let place = format!("image {} ({})", i + 1, image.name);
        let a = &image.artifact;
        let pixels = u64::from(a.width) * u64::from(a.height);
        if pixels == 0 || pixels > limits.max_input_pixels {
            return Err(JobError::BadImage {
                name: image.name.clone(),
                reason: format!(
                    "{}x{} pixels; it must have between 1 and {} pixels",
                    a.width, a.height, limits.max_input_pixels
                ),
            });
        }
        let unit = i as u32;
        let tasks =
            plan_upscale(job_id, unit, a, &up, &settings.device).map_err(|e| e.at(&place))?;
        for task in &tasks {
            plan.expected.add(task.kind, 1);
        }
        plan.tasks.extend(tasks);
        plan.units.push(Unit {
            index: unit,
            prompt_index: None,
            prompt: None,
            seed: None,
            input_name: Some(image.name.clone()),
            settings: settings.clone(),
            sweep: Vec::new(),
        });
    }
    Ok(plan)
}

/// The tasks that upscale `source`, the picture of result `unit`: one per tile, and a stitch
/// waiting for all of them when there is more than one tile (a single tile is the result).
pub fn plan_upscale(
    job_id: &str,
    unit: u32,
    source: &ArtifactRef,
    up: &Upscale,
    device: &str,
) -> Result<Vec<NewTask>, JobError> {
    let plan = ImagePlan {
        width: source.width,
        height: source.height,
        scale: up.scale,
        tile: up.tile,
    };
    let count = plan.tile_plan().map_err(JobError::Tile)?.tiles.len() as u32;
    let stitch_id = format!("{job_id}.{unit}.s");
    let mut tasks = Vec::with_capacity(count as usize + 1);
    for index in 0..count {
        let spec = TaskSpec::UpscaleTile {
            source: source.clone(),
            plan,
            tile_index: index,
            model: up.model.clone(),
            device: device.to_string(),
        };
        tasks.push(NewTask {
            id: format!("{job_id}.{unit}.t{index}"),
            job: job_id.to_string(),
            kind: TaskKind::UpscaleTile,
            unit,
            class: spec.requirements()?.class_key(),
            spec,
            parent: (count > 1).then(|| stitch_id.clone()),
            slot: index,
            waiting: 0,
            is_final: count == 1,
            planned_tiles: 0,
            planned_stitches: 0,
            trace: String::new(),
        });
    }
    if count > 1 {
        let spec = TaskSpec::Stitch {
            plan,
            model: up.model.clone(),
        };
        tasks.push(NewTask {
            id: stitch_id,
            job: job_id.to_string(),
            kind: TaskKind::Stitch,
            unit,
            class: spec.requirements()?.class_key(),
            spec,
            parent: None,
            slot: 0,
            waiting: count,
            is_final: true,
            planned_tiles: 0,
            planned_stitches: 0,
            trace: String::new(),
        });
    }
    Ok(tasks)
}

/// The tasks that follow a finished task whose output is `output`: the upscale of a generated
/// picture, or nothing. Fails when the output is not the picture the task was asked for.
pub fn plan_followups(
    task: &FinishedTask<'_>,
    output: &ArtifactRef,
) -> Result<Vec<NewTask>, JobError> {
    let (width, height) = task.spec.output_size()?;
    if (output.width, output.height) != (width, height) {
        return Err(JobError::WrongOutput {
            task: task.id.to_string(),
            got: (output.width, output.height),
            expected: (width, height),
        });
    }
    let mut followups = match task.spec {
        TaskSpec::Generate { settings, .. } => match &settings.upscale {
            Some(up) => plan_upscale(task.job, task.unit, output, up, &settings.device)?,
            None => Vec::new(),
        },
        _ => Vec::new(),
    };
    for t in &mut followups {
        t.trace = task.trace.to_string();
    }
    Ok(followups)
}

#[cfg(test)]
mod tests;
