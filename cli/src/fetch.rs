//! `tessera fetch`: a job's finished pictures into a directory, with a `manifest.json` saying
//! what each was made from. Downloads are resumable: bytes go to `NAME.part` first, a rerun
//! continues from the part's length, and a file becomes `NAME` only once its size and SHA-256
//! match what the coordinator stored, so a finished name is always a whole, verified picture.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;
use tessera_core::task::{sha256_hex, ArtifactRef};
use tessera_proto::v1;

use crate::farm::Farm;
use crate::output::{artifact_json, print_json, result_state, settings_json};

/// Longest prompt slug in a file name.
const SLUG_MAX: usize = 40;
/// Longest sweep label in a file name, which with the slug stays far below the 255 bytes
/// file systems allow.
const LABEL_MAX: usize = 120;

/// What a fetch did, file names relative to the directory.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Files downloaded (whole or resumed) by this run.
    pub written: Vec<String>,
    /// Files that were already complete.
    pub skipped: Vec<String>,
    /// Results not done (pending, failed or cancelled).
    pub missing: usize,
}

/// Fetches every done result of `job` into `dir` and writes its manifest; prints what it did.
pub async fn fetch(farm: &mut Farm, job: &str, dir: &Path, json: bool) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
    let manifest_path = dir.join("manifest.json");
    let ours = files_of_earlier_fetch(&manifest_path, job)?;
    let results = farm.results(job).await?;
    let mut fetched = Fetched::default();
    let mut manifest = Vec::with_capacity(results.len());
    for result in &results {
        let name = file_name(result);
        let file = match (&result.output, result.state()) {
            (Some(output), v1::ResultState::Done) => {
                let path = dir.join(&name);
                check_replaceable(&path, output, ours.contains(&name), job, result.index)?;
                if fetch_one(farm, job, result.index, output, &path).await? {
                    fetched.written.push(name.clone());
                } else {
                    fetched.skipped.push(name.clone());
                }
                Some(name)
            }
            _ => {
                fetched.missing += 1;
                None
            }
        };
        manifest.push(json!({
            "index": result.index,
            "state": result_state(result.state()),
            "prompt_index": result.prompt_index,
            "prompt": result.prompt,
            "seed": result.seed,
            "input_name": result.input_name,
            "settings": settings_json(result.settings.as_ref()),
            "sweep": result
                .sweep
                .iter()
                .map(|v| (v.key.clone(), json!(v.value)))
                .collect::<serde_json::Map<_, _>>(),
            "label": result.label,
            "file": file,
            "sha256": result.output.as_ref().map(|o| o.sha256.clone()),
            "output": artifact_json(result.output.as_ref()),
            "error": result.error,
        }));
    }
    let manifest = json!({"job_id": job, "coordinator": farm.url(), "results": manifest});
    let text = serde_json::to_string_pretty(&manifest).expect("the manifest is plain data");
    std::fs::write(&manifest_path, text + "\n")
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    report(job, dir, &fetched, json);
    Ok(())
}

fn report(job: &str, dir: &Path, fetched: &Fetched, json: bool) {
    if json {
        print_json(&json!({
            "job_id": job,
            "dir": dir.display().to_string(),
            "written": fetched.written,
            "skipped": fetched.skipped,
            "missing": fetched.missing,
            "manifest": "manifest.json",
        }));
        return;
    }
    for name in &fetched.written {
        println!("{}", dir.join(name).display());
    }
    eprintln!(
        "job {job}: {} fetched, {} already complete, {} not done; manifest in {}",
        fetched.written.len(),
        fetched.skipped.len(),
        fetched.missing,
        dir.join("manifest.json").display()
    );
}

/// The files an earlier fetch of `job` into this directory wrote, from its manifest (none when
/// there is no manifest). A manifest of another job, or a `manifest.json` that is not one,
/// refuses the fetch before anything is written: its pictures are someone else's work.
fn files_of_earlier_fetch(manifest: &Path, job: &str) -> anyhow::Result<HashSet<String>> {
    let text = match std::fs::read_to_string(manifest) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", manifest.display())),
    };
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    match value["job_id"].as_str() {
        Some(id) if id == job => Ok(value["results"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["file"].as_str().map(str::to_string))
            .collect()),
        Some(other) => anyhow::bail!(
            "{} is the manifest of job {other}; fetch job {job} into another directory (-o)",
            manifest.display()
        ),
        None => anyhow::bail!(
            "{} exists and is not a Tessera manifest; fetch into another directory (-o) or \
             move it",
            manifest.display()
        ),
    }
}

/// Refuses to replace a file at `path` that is neither this result already nor a file an
/// earlier fetch of this job wrote (`ours`): a picture of the same name may be the user's own.
fn check_replaceable(
    path: &Path,
    output: &v1::ArtifactRef,
    ours: bool,
    job: &str,
    index: u32,
) -> anyhow::Result<()> {
    match std::fs::read(path) {
        Ok(existing) if !ours && !ArtifactRef::from(output.clone()).holds(&existing) => {
            anyhow::bail!(
                "{} exists and is not result {index} of job {job}; move it, or fetch into \
                 another directory (-o)",
                path.display()
            )
        }
        _ => Ok(()),
    }
}

