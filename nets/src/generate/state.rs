//! Checkpoints: the whole state of a run as bytes, so another worker can continue a lost task
//! exactly where it stopped.
//!
//! The format is safetensors: the tensors (latents, starting latents, optimiser moments, target
//! embeddings) as float32, and in its metadata one JSON document (`tessera`) with the iteration,
//! every render's settings, optimiser step count and target labels/weights. Randomness needs no
//! saved state: every draw derives from (seed, iteration) (see `rng.rs`). Target embeddings are
//! saved rather than recomputed so resuming needs neither the image prompt files nor the text
//! encoder.

use super::loss::Target;
use super::optim::{Optimiser, OptimiserStateError};
use super::rng::RunRng;
use super::run::Element;
use super::settings::Settings;
use super::targets::Targets;
use safetensors::tensor::{Dtype, SafeTensors, View};
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const FORMAT: &str = "tessera-loop-checkpoint";
const VERSION: u32 = 1;
const METADATA_KEY: &str = "tessera";

/// A checkpoint that cannot be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Not safetensors, or safetensors without our header.
    #[error("not a Tessera loop checkpoint: {0}")]
    NotACheckpoint(String),
    /// A checkpoint from an incompatible version of the loop.
    #[error(
        "checkpoint format version {found} is not supported (this worker reads version {VERSION})"
    )]
    Version {
        /// The version in the file.
        found: u32,
    },
    /// A tensor the header promises is absent or unreadable.
    #[error("checkpoint tensor `{name}` is missing or unreadable: {reason}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What went wrong.
        reason: String,
    },
    /// Optimiser state that does not fit the latent.
    #[error(transparent)]
    Optimiser(#[from] OptimiserStateError),
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    iteration: u32,
    elapsed_seconds: f64,
    renders: Vec<RenderHeader>,
}

#[derive(Serialize, Deserialize)]
struct RenderHeader {
    settings: Settings,
    optimiser_steps: u64,
    phases: Vec<Vec<TargetHeader>>,
    fixed: Vec<TargetHeader>,
}

#[derive(Serialize, Deserialize)]
struct TargetHeader {
    label: String,
    weight: f64,
    stop: Option<f64>,
}

/// A run's state read back from a checkpoint.
pub(crate) struct Saved {
    pub iteration: u32,
    pub elapsed: Duration,
    pub elements: Vec<Element>,
}

/// A float32 tensor's bytes, as safetensors wants them.
struct Bytes {
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn to_bytes(t: &Tensor) -> Bytes {
    let t = t
        .detach()
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        .contiguous();
    let values = Vec::<f32>::try_from(t.flatten(0, -1)).expect("float32 tensor");
    Bytes {
        shape: t.size().iter().map(|&d| d as usize).collect(),
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    }
}

fn target_header(t: &Target) -> TargetHeader {
    TargetHeader {
        label: t.label.clone(),
        weight: t.weight,
        stop: t.stop,
    }
}

/// The state of a run after `iteration` iterations, as checkpoint bytes.
pub(crate) fn encode(
    iteration: u32,
    elapsed: Duration,
    elements: &[Element],
) -> Result<Vec<u8>, StateError> {
    let mut tensors: Vec<(String, Bytes)> = Vec::new();
    let mut renders = Vec::new();
    for (b, e) in elements.iter().enumerate() {
        tensors.push((format!("r{b}.z"), to_bytes(&e.z)));
        tensors.push((format!("r{b}.z_orig"), to_bytes(&e.z_orig)));
        let names = e.optimiser.kind().buffer_names();
        for (name, buffer) in names.iter().zip(e.optimiser.buffers()) {
            tensors.push((format!("r{b}.opt.{name}"), to_bytes(buffer)));
        }
        for (p, phase) in e.targets.phases.iter().enumerate() {
            for (k, t) in phase.iter().enumerate() {
                tensors.push((format!("r{b}.phase{p}.{k}"), to_bytes(&t.embed)));
            }
        }
        for (k, t) in e.targets.fixed.iter().enumerate() {
            tensors.push((format!("r{b}.fixed.{k}"), to_bytes(&t.embed)));
        }
        renders.push(RenderHeader {
            settings: e.settings.clone(),
            optimiser_steps: e.optimiser.steps(),
            phases: e
                .targets
                .phases
                .iter()
                .map(|p| p.iter().map(target_header).collect())
                .collect(),
            fixed: e.targets.fixed.iter().map(target_header).collect(),
        });
    }
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        iteration,
        elapsed_seconds: elapsed.as_secs_f64(),
        renders,
    };
    let json = serde_json::to_string(&header).expect("the header serialises");
    let metadata = Some(HashMap::from([(METADATA_KEY.to_string(), json)]));
    safetensors::tensor::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), &metadata)
        .map_err(|e| StateError::NotACheckpoint(format!("cannot serialise: {e:?}")))
}

