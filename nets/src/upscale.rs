//! Upscaling pictures tile by tile with blended overlaps, the same way locally and on the farm.
//!
//! The farm runs [`Upscaler::run_tile`] for each tile of a [`TilePlan`] on whichever worker
//! leases it, and a stitch task joins them with [`Stitcher`]; the local command does both steps in
//! one process through exactly the same functions, so a farm result equals a local one.

use tch::{Device, Kind, Tensor};
use tessera_core::tiles::{Rect, StitchError, Stitcher, TileError, TilePlan, TileSpec};

use crate::esrgan::SrModel;
use crate::imageio::{Picture, PictureKind};

/// An upscale that cannot be done, naming the setting or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum UpscaleError {
    /// The tile settings do not fit the picture.
    #[error("tiling: {0}")]
    Tiles(#[from] TileError),
    /// The tiles do not add up to the picture.
    #[error("stitching: {0}")]
    Stitch(#[from] StitchError),
    /// A tile's pixels do not match its stated size.
    #[error("tile of {width}x{height} needs {expected} values, got {got}")]
    TileSize {
        width: u32,
        height: u32,
        expected: usize,
        got: usize,
    },
    /// The requested output scale is not usable.
    #[error("output scale {0} is out of range: it must be above 0 and at most 16")]
    OutScale(f64),
    /// The caller's stop check said the work is no longer wanted.
    #[error("stopped: the upscale is no longer wanted")]
    Stopped,
}

/// A super-resolution network together with how to tile its input.
pub struct Upscaler {
    model: SrModel,
    spec: TileSpec,
    device: Device,
}

impl Upscaler {
    /// Wraps a loaded network; `spec` decides the tiles (tile 0 means the whole picture at once).
    pub fn new(model: SrModel, spec: TileSpec, device: Device) -> Self {
        Upscaler {
            model,
            spec,
            device,
        }
    }

    /// The network's own factor.
    pub fn scale(&self) -> u32 {
        self.model.scale() as u32
    }

    /// The loaded network.
    pub fn model(&self) -> &SrModel {
        &self.model
    }

    /// The tile plan for a `width` x `height` input.
    pub fn plan(&self, width: u32, height: u32) -> Result<TilePlan, UpscaleError> {
        Ok(TilePlan::new(width, height, self.scale(), self.spec)?)
    }

    /// Upscales one tile: `pixels` are interleaved RGB in [0,1] of `width` x `height`; returns
    /// the network's output, interleaved, `scale` times larger along each side, unclamped.
    pub fn run_tile(
        &self,
        pixels: &[f32],
        width: u32,
        height: u32,
    ) -> Result<Vec<f32>, UpscaleError> {
        self.run_tile_unless(pixels, width, height, &|| false)
    }

    /// [`Upscaler::run_tile`], asking `stop` between the network's blocks:
    /// [`UpscaleError::Stopped`] once it says to stop.
    pub fn run_tile_unless(
        &self,
        pixels: &[f32],
        width: u32,
        height: u32,
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>, UpscaleError> {
        let expected = width as usize * height as usize * 3;
        if pixels.len() != expected {
            return Err(UpscaleError::TileSize {
                width,
                height,
                expected,
                got: pixels.len(),
            });
        }
        let output = tch::no_grad(|| {
            let (h, w) = (height as i64, width as i64);
            let input = Tensor::from_slice(pixels)
                .view([1, h, w, 3])
                .permute([0, 3, 1, 2])
                .to_device(self.device);
            let s = self.model.scale();
            let padded = pad_to_multiple(&input, self.model.input_multiple());
            let upscaled = self.model.forward_unless(&padded, stop)?;
            Some(
                upscaled
                    .narrow(2, 0, h * s)
                    .narrow(3, 0, w * s)
                    .permute([0, 2, 3, 1])
                    .to_device(Device::Cpu)
                    .to_kind(Kind::Float)
                    .contiguous(),
            )
        })
        .ok_or(UpscaleError::Stopped)?;
        Ok(Vec::<f32>::try_from(output.flatten(0, -1)).expect("float tensor converts to Vec<f32>"))
    }

    /// Upscales the rectangle `r` of `picture`: its colour, and its opacity through the network
    /// too (as Real-ESRGAN does: replicated into three channels, averaged back), interleaved
    /// with [`PictureKind::channels`] values per pixel, `scale` times larger, unclamped.
    pub fn upscale_region(&self, picture: &Picture, r: Rect) -> Result<Vec<f32>, UpscaleError> {
        self.upscale_region_unless(picture, r, &|| false)
    }

    /// [`Upscaler::upscale_region`], asking `stop` between the network's blocks (of the
    /// colour pass and of the opacity pass): [`UpscaleError::Stopped`] once it says to stop.
    pub fn upscale_region_unless(
        &self,
        picture: &Picture,
        r: Rect,
        stop: &dyn Fn() -> bool,
    ) -> Result<Vec<f32>, UpscaleError> {
        let rgb = crop_rgb(&picture.rgb, picture.width, r);
        let colour = self.run_tile_unless(&rgb, r.width, r.height, stop)?;
        let Some(alpha) = &picture.alpha else {
            return Ok(colour);
        };
        let opacity: Vec<f32> = crop(alpha, 1, picture.width, r)
            .iter()
            .flat_map(|&a| [a; 3])
            .collect();
        let opacity = self.run_tile_unless(&opacity, r.width, r.height, stop)?;
        Ok(colour
            .chunks_exact(3)
            .zip(opacity.chunks_exact(3))
            .flat_map(|(c, a)| [c[0], c[1], c[2], (a[0] + a[1] + a[2]) / 3.0])
            .collect())
    }

    /// Upscales interleaved RGB of `width` x `height` through every tile of its plan and
    /// stitches the result (unclamped).
    pub fn upscale_rgb(
        &self,
        rgb: &[f32],
        width: u32,
        height: u32,
    ) -> Result<Vec<f32>, UpscaleError> {
        self.stitch_tiles(width, height, 3, |r| {
            self.run_tile(&crop_rgb(rgb, width, r), r.width, r.height)
        })
    }

    /// Runs `region` on each tile's input rectangle of a `width` x `height` picture and
    /// stitches the outputs (`channels` values per pixel), each rounded as a tile file is.
    fn stitch_tiles(
        &self,
        width: u32,
        height: u32,
        channels: usize,
        region: impl Fn(Rect) -> Result<Vec<f32>, UpscaleError>,
    ) -> Result<Vec<f32>, UpscaleError> {
        let plan = self.plan(width, height)?;
        let mut stitcher = Stitcher::new(plan.clone(), channels);
        for tile in &plan.tiles {
            let upscaled = region(tile.input())?;
            stitcher.add(tile.index, &round_as_tile_file(&upscaled))?;
        }
        Ok(stitcher.finish()?)
    }

    /// Upscales a whole picture tile by tile, keeping its kind (alpha, greyscale, 16 bits),
    /// then resizes to `outscale` times the input when that differs from the network's factor.
    /// A farm's tiles and stitch compute the same numbers ([`crate::farm`]).
    pub fn upscale_picture(
        &self,
        picture: &Picture,
        outscale: Option<f64>,
    ) -> Result<Picture, UpscaleError> {
        let (w, h) = (picture.width, picture.height);
        let kind = picture.kind();
        let values =
            self.stitch_tiles(w, h, kind.channels(), |r| self.upscale_region(picture, r))?;
        let s = self.scale();
        let upscaled = Picture::from_interleaved(kind, w * s, h * s, &values)
            .expect("the stitched picture has the plan's size");
        match outscale {
            Some(factor) if factor != f64::from(s) => resize_picture(&upscaled, w, h, factor),
            _ => Ok(upscaled),
        }
    }
}

/// Tiles travel between farm workers as 16-bit PNGs ([`tile_png`]); the local path rounds its
/// tiles the same way so that both stitch identical numbers.
pub fn round_as_tile_file(pixels: &[f32]) -> Vec<f32> {
    pixels
        .iter()
        .map(|&v| f32::from(to_u16(v)) / 65535.0)
        .collect()
}

fn to_u16(v: f32) -> u16 {
    (v.clamp(0.0, 1.0) * 65535.0).round() as u16
}

/// The tEXt keyword under which a tile PNG records the [`PictureKind`] of its source, so the
/// stitch writes the result in that kind.
const KIND_KEYWORD: &str = "Tessera picture kind";

/// A tile file that cannot be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum TileFileError {
    /// PNG encoding failed.
    #[error("cannot encode the tile: {0}")]
    Encode(#[from] png::EncodingError),
    /// The bytes are not a readable picture.
    #[error("cannot read the tile: {0}")]
    Decode(#[from] image::ImageError),
    /// The recorded kind is unreadable or disagrees with the pixels.
    #[error("the tile's picture kind {0:?} is not valid")]
    Kind(String),
}

/// An upscaled tile (interleaved, [`PictureKind::channels`] values per pixel, of `width` x
/// `height`) as a 16-bit RGB or RGBA PNG recording its source's `kind`: the form in which tile
/// tasks hand it to the stitch task.
pub fn tile_png(
    pixels: &[f32],
    kind: PictureKind,
    width: u32,
    height: u32,
) -> Result<Vec<u8>, TileFileError> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(if kind.alpha {
        png::ColorType::Rgba
    } else {
        png::ColorType::Rgb
    });
    encoder.set_depth(png::BitDepth::Sixteen);
    let kind_text = serde_json::to_string(&kind).expect("a picture kind serialises");
    encoder.add_text_chunk(KIND_KEYWORD.into(), kind_text)?;
    let mut writer = encoder.write_header()?;
    let data: Vec<u8> = pixels
        .iter()
        .flat_map(|&v| to_u16(v).to_be_bytes())
        .collect();
    writer.write_image_data(&data)?;
    writer.finish()?;
    Ok(out)
}

/// The pixels of a tile PNG made by [`tile_png`], with its source's kind, width and height.
/// Any PNG reads, at its own precision; one without a recorded kind (from a worker older than
/// kinds) is 8-bit colour, with alpha if it has it.
pub fn read_tile_png(bytes: &[u8]) -> Result<(Vec<f32>, PictureKind, u32, u32), TileFileError> {
    let image = image::load_from_memory(bytes)?;
    let alpha = image.color().has_alpha();
    let kind = match recorded_kind(bytes)? {
        Some(kind) if kind.alpha == alpha => kind,
        Some(kind) => return Err(TileFileError::Kind(format!("{kind:?}"))),
        None => PictureKind {
            alpha,
            ..PictureKind::default()
        },
    };
    let (width, height) = (image.width(), image.height());
    let pixels = if alpha {
        image.into_rgba32f().into_raw()
    } else {
        image.into_rgb32f().into_raw()
    };
    Ok((pixels, kind, width, height))
}

/// The kind a tile PNG records in its tEXt chunk, if any.
fn recorded_kind(bytes: &[u8]) -> Result<Option<PictureKind>, TileFileError> {
    let reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .map_err(|e| TileFileError::Kind(e.to_string()))?;
    reader
        .info()
        .uncompressed_latin1_text
        .iter()
        .find(|chunk| chunk.keyword == KIND_KEYWORD)
        .map(|chunk| {
            serde_json::from_str(&chunk.text).map_err(|_| TileFileError::Kind(chunk.text.clone()))
        })
        .transpose()
}

/// Pads the bottom and right edges of an NCHW batch by replication up to a multiple of
/// `multiple`, as the pixel-unshuffling x2 and x1 networks need; the caller crops the surplus off.
fn pad_to_multiple(x: &Tensor, multiple: i64) -> Tensor {
    let (h, w) = (x.size()[2], x.size()[3]);
    let (ph, pw) = (
        (multiple - h % multiple) % multiple,
        (multiple - w % multiple) % multiple,
    );
    if ph == 0 && pw == 0 {
        x.shallow_clone()
    } else {
        x.replication_pad2d([0, pw, 0, ph])
    }
}

/// Copies the rectangle `r` out of interleaved RGB that is `width` pixels wide.
pub fn crop_rgb(rgb: &[f32], width: u32, r: Rect) -> Vec<f32> {
    crop(rgb, 3, width, r)
}

/// Copies the rectangle `r` out of interleaved values, `channels` per pixel, that are `width`
/// pixels wide.
pub fn crop(values: &[f32], channels: usize, width: u32, r: Rect) -> Vec<f32> {
    let mut out = Vec::with_capacity(r.area() as usize * channels);
    for y in r.y..r.y + r.height {
        let start = (y as usize * width as usize + r.x as usize) * channels;
        out.extend_from_slice(&values[start..start + r.width as usize * channels]);
    }
    out
}

/// Resizes an upscaled picture to `factor` times the original `w` x `h` with Lanczos filtering,
/// as Real-ESRGAN's `--outscale` does.
fn resize_picture(p: &Picture, w: u32, h: u32, factor: f64) -> Result<Picture, UpscaleError> {
    if !(factor > 0.0 && factor <= 16.0) {
        return Err(UpscaleError::OutScale(factor));
    }
    let nw = ((f64::from(w) * factor).round() as u32).max(1);
    let nh = ((f64::from(h) * factor).round() as u32).max(1);
    let resize = |data: Vec<f32>| -> Vec<f32> {
        let buf = image::ImageBuffer::<image::Rgb<f32>, _>::from_raw(p.width, p.height, data)
            .expect("upscaled picture has its stated size");
        image::imageops::resize(&buf, nw, nh, image::imageops::FilterType::Lanczos3).into_raw()
    };
    let rgb = resize(p.rgb.clone());
    let alpha = p.alpha.as_ref().map(|a| {
        let grey: Vec<f32> = a.iter().flat_map(|&v| [v; 3]).collect();
        resize(grey).chunks_exact(3).map(|c| c[0]).collect()
    });
    Ok(Picture {
        width: nw,
        height: nh,
        rgb,
        alpha,
        grey: p.grey,
        sixteen_bit: p.sixteen_bit,
    })
}
