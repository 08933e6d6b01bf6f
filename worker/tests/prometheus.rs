//! The deployed monitoring, evaluated for real: a farm (Redis, a coordinator, two
//! `tessera-worker` processes) is scraped by Debian's `prometheus` with the configuration of
//! the gpu-cluster overlay as kustomize builds it (pod discovery replaced by the targets it
//! would find: the processes on loopback, with their pods' labels and annotations), and, while
//! the farm works, every query of the Grafana dashboard, the KEDA trigger's query and each
//! alert rule's operands are evaluated through Prometheus' HTTP API: each must return series,
//! with the labels its panel's legend names, and every rule must evaluate without error.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::farm::{coordinator_command, job, models, watch, Workers};
use serde_json::Value;
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::deploy::{
    config_map_entry, deploy_dir, kustomize, local_scrape_config, object, yaml_documents,
    PodStandIn,
};
use tessera_tests::jobs::{status, submit};
use tessera_tests::prometheus::Prometheus;
use tessera_tests::{RedisServer, Service};

/// How long Prometheus may take to scrape, and to have two samples for every `rate`, at the
/// deployed 15 s scrape interval (and 30 s rule evaluation).
const SCRAPE_BOUND: Duration = Duration::from_secs(150);

/// A query of the farm's monitoring, where it comes from, and the labels its legend shows.
struct Query {
    origin: String,
    expr: String,
    labels: Vec<String>,
}

/// Every panel target of the dashboard, with the `{{label}}`s of its legend.
fn dashboard_queries() -> Vec<Query> {
    let text = std::fs::read_to_string(deploy_dir().join("base/grafana/tessera.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            queries.push(Query {
                origin: format!("panel '{}'", panel["title"].as_str().unwrap()),
                expr: target["expr"].as_str().unwrap().to_string(),
                labels: legend
                    .split("{{")
                    .skip(1)
                    .filter_map(|s| s.split_once("}}").map(|(l, _)| l.trim().to_string()))
                    .collect(),
            });
        }
    }
    assert!(
        queries.len() >= 15,
        "the dashboard's queries: {}",
        queries.len()
    );
    queries
}

/// Each alert's expression with its threshold comparisons taken out (`x > 0.05` becomes `x`),
/// so it returns the series the alert compares, which a working farm has, with the labels it
/// groups by (`max by (pod) (...)`) for the alert's labels.
fn alert_operands(rules: &Value) -> Vec<Query> {
    let comparison = regex::Regex::new(r"\s*(==|!=|>=|<=|>|<)\s*[0-9][0-9.eE+]*").unwrap();
    let grouping = regex::Regex::new(r"^\w+ by \(([^)]*)\)").unwrap();
    let mut queries = Vec::new();
    for group in rules["groups"].as_array().unwrap() {
        for rule in group["rules"].as_array().unwrap() {
            let expr = rule["expr"].as_str().unwrap();
            let operands = comparison.replace_all(expr, "").into_owned();
            assert_ne!(operands, expr, "{expr} compares with a threshold");
            let labels = grouping
                .captures(&operands)
                .map(|c| c[1].split(',').map(|l| l.trim().to_string()).collect())
                .unwrap_or_default();
            queries.push(Query {
                origin: format!("alert {}", rule["alert"].as_str().unwrap()),
                expr: operands,
                labels,
            });
        }
    }
    queries
}

/// Evaluates `query` until it returns series (the first scrapes, and a `rate`'s second
/// sample, come on Prometheus' clock), then checks each has the labels its legend shows.
fn returns_series(prometheus: &Prometheus, query: &Query) {
    let mut series = Vec::new();
    prometheus
        .until(
            &format!("{} returning series for `{}`", query.origin, query.expr),
            SCRAPE_BOUND,
            |p| {
                series = p.query(&query.expr)?;
                Ok(!series.is_empty())
            },
        )
        .unwrap();
    for one in &series {
        for label in &query.labels {
            assert!(
                one.labels.contains_key(label),
                "{}: `{}` returns {:?}, without the label {label} its legend shows",
                query.origin,
                query.expr,
                one.labels
            );
        }
    }
}

/// A render job that keeps the workers busy for the rest of the test: more renders than
/// workers, each of the most iterations the coordinator allows.
fn long_job() -> v1::JobSpec {
    let mut spec = job(3);
    let settings = spec.settings.as_mut().unwrap();
    settings.iterations = Some(10_000);
    settings.upscale_model = Some("none".into());
    spec
}

/// A job for a CLIP model the coordinator offers and no worker has, queued anyway: its two
/// renders stay queued, so the queue never drains while the test looks at it.
fn unservable_job() -> v1::JobSpec {
    let mut spec = job(1);
    spec.settings.as_mut().unwrap().clip_model = Some(ABSENT_MODEL.into());
    spec.queue_anyway = true;
    spec
}

