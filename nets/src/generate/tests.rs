//! End-to-end tests of the loop on the tiny real networks of `testnets.rs`: every prompt form
//! optimises, negative prompts repel, runs are deterministic, resuming is exact, batching
//! matches single renders, and bad input is reported clearly.

use super::init::LatentInit;
use super::optim::OptimiserKind;
use super::testnets::{tiny_models, TinyCodec, TinyPerceptor};
use super::*;
use crate::generate::cutouts::CutMethod;
use image::RgbImage;
use tch::{Kind, Tensor};
use tessera_core::prompt::PromptSpec;

fn settings(text: &str, images: &str, noise: &str, seed: u64) -> Settings {
    let mut s = Settings::new(PromptSpec::parse(text, images, noise).unwrap(), seed);
    s.width = 32;
    s.height = 32;
    s.iterations = 31;
    s.cutn = 8;
    s
}

/// Runs `s` and returns the progress reports of every iteration.
fn reports(s: &Settings, models: &(TinyPerceptor, TinyCodec)) -> Vec<Progress> {
    let mut all = Vec::new();
    render(s, &models.0, &models.1, &mut |p| all.push(p.clone())).unwrap();
    all
}

fn loss_of(p: &Progress, label: &str) -> f64 {
    p.renders[0]
        .losses
        .iter()
        .find(|(l, _)| l == label)
        .unwrap_or_else(|| panic!("no loss term {label} in {:?}", p.renders[0].losses))
        .1
}

fn write_picture(dir: &std::path::Path, name: &str, seed: u32) -> String {
    let picture = RgbImage::from_fn(40, 24, |x, y| {
        image::Rgb([
            (x * 6 + seed) as u8,
            (y * 10) as u8,
            ((x + y) * 3 * seed) as u8,
        ])
    });
    let path = dir.join(name);
    picture.save(&path).unwrap();
    path.to_string_lossy().into_owned()
}

type TinyRun<'m> = Run<'m, TinyPerceptor, TinyCodec>;

/// Mean total loss under the cutouts of iterations `keys` (iterations the run never steps
/// through, so the same augmentation draws judge the picture before and after).
fn held_out_loss(run: &TinyRun, keys: impl Iterator<Item = u32>) -> f64 {
    let totals: Vec<f64> = keys
        .map(|k| run.evaluate(k)[0].iter().map(|(_, v)| v).sum())
        .collect();
    totals.iter().sum::<f64>() / totals.len() as f64
}

/// The held-out loss before and after 30 iterations of `s`.
fn loss_before_and_after(s: &Settings, models: &(TinyPerceptor, TinyCodec)) -> (f64, f64) {
    let mut run = Run::start(std::slice::from_ref(s), &models.0, &models.1).unwrap();
    let before = held_out_loss(&run, 1000..1008);
    for _ in 0..30 {
        run.step().unwrap();
    }
    (before, held_out_loss(&run, 1000..1008))
}

fn assert_loss_falls(s: &Settings, models: &(TinyPerceptor, TinyCodec), what: &str) {
    let (before, after) = loss_before_and_after(s, models);
    assert!(after < before, "{what}: loss {before} -> {after}");
}

#[test]
fn every_prompt_form_lowers_its_loss_in_30_iterations() {
    let models = tiny_models();
    let dir = tempfile::tempdir().unwrap();
    let style = write_picture(dir.path(), "style.png", 3);
    let forms = [
        settings("a red apple", "", "", 1),
        settings("a red apple:2|green grass:0.5", "", "", 2),
        settings("a red apple:1:0.01", "", "", 3),
        settings("blue sky:-1", "", "", 4),
        settings("", &style, "", 5),
        settings("", "", "42:1", 6),
        settings("blue sky|a cat:-0.3", &format!("{style}:0.5"), "7:0.2", 7),
    ];
    for s in &forms {
        let what = format!(
            "{} / {} / {}",
            s.prompts.text_string(),
            s.prompts.images_string(),
            s.prompts.noise_string()
        );
        assert_loss_falls(s, &models, &what);
    }
}

#[test]
fn every_start_lowers_the_loss_with_the_init_weight_term() {
    let models = tiny_models();
    let dir = tempfile::tempdir().unwrap();
    let init = write_picture(dir.path(), "init.png", 5);
    for start in [
        LatentInit::Image { path: init.into() },
        LatentInit::Pixels,
        LatentInit::Gradient,
        LatentInit::RandomTokens,
    ] {
        let mut s = settings("a red apple", "", "", 8);
        s.init = start.clone();
        s.init_weight = 0.1;
        let r = reports(&s, &models);
        assert_eq!(loss_of(&r[0], "init"), 0.0, "{start:?}: starts at the init");
        assert!(
            loss_of(&r[30], "init") > 0.0,
            "{start:?}: moves away from the init"
        );
        assert_loss_falls(&s, &models, &format!("{start:?}"));
    }
}

