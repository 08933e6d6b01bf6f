//! One `tessera submit` is one trace: the CLI process and the coordinator process both export
//! their spans over OTLP to a receiver inside this test, and the coordinator's span for the
//! SubmitJob request is the child of the CLI's command span (W3C trace context in gRPC metadata).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{command, finish, SMALL};
use tempfile::TempDir;
use tessera_tests::otlp::{OtlpReceiver, ReceivedSpan};
use tessera_tests::Service;

const SUBMIT_SPAN: &str = "tessera.v1.Jobs/SubmitJob";

fn find<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Option<&'a ReceivedSpan> {
    spans
        .iter()
        .find(|s| s.service == service && s.name == name)
}

#[tokio::test]
async fn a_submit_is_one_trace_across_the_cli_and_the_coordinator() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let store = TempDir::new().unwrap();
    let mut coordinator = Command::new(tessera_tests::binary("tessera-coordinator").unwrap());
    coordinator
        .args(["--listen", "127.0.0.1:0", "--embedded", "--store"])
        .arg(store.path())
        .env("RUST_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env_remove("OTEL_SERVICE_NAME")
        // Export within 100 ms instead of the default 5 s, so the test does not wait.
        .env("OTEL_BSP_SCHEDULE_DELAY", "100");
    let service = Service::start(coordinator).unwrap();

    let prompts = store.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse in a storm\n").unwrap();
    let mut submit = command(&service.url(), &["--json", "submit"]);
    submit
        .arg(&prompts)
        .args(SMALL)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env_remove("OTEL_SERVICE_NAME");
    let run = finish(submit.spawn().unwrap()).await.ok();
    let job = run.json()["job_id"].as_str().unwrap().to_string();

    let spans = receiver
        .wait_until(Duration::from_secs(30), |spans| {
            find(spans, "tessera-cli", "tessera").is_some()
                && find(spans, "tessera-coordinator", SUBMIT_SPAN).is_some()
        })
        .await;
    let cli = find(&spans, "tessera-cli", "tessera")
        .unwrap_or_else(|| panic!("the CLI exported its command span: {spans:#?}\n{run:#?}"));
    let request = find(&spans, "tessera-coordinator", SUBMIT_SPAN).unwrap_or_else(|| {
        panic!(
            "the coordinator exported its request span: {spans:#?}\n{}",
            service.log()
        )
    });
    assert_eq!(cli.attribute("command"), Some("submit"));
    assert!(cli.parent_span_id.is_empty(), "the command is the root");
    assert_eq!(cli.trace_id.len(), 16);
    assert_eq!(request.trace_id, cli.trace_id, "one trace");
    assert_eq!(
        request.parent_span_id, cli.span_id,
        "the CLI's span is the parent"
    );
    assert_eq!(request.attribute("job"), Some(job.as_str()));
    assert_eq!(
        request.attribute("rpc.method"),
        Some("/tessera.v1.Jobs/SubmitJob")
    );
}
