//! The coordinator's link to Redis on one host, with real workers: a whole job through a Redis
//! that speaks only TLS (`rediss://`, redis-server's own TLS port with test certificates), and
//! a worker that registers again when the coordinator's state was reset under it (762affc),
//! then takes the next job.

mod common;

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::farm::{coordinator_on, download, job, models, Workers};
use tempfile::TempDir;
use tessera_core::task::sha256_hex;
use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;
use tessera_tests::follow::{jobs, Follower};
use tessera_tests::jobs::{results, submit};
use tessera_tests::tls::Certificates;
use tessera_tests::{free_port, RedisServer};

/// A `redis-server` that listens only on a TLS port; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
}

impl TlsRedis {
    fn start(certificates: &Certificates, dir: &std::path::Path) -> TlsRedis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&certificates.cert)
            .arg("--tls-key-file")
            .arg(&certificates.key)
            .arg("--tls-ca-cert-file")
            .arg(&certificates.ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/setup.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        TlsRedis { child, port }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `spec` (one prompt) to its end and checks every result is there, intact, once;
/// returns the job's events.
async fn run_job(url: &str, spec: v1::JobSpec) -> Vec<Event> {
    let renders = spec.seeds.len();
    let job_id = submit(&mut jobs(url).await, spec).await;
    let mut follower = Follower::new(url, &job_id);
    follower.until_end().await;
    let Some(Event::JobDone(done)) = follower.events.last() else {
        panic!("{:?}", follower.events)
    };
    assert_eq!(done.state(), v1::JobState::Succeeded, "{done:?}");
    let results = results(&mut jobs(url).await, &job_id).await;
    assert_eq!(results.len(), renders);
    for result in results {
        let output = result.output.unwrap();
        let bytes = download(url.to_string(), &output.key).await;
        assert_eq!(sha256_hex(&bytes), output.sha256, "{}", output.key);
    }
    follower.events
}

#[tokio::test]
async fn a_whole_job_runs_through_a_redis_that_speaks_only_tls() {
    let dir = TempDir::new().unwrap();
    let certificates = Certificates::create(dir.path()).unwrap();
    let redis = TlsRedis::start(&certificates, dir.path());
    let url = format!("rediss://127.0.0.1:{}/0", redis.port);
    let ca = certificates.ca.display().to_string();
    let flags = ["--redis", url.as_str(), "--redis-ca", ca.as_str()];
    let service = coordinator_on("127.0.0.1:0", &dir.path().join("store"), &flags);
    let models = models();
    let _workers = Workers::start(2, models.path(), &service);
    let events = run_job(&service.url(), job(1)).await;
    // Every task went through that Redis, the only one, reached on its TLS port alone.
    let done = events.iter().filter(|e| matches!(e, Event::TaskDone(_)));
    assert_eq!(done.count(), 12);
}

#[tokio::test]
async fn a_worker_registers_again_when_the_coordinators_state_was_reset_and_takes_work() {
    let dir = TempDir::new().unwrap();
    let mut redis = RedisServer::start().unwrap();
    let redis_url = redis.url();
    let flags = ["--redis", redis_url.as_str(), "--lease-ms", "2000"];
    let service = coordinator_on("127.0.0.1:0", &dir.path().join("store"), &flags);
    let models = models();
    let workers = Workers::start(1, models.path(), &service);
    let mut first = job(1);
    first.seeds = vec![1];
    run_job(&service.url(), first).await;

    // Redis without persistence restarts empty: the coordinator no longer knows the worker.
    redis.restart().unwrap();
    let said = "no longer knew this worker; registered again as";
    let deadline = Instant::now() + Duration::from_secs(60);
    while !workers.log(0).contains(said) {
        assert!(Instant::now() < deadline, "{}", workers.log(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Registered again, it does the next job: the coordinator has no other worker.
    let mut second = job(1);
    second.seeds = vec![2];
    run_job(&service.url(), second).await;
    let listed = jobs(&service.url())
        .await
        .list_workers(v1::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner()
        .workers;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].tasks_done, 6, "{listed:?}");
}
