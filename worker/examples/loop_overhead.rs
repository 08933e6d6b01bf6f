//! Times the loop's own work around the networks (cutouts, augmentations, noise, quantisation,
//! their backward passes, the optimiser step) against the same steps in PyTorch, on the CPU, in
//! one run: the part of an iteration that the loop itself decides, which `tessera-worker bench
//! loop` (whole iterations) cannot separate from the networks.
//!
//!     cargo run -p tessera-worker --example loop_overhead -- [ITERATIONS]

use std::process::Command;
use tch::Device;
use tessera_worker::bench::render_loop::{bench_overhead, parse_reference, table};

fn main() -> anyhow::Result<()> {
    let iterations: u32 = std::env::args().nth(1).map_or(Ok(5), |a| a.parse())?;
    let sizes = [128u32, 256, 496];
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let output = Command::new(format!("{root}/.deps/venv/bin/python"))
        .arg(format!("{root}/scripts/bench/loop_reference.py"))
        .args([
            "--overhead",
            "--warmup",
            "1",
            "--iterations",
            &iterations.to_string(),
            "--sizes",
        ])
        .args(sizes.iter().map(u32::to_string))
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "loop_reference.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut rows = parse_reference(&String::from_utf8_lossy(&output.stdout));
    rows.extend(
        sizes
            .iter()
            .map(|&size| bench_overhead(size, 32, 1, iterations, Device::Cpu)),
    );
    rows.sort_by_key(|r| (r.size, r.implementation.clone()));
    print!("{}", table(&rows, 500));
    Ok(())
}
