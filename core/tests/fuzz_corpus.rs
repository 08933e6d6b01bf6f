//! Replays every committed input of the `prompt_parser` and `prompts_jsonl` fuzz targets
//! (`fuzz/corpus/`) through the functions they fuzz, on the stable toolchain, so CI catches a
//! parser that panics again on an input the fuzzer once found. Each check mirrors its target in
//! `fuzz/fuzz_targets/`.

use std::path::PathBuf;
use tessera_core::job::{
    parse_prompts_jsonl, parse_prompts_text, parse_size, Limits, ModelCatalog, Settings,
};
use tessera_core::prompt::{parse_image_prompts, parse_noise_prompts, parse_story, PromptSpec};

/// The UTF-8 inputs of a target's corpus (the fuzzers skip the others), with their paths.
fn corpus(target: &str) -> Vec<(PathBuf, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| e.unwrap().path());
    let inputs: Vec<(PathBuf, String)> = entries
        .filter_map(|path| {
            let data = std::fs::read(&path).unwrap();
            String::from_utf8(data).ok().map(|text| (path, text))
        })
        .collect();
    assert!(!inputs.is_empty(), "corpus {} is empty", dir.display());
    inputs
}

#[test]
fn prompt_parser_corpus_parses_or_errors_and_round_trips() {
    for (path, input) in corpus("prompt_parser") {
        let mut fields = input.splitn(3, '\n');
        let text = fields.next().unwrap_or_default();
        let images = fields.next().unwrap_or_default();
        let noise = fields.next().unwrap_or_default();
        match PromptSpec::parse(text, images, noise) {
            Ok(spec) => {
                let again = PromptSpec::parse(
                    &spec.text_string(),
                    &spec.images_string(),
                    &spec.noise_string(),
                );
                assert_eq!(Ok(spec), again, "{}", path.display());
            }
            Err(e) => drop(e.to_string()),
        }
        let _ = parse_story(&input).map_err(|e| e.to_string());
        let _ = parse_image_prompts(&input).map_err(|e| e.to_string());
        let _ = parse_noise_prompts(&input).map_err(|e| e.to_string());
    }
}

#[test]
fn prompts_jsonl_corpus_parses_or_errors() {
    let (catalog, limits) = (ModelCatalog::default(), Limits::default());
    for (path, input) in corpus("prompts_jsonl") {
        for entry in parse_prompts_text(&input) {
            assert!(entry.line >= 1, "{}", path.display());
        }
        match parse_prompts_jsonl(&input) {
            Ok(entries) => {
                for entry in entries {
                    let _ = Settings::farm_defaults()
                        .apply(&entry.settings, &catalog, &limits)
                        .map_err(|e| e.to_string());
                    let _ = PromptSpec::parse(&entry.text, "", "").map_err(|e| e.to_string());
                }
            }
            Err(e) => drop(e.to_string()),
        }
        let _ = parse_size(&input).map_err(|e| e.to_string());
    }
}
