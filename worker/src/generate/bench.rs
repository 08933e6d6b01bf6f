//! Timing of the loop for `tessera-worker bench loop`: seconds per iteration and images per hour
//! at several sizes and batch sizes, next to `scripts/bench/loop_reference.py` (the same steps
//! in PyTorch) run on the same machine. Not a test: it prints numbers, it asserts nothing.

use super::run::{GenerateError, Run};
use super::settings::Settings;
use super::traits::{LatentCodec, Perceptor};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::time::Instant;
use tessera_core::prompt::PromptSpec;

/// One measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BenchRow {
    /// Which loop was timed (`tessera`, `pytorch`).
    #[serde(rename = "impl")]
    pub implementation: String,
    /// Side of the square picture in pixels.
    pub size: u32,
    /// Renders optimised together.
    pub batch: usize,
    /// Cutouts per render per iteration.
    pub cutn: u32,
    /// Mean wall time of one iteration (of the whole batch).
    pub seconds_per_iteration: f64,
    /// Peak GPU memory in MiB, when timed on a GPU.
    pub peak_gpu_mib: Option<f64>,
}

impl BenchRow {
    /// Finished pictures per hour at `iterations_per_image` iterations each.
    pub fn images_per_hour(&self, iterations_per_image: u32) -> f64 {
        3600.0 * self.batch as f64 / (self.seconds_per_iteration * f64::from(iterations_per_image))
    }
}

/// Times `iterations` steps (after `warmup` untimed ones) of a batch of `batch` renders of
/// `size`x`size` with `cutn` cutouts, for every (size, batch) pair.
pub fn bench_loop<P, C>(
    perceptor: &P,
    codec: &C,
    cases: &[(u32, usize)],
    cutn: u32,
    warmup: u32,
    iterations: u32,
) -> Result<Vec<BenchRow>, GenerateError>
where
    P: Perceptor + ?Sized,
    C: LatentCodec + ?Sized,
{
    cases
        .iter()
        .map(|&(size, batch)| {
            let settings: Vec<Settings> = (0..batch)
                .map(|b| {
                    let prompts =
                        PromptSpec::parse("a lighthouse at dusk", "", "").expect("valid prompt");
                    let mut s = Settings::new(prompts, b as u64);
                    s.width = size;
                    s.height = size;
                    s.cutn = cutn;
                    s.iterations = warmup + iterations;
                    s
                })
                .collect();
            let mut run = Run::start(&settings, perceptor, codec)?;
            for _ in 0..warmup {
                run.step()?;
            }
            // Every step reads its losses back to the host, so it ends synchronised.
            let start = Instant::now();
            for _ in 0..iterations {
                run.step()?;
            }
            Ok(BenchRow {
                implementation: "tessera".into(),
                size,
                batch,
                cutn,
                seconds_per_iteration: start.elapsed().as_secs_f64() / f64::from(iterations.max(1)),
                peak_gpu_mib: None,
            })
        })
        .collect()
}

/// Rows printed by `loop_reference.py` (one JSON object per line; other lines are ignored).
pub fn parse_reference(output: &str) -> Vec<BenchRow> {
    output
        .lines()
        .filter_map(|line| serde_json::from_str(line.trim()).ok())
        .collect()
}

/// A table of all rows, with images per hour and each row's speed relative to PyTorch's
/// single render at the same size.
pub fn table(rows: &[BenchRow], iterations_per_image: u32) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:>5} {:>5} {:>5} {:>12} {:>12} {:>14} {:>10}",
        "impl", "size", "batch", "cutn", "s/iter", "images/h", "vs pytorch B=1", "peak MiB"
    );
    for row in rows {
        let reference = rows
            .iter()
            .find(|r| r.implementation == "pytorch" && r.size == row.size && r.batch == 1);
        let speedup = reference.map_or("-".to_string(), |r| {
            format!(
                "{:.2}x",
                row.images_per_hour(iterations_per_image) / r.images_per_hour(iterations_per_image)
            )
        });
        let _ = writeln!(
            out,
            "{:<8} {:>5} {:>5} {:>5} {:>12.3} {:>12.1} {:>14} {:>10}",
            row.implementation,
            row.size,
            row.batch,
            row.cutn,
            row.seconds_per_iteration,
            row.images_per_hour(iterations_per_image),
            speedup,
            row.peak_gpu_mib
                .map_or("-".to_string(), |m| format!("{m:.0}")),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_lines_parse_and_the_table_compares_with_pytorch() {
        let output = "loading models\n\
            {\"impl\": \"pytorch\", \"size\": 128, \"batch\": 1, \"cutn\": 32, \"seconds_per_iteration\": 2.0, \"peak_gpu_mib\": null}\n";
        let mut rows = parse_reference(output);
        assert_eq!(rows.len(), 1);
        rows.push(BenchRow {
            implementation: "tessera".into(),
            size: 128,
            batch: 4,
            cutn: 32,
            seconds_per_iteration: 4.0,
            peak_gpu_mib: None,
        });
        assert_eq!(rows[0].images_per_hour(500), 3.6);
        let table = table(&rows, 500);
        assert!(table.lines().nth(2).unwrap().contains("2.00x"), "{table}");
    }
}
