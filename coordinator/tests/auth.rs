//! A coordinator with TLS and an auth file, as a real process on Redis: every RPC refuses a
//! missing token, a wrong one, a token of the wrong role and another tenant's; tenants see only
//! their own jobs; tenant limits refuse with the limit named; no token reaches the logs.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::spec;
use tempfile::TempDir;
use tessera_proto::access::{token_hash, Access, Bearer};
use tessera_proto::transfer::upload_messages;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::protocol::{png, workers_client, NoMetadata, ProtocolWorker, WorkersApi};
use tessera_tests::tls::Certificates;
use tessera_tests::{RedisServer, Service};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

const ADMIN: &str = "tsr_admin_0123456789";
const WORKER: &str = "tsr_worker_0123456789";
const ACME: &str = "tsr_acme_0123456789";
const OTHER: &str = "tsr_other_0123456789";
const WRONG: &str = "tsr_wrong_0123456789";

type Jobs = JobsClient<InterceptedService<Channel, Bearer<NoMetadata>>>;

fn auth_file(dir: &Path) -> PathBuf {
    let path = dir.join("auth.yaml");
    let text = format!(
        "tokens:\n\
         \x20 - {{sha256: {}, role: admin, name: ops}}\n\
         \x20 - {{sha256: {}, role: worker, name: node-1}}\n\
         \x20 - {{sha256: {}, role: client, tenant: acme}}\n\
         \x20 - {{sha256: {}, role: client, tenant: other}}\n\
         tenants:\n\
         \x20 acme: {{jobs_in_flight: 2, prompts_per_job: 3, side: 128}}\n\
         \x20 other: {{submissions_per_minute: 1}}\n",
        token_hash(ADMIN),
        token_hash(WORKER),
        token_hash(ACME),
        token_hash(OTHER)
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// A running secured coordinator and what it needs.
struct Farm {
    service: Service,
    certificates: Certificates,
    _redis: RedisServer,
    _dir: TempDir,
}

impl Farm {
    fn start() -> Farm {
        let dir = TempDir::new().unwrap();
        let certificates = Certificates::create(dir.path()).unwrap();
        let redis = RedisServer::start().unwrap();
        let auth = auth_file(dir.path());
        // Debug logging: even then no token may reach the log.
        let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-coordinator"));
        command
            .args([
                "--listen",
                "127.0.0.1:0",
                "--redis",
                &redis.url(),
                "--store",
            ])
            .arg(dir.path().join("store"))
            .args(certificates.server_flags())
            .arg("--auth-file")
            .arg(auth)
            .env("RUST_LOG", "debug");
        let service = Service::start(command).expect("the coordinator starts");
        Farm {
            service,
            certificates,
            _redis: redis,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("https://{}", self.service.addr)
    }

    fn access(&self, token: Option<&str>) -> Access {
        Access {
            tls_ca: Some(self.certificates.ca.clone()),
            token: token.map(str::to_string),
        }
    }

    async fn jobs(&self, token: Option<&str>) -> Jobs {
        let access = self.access(token);
        let channel = access
            .endpoint(&self.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let nothing: NoMetadata = Ok;
        JobsClient::with_interceptor(channel, access.interceptor(nothing).unwrap())
    }

    async fn workers(&self, token: Option<&str>) -> WorkersApi {
        workers_client(&self.url(), &self.access(token)).await
    }
}

fn picture_upload(name: &str) -> impl tokio_stream::Stream<Item = v1::UploadChunk> {
    let header = v1::UploadHeader {
        name: name.into(),
        ..v1::UploadHeader::default()
    };
    upload_messages(header, &png(32, 32, 1))
}

/// What acme owns: a job, one of its tasks and an upload.
struct Owned {
    job: String,
    task: String,
    upload: String,
}

/// Calls every `Jobs` RPC on `owned` things and returns each call's code (`Ok` as `Code::Ok`).
async fn every_jobs_call(client: &mut Jobs, owned: &Owned) -> Vec<(&'static str, Code)> {
    fn code<T>(result: Result<T, Status>) -> Code {
        result.map_or_else(|s| s.code(), |_| Code::Ok)
    }
    let job = || owned.job.clone();
    let image_job = v1::JobSpec {
        source: Some(v1::job_spec::Source::Images(v1::ImageList {
            images: vec![v1::InputImage {
                name: "in.png".into(),
                key: owned.upload.clone(),
            }],
        })),
        ..v1::JobSpec::default()
    };
    vec![
        ("Ping", code(client.ping(v1::PingRequest {}).await)),
        (
            "SubmitJob",
            code(
                client
                    .submit_job(v1::SubmitJobRequest {
                        spec: Some(image_job),
                    })
                    .await,
            ),
        ),
        (
            "UploadInput",
            code(client.upload_input(picture_upload("x.png")).await),
        ),
        (
            "GetJob",
            code(client.get_job(v1::GetJobRequest { job_id: job() }).await),
        ),
        (
            "WatchJob",
            code(
                client
                    .watch_job(v1::WatchJobRequest {
                        job_id: job(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "ListResults",
            code(
                client
                    .list_results(v1::ListResultsRequest {
                        job_id: job(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "FetchResult",
            code(
                client
                    .fetch_result(v1::FetchResultRequest {
                        job_id: job(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "GetTask",
            code(
                client
                    .get_task(v1::GetTaskRequest {
                        task_id: owned.task.clone(),
                    })
                    .await,
            ),
        ),
        (
            "ListJobs",
            code(client.list_jobs(v1::ListJobsRequest::default()).await),
        ),
        (
            "ListWorkers",
            code(client.list_workers(v1::ListWorkersRequest {}).await),
        ),
        (
            "CancelJob",
            code(
                client
                    .cancel_job(v1::CancelJobRequest { job_id: job() })
                    .await,
            ),
        ),
        (
            "DiscardUpload",
            code(
                client
                    .discard_upload(v1::DiscardUploadRequest {
                        key: owned.upload.clone(),
                    })
                    .await,
            ),
        ),
    ]
}

/// Calls every `Workers` RPC and returns each call's code.
async fn every_workers_call(client: &mut WorkersApi, task: &str) -> Vec<(&'static str, Code)> {
    fn code<T>(result: Result<T, Status>) -> Code {
        result.map_or_else(|s| s.code(), |_| Code::Ok)
    }
    vec![
        (
            "Register",
            code(client.register(v1::RegisterRequest::default()).await),
        ),
        (
            "LeaseTask",
            code(client.lease_task(v1::LeaseTaskRequest::default()).await),
        ),
        (
            "Heartbeat",
            code(
                client
                    .heartbeat(v1::HeartbeatRequest {
                        worker_id: "w".into(),
                        task_id: task.into(),
                        attempt: 1,
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "CompleteTask",
            code(
                client
                    .complete_task(v1::CompleteTaskRequest {
                        worker_id: "w".into(),
                        task_id: task.into(),
                        attempt: 1,
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "FailTask",
            code(
                client
                    .fail_task(v1::FailTaskRequest {
                        worker_id: "w".into(),
                        task_id: task.into(),
                        attempt: 1,
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "UploadArtifact",
            code(client.upload_artifact(picture_upload("y.png")).await),
        ),
        (
            "DownloadArtifact",
            code(
                client
                    .download_artifact(v1::DownloadArtifactRequest {
                        key: "uploads/x".into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "Deregister",
            code(client.deregister(v1::DeregisterRequest::default()).await),
        ),
    ]
}

fn assert_all(calls: &[(&str, Code)], expected: Code, who: &str) {
    for (rpc, code) in calls {
        assert_eq!(*code, expected, "{rpc} with {who}");
    }
}

/// Acme's job (two prompts) and upload.
async fn acme_owns(farm: &Farm) -> Owned {
    let mut acme = farm.jobs(Some(ACME)).await;
    let job = acme
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec(2, false)),
        })
        .await
        .unwrap()
        .into_inner()
        .job_id;
    let upload = acme
        .upload_input(picture_upload("mine.png"))
        .await
        .unwrap()
        .into_inner()
        .key;
    Owned {
        task: format!("{job}.g0"),
        job,
        upload,
    }
}

#[tokio::test]
async fn every_rpc_refuses_missing_wrong_misplaced_and_foreign_tokens() {
    let farm = Farm::start();
    let owned = acme_owns(&farm).await;
    let task = farm
        .jobs(Some(ADMIN))
        .await
        .list_results(v1::ListResultsRequest {
            job_id: owned.job.clone(),
            ..Default::default()
        })
        .await;
    assert!(task.is_ok(), "an admin sees every tenant's jobs: {task:?}");

    for (token, who) in [(None, "no token"), (Some(WRONG), "an unknown token")] {
        let calls = every_jobs_call(&mut farm.jobs(token).await, &owned).await;
        assert_all(&calls, Code::Unauthenticated, who);
        let calls = every_workers_call(&mut farm.workers(token).await, &owned.task).await;
        assert_all(&calls, Code::Unauthenticated, who);
    }
    let calls = every_jobs_call(&mut farm.jobs(Some(WORKER)).await, &owned).await;
    assert_all(&calls, Code::PermissionDenied, "a worker token");
    for (token, who) in [(ACME, "a client token"), (ADMIN, "an admin token")] {
        let calls = every_workers_call(&mut farm.workers(Some(token)).await, &owned.task).await;
        assert_all(&calls, Code::PermissionDenied, who);
    }

    // Another tenant: acme's job, task and upload do not exist for it, and it sees no workers.
    let mut other = farm.jobs(Some(OTHER)).await;
    let calls = every_jobs_call(&mut other, &owned).await;
    let expected = [
        ("Ping", Code::Ok),
        ("SubmitJob", Code::InvalidArgument),
        ("UploadInput", Code::Ok),
        ("GetJob", Code::NotFound),
        ("WatchJob", Code::NotFound),
        ("ListResults", Code::NotFound),
        ("FetchResult", Code::NotFound),
        ("GetTask", Code::NotFound),
        ("ListJobs", Code::Ok),
        ("ListWorkers", Code::PermissionDenied),
        ("CancelJob", Code::NotFound),
        ("DiscardUpload", Code::NotFound),
    ];
    assert_eq!(calls, expected);
    let listed = other
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 0, "another tenant lists none of acme's jobs");

    // The owner is served, and a worker token is what leases.
    let mut acme = farm.jobs(Some(ACME)).await;
    let listed = acme
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap();
    assert_eq!(listed.into_inner().jobs[0].job_id, owned.job);
    let mut worker =
        ProtocolWorker::register_at(&farm.url(), &farm.access(Some(WORKER)), "w").await;
    assert_eq!(
        worker.drain(0).await,
        2,
        "the worker runs acme's two renders"
    );
    let done = acme
        .get_job(v1::GetJobRequest {
            job_id: owned.job.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.state(), v1::JobState::Succeeded);

    // Plain text to the TLS port gets nowhere.
    let plain = Access::default()
        .endpoint(&format!("http://{}", farm.service.addr))
        .unwrap()
        .connect()
        .await;
    if let Ok(channel) = plain {
        let refused = JobsClient::new(channel).ping(v1::PingRequest {}).await;
        assert!(refused.is_err(), "a plain-text call was answered");
    }

    let log = farm.service.log();
    for token in [ADMIN, WORKER, ACME, OTHER, WRONG] {
        assert!(!log.contains(token), "the log shows token {token}:\n{log}");
    }
}

#[tokio::test]
async fn tenant_limits_refuse_with_the_limit_named_and_lose_nothing() {
    let farm = Farm::start();
    let mut acme = farm.jobs(Some(ACME)).await;
    let submit = |prompts: usize| v1::SubmitJobRequest {
        spec: Some(spec(prompts, false)),
    };
    let refused = acme.submit_job(submit(4)).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("the limit is 3"), "{refused:?}");
    let mut big = spec(1, false);
    big.settings.as_mut().unwrap().width = Some(256);
    let refused = acme
        .submit_job(v1::SubmitJobRequest { spec: Some(big) })
        .await
        .unwrap_err();
    assert!(refused.message().contains("128"), "{refused:?}");

    let first = acme
        .submit_job(submit(1))
        .await
        .unwrap()
        .into_inner()
        .job_id;
    acme.submit_job(submit(1)).await.unwrap();
    let refused = acme.submit_job(submit(1)).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(refused.message().contains("jobs_in_flight"), "{refused:?}");
    // The other tenant is not held back by acme's jobs, and the admin is not limited.
    let mut other = farm.jobs(Some(OTHER)).await;
    other.submit_job(submit(1)).await.unwrap();
    farm.jobs(Some(ADMIN))
        .await
        .submit_job(submit(5))
        .await
        .unwrap();
    // A second submission in the same minute is refused; if the clock crossed a minute
    // between the two, the third is in the same minute as the second.
    let second = other.submit_job(submit(1)).await;
    let refused = match second {
        Err(status) => status,
        Ok(_) => other.submit_job(submit(1)).await.unwrap_err(),
    };
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("submissions_per_minute"),
        "{refused:?}"
    );

    // Ending a job frees its place; everything accepted is still there.
    acme.cancel_job(v1::CancelJobRequest { job_id: first })
        .await
        .unwrap();
    acme.submit_job(submit(1)).await.unwrap();
    let listed = acme
        .list_jobs(v1::ListJobsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.total, 3);
}

#[tokio::test]
async fn an_upscale_job_is_held_to_its_pictures_not_to_the_render_size() {
    let farm = Farm::start();
    let mut acme = farm.jobs(Some(ACME)).await;
    let upload = acme
        .upload_input(picture_upload("crop.png"))
        .await
        .unwrap()
        .into_inner()
        .key;
    let spec = v1::JobSpec {
        name: "crop".into(),
        settings: Some(v1::Settings {
            upscale_model: Some("realesrgan-x4plus".into()),
            ..v1::Settings::default()
        }),
        source: Some(v1::job_spec::Source::Images(v1::ImageList {
            images: vec![v1::InputImage {
                name: "crop.png".into(),
                key: upload,
            }],
        })),
        ..v1::JobSpec::default()
    };
    // Acme's pictures may be 128 pixels a side; the farm's default render is 496.
    let accepted = acme
        .submit_job(v1::SubmitJobRequest { spec: Some(spec) })
        .await
        .unwrap()
        .into_inner();
    assert!(accepted.status.unwrap().upscale_only);
}
