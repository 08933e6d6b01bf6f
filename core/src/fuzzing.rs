//! The checks of the `prompt_parser` and `prompts_jsonl` fuzz targets (`fuzz/`), kept here so
//! the targets and the stable replay of their corpora (`core/tests/fuzz_corpus.rs`) run the
//! same code. Each panics when a parser breaks its promise; `origin` names the input in the
//! message.

use crate::job::{
    parse_prompts_json, parse_prompts_jsonl, parse_prompts_text, parse_size, Limits, ModelCatalog,
    Settings,
};
use crate::prompt::{parse_image_prompts, parse_noise_prompts, parse_story, PromptSpec};

/// The prompt language on `input`, split at its first two newlines into the text, image and
/// noise fields: it parses or gives an error that displays, and a parsed prompt written back
/// parses to the same prompt (how it is stored in PNG metadata and logs). Each parser also
/// sees the whole input, newlines included.
pub fn prompt_parser(input: &str, origin: &str) {
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
            assert_eq!(Ok(spec), again, "{origin}: written back, parses the same");
        }
        Err(e) => drop(e.to_string()),
    }
    let _ = parse_story(input).map_err(|e| e.to_string());
    let _ = parse_image_prompts(input).map_err(|e| e.to_string());
    let _ = parse_noise_prompts(input).map_err(|e| e.to_string());
}

/// Prompt files and sizes on `input`: text entries name their line, and a JSONL or JSON entry's
/// settings are applied to the farm defaults and checked, and its prompt parsed, as a
/// submission does.
pub fn prompts_jsonl(input: &str, origin: &str) {
    for entry in parse_prompts_text(input).unwrap_or_default() {
        assert!(entry.line >= 1, "{origin}: text entries name their line");
    }
    for parsed in [parse_prompts_jsonl(input), parse_prompts_json(input)] {
        match parsed {
            Ok(entries) => {
                let (catalog, limits) = (ModelCatalog::default(), Limits::default());
                for entry in entries {
                    let _ = Settings::farm_defaults()
                        .apply(&entry.settings, &catalog, &limits)
                        .map_err(|e| e.to_string());
                    let _ = PromptSpec::parse(&entry.text, "", "").map_err(|e| e.to_string());
                }
            }
            Err(e) => drop(e.to_string()),
        }
    }
    let _ = parse_size(input).map_err(|e| e.to_string());
}
