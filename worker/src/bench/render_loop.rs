//! Timing of the loop for `tessera-worker bench loop`: seconds per iteration and images per hour
//! at several sizes and batch sizes, next to `scripts/bench/loop_reference.py` (the same steps
//! in PyTorch) run on the same machine. Not a test: it prints numbers, it asserts nothing.

use crate::peak_memory::PeakMemory;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::fmt::Write;
use std::time::Instant;
use tch::{Device, Kind, Tensor};
use tessera_core::prompt::PromptSpec;
use tessera_nets::generate::augment::DEFAULT_AUGMENTS;
use tessera_nets::generate::cutouts::{CutMethod, Cutter};
use tessera_nets::generate::optim::{Optimiser, OptimiserKind};
use tessera_nets::generate::rng::{Purpose, RunRng};
use tessera_nets::generate::run::{GenerateError, Run};
use tessera_nets::generate::settings::{Precision, Settings};
use tessera_nets::generate::synth::vector_quantize;
use tessera_nets::generate::traits::{LatentCodec, Perceptor};

/// What a row timed: a whole iteration, or only the loop's own work around the networks.
pub const SCOPE_ITERATION: &str = "iteration";
/// Cutouts with augmentations and noise, quantisation, their backward passes and the optimiser
/// step: everything of an iteration except VQGAN and CLIP.
pub const SCOPE_OVERHEAD: &str = "overhead";

fn scope_iteration() -> String {
    SCOPE_ITERATION.into()
}

/// One measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// Which loop was timed (`tessera`, `pytorch`).
    #[serde(rename = "impl")]
    pub implementation: String,
    /// [`SCOPE_ITERATION`] or [`SCOPE_OVERHEAD`].
    #[serde(default = "scope_iteration")]
    pub scope: String,
    /// Side of the square picture in pixels.
    pub size: u32,
    /// Renders optimised together.
    pub batch: usize,
    /// Cutouts per render per iteration.
    pub cutn: u32,
    /// What else shaped the iteration ([`Variant::label`]; the reference's `full` or
    /// `clip-fp16`).
    #[serde(default = "full_variant")]
    pub variant: String,
    /// Wall time of the fastest timed iteration (of the whole batch).
    pub seconds_per_iteration: f64,
    /// Memory in use in MiB when the cell started (models, interpreter, on CUDA the context
    /// and cache), as [`crate::peak_memory`] measures it, when known.
    #[serde(default)]
    pub start_mib: Option<f64>,
    /// Peak memory in MiB as [`crate::peak_memory`] measures it (resident set on the CPU, GPU
    /// memory taken on CUDA), when known.
    pub peak_mib: Option<f64>,
}

fn full_variant() -> String {
    Variant::Full.label().into()
}

/// How a `bench loop` row runs the networks, besides its size and batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Variant {
    /// Float32 networks, VQGAN's activations kept while CLIP runs (the render default).
    Full,
    /// Float32, VQGAN's decode recomputed in the backward pass (less memory).
    Recompute,
    /// CUDA float16 autocast around both networks (no effect on the CPU).
    Fp16,
    /// Float16 autocast and the recomputed decode: the least memory.
    Fp16Recompute,
}

impl Variant {
    /// The name in the table and in the reference's rows.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Full => "full",
            Variant::Recompute => "recompute",
            Variant::Fp16 => "fp16",
            Variant::Fp16Recompute => "fp16-recompute",
        }
    }

    fn apply(self, settings: &mut Settings) {
        settings.precision = match self {
            Variant::Full | Variant::Recompute => Precision::Full,
            Variant::Fp16 | Variant::Fp16Recompute => Precision::Fp16Autocast,
        };
        settings.recompute_decoder = matches!(self, Variant::Recompute | Variant::Fp16Recompute);
    }
}

/// One `bench loop` cell: a picture side, a batch size and a variant.
#[derive(Clone, Copy, Debug)]
pub struct Cell {
    /// Side of the square picture in pixels.
    pub size: u32,
    /// Renders optimised together.
    pub batch: usize,
    /// How the networks run.
    pub variant: Variant,
}

impl BenchRow {
    /// Finished pictures per hour at `iterations_per_image` iterations each.
    pub fn images_per_hour(&self, iterations_per_image: u32) -> f64 {
        3600.0 * self.batch as f64 / (self.seconds_per_iteration * f64::from(iterations_per_image))
    }
}

