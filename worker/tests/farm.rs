//! The farm end to end with real processes: a coordinator, several `tessera-worker --coordinator`
//! processes with tiny models in the official formats, and a job submitted over gRPC.

mod common;

use common::farm::{
    coordinator_on, download, event_until, job, models, upload_pictures, upscale_job, watch,
    Workers,
};

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};

use tempfile::TempDir;
use tessera_core::loop_options::{Augment, CutMethod, OptimiserKind};
use tessera_core::tiles::{TilePlan, TileSpec};
use tessera_nets::generate::init::LatentInit;
use tessera_nets::generate::Precision;
use tessera_proto::v1;
use tessera_proto::v1::jobs_client::JobsClient;
use tessera_tests::jobs::{results, status, submit};
use tessera_tests::scrape::Scrape;
use tessera_tests::{binary, Service};
use tonic::transport::Channel;

/// An embedded-state coordinator on a free port.
fn coordinator(store: &Path, extra: &[&str]) -> Service {
    coordinator_on("127.0.0.1:0", store, &[&["--embedded"], extra].concat())
}

/// One prompt, one seed, `iterations` iterations, no upscale: a single long generate task.
fn single_render(iterations: u32, checkpoint_every: u32) -> v1::JobSpec {
    let mut spec = job(1);
    spec.seeds = vec![5];
    let settings = spec.settings.as_mut().unwrap();
    settings.iterations = Some(iterations);
    settings.checkpoint_every = Some(checkpoint_every);
    settings.upscale_model = Some("none".into());
    spec
}

/// One worker and a job of one render of `iterations` iterations (checkpointed every
/// `checkpoint_every`); the coordinator should have a short lease, so heartbeats (and the
/// progress reports the tests wait for) come often.
async fn one_worker_on_a_long_render(
    service: &Service,
    models: &Path,
    iterations: u32,
    checkpoint_every: u32,
) -> (Workers, JobsClient<Channel>, String) {
    let worker = Workers::start(1, models, service);
    let mut client = JobsClient::connect(service.url()).await.unwrap();
    let job_id = submit(&mut client, single_render(iterations, checkpoint_every)).await;
    (worker, client, job_id)
}

/// Follows the job's events until a progress report satisfies `reached`, and returns it.
async fn progress_until(
    client: &mut JobsClient<Channel>,
    job: &str,
    reached: impl Fn(&v1::TaskProgress) -> bool,
) -> v1::TaskProgress {
    let event = event_until(
        client,
        job,
        |e| matches!(e, v1::job_event::Event::Progress(p) if reached(p)),
    )
    .await;
    match event {
        v1::job_event::Event::Progress(p) => p,
        _ => unreachable!("event_until returns a progress report"),
    }
}

/// The iterations attempt `attempt` reported, and whether the job succeeded.
fn attempt_iterations(events: &[v1::job_event::Event], attempt: u32) -> (Vec<u32>, bool) {
    let succeeded = matches!(events.last(), Some(v1::job_event::Event::JobDone(d)) if d.state() == v1::JobState::Succeeded);
    let iterations = events
        .iter()
        .filter_map(|e| match e {
            v1::job_event::Event::Progress(p) if p.attempt == attempt => Some(p.iteration),
            _ => None,
        })
        .collect();
    (iterations, succeeded)
}

