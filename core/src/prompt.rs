//! The prompt language of VQGAN+CLIP renders, parsed without libtorch so the CLI and the
//! coordinator can reject a malformed prompt before any worker spends a GPU second on it.
//!
//! The syntax follows nerdyrodent/VQGAN-CLIP's `generate.py`, which users already know:
//! - text prompts are `text[:weight[:stop]]`, several joined by `|`; a negative weight pushes the
//!   image away from the text; `stop` ends a prompt's pull once its distance falls below it;
//! - a story is several such phases joined by `^`, the render moving on to the next phase every
//!   N iterations (and looping back to the first after the last);
//! - image prompts are `path[:weight[:stop]]` joined by `|`;
//! - noise prompts are `seed[:weight]` joined by `|`: a random target embedding drawn from `seed`.
//!
//! As in `generate.py`, the last one or two `:`-separated fields are the numbers, so a text may
//! contain colons only when both weight and stop are written (`"time: 12:1:-inf"` is not valid,
//! `"a clock face: noon:1:0"` is). Unlike `generate.py`, mistakes are reported with what to fix.

use serde::{Deserialize, Serialize};
use std::fmt;

/// One weighted target of the loss: a text, or the path of an image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WeightedPrompt {
    /// The text to describe, or the image file to resemble.
    pub target: String,
    /// Strength of the pull; negative pushes away. Zero is allowed and contributes nothing.
    pub weight: f64,
    /// Distance below which the prompt stops pulling (`None`: it never stops).
    pub stop: Option<f64>,
}

/// A random target embedding: the direction is drawn from `seed`, so it is reproducible.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoisePrompt {
    /// Seed of the normal draw that makes the target embedding.
    pub seed: u64,
    /// Strength of the pull; negative pushes away.
    pub weight: f64,
}

/// Everything one render aims at: text phases, image prompts and noise prompts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptSpec {
    /// Story phases, each a list of text prompts used together; empty when there is no text.
    pub phases: Vec<Vec<WeightedPrompt>>,
    /// Image prompts, in force for the whole render.
    pub images: Vec<WeightedPrompt>,
    /// Noise prompts, in force for the whole render.
    pub noise: Vec<NoisePrompt>,
}

/// A prompt that cannot be used, saying where and how to fix it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromptError {
    /// Nothing to aim at.
    #[error(
        "no prompt given: write a text prompt such as \"a lighthouse at dusk\", or give an image \
         prompt or a noise prompt"
    )]
    Empty,
    /// `||`, a leading/trailing `|` or `^`, or a part made only of spaces.
    #[error(
        "{kind} prompt {position} in \"{input}\" is empty: remove the stray '{separator}' or write \
         something between the separators"
    )]
    EmptyPart {
        kind: &'static str,
        position: String,
        input: String,
        separator: char,
    },
    /// A weight or stop field that is not a finite number.
    #[error(
        "the {field} \"{value}\" in \"{part}\" is not a finite number: write {syntax}, for example \
         {example} (a ':' starts the {field}, so a text cannot end with ':something')"
    )]
    BadNumber {
        field: &'static str,
        value: String,
        part: String,
        syntax: &'static str,
        example: &'static str,
    },
    /// A weight or stop written with nothing before it.
    #[error("\"{part}\" has no {what} before its weight: write {syntax}, for example {example}")]
    MissingTarget {
        what: &'static str,
        part: String,
        syntax: &'static str,
        example: &'static str,
    },
    /// A noise prompt seed that is not a non-negative integer.
    #[error(
        "the noise seed \"{value}\" in \"{part}\" is not a whole number from 0 to 2^64-1: write \
         seed:weight, for example \"42:0.5\""
    )]
    BadSeed { value: String, part: String },
    /// A noise prompt with more than seed and weight.
    #[error("noise prompt \"{part}\" has too many ':' fields: write seed:weight, for example \"42:0.5\"")]
    NoiseFields { part: String },
}

