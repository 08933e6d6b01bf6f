//! Every setting of a render, defined once: its name, help text, default, the farm's default
//! where that differs, its valid range, and where it can be set.
//!
//! The job model ([`crate::job::Settings`] and its patch), the worker's loop settings
//! (`tessera_nets::generate::Settings`), the wire message and both command lines read their
//! defaults, ranges and help text from here, and `tests/settings_drift.rs` in the worker fails
//! when one of them gains or loses a setting this table does not list. Adding a setting is: a
//! [`Setting`] here (and in [`ALL`]), its fields in those structs (the drift test names each one
//! that is missing), its proto field, and the code that uses it.

use crate::loop_options::{
    self, Augment, CutMethod, InitNoise, OptimiserKind, Precision, DEFAULT_AUGMENTS,
    DEFAULT_NOISE_FAC,
};

/// The values a setting may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Range {
    /// A whole number from `min` to `max`, both included.
    Count {
        /// Smallest value.
        min: u32,
        /// Largest value.
        max: u32,
    },
    /// A finite number above 0.
    Positive,
    /// A finite number, 0 or above.
    NonNegative,
    /// A name from a list of choices, checked by the choice's parser.
    Choice,
    /// Any value of the type (a switch).
    Any,
}

impl Range {
    /// The range in words, as errors say it.
    pub fn describe(self) -> String {
        match self {
            Range::Count { min, max: u32::MAX } => format!("a whole number, {min} or more"),
            Range::Count { min, max } => format!("between {min} and {max}"),
            Range::Positive => "a finite number above 0".into(),
            Range::NonNegative => "a finite number, 0 or above".into(),
            Range::Choice => "one of its names".into(),
            Range::Any => "any value".into(),
        }
    }

    fn admits(self, value: f64) -> bool {
        match self {
            Range::Count { min, max } => (f64::from(min)..=f64::from(max)).contains(&value),
            Range::Positive => value.is_finite() && value > 0.0,
            Range::NonNegative => value.is_finite() && value >= 0.0,
            Range::Choice | Range::Any => true,
        }
    }
}

/// A value out of its setting's range, naming the setting.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("setting `{field}` = {value} is out of range: {expected}")]
pub struct OutOfRange {
    /// The setting's name.
    pub field: &'static str,
    /// The value given, as written.
    pub value: String,
    /// The range in words.
    pub expected: String,
}

/// Where a setting can be set: the parts of Tessera that must all carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Surfaces {
    /// In a job: [`crate::job::Settings`], its patch, the wire message, prompt files and
    /// `tessera submit`'s flags.
    pub job: bool,
    /// In one render: the loop's settings and `tessera-worker render`'s flags.
    pub render: bool,
    /// A worker's own choice for the renders it runs (`tessera-worker --NAME`), not a job's.
    pub worker: bool,
}

/// In jobs and in renders alike: what most settings are.
const EVERYWHERE: Surfaces = Surfaces {
    job: true,
    render: true,
    worker: false,
};
/// Chosen by the worker for its device, recorded in each render.
const WORKER: Surfaces = Surfaces {
    job: false,
    render: true,
    worker: true,
};

/// One setting of a render.
#[derive(Clone, Copy, Debug)]
pub struct Setting<T: 'static> {
    /// Its name in jobs, prompt files, the wire and on command lines (`--name-with-dashes`).
    pub name: &'static str,
    /// Its name in the loop's settings, where that differs (kept for the PNGs and checkpoints
    /// already written).
    pub loop_name: &'static str,
    /// A short name users may type for it in a sweep (`lr`), where one is customary; sweep
    /// labels in file names use it, so they stay short.
    pub short: &'static str,
    /// One line for `--help` and the README.
    pub help: &'static str,
    /// The default of a render on its own (`generate.py`'s, but for the size).
    pub default: T,
    /// The default of a farm job.
    pub farm_default: T,
    /// The values it may take.
    pub range: Range,
    /// Where it can be set.
    pub surfaces: Surfaces,
}

