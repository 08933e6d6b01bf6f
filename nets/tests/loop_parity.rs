//! Whole-trajectory parity of the generation loop with nerdyrodent's `generate.py` (Crowson's
//! method) on the upstream modules: scripts/fixtures/loop_reference.py runs OpenAI CLIP,
//! taming-transformers' VQGAN, kornia's augmentations and torch.optim, reading the random draws
//! our loop recorded (`generate::record`) instead of drawing its own. Both run on random weights
//! of the full-size architectures (ViT-B/32, RN50, vqgan_imagenet_f16_16384,
//! vqgan_gumbel_f8_8192), made from seeds by the script at test time, and after every iteration
//! the latent, each prompt's loss and the decoded picture must agree.
//!
//! Tolerance: the two sides run the same float32 kernels of the same libtorch, composed
//! differently where our code restates Python (kornia's warps and colour maths, the augmentation
//! matrices built in float64 here and float32 there, CLIP and VQGAN layers, torch.optim's update
//! ops), so they differ by reassociation only: measured at most a few 1e-6 on losses and
//! pictures and ~1e-5 on z after three Adam steps of 0.1 (Adam divides the gradient by its own
//! size, so the latent's error is the gradient's relative error times the learning rate). The
//! bounds below leave a factor of about ten over that; a wrong constant, sign, order or term
//! moves these values by 1e-2 or more.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use image::RgbImage;
use tch::{Device, Kind, Tensor};
use tessera_core::prompt::PromptSpec;
use tessera_nets::clip::Clip;
use tessera_nets::fixtures::{max_abs_diff, run_python};
use tessera_nets::generate::augment::{Augment, AugmentDraw};
use tessera_nets::generate::cutouts::{CutDraws, CutMethod};
use tessera_nets::generate::init::{InitDraw, LatentInit};
use tessera_nets::generate::optim::OptimiserKind;
use tessera_nets::generate::record::{Draw, DrawRecorder};
use tessera_nets::generate::{Run, Settings};
use tessera_nets::vqgan::VqModel;

const LOSS_TOLERANCE: f64 = 5e-5;
const PICTURE_TOLERANCE: f64 = 1e-4;
/// Of the reference's largest step at that iteration.
const Z_TOLERANCE: f64 = 0.05;
const Z_OUTLIER_SHARE: f64 = 0.02;
const VIT: &str = "ViT-B-32";
const RN50: &str = "RN50";
const F16: &str = "vqgan_imagenet_f16_16384";
const GUMBEL: &str = "vqgan_gumbel_f8_8192";

/// One run of both loops: prompts in the render syntax, the networks, and the settings that
/// differ from the small defaults of [`base_settings`].
struct Case {
    name: &'static str,
    text: &'static str,
    images: String,
    noise: &'static str,
    clip: &'static str,
    vqgan: &'static str,
    init_image: Option<String>,
    edit: fn(&mut Settings),
}

impl Case {
    fn text(name: &'static str, text: &'static str, edit: fn(&mut Settings)) -> Case {
        Case {
            name,
            text,
            images: String::new(),
            noise: "",
            clip: VIT,
            vqgan: F16,
            init_image: None,
            edit,
        }
    }

    fn with_init_image(self, path: String) -> Case {
        Case {
            init_image: Some(path),
            ..self
        }
    }

    fn settings(&self) -> Settings {
        let spec = PromptSpec::parse(self.text, &self.images, self.noise).unwrap();
        let mut s = base_settings(spec);
        if let Some(path) = &self.init_image {
            s.init = LatentInit::Image { path: path.into() };
        }
        (self.edit)(&mut s);
        s
    }
}

fn base_settings(spec: PromptSpec) -> Settings {
    let mut s = Settings::new(spec, 5);
    s.width = 64;
    s.height = 64;
    s.iterations = 2;
    s.cutn = 4;
    s
}

fn nothing(_: &mut Settings) {}

