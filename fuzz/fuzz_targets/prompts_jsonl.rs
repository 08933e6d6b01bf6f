//! Prompt files (`tessera_core::job::parse_prompts_jsonl` and `parse_prompts_text`) and sizes
//! (`parse_size`) on arbitrary text. A JSONL entry's settings are applied to the farm defaults
//! and checked, and its prompt parsed, as a submission does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::job::{
    parse_prompts_jsonl, parse_prompts_text, parse_size, Limits, ModelCatalog, Settings,
};
use tessera_core::prompt::PromptSpec;

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    for entry in parse_prompts_text(input) {
        assert!(entry.line >= 1, "text entries name their line");
    }
    match parse_prompts_jsonl(input) {
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
    let _ = parse_size(input).map_err(|e| e.to_string());
});
