//! Mistaken and hostile input through the real `tessera` and `tessera-coordinator` binaries:
//! each is refused with a message naming the problem (file, line, field, limit), or handled,
//! and nothing already accepted is lost or overwritten.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::{coordinator, tessera, Run, Workers, SMALL};
use tempfile::TempDir;
use tessera_proto::v1;
use tessera_tests::protocol::ProtocolWorker;
use tessera_tests::Service;

/// A coordinator with its state in memory and its artifacts under `dir`.
fn farm(dir: &TempDir) -> Service {
    coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0")
}

/// `tessera submit` of a prompt file `name` holding `text` (written under `dir`), with the
/// small test settings and `extra` flags.
async fn submit_file(url: &str, dir: &TempDir, name: &str, text: &str, extra: &[&str]) -> Run {
    let path = dir.path().join(name);
    fs::write(&path, text).unwrap();
    let file = path.to_str().unwrap();
    tessera(url, &[&["submit", file][..], extra, &SMALL].concat()).await
}

/// How many jobs the farm at `url` holds.
async fn job_count(url: &str) -> u64 {
    tessera(url, &["--json", "jobs"]).await.ok().json()["total"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn names_prompts_and_seeds_are_refused_at_submission_naming_the_limit() {
    let dir = TempDir::new().unwrap();
    let service = farm(&dir);
    let url = service.url();
    let prompts = dir.path().join("prompts.txt");
    fs::write(&prompts, "a lighthouse\n").unwrap();
    let file = prompts.to_str().unwrap();
    let nul = dir.path().join("nul.txt");
    fs::write(&nul, "a cat\na\0dog\n").unwrap();

    let long = "n".repeat(65_536);
    let refused = [
        (
            vec!["submit", file, "--name", &long],
            1,
            "the job name has 65536 characters; the limit is 255",
        ),
        (
            vec!["submit", file, "--name", "ok\u{1b}[2J\u{1b}[31mowned"],
            1,
            "the job name holds the control character \\u{1b} at character 3",
        ),
        (
            vec!["submit", nul.to_str().unwrap()],
            1,
            "line 2: the prompt holds the control character \\u{0} at character 2",
        ),
        (
            vec!["submit", file, "--seed", "3", "--seed", "3"],
            1,
            "seed 3 is given twice",
        ),
        (
            vec!["submit", file, "--seeds", "1000000000"],
            2,
            "1000000000 is not in 1..=1000",
        ),
        (
            vec!["submit", file, "--seeds", "18446744073709551615"],
            2,
            "is not in 1..=1000",
        ),
    ];
    for (args, code, needle) in refused {
        let mut args = args;
        args.extend(SMALL);
        let run = tessera(&url, &args).await;
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert!(run.stderr.contains(needle), "{needle}: {run:?}");
        assert!(!run.stderr.contains('\u{1b}'), "a raw escape: {run:?}");
    }
    assert_eq!(job_count(&url).await, 0, "nothing refused was stored");
}

#[tokio::test]
async fn prompt_files_are_read_as_their_authors_meant_or_refused_with_line_and_field() {
    let dir = TempDir::new().unwrap();
    let service = farm(&dir);
    let url = service.url();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        fs::write(&path, bytes).unwrap();
        path.to_str().unwrap().to_string()
    };
    let pretty = b"[\n  \"a cat\",\n  {\"prompt\": \"a dog\", \"seeds\": [4, 5]}\n]\n";
    let submitted = |run: Run| run.ok().json()["results_total"].as_u64().unwrap();

    let json = write("batch.json", pretty);
    let run = tessera(&url, &[&["--json", "submit", &json][..], &SMALL].concat()).await;
    assert_eq!(submitted(run), 3, "one result for the cat, two for the dog");
    let bom = write("bom.txt", "\u{feff}# a comment\na lighthouse\n".as_bytes());
    let run = tessera(&url, &[&["--json", "submit", &bom][..], &SMALL].concat()).await;
    assert_eq!(submitted(run), 1, "the commented line is a comment");

    let mut invalid_utf8 = b"a cat\na dog\nab\xffcd\n".to_vec();
    invalid_utf8.extend(b"a fox\n");
    let refused = [
        (write("batch.txt", pretty), "reads as JSON"),
        (
            write("bad.txt", &invalid_utf8),
            "is not UTF-8 text: line 3, byte 3",
        ),
        (
            write(
                "typed.jsonl",
                b"{\"prompt\": \"a\", \"iterations\": \"many\"}\n",
            ),
            "line 1: \"iterations\": invalid type: string \"many\"",
        ),
        (
            write("twice.jsonl", b"{\"prompt\": \"a\", \"prompt\": \"b\"}\n"),
            "line 1: \"prompt\" is given twice",
        ),
        ("/dev/zero".to_string(), "/dev/zero is larger than 32 MiB"),
    ];
    for (path, needle) in refused {
        let run = tessera(&url, &[&["submit", &path][..], &SMALL].concat()).await;
        assert_eq!(run.code, 1, "{path}: {run:?}");
        assert!(run.stderr.contains(needle), "{needle}: {run:?}");
    }
    let run = tessera(
        &url,
        &["upscale", "/dev/zero", "--model", "realesrgan-x4plus"],
    )
    .await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("/dev/zero is not a PNG"), "{run:?}");
    assert_eq!(
        job_count(&url).await,
        2,
        "only the two good files were submitted"
    );
}

