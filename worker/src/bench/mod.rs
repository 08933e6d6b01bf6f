//! `tessera-worker bench`: our models against the PyTorch reference, same machine, same run.
//!
//! Speed targets are checked by these tables, never by timed tests. The reference side runs the
//! scripts under `scripts/bench/` with the project's venv, so both sides use the same libtorch
//! build and thread count.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tch::{nn, Device, Kind, Tensor};
use tessera_core::tiles::TileSpec;

use self::render_loop::{bench_loop, parse_reference, table, BenchRow, Cell, Variant};
use crate::peak_memory::PeakMemory;
use tessera_nets::clip::{Clip, ClipConfig};
use tessera_nets::esrgan::SrModel;
use tessera_nets::models::ModelDir;
use tessera_nets::upscale::Upscaler;
use tessera_nets::vqgan::{VqConfig, VqModel};

mod clip;
pub mod render_loop;
mod vqgan;

/// Iterations per finished picture, the render default, for the loop table's images per hour.
const ITERATIONS_PER_IMAGE: u32 = 500;

/// What to benchmark.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub target: BenchTarget,
    /// Python interpreter with torch for the reference side.
    #[arg(long, global = true, default_value = ".deps/venv/bin/python")]
    pub python: PathBuf,
    /// Timed repetitions per cell (after one warm-up); for `loop`, timed iterations.
    #[arg(long, global = true, visible_alias = "iterations", default_value_t = 2)]
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
    /// CLIP ViT-B/32 image encoder (random weights): ms per forward+backward of 32 cutouts of
    /// 224x224, the perceptor's share of a loop iteration.
    Clip,
    /// VQGAN f16_16384 decoder (random weights): ms per forward+backward to the latent, the
    /// codec's share of a loop iteration.
    Vqgan {
        /// Picture sides to time (rounded down to a multiple of 16).
        #[arg(long, value_delimiter = ',', default_values_t = [256u32, 496])]
        sizes: Vec<u32>,
    },
    /// The whole VQGAN+CLIP loop at full-size architectures (random weights): seconds per
    /// iteration and images per hour, for every size and batch.
    Loop {
        /// Picture sides to time.
        #[arg(long, value_delimiter = ',', default_values_t = [128u32, 256])]
        sizes: Vec<u32>,
        /// Renders optimised together to time.
        #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 8])]
        batches: Vec<usize>,
        /// Cutouts per render per iteration.
        #[arg(long, default_value_t = 32)]
        cutn: u32,
        /// How our loop runs the networks (each is a row; the reference runs as `generate.py`
        /// does: float32 on the CPU, CLIP in float16 on CUDA).
        #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Variant::Full])]
        variants: Vec<Variant>,
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
        BenchTarget::Clip => bench_clip(&args),
        BenchTarget::Vqgan { sizes } => bench_vqgan(&args, sizes),
        BenchTarget::Loop {
            sizes,
            batches,
            cutn,
            variants,
        } => bench_generation_loop(&args, sizes, batches, *cutn, variants),
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
    let stdout = reference_stdout(python, script, args)?;
    let last = stdout.lines().last().unwrap_or_default();
    last.trim()
        .parse()
        .with_context(|| format!("{script} printed '{last}', expected milliseconds"))
}

