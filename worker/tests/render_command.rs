//! `tessera-worker render` as a user runs it: the real binary, tiny checkpoints in the official
//! formats (an OpenAI-style TorchScript CLIP archive, a converted taming-transformers checkpoint
//! with its YAML), a PNG out, and clear errors for what users get wrong.

mod common;

use std::path::Path;
use std::process::{Command, Output};

fn render(models: &Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tessera-worker"))
        .arg("--models")
        .arg(models)
        .args(["render", "--cutn", "2"])
        .args(extra)
        .output()
        .unwrap()
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
    let tiny = [
        "--clip", "vit", "--vqgan", "vq", "--size", "32x32", "--out", out,
    ];
    let cases: [(&[&str], &str); 4] = [
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
    ];
    for (i, (args, expected)) in cases.into_iter().enumerate() {
        // The last case names its own (missing) CLIP, so it leaves the tiny models out.
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
