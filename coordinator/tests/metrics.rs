//! The coordinator's `/metrics` over real HTTP after real jobs: the numbers match what happened
//! (tasks completed = tasks planned per kind, queues full then empty, one lease expiry when a
//! worker goes silent, one retry), on the embedded store and on Redis, where two coordinators
//! sharing one Redis report the same farm gauges.

mod common;

use std::time::{Duration, Instant};

use common::{coordinator, jobs, spec};
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_tests::jobs::{status, submit};
use tessera_tests::protocol::ProtocolWorker;
use tessera_tests::scrape::Scrape;
use tessera_tests::{RedisServer, Service};

/// Tasks per kind of `spec(2, true)`: two renders, four tiles each, one stitch each.
const PLANNED: [(&str, f64); 3] = [("generate", 2.0), ("upscale_tile", 8.0), ("stitch", 2.0)];

fn scrape(service: &Service) -> Scrape {
    let addr = service
        .metrics
        .expect("the coordinator prints `metrics on ADDR`");
    Scrape::get(addr).unwrap_or_else(|e| panic!("{e:#}\n{}", service.log()))
}

/// Scrapes until `done` holds, for at most 20 s.
async fn scrape_until(service: &Service, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let start = Instant::now();
    loop {
        let scrape = scrape(service);
        if done(&scrape) || start.elapsed() > Duration::from_secs(20) {
            return scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One job through a coordinator with `state` flags, checking the metrics at each step.
async fn metrics_follow_a_job(state: &[&str]) {
    let store = TempDir::new().unwrap();
    let service = coordinator(store.path(), state, &["--lease-ms", "1000"]);
    let mut client = jobs(&service).await;

    let before = scrape(&service);
    assert_eq!(before.sum("tessera_queue_depth", &[]), 0.0);
    assert_eq!(before.sum("tessera_tasks_planned_total", &[]), 0.0);

    let job = submit(&mut client, spec(2, true)).await;
    let queued = scrape(&service);
    assert_eq!(
        queued.value(
            "tessera_queue_depth",
            &[("priority", "0"), ("kind", "generate")]
        ),
        Some(2.0)
    );
    assert_eq!(
        queued.value("tessera_tasks", &[("state", "queued")]),
        Some(2.0)
    );
    // Tiles and stitches are created when their render is done; planned counts them already.
    assert_eq!(queued.sum("tessera_tasks", &[]), 2.0);
    for (kind, n) in PLANNED {
        assert_eq!(
            queued.value("tessera_tasks_planned_total", &[("kind", kind)]),
            Some(n),
            "{kind}"
        );
    }

    // A worker takes a task and goes silent: its lease expires and the task is queued again.
    let mut silent = ProtocolWorker::register(&service, "silent").await;
    silent.lease(0).await.expect("a render is queued");
    let leased = scrape(&service);
    for family in tessera_coordinator::metrics::FAMILIES {
        assert!(
            leased.families.iter().any(|f| f == family),
            "{family} is exposed"
        );
    }
    assert_eq!(
        leased.value("tessera_tasks", &[("state", "running")]),
        Some(1.0)
    );
    assert_eq!(
        leased.value("tessera_workers", &[("device", "cpu")]),
        Some(1.0)
    );
    // One scrape reads the store's gauges before the counters: it may catch the expiry
    // counted but the store read just before it, so wait for a scrape that has both.
    let expired = scrape_until(&service, |s| {
        s.value("tessera_lease_expiries_total", &[]) == Some(1.0)
            && s.value("tessera_tasks", &[("state", "queued")]) == Some(2.0)
    })
    .await;
    assert_eq!(
        expired.value("tessera_lease_expiries_total", &[]),
        Some(1.0),
        "{}",
        service.log()
    );
    assert_eq!(
        expired.value("tessera_tasks", &[("state", "queued")]),
        Some(2.0)
    );

    // Another fails one attempt (retried), then does everything.
    let mut worker = ProtocolWorker::register(&service, "worker").await;
    let task = worker.lease(0).await.expect("the render is queued again");
    let failed = worker
        .client
        .fail_task(v1::FailTaskRequest {
            worker_id: worker.id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            error: "out of memory".into(),
            retryable: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(failed.verdict(), v1::FailVerdict::Retrying);
    assert_eq!(worker.drain(0).await, 12);
    assert_eq!(
        status(&mut client, &job).await.state(),
        v1::JobState::Succeeded
    );

    let after = scrape(&service);
    for (kind, n) in PLANNED {
        let completed = after.value("tessera_tasks_completed_total", &[("kind", kind)]);
        let planned = after.value("tessera_tasks_planned_total", &[("kind", kind)]);
        assert_eq!(completed, planned, "{kind}");
        assert_eq!(completed, Some(n), "{kind}");
        assert_eq!(
            after.value("tessera_task_duration_seconds_count", &[("kind", kind)]),
            Some(n),
            "{kind}"
        );
    }
    assert_eq!(after.sum("tessera_queue_depth", &[]), 0.0);
    assert_eq!(
        after.value("tessera_tasks", &[("state", "done")]),
        Some(12.0)
    );
    assert_eq!(
        after.value("tessera_tasks", &[("state", "running")]),
        Some(0.0)
    );
    assert_eq!(after.value("tessera_task_retries_total", &[]), Some(1.0));
    assert_eq!(after.value("tessera_lease_expiries_total", &[]), Some(1.0));
    assert_eq!(
        after.value(
            "tessera_job_duration_seconds_count",
            &[("state", "succeeded")]
        ),
        Some(1.0)
    );
    let longest = after.value(
        "tessera_job_duration_seconds_sum",
        &[("state", "succeeded")],
    );
    assert!(longest.unwrap() >= 1.0, "the job outlived one lease");
}

#[tokio::test]
async fn embedded_metrics_match_what_happened() {
    metrics_follow_a_job(&["--embedded"]).await;
}

#[tokio::test]
async fn redis_metrics_match_what_happened() {
    let redis = RedisServer::start().unwrap();
    metrics_follow_a_job(&["--redis", &redis.url()]).await;
}

#[tokio::test]
async fn coordinators_sharing_redis_report_the_same_farm() {
    let redis = RedisServer::start().unwrap();
    let store = TempDir::new().unwrap();
    let state = ["--redis", &redis.url()];
    let one = coordinator(store.path(), &state, &[]);
    let two = coordinator(store.path(), &state, &[]);
    let mut client = jobs(&one).await;
    submit(&mut client, spec(3, false)).await;
    let mut worker = ProtocolWorker::register(&two, "w").await;
    worker.lease(0).await.expect("a render is queued");

    let (a, b) = (scrape(&one), scrape(&two));
    for labels in [
        [("state", "queued")],
        [("state", "running")],
        [("state", "done")],
    ] {
        assert_eq!(
            a.value("tessera_tasks", &labels),
            b.value("tessera_tasks", &labels)
        );
    }
    let depth = [("priority", "0"), ("kind", "generate")];
    assert_eq!(a.value("tessera_queue_depth", &depth), Some(2.0));
    assert_eq!(b.value("tessera_queue_depth", &depth), Some(2.0));
    assert_eq!(a.value("tessera_workers", &[("device", "cpu")]), Some(1.0));
    // Counters are the process's own: the submission was counted by the first only.
    assert_eq!(
        a.value("tessera_tasks_planned_total", &[("kind", "generate")]),
        Some(3.0)
    );
    assert_eq!(b.sum("tessera_tasks_planned_total", &[]), 0.0);
}
