//! Conversions between `tessera.v1` messages and the `tessera-core` types, kept here so that the
//! coordinator, the workers and the CLI read and write the wire form the same way.

use crate::v1;
use tessera_core::job::{Settings, SettingsPatch, Upscale, NO_UPSCALE};
use tessera_core::loop_options::{self, name_of};
use tessera_core::task::{ArtifactRef, Capabilities, ImagePlan, TaskKind, TaskSpec};
use tessera_core::tiles::{Rect, TileSpec};

impl From<TaskKind> for v1::TaskKind {
    fn from(kind: TaskKind) -> Self {
        match kind {
            TaskKind::Generate => v1::TaskKind::Generate,
            TaskKind::UpscaleTile => v1::TaskKind::UpscaleTile,
            TaskKind::Stitch => v1::TaskKind::Stitch,
        }
    }
}

/// The core kind of a wire kind; `None` for unspecified or unknown values.
pub fn task_kind(value: i32) -> Option<TaskKind> {
    match v1::TaskKind::try_from(value).ok()? {
        v1::TaskKind::Generate => Some(TaskKind::Generate),
        v1::TaskKind::UpscaleTile => Some(TaskKind::UpscaleTile),
        v1::TaskKind::Stitch => Some(TaskKind::Stitch),
        v1::TaskKind::Unspecified => None,
    }
}

impl From<ArtifactRef> for v1::ArtifactRef {
    fn from(a: ArtifactRef) -> Self {
        v1::ArtifactRef {
            key: a.key,
            size: a.size,
            sha256: a.sha256,
            width: a.width,
            height: a.height,
        }
    }
}

impl From<v1::ArtifactRef> for ArtifactRef {
    fn from(a: v1::ArtifactRef) -> Self {
        ArtifactRef {
            key: a.key,
            size: a.size,
            sha256: a.sha256,
            width: a.width,
            height: a.height,
        }
    }
}

impl From<&Settings> for v1::Settings {
    /// Every field set; no upscale is written as `upscale_model: "none"`.
    fn from(s: &Settings) -> Self {
        let up = s.upscale.as_ref();
        let tile = up.map(|u| u.tile).unwrap_or_default();
        v1::Settings {
            clip_model: Some(s.clip_model.clone()),
            vqgan_model: Some(s.vqgan_model.clone()),
            width: Some(s.width),
            height: Some(s.height),
            iterations: Some(s.iterations),
            cutn: Some(s.cutn),
            cut_pow: Some(s.cut_pow),
            learning_rate: Some(s.learning_rate),
            init_weight: Some(s.init_weight),
            checkpoint_every: Some(s.checkpoint_every),
            preview_every: Some(s.preview_every),
            upscale_model: Some(up.map_or(NO_UPSCALE.to_string(), |u| u.model.clone())),
            upscale_scale: Some(up.map_or(1, |u| u.scale)),
            tile: Some(tile.tile),
            tile_pad: Some(tile.pad),
            tile_overlap: Some(tile.overlap),
            device: Some(s.device.clone()),
            optimiser: Some(name_of(s.optimiser)),
            cut_method: Some(name_of(s.cut_method)),
            augments: Some(loop_options::augments_name(&s.augments)),
            noise_fac: Some(s.noise_fac),
            tv_weight: Some(s.tv_weight),
            change_prompt_every: Some(s.change_prompt_every),
            init_noise: Some(loop_options::init_noise_name(s.init_noise)),
        }
    }
}

/// A patch and the wire's settings message hold the same optional fields under the same names:
/// both conversions are written from this one list.
macro_rules! patch_fields {
    ($($field:ident),* $(,)?) => {
        impl From<v1::Settings> for SettingsPatch {
            fn from(s: v1::Settings) -> Self {
                SettingsPatch { $($field: s.$field),* }
            }
        }

        /// A job-level patch as the wire carries it (what `tessera submit`'s flags send).
        impl From<SettingsPatch> for v1::Settings {
            fn from(s: SettingsPatch) -> Self {
                v1::Settings { $($field: s.$field),* }
            }
        }
    };
}

patch_fields!(
    clip_model,
    vqgan_model,
    width,
    height,
    iterations,
    cutn,
    cut_pow,
    learning_rate,
    init_weight,
    checkpoint_every,
    preview_every,
    upscale_model,
    upscale_scale,
    tile,
    tile_pad,
    tile_overlap,
    device,
    optimiser,
    cut_method,
    augments,
    noise_fac,
    tv_weight,
    change_prompt_every,
    init_noise,
);

