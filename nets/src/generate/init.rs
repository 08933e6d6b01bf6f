//! The starting latent (random codebook tokens, an init image, random pixels or a random
//! gradient, as `generate.py`), and the image files the loop reads.

use super::rng::{Purpose, RunRng, Stream};
use super::synth::vector_quantize;
use super::traits::{LatentCodec, ModelError};
use image::imageops::FilterType;
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};
use tessera_core::loop_options::InitNoise;

/// Where the optimisation starts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum LatentInit {
    /// Uniformly random codebook entries at every position (`generate.py`'s default).
    RandomTokens,
    /// This image, resized to the render size and encoded.
    Image {
        /// The image file.
        path: PathBuf,
    },
    /// Uniform random pixels, encoded.
    Pixels,
    /// A random colour gradient, encoded.
    Gradient,
}

impl From<InitNoise> for LatentInit {
    fn from(noise: InitNoise) -> Self {
        match noise {
            InitNoise::Pixels => LatentInit::Pixels,
            InitNoise::Gradient => LatentInit::Gradient,
        }
    }
}

/// An image the loop could not use.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No file there.
    #[error("{role} file {path:?} does not exist: check the path")]
    Missing {
        /// What the image was for (`init image`, `image prompt`).
        role: &'static str,
        /// The path given.
        path: PathBuf,
    },
    /// A file that does not decode as an image.
    #[error("{role} file {path:?} cannot be read as an image: {source}")]
    Unreadable {
        /// What the image was for.
        role: &'static str,
        /// The path given.
        path: PathBuf,
        /// Why decoding failed.
        source: image::ImageError,
    },
    /// The VQGAN encoder failed.
    #[error("encoding the {role} with VQGAN failed: {source}")]
    Encode {
        /// What the image was for.
        role: &'static str,
        /// The model's error.
        source: ModelError,
    },
}

/// Reads an image file as RGB, with an error that names its role and path.
pub fn load_rgb(path: &Path, role: &'static str) -> Result<RgbImage, ImageError> {
    if !path.is_file() {
        return Err(ImageError::Missing {
            role,
            path: path.into(),
        });
    }
    image::open(path)
        .map(|i| i.to_rgb8())
        .map_err(|source| ImageError::Unreadable {
            role,
            path: path.into(),
            source,
        })
}

/// Lanczos resize to exactly `width` x `height` (no-op when already that size).
pub fn resize_exact(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    if image.dimensions() == (width, height) {
        return image.clone();
    }
    image::imageops::resize(image, width, height, FilterType::Lanczos3)
}

/// Lanczos resize keeping the aspect ratio, to at most the area of `width` x `height`
/// (`generate.py`'s `resize_image`, used for image prompts).
pub fn resize_to_area(image: &RgbImage, width: u32, height: u32) -> RgbImage {
    let (w, h) = (f64::from(image.width()), f64::from(image.height()));
    let ratio = w / h;
    let area = (w * h).min(f64::from(width) * f64::from(height));
    let new_w = ((area * ratio).sqrt().round() as u32).max(1);
    let new_h = ((area / ratio).sqrt().round() as u32).max(1);
    resize_exact(image, new_w, new_h)
}