impl PromptSpec {
    /// Parses the three prompt strings of a render; any of them may be empty, not all.
    pub fn parse(text: &str, images: &str, noise: &str) -> Result<PromptSpec, PromptError> {
        let spec = PromptSpec {
            phases: parse_story(text)?,
            images: parse_image_prompts(images)?,
            noise: parse_noise_prompts(noise)?,
        };
        if spec.phases.is_empty() && spec.images.is_empty() && spec.noise.is_empty() {
            return Err(PromptError::Empty);
        }
        Ok(spec)
    }

    /// Which story phase is in force at `iteration` (0-based) when the phase changes every
    /// `change_every` iterations; phases loop. `change_every == 0` spreads the phases evenly
    /// over `iterations`.
    pub fn phase_at(&self, iteration: u32, change_every: u32, iterations: u32) -> usize {
        let phases = self.phases.len() as u32;
        if phases <= 1 {
            return 0;
        }
        let every = if change_every == 0 {
            iterations.div_ceil(phases).max(1)
        } else {
            change_every
        };
        ((iteration / every) % phases) as usize
    }

    /// The text prompts written back in the input syntax, for PNG metadata and logs.
    pub fn text_string(&self) -> String {
        join(self.phases.iter().map(|p| join(p.iter(), "|")), "^")
    }

    /// The image prompts written back in the input syntax.
    pub fn images_string(&self) -> String {
        join(self.images.iter(), "|")
    }

    /// The noise prompts written back in the input syntax.
    pub fn noise_string(&self) -> String {
        join(
            self.noise
                .iter()
                .map(|n| format!("{}:{}", n.seed, n.weight)),
            "|",
        )
    }
}

impl fmt::Display for WeightedPrompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.target, self.weight)?;
        match self.stop {
            Some(stop) => write!(f, ":{stop}"),
            None => Ok(()),
        }
    }
}

fn join<T: ToString>(items: impl Iterator<Item = T>, separator: &str) -> String {
    items
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(separator)
}

/// How a list kind names itself in errors and what valid input looks like.
struct Syntax {
    kind: &'static str,
    what: &'static str,
    syntax: &'static str,
    example: &'static str,
}

const TEXT: Syntax = Syntax {
    kind: "text",
    what: "text",
    syntax: "text:weight:stop",
    example: "\"a red apple:1.5\" or \"fog:-0.5\"",
};

const IMAGE: Syntax = Syntax {
    kind: "image",
    what: "file name",
    syntax: "path:weight:stop",
    example: "\"style.png:0.5\"",
};

/// Parses `^`-joined story phases of `|`-joined text prompts; an empty string gives no phases.
pub fn parse_story(input: &str) -> Result<Vec<Vec<WeightedPrompt>>, PromptError> {
    if input.trim().is_empty() {
        return Ok(Vec::new());
    }
    let many_phases = input.contains('^');
    input
        .split('^')
        .enumerate()
        .map(|(phase, text)| {
            if text.trim().is_empty() {
                return Err(empty_part(
                    TEXT.kind,
                    format!("phase {}", phase + 1),
                    input,
                    '^',
                ));
            }
            parse_weighted_list(text, &TEXT).map_err(|e| match e {
                PromptError::EmptyPart { position, .. } if many_phases => empty_part(
                    TEXT.kind,
                    format!("{position} of phase {}", phase + 1),
                    input,
                    '|',
                ),
                other => other,
            })
        })
        .collect()
}

/// Parses `|`-joined image prompts; an empty string gives none.
pub fn parse_image_prompts(input: &str) -> Result<Vec<WeightedPrompt>, PromptError> {
    if input.trim().is_empty() {
        return Ok(Vec::new());
    }
    parse_weighted_list(input, &IMAGE)
}