/// The reference's weights, made once per test process; tests take turns (each loop already
/// uses every core).
fn models_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loop_parity_models");
        let mut args = vec!["scripts/fixtures/loop_reference.py", "models"];
        let dir_str = dir.to_str().unwrap().to_string();
        args.push(&dir_str);
        args.extend([VIT, RN50, F16, GUMBEL]);
        run_python(&args);
        dir
    })
}

fn turn() -> std::sync::MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every draw of a run as named tensors for the reference (see loop_reference.py).
#[derive(Default)]
struct Recorder {
    tensors: Vec<(String, Tensor)>,
}

impl DrawRecorder for Recorder {
    fn record(&mut self, render: usize, draw: Draw<'_>) {
        assert_eq!(render, 0, "one render per case");
        match draw {
            Draw::Init(init) => self.init(init),
            Draw::ImagePrompt { index, draws } => self.cutouts(&format!("image{index}"), draws),
            Draw::Cutouts { iteration, draws } => self.cutouts(&format!("iter{iteration}"), draws),
        }
    }
}

impl Recorder {
    fn put(&mut self, name: String, t: Tensor) {
        self.tensors.push((name, t));
    }

    fn init(&mut self, init: &InitDraw) {
        match init {
            InitDraw::Tokens(ids) => self.put("init.tokens".into(), Tensor::from_slice(ids)),
            InitDraw::Picture(p) => {
                let (w, h) = p.dimensions();
                let t = Tensor::from_slice(p.as_raw()).view([i64::from(h), i64::from(w), 3]);
                self.put("init.pixels".into(), t);
            }
            InitDraw::Gradient(g) => {
                let [r, gr, b] = g.ends.map(i64::from);
                let t = Tensor::from_slice(&[i64::from(g.blue_start), r, gr, b]);
                self.put("init.gradient".into(), t);
            }
        }
    }

    fn cutouts(&mut self, prefix: &str, draws: &CutDraws) {
        match draws {
            CutDraws::Original(crops) => {
                let rows: Vec<i64> = crops.iter().flat_map(|c| [c.size, c.x, c.y]).collect();
                self.put(format!("{prefix}.crops"), rows_of(&rows, 3));
            }
            CutDraws::Latest { augments, noise } => {
                for (j, a) in augments.iter().enumerate() {
                    self.augment(&format!("{prefix}.aug{j}"), a);
                }
                if let Some((facs, normal)) = noise {
                    self.put(format!("{prefix}.noise_facs"), Tensor::from_slice(facs));
                    self.put(format!("{prefix}.noise"), normal.copy());
                }
            }
        }
    }

    /// Per-cutout rows of (applied, parameters...), as kornia's `batch_prob` and parameters.
    fn augment(&mut self, key: &str, draw: &AugmentDraw) {
        fn rows<T>(params: &[Option<T>], width: usize, values: impl Fn(&T) -> Vec<f64>) -> Tensor {
            let flat: Vec<f64> = params
                .iter()
                .flat_map(|p| match p {
                    Some(p) => [vec![1.0], values(p)].concat(),
                    None => vec![0.0; width + 1],
                })
                .collect();
            rows_of(&flat, width as i64 + 1)
        }
        let t = match draw {
            AugmentDraw::Affine(p) => rows(p, 5, |a| {
                vec![a.angle, a.translate.0, a.translate.1, a.shear_x, a.shear_y]
            }),
            AugmentDraw::Perspective(p) => {
                rows(p, 8, |e| e.iter().flat_map(|&(x, y)| [x, y]).collect())
            }
            AugmentDraw::Jitter { factors, order } => {
                let order: Vec<i64> = order.iter().map(|&o| o as i64).collect();
                self.put(format!("{key}.order"), Tensor::from_slice(&order));
                rows(factors, 4, |f| {
                    vec![f.brightness, f.contrast, f.saturation, f.hue]
                })
            }
            AugmentDraw::Erasing(rect) => {
                let r = rect.map_or([0; 5], |r| [1, r.x, r.y, r.w, r.h]);
                Tensor::from_slice(&r)
            }
        };
        self.put(key.to_string(), t);
    }
}