/// The resolved settings a task carries, read back by a worker: every field must be set,
/// except the loop's choices, which tasks planned before they existed lack (their defaults).
pub fn settings(s: &v1::Settings) -> Result<Settings, WireSettingsError> {
    fn get<T: Clone>(v: &Option<T>, name: &'static str) -> Result<T, WireSettingsError> {
        v.clone().ok_or(WireSettingsError::Missing(name))
    }
    fn known_or_default<T: clap::ValueEnum + Default>(
        v: &Option<String>,
        field: &'static str,
    ) -> Result<T, WireSettingsError> {
        v.as_deref().map_or(Ok(T::default()), |name| {
            loop_options::parse(name).ok_or_else(|| unknown(field)(name.to_string()))
        })
    }
    fn unknown(field: &'static str) -> impl Fn(String) -> WireSettingsError {
        move |value| WireSettingsError::Unknown { field, value }
    }
    let defaults = Settings::farm_defaults();
    let augments = s
        .augments
        .as_deref()
        .map_or(Ok(defaults.augments), loop_options::parse_augments)
        .map_err(unknown("augments"))?;
    let init_noise = s
        .init_noise
        .as_deref()
        .map_or(Ok(None), loop_options::parse_init_noise)
        .map_err(unknown("init_noise"))?;
    let model = get(&s.upscale_model, "upscale_model")?;
    let upscale = if model == NO_UPSCALE {
        None
    } else {
        Some(Upscale {
            model,
            scale: get(&s.upscale_scale, "upscale_scale")?,
            tile: TileSpec {
                tile: get(&s.tile, "tile")?,
                pad: get(&s.tile_pad, "tile_pad")?,
                overlap: get(&s.tile_overlap, "tile_overlap")?,
            },
        })
    };
    Ok(Settings {
        clip_model: get(&s.clip_model, "clip_model")?,
        vqgan_model: get(&s.vqgan_model, "vqgan_model")?,
        width: get(&s.width, "width")?,
        height: get(&s.height, "height")?,
        iterations: get(&s.iterations, "iterations")?,
        cutn: get(&s.cutn, "cutn")?,
        cut_pow: get(&s.cut_pow, "cut_pow")?,
        learning_rate: get(&s.learning_rate, "learning_rate")?,
        init_weight: get(&s.init_weight, "init_weight")?,
        checkpoint_every: get(&s.checkpoint_every, "checkpoint_every")?,
        preview_every: get(&s.preview_every, "preview_every")?,
        upscale,
        device: get(&s.device, "device")?,
        optimiser: known_or_default(&s.optimiser, "optimiser")?,
        cut_method: known_or_default(&s.cut_method, "cut_method")?,
        augments,
        noise_fac: s.noise_fac.unwrap_or(defaults.noise_fac),
        tv_weight: s.tv_weight.unwrap_or(defaults.tv_weight),
        change_prompt_every: s.change_prompt_every.unwrap_or(0),
        init_noise,
    })
}

/// Resolved settings on the wire that their reader cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireSettingsError {
    /// A field the reader needs is not set.
    #[error("the message lacks its `{0}` field")]
    Missing(&'static str),
    /// A named choice this version does not know (a newer coordinator's, say).
    #[error("the message's `{field}` is '{value}', which this version does not know")]
    Unknown {
        /// The message field holding the name, so the log says which choice is too new.
        field: &'static str,
        /// The name this version does not know.
        value: String,
    },
}

impl From<Capabilities> for v1::Capabilities {
    fn from(c: Capabilities) -> Self {
        v1::Capabilities {
            kinds: c
                .kinds
                .into_iter()
                .map(|k| v1::TaskKind::from(k) as i32)
                .collect(),
            models: c.models,
            device: c.device,
            max_pixels: c.max_pixels,
            max_side: c.max_side,
            max_iterations: c.max_iterations,
        }
    }
}

impl From<v1::Capabilities> for Capabilities {
    /// Unknown kinds are dropped: a newer worker's extra kinds cannot be offered anyway.
    fn from(c: v1::Capabilities) -> Self {
        Capabilities {
            kinds: c.kinds.into_iter().filter_map(task_kind).collect(),
            models: c.models,
            device: c.device,
            max_pixels: c.max_pixels,
            max_side: c.max_side,
            max_iterations: c.max_iterations,
        }
    }
}

impl From<ImagePlan> for v1::ImagePlan {
    fn from(p: ImagePlan) -> Self {
        v1::ImagePlan {
            width: p.width,
            height: p.height,
            scale: p.scale,
            tile: p.tile.tile,
            pad: p.tile.pad,
            overlap: p.tile.overlap,
        }
    }
}

