//! The prompt language (`tessera_core::prompt`) on arbitrary text: the input is split at its
//! first two newlines into the text, image and noise prompt fields. Every input must parse or
//! give an error that displays, and a parsed prompt written back must parse to the same prompt
//! (that is how it is stored in PNG metadata and logs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera_core::fuzzing;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = std::str::from_utf8(data) {
        fuzzing::prompt_parser(input, "fuzz input");
    }
});