impl<T: SettingValue> Setting<T> {
    /// A setting with one default everywhere, settable in jobs and renders.
    const fn new(name: &'static str, help: &'static str, default: T, range: Range) -> Self {
        Setting {
            name,
            loop_name: name,
            short: name,
            help,
            default,
            farm_default: default,
            range,
            surfaces: EVERYWHERE,
        }
    }

    const fn farm_default(mut self, value: T) -> Self {
        self.farm_default = value;
        self
    }

    const fn loop_name(mut self, name: &'static str) -> Self {
        self.loop_name = name;
        self
    }

    const fn short(mut self, name: &'static str) -> Self {
        self.short = name;
        self
    }

    const fn surfaces(mut self, surfaces: Surfaces) -> Self {
        self.surfaces = surfaces;
        self
    }

    /// `value` if it is in range, else an error naming this setting and its range.
    pub fn check(&self, value: T) -> Result<T, OutOfRange> {
        if value.as_number().is_none_or(|n| self.range.admits(n)) {
            Ok(value)
        } else {
            Err(OutOfRange {
                field: self.name,
                value: value.text(),
                expected: self.range.describe(),
            })
        }
    }
}

/// A type a setting can have: written in help and errors the way users type it.
pub trait SettingValue: Copy {
    /// The value as users write it (`0.1`, `adam`, `affine,jitter`).
    fn text(&self) -> String;
    /// The value as a number, for numeric ranges.
    fn as_number(&self) -> Option<f64> {
        None
    }
}

impl SettingValue for u32 {
    fn text(&self) -> String {
        self.to_string()
    }
    fn as_number(&self) -> Option<f64> {
        Some(f64::from(*self))
    }
}

impl SettingValue for f64 {
    fn text(&self) -> String {
        self.to_string()
    }
    fn as_number(&self) -> Option<f64> {
        Some(*self)
    }
}

impl SettingValue for bool {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for &'static str {
    fn text(&self) -> String {
        self.to_string()
    }
}

impl SettingValue for &'static [Augment] {
    fn text(&self) -> String {
        loop_options::augments_name(self)
    }
}

impl SettingValue for Option<InitNoise> {
    fn text(&self) -> String {
        loop_options::init_noise_name(*self)
    }
}

macro_rules! choice_value {
    ($($choice:ty),*) => {$(
        impl SettingValue for $choice {
            fn text(&self) -> String {
                loop_options::name_of(*self)
            }
        }
    )*};
}
choice_value!(OptimiserKind, CutMethod, Precision);

/// A setting seen without its type: what the drift test and the help texts need.
pub trait Describe: Sync {
    /// See [`Setting::name`].
    fn name(&self) -> &'static str;
    /// See [`Setting::loop_name`].
    fn loop_name(&self) -> &'static str;
    /// See [`Setting::short`].
    fn short(&self) -> &'static str;
    /// See [`Setting::help`].
    fn help(&self) -> &'static str;
    /// The render default as users write it.
    fn default_text(&self) -> String;
    /// The farm default as users write it.
    fn farm_default_text(&self) -> String;
    /// See [`Setting::range`].
    fn range(&self) -> Range;
    /// See [`Setting::surfaces`].
    fn surfaces(&self) -> Surfaces;
}

impl<T: SettingValue + Sync> Describe for Setting<T> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn loop_name(&self) -> &'static str {
        self.loop_name
    }
    fn short(&self) -> &'static str {
        self.short
    }
    fn help(&self) -> &'static str {
        self.help
    }
    fn default_text(&self) -> String {
        self.default.text()
    }
    fn farm_default_text(&self) -> String {
        self.farm_default.text()
    }
    fn range(&self) -> Range {
        self.range
    }
    fn surfaces(&self) -> Surfaces {
        self.surfaces
    }
}