/// Times `iterations` steps (after `warmup` untimed ones) of every cell with `cutn` cutouts,
/// measuring each cell's peak memory with `memory`.
pub fn bench_loop<P, C>(
    perceptor: &P,
    codec: &C,
    cells: &[Cell],
    cutn: u32,
    warmup: u32,
    iterations: u32,
    memory: &PeakMemory,
) -> Result<Vec<BenchRow>, GenerateError>
where
    P: Perceptor + ?Sized,
    C: LatentCodec + ?Sized,
{
    cells
        .iter()
        .map(
            |&Cell {
                 size,
                 batch,
                 variant,
             }| {
                memory.restart();
                let start_mib = memory.in_use_mib();
                let settings: Vec<Settings> = (0..batch)
                    .map(|b| {
                        let prompts = PromptSpec::parse("a lighthouse at dusk", "", "")
                            .expect("valid prompt");
                        let mut s = Settings::new(prompts, b as u64);
                        s.width = size;
                        s.height = size;
                        s.cutn = cutn;
                        s.iterations = warmup + iterations;
                        variant.apply(&mut s);
                        s
                    })
                    .collect();
                let mut run = Run::start(&settings, perceptor, codec)?;
                for _ in 0..warmup {
                    run.step()?;
                }
                // Every step reads its losses back to the host, so it ends synchronised.
                let seconds = fastest(iterations, |_| run.step().map(|_| ()))?;
                Ok(BenchRow {
                    implementation: "tessera".into(),
                    scope: SCOPE_ITERATION.into(),
                    size,
                    batch,
                    cutn,
                    variant: variant.label().into(),
                    seconds_per_iteration: seconds,
                    start_mib,
                    peak_mib: memory.peak_mib(),
                })
            },
        )
        .collect()
}

/// The fastest of `iterations` timed calls of `step`: on a shared machine the least disturbed
/// by other load (`loop_reference.py` reports the same statistic).
fn fastest<E>(iterations: u32, mut step: impl FnMut(u32) -> Result<(), E>) -> Result<f64, E> {
    let mut best = f64::INFINITY;
    for i in 0..iterations.max(1) {
        let start = Instant::now();
        step(i)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Times the loop's own work at `size` with `cutn` cutouts of 224 pixels against a codebook of
/// vqgan_imagenet_f16_16384's shape (random values): pooled cutouts with the four augmentations
/// and noise, straight-through quantisation, both backward passes, an Adam step and the clamp.
pub fn bench_overhead(
    size: u32,
    cutn: u32,
    warmup: u32,
    iterations: u32,
    device: Device,
) -> BenchRow {
    let opts = (Kind::Float, device);
    let tokens = i64::from(size / 16);
    let (image, codebook, z) = tessera_nets::torch_rng::exclusive(|| {
        (
            Tensor::rand([1, 3, i64::from(size), i64::from(size)], opts),
            Tensor::randn([16384, 256], opts),
            Tensor::randn([1, 256, tokens, tokens], opts),
        )
    });
    let mut image = image.set_requires_grad(true);
    let mut z = z.set_requires_grad(true);
    let mut optimiser = Optimiser::new(OptimiserKind::Adam, 0.1, &z);
    let cutter = Cutter {
        method: CutMethod::Latest,
        cut_size: 224,
        cutn: i64::from(cutn),
        cut_pow: 1.0,
        augments: &DEFAULT_AUGMENTS,
        noise_fac: 0.1,
    };
    let rng = RunRng::new(0);
    let mut step = |i: u32| {
        image.zero_grad();
        z.zero_grad();
        let mut stream = rng.stream(u64::from(i), Purpose::Cutouts);
        let cutouts = cutter.cut(&image, &mut stream, |shape| {
            rng.randn(u64::from(i), Purpose::CutoutNoise, shape, device)
        });
        let quantized = vector_quantize(&z, &codebook);
        (cutouts.mean(Kind::Float) + quantized.mean(Kind::Float)).backward();
        let grad = z.grad();
        optimiser.step(&mut z, &grad);
        let clamped = tch::no_grad(|| z.clamp(-1.0, 1.0));
        tch::no_grad(|| z.copy_(&clamped));
        // Read a value back so asynchronous devices finish the step before the clock stops.
        image.grad().double_value(&[0, 0, 0, 0]);
    };
    for i in 0..warmup {
        step(i);
    }
    let Ok(seconds) = fastest(iterations, |i| {
        step(warmup + i);
        Ok::<(), Infallible>(())
    });
    BenchRow {
        implementation: "tessera".into(),
        scope: SCOPE_OVERHEAD.into(),
        size,
        batch: 1,
        cutn,
        variant: full_variant(),
        seconds_per_iteration: seconds,
        start_mib: None,
        peak_mib: None,
    }
}

/// Rows printed by `loop_reference.py` (one JSON object per line; other lines are ignored).
pub fn parse_reference(output: &str) -> Vec<BenchRow> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str(line.trim()).ok())
        .collect()
}

