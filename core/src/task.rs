//! Tasks: what a worker is asked to do, what it needs to take it, and how a task waits for the
//! tasks whose outputs it consumes.

use crate::job::{check_device, sorted_models, JobError, Settings};
use crate::tiles::{Rect, TileError, TilePlan, TileSpec};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The three kinds of work a worker can be asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// VQGAN+CLIP optimisation of one prompt and seed.
    Generate,
    /// Upscaling of one tile of a picture.
    UpscaleTile,
    /// Joining a picture's upscaled tiles.
    Stitch,
}

impl TaskKind {
    /// Every kind, in the order their names are listed to users.
    pub const ALL: [TaskKind; 3] = [TaskKind::Generate, TaskKind::UpscaleTile, TaskKind::Stitch];

    /// The name used in storage keys, capabilities and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Generate => "generate",
            TaskKind::UpscaleTile => "upscale_tile",
            TaskKind::Stitch => "stitch",
        }
    }

    /// The kind called `name`, if any.
    pub fn parse(name: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Order in which a worker is offered one job's tasks: finishing pictures that are already
    /// under way (stitch, then tiles) before starting new ones, so results arrive early.
    pub fn rank(self) -> u32 {
        match self {
            TaskKind::Stitch => 0,
            TaskKind::UpscaleTile => 1,
            TaskKind::Generate => 2,
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Lower-case hex SHA-256 of `data`: how [`ArtifactRef::sha256`] names a file's content.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A stored file: what workers upload and download and clients fetch, with what is needed to
/// check it and, for pictures, plan with it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// Key in the artifact store.
    pub key: String,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the content, lower-case hex.
    pub sha256: String,
    /// Picture width in pixels (0 when the file is not a picture).
    pub width: u32,
    /// Picture height in pixels (0 when the file is not a picture).
    pub height: u32,
}

impl ArtifactRef {
    /// Whether `data` is this file's content: its length and SHA-256 match. Whoever reads an
    /// artifact checks it, so a file damaged in storage or on the way is never used.
    pub fn holds(&self, data: &[u8]) -> bool {
        data.len() as u64 == self.size && sha256_hex(data) == self.sha256
    }
}

/// The geometry a tile or stitch task works with; [`ImagePlan::tile_plan`] rebuilds the same
/// [`TilePlan`] on every machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlan {
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// Output pixels per input pixel.
    pub scale: u32,
    /// How the picture is cut.
    pub tile: TileSpec,
}

impl ImagePlan {
    /// The tile plan.
    pub fn tile_plan(&self) -> Result<TilePlan, TileError> {
        TilePlan::new(self.width, self.height, self.scale, self.tile)
    }
}

/// What a task asks a worker to do.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskSpec {
    /// Render one prompt with one seed.
    Generate {
        /// The prompt, in the generation loop's syntax.
        prompt: String,
        /// Seed of every random draw.
        seed: u64,
        /// Resolved settings.
        settings: Settings,
    },
    /// Upscale one tile of `source`.
    UpscaleTile {
        /// The whole picture; the worker reads [`UpscaleTileTask::input`] of it.
        source: ArtifactRef,
        /// The picture's geometry.
        plan: ImagePlan,
        /// Which tile of the plan.
        tile_index: u32,
        /// Upscale model.
        model: String,
        /// Device requirement (see [`Settings::device`]).
        device: String,
    },
    /// Join the tiles (the task's inputs, by tile index) into the upscaled picture.
    Stitch {
        /// The picture's geometry.
        plan: ImagePlan,
        /// The model the tiles were upscaled with, for the record.
        model: String,
    },
}

/// The input and output rectangles of an upscale tile, for workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpscaleTileTask {
    /// Rectangle of the source picture to upscale (context included).
    pub input: Rect,
    /// Rectangle of the final picture the tile contributes to.
    pub output: Rect,
}