impl From<v1::ImagePlan> for ImagePlan {
    fn from(p: v1::ImagePlan) -> Self {
        ImagePlan {
            width: p.width,
            height: p.height,
            scale: p.scale,
            tile: TileSpec {
                tile: p.tile,
                pad: p.pad,
                overlap: p.overlap,
            },
        }
    }
}

impl From<Rect> for v1::Rect {
    fn from(r: Rect) -> Self {
        v1::Rect {
            x: r.x,
            y: r.y,
            width: r.width,
            height: r.height,
        }
    }
}

impl From<v1::Rect> for Rect {
    fn from(r: v1::Rect) -> Self {
        Rect {
            x: r.x,
            y: r.y,
            width: r.width,
            height: r.height,
        }
    }
}

/// The wire form of a task's spec. Tile tasks carry their rectangles so workers need not
/// rebuild the plan to know what to read; an impossible plan (never stored) gives zero rects.
pub fn task_spec(spec: &TaskSpec) -> v1::task::Spec {
    match spec {
        TaskSpec::Generate {
            prompt,
            seed,
            settings,
        } => v1::task::Spec::Generate(v1::GenerateSpec {
            prompt: prompt.clone(),
            seed: *seed,
            settings: Some(settings.into()),
        }),
        TaskSpec::UpscaleTile {
            source,
            plan,
            tile_index,
            model,
            ..
        } => {
            let rects = spec.upscale_tile().ok().flatten();
            v1::task::Spec::UpscaleTile(v1::UpscaleTileSpec {
                source: Some(source.clone().into()),
                model: model.clone(),
                plan: Some((*plan).into()),
                tile_index: *tile_index,
                input: rects.map(|r| r.input.into()),
                output: rects.map(|r| r.output.into()),
            })
        }
        TaskSpec::Stitch { plan, model } => v1::task::Spec::Stitch(v1::StitchSpec {
            plan: Some((*plan).into()),
            model: model.clone(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolved_settings_survive_the_wire_and_patches_keep_unset_fields_unset() {
        let mut s = Settings::farm_defaults();
        assert_eq!(settings(&(&s).into()).unwrap(), s);
        s.optimiser = loop_options::OptimiserKind::AdamW;
        s.cut_method = loop_options::CutMethod::Original;
        s.augments = vec![
            loop_options::Augment::Erasing,
            loop_options::Augment::Affine,
        ];
        s.noise_fac = 0.3;
        s.change_prompt_every = 7;
        s.init_noise = Some(loop_options::InitNoise::Gradient);
        s.tv_weight = 0.5;
        let wire = v1::Settings::from(&s);
        assert_eq!(wire.augments.as_deref(), Some("erasing,affine"));
        assert_eq!(settings(&wire).unwrap(), s);
        s.augments.clear();
        assert_eq!(settings(&(&s).into()).unwrap(), s);
        // A task planned before the loop's choices were on the wire reads as the defaults.
        let older = v1::Settings {
            optimiser: None,
            cut_method: None,
            augments: None,
            noise_fac: None,
            change_prompt_every: None,
            init_noise: None,
            tv_weight: None,
            ..(&Settings::farm_defaults()).into()
        };
        assert_eq!(settings(&older).unwrap(), Settings::farm_defaults());
        let newer = v1::Settings {
            optimiser: Some("lion".into()),
            ..older
        };
        assert_eq!(
            settings(&newer).unwrap_err().to_string(),
            "the message's `optimiser` is 'lion', which this version does not know"
        );
        s.upscale = None;
        let wire = v1::Settings::from(&s);
        assert_eq!(wire.upscale_model.as_deref(), Some("none"));
        assert_eq!(settings(&wire).unwrap(), s);
        let patch = SettingsPatch::from(v1::Settings {
            width: Some(256),
            ..Default::default()
        });
        assert_eq!(
            patch,
            SettingsPatch {
                width: Some(256),
                ..Default::default()
            }
        );
        assert_eq!(
            settings(&v1::Settings::default()).unwrap_err().to_string(),
            "the message lacks its `upscale_model` field"
        );
    }

    #[test]
    fn kinds_and_capabilities_convert_both_ways() {
        for kind in TaskKind::ALL {
            assert_eq!(task_kind(v1::TaskKind::from(kind) as i32), Some(kind));
        }
        assert_eq!(task_kind(0), None);
        let caps = Capabilities {
            kinds: vec![TaskKind::Stitch],
            models: vec!["m".into()],
            device: "cpu".into(),
            max_pixels: 9,
            max_side: 3,
            max_iterations: 7,
        };
        let mut wire = v1::Capabilities::from(caps.clone());
        wire.kinds.push(99);
        assert_eq!(Capabilities::from(wire), caps);
    }
}
