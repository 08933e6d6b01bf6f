//! Pausing and resuming a job on a real farm (issue 22, item 1): a coordinator process and a
//! real `tessera-worker` rendering with the tiny models. Pausing checkpoints the running render
//! at its next heartbeat and gives its task back; nothing of the job is leased while paused;
//! resuming finishes the render from that checkpoint with the same picture as a render that
//! was never paused.

mod common;

use common::farm::{coordinator_on, download, event_until, job, models, watch, Workers};

use tempfile::TempDir;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::jobs::{results, status, submit, task};
use tonic::transport::Channel;

/// One render of one prompt and seed, no upscale, no periodic checkpoints: whatever a resumed
/// attempt starts from, the pause wrote.
fn single_render() -> v1::JobSpec {
    let mut spec = job(1);
    spec.seeds = vec![11];
    let settings = spec.settings.as_mut().unwrap();
    settings.iterations = Some(120);
    settings.checkpoint_every = Some(0);
    settings.upscale_model = Some("none".into());
    spec
}

/// The finished picture of a one-result job.
async fn picture(client: &mut JobsClient<Channel>, url: &str, job: &str) -> Vec<u8> {
    let result = results(client, job).await.remove(0);
    let output = result.output.expect("the result is done");
    download(url.to_string(), &output.key).await
}

#[tokio::test]
async fn a_paused_render_is_checkpointed_given_back_and_resumed_to_the_same_picture() {
    let (models, store) = (models(), TempDir::new().unwrap());
    let service = coordinator_on(
        "127.0.0.1:0",
        store.path(),
        &["--embedded", "--lease-ms", "2000"],
    );
    let _worker = Workers::start(1, models.path(), &service);
    let mut client = JobsClient::connect(service.url()).await.unwrap();

    let uninterrupted = submit(&mut client, single_render()).await;
    let events = watch(&mut client, &uninterrupted).await;
    assert!(
        matches!(events.last(), Some(v1::job_event::Event::JobDone(d)) if d.state() == v1::JobState::Succeeded)
    );

    let paused = submit(&mut client, single_render()).await;
    event_until(
        &mut client,
        &paused,
        |e| matches!(e, v1::job_event::Event::Progress(p) if p.iteration >= 5),
    )
    .await;
    let request = v1::PauseJobRequest {
        job_id: paused.clone(),
    };
    let reply = client.pause_job(request).await.unwrap().into_inner();
    assert!(reply.paused, "{reply:?}");

    // The worker is told at its next heartbeat, checkpoints and gives the render back.
    let given_back = event_until(
        &mut client,
        &paused,
        |e| matches!(e, v1::job_event::Event::TaskRequeued(r) if r.reason.contains("paused")),
    )
    .await;
    let render = task(&mut client, &format!("{paused}.0.g")).await;
    assert_eq!(render.state(), v1::TaskState::Queued, "{given_back:?}");
    assert_eq!((render.expiries, render.errors.len()), (0, 0), "{render:?}");
    let paused_at = render.checkpoint_iteration;
    assert!((5..120).contains(&paused_at), "checkpoint at {paused_at}");
    let waiting = status(&mut client, &paused).await;
    assert!(
        waiting.paused && waiting.waiting_for.contains("paused"),
        "{waiting:?}"
    );
    // The idle worker asks for work all the while; the paused job's render is not offered.
    let workers = client
        .list_workers(v1::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        workers.workers.iter().all(|w| w.current_task.is_empty()),
        "{workers:?}"
    );
    assert_eq!(
        task(&mut client, &render.task_id).await.attempt,
        1,
        "leased while paused"
    );

    let request = v1::ResumeJobRequest {
        job_id: paused.clone(),
    };
    let reply = client.resume_job(request).await.unwrap().into_inner();
    assert!(!reply.paused, "{reply:?}");
    let events = watch(&mut client, &paused).await;
    let resumed: Vec<u32> = events
        .iter()
        .filter_map(|e| match e {
            v1::job_event::Event::Progress(p) if p.attempt == 2 => Some(p.iteration),
            _ => None,
        })
        .collect();
    assert!(
        !resumed.is_empty() && resumed.iter().all(|&i| i >= paused_at),
        "attempt 2 did not go on from iteration {paused_at}: {resumed:?}"
    );
    let url = service.url();
    assert!(
        picture(&mut client, &url, &paused).await
            == picture(&mut client, &url, &uninterrupted).await,
        "the paused and resumed render differs from the uninterrupted one"
    );
}
