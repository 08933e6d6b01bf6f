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
    while listed(&mut client).await.is_empty() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle for twice the time a silent worker stays alive, with no task to lease or report.
    tokio::time::sleep(Duration::from_millis(6 * LEASE_MS)).await;

    let workers = listed(&mut client).await;
    assert!(workers.iter().all(|w| w.alive), "{workers:?}");
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
