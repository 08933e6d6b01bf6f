//! Upscaling pictures tile by tile with blended overlaps, the same way locally and on the farm.
//!
//! The farm runs [`Upscaler::run_tile`] for each tile of a [`TilePlan`] on whichever worker
//! leases it, and a stitch task joins them with [`Stitcher`]; the local command does both steps in
//! one process through exactly the same functions, so a farm result equals a local one.

use tch::{Device, Kind, Tensor};
use tessera_core::tiles::{Rect, StitchError, Stitcher, TileError, TilePlan, TileSpec};

use crate::esrgan::SrModel;
use crate::imageio::Picture;

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
            self.model
                .forward(&pad_to_multiple(&input, self.model.input_multiple()))
                .narrow(2, 0, h * s)
                .narrow(3, 0, w * s)
                .permute([0, 2, 3, 1])
                .to_device(Device::Cpu)
                .to_kind(Kind::Float)
                .contiguous()
        });
        Ok(Vec::<f32>::try_from(output.flatten(0, -1)).expect("float tensor converts to Vec<f32>"))
    }

    /// Upscales interleaved RGB of `width` x `height` through every tile of its plan and
    /// stitches the result (unclamped).
    pub fn upscale_rgb(
        &self,
        rgb: &[f32],
        width: u32,
        height: u32,
    ) -> Result<Vec<f32>, UpscaleError> {
        let plan = self.plan(width, height)?;
        let mut stitcher = Stitcher::new(plan.clone(), 3);
        for tile in &plan.tiles {
            let input = tile.input();
            let crop = crop_rgb(rgb, width, input);
            let upscaled = self.run_tile(&crop, input.width, input.height)?;
            stitcher.add(tile.index, &round_as_tile_file(&upscaled))?;
        }
        Ok(stitcher.finish()?)
    }

    /// Upscales a whole picture, its alpha channel through the network too (as Real-ESRGAN
    /// does), then resizes to `outscale` times the input when that differs from the network's
    /// factor.
    pub fn upscale_picture(
        &self,
        picture: &Picture,
        outscale: Option<f64>,
    ) -> Result<Picture, UpscaleError> {
        let (w, h) = (picture.width, picture.height);
        let rgb = self.upscale_rgb(&picture.rgb, w, h)?;
        let alpha = match &picture.alpha {
            Some(alpha) => {
                let grey: Vec<f32> = alpha.iter().flat_map(|&a| [a; 3]).collect();
                let up = self.upscale_rgb(&grey, w, h)?;
                Some(
                    up.chunks_exact(3)
                        .map(|c| (c[0] + c[1] + c[2]) / 3.0)
                        .collect(),
                )
            }
            None => None,
        };
        let s = self.scale();
        let upscaled = Picture {
            width: w * s,
            height: h * s,
            rgb,
            alpha,
            grey: picture.grey,
            sixteen_bit: picture.sixteen_bit,
        };
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

/// An upscaled tile (interleaved RGB of `width` x `height`) as a 16-bit PNG, the form in which
/// tile tasks hand it to the stitch task.
pub fn tile_png(pixels: &[f32], width: u32, height: u32) -> Result<Vec<u8>, image::ImageError> {
    let raw: Vec<u16> = pixels.iter().map(|&v| to_u16(v)).collect();
    let buffer = image::ImageBuffer::<image::Rgb<u16>, _>::from_raw(width, height, raw)
        .expect("tile pixels have the tile's size");
    let mut out = Vec::new();
    buffer.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)?;
    Ok(out)
}

/// The pixels of a tile PNG made by [`tile_png`] (any PNG reads, at its own precision), with
/// its width and height.
pub fn read_tile_png(bytes: &[u8]) -> Result<(Vec<f32>, u32, u32), image::ImageError> {
    let rgb = image::load_from_memory(bytes)?.into_rgb32f();
    let (width, height) = rgb.dimensions();
    Ok((rgb.into_raw(), width, height))
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
    let mut out = Vec::with_capacity(r.area() as usize * 3);
    for y in r.y..r.y + r.height {
        let start = (y as usize * width as usize + r.x as usize) * 3;
        out.extend_from_slice(&rgb[start..start + r.width as usize * 3]);
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