/// Largest picture side a render accepts; far beyond what fits any GPU at these model sizes.
pub const MAX_SIDE: u32 = 4096;

const SIDE: Range = Range::Count {
    min: 1,
    max: MAX_SIDE,
};
const ANY_COUNT: Range = Range::Count {
    min: 0,
    max: u32::MAX,
};

/// CLIP model judging the picture.
pub const CLIP_MODEL: Setting<&str> = Setting::new(
    "clip_model",
    "CLIP model judging the picture",
    "ViT-B/32",
    Range::Choice,
)
.loop_name("perceptor_model");
/// VQGAN model whose latent is optimised.
pub const VQGAN_MODEL: Setting<&str> = Setting::new(
    "vqgan_model",
    "VQGAN model whose latent is optimised",
    "vqgan_imagenet_f16_16384",
    Range::Choice,
)
.loop_name("codec_model");
/// Picture width.
pub const WIDTH: Setting<u32> = Setting::new(
    "width",
    "Picture width in pixels (a multiple of VQGAN's factor, 16)",
    496,
    SIDE,
);
/// Picture height.
pub const HEIGHT: Setting<u32> = Setting::new(
    "height",
    "Picture height in pixels (a multiple of VQGAN's factor, 16)",
    496,
    SIDE,
);
/// Optimiser steps.
pub const ITERATIONS: Setting<u32> = Setting::new(
    "iterations",
    "Optimisation steps (a farm job needs at least 1)",
    500,
    ANY_COUNT,
);
/// Update rule.
pub const OPTIMISER: Setting<OptimiserKind> = Setting::new(
    "optimiser",
    "Update rule of the latent",
    OptimiserKind::Adam,
    Range::Choice,
);
/// Step size.
pub const LEARNING_RATE: Setting<f64> = Setting::new(
    "learning_rate",
    "Learning rate (step size)",
    0.1,
    Range::Positive,
)
.short("lr");
/// Cutout method.
pub const CUT_METHOD: Setting<CutMethod> = Setting::new(
    "cut_method",
    "How cutouts are made",
    CutMethod::Latest,
    Range::Choice,
);
/// Cutouts per step.
pub const CUTN: Setting<u32> = Setting::new(
    "cutn",
    "Cutouts per step",
    32,
    Range::Count { min: 1, max: 1024 },
);
/// Crop-size exponent.
pub const CUT_POW: Setting<f64> = Setting::new(
    "cut_pow",
    "Crop-size exponent of the `original` cutouts",
    1.0,
    Range::Positive,
);
/// Augmentations.
pub const AUGMENTS: Setting<&[Augment]> = Setting::new(
    "augments",
    "Augmentations of the `latest` cutouts, in order (names or generate.py's Af,Pe,Ji,Er; empty for none)",
    &DEFAULT_AUGMENTS,
    Range::Choice,
);
/// Cutout noise.
pub const NOISE_FAC: Setting<f64> = Setting::new(
    "noise_fac",
    "Largest per-cutout noise level of the `latest` cutouts",
    DEFAULT_NOISE_FAC,
    Range::NonNegative,
);
/// Pull towards the start.
pub const INIT_WEIGHT: Setting<f64> = Setting::new(
    "init_weight",
    "Weight of the pull back towards the starting latent (0: none)",
    0.0,
    Range::NonNegative,
);
/// Starting noise.
pub const INIT_NOISE: Setting<Option<InitNoise>> = Setting::new(
    "init_noise",
    "Start from encoded random pixels or a random gradient instead of random codebook tokens",
    None,
    Range::Choice,
)
.loop_name("init");
/// Total variation weight.
pub const TV_WEIGHT: Setting<f64> = Setting::new(
    "tv_weight",
    "Weight of the picture's total variation in the loss: higher is smoother, less noisy (0: none)",
    0.0,
    Range::NonNegative,
);
/// Story phase length.
pub const CHANGE_PROMPT_EVERY: Setting<u32> = Setting::new(
    "change_prompt_every",
    "Steps per story phase (`^` in the prompt; 0: the phases share the steps evenly)",
    0,
    ANY_COUNT,
);
/// Checkpoint period.
pub const CHECKPOINT_EVERY: Setting<u32> = Setting::new(
    "checkpoint_every",
    "A checkpoint every this many steps, so an interrupted render resumes (0: none)",
    0,
    ANY_COUNT,
)
.farm_default(50);
/// Preview period.
pub const PREVIEW_EVERY: Setting<u32> = Setting::new(
    "preview_every",
    "A preview picture every this many steps (0: none)",
    0,
    ANY_COUNT,
)
.farm_default(50);
/// Network arithmetic.
pub const PRECISION: Setting<Precision> = Setting::new(
    "precision",
    "Arithmetic of the networks: fp16-autocast runs VQGAN and CLIP under CUDA float16 autocast (no effect on CPU)",
    Precision::Full,
    Range::Choice,
)
.surfaces(WORKER);
/// Activation checkpointing.
pub const RECOMPUTE_DECODER: Setting<bool> = Setting::new(
    "recompute_decoder",
    "Back-propagate VQGAN one stage at a time, each recomputed (activation checkpointing): far less memory, same picture",
    false,
    Range::Any,
)
.surfaces(WORKER);

