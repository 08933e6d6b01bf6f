//! The `tessera` binary as a user runs it, against a real coordinator process with
//! protocol-only workers: submit, watch, status, jobs, workers, cancel, fetch with resume,
//! upscale, the error messages, and a watch that outlives a coordinator restart.

mod common;

use std::collections::HashSet;
use std::fs;

use common::{coordinator, finish, tessera, Workers, SMALL};
use tempfile::TempDir;
use tessera_tests::protocol::{png, ProtocolWorker};
use tessera_tests::{free_port, RedisServer, Service};
use tokio::io::{AsyncBufReadExt, BufReader};

const PROMPTS: &str = "a lighthouse in a storm\n# a comment\n\nA red fox, at dawn!\n";

#[tokio::test]
async fn a_prompt_file_renders_watches_to_success_and_fetches_resumably() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let prompts = dir.path().join("prompts.txt");
    fs::write(&prompts, PROMPTS).unwrap();

    let mut args = vec!["submit", prompts.to_str().unwrap(), "--seeds", "2"];
    args.extend(SMALL);
    let submitted = tessera(&url, &args).await.ok();
    let job = submitted.stdout.trim().to_string();
    assert!(
        !job.is_empty() && !job.contains(char::is_whitespace),
        "{submitted:?}"
    );

    let _workers = Workers::start(&service).await;
    let watched = tessera(&url, &["watch", &job]).await.ok();
    assert!(
        watched
            .stdout
            .contains(&format!("job {job} succeeded: 4 result(s) done")),
        "{watched:?}"
    );

    let out = dir.path().join("out");
    let out_arg = out.to_str().unwrap();
    tessera(&url, &["fetch", &job, "-o", out_arg]).await.ok();
    let manifest: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    let results = manifest["results"].as_array().unwrap();
    let files: Vec<String> = results
        .iter()
        .map(|r| r["file"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        files,
        [
            "0000-seed0-a-lighthouse-in-a-storm.png",
            "0000-seed1-a-lighthouse-in-a-storm.png",
            "0001-seed0-a-red-fox-at-dawn.png",
            "0001-seed1-a-red-fox-at-dawn.png",
        ]
    );
    assert_eq!(results[2]["prompt"], "A red fox, at dawn!");
    assert_eq!(results[2]["seed"], 0);
    assert_eq!(results[2]["state"], "done");
    assert_eq!(results[2]["settings"]["width"], 64);
    let originals: Vec<Vec<u8>> = files
        .iter()
        .map(|f| fs::read(out.join(f)).unwrap())
        .collect();
    for (bytes, result) in originals.iter().zip(results) {
        let picture = image::load_from_memory(bytes).unwrap();
        assert_eq!((picture.width(), picture.height()), (64, 64));
        assert_eq!(result["output"]["size"], bytes.len());
    }

    // One file lost, one left half-downloaded: the next fetch completes both, byte for byte.
    fs::remove_file(out.join(&files[0])).unwrap();
    let part = out.join(format!("{}.part", files[3]));
    fs::rename(out.join(&files[3]), &part).unwrap();
    fs::write(&part, &originals[3][..originals[3].len() / 2]).unwrap();
    let again = tessera(&url, &["fetch", &job, "-o", out_arg]).await.ok();
    assert!(
        again.stderr.contains("2 fetched, 2 already complete"),
        "{again:?}"
    );
    for (file, bytes) in files.iter().zip(&originals) {
        assert_eq!(&fs::read(out.join(file)).unwrap(), bytes, "{file}");
    }
    assert!(!part.exists());
}

