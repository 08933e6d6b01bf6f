//! A whole job with its artifacts in S3, as the gpu-cluster overlay runs it: a coordinator on
//! Redis with `--store s3://tessera/farm` and the `AWS_*` variables pointed at a real S3 API
//! (moto's server on loopback), real `tessera-worker` processes rendering and upscaling in
//! tiles, and `tessera fetch` checking every result's SHA-256. On the way, S3 suffers what it
//! suffers in production: a picture is deleted behind the coordinator's back (its render runs
//! again, as for a corrupt picture in a local store), and the endpoint stops answering while
//! the workers upload and download (they retry with backoff, the coordinator names the
//! endpoint, and nothing is lost).

mod common;

use std::ffi::OsStr;
use std::time::{Duration, Instant};

use common::farm::{coordinator_command, job, models, watch, Workers};
use tessera_core::task::sha256_hex;
use tessera_proto::access::Access;
use tessera_proto::v1;
use tessera_proto::v1::job_event::Event;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::jobs::{results, status, task};
use tessera_tests::protocol::ProtocolWorker;
use tessera_tests::s3::S3Server;
use tessera_tests::{binary, RedisServer, Service};

/// The store URL, as the overlay's `TESSERA_STORE` has it (bucket and prefix).
const STORE: &str = "s3://tessera/farm";

/// Waits until `log()` contains `text`, for at most two minutes.
async fn until_logged(what: &str, text: &str, log: impl Fn() -> String) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !log().contains(text) {
        assert!(
            Instant::now() < deadline,
            "{what} never said {text:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_job_on_s3_survives_a_deleted_picture_and_an_outage_and_fetches_intact() {
    let models = models();
    let s3 = S3Server::start().unwrap();
    let redis = RedisServer::start().unwrap();
    let mut command =
        coordinator_command("127.0.0.1:0", OsStr::new(STORE), &["--redis", &redis.url()]);
    command.envs(s3.env());
    let service = Service::start(command).unwrap();
    let url = service.url();
    let mut client = JobsClient::connect(url.clone()).await.unwrap();
    let spec = job(1);
    let job_id = tessera_tests::jobs::submit(&mut client, spec).await;

    // A stand-in worker hands one render back; its picture is in the bucket, under the prefix.
    let known = ["vit", "vq", "tiny-sr"];
    let mut stand_in =
        ProtocolWorker::register_with(&url, &Access::default(), "stand-in", &known).await;
    let render = stand_in.lease(5_000).await.expect("a render is queued");
    assert_eq!(
        stand_in.finish(&render).await,
        v1::CompletionVerdict::Accepted
    );
    let picture = task(&mut client, &render.task_id).await.output.unwrap();
    let object = format!("farm/{}", picture.key);
    assert!(
        s3.keys("farm/jobs/").unwrap().contains(&object),
        "{object} is stored in S3"
    );

    // Deleted behind the coordinator's back, then the endpoint goes away; real workers start.
    s3.delete(&object).unwrap();
    s3.relay().cut();
    let workers = Workers::start(2, models.path(), &service);

    // The other render's upload and the tiles' downloads fail while S3 is away: the
    // coordinator says which store and endpoint, the workers retry, and nothing fails.
    let endpoint = format!("artifact store: {STORE} at {}", s3.endpoint());
    until_logged("the coordinator", &endpoint, || service.log()).await;
    until_logged("a worker", &endpoint, || workers.log(0) + &workers.log(1)).await;
    let during = status(&mut client, &job_id).await.tasks.unwrap();
    assert_eq!(during.failed, 0, "{during:?}");
    s3.relay().restore();

    // The job completes: the deleted picture was made again by its render, with no failure
    // counted against anyone.
    let events = watch(&mut client, &job_id).await;
    let Some(Event::JobDone(done)) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(
        (done.state(), done.results_done),
        (v1::JobState::Succeeded, 2),
        "{events:?}"
    );
    let redone = events.iter().any(|e| {
        matches!(e, Event::TaskRequeued(r) if r.task_id == render.task_id
            && r.reason.contains(&format!("its output {} is corrupt", picture.key)))
    });
    assert!(
        redone,
        "the render whose picture was deleted ran again: {events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::TaskFailed(_))),
        "{events:?}"
    );
    assert_eq!(task(&mut client, &render.task_id).await.failures, 0);

    // `tessera fetch` gets every result from S3 and checks it; each is in the bucket.
    let out = tempfile::TempDir::new().unwrap();
    let fetch = std::process::Command::new(binary("tessera").unwrap())
        .args(["--coordinator", &url, "fetch", &job_id, "-o"])
        .arg(out.path())
        .output()
        .unwrap();
    assert!(
        fetch.status.success(),
        "{}",
        String::from_utf8_lossy(&fetch.stderr)
    );
    let stored = s3.keys("farm/jobs/").unwrap();
    for result in results(&mut client, &job_id).await {
        let artifact = result.output.unwrap();
        assert!(
            stored.contains(&format!("farm/{}", artifact.key)),
            "{}",
            artifact.key
        );
        let fetched = std::fs::read_dir(out.path())
            .unwrap()
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .any(|bytes| sha256_hex(&bytes) == artifact.sha256);
        assert!(fetched, "{} was fetched intact", artifact.key);
    }
}
