//! The choices of the VQGAN+CLIP loop that a job can make (update rule, cutouts, augmentations,
//! starting picture), defined once here so the coordinator checks them at submission with the
//! same names the worker runs them by; the worker's `generate` module gives them their meaning.

use serde::{Deserialize, Serialize};

/// Which update rule moves the latent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum OptimiserKind {
    /// torch.optim.Adam(betas=(0.9, 0.999), eps=1e-8): `generate.py`'s default.
    #[default]
    Adam,
    /// torch.optim.AdamW: Adam with decoupled weight decay 0.01.
    #[value(name = "adamw")]
    AdamW,
    /// torch.optim.Adagrad(eps=1e-10).
    Adagrad,
    /// torch.optim.RMSprop(alpha=0.99, eps=1e-8).
    #[value(name = "rmsprop")]
    RMSprop,
}

impl OptimiserKind {
    /// Names of the state tensors this rule keeps (torch's names), in the order the worker's
    /// optimiser keeps and checkpoints them.
    pub fn buffer_names(self) -> &'static [&'static str] {
        match self {
            OptimiserKind::Adam | OptimiserKind::AdamW => &["exp_avg", "exp_avg_sq"],
            OptimiserKind::Adagrad => &["sum"],
            OptimiserKind::RMSprop => &["square_avg"],
        }
    }
}

/// How cutouts are made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum CutMethod {
    /// Pooled whole-image cutouts, augmented and noised (`generate.py`'s default).
    #[default]
    Latest,
    /// Random crops sized by `cut_pow`, resampled (Crowson's original).
    Original,
}

/// One augmentation `generate.py` can apply to cutouts (its `-aug` codes in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Augment {
    /// Rotation ±15°, translation ±10 %, x-shear ±5° (`Af`).
    #[value(alias = "Af")]
    Affine,
    /// Corner displacement up to 0.7 of the half-size (`Pe`).
    #[value(alias = "Pe")]
    Perspective,
    /// Brightness, contrast, saturation ±10 % and hue ±0.1 turn, in random order (`Ji`).
    #[value(alias = "Ji")]
    Jitter,
    /// One rectangle of 10–40 % of the area, aspect 0.3–3.3, zeroed in every cutout (`Er`).
    #[value(alias = "Er")]
    Erasing,
}

/// `generate.py`'s default augmentations, in its order.
pub const DEFAULT_AUGMENTS: [Augment; 4] = [
    Augment::Affine,
    Augment::Perspective,
    Augment::Jitter,
    Augment::Erasing,
];

/// `generate.py`'s largest per-cutout noise level of the `latest` cutouts.
pub const DEFAULT_NOISE_FAC: f64 = 0.1;

/// The random starting pictures `generate.py` offers (`--init_noise`), encoded into the latent
/// instead of random codebook tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum InitNoise {
    /// Uniform random pixels.
    Pixels,
    /// A random colour gradient.
    Gradient,
}

/// Arithmetic precision of the two networks' forward and backward passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Precision {
    /// Whatever precision the networks were loaded in (float32, or bf16/fp16 weights), with
    /// the latent, optimiser and loss always in float32.
    Full,
    /// CUDA autocast around VQGAN's decode and CLIP's image encoder: matmuls and convolutions
    /// in float16, reductions in float32. No effect on CPU.
    Fp16Autocast,
}

/// The name users write for `choice` (what `clap` and the job settings accept).
pub fn name_of(choice: impl clap::ValueEnum) -> String {
    choice
        .to_possible_value()
        .expect("every choice has a name")
        .get_name()
        .to_string()
}

/// Every name of `T`, joined for an error message.
pub fn names<T: clap::ValueEnum>() -> String {
    T::value_variants()
        .iter()
        .map(|v| name_of(v.clone()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a name users wrote (case-insensitive, aliases such as `Af` included).
pub fn parse<T: clap::ValueEnum>(name: &str) -> Option<T> {
    T::from_str(name.trim(), true).ok()
}

/// The `init_noise` name that starts from random codebook tokens (the default).
pub const NO_INIT_NOISE: &str = "none";

/// Parses `,`-joined augmentation names (blank: none); `Err` holds the first unknown name.
pub fn parse_augments(list: &str) -> Result<Vec<Augment>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| parse(name).ok_or_else(|| name.to_string()))
        .collect()
}

/// Augmentations written as [`parse_augments`] reads them.
pub fn augments_name(augments: &[Augment]) -> String {
    augments
        .iter()
        .map(|&a| name_of(a))
        .collect::<Vec<_>>()
        .join(",")
}

/// Parses a starting-noise name ([`NO_INIT_NOISE`] or blank: random tokens); `Err` holds an
/// unknown name.
pub fn parse_init_noise(name: &str) -> Result<Option<InitNoise>, String> {
    match name.trim() {
        "" | NO_INIT_NOISE => Ok(None),
        name => parse(name).map(Some).ok_or_else(|| name.to_string()),
    }
}

/// A starting noise written as [`parse_init_noise`] reads it.
pub fn init_noise_name(noise: Option<InitNoise>) -> String {
    noise.map_or(NO_INIT_NOISE.to_string(), name_of)
}
