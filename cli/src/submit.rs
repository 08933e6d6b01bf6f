//! `tessera submit`: a prompt file becomes a job. The file goes to the coordinator as it is
//! (`prompts_text` or `prompts_jsonl`), so its validation, which names the offending line, is
//! the only one and the CLI never disagrees with the farm about what a file means.

use std::path::Path;

use anyhow::Context;
use tessera_core::job::parse_size;
use tessera_proto::v1;
use tessera_proto::v1::job_spec::Source;

use crate::args::{JobOptions, RenderOptions};
use crate::farm::Farm;
use crate::output::{job_state, print_json};

/// Builds the job of the prompt file at `path` rendered as `args` says, placed as `job` says.
pub fn spec(path: &Path, args: &RenderOptions, job: &JobOptions) -> anyhow::Result<v1::JobSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the prompt file {}", path.display()))?;
    let jsonl = path.extension().is_some_and(|e| e == "jsonl");
    let source = if jsonl {
        Source::PromptsJsonl(text)
    } else {
        Source::PromptsText(text)
    };
    let (width, height) = match &args.size {
        Some(size) => {
            let (w, h) = parse_size(size).map_err(|e| anyhow::anyhow!("--size: {e}"))?;
            (Some(w), Some(h))
        }
        None => (None, None),
    };
    let seeds = match args.seeds {
        Some(n) => (0..n).collect(),
        None => args.seed.clone(),
    };
    let settings = v1::Settings {
        width,
        height,
        iterations: args.iterations,
        upscale_model: args.upscale.clone(),
        tile: job.tile,
        ..v1::Settings::default()
    };
    Ok(job_spec(job, path, settings, seeds, source))
}

/// A job of `source` with the placement and label of `options`, named after `path` unless
/// `--name` says otherwise.
pub fn job_spec(
    options: &JobOptions,
    path: &Path,
    settings: v1::Settings,
    seeds: Vec<u64>,
    source: Source,
) -> v1::JobSpec {
    let name = options.name.clone().unwrap_or_else(|| {
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    v1::JobSpec {
        name,
        priority: options.priority,
        settings: Some(settings),
        seeds,
        source: Some(source),
    }
}

/// Submits `spec` and prints the job id (or the job as JSON); returns the id.
pub async fn submit(farm: &mut Farm, spec: v1::JobSpec, json: bool) -> anyhow::Result<String> {
    let reply = farm.submit(spec).await?;
    let status = reply.status.unwrap_or_default();
    if json {
        let mut value = crate::output::job_json(&status);
        value["job_id"] = reply.job_id.clone().into();
        print_json(&value);
    } else {
        println!("{}", reply.job_id);
        eprintln!(
            "submitted job {}: {} result(s), {} ({})",
            reply.job_id,
            status.results_total,
            job_state(status.state()),
            status.name
        );
    }
    Ok(reply.job_id)
}