#[tokio::test]
async fn a_jsonl_file_with_overrides_and_the_listings_as_json() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let prompts = dir.path().join("prompts.jsonl");
    fs::write(
        &prompts,
        "{\"prompt\": \"a cat\"}\n\n{\"prompt\": \"a dog\", \"seeds\": [3, 4], \"iterations\": 10}\n",
    )
    .unwrap();
    let mut args = vec!["--json", "submit", prompts.to_str().unwrap(), "--watch"];
    args.extend(SMALL);
    let watcher = common::command(&url, &args).spawn().unwrap();
    let _workers = Workers::start(&service).await;
    let run = finish(watcher).await.ok();
    let lines = run.json_lines();
    let job = lines[0]["job_id"].as_str().unwrap().to_string();
    assert_eq!(lines[0]["results_total"], 3);
    let done = lines.last().unwrap();
    assert_eq!(
        (&done["type"], &done["state"]),
        (&"job_done".into(), &"succeeded".into())
    );
    let cursors: HashSet<&str> = lines[1..]
        .iter()
        .map(|e| e["cursor"].as_str().unwrap())
        .collect();
    assert_eq!(cursors.len(), lines.len() - 1, "every event shown once");

    let status = tessera(&url, &["--json", "status", &job]).await.ok().json();
    assert_eq!(status["state"], "succeeded");
    assert_eq!(status["results_done"], 3);
    let jobs = tessera(&url, &["jobs", "--json"]).await.ok().json();
    assert_eq!(jobs["total"], 1);
    assert_eq!(jobs["jobs"][0]["job_id"], job.as_str());
    assert_eq!(jobs["jobs"][0]["name"], "prompts.jsonl");
    let workers = tessera(&url, &["workers", "--json"]).await.ok().json();
    assert_eq!(workers["workers"][0]["name"], "cli-test");
    assert_eq!(workers["workers"][0]["tasks_done"], 3);

    let table = tessera(&url, &["jobs"]).await.ok();
    assert!(table.stdout.starts_with("JOB"), "{table:?}");
    assert!(table.stdout.contains("succeeded"), "{table:?}");
    let out = dir.path().join("out");
    let fetched = tessera(
        &url,
        &["--json", "fetch", &job, "-o", out.to_str().unwrap()],
    )
    .await;
    let written = fetched.ok().json()["written"].clone();
    assert_eq!(
        written,
        serde_json::json!([
            "0000-seed0-a-cat.png",
            "0001-seed3-a-dog.png",
            "0001-seed4-a-dog.png"
        ])
    );
}

/// Submits [`PROMPTS`] as a [`SMALL`] job of two tasks, the file written in `dir`, and
/// returns the job's id.
async fn submit_small(url: &str, dir: &TempDir) -> String {
    let prompts = dir.path().join("prompts.txt");
    fs::write(&prompts, PROMPTS).unwrap();
    let mut args = vec!["submit", prompts.to_str().unwrap()];
    args.extend(SMALL);
    tessera(url, &args).await.ok().stdout.trim().to_string()
}

#[tokio::test]
async fn a_cancelled_job_ends_its_watch_with_a_failure_code() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let job = submit_small(&url, &dir).await;

    let watcher = common::command(&url, &["--json", "watch", &job])
        .spawn()
        .unwrap();
    let cancelled = tessera(&url, &["cancel", &job]).await.ok();
    assert!(cancelled.stdout.contains("cancelled"), "{cancelled:?}");
    let watched = finish(watcher).await;
    assert_eq!(watched.code, 4, "{watched:?}");
    assert!(watched.stderr.contains("was cancelled"), "{watched:?}");
    let last = watched.json_lines().pop().unwrap();
    assert_eq!(
        (&last["type"], &last["state"]),
        (&"job_done".into(), &"cancelled".into())
    );
}

