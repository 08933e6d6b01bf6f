//! The Kubernetes manifests of `deploy/` as a cluster would receive them: each overlay built
//! by `kubectl kustomize`, and the Prometheus configuration from the built ConfigMap adapted to
//! scrape processes on loopback instead of pods (only where the targets come from), so the
//! tests run the deployed scrape and relabelling rules, queries and alerts against a real
//! Prometheus.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tempfile::TempDir;

use crate::system_tool;

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every overlay under `deploy/overlays`, by name.
pub fn overlays() -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(deploy_dir().join("overlays"))?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<anyhow::Result<_>>()?;
    names.sort();
    Ok(names)
}

/// The objects `kubectl kustomize` builds for overlay `name`. The build runs on a copy of
/// `deploy/` in which every git-ignored `*.env` an overlay reads is made from its
/// `*.env.example`, as a user is told to make it.
pub fn kustomize(name: &str) -> anyhow::Result<Vec<Value>> {
    let kubectl = system_tool("kubectl", "kubectl")?;
    let copy = TempDir::new()?;
    copy_dir(&deploy_dir(), copy.path())?;
    let overlay = copy.path().join("overlays").join(name);
    for entry in std::fs::read_dir(&overlay)? {
        let path = entry?.path();
        if let Some(env) = path.to_str().and_then(|p| p.strip_suffix(".example")) {
            std::fs::copy(&path, env)?;
        }
    }
    let output = Command::new(kubectl)
        .arg("kustomize")
        .arg(&overlay)
        .output()
        .context("cannot run kubectl kustomize")?;
    if !output.status.success() {
        bail!(
            "kubectl kustomize overlays/{name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    yaml_documents(&String::from_utf8(output.stdout)?)
}

/// Every YAML document in `text`, as JSON values.
pub fn yaml_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Ok(Value::deserialize(doc)?))
        .filter(|v| !matches!(v, Ok(Value::Null)))
        .collect()
}

/// The object of `kind` called `name` among `objects`.
pub fn object<'a>(objects: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} among the objects"))
}

/// The text under `key` of ConfigMap `name`.
pub fn config_map_entry<'a>(
    objects: &'a [Value],
    name: &str,
    key: &str,
) -> anyhow::Result<&'a str> {
    object(objects, "ConfigMap", name)?["data"][key]
        .as_str()
        .with_context(|| format!("ConfigMap {name} has no {key}"))
}

/// A process standing for one pod of a Deployment: the Deployment, and where the process
/// serves what the pod would serve on its annotated metrics port.
pub struct PodStandIn<'a> {
    /// The Deployment whose pod template it stands for.
    pub deployment: &'a Value,
    /// Its pod name (label `pod` after relabelling).
    pub pod: String,
    /// Where it serves `/metrics`.
    pub metrics: std::net::SocketAddr,
}

/// The Prometheus configuration `config` (the deployed `prometheus.yml`) with each scrape
/// job's Kubernetes pod discovery replaced by the targets it would discover for `pods`: each
/// pod's address, and its labels and annotations as the `__meta_kubernetes_pod_*` labels that
/// Kubernetes discovery sets, the metrics port annotation pointing at the stand-in's port. The
/// relabelling rules, intervals and everything else stay as deployed; rule files are read
/// beside the configuration (where their ConfigMap is mounted in the cluster).
pub fn local_scrape_config(config: &str, pods: &[PodStandIn]) -> anyhow::Result<Value> {
    let mut config: Value = yaml_documents(config)?
        .pop()
        .context("the Prometheus configuration is empty")?;
    let targets: Vec<Value> = pods.iter().map(discovered).collect();
    for job in config["scrape_configs"]
        .as_array_mut()
        .context("the configuration has scrape_configs")?
    {
        let job = job.as_object_mut().context("a scrape config is a map")?;
        if job.remove("kubernetes_sd_configs").is_some() {
            job.insert("static_configs".into(), Value::Array(targets.clone()));
        }
    }
    if let Some(files) = config["rule_files"].as_array_mut() {
        for file in files {
            let name = Path::new(file.as_str().context("a rule file is a path")?)
                .file_name()
                .context("a rule file has a name")?;
            *file = json!(name.to_string_lossy());
        }
    }
    Ok(config)
}

/// The target Kubernetes pod discovery would give for `pod`.
fn discovered(pod: &PodStandIn) -> Value {
    let template = &pod.deployment["spec"]["template"]["metadata"];
    let mut labels = Map::new();
    for (kind, map) in [
        ("label", &template["labels"]),
        ("annotation", &template["annotations"]),
    ] {
        for (name, value) in map.as_object().into_iter().flatten() {
            let name = format!("__meta_kubernetes_pod_{kind}_{}", sanitized(name));
            labels.insert(name, value.clone());
        }
    }
    labels.insert(
        "__meta_kubernetes_pod_annotation_prometheus_io_port".into(),
        json!(pod.metrics.port().to_string()),
    );
    labels.insert("__meta_kubernetes_pod_name".into(), json!(pod.pod));
    json!({"targets": [pod.metrics.ip().to_string()], "labels": labels})
}

/// A Kubernetes label or annotation name as Prometheus discovery spells it in a label name.
fn sanitized(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