/// Downloads one result to `path` unless it is already there whole; returns whether it wrote.
async fn fetch_one(
    farm: &mut Farm,
    job: &str,
    index: u32,
    output: &v1::ArtifactRef,
    path: &Path,
) -> anyhow::Result<bool> {
    if let Ok(existing) = std::fs::read(path) {
        if ArtifactRef::from(output.clone()).holds(&existing) {
            return Ok(false);
        }
    }
    let part = part_path(path);
    let mut data = std::fs::read(&part).unwrap_or_default();
    if data.len() as u64 > output.size {
        data.clear();
    }
    let start = data.len();
    farm.fetch_result(job, index, &mut data)
        .await
        .with_context(|| format!("cannot download result {index} to {}", path.display()))?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&part)
        .with_context(|| format!("cannot write {}", part.display()))?;
    if start == 0 {
        file.set_len(0)?;
    }
    file.write_all(&data[start..])
        .with_context(|| format!("cannot write {}", part.display()))?;
    drop(file);
    if !ArtifactRef::from(output.clone()).holds(&data) {
        std::fs::remove_file(&part)?;
        anyhow::bail!(
            "result {index} of job {job} arrived as {} bytes with SHA-256 {} but the coordinator \
             stored {} bytes with SHA-256 {}; the partial file was removed, rerun the fetch",
            data.len(),
            sha256_hex(&data),
            output.size,
            output.sha256
        );
    }
    std::fs::rename(&part, path)
        .with_context(|| format!("cannot rename {} to its final name", part.display()))?;
    Ok(true)
}

/// `NAME.part`, where a download in progress lives.
pub fn part_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// A result's file name: `0003-seed7-a-lighthouse-in-a-storm.png` for a prompt (with its
/// sweep label when the job sweeps settings: `0003-seed7_lr0.1_cutn64-a-lighthouse.png`), or
/// `0003-holiday-photo.png` after the input's name for an upscale-only job.
pub fn file_name(result: &v1::ResultInfo) -> String {
    match (result.prompt_index, result.seed) {
        (Some(prompt), Some(seed)) => {
            let label = safe_label(&result.label);
            format!("{prompt:04}-seed{seed}{label}-{}.png", slug(&result.prompt))
        }
        _ => {
            let stem = Path::new(&result.input_name)
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{:04}-{}.png", result.index, slug(&stem))
        }
    }
}

/// `_` and the sweep label for a file name, keeping only ASCII letters, digits, `.`, `-` and
/// `_` (a coordinator's label already is; this holds whatever one sends), at most
/// [`LABEL_MAX`] characters; empty without one.
fn safe_label(label: &str) -> String {
    let safe: String = label
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(LABEL_MAX)
        .collect();
    if safe.is_empty() {
        safe
    } else {
        format!("_{safe}")
    }
}

/// Lower-case letters and digits of `text`, other runs as one '-', at most [`SLUG_MAX`]
/// characters; "result" when nothing is left.
pub fn slug(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars().flat_map(char::to_lowercase) {
        if c.is_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.chars().count() >= SLUG_MAX {
            break;
        }
    }
    let out = out.trim_end_matches('-');
    if out.is_empty() {
        "result".into()
    } else {
        out.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_short_and_plain() {
        assert_eq!(slug("A lighthouse, in a storm!"), "a-lighthouse-in-a-storm");
        assert_eq!(slug("  ***  "), "result");
        assert_eq!(slug(&"word ".repeat(20)).chars().count(), 39);
        assert_eq!(slug("Café:1.5|night"), "café-1-5-night");
    }

    #[test]
    fn names_follow_prompt_and_seed_or_the_input() {
        let prompt = v1::ResultInfo {
            index: 5,
            prompt_index: Some(2),
            seed: Some(7),
            prompt: "a red fox".into(),
            ..Default::default()
        };
        assert_eq!(file_name(&prompt), "0002-seed7-a-red-fox.png");
        let swept = v1::ResultInfo {
            label: "lr0.1_cutn64".into(),
            ..prompt.clone()
        };
        assert_eq!(file_name(&swept), "0002-seed7_lr0.1_cutn64-a-red-fox.png");
        let hostile = v1::ResultInfo {
            label: "../../etc/passwd\u{0}x".into(),
            ..prompt.clone()
        };
        assert_eq!(
            file_name(&hostile),
            "0002-seed7_....etcpasswdx-a-red-fox.png"
        );
        let picture = v1::ResultInfo {
            index: 1,
            input_name: "Holiday Photo.JPG".into(),
            ..Default::default()
        };
        assert_eq!(file_name(&picture), "0001-holiday-photo.png");
        assert_eq!(
            part_path(Path::new("d/x.png")),
            PathBuf::from("d/x.png.part")
        );
    }
}
