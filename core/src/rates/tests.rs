use super::*;
use crate::job::{JobRequest, JobSource, Limits, ModelCatalog, PromptEntry, Settings};
use crate::plan::plan_job;

fn rates(entries: &[(&str, u64, u64)]) -> Rates {
    entries
        .iter()
        .map(|&(class, ms, amount)| {
            let rate = Rate {
                ms,
                amount,
                samples: 1,
            };
            (class.to_string(), rate)
        })
        .collect()
}

fn job(width: u32, iterations: u32, prompts: usize) -> JobPlan {
    let mut settings = crate::job::SettingsPatch {
        width: Some(width),
        height: Some(width),
        iterations: Some(iterations),
        ..Default::default()
    };
    settings.tile = Some(128);
    let request = JobRequest {
        name: "j".into(),
        priority: 0,
        settings,
        seeds: vec![0],
        source: JobSource::Prompts(
            (0..prompts)
                .map(|i| PromptEntry {
                    text: format!("prompt {i}"),
                    ..Default::default()
                })
                .collect(),
        ),
        sweeps: Vec::new(),
    };
    let catalog = ModelCatalog::default();
    plan_job(
        "j",
        &request,
        &Settings::farm_defaults(),
        &catalog,
        &Limits::default(),
    )
    .unwrap()
}

#[test]
fn work_is_priced_by_its_class_or_the_nearest_render_size() {
    let r = rates(&[("generate 256x256", 1000, 100), ("stitch", 10, 1000)]);
    let render = |side: u32, iterations: u64| Work {
        kind: TaskKind::Generate,
        class: generate_class(side, side),
        amount: iterations,
    };
    assert_eq!(render(256, 50).ms(&r), Some(500));
    // 512x512 is 4 times the pixels of the nearest measured size.
    assert_eq!(render(512, 50).ms(&r), Some(2000));
    let tile = Work {
        kind: TaskKind::UpscaleTile,
        class: "upscale_tile m".into(),
        amount: 10,
    };
    assert_eq!(tile.ms(&r), None);
    assert_eq!(tile.ms(&rates(&[])), None);
    let mut settings = Settings::farm_defaults();
    (settings.width, settings.height, settings.iterations) = (256, 256, 30);
    assert_eq!(task_ms(&r, TaskKind::Generate, &settings), Some(300));
    assert_eq!(task_ms(&r, TaskKind::Stitch, &settings), Some(10));
    assert_eq!(task_ms(&r, TaskKind::UpscaleTile, &settings), None);
}

#[test]
fn a_job_is_priced_task_by_task_and_its_wall_time_bounded_by_its_longest_result() {
    // 2 prompts at 256x256 with 128-pixel tiles: per result one render, 4 tiles, one stitch.
    let plan = job(256, 10, 2);
    let work = plan_work(&plan).unwrap();
    assert_eq!(work.len(), 2);
    let unmeasured = estimate(&work, &rates(&[("generate 256x256", 10, 1)]), 2, 0);
    assert_eq!(unmeasured.tasks, plan.expected);
    assert_eq!(unmeasured.worker_ms, None);
    assert_eq!(
        unmeasured.unmeasured,
        ["upscale_tile realesrgan-x4plus", "stitch"]
    );
    let tile_pixels: u64 = work[0]
        .iter()
        .filter(|w| w.kind == TaskKind::UpscaleTile)
        .map(|w| w.amount)
        .sum();
    assert!(tile_pixels > 256 * 256, "tiles read context too");
    // A render takes 1000 s, a tile 1 ms per pixel it reads, a stitch 1 ms.
    let r = rates(&[
        ("generate 256x256", 100_000, 1),
        ("upscale_tile realesrgan-x4plus", tile_pixels, tile_pixels),
        ("stitch", 1, 1024 * 1024),
    ]);
    let each = 1_000_000 + tile_pixels + 1;
    let one = estimate(&work, &r, 1, 0);
    assert_eq!(one.worker_ms, Some(2 * each));
    assert_eq!(one.wall_ms, Some(2 * each));
    let many = estimate(&work, &r, 8, 0);
    assert_eq!(
        many.wall_ms,
        Some(1_000_000 + tile_pixels.div_ceil(8) + 1),
        "one result's render cannot be shared"
    );
    let behind = estimate(&work, &r, 2, 1000);
    assert_eq!(behind.wall_ms, Some((1000 + 2 * each) / 2));
}