/// Every setting, in the order help lists them.
pub const ALL: [&dyn Describe; 20] = [
    &CLIP_MODEL,
    &VQGAN_MODEL,
    &WIDTH,
    &HEIGHT,
    &ITERATIONS,
    &OPTIMISER,
    &LEARNING_RATE,
    &CUT_METHOD,
    &CUTN,
    &CUT_POW,
    &AUGMENTS,
    &NOISE_FAC,
    &INIT_WEIGHT,
    &INIT_NOISE,
    &TV_WEIGHT,
    &CHANGE_PROMPT_EVERY,
    &CHECKPOINT_EVERY,
    &PREVIEW_EVERY,
    &PRECISION,
    &RECOMPUTE_DECODER,
];

/// The setting called `name` (its job name or its loop name).
pub fn find(name: &str) -> Option<&'static dyn Describe> {
    ALL.iter()
        .copied()
        .find(|s| s.name() == name || s.loop_name() == name)
}

/// The job setting a user calls `key` in a sweep or prompt file: its name, loop name, short
/// name or flag spelling (`learning-rate`). `None` for anything else, and for settings a job
/// cannot carry (a worker's own choices).
pub fn find_job_setting(key: &str) -> Option<&'static dyn Describe> {
    let key = key.trim().replace('-', "_");
    ALL.iter()
        .copied()
        .filter(|s| s.surfaces().job)
        .find(|s| [s.name(), s.loop_name(), s.short()].contains(&key.as_str()))
}

/// `text` as a value of `setting`, checked against its range: a JSON number or switch for a
/// settings patch, or the text itself for a choice (checked where choices are resolved). What
/// a sweep value goes through, so it can never take a value the setting's flag would refuse.
pub fn parse_text(setting: &dyn Describe, text: &str) -> Result<serde_json::Value, OutOfRange> {
    let text = text.trim();
    let refuse = || OutOfRange {
        field: setting.name(),
        value: text.to_string(),
        expected: setting.range().describe(),
    };
    let range = setting.range();
    let number = |n: f64| {
        if range.admits(n) {
            Ok(n)
        } else {
            Err(refuse())
        }
    };
    Ok(match range {
        Range::Count { .. } => {
            let n = text.parse::<u32>().map_err(|_| refuse())?;
            number(f64::from(n))?;
            serde_json::Value::from(n)
        }
        Range::Positive | Range::NonNegative => {
            serde_json::Value::from(number(text.parse::<f64>().map_err(|_| refuse())?)?)
        }
        Range::Any => serde_json::Value::from(text.parse::<bool>().map_err(|_| refuse())?),
        Range::Choice => serde_json::Value::from(text),
    })
}