#[tokio::test]
async fn three_workers_render_and_upscale_a_batch_that_matches_a_local_upscale() {
    let models = models();
    let store = TempDir::new().unwrap();
    let service = coordinator(store.path(), &[]);
    let workers = Workers::start(3, models.path(), &service);
    let mut client = JobsClient::connect(service.url()).await.unwrap();
    let job_id = submit(&mut client, job(20)).await;
    let events = watch(&mut client, &job_id).await;
    match events.last() {
        Some(v1::job_event::Event::JobDone(done)) => {
            assert_eq!(done.state(), v1::JobState::Succeeded, "{events:?}")
        }
        other => panic!("{other:?}"),
    }

    // The tiles of one picture were shared among workers.
    let mut tile_workers: HashMap<u32, HashSet<String>> = HashMap::new();
    for event in &events {
        if let v1::job_event::Event::TaskDone(done) = event {
            if done.kind() == v1::TaskKind::UpscaleTile {
                tile_workers
                    .entry(done.result_index)
                    .or_default()
                    .insert(done.worker_id.clone());
            }
        }
    }
    assert_eq!(tile_workers.len(), 40);
    let tiles: usize = events
        .iter()
        .filter(|e| matches!(e, v1::job_event::Event::TaskDone(d) if d.kind() == v1::TaskKind::UpscaleTile))
        .count();

    // The workers' metrics add up to what the job did.
    let scrapes: Vec<Scrape> = workers
        .metrics
        .iter()
        .map(|&address| Scrape::get(address).unwrap())
        .collect();
    let total = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrapes.iter().map(|s| s.sum(name, labels)).sum()
    };
    for family in tessera_telemetry::WORKER_METRICS {
        assert!(
            scrapes
                .iter()
                .all(|s| s.families.iter().any(|f| f == family)),
            "{family} missing"
        );
    }
    assert_eq!(total("tessera_worker_iterations_total", &[]), 40.0 * 3.0);
    // Each 32x32 picture is cut into 16-pixel tiles read with 4 pixels of context, x4.
    let spec = TileSpec {
        tile: 16,
        pad: 4,
        overlap: 4,
    };
    let plan = TilePlan::new(32, 32, 4, spec).unwrap();
    let per_picture: u32 = plan
        .tiles
        .iter()
        .map(|t| t.input().width * t.input().height * 16)
        .sum();
    let megapixels = total("tessera_worker_upscaled_megapixels_total", &[]);
    let expected = 40.0 * f64::from(per_picture) / 1e6;
    assert!(
        (megapixels - expected).abs() < 1e-9,
        "{megapixels} != {expected}"
    );
    for (kind, count) in [("generate", 40), ("upscale_tile", tiles), ("stitch", 40)] {
        let observed = total("tessera_worker_task_seconds_count", &[("kind", kind)]);
        assert_eq!(observed, count as f64, "{kind}");
    }
    assert_eq!(
        total("tessera_worker_gpu_memory_bytes", &[]),
        0.0,
        "on the CPU"
    );
    assert!(
        tile_workers.values().any(|w| w.len() >= 2),
        "no picture had its tiles done by two workers: {tile_workers:?}"
    );

    // Tasks were leased ahead during tiles and stitches, never during a render.
    let mut ahead = 0;
    for index in 0..3 {
        let tasks = workers.finished_tasks(index);
        for pair in tasks.windows(2) {
            if pair[1]["ahead"] == true {
                ahead += 1;
                assert_ne!(pair[0]["kind"], "generate", "{pair:?}");
            }
        }
    }
    assert!(ahead > 0, "no task was leased ahead");

    // A stitched result equals the local upscale of the generated picture it came from.
    let results = results(&mut client, &job_id).await;
    assert_eq!(results.len(), 40);
    let result = &results[7];
    let final_png = download(service.url(), &result.output.as_ref().unwrap().key).await;
    let generate = client
        .get_task(v1::GetTaskRequest {
            task_id: format!("{job_id}.{}.g", result.index),
        })
        .await
        .unwrap()
        .into_inner();
    let generated = download(service.url(), &generate.output.unwrap().key).await;
    let tile = TileSpec {
        tile: 16,
        pad: 4,
        overlap: 4,
    };
    let local = upscale_locally(models.path(), &generated, tile);
    let farm = image::load_from_memory(&final_png).unwrap().to_rgb8();
    let here = image::load_from_memory(&local).unwrap().to_rgb8();
    assert_eq!(farm.dimensions(), (128, 128));
    assert!(
        farm == here,
        "the farm's picture differs from the local upscale"
    );
}

