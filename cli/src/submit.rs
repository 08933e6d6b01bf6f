//! `tessera submit`: a prompt file becomes a job. The file goes to the coordinator as it is
//! (`prompts_text` or `prompts_jsonl`), so its validation, which names the offending line, is
//! the only one and the CLI never disagrees with the farm about what a file means.

use std::io::Read;
use std::path::Path;

use anyhow::Context;
use tessera_core::job::parse_size;
use tessera_core::sweep::check_keys;
use tessera_proto::v1;
use tessera_proto::v1::job_spec::Source;

use crate::args::{JobOptions, RenderOptions};
use crate::farm::Farm;
use crate::output::{duration, job_state, print_json, shown};

/// Builds the job of the prompt file at `path` rendered as `args` says, placed as `job` says.
pub fn spec(path: &Path, args: &RenderOptions, job: &JobOptions) -> anyhow::Result<v1::JobSpec> {
    let text = read_prompt_file(path)?;
    let source = match path.extension().and_then(|e| e.to_str()) {
        Some("jsonl") => Source::PromptsJsonl(text),
        Some("json") => Source::PromptsJson(text),
        _ => Source::PromptsText(text),
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
        upscale_model: args.upscale.clone(),
        tile: job.tile,
        ..v1::Settings::from(args.settings.patch.clone())
    };
    check_keys(&args.sweep).map_err(|e| anyhow::anyhow!("--sweep: {e}"))?;
    let mut spec = job_spec(job, path, settings, seeds, source);
    spec.sweeps = args
        .sweep
        .iter()
        .map(|s| v1::Sweep {
            key: s.key.clone(),
            values: s.values.clone(),
        })
        .collect();
    Ok(spec)
}

/// The largest prompt file sent: half the largest message a coordinator takes, which leaves
/// room for the rest of the job and holds 10,000 prompts of 2,000 characters.
const MAX_PROMPT_FILE_BYTES: usize = tessera_proto::MAX_MESSAGE_BYTES / 2;

/// Reads the prompt file, refusing one larger than [`MAX_PROMPT_FILE_BYTES`] before it is all
/// in memory (it may be `/dev/zero`) and one that is not UTF-8, naming the line.
fn read_prompt_file(path: &Path) -> anyhow::Result<String> {
    let cannot_read = || format!("cannot read the prompt file {}", path.display());
    let file = std::fs::File::open(path).with_context(cannot_read)?;
    let mut bytes = Vec::new();
    file.take(MAX_PROMPT_FILE_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(cannot_read)?;
    if bytes.len() > MAX_PROMPT_FILE_BYTES {
        anyhow::bail!(
            "the prompt file {} is larger than {} MiB, more than one job takes; split it into \
             several jobs",
            path.display(),
            MAX_PROMPT_FILE_BYTES >> 20
        );
    }
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = valid.len() - valid.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        anyhow::anyhow!(
            "the prompt file {} is not UTF-8 text: line {line}, byte {column} is not valid \
             UTF-8 (save the file as UTF-8)",
            path.display()
        )
    })
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
        webhook: options.webhook.clone().unwrap_or_default(),
        queue_anyway: options.queue_anyway,
        ..v1::JobSpec::default()
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
            shown(&status.name)
        );
        if !status.waiting_for.is_empty() {
            eprintln!("{}", shown(&status.waiting_for));
        }
    }
    Ok(reply.job_id)
}

/// `submit --dry-run`: asks the coordinator to plan and price `spec` without storing it, and
/// prints what it would make and take.
pub async fn dry_run(farm: &mut Farm, spec: v1::JobSpec, json: bool) -> anyhow::Result<()> {
    let e = farm.estimate(spec).await?;
    if json {
        print_json(&serde_json::json!({
            "results": e.results,
            "tasks": {
                "generate": e.generate_tasks,
                "upscale_tile": e.upscale_tile_tasks,
                "stitch": e.stitch_tasks,
            },
            "worker_ms": e.worker_ms,
            "wall_ms": e.wall_ms,
            "workers": e.workers,
            "ahead_ms": e.ahead_ms,
            "unmeasured": e.unmeasured,
        }));
        return Ok(());
    }
    println!(
        "would make {} result(s) from {} generate, {} upscale_tile and {} stitch task(s)",
        e.results, e.generate_tasks, e.upscale_tile_tasks, e.stitch_tasks
    );
    match (e.worker_ms, e.wall_ms) {
        (Some(work), Some(wall)) => println!(
            "estimate: {} of worker time; {} until done on {} worker(s){}",
            duration(work),
            duration(wall),
            e.workers,
            if e.ahead_ms > 0 {
                format!(", after {} of work ahead of it", duration(e.ahead_ms))
            } else {
                String::new()
            }
        ),
        _ => println!(
            "no estimate: the farm has not finished work of this kind yet ({}); it measures \
             its rates from finished tasks",
            shown(&e.unmeasured.join(", "))
        ),
    }
    Ok(())
}
