//! The farm's measured speed, and what a job will take at it.
//!
//! Every finished task is a sample of how fast the farm does one class of work: renders of
//! one size (per iteration), tiles of one upscale model (per input pixel read, context
//! included) and stitches (per output pixel). The state store sums the samples farm-wide
//! ([`Rate`]); [`estimate`] prices a planned job with them, and the ETA of a running job uses
//! them until the job has timed tasks of its own. The classes and amounts are defined here
//! once, so the coordinator records and estimates in the same units.

use crate::job::{JobError, Settings};
use crate::plan::{plan_upscale, JobPlan, Unit};
use crate::task::{ArtifactRef, KindCounts, TaskKind, TaskSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Samples a rate keeps at full weight: once a class has this many, its sums are halved, so
/// the rate follows the farm as it is now (new workers, another device) rather than forever.
pub const RATE_WINDOW: u64 = 64;

/// One class of work and how much of it a task is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Work {
    /// The task's kind.
    pub kind: TaskKind,
    /// What the farm measures its speed at: `generate 256x256`, `upscale_tile MODEL`,
    /// `stitch`.
    pub class: String,
    /// Amount of that work: iterations, input pixels read, or output pixels.
    pub amount: u64,
}

/// The sums of one class's samples (see [`RATE_WINDOW`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Milliseconds the samples took.
    pub ms: u64,
    /// Work they did, in the class's amount.
    pub amount: u64,
    /// Samples counted.
    pub samples: u64,
}

/// Every class's rate, by class.
pub type Rates = BTreeMap<String, Rate>;

impl Work {
    /// The work of a task with spec `spec`.
    pub fn of(spec: &TaskSpec) -> Result<Work, JobError> {
        let kind = spec.kind();
        let (class, amount) = match spec {
            TaskSpec::Generate { settings, .. } => (
                generate_class(settings.width, settings.height),
                u64::from(settings.iterations),
            ),
            TaskSpec::UpscaleTile { model, .. } => {
                let rects = spec.upscale_tile()?.expect("an upscale tile");
                (format!("{} {model}", kind.as_str()), rects.input.area())
            }
            TaskSpec::Stitch { .. } => {
                let (width, height) = spec.output_size()?;
                (
                    kind.as_str().to_string(),
                    u64::from(width) * u64::from(height),
                )
            }
        };
        Ok(Work {
            kind,
            class,
            amount: amount.max(1),
        })
    }

    /// Milliseconds this work takes at `rates`: its class's rate, or for a render of a size
    /// never measured, the measured size nearest in pixels, scaled by pixels. `None` when
    /// nothing comparable was measured.
    pub fn ms(&self, rates: &Rates) -> Option<u64> {
        if let Some(rate) = rates.get(&self.class).filter(|r| r.amount > 0) {
            return Some(scaled(self.amount, rate.ms, rate.amount));
        }
        let pixels = generate_pixels(&self.class)?;
        let (other, rate) = rates
            .iter()
            .filter(|(_, r)| r.amount > 0)
            .filter_map(|(class, r)| Some((generate_pixels(class)?, r)))
            .min_by_key(|(p, _)| p.abs_diff(pixels))?;
        Some(scaled(self.amount * pixels, rate.ms, rate.amount * other))
    }
}

/// Milliseconds one task of `kind` takes at `rates`, for a job whose settings are `settings`
/// but whose tasks are not at hand (a running job's ETA): a render at the settings' size and
/// iterations, otherwise the kind's mean over every class measured. `None` when nothing of
/// the kind was measured.
pub fn task_ms(rates: &Rates, kind: TaskKind, settings: &Settings) -> Option<u64> {
    if kind == TaskKind::Generate {
        let render = Work {
            kind,
            class: generate_class(settings.width, settings.height),
            amount: u64::from(settings.iterations.max(1)),
        };
        return render.ms(rates);
    }
    let (ms, samples) = rates
        .iter()
        .filter(|(class, _)| class.split(' ').next() == Some(kind.as_str()))
        .fold((0, 0), |(ms, n), (_, r)| (ms + r.ms, n + r.samples));
    (samples > 0).then(|| ms / samples)
}