#[tokio::test]
async fn text_from_workers_prints_escaped_and_output_ends_quietly_on_a_closed_pipe() {
    let dir = TempDir::new().unwrap();
    let service = farm(&dir);
    let url = service.url();
    let run = submit_file(&url, &dir, "prompts.txt", "a lighthouse\n", &[]).await;
    let job = run.ok().stdout.trim().to_string();

    let mut worker = ProtocolWorker::register(&service, "w").await;
    let task = worker.lease(0).await.unwrap();
    let hostile = format!("\u{1b}[2J\u{1b}[31mPWNED {}", "x".repeat(100_000));
    worker
        .client
        .fail_task(v1::FailTaskRequest {
            worker_id: worker.id.clone(),
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            error: hostile,
            retryable: false,
            ..v1::FailTaskRequest::default()
        })
        .await
        .unwrap();
    let watched = tessera(&url, &["watch", &job]).await;
    assert_eq!(watched.code, 3, "the job failed: {watched:?}");
    assert!(!watched.stderr.contains('\u{1b}'), "{watched:?}");
    assert!(
        watched
            .stderr
            .contains("failed: \\u{1b}[2J\\u{1b}[31mPWNED xxx"),
        "{watched:?}"
    );
    assert!(
        watched.stderr.contains("… (95919 more characters)"),
        "the coordinator keeps 4096 characters of an error: {watched:?}"
    );

    // `tessera jobs | head -c 0`: the reader is gone before the first line is printed.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["--coordinator", &url, "jobs"])
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.is_empty(), "a closed pipe is not an error: {stderr}");
}