/// The picture's total variation (pixels in `[0, 1]`), as the `tv` loss term measures it.
fn picture_variation(image: &RgbImage) -> f64 {
    let (w, h) = image.dimensions();
    let pixels: Vec<f32> = image
        .as_raw()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    let tensor = Tensor::from_slice(&pixels)
        .reshape([i64::from(h), i64::from(w), 3])
        .permute([2, 0, 1])
        .unsqueeze(0);
    loss::total_variation(&tensor).double_value(&[0])
}

#[test]
fn the_tv_weight_smooths_the_picture_and_reports_its_term() {
    let models = tiny_models();
    let picture = |tv_weight: f64| {
        let mut s = settings("a red apple", "", "", 3);
        s.tv_weight = tv_weight;
        let mut last = None;
        let output = render(&s, &models.0, &models.1, &mut |p| last = Some(p.clone())).unwrap();
        (output.image, last.unwrap())
    };
    let (plain, plain_progress) = picture(0.0);
    let (smooth, smooth_progress) = picture(50.0);
    assert!(plain_progress.renders[0]
        .losses
        .iter()
        .all(|(l, _)| l != "tv"));
    assert!(loss_of(&smooth_progress, "tv") > 0.0);
    let (rough, even) = (picture_variation(&plain), picture_variation(&smooth));
    assert!(
        even < rough * 0.8,
        "total variation {even} with tv_weight 50 should be well below {rough} without"
    );
}

#[test]
fn each_story_phase_lowers_its_loss_while_it_is_in_force() {
    let models = tiny_models();
    let mut s = settings("a red apple ^ deep blue ocean ^ green grass", "", "", 10);
    s.change_prompt_every = 10;
    s.iterations = 30;
    let mut run = Run::start(std::slice::from_ref(&s), &models.0, &models.1).unwrap();
    for (phase, label) in [
        "text:a red apple",
        "text:deep blue ocean",
        "text:green grass",
    ]
    .iter()
    .enumerate()
    {
        // Held-out iterations 3000+ cycle through the phases like 0..30 do.
        let keys = || (0..8).map(move |j| 3000 + 10 * phase as u32 + j);
        assert_eq!(run.evaluate(keys().next().unwrap())[0][0].0, *label);
        let before = held_out_loss(&run, keys());
        for _ in 0..10 {
            let p = run.step().unwrap();
            assert_eq!(
                p.renders[0].losses[0].0, *label,
                "iteration {}",
                p.iteration
            );
        }
        let after = held_out_loss(&run, keys());
        assert!(after < before, "phase {phase}: loss {before} -> {after}");
    }
}

#[test]
fn original_cutouts_and_every_optimiser_lower_the_loss() {
    let models = tiny_models();
    for optimiser in [
        OptimiserKind::Adam,
        OptimiserKind::AdamW,
        OptimiserKind::Adagrad,
        OptimiserKind::RMSprop,
    ] {
        let mut s = settings("a red apple", "", "", 10);
        s.cut_method = CutMethod::Original;
        s.cut_pow = 1.5;
        s.optimiser = optimiser;
        s.learning_rate = if optimiser == OptimiserKind::RMSprop {
            0.01
        } else {
            0.1
        };
        assert_loss_falls(&s, &models, &format!("original cutouts, {optimiser:?}"));
    }
}

/// Cosine similarity between the (un-augmented, pooled) picture and a text, as CLIP sees them.
fn similarity(models: &(TinyPerceptor, TinyCodec), image: &RgbImage, text: &str) -> f64 {
    let pixels = init::image_to_tensor(image, tch::Device::Cpu);
    let r = models.0.input_resolution();
    let pooled = pixels.adaptive_avg_pool2d([r, r]);
    let a = models.0.encode_image(&pooled);
    let b = models.0.encode_text(&[text]).unwrap();
    (a * b).sum(Kind::Float).double_value(&[])
}

#[test]
fn a_negative_prompt_lowers_its_similarity() {
    let models = tiny_models();
    let mut start = settings("a red apple:-1", "", "", 11);
    start.iterations = 0;
    let before = render(&start, &models.0, &models.1, &mut |_| {}).unwrap();
    let mut s = start.clone();
    s.iterations = 30;
    let after = render(&s, &models.0, &models.1, &mut |_| {}).unwrap();
    let (b, a) = (
        similarity(&models, &before.image, "a red apple"),
        similarity(&models, &after.image, "a red apple"),
    );
    assert!(a < b - 0.05, "similarity {b} -> {a}");
}

