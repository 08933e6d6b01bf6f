//! Bad input to `tessera submit --sweep` and `--dry-run` (issue 22, items 3 and 5) through the
//! real binary and a real coordinator: each mistake is refused naming the key, the value and
//! the range, and nothing is stored. (Sweeps and estimates on real workers are tested in
//! `worker/tests/sweeps_estimates.rs`.)

mod common;

use common::{coordinator, tessera, SMALL};
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;

#[tokio::test]
async fn bad_sweeps_and_dry_runs_are_refused_naming_the_problem_and_store_nothing() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "a lighthouse\n").unwrap();
    let file = prompts.to_str().unwrap();

    let refused: [(&[&str], &[&str]); 7] = [
        (
            &["--sweep", "speed=1,2"],
            &[
                "sweep key 'speed' is not a job setting; known: ",
                "learning_rate (lr)",
                "cutn",
            ],
        ),
        (&["--sweep", "cutn="], &["sweep cutn has an empty value"]),
        (
            &["--sweep", "cutn=16,,32"],
            &["sweep cutn has an empty value"],
        ),
        (
            &["--sweep", "cutn=16,5000"],
            &["sweep cutn: setting `cutn` = 5000 is out of range: between 1 and 1024"],
        ),
        (
            &["--sweep", "lr=0.1", "--sweep", "learning-rate=0.2"],
            &["--sweep: setting learning_rate is swept twice"],
        ),
        (&["--sweep", "lr=0.1,0.10"], &["gives the value 0.1 twice"]),
        (&["--dry-run", "--watch"], &["--dry-run", "--watch"]),
    ];
    for (flags, said) in refused {
        let args = [&["submit", file][..], flags, &SMALL].concat();
        let run = tessera(&url, &args).await;
        assert_ne!(run.code, 0, "{flags:?} was accepted: {run:?}");
        for part in said {
            assert!(run.stderr.contains(part), "{flags:?}: {}", run.stderr);
        }
    }

    // A sweep the coordinator's limits refuse names the prompt and the combination; a dry run
    // is refused as the submission would be.
    let over = [
        &["submit", file, "--sweep", "iterations=5,20000"][..],
        &SMALL,
    ]
    .concat();
    for extra in [&[][..], &["--dry-run"]] {
        let run = tessera(&url, &[&over[..], extra].concat()).await;
        assert!(
            run.code == 1
                && run.stderr.contains(
                    "line 1, sweep iterations20000: too many iterations: 20000, the limit is"
                ),
            "{run:?}"
        );
    }

    // The coordinator checks sweeps from any client, not only the CLI's.
    let mut client = JobsClient::connect(url.clone()).await.unwrap();
    let spec = v1::JobSpec {
        source: Some(v1::job_spec::Source::PromptsText("a cat\n".into())),
        sweeps: vec![v1::Sweep {
            key: "cutn".into(),
            values: vec!["0".into()],
        }],
        ..Default::default()
    };
    let refusal = client.estimate_job(spec).await.unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        refusal.message(),
        "sweep cutn: setting `cutn` = 0 is out of range: between 1 and 1024"
    );

    let jobs = tessera(&url, &["--json", "jobs"]).await.ok().json();
    assert_eq!(jobs["total"], 0, "nothing refused or dry-run was stored");

    // A dry run on a farm that has measured nothing yet counts the tasks and says so.
    let dry = [
        &[
            "--json",
            "submit",
            file,
            "--dry-run",
            "--sweep",
            "cutn=8,16",
        ][..],
        &SMALL,
    ];
    let estimate = tessera(&url, &dry.concat()).await.ok().json();
    assert_eq!(estimate["results"], 2);
    assert_eq!(estimate["tasks"]["generate"], 2);
    assert_eq!(estimate["worker_ms"], serde_json::Value::Null);
    assert_eq!(estimate["unmeasured"][0], "generate 64x64");
    let text = tessera(&url, &[&dry.concat()[1..]].concat()).await.ok();
    assert!(
        text.stdout
            .contains("would make 2 result(s) from 2 generate")
            && text
                .stdout
                .contains("no estimate: the farm has not finished work of this kind"),
        "{}",
        text.stdout
    );
}