fn rows_of<T: tch::kind::Element>(flat: &[T], width: i64) -> Tensor {
    Tensor::from_slice(flat).view([-1, width])
}

/// The case as generate.py's arguments (loop_reference.py's `case.json`).
fn case_json(case: &Case, s: &Settings) -> serde_json::Value {
    let (init_image, init_noise) = match &s.init {
        LatentInit::RandomTokens => (None, None),
        LatentInit::Image { path } => (Some(path.to_str().unwrap().to_string()), None),
        LatentInit::Pixels => (None, Some("pixels")),
        LatentInit::Gradient => (None, Some("gradient")),
    };
    let augments: Vec<&str> = s
        .augments
        .iter()
        .map(|a| match a {
            Augment::Affine => "affine",
            Augment::Perspective => "perspective",
            Augment::Jitter => "jitter",
            Augment::Erasing => "erasing",
        })
        .collect();
    let optimiser = match s.optimiser {
        OptimiserKind::Adam => "Adam",
        OptimiserKind::AdamW => "AdamW",
        OptimiserKind::Adagrad => "Adagrad",
        OptimiserKind::RMSprop => "RMSprop",
    };
    let method = match s.cut_method {
        CutMethod::Latest => "latest",
        CutMethod::Original => "original",
    };
    serde_json::json!({
        "prompts": case.text,
        "image_prompts": case.images,
        "noise_prompt_seeds": s.prompts.noise.iter().map(|n| n.seed).collect::<Vec<_>>(),
        "noise_prompt_weights": s.prompts.noise.iter().map(|n| n.weight).collect::<Vec<_>>(),
        "init_image": init_image,
        "init_noise": init_noise,
        "init_weight": s.init_weight,
        "size": [s.width, s.height],
        "iterations": s.iterations,
        "cutn": s.cutn,
        "cut_method": method,
        "augments": augments,
        "noise_fac": s.noise_fac,
        "optimiser": optimiser,
        "learning_rate": s.learning_rate,
        "change_prompt_every": s.change_prompt_every,
        "clip": case.clip,
        "vqgan": case.vqgan,
    })
}

/// Our loop's trajectory: after each iteration, the latent, the loss terms (computed before
/// its step, as generate.py's) and the decoded picture.
struct Trajectory {
    z: Tensor,
    losses: Vec<Vec<(String, f64)>>,
    pictures: Tensor,
}

/// Runs `case` on our loop, writing its draws and `case.json` into `dir`.
fn run_ours(case: &Case, clip: &Clip, vq: &VqModel, dir: &Path) -> Trajectory {
    let s = case.settings();
    let mut recorder = Recorder::default();
    let (mut zs, mut losses, mut pictures) = (Vec::new(), Vec::new(), Vec::new());
    {
        let mut run = Run::start_recording(
            std::slice::from_ref(&s),
            clip,
            vq,
            Some(&mut recorder as &mut dyn DrawRecorder),
        )
        .unwrap();
        while !run.is_done() {
            let progress = run.step().unwrap();
            losses.push(progress.renders[0].losses.clone());
            zs.push(run.latents().remove(0));
            pictures.push(run.pixels());
        }
    }
    std::fs::create_dir_all(dir).unwrap();
    Tensor::write_safetensors(&recorder.tensors, dir.join("draws.safetensors")).unwrap();
    let json = serde_json::to_string_pretty(&case_json(case, &s)).unwrap();
    std::fs::write(dir.join("case.json"), json).unwrap();
    let trajectory = Trajectory {
        z: Tensor::stack(&zs, 0),
        losses,
        pictures: Tensor::stack(&pictures, 0),
    };
    let ours = [
        ("z", trajectory.z.contiguous()),
        ("pictures", trajectory.pictures.contiguous()),
    ];
    Tensor::write_safetensors(&ours, dir.join("ours.safetensors")).unwrap();
    trajectory
}