#[test]
fn a_prompt_stopped_above_its_distance_never_moves_the_latent() {
    let models = tiny_models();
    let mut s = settings("a red apple:1:10", "", "", 12);
    s.iterations = 3;
    let mut run = Run::start(std::slice::from_ref(&s), &models.0, &models.1).unwrap();
    let before = run.latents();
    while !run.is_done() {
        run.step().unwrap();
    }
    assert!(before[0].equal(&run.latents()[0]));
}

#[test]
fn same_seed_same_picture_bit_for_bit() {
    let models = tiny_models();
    let mut s = settings("a red apple|blue sky:-0.5", "", "3:0.5", 13);
    s.iterations = 12;
    let a = render(&s, &models.0, &models.1, &mut |_| {}).unwrap();
    let b = render(&s, &models.0, &models.1, &mut |_| {}).unwrap();
    assert_eq!(a.png, b.png);
    assert_eq!(a.losses, b.losses);
    s.seed = 14;
    let c = render(&s, &models.0, &models.1, &mut |_| {}).unwrap();
    assert_ne!(a.image, c.image);
}

/// Runs `s` uninterrupted and from its checkpoint at `k`: latents and pictures must be identical.
fn assert_resume_is_exact(s: &Settings, k: u32) {
    let models = tiny_models();
    let mut checkpoints = Vec::new();
    let whole = render(s, &models.0, &models.1, &mut |p| {
        if let Some(c) = &p.checkpoint {
            checkpoints.push((p.iteration + 1, c.clone()));
        }
    })
    .unwrap();
    let (at, bytes) = checkpoints
        .iter()
        .find(|(i, _)| *i == k)
        .expect("checkpoint at k");
    let run = Run::resume(bytes, &models.0, &models.1).unwrap();
    assert_eq!(run.iteration(), *at);
    let resumed = resume_render(bytes, &models.0, &models.1, &mut |_| {}).unwrap();
    assert_eq!(resumed[0].image, whole.image, "{:?}", s.cut_method);
    assert_eq!(resumed[0].losses, whole.losses);
    assert_eq!(resumed[0].png, whole.png);
}

#[test]
fn resuming_a_checkpoint_gives_the_uninterrupted_picture() {
    let dir = tempfile::tempdir().unwrap();
    let style = write_picture(dir.path(), "style.png", 7);
    let mut s = settings("a red apple ^ green grass:2", &style, "5:0.3", 15);
    s.iterations = 12;
    s.change_prompt_every = 4;
    s.checkpoint_every = 5;
    s.init_weight = 0.2;
    assert_resume_is_exact(&s, 5);
    assert_resume_is_exact(&s, 10);
    s.cut_method = CutMethod::Original;
    s.optimiser = OptimiserKind::AdamW;
    assert_resume_is_exact(&s, 5);
}

#[test]
fn batched_renders_match_renders_one_at_a_time() {
    let models = tiny_models();
    let mut batch = vec![
        settings("a red apple", "", "", 21),
        settings("deep blue ocean:2|fog:-0.5", "", "", 22),
        settings("", "", "9:1", 23),
    ];
    batch[1].optimiser = OptimiserKind::AdamW;
    batch[2].init_weight = 0.3;
    batch[2].init = LatentInit::Gradient;
    for s in &mut batch {
        s.iterations = 10;
    }
    let mut joint = Run::start(&batch, &models.0, &models.1).unwrap();
    let mut alone: Vec<TinyRun> = batch
        .iter()
        .map(|s| Run::start(std::slice::from_ref(s), &models.0, &models.1).unwrap())
        .collect();
    let (mut worst_latent, mut worst_loss) = (0.0f64, 0.0f64);
    for _ in 0..10 {
        let together = joint.step().unwrap();
        for (b, run) in alone.iter_mut().enumerate() {
            let single = run.step().unwrap();
            for ((la, va), (lb, vb)) in single.renders[0]
                .losses
                .iter()
                .zip(&together.renders[b].losses)
            {
                assert_eq!(la, lb);
                worst_loss = worst_loss.max((va - vb).abs());
            }
            let diff = (&run.latents()[0] - &joint.latents()[b])
                .abs()
                .max()
                .double_value(&[]);
            worst_latent = worst_latent.max(diff);
        }
    }
    // Not bitwise: the networks' kernels block a batch of 3 (or 24 cutouts) differently from
    // a batch of 1 (8 cutouts), so sums round differently in the last bits. Measured here:
    // latents within 1.3e-6 and losses within 5e-7 after 10 iterations. Everything else (cutouts,
    // augmentations, noise, losses, optimiser) is computed per render and is bitwise the same.
    eprintln!("batched vs one at a time, 10 iterations: latents within {worst_latent:e}, losses within {worst_loss:e}");
    assert!(worst_latent < 1e-4, "latents differ by {worst_latent}");
    assert!(worst_loss < 1e-5, "losses differ by {worst_loss}");
    for (b, run) in alone.iter().enumerate() {
        let (single, together) = (run.images().remove(0), joint.images().remove(b));
        let worst = single
            .as_raw()
            .iter()
            .zip(together.as_raw())
            .map(|(x, y)| x.abs_diff(*y))
            .max()
            .unwrap();
        assert!(worst <= 1, "render {b}: pixels differ by up to {worst}");
    }
}

