//! What this worker offers the farm: every task kind, the models found in its models
//! directory (under their own names and under the catalogue names they stand for), its device
//! and its limits (pixels, side, iterations). The coordinator only hands out tasks whose models
//! are all offered and that fit its limits, and refuses at submission a job no registered
//! worker could ever run.

use tessera_core::job::ModelCatalog;
use tessera_proto::v1;

use super::tasks::file_stem;
use super::FarmArgs;
use tessera_nets::models::ModelDir;

/// The capabilities to register with.
pub fn detect(models: &ModelDir, args: &FarmArgs) -> anyhow::Result<v1::Capabilities> {
    let files = models.list()?;
    let catalog = ModelCatalog::default();
    let catalogue_names = catalog
        .clip
        .iter()
        .chain(&catalog.vqgan)
        .chain(catalog.upscale.iter().map(|m| &m.name));
    let mut names: Vec<String> = files.iter().map(|f| f.name.clone()).collect();
    names.extend(
        catalogue_names
            .filter(|name| models.find(&file_stem(name)).is_ok())
            .cloned(),
    );
    names.sort();
    names.dedup();
    Ok(v1::Capabilities {
        kinds: [
            v1::TaskKind::Generate,
            v1::TaskKind::UpscaleTile,
            v1::TaskKind::Stitch,
        ]
        .map(|k| k as i32)
        .to_vec(),
        models: names,
        device: args.device.clone(),
        max_pixels: args.max_pixels,
        max_side: args
            .max_side
            .unwrap_or_else(|| side_for_memory(device_memory(&args.device))),
        max_iterations: args.max_iterations,
    })
}

/// Device memory a VQGAN+CLIP render takes whatever its size (the networks, the optimiser,
/// CLIP's cutouts), in bytes: with [`RENDER_BYTES_PER_PIXEL`], the line through the memory
/// users of the reference script report (f16_16384 VQGAN, ViT-B/32, 32 cutouts, float32):
/// 8 GB for 380x380, 10 GB for 512x512, 24 GB for 900x900.
const RENDER_BASE_BYTES: u64 = 3_500_000_000;
/// Device memory a render takes per pixel of its picture, in bytes (see above).
const RENDER_BYTES_PER_PIXEL: u64 = 26_000;

/// The longest side of a square render that fits in `memory` bytes, a multiple of 16 (the
/// VQGAN's grid); 0 (no limit) when the memory is unknown.
pub fn side_for_memory(memory: Option<u64>) -> u32 {
    let Some(memory) = memory else { return 0 };
    let pixels = memory.saturating_sub(RENDER_BASE_BYTES) / RENDER_BYTES_PER_PIXEL;
    let side = (pixels as f64).sqrt() as u32 / 16 * 16;
    side.max(16)
}

/// The memory of `device` in bytes, for a GPU (`cuda:N`, read with nvidia-smi); `None` for the
/// CPU, whose memory the reference figures (GPU memory) do not describe and which the machine
/// shares with everything else, and when it cannot be read.
fn device_memory(device: &str) -> Option<u64> {
    let index = device.strip_prefix("cuda")?;
    let index = index.strip_prefix(':').unwrap_or("0");
    let output = std::process::Command::new("nvidia-smi")
        .args(["--query-gpu=memory.total", "--format=csv,noheader,nounits"])
        .arg(format!("--id={index}"))
        .output()
        .ok()?;
    let mib: u64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .ok()?;
    Some(mib * 1024 * 1024)
}

#[cfg(test)]
mod tests {
    use super::side_for_memory;

    #[test]
    fn the_side_for_a_memory_follows_the_reference_script_s_reported_use() {
        // The reports the line is drawn through, within a grid step or two.
        assert_eq!(side_for_memory(Some(10_000_000_000)), 496);
        assert_eq!(side_for_memory(Some(24_000_000_000)), 880);
        assert_eq!(side_for_memory(Some(80_000_000_000)), 1712);
        assert_eq!(side_for_memory(Some(1_000_000_000)), 16);
        assert_eq!(side_for_memory(None), 0);
    }
}