/// How far one case's trajectory is from the reference's, and why it matters.
fn compare(case: &Case, ours: &Trajectory, dir: &Path) -> Result<String, String> {
    let reference: HashMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let mut loss_diff: f64 = 0.0;
    for (i, a) in ours.losses.iter().enumerate() {
        let b = Vec::<f64>::try_from(&reference[&format!("losses{i}")]).unwrap();
        if a.len() != b.len() {
            return Err(format!(
                "iteration {i}: terms {a:?} against the reference's {b:?}"
            ));
        }
        for ((label, x), y) in a.iter().zip(&b) {
            let d = (x - y).abs();
            if d > LOSS_TOLERANCE {
                return Err(format!("iteration {i}: loss {label} {x} against {y}"));
            }
            loss_diff = loss_diff.max(d);
        }
    }
    let mut picture_diff: f64 = 0.0;
    for i in 0..ours.pictures.size()[0] {
        let d = max_abs_diff(&ours.pictures.get(i), &reference["pictures"].get(i));
        if d > PICTURE_TOLERANCE {
            return Err(format!("iteration {i}: the picture differs by {d}"));
        }
        picture_diff = picture_diff.max(d);
    }
    let mut z_share: f64 = 0.0;
    let mut before = reference["z_start"].shallow_clone();
    for i in 0..ours.z.size()[0] {
        let theirs = reference["z"].get(i);
        let tolerance = Z_TOLERANCE * max_abs_diff(&theirs, &before);
        let d = (ours.z.get(i) - &theirs).abs();
        let share = d
            .gt(tolerance)
            .to_kind(Kind::Float)
            .mean(Kind::Float)
            .double_value(&[]);
        if share > Z_OUTLIER_SHARE {
            return Err(format!(
                "iteration {i}: {:.2}% of z differs by over {tolerance:.1e} (max {})",
                share * 100.0,
                d.max().double_value(&[])
            ));
        }
        z_share = z_share.max(share);
        before = theirs;
    }
    let moved = max_abs_diff(&ours.z.get(-1), &reference["z_start"]);
    if moved < Z_TOLERANCE {
        return Err(format!(
            "z moved by {moved} only: too little for the comparison to mean anything"
        ));
    }
    Ok(format!(
        "{}: {} iterations, max |diff| loss {loss_diff:.1e}, picture {picture_diff:.1e}; \
         z beyond {Z_TOLERANCE} of a step: {:.2}% (z moved {moved:.2})",
        case.name,
        ours.losses.len(),
        z_share * 100.0
    ))
}

fn load_clip(models: &Path, name: &str) -> Clip {
    let path = models.join(format!("{name}.safetensors"));
    Clip::load(&path, Device::Cpu, Kind::Float).unwrap()
}

fn load_vqgan(models: &Path, name: &str) -> VqModel {
    let yaml = models.join(format!("{name}.yaml"));
    VqModel::load(
        &yaml,
        &models.join(format!("{name}.safetensors")),
        Device::Cpu,
    )
    .unwrap()
}