impl TaskSpec {
    /// The kind of work.
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskSpec::Generate { .. } => TaskKind::Generate,
            TaskSpec::UpscaleTile { .. } => TaskKind::UpscaleTile,
            TaskSpec::Stitch { .. } => TaskKind::Stitch,
        }
    }

    /// What a worker needs to take this task.
    pub fn requirements(&self) -> Result<Requirements, JobError> {
        Ok(match self {
            TaskSpec::Generate { settings, .. } => settings.generate_requirements(),
            TaskSpec::UpscaleTile {
                plan,
                model,
                device,
                ..
            } => {
                let largest = plan
                    .tile_plan()
                    .map_err(JobError::Tile)?
                    .tiles
                    .iter()
                    .map(|t| t.input().area())
                    .max()
                    .unwrap_or(0);
                Requirements {
                    kind: TaskKind::UpscaleTile,
                    models: sorted_models([model]),
                    device: device.clone(),
                    pixels: largest * u64::from(plan.scale).pow(2),
                    side: 0,
                    iterations: 0,
                }
            }
            TaskSpec::Stitch { plan, .. } => Requirements {
                kind: TaskKind::Stitch,
                models: Vec::new(),
                device: String::new(),
                pixels: u64::from(plan.width * plan.scale) * u64::from(plan.height * plan.scale),
                side: 0,
                iterations: 0,
            },
        })
    }

    /// The size of the picture the task must produce.
    pub fn output_size(&self) -> Result<(u32, u32), JobError> {
        match self {
            TaskSpec::Generate { settings, .. } => Ok((settings.width, settings.height)),
            // A tile hands back only what the stitch reads of it: its contribution.
            TaskSpec::UpscaleTile {
                plan, tile_index, ..
            } => {
                let tile = tile_rects(plan, *tile_index)?;
                Ok((tile.output.width, tile.output.height))
            }
            TaskSpec::Stitch { plan, .. } => {
                Ok((plan.width * plan.scale, plan.height * plan.scale))
            }
        }
    }

    /// Input and output rectangles of an upscale tile task; `None` for other kinds.
    pub fn upscale_tile(&self) -> Result<Option<UpscaleTileTask>, JobError> {
        match self {
            TaskSpec::UpscaleTile {
                plan, tile_index, ..
            } => tile_rects(plan, *tile_index).map(Some),
            _ => Ok(None),
        }
    }
}

fn tile_rects(plan: &ImagePlan, index: u32) -> Result<UpscaleTileTask, JobError> {
    let tiles = plan.tile_plan().map_err(JobError::Tile)?;
    let tile = tiles
        .tiles
        .get(index as usize)
        .ok_or(JobError::NoSuchTile {
            index,
            count: tiles.tiles.len(),
        })?;
    Ok(UpscaleTileTask {
        input: tile.input(),
        output: tile.output(plan.scale),
    })
}

/// What a worker must offer to take a task. Tasks with equal requirements share a queue, so
/// the scheduler matches a worker against a handful of queues rather than every task.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Requirements {
    /// Kind of work.
    pub kind: TaskKind,
    /// Models needed (normalised, sorted).
    pub models: Vec<String>,
    /// Device requirement: empty for any, a kind (`cuda`), or one device (`cuda:1`).
    pub device: String,
    /// Largest picture the task handles, in pixels.
    pub pixels: u64,
    /// Longest side of the picture a render optimises, in pixels (0 for other kinds: an
    /// upscale's memory goes by its pixels alone).
    pub side: u32,
    /// Optimiser iterations it runs (renders; 0 for other kinds).
    pub iterations: u32,
}

impl Requirements {
    /// The queue name: `kind|pixels|device|model,model|side|iterations`. The Redis scheduler
    /// parses this same form in Lua, so it must stay in step with
    /// `coordinator/src/state/lua/lease.lua`. Queues stored before sides and iterations were
    /// part of it have the first four parts only, read as no side and no iterations.
    pub fn class_key(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}|{}",
            self.kind,
            self.pixels,
            self.device,
            self.models.join(","),
            self.side,
            self.iterations
        )
    }

    /// The requirements a [`Requirements::class_key`] stands for.
    pub fn from_class_key(key: &str) -> Option<Requirements> {
        let parts: Vec<&str> = key.split('|').collect();
        let (side, iterations) = match parts.len() {
            4 => (0, 0),
            6 => (parts[4].parse().ok()?, parts[5].parse().ok()?),
            _ => return None,
        };
        let models = parts[3]
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
        Some(Requirements {
            kind: TaskKind::parse(parts[0])?,
            models,
            device: parts[2].to_string(),
            pixels: parts[1].parse().ok()?,
            side,
            iterations,
        })
    }

    /// Whether a worker with `caps` can take a task with these requirements.
    pub fn satisfied_by(&self, caps: &Capabilities) -> bool {
        caps.kinds.contains(&self.kind)
            && within(self.pixels, caps.max_pixels)
            && within(u64::from(self.side), u64::from(caps.max_side))
            && within(u64::from(self.iterations), u64::from(caps.max_iterations))
            && device_matches(&self.device, &caps.device)
            && self
                .models
                .iter()
                .all(|m| caps.models.iter().any(|c| c == m))
    }
}

/// Whether `needed` fits under a worker's `limit` (0: no limit).
fn within(needed: u64, limit: u64) -> bool {
    limit == 0 || needed <= limit
}