/// Runs a reference script and returns what it printed on stdout, or its stderr as the error.
pub fn reference_stdout(python: &Path, script: &str, args: &[String]) -> anyhow::Result<String> {
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
        // A reference killed by the kernel (SIGKILL: out of memory, most often) writes nothing;
        // the exit status is then the only clue.
        bail!(
            "{script} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The device both sides run on: the first GPU when there is one (as the timing functions choose).
fn bench_device() -> (Device, &'static str) {
    match Device::cuda_if_available() {
        Device::Cpu => (Device::Cpu, "cpu"),
        device => (device, "cuda"),
    }
}

/// Prints the header of a table of milliseconds, ours next to PyTorch's.
fn print_ms_header(title: &str, what: &str, args: &BenchArgs) {
    println!(
        "{title}, {} on {}, {} threads, mean of {} runs after one warm-up",
        what,
        bench_device().1,
        tch::get_num_threads(),
        args.repeats
    );
    println!(
        "{:>6} {:>12} {:>12} {:>10}",
        "size", "ours ms", "torch ms", "ours/torch"
    );
}

fn print_ms_row(size: impl std::fmt::Display, ours: f64, torch: f64) {
    println!(
        "{:>6} {:>12.0} {:>12.0} {:>10.2}",
        size,
        ours,
        torch,
        ours / torch
    );
}

fn bench_clip(args: &BenchArgs) -> anyhow::Result<()> {
    print_ms_header(
        "CLIP ViT-B/32 image encoder (random weights)",
        "forward+backward of 32 cutouts",
        args,
    );
    let ours = clip::image_forward_backward_ms(args.repeats);
    let torch = reference_ms(
        &args.python,
        "scripts/bench/clip_reference.py",
        &[format!("--iters={}", args.repeats)],
    )?;
    print_ms_row(224, ours, torch);
    Ok(())
}

fn bench_vqgan(args: &BenchArgs, sizes: &[u32]) -> anyhow::Result<()> {
    print_ms_header(
        "VQGAN f16_16384 decoder (random weights)",
        "forward+backward to the latent",
        args,
    );
    for &size in sizes {
        let ours = vqgan::decoder_forward_backward_ms(i64::from(size), args.repeats);
        let torch = reference_ms(
            &args.python,
            "scripts/bench/vqgan_reference.py",
            &[size.to_string(), args.repeats.to_string()],
        )?;
        print_ms_row(size, ours, torch);
    }
    Ok(())
}

fn bench_generation_loop(
    args: &BenchArgs,
    sizes: &[u32],
    batches: &[usize],
    cutn: u32,
    variants: &[Variant],
) -> anyhow::Result<()> {
    let (device, device_name) = bench_device();
    let memory = PeakMemory::new(device);
    println!(
        "VQGAN+CLIP iteration, CLIP ViT-B/32 + vqgan_imagenet_f16_16384 (random weights) on {device_name}, \
         {} threads, fastest of {} iterations after one warm-up, images/h at {ITERATIONS_PER_IMAGE} iterations each; \
         peak MiB: {}",
        tch::get_num_threads(),
        args.repeats,
        match device {
            Device::Cpu => "the process's resident set",
            _ => "GPU memory taken by the process (after the cell; earlier cells' cache included)",
        }
    );
    let cells: Vec<Cell> = sizes
        .iter()
        .flat_map(|&size| {
            batches.iter().flat_map(move |&batch| {
                variants.iter().map(move |&variant| Cell {
                    size,
                    batch,
                    variant,
                })
            })
        })
        .collect();
    let mut rows = ours_generation_loop(device, &cells, cutn, args.repeats, &memory)?;
    crate::malloc::release_free_memory();
    // Ours first, on their own: the models are freed before PyTorch builds its own, and a
    // reference that dies (out of memory at large batches) still leaves our rows printed.
    print!("{}", table(&rows, ITERATIONS_PER_IMAGE));
    let mut reference_args = vec!["--sizes".to_string()];
    reference_args.extend(sizes.iter().map(u32::to_string));
    reference_args.push("--batches".into());
    reference_args.extend(batches.iter().map(usize::to_string));
    reference_args.extend([
        format!("--cutn={cutn}"),
        "--warmup=1".into(),
        format!("--iterations={}", args.repeats),
        format!("--device={device_name}"),
    ]);
    if device != Device::Cpu {
        reference_args.push("--clip-half".into());
    }
    let reference = reference_stdout(
        &args.python,
        "scripts/bench/loop_reference.py",
        &reference_args,
    )?;
    rows.extend(parse_reference(&reference));
    rows.sort_by_key(|r| (r.size, r.batch, r.implementation.clone()));
    print!("{}", table(&rows, ITERATIONS_PER_IMAGE));
    Ok(())
}

/// Our rows of `bench loop`; the full-size models live only inside this call.
fn ours_generation_loop(
    device: Device,
    cells: &[Cell],
    cutn: u32,
    repeats: u32,
    memory: &PeakMemory,
) -> anyhow::Result<Vec<BenchRow>> {
    let clip = Clip::random(&ClipConfig::vit_b_32(), device, Kind::Float)?;
    let mut vs = nn::VarStore::new(device);
    let vqgan = tessera_nets::torch_rng::exclusive(|| {
        tch::manual_seed(0);
        VqModel::new(&vs.root(), &VqConfig::imagenet_f16_16384())
    });
    vs.freeze();
    Ok(bench_loop(&clip, &vqgan, cells, cutn, 1, repeats, memory)?)
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
        let image = tessera_nets::torch_rng::exclusive(|| {
            tch::manual_seed(0);
            Tensor::rand(
                [size as i64, size as i64, 3],
                (tch::Kind::Float, tch::Device::Cpu),
            )
        });
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
