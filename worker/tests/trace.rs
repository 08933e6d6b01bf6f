//! One job is one trace across the three processes: `tessera submit --watch`, the coordinator
//! and a worker all export their spans over OTLP to a receiver inside this test. The worker's
//! span of every task is a child of the coordinator's SubmitJob span (whose parent is the CLI's
//! command span); the task's stages are children of the task; and the coordinator's handling of
//! the worker's reports continues the worker's spans.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;
use tessera_tests::otlp::{OtlpReceiver, ReceivedSpan};
use tessera_tests::{binary, Service};

const SUBMIT: &str = "tessera.v1.Jobs/SubmitJob";
const COMPLETE: &str = "tessera.v1.Workers/CompleteTask";

/// Points a process at the receiver, exporting every 100 ms instead of every 5 s.
fn traced(command: &mut Command, receiver: &OtlpReceiver) {
    command
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env("RUST_LOG", "warn");
}

fn named<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

fn by_id<'a>(spans: &'a [ReceivedSpan], id: &[u8]) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|s| s.span_id == id)
}

/// The names of `parent`'s children.
fn children(spans: &[ReceivedSpan], parent: &ReceivedSpan) -> Vec<String> {
    let mut names: Vec<String> = spans
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id)
        .map(|s| s.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn a_job_is_one_trace_across_the_cli_the_coordinator_and_a_worker() {
    let receiver = OtlpReceiver::start().await.unwrap();
    let (models, scratch) = (common::tiny_generation_models(), TempDir::new().unwrap());
    // Under the names of the farm's default models, which a plain `tessera submit` asks for.
    for (from, to) in [
        ("vit.pt", "ViT-B-32.pt"),
        ("vq.safetensors", "vqgan_imagenet_f16_16384.safetensors"),
        ("vq.yaml", "vqgan_imagenet_f16_16384.yaml"),
    ] {
        std::fs::copy(models.path().join(from), models.path().join(to)).unwrap();
    }
    std::fs::copy(
        common::esrgan_fixture("rrdb_x4_basicsr.safetensors"),
        models.path().join("tiny-sr.safetensors"),
    )
    .unwrap();

    let mut coordinator = Command::new(binary("tessera-coordinator").unwrap());
    coordinator
        .args(["--listen", "127.0.0.1:0", "--embedded", "--store"])
        .arg(scratch.path().join("store"))
        .args(["--upscale-models", "tiny-sr:4"]);
    traced(&mut coordinator, &receiver);
    let coordinator = Service::start(coordinator).unwrap();

    let mut worker = Command::new(env!("CARGO_BIN_EXE_tessera-worker"));
    worker
        .arg("--models")
        .arg(models.path())
        .args(["--coordinator", &coordinator.url()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    traced(&mut worker, &receiver);
    let mut worker = worker.spawn().unwrap();

    let prompts = scratch.path().join("prompts.txt");
    std::fs::write(&prompts, "a red lighthouse\n").unwrap();
    let mut submit = Command::new(binary("tessera").unwrap());
    submit
        .args(["--coordinator", &coordinator.url(), "--json", "submit"])
        .arg(&prompts)
        .args(["--size", "64x64", "--iterations", "3", "--seeds", "1"])
        .args(["--upscale", "tiny-sr", "--tile", "32", "--watch"])
        .stdin(Stdio::null());
    traced(&mut submit, &receiver);
    let submit = submit
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = i32::try_from(submit.id()).unwrap();
    let run = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::task::spawn_blocking(move || submit.wait_with_output()),
    )
    .await
    .unwrap_or_else(|_| {
        // SAFETY: `kill` has no memory effects; the pid is our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        panic!("the job did not finish in 300 s\n{}", coordinator.log())
    })
    .unwrap()
    .unwrap();
    assert!(
        run.status.success(),
        "submit --watch: {}\n{}",
        String::from_utf8_lossy(&run.stderr),
        coordinator.log()
    );

    // 1 generate, 4 tiles and 1 stitch, each completed through its upload span.
    let spans = receiver
        .wait_until(Duration::from_secs(30), |spans| {
            named(spans, "tessera-coordinator", COMPLETE).len() == 6
                && named(spans, "tessera-worker", "upload").len() == 6
                && !named(spans, "tessera-worker", "task stitch").is_empty()
                && !named(spans, "tessera-cli", "tessera").is_empty()
        })
        .await;
    let _ = worker.kill();
    let _ = worker.wait();

    let cli = named(&spans, "tessera-cli", "tessera");
    let cli = cli
        .first()
        .unwrap_or_else(|| panic!("no CLI span: {spans:#?}"));
    let submit = named(&spans, "tessera-coordinator", SUBMIT);
    let submit = submit.first().expect("the coordinator's SubmitJob span");
    assert_eq!(submit.parent_span_id, cli.span_id);
    let ours: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| s.trace_id == cli.trace_id)
        .cloned()
        .collect();
    let strays: Vec<_> = spans
        .iter()
        .filter(|s| s.service == "tessera-worker" && s.trace_id != cli.trace_id)
        .collect();
    assert!(
        strays.is_empty(),
        "worker spans outside the job's trace: {strays:#?}"
    );

    let tasks = |name: &str| named(&ours, "tessera-worker", name);
    let (generate, tiles, stitches) = (
        tasks("task generate"),
        tasks("task upscale_tile"),
        tasks("task stitch"),
    );
    assert_eq!(
        (generate.len(), tiles.len(), stitches.len()),
        (1, 4, 1),
        "{ours:#?}"
    );
    for task in generate.iter().chain(&tiles).chain(&stitches) {
        assert_eq!(task.parent_span_id, submit.span_id, "{task:#?}");
        assert!(task
            .attribute("task")
            .is_some_and(|t| t.starts_with(submit.attribute("job").unwrap())));
    }
    let stages = children(&ours, generate[0]);
    for stage in [
        "decode",
        "fetch inputs",
        "iterations",
        "model load",
        "upload",
    ] {
        assert!(stages.iter().any(|s| s == stage), "generate: {stages:?}");
    }
    for tile in &tiles {
        let stages = children(&ours, tile);
        for stage in ["fetch inputs", "tile upscale", "upload"] {
            assert!(stages.iter().any(|s| s == stage), "tile: {stages:?}");
        }
    }
    let stages = children(&ours, stitches[0]);
    for stage in ["fetch inputs", "stitch", "upload"] {
        assert!(stages.iter().any(|s| s == stage), "stitch: {stages:?}");
    }

    let completions = named(&ours, "tessera-coordinator", COMPLETE);
    assert_eq!(completions.len(), 6, "every completion joined the trace");
    for completion in completions {
        let upload = by_id(&ours, &completion.parent_span_id).expect("its parent span");
        assert_eq!(
            (upload.service.as_str(), upload.name.as_str()),
            ("tessera-worker", "upload")
        );
    }
}
