//! The prompt language (`tessera_core::prompt`) on arbitrary text: the input is split at its
//! first two newlines into the text, image and noise prompt fields. Every input must parse or
//! give an error that displays, and a parsed prompt written back must parse to the same prompt
//! (that is how it is stored in PNG metadata and logs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::prompt::{parse_image_prompts, parse_noise_prompts, parse_story, PromptSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
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
            )
            .expect("a parsed prompt written back parses");
            assert_eq!(spec, again, "a parsed prompt written back parses the same");
        }
        Err(e) => drop(e.to_string()),
    }
    // Each parser on the whole input too, newlines included.
    let _ = parse_story(input).map_err(|e| e.to_string());
    let _ = parse_image_prompts(input).map_err(|e| e.to_string());
    let _ = parse_noise_prompts(input).map_err(|e| e.to_string());
});