/// Reads checkpoint bytes back, with every tensor on `device`.
pub(crate) fn decode(bytes: &[u8], device: Device) -> Result<Saved, StateError> {
    let not_ours = |reason: String| StateError::NotACheckpoint(reason);
    let (_, metadata) =
        SafeTensors::read_metadata(bytes).map_err(|e| not_ours(format!("{e:?}")))?;
    let json = metadata
        .metadata()
        .as_ref()
        .and_then(|m| m.get(METADATA_KEY))
        .ok_or_else(|| not_ours(format!("no `{METADATA_KEY}` header")))?;
    let header: Header =
        serde_json::from_str(json).map_err(|e| not_ours(format!("malformed header: {e}")))?;
    if header.format != FORMAT {
        return Err(not_ours(format!("format is {:?}", header.format)));
    }
    if header.version != VERSION {
        return Err(StateError::Version {
            found: header.version,
        });
    }
    let file = SafeTensors::deserialize(bytes).map_err(|e| not_ours(format!("{e:?}")))?;
    let tensor = |name: String| -> Result<Tensor, StateError> {
        let view = file.tensor(&name).map_err(|e| StateError::Tensor {
            name: name.clone(),
            reason: format!("{e:?}"),
        })?;
        Tensor::try_from(view)
            .map(|t| t.to_device(device))
            .map_err(|e| StateError::Tensor {
                name,
                reason: e.to_string(),
            })
    };
    let target = |name: String, h: &TargetHeader| -> Result<Target, StateError> {
        Ok(Target {
            label: h.label.clone(),
            embed: tensor(name)?,
            weight: h.weight,
            stop: h.stop,
        })
    };
    let mut elements = Vec::new();
    for (b, r) in header.renders.into_iter().enumerate() {
        let z = tensor(format!("r{b}.z"))?;
        let kind = r.settings.optimiser;
        let buffers = kind
            .buffer_names()
            .iter()
            .map(|name| tensor(format!("r{b}.opt.{name}")))
            .collect::<Result<Vec<_>, _>>()?;
        let optimiser = Optimiser::restore(
            kind,
            r.settings.learning_rate,
            r.optimiser_steps,
            buffers,
            &z,
        )?;
        let phases = r
            .phases
            .iter()
            .enumerate()
            .map(|(p, phase)| {
                phase
                    .iter()
                    .enumerate()
                    .map(|(k, h)| target(format!("r{b}.phase{p}.{k}"), h))
                    .collect()
            })
            .collect::<Result<Vec<Vec<Target>>, _>>()?;
        let fixed = r
            .fixed
            .iter()
            .enumerate()
            .map(|(k, h)| target(format!("r{b}.fixed.{k}"), h))
            .collect::<Result<Vec<Target>, _>>()?;
        elements.push(Element {
            rng: RunRng::new(r.settings.seed),
            z_orig: tensor(format!("r{b}.z_orig"))?,
            z: z.set_requires_grad(true),
            optimiser,
            targets: Targets { phases, fixed },
            settings: r.settings,
        });
    }
    Ok(Saved {
        iteration: header.iteration,
        elapsed: Duration::from_secs_f64(header.elapsed_seconds.max(0.0)),
        elements,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreign_bytes_are_rejected_with_a_reason() {
        let err = decode(b"definitely not safetensors", Device::Cpu)
            .err()
            .unwrap();
        assert!(
            err.to_string().starts_with("not a Tessera loop checkpoint"),
            "{err}"
        );
        let plain = safetensors::tensor::serialize(
            [(
                "x",
                &to_bytes(&Tensor::zeros([2], (Kind::Float, Device::Cpu))),
            )],
            &None,
        )
        .unwrap();
        let err = decode(&plain, Device::Cpu).err().unwrap();
        assert!(err.to_string().contains("no `tessera` header"), "{err}");
    }
}