/// Parses `|`-joined `seed[:weight]` noise prompts; an empty string gives none.
pub fn parse_noise_prompts(input: &str) -> Result<Vec<NoisePrompt>, PromptError> {
    if input.trim().is_empty() {
        return Ok(Vec::new());
    }
    split_parts(input, "noise")?
        .into_iter()
        .map(|part| {
            let fields: Vec<&str> = part.split(':').map(str::trim).collect();
            if fields.len() > 2 {
                return Err(PromptError::NoiseFields { part: part.into() });
            }
            let seed = fields[0].parse::<u64>().map_err(|_| PromptError::BadSeed {
                value: fields[0].into(),
                part: part.into(),
            })?;
            let weight = match fields.get(1) {
                Some(w) => parse_number(w, "weight", part, "seed:weight", "\"42:0.5\"")?,
                None => 1.0,
            };
            Ok(NoisePrompt { seed, weight })
        })
        .collect()
}

fn parse_weighted_list(input: &str, syntax: &Syntax) -> Result<Vec<WeightedPrompt>, PromptError> {
    split_parts(input, syntax.kind)?
        .into_iter()
        .map(|part| parse_weighted(part, syntax))
        .collect()
}

/// Splits on `|`, rejecting empty parts (stray separators) with their position.
fn split_parts<'a>(input: &'a str, kind: &'static str) -> Result<Vec<&'a str>, PromptError> {
    input
        .split('|')
        .enumerate()
        .map(|(i, part)| {
            let part = part.trim();
            if part.is_empty() {
                Err(empty_part(kind, format!("{}", i + 1), input, '|'))
            } else {
                Ok(part)
            }
        })
        .collect()
}

fn empty_part(kind: &'static str, position: String, input: &str, separator: char) -> PromptError {
    PromptError::EmptyPart {
        kind,
        position,
        input: input.into(),
        separator,
    }
}

/// `target[:weight[:stop]]`, splitting from the right as `generate.py` does.
fn parse_weighted(part: &str, syntax: &Syntax) -> Result<WeightedPrompt, PromptError> {
    let mut fields: Vec<&str> = part.rsplitn(3, ':').collect();
    fields.reverse();
    let target = fields[0].trim();
    if target.is_empty() {
        return Err(PromptError::MissingTarget {
            what: syntax.what,
            part: part.into(),
            syntax: syntax.syntax,
            example: syntax.example,
        });
    }
    let number = |i: usize, field| {
        fields
            .get(i)
            .map(|v| parse_number(v, field, part, syntax.syntax, syntax.example))
            .transpose()
    };
    Ok(WeightedPrompt {
        target: target.into(),
        weight: number(1, "weight")?.unwrap_or(1.0),
        stop: number(2, "stop")?,
    })
}

