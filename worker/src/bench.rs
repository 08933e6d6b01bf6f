//! `tessera-worker bench`: our models against the PyTorch reference, same machine, same run.
//!
//! Speed targets are checked by these tables, never by timed tests. The reference side runs the
//! scripts under `scripts/bench/` with the project's venv, so both sides use the same libtorch
//! build and thread count.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tch::Tensor;
use tessera_core::tiles::TileSpec;

use crate::esrgan::SrModel;
use crate::models::ModelDir;
use crate::upscale::Upscaler;

/// What to benchmark.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
    /// Python interpreter with torch for the reference side.
    #[arg(long, global = true, default_value = ".deps/venv/bin/python")]
    pub python: PathBuf,
    /// Timed repetitions per cell (after one warm-up).
    #[arg(long, global = true, default_value_t = 2)]
    pub repeats: u32,
}

/// The benchmark tables available.
#[derive(clap::Subcommand, Debug)]
pub enum BenchTarget {
    /// Real-ESRGAN x4plus upscaling: ms per output megapixel, untiled and tiled.
    Upscale {
        /// Model to time.
        #[arg(long, default_value = "realesrgan-x4plus")]
        model: String,
        /// Input sides to time.
        #[arg(long, value_delimiter = ',', default_values_t = [128u32, 496])]
        sizes: Vec<u32>,
        /// Tile sizes to time besides untiled.
        #[arg(long, value_delimiter = ',', default_values_t = [128u32, 256])]
        tiles: Vec<u32>,
    },
}

/// Runs the chosen benchmark and prints its table.
pub fn run(models: &ModelDir, args: BenchArgs) -> anyhow::Result<()> {
    match &args.target {
        BenchTarget::Upscale {
            model,
            sizes,
            tiles,
        } => bench_upscale(models, &args, model, sizes, tiles),
    }
}

/// Median wall time of `repeats` runs of `f` after one warm-up run.
pub fn time_median(repeats: u32, mut f: impl FnMut()) -> Duration {
    f();
    let mut times: Vec<Duration> = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

/// Runs a reference script and returns the milliseconds it reports on its last line.
pub fn reference_ms(python: &Path, script: &str, args: &[String]) -> anyhow::Result<f64> {
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} {script} (run scripts/setup.sh)",
                python.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "{script} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    last.trim()
        .parse()
        .with_context(|| format!("{script} printed '{last}', expected milliseconds"))
}

fn bench_upscale(
    models: &ModelDir,
    args: &BenchArgs,
    model: &str,
    sizes: &[u32],
    tiles: &[u32],
) -> anyhow::Result<()> {
    let file = models.find(model)?;
    println!(
        "{} ({}), {} threads, median of {} runs",
        file.name,
        file.path.display(),
        tch::get_num_threads(),
        args.repeats
    );
    println!(
        "{:>6} {:>8} {:>14} {:>14} {:>10} {:>16}",
        "input", "tile", "ours ms/MP", "torch ms/MP", "ours/torch", "tiling overhead"
    );
    for &size in sizes {
        tch::manual_seed(0);
        let image = Tensor::rand(
            [size as i64, size as i64, 3],
            (tch::Kind::Float, tch::Device::Cpu),
        );
        let rgb = Vec::<f32>::try_from(image.flatten(0, -1))?;
        let mut untiled_ms = None;
        for tile in std::iter::once(0).chain(tiles.iter().copied().filter(|&t| t < size)) {
            let spec = TileSpec {
                tile,
                ..TileSpec::default()
            };
            let upscaler = Upscaler::new(
                SrModel::load(&file.path, tch::Device::Cpu)?,
                spec,
                tch::Device::Cpu,
            );
            let out_mp = f64::from(size * upscaler.scale()).powi(2) / 1e6;
            let ours = time_median(args.repeats, || {
                upscaler
                    .upscale_rgb(&rgb, size, size)
                    .expect("benchmark upscale");
            })
            .as_secs_f64()
                * 1e3;
            let torch = reference_ms(
                &args.python,
                "scripts/bench/upscale_reference.py",
                &[
                    format!("--size={size}"),
                    format!("--tile={tile}"),
                    format!("--pad={}", spec.pad + spec.overlap / 2),
                    format!("--repeats={}", args.repeats),
                ],
            )?;
            let overhead = match untiled_ms {
                None => {
                    untiled_ms = Some(ours);
                    "-".to_string()
                }
                Some(base) => format!("{:+.1}%", (ours / base - 1.0) * 100.0),
            };
            println!(
                "{:>6} {:>8} {:>14.0} {:>14.0} {:>10.2} {:>16}",
                size,
                if tile == 0 {
                    "none".to_string()
                } else {
                    tile.to_string()
                },
                ours / out_mp,
                torch / out_mp,
                ours / torch,
                overhead
            );
        }
    }
    Ok(())
}
