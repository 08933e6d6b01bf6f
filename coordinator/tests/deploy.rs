//! The deployment files agree with the binaries: every YAML under `deploy/` parses (and the
//! YAML embedded in its ConfigMaps), every flag and `TESSERA_*`/`OTEL_*` variable given to the
//! coordinator is one `tessera-coordinator --help` lists, the ports and probes match its
//! defaults, and every metric the dashboard, the autoscaler and the alert rules query is one a
//! running coordinator exposes or one of the workers' (`tessera_telemetry::WORKER_METRICS`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{coordinator, jobs, spec};
use serde::Deserialize;
use serde_json::Value;
use tempfile::TempDir;
use tessera_tests::jobs::submit;
use tessera_tests::protocol::ProtocolWorker;
use tessera_tests::scrape::Scrape;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, extensions, out);
        } else if path
            .extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
}

/// Every YAML document in `text`, as JSON values.
fn yaml_documents(text: &str, origin: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("{origin} does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every Kubernetes object in deploy/, with the YAML files its ConfigMaps embed parsed too.
struct Manifests {
    /// Each object with the file it is in.
    objects: Vec<(PathBuf, Value)>,
    /// (ConfigMap name, key, parsed value) of each embedded `.yml`/`.yaml`.
    embedded: Vec<(String, String, Value)>,
}

impl Manifests {
    fn load() -> Manifests {
        let mut paths = Vec::new();
        files(&deploy_dir(), &["yaml", "yml"], &mut paths);
        assert!(paths.len() >= 10, "deploy/ has its manifests: {paths:?}");
        let mut objects = Vec::new();
        let mut embedded = Vec::new();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap();
            for object in yaml_documents(&text, &path.display().to_string()) {
                if object["kind"] == "ConfigMap" {
                    let name = object["metadata"]["name"].as_str().unwrap().to_string();
                    let data = object["data"].as_object().cloned().unwrap_or_default();
                    for (key, value) in data {
                        if key.ends_with(".yml") || key.ends_with(".yaml") {
                            let origin = format!("{}: {name}/{key}", path.display());
                            let mut docs = yaml_documents(value.as_str().unwrap(), &origin);
                            assert_eq!(docs.len(), 1, "{origin}");
                            embedded.push((name.clone(), key, docs.remove(0)));
                        }
                    }
                }
                objects.push((path.clone(), object));
            }
        }
        Manifests { objects, embedded }
    }

    /// The base's object (overlays patch it).
    fn object(&self, kind: &str, name: &str) -> &Value {
        let base = deploy_dir().join("base");
        self.objects
            .iter()
            .find(|(path, o)| {
                path.starts_with(&base) && o["kind"] == kind && o["metadata"]["name"] == name
            })
            .map(|(_, o)| o)
            .unwrap_or_else(|| panic!("deploy/base has a {kind} {name}"))
    }

    fn embedded(&self, config_map: &str, key: &str) -> &Value {
        self.embedded
            .iter()
            .find(|(n, k, _)| n == config_map && k == key)
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("ConfigMap {config_map} embeds {key}"))
    }

    /// The containers called `name` in every Deployment, the overlays' patches included.
    fn containers(&self, name: &str) -> Vec<&Value> {
        self.objects
            .iter()
            .map(|(_, o)| o)
            .filter(|o| o["kind"] == "Deployment")
            .flat_map(|o| {
                o["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
            })
            .filter(|c| c["name"] == name)
            .collect()
    }
}

fn help() -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_tessera-coordinator"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The default of `--flag` in the help text, e.g. `127.0.0.1:7470` for `--listen`.
fn default_of(help: &str, flag: &str) -> String {
    let start = help
        .find(&format!("{flag} <"))
        .unwrap_or_else(|| panic!("{flag} in --help"));
    let rest = &help[start..];
    let default = rest.find("[default: ").unwrap() + "[default: ".len();
    let end = rest[default..].find(']').unwrap();
    rest[default..default + end].to_string()
}

fn port_of(address: &str) -> u64 {
    address.rsplit(':').next().unwrap().parse().unwrap()
}

fn env_value<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

fn named_port(container: &Value, name: &str) -> u64 {
    container["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("container port {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

#[test]
fn coordinator_flags_env_ports_and_probes_match_the_binary() {
    let help = help();
    let manifests = Manifests::load();
    let coordinators = manifests.containers("coordinator");
    assert!(!coordinators.is_empty());
    let known = |name: &str| help.contains(name);

    let mut variables: BTreeSet<String> = BTreeSet::new();
    for container in &coordinators {
        for arg in container["args"].as_array().into_iter().flatten() {
            let arg = arg.as_str().unwrap();
            if arg.starts_with("--") {
                let flag = arg.split('=').next().unwrap();
                assert!(known(&format!("{flag} ")), "{flag} is a coordinator flag");
            }
        }
        for var in container["env"].as_array().into_iter().flatten() {
            variables.insert(var["name"].as_str().unwrap().to_string());
        }
    }
    // The shared settings the coordinators read from the `tessera` ConfigMap.
    let config = manifests.object("ConfigMap", "tessera");
    variables.extend(config["data"].as_object().unwrap().keys().cloned());
    let dockerfile =
        std::fs::read_to_string(deploy_dir().join("docker/coordinator.Dockerfile")).unwrap();
    variables.extend(
        dockerfile
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("TESSERA_"))
            .map(String::from),
    );
    for var in variables
        .iter()
        .filter(|v| v.starts_with("TESSERA_") || v.starts_with("OTEL_"))
    {
        assert!(known(var), "{var} is read by the coordinator (--help)");
    }

    let grpc_default = port_of(&default_of(&help, "--listen"));
    let metrics_default = port_of(&default_of(&help, "--metrics-listen"));
    // The base's containers; the overlays' patches change neither ports nor probes.
    for container in coordinators.iter().filter(|c| c["image"].is_string()) {
        let grpc = env_value(container, "TESSERA_LISTEN").map_or(grpc_default, port_of);
        let metrics =
            env_value(container, "TESSERA_METRICS_LISTEN").map_or(metrics_default, port_of);
        assert_eq!(grpc, grpc_default, "the farm uses the default gRPC port");
        assert_eq!(metrics, metrics_default, "and the default metrics port");
        assert_eq!(named_port(container, "grpc"), grpc);
        assert_eq!(named_port(container, "metrics"), metrics);
        for probe in ["readinessProbe", "livenessProbe"] {
            let get = &container[probe]["httpGet"];
            assert_eq!(
                (get["path"].as_str(), get["port"].as_str()),
                (Some("/healthz"), Some("metrics")),
                "{probe} reads /healthz on the metrics port (plain HTTP, whatever the gRPC port's TLS)"
            );
        }
    }
    // Where the gRPC port has TLS, it has tokens too, from mounted secrets.
    let secured: Vec<_> = coordinators
        .iter()
        .filter(|c| env_value(c, "TESSERA_TLS_CERT").is_some())
        .collect();
    assert!(!secured.is_empty(), "an overlay serves gRPC over TLS");
    for container in secured {
        for var in ["TESSERA_TLS_KEY", "TESSERA_AUTH_FILE"] {
            let path = env_value(container, var).unwrap_or_else(|| panic!("TLS comes with {var}"));
            assert!(mounted(container, path), "{path} is mounted");
        }
    }
    let deployment = manifests.object("Deployment", "tessera-coordinator");
    let annotations = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(metrics_default.to_string().as_str())
    );
    assert_eq!(annotations["prometheus.io/path"], "/metrics");

    // Workers reach the coordinators through their Service, on the gRPC port.
    let service = manifests.object("Service", "tessera-coordinator");
    let service_port = service["spec"]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "grpc")
        .unwrap()["port"]
        .as_u64()
        .unwrap();
    assert_eq!(service_port, grpc_default);
    let workers = manifests.containers("worker");
    assert!(!workers.is_empty());
    for worker in workers {
        let args: Vec<&str> = worker["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let url = args[args.iter().position(|a| *a == "--coordinator").unwrap() + 1];
        let (scheme, address) = url.split_once("://").unwrap();
        assert_eq!(address, format!("tessera-coordinator:{service_port}"));
        if scheme == "https" {
            for var in ["TESSERA_TLS_CA", "TESSERA_TOKEN_FILE"] {
                let path = env_value(worker, var)
                    .unwrap_or_else(|| panic!("a worker of a TLS farm is given {var}"));
                assert!(mounted(worker, path), "{path} is mounted");
            }
        } else {
            assert_eq!(scheme, "http");
        }
        for flag in ["--device", "--models"] {
            assert!(args.contains(&flag), "workers are given {flag}");
        }
        if worker["image"].is_string() {
            assert_eq!(
                env_value(worker, "TESSERA_METRICS_LISTEN").map(port_of),
                Some(named_port(worker, "metrics"))
            );
        }
    }
}

/// Whether `path` lies under one of the container's volume mounts.
fn mounted(container: &Value, path: &str) -> bool {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["mountPath"].as_str())
        .any(|dir| path.starts_with(&format!("{dir}/")))
}

/// Every `tessera_*` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("tessera_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// Every string inside a JSON value.
fn strings(value: &Value, out: &mut String) {
    match value {
        Value::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
        Value::Object(map) => map.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn every_metric_queried_is_one_the_binaries_expose() {
    // A coordinator with a worker and queued work, so every family has a series.
    let store = TempDir::new().unwrap();
    let service = coordinator(store.path(), &["--embedded"], &[]);
    ProtocolWorker::register(&service, "w").await;
    submit(&mut jobs(&service).await, spec(2, true)).await;
    let exposed = Scrape::get(service.metrics.unwrap()).unwrap().families;
    for family in tessera_coordinator::metrics::FAMILIES {
        assert!(exposed.iter().any(|e| e == family), "{family} is exposed");
    }
    let known = |name: &str| {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        [name, family].iter().any(|n| {
            exposed.iter().any(|e| e == n) || tessera_telemetry::WORKER_METRICS.contains(n)
        })
    };

    let manifests = Manifests::load();
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(deploy_dir().join("base/grafana/tessera.json")).unwrap(),
    )
    .unwrap();
    let mut queries = String::new();
    strings(&dashboard, &mut queries);
    let dashboard_names = metric_names(&queries);
    let keda = &manifests.object("ScaledObject", "tessera-worker")["spec"]["triggers"];
    let mut keda_queries = String::new();
    strings(keda, &mut keda_queries);
    let mut rules = String::new();
    strings(manifests.embedded("prometheus", "rules.yml"), &mut rules);

    for (origin, names) in [
        ("the dashboard", &dashboard_names),
        ("the KEDA trigger", &metric_names(&keda_queries)),
        ("the alert rules", &metric_names(&rules)),
    ] {
        assert!(!names.is_empty(), "{origin} queries Tessera metrics");
        for name in names {
            assert!(
                known(name),
                "{origin} uses {name}, which nothing exposes: {exposed:?}"
            );
        }
    }
    assert!(metric_names(&keda_queries).contains("tessera_queue_depth"));
    // The dashboard shows every family there is.
    for family in tessera_coordinator::metrics::FAMILIES
        .iter()
        .chain(tessera_telemetry::WORKER_METRICS)
    {
        assert!(
            dashboard_names
                .iter()
                .any(|n| n == family || n.starts_with(&format!("{family}_"))),
            "the dashboard shows {family}"
        );
    }
}
