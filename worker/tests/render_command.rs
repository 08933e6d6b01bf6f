//! `tessera-worker render` as a user runs it: the real binary, tiny checkpoints in the official
//! formats (an OpenAI-style TorchScript CLIP archive, a converted taming-transformers checkpoint
//! with its YAML), a PNG out, and clear errors for what users get wrong.

mod common;

use common::recorded_settings;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use tessera_core::prompt::PromptSpec;
use tessera_nets::generate::augment::Augment;
use tessera_nets::generate::cutouts::CutMethod;
use tessera_nets::generate::init::LatentInit;
use tessera_nets::generate::optim::OptimiserKind;
use tessera_nets::generate::{Precision, Settings};

/// Tiny models, a tiny picture, a few cutouts: what every render here shares.
const TINY: [&str; 8] = [
    "--clip", "vit", "--vqgan", "vq", "--size", "32x32", "--cutn", "2",
];

fn render_command(models: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tessera-worker"));
    command
        .arg("--models")
        .arg(models)
        .arg("render")
        .args(extra);
    command
}

fn render(models: &Path, extra: &[&str]) -> Output {
    render_command(models, extra).output().unwrap()
}

/// Renders with `extra` after the tiny defaults, expecting success; returns the PNG's bytes.
fn render_png(models: &Path, extra: &[&str], out: &Path) -> Vec<u8> {
    let args: Vec<&str> = TINY
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .chain(["--out", out.to_str().unwrap()])
        .collect();
    let output = render(models, &args);
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    std::fs::read(out).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn renders_a_prompt_to_a_png_that_records_its_settings() {
    let models = common::tiny_generation_models();
    let out = models.path().join("lighthouse.png");
    let output = render(
        models.path(),
        &[
            "--clip",
            "vit",
            "--vqgan",
            "vq",
            "--size",
            "32x32",
            "--cutn",
            "2",
            "--prompt",
            "a lighthouse:1|fog:-0.5",
            "--iterations",
            "4",
            "--seed",
            "11",
            "--preview-every",
            "2",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let log = stderr(&output);
    assert!(log.contains("iteration 4/4"), "{log}");
    let bytes = std::fs::read(&out).unwrap();
    let picture = image::load_from_memory(&bytes).unwrap();
    assert_eq!((picture.width(), picture.height()), (32, 32));
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.contains("lighthouse") && text.contains("11"),
        "settings not recorded"
    );
    assert!(out.with_extension("preview.png").exists());
}

#[test]
fn user_mistakes_get_messages_that_say_what_to_fix() {
    let models = common::tiny_generation_models();
    let out = models.path().join("x.png");
    let out = out.to_str().unwrap();
    let tiny: Vec<&str> = TINY.iter().copied().chain(["--out", out]).collect();
    let cases: [(&[&str], &str); 6] = [
        (&["--prompt", "sea:heavy"], "heavy"),
        (
            &["--prompt", "sea", "--size", "big"],
            "--size 'big' is not WxH",
        ),
        (
            &["--prompt", "sea", "--init-image", "/nonexistent/start.png"],
            "start.png",
        ),
        (
            &["--prompt", "sea", "--clip", "ViT-L-14", "--out", out],
            "convert_checkpoint.py",
        ),
        (
            &["--prompt", "sea", "--optimiser", "sgd"],
            "invalid value 'sgd' for '--optimiser <OPTIMISER>'",
        ),
        (&["--iterations", "3"], "no prompt given"),
    ];
    for (i, (args, expected)) in cases.into_iter().enumerate() {
        // The ViT-L-14 case names its own (missing) CLIP, so it leaves the tiny models out.
        let defaults: &[&str] = if i == 3 { &[] } else { &tiny };
        let args: Vec<&str> = defaults
            .iter()
            .filter(|a| !(args.contains(&"--size") && (**a == "--size" || **a == "32x32")))
            .chain(args)
            .copied()
            .collect();
        let output = render(models.path(), &args);
        assert!(!output.status.success(), "{args:?} succeeded");
        let message = stderr(&output);
        assert!(
            message.contains(expected),
            "{args:?}: expected '{expected}' in {message}"
        );
    }
}

#[test]
fn every_setting_of_the_loop_is_a_flag_and_the_png_records_it() {
    let models = common::tiny_generation_models();
    let dir = models.path();
    let base = [
        "--prompt",
        "a lighthouse",
        "--iterations",
        "3",
        "--seed",
        "5",
    ];
    let default = render_png(dir, &base, &dir.join("default.png"));
    let image_prompt = format!("{}:0.5", dir.join("default.png").display());
    let tuned_out = dir.join("tuned.png");
    let tuned_flags = [
        "--image-prompt",
        &image_prompt,
        "--noise-prompt",
        "7:0.5",
        "--init-noise",
        "gradient",
        "--init-weight",
        "0.25",
        "--optimiser",
        "rmsprop",
        "--lr",
        "0.05",
        "--cut-method",
        "original",
        "--cut-pow",
        "1.5",
        "--augments",
        "Af,erasing",
        "--noise-fac",
        "0.2",
        "--change-prompt-every",
        "2",
        "--preview-every",
        "2",
        "--checkpoint-every",
        "2",
        "--precision",
        "fp16-autocast",
        "--recompute-decoder",
    ];
    let tuned_args: Vec<&str> = base.iter().chain(&tuned_flags).copied().collect();
    let tuned = render_png(dir, &tuned_args, &tuned_out);

    let prompts = PromptSpec::parse("a lighthouse", &image_prompt, "7:0.5").unwrap();
    let mut expected = Settings::new(prompts, 5);
    expected.width = 32;
    expected.height = 32;
    expected.iterations = 3;
    expected.cutn = 2;
    expected.init = LatentInit::Gradient;
    expected.init_weight = 0.25;
    expected.optimiser = OptimiserKind::RMSprop;
    expected.learning_rate = 0.05;
    expected.cut_method = CutMethod::Original;
    expected.cut_pow = 1.5;
    expected.augments = vec![Augment::Affine, Augment::Erasing];
    expected.noise_fac = 0.2;
    expected.change_prompt_every = 2;
    expected.preview_every = 2;
    expected.checkpoint_every = 2;
    expected.precision = Precision::Fp16Autocast;
    expected.recompute_decoder = true;
    expected.perceptor_model = "vit".into();
    expected.codec_model = "vq".into();
    assert_eq!(recorded_settings(&tuned), expected);

    let pixels = |png: &[u8]| image::load_from_memory(png).unwrap().to_rgb8().into_raw();
    assert_ne!(
        pixels(&tuned),
        pixels(&default),
        "the flags changed nothing"
    );
    assert!(
        !tuned_out.with_extension("checkpoint").exists(),
        "a finished render leaves its checkpoint behind"
    );
    let no_augments: Vec<&str> = base.iter().chain(&["--augments"]).copied().collect();
    let bare = render_png(dir, &no_augments, &dir.join("bare.png"));
    assert_eq!(recorded_settings(&bare).augments, Vec::<Augment>::new());
}

#[test]
fn a_killed_render_resumed_from_its_checkpoint_gives_the_uninterrupted_picture() {
    let models = common::tiny_generation_models();
    let dir = models.path();
    let flags = [
        "--prompt",
        "a lighthouse|fog:-0.5",
        "--iterations",
        "60",
        "--checkpoint-every",
        "5",
    ];
    let whole = render_png(dir, &flags, &dir.join("whole.png"));

    let out = dir.join("cut.png");
    let args: Vec<&str> = TINY
        .iter()
        .chain(&flags)
        .chain(&["--out", out.to_str().unwrap()])
        .copied()
        .collect();
    let mut child = render_command(dir, &args)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = BufReader::new(child.stderr.take().unwrap());
    let checkpointed = log
        .lines()
        .map(Result::unwrap)
        .find(|line| line.starts_with("checkpoint after iteration 10:"));
    assert!(checkpointed.is_some(), "no checkpoint reported");
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!out.exists(), "the render finished before it was killed");

    let checkpoint = out.with_extension("checkpoint");
    let resume = [
        "--clip",
        "vit",
        "--vqgan",
        "vq",
        "--resume",
        checkpoint.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let output = render(dir, &resume);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stderr(&output).contains("iteration 60/60"));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        whole,
        "resumed picture differs"
    );
    assert!(!checkpoint.exists());
}

#[test]
fn resuming_names_the_conflicting_flag_or_the_unreadable_checkpoint() {
    let models = common::tiny_generation_models();
    let dir = models.path();
    let garbage = dir.join("garbage.checkpoint");
    std::fs::write(&garbage, b"not a checkpoint").unwrap();
    let out = dir.join("x.png");
    let resume = |checkpoint: &Path, extra: &[&str]| {
        let mut args = vec![
            "--clip",
            "vit",
            "--vqgan",
            "vq",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(["--resume", checkpoint.to_str().unwrap()]);
        args.extend(extra);
        stderr(&render(dir, &args))
    };
    let message = resume(&garbage, &["--seed", "3"]);
    assert!(
        message.contains("'--resume <RESUME>' cannot be used with '--seed <SEED>'"),
        "{message}"
    );
    let message = resume(&dir.join("missing.checkpoint"), &[]);
    assert!(
        message.contains("cannot read checkpoint") && message.contains("missing.checkpoint"),
        "{message}"
    );
    let message = resume(&garbage, &[]);
    assert!(
        message.contains("cannot resume") && message.contains("not a Tessera loop checkpoint"),
        "{message}"
    );
    assert!(!out.exists());
}