/// The help line of setting `name` with its default, for a command line flag: `help [default]`.
pub fn flag_help(name: &str, farm: bool) -> Option<String> {
    let setting = find(name)?;
    let default = if farm {
        setting.farm_default_text()
    } else {
        setting.default_text()
    };
    let default = if default.is_empty() {
        "none".into()
    } else {
        default
    };
    Some(format!("{} [{default}]", setting.help()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_every_setting_is_somewhere() {
        let mut names: Vec<&str> = ALL
            .iter()
            .flat_map(|s| [s.name(), s.loop_name(), s.short()])
            .collect();
        names.sort();
        names.dedup();
        let distinct_loop_names = ALL.iter().filter(|s| s.name() != s.loop_name()).count();
        let distinct_shorts = ALL.iter().filter(|s| s.name() != s.short()).count();
        assert_eq!(
            names.len(),
            ALL.len() + distinct_loop_names + distinct_shorts
        );
        for s in ALL {
            let where_ = s.surfaces();
            assert!(
                where_.job || where_.render,
                "{} is settable nowhere",
                s.name()
            );
        }
    }

    #[test]
    fn defaults_are_in_range_and_ranges_refuse_what_they_say() {
        assert_eq!(CUTN.check(CUTN.default), Ok(32));
        assert_eq!(LEARNING_RATE.check(LEARNING_RATE.farm_default), Ok(0.1));
        assert_eq!(
            CUTN.check(0).unwrap_err().to_string(),
            "setting `cutn` = 0 is out of range: between 1 and 1024"
        );
        assert_eq!(
            LEARNING_RATE.check(f64::NAN).unwrap_err().expected,
            "a finite number above 0"
        );
        assert_eq!(
            TV_WEIGHT.check(-1.0).unwrap_err().expected,
            "a finite number, 0 or above"
        );
        assert!(ITERATIONS.check(0).is_ok());
        assert_eq!(
            WIDTH.check(MAX_SIDE + 1).unwrap_err().expected,
            "between 1 and 4096"
        );
    }

    #[test]
    fn help_shows_the_default_of_each_place() {
        assert_eq!(
            flag_help("checkpoint_every", false).unwrap(),
            "A checkpoint every this many steps, so an interrupted render resumes (0: none) [0]"
        );
        assert!(flag_help("checkpoint_every", true)
            .unwrap()
            .ends_with("[50]"));
        assert!(flag_help("augments", false)
            .unwrap()
            .ends_with("[affine,perspective,jitter,erasing]"));
        assert!(flag_help("init_noise", false).unwrap().ends_with("[none]"));
        assert_eq!(find("perceptor_model").unwrap().name(), "clip_model");
    }

    #[test]
    fn job_settings_are_found_by_any_of_their_names_and_values_checked_by_range() {
        for key in ["lr", "learning_rate", "learning-rate"] {
            assert_eq!(find_job_setting(key).unwrap().name(), "learning_rate");
        }
        assert!(find_job_setting("precision").is_none(), "a worker's choice");
        assert!(find_job_setting("nonsense").is_none());
        assert_eq!(parse_text(&CUTN, "64"), Ok(serde_json::json!(64)));
        assert_eq!(
            parse_text(&LEARNING_RATE, "0.10"),
            Ok(serde_json::json!(0.1))
        );
        assert_eq!(
            parse_text(&OPTIMISER, "adamw"),
            Ok(serde_json::json!("adamw"))
        );
        let error = parse_text(&CUTN, "0").unwrap_err();
        assert_eq!(
            error.to_string(),
            "setting `cutn` = 0 is out of range: between 1 and 1024"
        );
        assert_eq!(parse_text(&CUTN, "many").unwrap_err().value, "many");
        assert!(parse_text(&LEARNING_RATE, "-1").is_err());
        assert!(parse_text(&LEARNING_RATE, "inf").is_err());
    }
}
