//! A real worker rendering while the farm's Redis is killed for three leases and restarted
//! (issue 27, item 1): the worker's heartbeats and report are retried through the outage, no
//! lease expires because of it, and the render finishes in its first attempt.

mod common;

use std::time::Duration;

use common::farm::{coordinator_on, event_until, job, models, watch, Workers};
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::jobs::submit;
use tessera_tests::scrape::{http_get, Scrape};
use tessera_tests::RedisServer;

const LEASE_MS: u64 = 1500;

#[tokio::test]
async fn a_render_goes_on_through_a_redis_outage_in_its_first_attempt() {
    let mut redis = RedisServer::start_durable().unwrap();
    let store = TempDir::new().unwrap();
    let (redis_url, lease) = (redis.url(), LEASE_MS.to_string());
    let flags = ["--redis", redis_url.as_str(), "--lease-ms", lease.as_str()];
    let service = coordinator_on("127.0.0.1:0", store.path(), &flags);
    let models = models();
    let _worker = Workers::start(1, models.path(), &service);
    let mut client = JobsClient::connect(service.url()).await.unwrap();
    let mut spec = job(1);
    spec.seeds = vec![3];
    let settings = spec.settings.as_mut().unwrap();
    settings.iterations = Some(300);
    settings.checkpoint_every = Some(50);
    settings.upscale_model = Some("none".into());
    let job_id = submit(&mut client, spec).await;
    event_until(
        &mut client,
        &job_id,
        |e| matches!(e, v1::job_event::Event::Progress(p) if p.iteration >= 2),
    )
    .await;

    // Redis away for three leases: every heartbeat of that time fails.
    redis.kill();
    tokio::time::sleep(Duration::from_millis(3 * LEASE_MS)).await;
    redis.restart().unwrap();
    // Once the coordinator's health check has reached Redis again, so has its connection.
    let metrics = service.metrics.unwrap();
    while !http_get(metrics, "/healthz")
        .unwrap()
        .0
        .starts_with("HTTP/1.1 200")
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let events = watch(&mut client, &job_id).await;
    let done = matches!(events.last(), Some(v1::job_event::Event::JobDone(d)) if d.state() == v1::JobState::Succeeded);
    assert!(done, "{events:?}");
    let later_attempts: Vec<_> = events
        .iter()
        .filter(|e| match e {
            v1::job_event::Event::Progress(p) => p.attempt != 1,
            v1::job_event::Event::TaskRequeued(_) => true,
            _ => false,
        })
        .collect();
    assert!(
        later_attempts.is_empty(),
        "the outage cost the lease: {later_attempts:?}"
    );
    let scrape = Scrape::get(metrics).unwrap();
    assert_eq!(scrape.value("tessera_lease_expiries_total", &[]), Some(0.0));
}
