//! A Redis outage longer than the lease under a running task (issue 27, item 1): the worker's
//! heartbeats fail while Redis is away and are retried; once it is back the lease is still the
//! worker's, its output is accepted, and the task is done in its first attempt with no expiry.

mod common;

use std::time::Duration;

use common::{coordinator, jobs, spec};
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_tests::jobs::submit;
use tessera_tests::protocol::ProtocolWorker;
use tessera_tests::scrape::Scrape;
use tessera_tests::RedisServer;

const LEASE_MS: u64 = 1500;

/// One heartbeat of `task`, as the worker's retrying link sends it: `Err` while the coordinator
/// cannot store it.
async fn heartbeat(
    worker: &mut ProtocolWorker,
    task: &v1::Task,
) -> Result<v1::HeartbeatVerdict, tonic::Status> {
    let request = v1::HeartbeatRequest {
        worker_id: worker.id.clone(),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        iteration: 1,
        iterations: 20,
        ..v1::HeartbeatRequest::default()
    };
    Ok(worker
        .client
        .heartbeat(request)
        .await?
        .into_inner()
        .verdict())
}

#[tokio::test]
async fn a_redis_outage_longer_than_the_lease_expires_no_lease() {
    let mut redis = RedisServer::start_durable().unwrap();
    let store = TempDir::new().unwrap();
    let lease = LEASE_MS.to_string();
    let service = coordinator(
        store.path(),
        &["--redis", &redis.url()],
        &["--lease-ms", &lease],
    );
    let job = submit(&mut jobs(&service).await, spec(1, false)).await;
    let mut worker = ProtocolWorker::register(&service, "w").await;
    let task = worker.lease(0).await.expect("the render is queued");
    assert_eq!(
        heartbeat(&mut worker, &task).await.unwrap(),
        v1::HeartbeatVerdict::Continue
    );

    // The outage: Redis gone for three leases, the worker heartbeating as often as it would.
    redis.kill();
    let outage = tokio::time::Instant::now();
    let mut failed = 0;
    while outage.elapsed() < Duration::from_millis(3 * LEASE_MS) {
        if heartbeat(&mut worker, &task).await.is_err() {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(LEASE_MS / 3)).await;
    }
    assert!(failed > 0, "heartbeats fail while Redis is down");

    redis.restart().unwrap();
    let verdict = loop {
        if let Ok(verdict) = heartbeat(&mut worker, &task).await {
            break verdict;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        verdict,
        v1::HeartbeatVerdict::Continue,
        "the lease survived the outage"
    );
    assert_eq!(worker.finish(&task).await, v1::CompletionVerdict::Accepted);

    let mut client = jobs(&service).await;
    let info = tessera_tests::jobs::task(&mut client, &task.task_id).await;
    assert_eq!((info.attempt, info.expiries), (1, 0), "{info:?}");
    let scrape = Scrape::get(service.metrics.unwrap()).unwrap();
    assert_eq!(scrape.value("tessera_lease_expiries_total", &[]), Some(0.0));
    let status = tessera_tests::jobs::status(&mut client, &job).await;
    assert_eq!(status.state(), v1::JobState::Succeeded, "{status:?}");
}