/// A table of all rows, with images per hour and each row's speed relative to PyTorch's
/// single render at the same size and scope.
pub fn table(rows: &[BenchRow], iterations_per_image: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<9} {:<14} {:>5} {:>5} {:>5} {:>12} {:>12} {:>14} {:>10} {:>10}",
        "impl",
        "scope",
        "variant",
        "size",
        "batch",
        "cutn",
        "s/iter",
        "images/h",
        "vs pytorch B=1",
        "start MiB",
        "peak MiB"
    );
    for row in rows {
        let reference = rows.iter().find(|r| {
            r.implementation == "pytorch"
                && r.scope == row.scope
                && r.size == row.size
                && r.batch == 1
        });
        let speedup = reference.map_or("-".to_string(), |r| {
            format!(
                "{:.2}x",
                row.images_per_hour(iterations_per_image) / r.images_per_hour(iterations_per_image)
            )
        });
        let _ = writeln!(
            out,
            "{:<8} {:<9} {:<14} {:>5} {:>5} {:>5} {:>12.3} {:>12.1} {:>14} {:>10} {:>10}",
            row.implementation,
            row.scope,
            row.variant,
            row.size,
            row.batch,
            row.cutn,
            row.seconds_per_iteration,
            row.images_per_hour(iterations_per_image),
            speedup,
            mib(row.start_mib),
            mib(row.peak_mib),
        );
    }
    out
}

fn mib(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |m| format!("{m:.0}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_lines_parse_and_the_table_compares_with_pytorch() {
        let output = "loading models\n\
            {\"impl\": \"pytorch\", \"size\": 128, \"batch\": 1, \"cutn\": 32, \"seconds_per_iteration\": 2.0, \"start_mib\": 700.2, \"peak_mib\": 900.7}\n";
        let mut rows = parse_reference(output);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].scope, SCOPE_ITERATION);
        assert_eq!(rows[0].variant, "full");
        rows.push(BenchRow {
            implementation: "tessera".into(),
            scope: SCOPE_ITERATION.into(),
            size: 128,
            batch: 4,
            cutn: 32,
            variant: "recompute".into(),
            seconds_per_iteration: 4.0,
            start_mib: None,
            peak_mib: None,
        });
        assert_eq!(rows[0].images_per_hour(500), 3.6);
        let table = table(&rows, 500);
        assert!(
            table.lines().nth(1).unwrap().ends_with(" 700        901"),
            "{table}"
        );
        assert!(table.lines().nth(2).unwrap().contains("2.00x"), "{table}");
        assert!(
            table.lines().nth(2).unwrap().contains("recompute"),
            "{table}"
        );
    }

    #[test]
    fn every_cell_is_timed_in_its_variant_with_its_peak_memory() {
        let (perceptor, codec) = tessera_nets::generate::testnets::tiny_models();
        let cells = [
            Cell {
                size: 32,
                batch: 1,
                variant: Variant::Full,
            },
            Cell {
                size: 32,
                batch: 2,
                variant: Variant::Recompute,
            },
        ];
        let memory = PeakMemory::new(Device::Cpu);
        let rows = bench_loop(&perceptor, &codec, &cells, 2, 0, 1, &memory).unwrap();
        let shapes: Vec<(usize, &str)> =
            rows.iter().map(|r| (r.batch, r.variant.as_str())).collect();
        assert_eq!(shapes, [(1, "full"), (2, "recompute")]);
        assert!(rows
            .iter()
            .all(|r| r.peak_mib >= r.start_mib && r.start_mib.is_some_and(|m| m > 0.0)));
    }

    #[test]
    fn overhead_bench_runs_and_reports_its_scope() {
        let row = bench_overhead(32, 2, 0, 1, Device::Cpu);
        assert_eq!(
            (row.scope.as_str(), row.size, row.cutn),
            (SCOPE_OVERHEAD, 32, 2)
        );
        assert!(row.seconds_per_iteration > 0.0);
    }
}
