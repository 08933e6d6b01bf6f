//! OpenAI CLIP's `SimpleTokenizer`, token for token: text fixing, HTML unescaping, whitespace
//! clean-up, lower-casing, the same pre-tokenising regex and byte-level BPE over the bundled
//! `bpe_simple_vocab_16e6.txt.gz` merges. A prompt must map to exactly the ids the model was
//! trained on, or CLIP steers toward the wrong sentence.

use std::collections::HashMap;
use std::io::Read;

use flate2::read::GzDecoder;
use regex::Regex;
use tch::Tensor;

use super::text_fix::{fix_text, HtmlEntities};
use super::ClipError;

/// The BPE merges, gzipped as OpenAI ships them (MIT, see `nets/assets/README.md`).
const VOCAB_GZ: &[u8] = include_bytes!("../../assets/bpe_simple_vocab_16e6.txt.gz");

/// Number of merges the reference keeps: `49152 - 256 - 2` lines after the header.
const MERGE_COUNT: usize = 49152 - 256 - 2;

/// The context length of every released CLIP model.
pub const CONTEXT_LENGTH: usize = 77;

const START_OF_TEXT: &str = "<|startoftext|>";
const END_OF_TEXT: &str = "<|endoftext|>";

/// The reference's pre-tokenising pattern (`SimpleTokenizer.pat`), as the `regex` module runs it
/// with IGNORECASE on lower-cased text. Case-insensitivity only matters to the contractions (`'ſ`
/// matches `'s`); on the classes the `regex` module ignores case for the negated class alone, so
/// U+0345 (a combining mark whose case partners are letters) matches no branch and is dropped.
const PATTERN: &str = r"<\|startoftext\|>|<\|endoftext\|>|'(?i:s|t|re|ve|m|ll|d)|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}\x{345}]+";

/// Turns prompts into CLIP token ids.
pub struct Tokenizer {
    /// `bytes_to_unicode()`: each UTF-8 byte as a printable character.
    byte_encoder: [char; 256],
    encoder: HashMap<String, i64>,
    bpe_ranks: HashMap<(String, String), usize>,
    pattern: Regex,
    entities: HtmlEntities,
    start_of_text: i64,
    end_of_text: i64,
}