fn device_matches(wanted: &str, offered: &str) -> bool {
    wanted.is_empty()
        || offered == wanted
        || offered
            .strip_prefix(wanted)
            .is_some_and(|rest| rest.starts_with(':'))
}

/// What a worker offers: the kinds of task it runs, the models it has, its device and the
/// largest picture it can hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Kinds of work.
    pub kinds: Vec<TaskKind>,
    /// Models it has (normalised with [`normalise_model`]).
    pub models: Vec<String>,
    /// Its device, e.g. `cuda:0` or `cpu`.
    pub device: String,
    /// Largest picture in pixels; 0 for no limit.
    pub max_pixels: u64,
    /// Longest side of a picture it renders; 0 for no limit.
    #[serde(default)]
    pub max_side: u32,
    /// Most optimiser iterations a render of it may run; 0 for no limit.
    #[serde(default)]
    pub max_iterations: u32,
}

impl Capabilities {
    /// These capabilities in the form they are compared in: model names normalised, lists
    /// sorted and without duplicates, no separators that would break a queue name.
    pub fn normalised(mut self) -> Result<Capabilities, JobError> {
        self.models = sorted_models(&self.models);
        if let Some(bad) = self.models.iter().find(|m| m.contains([',', '|'])) {
            return Err(JobError::out_of_range(
                "models",
                bad,
                "names without ',' or '|'".into(),
            ));
        }
        check_device(&self.device)?;
        self.kinds.sort();
        self.kinds.dedup();
        Ok(self)
    }
}

/// A task ready to be stored: its place in the job and what it waits for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewTask {
    /// Task id: `{job}.{unit}.g`, `{job}.{unit}.t{k}` or `{job}.{unit}.s`.
    pub id: String,
    /// Owning job.
    pub job: String,
    /// Kind of work.
    pub kind: TaskKind,
    /// The result it contributes to.
    pub unit: u32,
    /// Queue name ([`Requirements::class_key`]).
    pub class: String,
    /// What to do.
    pub spec: TaskSpec,
    /// The task that consumes this one's output as an input (a tile's stitch).
    pub parent: Option<String>,
    /// Which input of the parent this output fills.
    pub slot: u32,
    /// Inputs still to arrive before it can run (0: runnable now).
    pub waiting: u32,
    /// Whether its output is the unit's result.
    pub is_final: bool,
    /// Tile tasks its completion will create (generate tasks that are upscaled).
    pub planned_tiles: u32,
    /// Stitch tasks its completion will create (0 or 1).
    pub planned_stitches: u32,
    /// W3C `traceparent` of the job's submission (empty when tracing is off): the worker
    /// starts the task's span as its child, so every task joins the job's one trace.
    #[serde(default)]
    pub trace: String,
}

/// Numbers per task kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounts {
    /// Generate tasks.
    pub generate: u64,
    /// Upscale tile tasks.
    pub upscale_tile: u64,
    /// Stitch tasks.
    pub stitch: u64,
}

impl KindCounts {
    /// The count of `kind`.
    pub fn get(&self, kind: TaskKind) -> u64 {
        match kind {
            TaskKind::Generate => self.generate,
            TaskKind::UpscaleTile => self.upscale_tile,
            TaskKind::Stitch => self.stitch,
        }
    }

    fn count_mut(&mut self, kind: TaskKind) -> &mut u64 {
        match kind {
            TaskKind::Generate => &mut self.generate,
            TaskKind::UpscaleTile => &mut self.upscale_tile,
            TaskKind::Stitch => &mut self.stitch,
        }
    }

    /// Adds `n` to the count of `kind`.
    pub fn add(&mut self, kind: TaskKind, n: u64) {
        *self.count_mut(kind) += n;
    }

    /// Takes `n` from the count of `kind` (a task counted as ended runs again).
    pub fn remove(&mut self, kind: TaskKind, n: u64) {
        *self.count_mut(kind) -= n;
    }

    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.generate + self.upscale_tile + self.stitch
    }
}

/// The parts of a stored task that [`plan_followups`] needs.
#[derive(Clone, Copy, Debug)]
pub struct FinishedTask<'a> {
    /// Task id.
    pub id: &'a str,
    /// Owning job.
    pub job: &'a str,
    /// Result it contributes to.
    pub unit: u32,
    /// What it was asked to do.
    pub spec: &'a TaskSpec,
    /// Its trace context, which the tasks planned after it continue.
    pub trace: &'a str,
}

/// The job a task id belongs to (task ids start with the job id and a `.`).
pub fn job_of_task(task_id: &str) -> &str {
    task_id.split('.').next().unwrap_or(task_id)
}