#[tokio::test]
async fn a_render_follows_the_job_s_loop_choices_in_the_worker_s_precision_and_memory_mode() {
    let (models, store) = (models(), TempDir::new().unwrap());
    let service = coordinator(store.path(), &[]);
    let options = ["--recompute-decoder", "--precision", "fp16-autocast"];
    let _worker = Workers::start_with(1, models.path(), &service, &options);
    let mut client = JobsClient::connect(service.url()).await.unwrap();
    let mut spec = single_render(3, 0);
    let choices = spec.settings.as_mut().unwrap();
    choices.optimiser = Some("adagrad".into());
    choices.cut_method = Some("original".into());
    choices.augments = Some("Ji".into());
    choices.noise_fac = Some(0.2);
    choices.change_prompt_every = Some(2);
    choices.init_noise = Some("pixels".into());
    choices.tv_weight = Some(0.25);
    let job_id = submit(&mut client, spec).await;
    let events = watch(&mut client, &job_id).await;
    let results = results(&mut client, &job_id).await;
    assert_eq!(results.len(), 1, "{events:?}");
    let png = download(service.url(), &results[0].output.as_ref().unwrap().key).await;
    let settings = common::recorded_settings(&png);
    assert!(settings.recompute_decoder);
    assert_eq!(settings.precision, Precision::Fp16Autocast);
    assert_eq!(settings.iterations, 3);
    assert_eq!(
        (settings.optimiser, settings.cut_method, settings.augments),
        (
            OptimiserKind::Adagrad,
            CutMethod::Original,
            vec![Augment::Jitter]
        )
    );
    assert_eq!(
        (
            settings.noise_fac,
            settings.change_prompt_every,
            settings.init
        ),
        (0.2, 2, LatentInit::Pixels)
    );
    assert_eq!(settings.tv_weight, 0.25);
}

#[tokio::test]
async fn a_killed_worker_s_render_resumes_from_its_checkpoint_on_another() {
    let (models, store) = (models(), TempDir::new().unwrap());
    let service = coordinator(store.path(), &["--lease-ms", "2000"]);
    let (mut first, mut client, job_id) =
        one_worker_on_a_long_render(&service, models.path(), 60, 5).await;

    // Wait until the first worker has reported its second checkpoint, then kill it. Started
    // over, the next attempt would report its own first checkpoint, at iteration 5.
    let checkpointed = progress_until(&mut client, &job_id, |p| p.checkpoint_iteration >= 10)
        .await
        .checkpoint_iteration;
    first.kill(0);
    let _second = Workers::start(1, models.path(), &service);

    let events = watch(&mut client, &job_id).await;
    let (resumed, succeeded) = attempt_iterations(&events, 2);
    assert!(succeeded, "{events:?}");
    assert!(
        !resumed.is_empty(),
        "the second attempt reported no progress"
    );
    assert!(
        resumed.iter().all(|&i| i >= checkpointed),
        "attempt 2 went back before the checkpoint at {checkpointed}: {resumed:?}"
    );
}

