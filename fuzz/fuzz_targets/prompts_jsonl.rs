//! Prompt files (`tessera_core::job::parse_prompts_jsonl` and `parse_prompts_text`) and sizes
//! (`parse_size`) on arbitrary text. A JSONL entry's settings are applied to the farm defaults
//! and checked, and its prompt parsed, as a submission does.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = std::str::from_utf8(data) {
        fuzzing::prompts_jsonl(input, "fuzz input");
    }
});
