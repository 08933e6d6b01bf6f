//! `tessera priority`, `pause` and `resume` against a real coordinator process (issue 22, item
//! 1), with a protocol-only worker standing for the farm: a new priority moves a job ahead in
//! the lease order at once; a paused job is offered to no worker until resumed; every bad
//! input is refused with a message naming it; and a job no registered worker could run (item 4)
//! is refused with the reason, or queued for capacity with `--queue-anyway`.

mod common;

use common::{coordinator, tessera, SMALL};
use tempfile::TempDir;
use tessera_proto::access::Access;
use tessera_proto::v1;
use tessera_tests::protocol::ProtocolWorker;

/// Submits a one-prompt job and returns its id.
async fn submit_one(url: &str, dir: &TempDir, name: &str) -> String {
    let prompts = dir.path().join(format!("{name}.txt"));
    std::fs::write(&prompts, format!("{name}\n")).unwrap();
    let submit = [&["submit", prompts.to_str().unwrap()][..], &SMALL].concat();
    tessera(url, &submit).await.ok().stdout.trim().to_string()
}

#[tokio::test]
async fn a_new_priority_goes_first_and_a_paused_job_waits_until_resumed() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let first = submit_one(&url, &dir, "first").await;
    let second = submit_one(&url, &dir, "second").await;

    let raised = tessera(&url, &["--json", "priority", &second, "5"]).await;
    assert_eq!(raised.ok().json()["priority"], 5);
    let first_status = tessera(&url, &["--json", "status", &first])
        .await
        .ok()
        .json();
    assert_eq!(first_status["queue_position"], 1, "{first_status}");

    let paused = tessera(&url, &["pause", &first]).await.ok();
    assert!(
        paused.stdout.contains("running (paused"),
        "{}",
        paused.stdout
    );
    let mut worker = ProtocolWorker::register(&service, "w").await;
    let leased = worker.lease(0).await.expect("the raised job's render");
    assert!(leased.task_id.starts_with(&second), "{leased:?}");
    assert!(
        worker.lease(0).await.is_none(),
        "the paused job's render was offered"
    );
    let status = tessera(&url, &["--json", "status", &first])
        .await
        .ok()
        .json();
    assert_eq!(status["paused"], true);
    assert!(
        status["waiting_for"]
            .as_str()
            .unwrap()
            .contains(&format!("tessera resume {first}")),
        "{status}"
    );

    let resumed = tessera(&url, &["--json", "resume", &first])
        .await
        .ok()
        .json();
    assert_eq!(resumed["paused"], false);
    let leased = worker.lease(0).await.expect("the resumed job's render");
    assert!(leased.task_id.starts_with(&first), "{leased:?}");
}

#[tokio::test]
async fn bad_priorities_unknown_jobs_and_ended_jobs_are_refused_by_name() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let job = submit_one(&url, &dir, "only").await;

    for (value, named) in [
        ("5000", "-1000..=1000"),
        ("-1001", "-1000..=1000"),
        ("x", "'x'"),
    ] {
        let run = tessera(&url, &["priority", &job, value]).await;
        assert_ne!(run.code, 0, "{run:?}");
        assert!(
            run.stderr.contains("priority") && run.stderr.contains(named),
            "{value}: {}",
            run.stderr
        );
    }
    let prompts = dir.path().join("only.txt");
    let submit = [
        &["submit", prompts.to_str().unwrap(), "--priority", "1001"][..],
        &SMALL,
    ]
    .concat();
    let run = tessera(&url, &submit).await;
    assert!(
        run.code != 0 && run.stderr.contains("-1000..=1000"),
        "{run:?}"
    );

    for command in ["pause", "resume"] {
        let run = tessera(&url, &[command, "nope"]).await;
        assert!(
            run.code != 0 && run.stderr.contains("no job nope"),
            "{run:?}"
        );
    }
    tessera(&url, &["cancel", &job]).await.ok();
    for args in [vec!["pause", &job], vec!["priority", &job, "3"]] {
        let run = tessera(&url, &args).await;
        assert!(
            run.code != 0 && run.stderr.contains("has ended (cancelled)"),
            "{args:?}: {run:?}"
        );
    }
}

/// A protocol worker taking renders of at most `side` pixels a side and `iterations`
/// iterations.
async fn limited_worker(url: &str, side: u32, iterations: u32) -> ProtocolWorker {
    let capabilities = v1::Capabilities {
        kinds: vec![v1::TaskKind::Generate as i32],
        models: vec!["ViT-B/32".into(), "vqgan_imagenet_f16_16384".into()],
        device: "cpu".into(),
        max_side: side,
        max_iterations: iterations,
        ..v1::Capabilities::default()
    };
    ProtocolWorker::register_offering(url, &Access::default(), "small", capabilities).await
}

#[tokio::test]
async fn a_job_no_worker_could_run_is_refused_with_the_reason_or_queued_for_capacity() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse\n").unwrap();
    let file = prompts.to_str().unwrap();
    let mut worker = limited_worker(&url, 128, 50).await;
    let listed = tessera(&url, &["workers"]).await.ok().stdout;
    assert!(listed.contains("128 px side, 50 iterations"), "{listed}");

    let large = ["submit", file, "--size", "256x256", "--upscale", "none"];
    let run = tessera(&url, &large).await;
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(
            "no registered worker takes 256x256 renders; the longest side any takes is 128"
        ) && run.stderr.contains("--queue-anyway"),
        "{}",
        run.stderr
    );
    let long = [
        "submit",
        file,
        "--size",
        "64x64",
        "--iterations",
        "80",
        "--upscale",
        "none",
    ];
    let run = tessera(&url, &long).await;
    assert!(
        run.stderr
            .contains("of 80 iterations; the most iterations any takes is 50"),
        "{run:?}"
    );
    let jobs = tessera(&url, &["--json", "jobs"]).await.ok().json();
    assert_eq!(jobs["total"], 0, "a refused job is not stored: {jobs}");

    let queued = [&large[..], &["--queue-anyway"]].concat();
    let waiting = tessera(&url, &queued).await.ok().stdout.trim().to_string();
    let status = tessera(&url, &["--json", "status", &waiting])
        .await
        .ok()
        .json();
    assert!(
        status["waiting_for"]
            .as_str()
            .unwrap()
            .contains("with a 256-pixel side"),
        "{status}"
    );
    let fits = tessera(&url, &[&["submit", file][..], &SMALL].concat()).await;
    let fits = fits.ok().stdout.trim().to_string();
    let leased = worker.lease(0).await.expect("the job that fits");
    assert!(leased.task_id.starts_with(&fits), "{leased:?}");
    assert!(
        worker.lease(0).await.is_none(),
        "too large a render was offered"
    );
}