#[tokio::test]
async fn a_draining_worker_checkpoints_its_render_and_the_next_worker_goes_on_from_there() {
    let (models, store) = (models(), TempDir::new().unwrap());
    let service = coordinator(store.path(), &["--lease-ms", "2000"]);
    // No periodic checkpoints: whatever the next worker resumes from, the drain wrote.
    let (mut first, mut client, job_id) =
        one_worker_on_a_long_render(&service, models.path(), 150, 0).await;
    progress_until(&mut client, &job_id, |p| p.iteration >= 5).await;
    let status = first.drain(0);
    assert!(status.success(), "the drained worker exited with {status}");

    // Deregistered with its checkpoint: the task waits for the next worker, well under way.
    let task = client
        .get_task(v1::GetTaskRequest {
            task_id: format!("{job_id}.0.g"),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(task.state(), v1::TaskState::Queued, "{task:?}");
    // Given back, not lost: no expiry of its budget, no error in its history.
    assert_eq!((task.expiries, task.errors.len()), (0, 0), "{task:?}");
    let drained_at = task.checkpoint_iteration;
    assert!((5..150).contains(&drained_at), "checkpoint at {drained_at}");
    let workers = client
        .list_workers(v1::ListWorkersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(workers.workers.is_empty(), "still registered: {workers:?}");

    let _second = Workers::start(1, models.path(), &service);
    let events = watch(&mut client, &job_id).await;
    let (resumed, succeeded) = attempt_iterations(&events, 2);
    assert!(succeeded, "{events:?}");
    assert!(
        !resumed.is_empty() && resumed.iter().all(|&i| i >= drained_at),
        "attempt 2 did not go on from iteration {drained_at}: {resumed:?}"
    );
}

#[tokio::test]
async fn a_coordinator_killed_mid_job_restarts_and_the_workers_and_the_cli_watch_carry_on() {
    let models = models();
    let dir = TempDir::new().unwrap();
    let listen = format!("127.0.0.1:{}", tessera_tests::free_port());
    let state = dir.path().join("state");
    let extra = ["--embedded", "--state-dir", state.to_str().unwrap()];
    let mut service = coordinator_on(&listen, &dir.path().join("store"), &extra);
    let _workers = Workers::start(2, models.path(), &service);
    let mut client = JobsClient::connect(service.url()).await.unwrap();
    let mut spec = job(4);
    spec.seeds = vec![1];
    let job_id = submit(&mut client, spec).await;
    let watch = tokio::process::Command::new(binary("tessera").unwrap())
        .args(["--coordinator", &service.url(), "watch", &job_id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Kill the coordinator once the job is under way, not before.
    event_until(&mut client, &job_id, |e| {
        matches!(e, v1::job_event::Event::TaskDone(_))
    })
    .await;
    service.kill();
    let service = coordinator_on(&listen, &dir.path().join("store"), &extra);

    let watched = tokio::time::timeout(
        std::time::Duration::from_secs(300),
        watch.wait_with_output(),
    )
    .await
    .expect("the watch ends")
    .unwrap();
    let stdout = String::from_utf8_lossy(&watched.stdout);
    assert!(
        watched.status.success() && stdout.contains("succeeded: 4 result(s) done"),
        "{watched:?}"
    );
    let mut client = JobsClient::connect(service.url()).await.unwrap();
    let status = status(&mut client, &job_id).await;
    assert_eq!(status.state(), v1::JobState::Succeeded, "{status:?}");
    assert_eq!(status.results_done, 4);
}

/// Pictures of every kind, in a way that shows each channel: colour and opacity ramps.
fn pictures_of_every_kind(width: u32, height: u32) -> Vec<(&'static str, image::DynamicImage)> {
    use image::{DynamicImage, ImageBuffer, Luma, LumaA, Rgba};
    let ramp = |x: u32, y: u32| ((x * 255 / width + y * 60) % 256) as u8;
    // The low bits differ from the high ones, so a 16-bit picture narrowed to 8 bits would show.
    let deep = |v: u8| (u16::from(v) * 257) ^ 3;
    vec![
        (
            "rgba8.png",
            DynamicImage::ImageRgba8(ImageBuffer::from_fn(width, height, |x, y| {
                Rgba([ramp(x, y), 90, ramp(y, x), (x * 255 / width) as u8])
            })),
        ),
        (
            "grey-alpha8.png",
            DynamicImage::ImageLumaA8(ImageBuffer::from_fn(width, height, |x, y| {
                LumaA([ramp(x, y), 255 - (y * 255 / height) as u8])
            })),
        ),
        (
            "grey8.png",
            DynamicImage::ImageLuma8(ImageBuffer::from_fn(width, height, |x, y| {
                Luma([ramp(x, y)])
            })),
        ),
        (
            "grey16.png",
            DynamicImage::ImageLuma16(ImageBuffer::from_fn(width, height, |x, y| {
                Luma([deep(ramp(x, y))])
            })),
        ),
        (
            "rgba16.png",
            DynamicImage::ImageRgba16(ImageBuffer::from_fn(width, height, |x, y| {
                Rgba([
                    deep(ramp(x, y)),
                    9000,
                    deep(ramp(y, x)),
                    deep((x * 255 / width) as u8),
                ])
            })),
        ),
    ]
}

/// Uploads `pictures` and upscales them with tiny-sr in one job tiled by `tile`; returns the
/// results, in the pictures' order, once the job succeeded.
async fn upscale_on_the_farm(
    service: &Service,
    pictures: &[(&str, Vec<u8>)],
    tile: TileSpec,
) -> Vec<Vec<u8>> {
    let mut client = JobsClient::connect(service.url()).await.unwrap();
    let images = upload_pictures(&mut client, pictures).await;
    let spec = upscale_job(images, tile);
    let job_id = submit(&mut client, spec).await;
    let events = watch(&mut client, &job_id).await;
    assert!(
        matches!(events.last(), Some(v1::job_event::Event::JobDone(d)) if d.state() == v1::JobState::Succeeded),
        "{events:?}"
    );
    let mut outputs = Vec::new();
    for result in results(&mut client, &job_id).await {
        assert_eq!(result.input_name, pictures[outputs.len()].0);
        outputs.push(download(service.url(), &result.output.unwrap().key).await);
    }
    outputs
}

/// `tessera-worker upscale` of `picture` with the same model and tiles, as PNG bytes.
fn upscale_locally(models: &Path, picture: &[u8], tile: TileSpec) -> Vec<u8> {
    let scratch = TempDir::new().unwrap();
    let (input, output) = (
        scratch.path().join("in.png"),
        scratch.path().join("out.png"),
    );
    std::fs::write(&input, picture).unwrap();
    let local = Command::new(env!("CARGO_BIN_EXE_tessera-worker"))
        .arg("--models")
        .arg(models)
        .args(["upscale", "--model", "tiny-sr"])
        .args(["--tile", &tile.tile.to_string()])
        .args(["--tile-pad", &tile.pad.to_string()])
        .args(["--tile-overlap", &tile.overlap.to_string(), "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert!(
        local.status.success(),
        "{}",
        String::from_utf8_lossy(&local.stderr)
    );
    std::fs::read(&output).unwrap()
}

#[tokio::test]
async fn the_farm_keeps_alpha_greyscale_and_sixteen_bits_exactly_as_a_local_upscale() {
    let models = models();
    let store = TempDir::new().unwrap();
    let service = coordinator(store.path(), &[]);
    let _workers = Workers::start(2, models.path(), &service);
    let pictures: Vec<(&str, Vec<u8>)> = pictures_of_every_kind(40, 24)
        .into_iter()
        .map(|(name, picture)| {
            let mut bytes = Vec::new();
            picture
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .unwrap();
            (name, bytes)
        })
        .collect();
    // Six tiles and a stitch per picture, then one tile that is the result by itself.
    let tiled = TileSpec {
        tile: 16,
        pad: 4,
        overlap: 4,
    };
    let whole = TileSpec { tile: 0, ..tiled };
    for tile in [tiled, whole] {
        let farm = upscale_on_the_farm(&service, &pictures, tile).await;
        for ((name, picture), farm) in pictures.iter().zip(farm) {
            let local = upscale_locally(models.path(), picture, tile);
            let (farm, local) = (
                image::load_from_memory(&farm).unwrap(),
                image::load_from_memory(&local).unwrap(),
            );
            let given = image::load_from_memory(picture).unwrap().color();
            assert_eq!(farm.color(), given, "{name} with {tile:?}");
            assert_eq!(local.color(), given, "{name} with {tile:?}");
            assert_eq!((farm.width(), farm.height()), (160, 96), "{name}");
            assert!(
                farm.as_bytes() == local.as_bytes(),
                "{name} with {tile:?}: the farm's picture differs from the local upscale"
            );
        }
    }
}
