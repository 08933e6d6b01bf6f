//! `tessera status` counts the attempts a job's tasks took and the retries faults cost it
//! (issue 27, item 7): a render whose first attempt fails and whose second succeeds shows two
//! attempts, one retried, in the table and in JSON.

mod common;

use common::{coordinator, tessera, SMALL};
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_tests::protocol::ProtocolWorker;

#[tokio::test]
async fn status_counts_the_attempts_and_the_retries_of_a_job() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse\n").unwrap();
    let submit = [&["submit", prompts.to_str().unwrap()][..], &SMALL].concat();
    let job = tessera(&url, &submit).await.ok().stdout.trim().to_string();

    let mut worker = ProtocolWorker::register(&service, "w").await;
    let first = worker.lease(0).await.expect("the render is queued");
    let failure = v1::FailTaskRequest {
        worker_id: worker.id.clone(),
        task_id: first.task_id.clone(),
        attempt: first.attempt,
        error: "out of memory".into(),
        retryable: true,
        corrupt_input: String::new(),
    };
    worker.client.fail_task(failure).await.unwrap();
    let second = worker.lease(0).await.expect("the render is queued again");
    assert_eq!(
        worker.finish(&second).await,
        v1::CompletionVerdict::Accepted
    );

    let table = tessera(&url, &["status", &job]).await.ok();
    assert!(
        table.stdout.contains("attempts  2 leased, 1 retried"),
        "{}",
        table.stdout
    );
    let json = tessera(&url, &["--json", "status", &job]).await.ok().json();
    assert_eq!(
        (json["attempts"].as_u64(), json["retries"].as_u64()),
        (Some(2), Some(1))
    );
}