impl Tokenizer {
    /// Decompresses the bundled merges and builds the vocabulary exactly as the reference does.
    pub fn new() -> Result<Tokenizer, ClipError> {
        let mut text = String::new();
        GzDecoder::new(VOCAB_GZ)
            .read_to_string(&mut text)
            .map_err(|e| {
                ClipError::Vocabulary(format!("cannot decompress the bundled BPE merges: {e}"))
            })?;
        let merges: Vec<(String, String)> = text
            .split('\n')
            .skip(1)
            .take(MERGE_COUNT)
            .map(|line| {
                let mut parts = line.split_whitespace();
                match (parts.next(), parts.next()) {
                    (Some(a), Some(b)) => Ok((a.to_string(), b.to_string())),
                    _ => Err(ClipError::Vocabulary(format!(
                        "malformed merge line {line:?}"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        if merges.len() != MERGE_COUNT {
            return Err(ClipError::Vocabulary(format!(
                "expected {MERGE_COUNT} merges, found {}",
                merges.len()
            )));
        }
        let byte_encoder = bytes_to_unicode();
        // The reference's dict order: printable bytes first, then the remapped ones.
        let mut byte_symbols: Vec<char> = byte_encoder.to_vec();
        byte_symbols.sort_by_key(|&c| (u32::from(c) >= 256, u32::from(c)));
        let mut vocab: Vec<String> = byte_symbols.iter().map(char::to_string).collect();
        vocab.extend(byte_symbols.iter().map(|c| format!("{c}</w>")));
        vocab.extend(merges.iter().map(|(a, b)| format!("{a}{b}")));
        vocab.extend([START_OF_TEXT.to_string(), END_OF_TEXT.to_string()]);
        // Later duplicates win, as in Python's `dict(zip(vocab, range(len(vocab))))`.
        let encoder: HashMap<String, i64> = vocab.into_iter().zip(0..).collect();
        let bpe_ranks = merges.into_iter().zip(0..).collect();
        let pattern =
            Regex::new(PATTERN).map_err(|e| ClipError::Vocabulary(format!("bad pattern: {e}")))?;
        Ok(Tokenizer {
            byte_encoder,
            start_of_text: encoder[START_OF_TEXT],
            end_of_text: encoder[END_OF_TEXT],
            encoder,
            bpe_ranks,
            pattern,
            entities: HtmlEntities::new(),
        })
    }

    /// The id of `<|startoftext|>` (49406).
    pub fn start_of_text(&self) -> i64 {
        self.start_of_text
    }

    /// The id of `<|endoftext|>` (49407), where the text encoder pools.
    pub fn end_of_text(&self) -> i64 {
        self.end_of_text
    }

    /// The cleaned-up text the BPE runs on: `whitespace_clean(basic_clean(text)).lower()`.
    pub fn clean(&self, text: &str) -> String {
        let fixed = fix_text(text, &self.entities);
        let unescaped = self.entities.unescape(&self.entities.unescape(&fixed));
        let words: Vec<&str> = unescaped
            .split(char::is_whitespace)
            .filter(|w| !w.is_empty())
            .collect();
        words.join(" ").to_lowercase()
    }

    /// `SimpleTokenizer.encode`: the BPE ids of `text`, without start/end tokens.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let cleaned = self.clean(text);
        let mut ids = Vec::new();
        for piece in self.pattern.find_iter(&cleaned) {
            let piece = piece.as_str();
            if piece == START_OF_TEXT || piece == END_OF_TEXT {
                ids.push(self.encoder[piece]);
                continue;
            }
            let encoded: String = piece
                .bytes()
                .map(|b| self.byte_encoder[usize::from(b)])
                .collect();
            ids.extend(self.bpe(&encoded).iter().map(|symbol| self.encoder[symbol]));
        }
        ids
    }

    /// `clip.tokenize`: `[N, 77]` int64 ids, start and end tokens included, zero-padded. A prompt
    /// that does not fit is an error saying by how many tokens, unless `truncate` is set (then it
    /// is cut and ends with `<|endoftext|>` as in the reference).
    pub fn tokenize(&self, texts: &[&str], truncate: bool) -> Result<Tensor, ClipError> {
        self.tokenize_to(texts, CONTEXT_LENGTH, truncate)
    }

    /// [`Tokenizer::tokenize`] for a model with another context length.
    pub fn tokenize_to(
        &self,
        texts: &[&str],
        context_length: usize,
        truncate: bool,
    ) -> Result<Tensor, ClipError> {
        let mut rows = vec![0i64; texts.len() * context_length];
        for (row, text) in rows.chunks_mut(context_length.max(1)).zip(texts) {
            let mut ids = vec![self.start_of_text];
            ids.extend(self.encode(text));
            ids.push(self.end_of_text);
            if ids.len() > context_length {
                if !truncate {
                    return Err(ClipError::PromptTooLong {
                        prompt: text.to_string(),
                        tokens: ids.len(),
                        context_length,
                    });
                }
                ids.truncate(context_length);
                if let Some(last) = ids.last_mut() {
                    *last = self.end_of_text;
                }
            }
            row[..ids.len()].copy_from_slice(&ids);
        }
        Ok(Tensor::from_slice(&rows).view([texts.len() as i64, context_length as i64]))
    }

    /// `SimpleTokenizer.bpe`: merges the characters of one byte-encoded word by merge rank.
    fn bpe(&self, token: &str) -> Vec<String> {
        let mut word: Vec<String> = token.chars().map(String::from).collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = word
                .windows(2)
                .filter_map(|pair| {
                    self.bpe_ranks
                        .get(&(pair[0].clone(), pair[1].clone()))
                        .map(|&rank| (rank, pair))
                })
                .min_by_key(|(rank, _)| *rank);
            let Some((_, pair)) = best else { break };
            let (first, second) = (pair[0].clone(), pair[1].clone());
            word = merge_pair(&word, &first, &second);
        }
        word
    }
}

/// Replaces every non-overlapping occurrence of `first second`, left to right, by their join.
fn merge_pair(word: &[String], first: &str, second: &str) -> Vec<String> {
    let mut merged = Vec::with_capacity(word.len());
    let mut i = 0;
    while i < word.len() {
        if word[i] == first && word.get(i + 1).is_some_and(|next| next == second) {
            merged.push(format!("{first}{second}"));
            i += 2;
        } else {
            merged.push(word[i].clone());
            i += 1;
        }
    }
    merged
}

/// The reference's `bytes_to_unicode`: printable Latin-1 bytes map to themselves, the others to
/// code points from 256 on, in byte order.
fn bytes_to_unicode() -> [char; 256] {
    let printable = |b: u32| {
        (0x21..=0x7e).contains(&b) || (0xa1..=0xac).contains(&b) || (0xae..=0xff).contains(&b)
    };
    let mut table = ['\0'; 256];
    let mut next_free = 256;
    for (b, slot) in (0u32..).zip(table.iter_mut()) {
        let code = if printable(b) {
            b
        } else {
            next_free += 1;
            next_free - 1
        };
        *slot = char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_a_plain_prompt() {
        let tokenizer = Tokenizer::new().unwrap();
        // Ids from the reference: `SimpleTokenizer().encode("a photo of a cat")`.
        assert_eq!(
            tokenizer.encode("a photo of a cat"),
            vec![320, 1125, 539, 320, 2368]
        );
    }

    #[test]
    fn too_long_prompt_says_by_how_much() {
        let tokenizer = Tokenizer::new().unwrap();
        let prompt = "cat ".repeat(80);
        let err = tokenizer
            .tokenize(&[&prompt], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("82 tokens") && err.contains("5 too many"),
            "{err}"
        );
        let ids = tokenizer.tokenize(&[&prompt], true).unwrap();
        assert_eq!(ids.size(), [1, 77]);
        assert_eq!(ids.int64_value(&[0, 76]), tokenizer.end_of_text());
    }
}