/// `[1, 3, H, W]` float tensor in [0, 1] on `device`.
pub fn image_to_tensor(image: &RgbImage, device: Device) -> Tensor {
    let (w, h) = image.dimensions();
    Tensor::from_slice(image.as_raw())
        .view([i64::from(h), i64::from(w), 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_device(device)
        .to_kind(Kind::Float)
        / 255.0
}

/// An image `[3, H, W]` in [0, 1] as 8-bit RGB (rounded).
pub fn tensor_to_image(pixels: &Tensor) -> RgbImage {
    let [_, h, w]: [i64; 3] = pixels.size().try_into().expect("[3, H, W] image");
    let bytes = (pixels.to_kind(Kind::Float).clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous()
        .to_device(Device::Cpu);
    let data = Vec::<u8>::try_from(bytes.flatten(0, -1)).expect("uint8 pixels");
    RgbImage::from_raw(w as u32, h as u32, data).expect("buffer matches dimensions")
}

/// The geometry of the latent: positions along each side and the pixel size they decode to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Latent positions across.
    pub tokens_x: i64,
    /// Latent positions down.
    pub tokens_y: i64,
    /// Decoded width: `tokens_x · f`.
    pub side_x: u32,
    /// Decoded height: `tokens_y · f`.
    pub side_y: u32,
}

impl Geometry {
    /// `generate.py`'s rounding: each side down to a multiple of the factor `f`.
    pub fn new(width: u32, height: u32, factor: i64) -> Option<Geometry> {
        let (tokens_x, tokens_y) = (i64::from(width) / factor, i64::from(height) / factor);
        (tokens_x > 0 && tokens_y > 0).then(|| Geometry {
            tokens_x,
            tokens_y,
            side_x: (tokens_x * factor) as u32,
            side_y: (tokens_y * factor) as u32,
        })
    }
}

/// What a starting latent is made from: codebook tokens, or a picture to encode (drawn at
/// random or read from the init image). Kept apart from the latent so the loop can show a
/// [`super::record::DrawRecorder`] what it drew (parity tests replay it in the reference).
#[derive(Clone, Debug, PartialEq)]
pub enum InitDraw {
    /// Codebook indices, row by row over the latent grid.
    Tokens(Vec<i64>),
    /// The picture, at the size it was drawn or read (resized to the latent grid's when used).
    Picture(RgbImage),
    /// A random gradient, drawn at the requested size.
    Gradient(Gradient),
}

/// Draws (or reads) what the starting latent of `init` is made from, for a render of `size`.
pub fn draw_init(
    init: &LatentInit,
    n_embed: i64,
    geometry: Geometry,
    size: (u32, u32),
    rng: &RunRng,
) -> Result<InitDraw, ImageError> {
    let mut stream = rng.stream(0, Purpose::Init);
    let picture = match init {
        LatentInit::RandomTokens => {
            let ids = (0..geometry.tokens_x * geometry.tokens_y)
                .map(|_| stream.below(n_embed as u64) as i64)
                .collect();
            return Ok(InitDraw::Tokens(ids));
        }
        LatentInit::Image { path } => load_rgb(path, "init image")?,
        LatentInit::Pixels => random_pixels(size, &mut stream),
        LatentInit::Gradient => return Ok(InitDraw::Gradient(Gradient::draw(size, &mut stream))),
    };
    Ok(InitDraw::Picture(picture))
}

/// The starting latent `[1, C, tokens_y, tokens_x]` (float32, on the codebook's device) made
/// from `draw`: the tokens' codebook entries, or the picture resized to the grid, encoded and
/// quantised.
pub fn initial_latent<C: LatentCodec + ?Sized>(
    draw: &InitDraw,
    codec: &C,
    codebook: &Tensor,
    geometry: Geometry,
) -> Result<Tensor, ImageError> {
    let picture = match draw {
        InitDraw::Tokens(ids) => return Ok(token_latent(codebook, geometry, ids)),
        InitDraw::Picture(picture) => picture.clone(),
        InitDraw::Gradient(gradient) => gradient.picture(),
    };
    let picture = resize_exact(&picture, geometry.side_x, geometry.side_y);
    let pixels = image_to_tensor(&picture, codebook.device()) * 2.0 - 1.0;
    let z = tch::no_grad(|| codec.encode(&pixels.to_kind(codec.kind()))).map_err(|source| {
        ImageError::Encode {
            role: "init image",
            source,
        }
    })?;
    Ok(tch::no_grad(|| {
        vector_quantize(&z.to_kind(Kind::Float), codebook)
    }))
}

fn token_latent(codebook: &Tensor, g: Geometry, ids: &[i64]) -> Tensor {
    let ids = Tensor::from_slice(ids).to_device(codebook.device());
    codebook
        .index_select(0, &ids)
        .view([1, g.tokens_y, g.tokens_x, -1])
        .permute([0, 3, 1, 2])
        .contiguous()
}

fn random_pixels((w, h): (u32, u32), stream: &mut Stream) -> RgbImage {
    RgbImage::from_fn(w, h, |_, _| {
        image::Rgb(std::array::from_fn(|_| stream.below(255) as u8))
    })
}

/// The random colours of `generate.py`'s `random_gradient_image`: red ramps left to right from
/// 0, green top to bottom from 0, blue top to bottom from a random start, each to a random end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gradient {
    /// Width of the picture (the requested width).
    pub width: u32,
    /// Height of the picture (the requested height).
    pub height: u32,
    /// Where blue starts (top row).
    pub blue_start: u8,
    /// Where red (right column), green and blue (bottom row) end.
    pub ends: [u8; 3],
}

impl Gradient {
    fn draw((width, height): (u32, u32), stream: &mut Stream) -> Gradient {
        let mut randint = |low: u64, high: u64| (low + stream.below(high - low)) as u8;
        Gradient {
            width,
            height,
            blue_start: randint(0, 255),
            ends: [randint(1, 255), randint(2, 255), randint(3, 128)],
        }
    }

    /// The picture: numpy's `linspace` ramps truncated to 8 bits, as `generate.py` makes it.
    pub fn picture(&self) -> RgbImage {
        let (w, h) = (self.width, self.height);
        let [red, green, blue] = self.ends.map(f64::from);
        RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([
                linspace(0.0, red, w, x) as u8,
                linspace(0.0, green, h, y) as u8,
                linspace(f64::from(self.blue_start), blue, h, y) as u8,
            ])
        })
    }
}