#[tokio::test]
async fn pictures_are_uploaded_upscaled_and_fetched() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();
    let a = dir.path().join("Beach Day.png");
    let b = dir.path().join("b.png");
    let notes = dir.path().join("notes.txt");
    fs::write(&a, png(48, 32, 1)).unwrap();
    fs::write(&b, png(32, 32, 2)).unwrap();
    fs::write(&notes, "not a picture").unwrap();
    let (a, b, notes) = (
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        notes.to_str().unwrap(),
    );

    let refused = tessera(&url, &["upscale", a, notes, "--model", "realesrgan-x4plus"]).await;
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("notes.txt is not a PNG, JPEG or WebP"),
        "{refused:?}"
    );

    let out = dir.path().join("out");
    let args = [
        "upscale",
        a,
        b,
        "--model",
        "realesrgan-x4plus",
        "--tile",
        "32",
        "--watch",
        "-o",
        out.to_str().unwrap(),
    ];
    let _workers = Workers::start(&service).await;
    let run = tessera(&url, &args).await.ok();
    assert!(
        run.stdout.contains("succeeded: 2 result(s) done"),
        "{run:?}"
    );
    let first = image::open(out.join("0000-beach-day.png")).unwrap();
    assert_eq!((first.width(), first.height()), (192, 128));
    let second = image::open(out.join("0001-b.png")).unwrap();
    assert_eq!((second.width(), second.height()), (128, 128));
    let manifest = fs::read_to_string(out.join("manifest.json")).unwrap();
    assert!(
        manifest.contains("\"input_name\": \"Beach Day.png\""),
        "{manifest}"
    );

    // Its status says what it did, not the render settings it never used.
    let jobs = tessera(&url, &["--json", "jobs"]).await.ok().json();
    let job = jobs["jobs"][0]["job_id"].as_str().unwrap();
    let status = tessera(&url, &["status", job]).await.ok().stdout;
    assert!(
        status.contains(
            "upscale   2 picture(s) with realesrgan-x4plus (x4), tiles of 32 px (pad 48, overlap 16)"
        ),
        "{status}"
    );
    assert!(!status.contains("iterations"), "{status}");
}