/// Runs every case on our loop, then all of them on the reference in one process, and checks
/// each trajectory; reports every case's differences.
fn check(cases: &[Case]) {
    let models = models_dir();
    let _turn = turn();
    let root = tempfile::tempdir().unwrap();
    let root = match std::env::var_os("TESSERA_LOOP_PARITY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => root.path().to_path_buf(),
    };
    let started = Instant::now();
    let mut ours = Vec::new();
    let mut loaded: Option<((&str, &str), Clip, VqModel)> = None;
    for case in cases {
        let pair = (case.clip, case.vqgan);
        if loaded.as_ref().is_none_or(|(p, _, _)| *p != pair) {
            loaded = Some((
                pair,
                load_clip(models, case.clip),
                load_vqgan(models, case.vqgan),
            ));
        }
        let (_, clip, vq) = loaded.as_ref().unwrap();
        ours.push(run_ours(case, clip, vq, &root.join(case.name)));
    }
    let dirs: Vec<String> = cases
        .iter()
        .map(|c| root.join(c.name).to_str().unwrap().to_string())
        .collect();
    let mut args = vec![
        "scripts/fixtures/loop_reference.py",
        "run",
        models.to_str().unwrap(),
    ];
    args.extend(dirs.iter().map(String::as_str));
    let ours_took = started.elapsed();
    run_python(&args);
    eprintln!(
        "our loop {:.1} s, reference {:.1} s",
        ours_took.as_secs_f64(),
        (started.elapsed() - ours_took).as_secs_f64()
    );
    let results: Vec<Result<String, String>> = cases
        .iter()
        .zip(&ours)
        .map(|(case, t)| compare(case, t, &root.join(case.name)))
        .collect();
    for r in &results {
        match r {
            Ok(line) => eprintln!("{line}"),
            Err(e) => eprintln!("FAILED {e}"),
        }
    }
    let failed: Vec<String> = cases
        .iter()
        .zip(&results)
        .filter_map(|(c, r)| r.as_ref().err().map(|e| format!("{}: {e}", c.name)))
        .collect();
    assert!(
        failed.is_empty(),
        "diverged from the reference: {failed:#?}"
    );
}

/// A picture file for image prompts and init images, kept for the test's life.
fn picture(dir: &Path, name: &str, (w, h): (u32, u32), seed: u32) -> String {
    let img = RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            (x * 5 + seed * 40) as u8,
            (y * 7 + x) as u8,
            ((x ^ y) * 3 + seed) as u8,
        ])
    });
    let path = dir.join(name);
    img.save(&path).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn vit_b_32_and_f16_follow_generate_py() {
    let dir = tempfile::tempdir().unwrap();
    let image_prompt = picture(dir.path(), "prompt.png", (48, 40), 1);
    let init_image = picture(dir.path(), "init.png", (64, 64), 2);
    check(&[
        Case::text(
            "weight_stop_negative_joined",
            "a red lighthouse:2:1.2|fog:-0.5|the sea at night:0.7",
            nothing,
        ),
        Case {
            images: format!("{image_prompt}:0.8"),
            noise: "7:0.5",
            ..Case::text("image_and_noise_prompts", "", nothing)
        },
        Case::text("init_image_adamw", "a red lighthouse", |s| {
            s.init_weight = 0.5;
            s.optimiser = OptimiserKind::AdamW;
        })
        .with_init_image(init_image),
        Case::text("random_pixels_adagrad", "a red lighthouse", |s| {
            s.init = LatentInit::Pixels;
            s.optimiser = OptimiserKind::Adagrad;
        }),
        Case::text("random_gradient_rmsprop", "a red lighthouse", |s| {
            s.init = LatentInit::Gradient;
            s.optimiser = OptimiserKind::RMSprop;
        }),
        // Steps long enough to move the latent across codebook cells and into the codebook's
        // box, so the picture and losses change with it (no augmentation noise here: see the
        // module's doc).
        Case::text("original_cut_pow", "a red lighthouse", |s| {
            s.cut_method = CutMethod::Original;
            s.cut_pow = 2.0;
            s.learning_rate = 2.0;
        }),
        Case::text(
            "story_switch",
            "a red lighthouse^a green forest|a cat:0.5",
            |s| {
                s.change_prompt_every = 1;
            },
        ),
    ]);
}

#[test]
fn gumbel_f8_codec_follows_generate_py() {
    check(&[Case {
        vqgan: GUMBEL,
        ..Case::text("gumbel_f8", "a red lighthouse|fog:-0.5", nothing)
    }]);
}

#[test]
fn rn50_perceptor_follows_generate_py() {
    check(&[Case {
        clip: RN50,
        ..Case::text("rn50", "a red lighthouse|fog:-0.5", nothing)
    }]);
}
