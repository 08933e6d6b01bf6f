//! A live worker with nothing to do is shown alive (issue 27, item 3): it asks for work every
//! second of its long poll, and asking for work is a sign of life, so `tessera workers`, the
//! `tessera_workers` gauge and the "no connected worker" waiting reason all count it.

mod common;

use std::time::Duration;

use common::farm::{coordinator_on, models, Workers};
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::scrape::Scrape;
use tonic::transport::Channel;

/// Workers count as alive for three leases after they were last heard from.
const LEASE_MS: u64 = 1000;

#[tokio::test]
async fn an_idle_worker_is_alive_long_after_it_registered() {
    let store = TempDir::new().unwrap();
    let lease = LEASE_MS.to_string();
    let flags = ["--embedded", "--lease-ms", lease.as_str()];
    let service = coordinator_on("127.0.0.1:0", store.path(), &flags);
    let models = models();
    let _worker = Workers::start(1, models.path(), &service);
    let mut client = JobsClient::connect(service.url()).await.unwrap();
    // Wait until the coordinator has heard from the idle worker later than a silent worker
    // stays alive after registering: only its requests for work can have told it (there is no
    // task to lease or report). Without that, the wait never ends and the test fails.
    let heard_late = |w: &v1::WorkerInfo| w.last_seen_ms > w.registered_at_ms + 3 * LEASE_MS;
    let idle = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match listed(&mut client).await.pop() {
                Some(worker) if heard_late(&worker) => return worker,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the idle worker's requests for work keep it heard from");
    assert!(idle.alive, "{idle:?}");
    assert!(idle.current_task.is_empty(), "{idle:?}");
    let scrape = Scrape::get(service.metrics.unwrap()).unwrap();
    assert_eq!(
        scrape.value("tessera_workers", &[("device", "cpu")]),
        Some(1.0)
    );
}

async fn listed(client: &mut JobsClient<Channel>) -> Vec<v1::WorkerInfo> {
    let request = v1::ListWorkersRequest::default();
    client
        .list_workers(request)
        .await
        .unwrap()
        .into_inner()
        .workers
}