#[tokio::test]
async fn mistakes_are_reported_with_what_to_fix() {
    let dir = TempDir::new().unwrap();
    let service = coordinator(&dir.path().join("store"), &["--embedded"], "127.0.0.1:0");
    let url = service.url();

    let missing = dir.path().join("nosuch.txt");
    let run = tessera(&url, &["submit", missing.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(
        run.stderr.contains("cannot read the prompt file"),
        "{run:?}"
    );
    assert!(run.stderr.contains("nosuch.txt"), "{run:?}");

    let bad = dir.path().join("bad.jsonl");
    fs::write(
        &bad,
        "{\"prompt\": \"a cat\"}\n{\"prompt\": \"a dog\", \"iterations\": }\n",
    )
    .unwrap();
    let run = tessera(&url, &["submit", bad.to_str().unwrap()]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("line 2"), "{run:?}");

    let run = tessera(&url, &["status", "nosuchjob"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert!(run.stderr.contains("nosuchjob"), "{run:?}");

    let nowhere = format!("http://127.0.0.1:{}", free_port());
    for args in [
        &["jobs"][..],
        &["watch", "somejob"],
        &["submit", bad.to_str().unwrap()],
    ] {
        let run = tessera(&nowhere, args).await;
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr
                .contains(&format!("cannot reach the coordinator at {nowhere}")),
            "{run:?}"
        );
        assert!(run.stderr.contains("tessera up"), "{run:?}");
    }
}

/// A two-task job on a coordinator with its state in Redis, listening on a fixed address so a
/// restarted one takes its place, followed by `tessera --json watch`.
struct WatchedJob {
    redis: RedisServer,
    dir: TempDir,
    listen: String,
    coordinator: Service,
    watcher: tokio::process::Child,
    /// The watch's standard output, one JSON event a line.
    events: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    /// The events shown so far.
    seen: Vec<serde_json::Value>,
}

impl WatchedJob {
    /// Submits the job, starts the watch and finishes one task, and returns once the watch has
    /// shown it: the watch is connected then.
    async fn start() -> WatchedJob {
        let redis = RedisServer::start().unwrap();
        let dir = TempDir::new().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let state = ["--redis", &redis.url()];
        let coordinator = coordinator(&dir.path().join("store"), &state, &listen);
        let url = coordinator.url();
        let job = submit_small(&url, &dir).await;

        let mut watcher = common::command(&url, &["--json", "watch", &job])
            .spawn()
            .unwrap();
        let events = BufReader::new(watcher.stdout.take().unwrap()).lines();
        let mut watched = WatchedJob {
            redis,
            dir,
            listen,
            coordinator,
            watcher,
            events,
            seen: Vec::new(),
        };
        let mut worker = ProtocolWorker::register(&watched.coordinator, "before").await;
        let task = worker.lease(0).await.unwrap();
        worker.finish(&task).await;
        while let Some(line) = watched.events.next_line().await.unwrap() {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap();
            let shown = event["type"] == "task_done";
            watched.seen.push(event);
            if shown {
                return watched;
            }
        }
        panic!("the watch ended before it showed the finished task");
    }

    /// Starts a coordinator in the killed one's place, on the same state, and has a worker
    /// finish the job's other task.
    async fn restart_and_finish(&mut self) {
        let state = ["--redis", &self.redis.url()];
        self.coordinator = coordinator(&self.dir.path().join("store"), &state, &self.listen);
        let mut worker = ProtocolWorker::register(&self.coordinator, "after").await;
        assert_eq!(worker.drain(0).await, 1);
    }

    /// Reads the watch's remaining events, checks the last says the job succeeded, and waits
    /// for the watch to end; returns how it ended and every event it showed.
    async fn finish(mut self) -> (common::Run, Vec<serde_json::Value>) {
        while let Some(line) = self.events.next_line().await.unwrap() {
            self.seen.push(serde_json::from_str(&line).unwrap());
        }
        let last = self.seen.last().unwrap();
        assert_eq!(
            (&last["type"], &last["state"]),
            (&"job_done".into(), &"succeeded".into())
        );
        (finish(self.watcher).await, self.seen)
    }
}

#[tokio::test]
async fn watch_reconnects_when_the_coordinator_restarts() {
    let mut watched = WatchedJob::start().await;
    let url = watched.coordinator.url();
    watched.coordinator.kill();

    watched.restart_and_finish().await;
    let (run, seen) = watched.finish().await;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr.contains(&format!("reconnecting to {url}")),
        "{run:?}"
    );
    let cursors: HashSet<&str> = seen.iter().map(|e| e["cursor"].as_str().unwrap()).collect();
    assert_eq!(
        cursors.len(),
        seen.len(),
        "no event is shown twice: {seen:#?}"
    );
    let done = seen.iter().filter(|e| e["type"] == "task_done").count();
    assert_eq!(done, 2);
}

/// Reads `lines` until a reconnect note satisfies `wanted`, and returns that note; every note
/// read is kept in `notes`.
async fn reconnect_note(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    notes: &mut Vec<String>,
    wanted: impl Fn(&str) -> bool,
) -> String {
    while let Some(line) = lines.next_line().await.unwrap() {
        if line.contains("reconnecting to") {
            notes.push(line.clone());
            if wanted(&line) {
                return line;
            }
        }
    }
    panic!("the watch ended before the note came: {notes:#?}");
}

#[tokio::test]
async fn each_reconnect_note_says_why_that_try_failed() {
    let mut watched = WatchedJob::start().await;
    let url = watched.coordinator.url();
    let mut errors = BufReader::new(watched.watcher.stderr.take().unwrap()).lines();
    watched.coordinator.kill();

    // Nothing listens: the tries after the broken stream are refused connections.
    let mut notes = Vec::new();
    let refused = |note: &str| note.contains("Connection refused");
    reconnect_note(&mut errors, &mut notes, refused).await;
    // Something listens that hangs up on every connection: the notes say so instead.
    let impostor = tokio::net::TcpListener::bind(&watched.listen)
        .await
        .unwrap();
    let hanging_up = tokio::spawn(async move {
        loop {
            let (connection, _) = impostor.accept().await.unwrap();
            drop(connection);
        }
    });
    let other = reconnect_note(&mut errors, &mut notes, |note| !refused(note)).await;
    hanging_up.abort();
    let _ = hanging_up.await;

    watched.restart_and_finish().await;
    let (run, _) = watched.finish().await;
    assert_eq!(run.code, 0, "{run:?} {notes:#?}");
    assert!(other.contains(&format!("reconnecting to {url}")), "{other}");
    let shown: HashSet<&str> = notes
        .iter()
        .map(|note| note.split_once("): ").expect("a note names its error").1)
        .collect();
    assert!(shown.len() >= 3, "each try says its own error: {notes:#?}");
}
