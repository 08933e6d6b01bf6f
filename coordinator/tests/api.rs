//! The coordinator as a real process over loopback gRPC, with protocol-only workers: whole jobs,
//! validation, lease expiry with checkpoints, cancellation, restarts and two coordinators on one
//! Redis.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::{coordinator, jobs, spec, watch_to_end};
use tempfile::TempDir;
use tessera_proto::access::Access;
use tessera_proto::transfer::{read_download, upload_messages};
use tessera_proto::v1;
use tessera_tests::jobs::{status, submit};
use tessera_tests::protocol::{workers_client, ProtocolWorker};
use tessera_tests::{RedisServer, Service};
use tokio::sync::Notify;
use tonic::Code;

#[tokio::test]
async fn a_job_runs_to_its_pictures_and_they_can_be_fetched() {
    let store = TempDir::new().unwrap();
    let service = coordinator(store.path(), &["--embedded"], &[]);
    let mut client = jobs(&service).await;
    let job = submit(&mut client, spec(2, true)).await;
    let initial = status(&mut client, &job).await;
    assert_eq!(initial.tasks.unwrap().planned, 2 * (1 + 4 + 1));

    let watcher = {
        let mut client = client.clone();
        let job = job.clone();
        tokio::spawn(async move { watch_to_end(&mut client, &job).await })
    };
    let mut worker = ProtocolWorker::register(&service, "w").await;
    assert_eq!(worker.drain(0).await, 12);

    let done = status(&mut client, &job).await;
    assert_eq!(done.state(), v1::JobState::Succeeded);
    assert_eq!(done.results_done, 2);
    let events = watcher.await.unwrap();
    let started = events
        .iter()
        .filter(|e| matches!(e.event, Some(v1::job_event::Event::TaskStarted(_))))
        .count();
    assert_eq!(started, 12);

    let results = client
        .list_results(v1::ListResultsRequest {
            job_id: job.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(results.total, 2);
    // The result is exactly what the stitch task uploaded, fetched in one go or resumed.
    let result = &results.results[0];
    let output = result.output.clone().unwrap();
    assert_eq!((output.width, output.height), (256, 256));
    let whole = fetch(&mut client, &job, result.index, Vec::new()).await;
    assert_eq!(whole, worker.download(&output.key).await);
    assert_eq!(whole.len() as u64, output.size);
    let resumed = fetch(&mut client, &job, result.index, whole[..1000].to_vec()).await;
    assert_eq!(resumed, whole);
    assert_eq!(
        image::load_from_memory(&whole)
            .unwrap()
            .to_rgb8()
            .dimensions(),
        (256, 256)
    );
}

/// Fetches a result, continuing after the bytes already in `have`.
async fn fetch(
    client: &mut v1::jobs_client::JobsClient<tonic::transport::Channel>,
    job: &str,
    index: u32,
    mut have: Vec<u8>,
) -> Vec<u8> {
    let request = v1::FetchResultRequest {
        job_id: job.into(),
        index,
        offset: have.len() as u64,
    };
    let stream = client.fetch_result(request).await.unwrap().into_inner();
    read_download(stream, &mut have).await.unwrap();
    have
}

#[tokio::test]
async fn bad_submissions_are_refused_whole_with_a_clear_message() {
    let store = TempDir::new().unwrap();
    let service = coordinator(
        store.path(),
        &["--embedded"],
        &["--max-prompts", "5", "--max-iterations", "1000"],
    );
    let mut client = jobs(&service).await;
    let with_source = |source| v1::JobSpec {
        source: Some(source),
        ..spec(1, false)
    };
    let with_settings = |settings: v1::Settings| v1::JobSpec {
        settings: Some(settings),
        ..spec(1, false)
    };
    use v1::job_spec::Source;
    let cases: Vec<(v1::JobSpec, &str)> = vec![
        (
            with_source(Source::PromptsText("\n# nothing\n".into())),
            "no prompts",
        ),
        (
            with_source(Source::PromptsJsonl(
                "{\"prompt\": \"a cat\"}\n{\"prompt\": \"a dog\", \"iterations\": }\n".into(),
            )),
            "line 2",
        ),
        (
            with_settings(v1::Settings {
                width: Some(500),
                ..Default::default()
            }),
            "16",
        ),
        (
            with_settings(v1::Settings {
                vqgan_model: Some("vqgan_imaginary".into()),
                ..Default::default()
            }),
            "vqgan_imaginary",
        ),
        (
            with_source(Source::PromptsText("a\nb\nc\nd\ne\nf\n".into())),
            "5",
        ),
        (
            with_settings(v1::Settings {
                iterations: Some(5000),
                ..Default::default()
            }),
            "1000",
        ),
    ];
    for (spec, needle) in cases {
        let error = client
            .submit_job(v1::SubmitJobRequest { spec: Some(spec) })
            .await
            .expect_err("the submission is refused");
        assert_eq!(error.code(), Code::InvalidArgument, "{}", error.message());
        assert!(
            error.message().contains(needle),
            "'{}' should mention '{needle}'",
            error.message()
        );
    }
    let listed = client
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 0, "nothing was half-created");
    let ok = submit(&mut client, spec(5, false)).await;
    assert_eq!(status(&mut client, &ok).await.tasks.unwrap().queued, 5);
}

#[tokio::test]
async fn a_lost_worker_s_task_resumes_from_its_checkpoint_elsewhere() {
    let store = TempDir::new().unwrap();
    let service = coordinator(store.path(), &["--embedded"], &["--lease-ms", "400"]);
    let mut client = jobs(&service).await;
    let job = submit(&mut client, spec(1, false)).await;

    let mut lost = ProtocolWorker::register(&service, "lost").await;
    let task = lost.lease(0).await.unwrap();
    let state = b"optimiser state at iteration 10".to_vec();
    let checkpoint = lost.upload(&task, "checkpoint.bin", &state).await;
    assert_eq!(
        lost.heartbeat(&task, 10, Some(checkpoint.clone())).await,
        v1::HeartbeatVerdict::Continue
    );
    // `lost` goes silent; the next worker waits for the lease to run out.
    let mut next = ProtocolWorker::register(&service, "next").await;
    let resumed = next.lease(10_000).await.expect("the task is handed on");
    assert_eq!((&resumed.task_id, resumed.attempt), (&task.task_id, 2));
    assert_eq!(resumed.checkpoint_iteration, 10);
    let key = resumed.checkpoint.clone().unwrap().key;
    assert_eq!(next.download(&key).await, state);

    assert_eq!(
        lost.heartbeat(&task, 11, None).await,
        v1::HeartbeatVerdict::LeaseLost
    );
    let header = v1::UploadHeader {
        name: "out.png".into(),
        worker_id: lost.id.clone(),
        task_id: task.task_id.clone(),
        attempt: task.attempt,
    };
    let refused = lost
        .client
        .upload_artifact(upload_messages(header, b"late"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        lost.complete(&task, checkpoint).await,
        v1::CompletionVerdict::Stale
    );
    assert_eq!(next.finish(&resumed).await, v1::CompletionVerdict::Accepted);
    let info = client
        .get_task(v1::GetTaskRequest {
            task_id: task.task_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.expiries, info.worker_id), (1, next.id.clone()));
    assert_eq!(
        status(&mut client, &job).await.state(),
        v1::JobState::Succeeded
    );
}

#[tokio::test]
async fn cancelling_stops_running_work_and_watchers_see_it() {
    let store = TempDir::new().unwrap();
    let service = coordinator(store.path(), &["--embedded"], &[]);
    let mut client = jobs(&service).await;
    let job = submit(&mut client, spec(3, true)).await;
    let mut worker = ProtocolWorker::register(&service, "w").await;
    let task = worker.lease(0).await.unwrap();
    let cancelled = client
        .cancel_job(v1::CancelJobRequest {
            job_id: job.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.state(), v1::JobState::Cancelled);
    assert_eq!(
        worker.heartbeat(&task, 5, None).await,
        v1::HeartbeatVerdict::Cancelled
    );
    assert!(worker.lease(0).await.is_none());
    let events = watch_to_end(&mut client, &job).await;
    match &events.last().unwrap().event {
        Some(v1::job_event::Event::JobDone(done)) => {
            assert_eq!(done.state(), v1::JobState::Cancelled)
        }
        other => panic!("the last event is {other:?}"),
    }
    let missing = client
        .get_job(v1::GetJobRequest {
            job_id: "nosuchjob".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
}

#[tokio::test]
async fn a_killed_coordinator_restarts_and_the_job_goes_on() {
    let redis = RedisServer::start().unwrap();
    let store = TempDir::new().unwrap();
    let state = ["--redis", &redis.url()];
    let mut first = coordinator(store.path(), &state, &[]);
    let mut client = jobs(&first).await;
    let job = submit(&mut client, spec(3, true)).await;
    let mut worker = ProtocolWorker::register(&first, "w").await;
    for _ in 0..4 {
        let task = worker.lease(0).await.unwrap();
        worker.finish(&task).await;
    }
    let running = worker.lease(0).await.unwrap();
    first.kill();

    let second = coordinator(store.path(), &state, &[]);
    let mut client = jobs(&second).await;
    let before = status(&mut client, &job).await;
    assert_eq!(before.tasks.unwrap().done, 4);
    let mut again = ProtocolWorker {
        client: workers_client(&second.url(), &Access::default()).await,
        id: worker.id.clone(),
    };
    assert_eq!(
        again.finish(&running).await,
        v1::CompletionVerdict::Accepted
    );
    again.drain(0).await;
    let after = status(&mut client, &job).await;
    assert_eq!(after.state(), v1::JobState::Succeeded);
    assert_eq!((after.results_done, after.tasks.unwrap().done), (3, 18));
}

#[tokio::test]
async fn two_coordinators_on_one_redis_hand_each_task_out_once() {
    let redis = RedisServer::start().unwrap();
    let store = TempDir::new().unwrap();
    let state = ["--redis", &redis.url()];
    let a = coordinator(store.path(), &state, &[]);
    let b = coordinator(store.path(), &state, &[]);
    let mut client = jobs(&a).await;
    let job = submit(&mut client, spec(10, true)).await;

    let mut handles = Vec::new();
    for (i, service) in [&a, &b, &a, &b].into_iter().enumerate() {
        let mut worker = ProtocolWorker::register(service, &format!("w{i}")).await;
        handles.push(tokio::spawn(async move {
            let mut leased = Vec::new();
            while let Some(task) = worker.lease(300).await {
                assert_eq!(worker.finish(&task).await, v1::CompletionVerdict::Accepted);
                leased.push((task.task_id, task.attempt));
            }
            leased
        }));
    }
    let mut all = Vec::new();
    for handle in handles {
        all.extend(handle.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().map(|(id, _)| id).collect();
    assert_eq!((all.len(), distinct.len()), (60, 60));
    assert!(all.iter().all(|(_, attempt)| *attempt == 1));
    let mut other = jobs(&b).await;
    assert_eq!(
        status(&mut other, &job).await.state(),
        v1::JobState::Succeeded
    );
}

#[tokio::test]
async fn health_reports_serving_over_grpc_and_http() {
    let store = TempDir::new().unwrap();
    let service = coordinator(store.path(), &["--embedded"], &[]);
    let channel = tonic::transport::Endpoint::from_shared(service.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for name in ["", "tessera.v1.Jobs", "tessera.v1.Workers"] {
        let reply = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            reply.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }
    // The same answer in plain HTTP beside /metrics, for probes that cannot speak TLS.
    let metrics = service.metrics.expect("the coordinator serves metrics");
    let mut stream = std::net::TcpStream::connect(metrics).unwrap();
    std::io::Write::write_all(
        &mut stream,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.ends_with("\r\n\r\nSERVING\n"), "{response}");
}

#[tokio::test]
async fn a_coordinator_started_before_its_redis_waits_for_it_then_serves() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let store = TempDir::new().unwrap();
    let port = tessera_tests::free_port();
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tessera-coordinator"))
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
        .args(["--redis", &url, "--store"])
        .arg(store.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        stderr
            .lines()
            .map_while(Result::ok)
            .for_each(|l| drop(lines.send(l)))
    });
    let waiting = received
        .iter()
        .find(|line| line.contains("retrying in"))
        .expect("the coordinator says it waits for Redis");
    assert!(waiting.contains(&url), "the message names Redis: {waiting}");

    let _redis = RedisServer::start_on(port).unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let listening = stdout
        .lines()
        .map_while(Result::ok)
        .find_map(|line| {
            line.split_once("listening on ")
                .map(|(_, a)| a.trim().to_string())
        })
        .expect("the coordinator serves once Redis is up");
    let mut client = v1::jobs_client::JobsClient::connect(format!("http://{listening}"))
        .await
        .unwrap();
    submit(&mut client, spec(1, false)).await;
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts a coordinator keeping its state in `dir`, with artifacts in `store`.
fn journaled_coordinator(store: &Path, dir: &Path) -> Service {
    let dir = dir.to_str().unwrap();
    coordinator(store, &["--embedded", "--state-dir", dir], &[])
}

#[tokio::test]
async fn a_second_coordinator_on_one_state_directory_is_refused_and_the_first_loses_nothing() {
    let (store, state) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut first = journaled_coordinator(store.path(), state.path());
    let mut client = jobs(&first).await;
    let before = submit(&mut client, spec(1, false)).await;

    let mut second = Command::new(env!("CARGO_BIN_EXE_tessera-coordinator"));
    second
        .args(["--listen", "127.0.0.1:0", "--embedded", "--state-dir"])
        .arg(state.path())
        .arg("--store")
        .arg(store.path());
    let refused = Service::start(second).err().expect("the second is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains(&format!(
            "the state directory {} is in use by tessera-coordinator",
            state.path().display()
        )),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {}", first.pid())),
        "{message}"
    );

    let after = submit(&mut client, spec(1, false)).await;
    first.kill();
    let restarted = journaled_coordinator(store.path(), state.path());
    let mut client = jobs(&restarted).await;
    for job in [before, after] {
        assert_eq!(status(&mut client, &job).await.job_id, job);
    }
}

#[tokio::test]
async fn a_coordinator_killed_amid_submissions_keeps_every_job_it_acknowledged() {
    const SUBMITTERS: usize = 6;
    const KILL_AFTER: usize = 200;
    let (store, state) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let mut first = journaled_coordinator(store.path(), state.path());
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let enough = Arc::new(Notify::new());
    let mut submitters = Vec::new();
    for _ in 0..SUBMITTERS {
        let (mut client, acknowledged, enough) =
            (jobs(&first).await, acknowledged.clone(), enough.clone());
        submitters.push(tokio::spawn(async move {
            let request = || v1::SubmitJobRequest {
                spec: Some(spec(1, false)),
            };
            while let Ok(answer) = client.submit_job(request()).await {
                let mut ids = acknowledged.lock().unwrap();
                ids.push(answer.into_inner().job_id);
                if ids.len() == KILL_AFTER {
                    enough.notify_one();
                }
            }
        }));
    }
    enough.notified().await;
    first.kill();
    for submitter in submitters {
        submitter.await.unwrap();
    }
    let journal = std::fs::read(state.path().join("journal.jsonl")).unwrap();
    assert!(
        !journal.contains(&0),
        "the journal holds whole records only"
    );

    let restarted = journaled_coordinator(store.path(), state.path());
    let mut client = jobs(&restarted).await;
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= KILL_AFTER);
    for job in &acknowledged {
        assert_eq!(&status(&mut client, job).await.job_id, job);
    }
}
