//! Turns a render's prompts into target embeddings, once, before the first iteration: texts
//! through CLIP's text encoder, image prompts through the same cutouts and image encoder as the
//! picture, noise prompts as normal draws from their seeds.

use super::cutouts::{CutDraws, CutMethod, Cutter};
use super::init::{image_to_tensor, load_rgb, resize_to_area, Geometry, ImageError};
use super::loss::Target;
use super::rng::{seeded_randn, Purpose, RunRng};
use super::traits::{ModelError, Perceptor};
use tch::{Device, Kind};
use tessera_core::prompt::{PromptSpec, WeightedPrompt};

/// The targets of one render: text phases (one in force at a time) and the fixed targets.
#[derive(Debug)]
pub struct Targets {
    /// Text targets of each story phase.
    pub phases: Vec<Vec<Target>>,
    /// Image and noise targets, in force throughout.
    pub fixed: Vec<Target>,
}

/// Why targets could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// An image prompt file is missing or unreadable.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// CLIP's text encoder refused a prompt (e.g. too long).
    #[error("encoding text prompt {text:?} failed: {source}")]
    Text {
        /// The prompt text.
        text: String,
        /// The model's error.
        source: ModelError,
    },
}

impl Targets {
    /// The targets in force at a phase.
    pub fn active(&self, phase: usize) -> impl Iterator<Item = &Target> {
        self.phases
            .get(phase)
            .into_iter()
            .flatten()
            .chain(self.fixed.iter())
    }
}

/// Embeds every prompt of `spec` for a render with random source `rng`, showing `record` the
/// draws of each image prompt's cutouts (by index).
pub fn build_targets<P: Perceptor + ?Sized>(
    spec: &PromptSpec,
    perceptor: &P,
    cutter: &Cutter,
    geometry: Geometry,
    rng: &RunRng,
    device: Device,
    record: &mut dyn FnMut(u32, &CutDraws),
) -> Result<Targets, TargetError> {
    tch::no_grad(|| {
        let phases = spec
            .phases
            .iter()
            .map(|phase| phase.iter().map(|p| text_target(p, perceptor)).collect())
            .collect::<Result<Vec<Vec<Target>>, TargetError>>()?;
        let mut fixed = spec
            .images
            .iter()
            .enumerate()
            .map(|(k, p)| {
                let source = ImageSource {
                    index: k as u32,
                    cutter,
                    geometry,
                    rng,
                    device,
                };
                image_target(p, perceptor, &source, record)
            })
            .collect::<Result<Vec<Target>, TargetError>>()?;
        fixed.extend(spec.noise.iter().map(|n| Target {
            label: format!("noise:{}", n.seed),
            embed: seeded_randn(n.seed, &[1, perceptor.embed_dim()], Device::Cpu).to_device(device),
            weight: n.weight,
            stop: None,
        }));
        Ok(Targets { phases, fixed })
    })
}

fn text_target<P: Perceptor + ?Sized>(
    prompt: &WeightedPrompt,
    perceptor: &P,
) -> Result<Target, TargetError> {
    let embed = perceptor
        .encode_text(&[prompt.target.as_str()])
        .map_err(|source| TargetError::Text {
            text: prompt.target.clone(),
            source,
        })?;
    Ok(Target {
        label: format!("text:{}", prompt.target),
        embed: embed.to_kind(Kind::Float),
        weight: prompt.weight,
        stop: prompt.stop,
    })
}

/// Where an image prompt's cutouts come from: its index among the render's image prompts, the
/// render's cutter and geometry, and its random source.
struct ImageSource<'a> {
    index: u32,
    cutter: &'a Cutter<'a>,
    geometry: Geometry,
    rng: &'a RunRng,
    device: Device,
}

fn image_target<P: Perceptor + ?Sized>(
    prompt: &WeightedPrompt,
    perceptor: &P,
    source: &ImageSource,
    record: &mut dyn FnMut(u32, &CutDraws),
) -> Result<Target, TargetError> {
    let ImageSource {
        index,
        cutter,
        geometry,
        rng,
        device,
    } = *source;
    let picture = load_rgb(prompt.target.as_ref(), "image prompt")?;
    let picture = resize_to_area(&picture, geometry.side_x, geometry.side_y);
    let pixels = image_to_tensor(&picture, device);
    let mut stream = rng.stream(0, Purpose::ImagePrompt(index));
    let draws = cutter.draw(pixels.size()[3], pixels.size()[2], &mut stream, |shape| {
        rng.randn(0, Purpose::ImagePromptNoise(index), shape, device)
    });
    record(index, &draws);
    let cutouts = cutter.apply(&pixels, &draws);
    let cutouts = match cutter.method {
        CutMethod::Original => cutouts.clamp(0.0, 1.0),
        CutMethod::Latest => cutouts,
    };
    let embed = perceptor.encode_image(&cutouts.to_kind(perceptor.kind()));
    Ok(Target {
        label: format!("image:{}", prompt.target),
        embed: embed.to_kind(Kind::Float),
        weight: prompt.weight,
        stop: prompt.stop,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Tensor;

    #[test]
    fn noise_prompt_targets_match_a_seeded_torch_generator() {
        // torch.empty([1, 5]).normal_(generator=torch.Generator().manual_seed(42)) in PyTorch.
        let embed = seeded_randn(42, &[1, 5], Device::Cpu);
        let expected =
            Tensor::from_slice(&[0.3367f32, 0.1288, 0.2345, 0.2303, -1.1229]).view([1, 5]);
        assert!((embed - expected).abs().max().double_value(&[]) < 1e-4);
    }
}
