//! Replays every committed input of the `prompt_parser` and `prompts_jsonl` fuzz targets
//! (`fuzz/corpus/`) through the functions they fuzz, on the stable toolchain, so CI catches a
//! parser that panics again on an input the fuzzer once found. The checks are the targets' own
//! (`tessera_core::fuzzing`).

use std::path::PathBuf;
use tessera_core::fuzzing;

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
        fuzzing::prompt_parser(&input, &path.display().to_string());
    }
}

#[test]
fn prompts_jsonl_corpus_parses_or_errors() {
    for (path, input) in corpus("prompts_jsonl") {
        fuzzing::prompts_jsonl(&input, &path.display().to_string());
    }
}