#[test]
fn recomputing_the_decoder_changes_nothing() {
    let models = tiny_models();
    for method in [CutMethod::Latest, CutMethod::Original] {
        let mut s = settings("a red apple|fog:-0.5", "", "", 26);
        s.iterations = 5;
        s.cut_method = method;
        let kept = render(&s, &models.0, &models.1, &mut |_| {}).unwrap();
        s.recompute_decoder = true;
        let recomputed = render(&s, &models.0, &models.1, &mut |_| {}).unwrap();
        assert_eq!(kept.image, recomputed.image, "{method:?}");
        assert_eq!(kept.losses, recomputed.losses, "{method:?}");
    }
}

#[test]
fn progress_reports_every_iteration_with_previews_and_checkpoints_when_due() {
    let models = tiny_models();
    let mut s = settings("a red apple", "", "", 24);
    s.iterations = 7;
    s.preview_every = 3;
    s.checkpoint_every = 4;
    let r = reports(&s, &models);
    assert_eq!(
        r.iter().map(|p| p.iteration).collect::<Vec<_>>(),
        (0..7).collect::<Vec<_>>()
    );
    let previews: Vec<u32> = r
        .iter()
        .filter(|p| p.renders[0].preview.is_some())
        .map(|p| p.iteration)
        .collect();
    assert_eq!(previews, vec![0, 3, 6]);
    assert_eq!(
        r[0].renders[0].preview.as_ref().unwrap().dimensions(),
        (32, 32)
    );
    let checkpoints: Vec<u32> = r
        .iter()
        .filter(|p| p.checkpoint.is_some())
        .map(|p| p.iteration)
        .collect();
    assert_eq!(checkpoints, vec![3]);
    assert!(r.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));
}

#[test]
fn the_output_png_records_the_seed_and_settings() {
    let models = tiny_models();
    let mut s = settings("a red apple:2", "", "", 25);
    s.iterations = 2;
    let out = render(&s, &models.0, &models.1, &mut |_| {}).unwrap();
    let decoded = image::load_from_memory(&out.png).unwrap().to_rgb8();
    assert_eq!(decoded, out.image);
    let text = String::from_utf8_lossy(&out.png);
    assert!(text.contains("Seed\u{0}25"));
    assert!(text.contains("Prompt\u{0}a red apple:2"));
}

#[test]
fn bad_input_is_reported_with_what_to_fix() {
    let models = tiny_models();
    let missing = settings("", "/no/such/style.png:0.5", "", 1);
    let err = render(&missing, &models.0, &models.1, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "render 0: image prompt file \"/no/such/style.png\" does not exist: check the path"
    );
    let mut init = settings("a cat", "", "", 1);
    init.init = LatentInit::Image {
        path: "/no/such/init.png".into(),
    };
    let err = render(&init, &models.0, &models.1, &mut |_| {}).unwrap_err();
    assert!(err
        .to_string()
        .contains("init image file \"/no/such/init.png\" does not exist"));
    let mut tiny = settings("a cat", "", "", 1);
    tiny.width = 3;
    let err = render(&tiny, &models.0, &models.1, &mut |_| {}).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("size 3x32 is too small: VQGAN needs at least 4x4"),
        "{err}"
    );
    let mut other = settings("a dog", "", "", 2);
    other.cutn = 4;
    let err = render_batch(
        &[settings("a cat", "", "", 1), other],
        &models.0,
        &models.1,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("render 1 differs from render 0 in `cutn`"),
        "{err}"
    );
    let mut zero = settings("a cat", "", "", 1);
    zero.learning_rate = 0.0;
    let err = render(&zero, &models.0, &models.1, &mut |_| {}).unwrap_err();
    assert_eq!(
        err.to_string(),
        "render 0: setting `learning_rate` = 0 is out of range: a finite number above 0"
    );
    let err = Run::resume(b"garbage", &models.0, &models.1).err().unwrap();
    assert!(
        err.to_string().starts_with("not a Tessera loop checkpoint"),
        "{err}"
    );
}

#[test]
fn finished_runs_refuse_another_step() {
    let models = tiny_models();
    let mut s = settings("a cat", "", "", 1);
    s.iterations = 1;
    let mut run = Run::start(std::slice::from_ref(&s), &models.0, &models.1).unwrap();
    run.step().unwrap();
    let err = run.step().unwrap_err();
    assert_eq!(err.to_string(), "the run has already done all 1 iterations");
    let _ = Tensor::zeros([1], (Kind::Float, tch::Device::Cpu));
}