/// `amount * ms / per`, rounded down, without overflow.
fn scaled(amount: u64, ms: u64, per: u64) -> u64 {
    (u128::from(amount) * u128::from(ms) / u128::from(per.max(1))) as u64
}

fn generate_class(width: u32, height: u32) -> String {
    format!("{} {width}x{height}", TaskKind::Generate.as_str())
}

/// The pixels of a render class's size; `None` for other classes.
fn generate_pixels(class: &str) -> Option<u64> {
    let size = class.strip_prefix(TaskKind::Generate.as_str())?.trim();
    let (w, h) = size.split_once('x')?;
    Some(w.parse::<u64>().ok()? * h.parse::<u64>().ok()?)
}

/// What a job would take on the farm.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Estimate {
    /// Tasks of each kind it will have in all.
    pub tasks: KindCounts,
    /// Worker-milliseconds of all of them; `None` when some class was never measured.
    pub worker_ms: Option<u64>,
    /// Milliseconds from submission to end with `workers` workers after `ahead_ms` of other
    /// jobs' work; `None` with `worker_ms`.
    pub wall_ms: Option<u64>,
    /// Classes of its work never measured, each once.
    pub unmeasured: Vec<String>,
}

/// The work of every task `plan` will have, by result: its render (prompt jobs), then its
/// tiles and stitch, planned as the coordinator will plan them once the render is done.
pub fn plan_work(plan: &JobPlan) -> Result<Vec<Vec<Work>>, JobError> {
    let mut by_unit: Vec<Vec<Work>> = vec![Vec::new(); plan.units.len()];
    for task in &plan.tasks {
        by_unit[task.unit as usize].push(Work::of(&task.spec)?);
    }
    if !plan.upscale_only {
        for unit in &plan.units {
            by_unit[unit.index as usize].extend(render_followups(unit)?);
        }
    }
    Ok(by_unit)
}

/// The upscale work of a result's render, once it exists.
fn render_followups(unit: &Unit) -> Result<Vec<Work>, JobError> {
    let Some(up) = &unit.settings.upscale else {
        return Ok(Vec::new());
    };
    let picture = ArtifactRef {
        width: unit.settings.width,
        height: unit.settings.height,
        ..ArtifactRef::default()
    };
    let tasks = plan_upscale("estimate", unit.index, &picture, up, &unit.settings.device)?;
    tasks.iter().map(|t| Work::of(&t.spec)).collect()
}

/// Prices `work` (by result, as [`plan_work`] gives it) at `rates` on `workers` workers that
/// first do `ahead_ms` of other jobs' work. The wall time is the larger of the work shared
/// evenly and the longest result (its render, its tiles shared, its stitch), which no number
/// of workers shortens.
pub fn estimate(work: &[Vec<Work>], rates: &Rates, workers: u32, ahead_ms: u64) -> Estimate {
    let workers = u64::from(workers.max(1));
    let mut out = Estimate::default();
    let (mut total, mut longest) = (0u64, 0u64);
    for unit in work {
        let mut by_kind = KindCounts::default();
        for w in unit {
            out.tasks.add(w.kind, 1);
            match w.ms(rates) {
                Some(ms) => by_kind.add(w.kind, ms),
                None if !out.unmeasured.contains(&w.class) => out.unmeasured.push(w.class.clone()),
                None => {}
            }
        }
        total += by_kind.total();
        let tiles = by_kind.get(TaskKind::UpscaleTile).div_ceil(workers);
        longest = longest.max(by_kind.generate + tiles + by_kind.stitch);
    }
    if out.unmeasured.is_empty() {
        out.worker_ms = Some(total);
        out.wall_ms = Some(((ahead_ms + total) / workers).max(longest));
    }
    out
}

#[cfg(test)]
mod tests;