#[tokio::test]
async fn addresses_and_ids_that_cannot_be_right_are_refused_saying_why() {
    let dir = TempDir::new().unwrap();
    let service = farm(&dir);
    let url = service.url();

    let metrics = format!("http://{}", service.metrics.unwrap());
    let run = tessera(&metrics, &["jobs"]).await;
    assert_eq!(run.code, 2, "a wrong address is like no address: {run:?}");
    assert!(
        run.stderr
            .contains(&format!("{metrics} is not a Tessera coordinator")),
        "{run:?}"
    );
    for (address, why) in [
        ("ftp://127.0.0.1:7470", "is not an http:// or https:// URL"),
        (
            "http://user:pw@127.0.0.1:7470",
            "holds a user name or password",
        ),
    ] {
        let run = tessera(address, &["jobs"]).await;
        assert_eq!(run.code, 1, "{run:?}");
        assert!(run.stderr.contains(why), "{run:?}");
    }

    let long_id = "j".repeat(17_000);
    let run = tessera(&url, &["status", &long_id]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("(17000 characters) is not a job id"),
        "{run:?}"
    );

    let run = tessera(&url, &["--json", "status", "nosuchjob"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let error: serde_json::Value = serde_json::from_str(run.stderr.trim()).unwrap();
    assert_eq!(error["exit_code"], 1, "{error}");
    assert!(
        error["error"]
            .as_str()
            .unwrap()
            .contains("no job nosuchjob"),
        "{error}"
    );
}

#[tokio::test]
async fn fetch_never_replaces_a_file_it_did_not_write() {
    let dir = TempDir::new().unwrap();
    let service = farm(&dir);
    let url = service.url();
    let _workers = Workers::start(&service).await;
    let job = submit_file(&url, &dir, "prompts.txt", "a lighthouse\n", &["--watch"]).await;
    let job = job.ok();
    let job = job.stdout.lines().next().unwrap().to_string();

    let out = dir.path().join("out");
    fs::create_dir(&out).unwrap();
    let mine = out.join("0000-seed0-a-lighthouse.png");
    fs::write(&mine, "my own picture").unwrap();
    let run = tessera(&url, &["fetch", &job, "-o", out.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains(&format!(
            "{} exists and is not result 0 of job {job}",
            mine.display()
        )),
        "{run:?}"
    );
    assert_eq!(fs::read_to_string(&mine).unwrap(), "my own picture");

    let other = dir.path().join("other");
    fs::create_dir(&other).unwrap();
    fs::write(
        other.join("manifest.json"),
        "{\"job_id\": \"someotherjob\"}",
    )
    .unwrap();
    let run = tessera(&url, &["fetch", &job, "-o", other.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("is the manifest of job someotherjob"),
        "{run:?}"
    );

    fs::remove_file(&mine).unwrap();
    let out = out.to_str().unwrap();
    tessera(&url, &["fetch", &job, "-o", out]).await.ok();
    let again = tessera(&url, &["fetch", &job, "-o", out]).await.ok();
    assert!(
        again.stderr.contains("0 fetched, 1 already complete"),
        "{again:?}"
    );
}

#[test]
fn a_coordinator_refuses_limits_no_job_could_pass_at_start() {
    let dir = TempDir::new().unwrap();
    let auth = dir.path().join("auth.yaml");
    fs::write(
        &auth,
        "tokens: []\ntenants:\n  acme: {prompts_per_job: 0}\n",
    )
    .unwrap();
    let auth = auth.to_str().unwrap();
    for (flags, code, needle) in [
        (&["--lease-ms", "0"][..], 2, "0 is not in 100..=86400000"),
        (&["--max-side", "0"], 2, "0 is not in 16..=65536"),
        (
            &["--max-artifact-bytes", "0"],
            2,
            "0 is not in 65536..=1099511627776",
        ),
        (
            &["--auth-file", auth],
            1,
            "tenants.acme: prompts_per_job is 0",
        ),
    ] {
        let output = Command::new(tessera_tests::binary("tessera-coordinator").unwrap())
            .args([
                "--embedded",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .arg("--store")
            .arg(dir.path().join("store"))
            .args(flags)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{flags:?}: {stderr}");
        assert!(stderr.contains(needle), "{flags:?}: {stderr}");
    }
}

#[tokio::test]
async fn a_job_no_connected_worker_can_run_says_why_in_status_and_watch() {
    let dir = TempDir::new().unwrap();
    let service = farm(&dir);
    let url = service.url();
    let banana = "{\"prompt\": \"a cat\", \"device\": \"banana\"}\n";
    let run = submit_file(&url, &dir, "banana.jsonl", banana, &[]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("device = banana is out of range: it must be empty (any), cpu, cuda"),
        "{run:?}"
    );

    let run = submit_file(&url, &dir, "prompts.txt", "a lighthouse\n", &[]).await;
    let run = run.ok();
    assert!(
        run.stderr.contains("none is connected to the farm"),
        "{run:?}"
    );
    let job = run.stdout.trim().to_string();
    let access = tessera_proto::access::Access::default();
    let _upscaler =
        ProtocolWorker::register_with(&url, &access, "upscaler", &["realesrgan-x4plus"]).await;
    let why = "waiting for a worker that can run its generate tasks: none of the 1 connected \
               worker(s) offers the models ViT-B/32 and vqgan_imagenet_f16_16384";
    let status = tessera(&url, &["status", &job]).await.ok();
    assert!(
        status.stdout.contains(&format!("waiting   {why}")),
        "{status:?}"
    );

    let mut watch = common::command(&url, &["--json", "watch", &job])
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let first: serde_json::Value =
        serde_json::from_str(&lines.next_line().await.unwrap().unwrap()).unwrap();
    assert_eq!(first["type"], "waiting", "{first}");
    assert!(
        first["reason"].as_str().unwrap().starts_with(why),
        "{first}"
    );

    let _workers = Workers::start(&service).await;
    let mut last = first;
    while let Some(line) = lines.next_line().await.unwrap() {
        last = serde_json::from_str(&line).unwrap();
    }
    assert_eq!(last["type"], "job_done", "{last}");
    let status = tessera(&url, &["--json", "status", &job]).await.ok().json();
    assert_eq!(status["waiting_for"], "", "{status}");
}

/// Every file under `dir`, however deep.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| match entry.file_type().unwrap().is_dir() {
            true => files_under(&entry.path()),
            false => vec![entry.path()],
        })
        .collect()
}

#[tokio::test]
async fn a_refused_upscale_leaves_none_of_its_uploads_behind() {
    let dir = TempDir::new().unwrap();
    let service = farm(&dir);
    let url = service.url();
    let pictures: Vec<String> = (0..3)
        .map(|i| {
            let path = dir.path().join(format!("p{i}.png"));
            fs::write(&path, tessera_tests::protocol::png(32, 32, i)).unwrap();
            path.to_str().unwrap().to_string()
        })
        .collect();
    let mut args = vec!["upscale", "--model", "realesrgan-x9000"];
    args.extend(pictures.iter().map(String::as_str));
    let run = tessera(&url, &args).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr
            .contains("unknown upscale model 'realesrgan-x9000'"),
        "{run:?}"
    );
    let uploads = dir.path().join("store").join("uploads");
    assert_eq!(files_under(&uploads), Vec::<std::path::PathBuf>::new());

    args[2] = "realesrgan-x4plus";
    let run = tessera(&url, &args).await.ok();
    assert!(run.stderr.contains("submitted job"), "{run:?}");
    assert_eq!(
        files_under(&uploads).len(),
        3,
        "an accepted job keeps its uploads"
    );
}