/// The CLIP model of [`unservable_job`].
const ABSENT_MODEL: &str = "absent";

#[tokio::test]
async fn prometheus_scrapes_the_farm_and_every_dashboard_keda_and_alert_query_returns_series() {
    let models = models();
    let redis = RedisServer::start().unwrap();
    let store = TempDir::new().unwrap();
    let extra = ["--redis", &redis.url(), "--clip-models", ABSENT_MODEL];
    let command = coordinator_command("127.0.0.1:0", store.path().as_os_str(), &extra);
    let coordinator = Service::start(command).unwrap();
    let workers = Workers::start(2, models.path(), &coordinator);

    // Prometheus with the deployed configuration and rules, the farm's processes standing for
    // the pods of the coordinator and worker Deployments.
    let objects = kustomize("gpu-cluster").unwrap();
    let coordinators = object(&objects, "Deployment", "tessera-coordinator").unwrap();
    let worker_pods = object(&objects, "Deployment", "tessera-worker").unwrap();
    let mut pods = vec![PodStandIn {
        deployment: coordinators,
        pod: "tessera-coordinator-0".into(),
        metrics: coordinator.metrics.unwrap(),
    }];
    for (i, metrics) in workers.metrics.iter().enumerate() {
        pods.push(PodStandIn {
            deployment: worker_pods,
            pod: format!("tessera-worker-{i}"),
            metrics: *metrics,
        });
    }
    let config = config_map_entry(&objects, "prometheus", "prometheus.yml").unwrap();
    let rules = config_map_entry(&objects, "prometheus", "rules.yml").unwrap();
    let local = local_scrape_config(config, &pods).unwrap();
    let prometheus = Prometheus::start(&local.to_string(), rules).unwrap();

    // Every pod is scraped, labelled as the panels and alerts expect (relabelling: pod, app).
    prometheus
        .until("every target up", SCRAPE_BOUND, |p| {
            let targets = p.targets()?;
            Ok(targets.len() == pods.len() && targets.iter().all(|t| t["health"] == "up"))
        })
        .unwrap();
    let scraped: BTreeSet<(String, String)> = prometheus
        .targets()
        .unwrap()
        .iter()
        .map(|t| {
            let label = |name: &str| t["labels"][name].as_str().unwrap_or_default().to_string();
            (label("pod"), label("app"))
        })
        .collect();
    let expected: BTreeSet<(String, String)> = pods
        .iter()
        .map(|p| {
            let app =
                &p.deployment["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"];
            (p.pod.clone(), app.as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(scraped, expected);

    // A job of every kind of task runs to its end (its durations, completions and the
    // workers' iterations and megapixels are then in the histograms and counters), then a
    // longer one keeps both workers rendering with more renders queued.
    let mut client = JobsClient::connect(coordinator.url()).await.unwrap();
    let mut first = job(1);
    first.seeds = vec![1];
    let first = submit(&mut client, first).await;
    let events = watch(&mut client, &first).await;
    assert!(
        matches!(events.last(), Some(Event::JobDone(d)) if d.state() == v1::JobState::Succeeded)
    );
    let busy = submit(&mut client, long_job()).await;
    submit(&mut client, unservable_job()).await;

    // KEDA's query gives one number: at least the two renders nobody can take.
    let keda = object(&objects, "ScaledObject", "tessera-worker").unwrap();
    let keda_query = keda["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .unwrap();
    prometheus
        .until("KEDA's query counting the queued work", SCRAPE_BOUND, |p| {
            let series = p.query(keda_query)?;
            assert_eq!(series.len(), 1, "KEDA takes one element: {series:?}");
            Ok(series[0].value >= 2.0)
        })
        .unwrap();

    let mut queries = dashboard_queries();
    queries.extend(alert_operands(&yaml_documents(rules).unwrap()[0]));
    for query in &queries {
        returns_series(&prometheus, query);
    }

    // Prometheus evaluates every rule without error (and, for a working farm, none fires).
    prometheus
        .until("every rule evaluated", SCRAPE_BOUND, |p| {
            let groups = p.rules()?;
            let rules: Vec<&Value> = groups
                .iter()
                .flat_map(|g| g["rules"].as_array().into_iter().flatten())
                .collect();
            for rule in &rules {
                assert_ne!(rule["health"], "err", "{rule}");
            }
            Ok(!rules.is_empty() && rules.iter().all(|r| r["health"] == "ok"))
        })
        .unwrap();
    let firing: Vec<Value> = prometheus
        .rules()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["state"] == "firing")
        .collect();
    assert!(firing.is_empty(), "{firing:?}");
    assert_eq!(
        status(&mut client, &busy).await.state(),
        v1::JobState::Running
    );
}