fn parse_number(
    value: &str,
    field: &'static str,
    part: &str,
    syntax: &'static str,
    example: &'static str,
) -> Result<f64, PromptError> {
    match value.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(PromptError::BadNumber {
            field,
            value: value.trim().into(),
            part: part.into(),
            syntax,
            example,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(target: &str, weight: f64, stop: Option<f64>) -> WeightedPrompt {
        WeightedPrompt {
            target: target.into(),
            weight,
            stop,
        }
    }

    #[test]
    fn weights_and_stops_default_and_parse() {
        let spec = PromptSpec::parse("a cat | a dog:2 |fog:-0.5:0.8", "", "").unwrap();
        assert_eq!(
            spec.phases,
            vec![vec![
                text("a cat", 1.0, None),
                text("a dog", 2.0, None),
                text("fog", -0.5, Some(0.8)),
            ]]
        );
    }

    #[test]
    fn text_keeps_colons_when_weight_and_stop_are_written() {
        let spec = PromptSpec::parse("a clock: noon:1:0", "", "").unwrap();
        assert_eq!(spec.phases[0], vec![text("a clock: noon", 1.0, Some(0.0))]);
    }

    #[test]
    fn story_phases_split_and_cycle() {
        let spec = PromptSpec::parse("sunrise ^ noon:2 | clouds ^ night", "", "").unwrap();
        assert_eq!(spec.phases.len(), 3);
        assert_eq!(spec.phases[1].len(), 2);
        let phases: Vec<usize> = (0..8).map(|i| spec.phase_at(i, 2, 100)).collect();
        assert_eq!(phases, vec![0, 0, 1, 1, 2, 2, 0, 0]);
        // Spread evenly: 10 iterations over 3 phases change every 4.
        let even: Vec<usize> = (0..10).map(|i| spec.phase_at(i, 0, 10)).collect();
        assert_eq!(even, vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2]);
    }

    #[test]
    fn image_and_noise_prompts_parse() {
        let spec = PromptSpec::parse("", "style.png:0.5 | ref.jpg", "42:0.25|7").unwrap();
        assert_eq!(
            spec.images,
            vec![text("style.png", 0.5, None), text("ref.jpg", 1.0, None)]
        );
        assert_eq!(
            spec.noise,
            vec![
                NoisePrompt {
                    seed: 42,
                    weight: 0.25
                },
                NoisePrompt {
                    seed: 7,
                    weight: 1.0
                }
            ]
        );
    }

    #[test]
    fn written_back_strings_parse_to_the_same_spec() {
        let spec = PromptSpec::parse("a:2:0.5|b^c:-1", "x.png:0.5", "3:0.5").unwrap();
        let again = PromptSpec::parse(
            &spec.text_string(),
            &spec.images_string(),
            &spec.noise_string(),
        )
        .unwrap();
        assert_eq!(spec, again);
    }

    #[test]
    fn empty_prompt_says_what_to_write() {
        let err = PromptSpec::parse("  ", "", "").unwrap_err();
        assert_eq!(err, PromptError::Empty);
        assert!(err.to_string().contains("write a text prompt"));
    }

    #[test]
    fn stray_separators_name_the_position() {
        let err = PromptSpec::parse("a cat||a dog", "", "").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("text prompt 2 in \"a cat||a dog\" is empty: remove the stray '|'"),
            "{err}"
        );
        let err = PromptSpec::parse("a cat|", "", "").unwrap_err();
        assert!(err.to_string().contains("text prompt 2"), "{err}");
        let err = PromptSpec::parse("a cat^^a dog", "", "").unwrap_err();
        assert!(
            err.to_string().contains("text prompt phase 2") && err.to_string().contains("'^'"),
            "{err}"
        );
        let err = PromptSpec::parse("a^b||c", "", "").unwrap_err();
        assert!(err.to_string().contains("prompt 2 of phase 2"), "{err}");
        let err = PromptSpec::parse("", "a.png|", "").unwrap_err();
        assert!(err.to_string().contains("image prompt 2"), "{err}");
    }

    #[test]
    fn bad_weight_says_the_syntax() {
        let err = PromptSpec::parse("a photo: by a master", "", "").unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(
                "the weight \"by a master\" in \"a photo: by a master\" is not a finite number"
            ),
            "{message}"
        );
        assert!(message.contains("text:weight:stop"), "{message}");
        let err = PromptSpec::parse("a cat:1:soon", "", "").unwrap_err();
        assert!(err.to_string().contains("the stop \"soon\""), "{err}");
        let err = PromptSpec::parse("a cat:inf", "", "").unwrap_err();
        assert!(err.to_string().contains("the weight \"inf\""), "{err}");
        let err = PromptSpec::parse(":2", "", "").unwrap_err();
        assert!(
            err.to_string().contains("has no text before its weight"),
            "{err}"
        );
    }

    #[test]
    fn bad_noise_prompts_say_the_syntax() {
        let err = PromptSpec::parse("", "", "-3:1").unwrap_err();
        assert!(err.to_string().contains("noise seed \"-3\""), "{err}");
        let err = PromptSpec::parse("", "", "3:1:2").unwrap_err();
        assert!(err.to_string().contains("too many ':'"), "{err}");
        let err = PromptSpec::parse("", "", "3:heavy").unwrap_err();
        assert!(err.to_string().contains("write seed:weight"), "{err}");
    }
}