/// Element `i` of numpy's `linspace(start, stop, num)`: `i · ((stop − start) / (num − 1)) +
/// start`, the last exactly `stop`. The rounding matters: the ramps are truncated to integers.
fn linspace(start: f64, stop: f64, num: u32, i: u32) -> f64 {
    if num <= 1 {
        start
    } else if i == num - 1 {
        stop
    } else {
        f64::from(i) * ((stop - start) / f64::from(num - 1)) + start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_rounds_down_to_the_factor() {
        let g = Geometry::new(500, 250, 16).unwrap();
        assert_eq!(
            (g.tokens_x, g.tokens_y, g.side_x, g.side_y),
            (31, 15, 496, 240)
        );
        assert_eq!(Geometry::new(10, 100, 16), None);
    }

    #[test]
    fn missing_and_unreadable_files_name_the_role_and_path() {
        let err = load_rgb(Path::new("/nonexistent/cat.png"), "image prompt").unwrap_err();
        assert_eq!(
            err.to_string(),
            "image prompt file \"/nonexistent/cat.png\" does not exist: check the path"
        );
        let dir = tempfile::tempdir().unwrap();
        let bogus = dir.path().join("not.png");
        std::fs::write(&bogus, b"hello").unwrap();
        let err = load_rgb(&bogus, "init image").unwrap_err();
        assert!(
            err.to_string().contains("cannot be read as an image"),
            "{err}"
        );
    }

    #[test]
    fn image_tensor_round_trip_is_exact() {
        let mut s = RunRng::new(2).stream(0, Purpose::Init);
        let picture = random_pixels((7, 5), &mut s);
        let t = image_to_tensor(&picture, Device::Cpu);
        assert_eq!(t.size(), vec![1, 3, 5, 7]);
        assert_eq!(tensor_to_image(&t.get(0)), picture);
    }

    #[test]
    fn gradient_ramps_along_its_axes() {
        let mut s = RunRng::new(3).stream(0, Purpose::Init);
        let g = Gradient::draw((16, 8), &mut s).picture();
        assert_eq!(g.get_pixel(0, 0)[0], 0);
        assert!(g.get_pixel(15, 0)[0] >= 1);
        assert_eq!(g.get_pixel(0, 3)[0], g.get_pixel(0, 7)[0]);
        assert_eq!(g.get_pixel(3, 5)[1], g.get_pixel(12, 5)[1]);
    }

    #[test]
    fn resize_to_area_keeps_the_aspect() {
        let picture = RgbImage::new(400, 100);
        let small = resize_to_area(&picture, 64, 64);
        assert_eq!(small.dimensions(), (128, 32));
        let tiny = RgbImage::new(20, 10);
        assert_eq!(resize_to_area(&tiny, 64, 64).dimensions(), (20, 10));
    }
}
