//! `tessera workers` shows what a worker computes and what it leased ahead (issue 27, item 6):
//! a worker holding two tasks lists the first with the next beside it, the next takes the
//! first's place when it ends, and a worker leaving gives both back.

mod common;

use common::{coordinator, tessera, SMALL};
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_tests::protocol::ProtocolWorker;

#[tokio::test]
async fn a_worker_lists_its_task_and_the_one_it_leased_ahead() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse\n").unwrap();
    let submit = [
        &["submit", prompts.to_str().unwrap(), "--seeds", "3"][..],
        &SMALL,
    ]
    .concat();
    tessera(&url, &submit).await.ok();

    let mut worker = ProtocolWorker::register(&service, "w").await;
    let first = worker.lease(0).await.expect("three renders are queued");
    let ahead = worker.lease(0).await.expect("two renders are still queued");
    let listed = tessera(&url, &["workers"]).await.ok().stdout;
    let both = format!("{} (next {})", first.task_id, ahead.task_id);
    assert!(listed.contains(&both), "{listed}");
    let json = tessera(&url, &["--json", "workers"]).await.ok().json();
    let shown = &json["workers"][0];
    assert_eq!(shown["current_task"], first.task_id.as_str(), "{json}");
    assert_eq!(shown["leased_ahead"], ahead.task_id.as_str(), "{json}");

    assert_eq!(worker.finish(&first).await, v1::CompletionVerdict::Accepted);
    let listed = tessera(&url, &["--json", "workers"]).await.ok().json();
    let shown = &listed["workers"][0];
    assert_eq!(shown["current_task"], ahead.task_id.as_str(), "{listed}");
    assert_eq!(shown["leased_ahead"], "", "{listed}");

    // Leaving with a task and one leased ahead gives both back.
    let third = worker.lease(0).await.expect("one render is still queued");
    let request = v1::DeregisterRequest {
        worker_id: worker.id.clone(),
    };
    worker.client.deregister(request).await.unwrap();
    let mut other = ProtocolWorker::register(&service, "v").await;
    let mut again = vec![
        other.lease(0).await.unwrap().task_id,
        other.lease(0).await.unwrap().task_id,
    ];
    again.sort();
    let mut given_back = vec![ahead.task_id, third.task_id];
    given_back.sort();
    assert_eq!(again, given_back);
}
