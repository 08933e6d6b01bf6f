//! Tile geometry for sharding one upscale across many workers, and the blend that joins the
//! tiles back without seams.
//!
//! Real-ESRGAN pastes tiles edge to edge, so each tile border shows where the network saw a
//! different context. Here neighbouring tiles overlap by `overlap` input pixels and the overlap is
//! cross-faded with linear ramps whose weights sum to one at every output pixel; each tile also
//! reads `pad` extra pixels of context that it never contributes. The plan is a pure function of
//! the image size and the [`TileSpec`], so the coordinator can cut a picture into tasks and any
//! worker can stitch the results, all agreeing on every rectangle and weight.

use serde::{Deserialize, Serialize};

/// Smallest tile core the planner accepts; below it the padding dominates the work.
pub const MIN_TILE: u32 = 16;

/// How to cut an image into tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TileSpec {
    /// Largest tile core, in input pixels along each side; 0 means one tile for the whole image.
    pub tile: u32,
    /// Context read beyond the blended region on each side, in input pixels, never contributed.
    pub pad: u32,
    /// Width of the cross-fade between neighbouring tiles, in input pixels (even).
    pub overlap: u32,
}

impl Default for TileSpec {
    fn default() -> Self {
        // Measured on Real-ESRGAN x4plus (worker/tests/upscale.rs): 16 pixels of context leave
        // seams of up to 18 levels, 32 up to 3, 48 at most 1.
        TileSpec {
            tile: 256,
            pad: 48,
            overlap: 16,
        }
    }
}

/// A tile plan that cannot work, with the field and limit at fault.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TileError {
    /// The image has no pixels.
    #[error("image is empty ({width}x{height})")]
    EmptyImage { width: u32, height: u32 },
    /// Tiles so small that padding and overlap would dominate.
    #[error("tile size {tile} is too small: the minimum is {MIN_TILE} (or 0 for no tiling)")]
    TileTooSmall { tile: u32 },
    /// An overlap the tile cannot hold, or one that cannot be split evenly between two tiles.
    #[error("tile overlap {overlap} must be even and smaller than the tile core {core}")]
    BadOverlap { overlap: u32, core: u32 },
    /// The upscale factor must be a whole number of output pixels per input pixel.
    #[error("scale {scale} is not supported: it must be between 1 and 16")]
    BadScale { scale: u32 },
}

/// A rectangle of pixels: `x..x+width` by `y..y+height`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

impl Rect {
    /// Number of pixels in the rectangle.
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// One span of a tile along one axis, in input pixels: what it reads, what it contributes, and
/// where its contribution fades in and out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// First input pixel read (context included).
    pub read_start: u32,
    /// One past the last input pixel read.
    pub read_end: u32,
    /// First input pixel whose upscaled output this tile contributes to.
    pub out_start: u32,
    /// One past the last contributed input pixel.
    pub out_end: u32,
    /// Whether the contribution ramps up over `overlap` pixels from `out_start`.
    pub fade_in: bool,
    /// Whether the contribution ramps down over `overlap` pixels until `out_end`.
    pub fade_out: bool,
}

impl Span {
    /// Blend weights of each contributed output pixel along this axis, at `scale` output pixels
    /// per input pixel. Weights of the two tiles sharing an overlap sum to exactly one.
    pub fn weights(&self, scale: u32, overlap: u32) -> Vec<f32> {
        let s = scale as f64;
        let ramp = |distance: f64| -> f64 {
            if overlap == 0 {
                1.0
            } else {
                (distance / overlap as f64).clamp(0.0, 1.0)
            }
        };
        (self.out_start * scale..self.out_end * scale)
            .map(|u| {
                // Distance of the output pixel's centre from the ramp's start, in input pixels.
                let centre = (u as f64 + 0.5) / s;
                let mut w = 1.0;
                if self.fade_in {
                    w *= ramp(centre - self.out_start as f64);
                }
                if self.fade_out {
                    w *= 1.0 - ramp(centre - (self.out_end - overlap) as f64);
                }
                w as f32
            })
            .collect()
    }
}

/// One tile of a plan: which input it reads and where its upscaled pixels land.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tile {
    /// Position in the plan, row-major.
    pub index: usize,
    /// Horizontal span.
    pub x: Span,
    /// Vertical span.
    pub y: Span,
}

impl Tile {
    /// The input rectangle the worker upscales (context included).
    pub fn input(&self) -> Rect {
        Rect {
            x: self.x.read_start,
            y: self.y.read_start,
            width: self.x.read_end - self.x.read_start,
            height: self.y.read_end - self.y.read_start,
        }
    }

    /// The output rectangle this tile contributes to, at `scale`.
    pub fn output(&self, scale: u32) -> Rect {
        Rect {
            x: self.x.out_start * scale,
            y: self.y.out_start * scale,
            width: (self.x.out_end - self.x.out_start) * scale,
            height: (self.y.out_end - self.y.out_start) * scale,
        }
    }

    /// Where [`Tile::output`] begins inside the tile's own upscaled image.
    pub fn crop_offset(&self, scale: u32) -> (u32, u32) {
        (
            (self.x.out_start - self.x.read_start) * scale,
            (self.y.out_start - self.y.read_start) * scale,
        )
    }
}

/// A whole image cut into tiles.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TilePlan {
    /// Input width in pixels.
    pub width: u32,
    /// Input height in pixels.
    pub height: u32,
    /// Output pixels per input pixel along each axis.
    pub scale: u32,
    /// The spec the plan was made with.
    pub spec: TileSpec,
    /// Number of tile columns.
    pub columns: usize,
    /// The tiles, row-major.
    pub tiles: Vec<Tile>,
}

impl TilePlan {
    /// Cuts a `width` x `height` image into tiles no larger than `spec.tile` (plus overlap and
    /// padding), all of nearly equal size, for an upscale by `scale`.
    pub fn new(width: u32, height: u32, scale: u32, spec: TileSpec) -> Result<Self, TileError> {
        if width == 0 || height == 0 {
            return Err(TileError::EmptyImage { width, height });
        }
        if !(1..=16).contains(&scale) {
            return Err(TileError::BadScale { scale });
        }
        if spec.tile != 0 && spec.tile < MIN_TILE {
            return Err(TileError::TileTooSmall { tile: spec.tile });
        }
        let xs = spans(width, spec)?;
        let ys = spans(height, spec)?;
        let tiles = ys
            .iter()
            .flat_map(|y| xs.iter().map(move |x| (*x, *y)))
            .enumerate()
            .map(|(index, (x, y))| Tile { index, x, y })
            .collect();
        Ok(TilePlan {
            width,
            height,
            scale,
            spec,
            columns: xs.len(),
            tiles,
        })
    }

    /// Output width in pixels.
    pub fn out_width(&self) -> u32 {
        self.width * self.scale
    }

    /// Output height in pixels.
    pub fn out_height(&self) -> u32 {
        self.height * self.scale
    }
}

/// Splits `length` pixels into near-equal cores of at most `spec.tile`, each widened by half the
/// overlap on every inner side and by the padding for context.
fn spans(length: u32, spec: TileSpec) -> Result<Vec<Span>, TileError> {
    let count = if spec.tile == 0 {
        1
    } else {
        length.div_ceil(spec.tile)
    };
    let boundary = |k: u32| (u64::from(k) * u64::from(length) / u64::from(count)) as u32;
    let smallest_core = (0..count)
        .map(|k| boundary(k + 1) - boundary(k))
        .min()
        .unwrap_or(length);
    if count > 1 && (!spec.overlap.is_multiple_of(2) || spec.overlap >= smallest_core) {
        return Err(TileError::BadOverlap {
            overlap: spec.overlap,
            core: smallest_core,
        });
    }
    let half = spec.overlap / 2;
    Ok((0..count)
        .map(|k| {
            let first = k == 0;
            let last = k + 1 == count;
            let out_start = if first { 0 } else { boundary(k) - half };
            let out_end = if last { length } else { boundary(k + 1) + half };
            Span {
                read_start: out_start.saturating_sub(spec.pad),
                read_end: out_end.saturating_add(spec.pad).min(length),
                out_start,
                out_end,
                fade_in: !first,
                fade_out: !last,
            }
        })
        .collect())
}

/// Accumulates upscaled tiles into one image, weighting each by its blend ramps.
///
/// Pixels are interleaved `f32` values (`channels` per pixel) in any range; the stitcher only
/// forms weighted sums, so the caller decides about quantisation.
pub struct Stitcher {
    plan: TilePlan,
    channels: usize,
    sum: Vec<f32>,
    added: Vec<bool>,
}

/// A tile handed to [`Stitcher::add`] that does not fit its plan.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StitchError {
    /// The tile index is not in the plan.
    #[error("tile {index} is not in the plan ({count} tiles)")]
    UnknownTile { index: usize, count: usize },
    /// The pixels do not have the tile's upscaled size.
    #[error("tile {index} has {got} values, expected {expected} ({width}x{height}x{channels})")]
    WrongSize {
        index: usize,
        got: usize,
        expected: usize,
        width: u32,
        height: u32,
        channels: usize,
    },
    /// The same tile was added twice; counting it twice would brighten its region.
    #[error("tile {index} was already added")]
    Duplicate { index: usize },
    /// [`Stitcher::finish`] was called before every tile arrived.
    #[error("{missing} of {count} tiles are missing, the first is tile {first}")]
    Incomplete {
        missing: usize,
        count: usize,
        first: usize,
    },
}

impl Stitcher {
    /// An empty output for `plan` with `channels` values per pixel.
    pub fn new(plan: TilePlan, channels: usize) -> Self {
        let len = plan.out_width() as usize * plan.out_height() as usize * channels;
        let added = vec![false; plan.tiles.len()];
        Stitcher {
            plan,
            channels,
            sum: vec![0.0; len],
            added,
        }
    }

    /// Adds tile `index`: `pixels` is the whole upscaled [`Tile::input`], row-major, interleaved.
    pub fn add(&mut self, index: usize, pixels: &[f32]) -> Result<(), StitchError> {
        let tile = self.tile(index)?;
        let scale = self.plan.scale;
        let input = tile.input();
        let size = (input.width * scale, input.height * scale);
        let offset = tile.crop_offset(scale);
        self.blend(index, pixels, size, offset)
    }

    /// Adds tile `index` from its contribution alone: `pixels` is the upscaled tile cropped to
    /// [`Tile::output`], row-major, interleaved. That is all the stitch reads of a tile, so farm
    /// workers hand back only this, a fraction of the tile with its context.
    pub fn add_contribution(&mut self, index: usize, pixels: &[f32]) -> Result<(), StitchError> {
        let out = self.tile(index)?.output(self.plan.scale);
        self.blend(index, pixels, (out.width, out.height), (0, 0))
    }

    fn tile(&self, index: usize) -> Result<Tile, StitchError> {
        let count = self.plan.tiles.len();
        self.plan
            .tiles
            .get(index)
            .cloned()
            .ok_or(StitchError::UnknownTile { index, count })
    }

    /// Blends tile `index`'s contribution from `pixels`, an image of `(tw, th)` in which the
    /// contribution starts at `(cx, cy)`.
    fn blend(
        &mut self,
        index: usize,
        pixels: &[f32],
        (tw, th): (u32, u32),
        (cx, cy): (u32, u32),
    ) -> Result<(), StitchError> {
        let tile = self.tile(index)?;
        let scale = self.plan.scale;
        let expected = tw as usize * th as usize * self.channels;
        if pixels.len() != expected {
            return Err(StitchError::WrongSize {
                index,
                got: pixels.len(),
                expected,
                width: tw,
                height: th,
                channels: self.channels,
            });
        }
        if self.added[index] {
            return Err(StitchError::Duplicate { index });
        }
        let overlap = self.plan.spec.overlap;
        let wx = tile.x.weights(scale, overlap);
        let wy = tile.y.weights(scale, overlap);
        let out = tile.output(scale);
        let c = self.channels;
        let out_w = self.plan.out_width() as usize;
        for (row, w_row) in wy.iter().enumerate() {
            let src = ((cy as usize + row) * tw as usize + cx as usize) * c;
            let dst = ((out.y as usize + row) * out_w + out.x as usize) * c;
            let src_row = &pixels[src..src + out.width as usize * c];
            let dst_row = &mut self.sum[dst..dst + out.width as usize * c];
            for ((d, s), w_col) in dst_row
                .chunks_exact_mut(c)
                .zip(src_row.chunks_exact(c))
                .zip(&wx)
            {
                let w = w_row * w_col;
                for (dv, sv) in d.iter_mut().zip(s) {
                    *dv += w * sv;
                }
            }
        }
        self.added[index] = true;
        Ok(())
    }

    /// The stitched image, once every tile has been added.
    pub fn finish(self) -> Result<Vec<f32>, StitchError> {
        let missing: Vec<usize> = (0..self.added.len()).filter(|&i| !self.added[i]).collect();
        if let Some(&first) = missing.first() {
            return Err(StitchError::Incomplete {
                missing: missing.len(),
                count: self.added.len(),
                first,
            });
        }
        Ok(self.sum)
    }

    /// The plan being stitched.
    pub fn plan(&self) -> &TilePlan {
        &self.plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(tile: u32, pad: u32, overlap: u32) -> TileSpec {
        TileSpec { tile, pad, overlap }
    }

    /// Sum of every tile's weight at each output pixel.
    fn weight_cover(plan: &TilePlan) -> Vec<f32> {
        let mut stitcher = Stitcher::new(plan.clone(), 1);
        for tile in &plan.tiles {
            let input = tile.input();
            let ones = vec![1.0; (input.area() * u64::from(plan.scale).pow(2)) as usize];
            stitcher.add(tile.index, &ones).unwrap();
        }
        stitcher.finish().unwrap()
    }

    #[test]
    fn weights_partition_unity_everywhere() {
        for (w, h, s, sp) in [
            (100, 37, 4, spec(32, 8, 8)),
            (496, 496, 4, spec(128, 16, 16)),
            (17, 300, 2, spec(16, 0, 2)),
            (64, 64, 1, spec(0, 10, 10)),
            (257, 129, 3, spec(64, 5, 12)),
        ] {
            let plan = TilePlan::new(w, h, s, sp).unwrap();
            for (i, v) in weight_cover(&plan).iter().enumerate() {
                assert!(
                    (v - 1.0).abs() < 1e-6,
                    "{w}x{h} {sp:?}: pixel {i} weight {v}"
                );
            }
        }
    }

    #[test]
    fn tiles_respect_the_size_limit_and_stay_inside() {
        let sp = spec(128, 16, 16);
        let plan = TilePlan::new(496, 300, 4, sp).unwrap();
        assert_eq!(plan.columns, 4);
        assert_eq!(plan.tiles.len(), 4 * 3);
        for t in &plan.tiles {
            let r = t.input();
            assert!(r.x + r.width <= 496 && r.y + r.height <= 300);
            assert!(r.width <= 128 + sp.overlap + 2 * sp.pad);
            let o = t.output(4);
            assert!(o.x >= r.x * 4 && o.x + o.width <= (r.x + r.width) * 4);
        }
    }

    #[test]
    fn padding_larger_than_the_image_reads_the_whole_image() {
        // A prompt file line `{"prompt": "x", "tile_pad": 4294967295}` overflowed the read end
        // (it panicked the `prompts_jsonl` fuzz target); such padding means the whole image.
        for tile in [0, 256] {
            let plan = TilePlan::new(496, 496, 4, spec(tile, u32::MAX, 16)).unwrap();
            for t in &plan.tiles {
                let r = t.input();
                assert_eq!(
                    (r.x, r.y, r.width, r.height),
                    (0, 0, 496, 496),
                    "tile {tile}"
                );
            }
        }
    }

    #[test]
    fn padding_gives_context_on_inner_sides_only() {
        let plan = TilePlan::new(100, 100, 2, spec(50, 8, 4)).unwrap();
        let first = &plan.tiles[0].x;
        assert_eq!((first.read_start, first.out_start), (0, 0));
        assert_eq!((first.out_end, first.read_end), (52, 60));
        let second = &plan.tiles[1].x;
        assert_eq!((second.read_start, second.out_start), (40, 48));
        assert_eq!((second.out_end, second.read_end), (100, 100));
    }

    #[test]
    fn untiled_plan_is_one_tile_over_everything() {
        let plan = TilePlan::new(31, 17, 4, spec(0, 10, 10)).unwrap();
        assert_eq!(plan.tiles.len(), 1);
        assert_eq!(
            plan.tiles[0].input(),
            Rect {
                x: 0,
                y: 0,
                width: 31,
                height: 17
            }
        );
        assert_eq!(plan.tiles[0].x.weights(4, 10), vec![1.0; 124]);
    }

    #[test]
    fn stitching_tiles_of_an_image_reproduces_it() {
        // With an identity "upscale" (nearest, scale 2) the stitched image equals the direct one.
        let (w, h, s) = (45u32, 23u32, 2u32);
        let source: Vec<f32> = (0..w * h * 3).map(|v| (v % 251) as f32).collect();
        let nearest = |r: Rect| -> Vec<f32> {
            let mut out = Vec::new();
            for y in 0..r.height * s {
                for x in 0..r.width * s {
                    let (sx, sy) = (r.x + x / s, r.y + y / s);
                    let i = ((sy * w + sx) * 3) as usize;
                    out.extend_from_slice(&source[i..i + 3]);
                }
            }
            out
        };
        let plan = TilePlan::new(w, h, s, spec(16, 3, 4)).unwrap();
        let mut stitcher = Stitcher::new(plan.clone(), 3);
        let mut from_contributions = Stitcher::new(plan.clone(), 3);
        for tile in plan.tiles.iter().rev() {
            stitcher.add(tile.index, &nearest(tile.input())).unwrap();
            // The contribution alone, in input pixels (`nearest` upscales it by s).
            let out = tile.output(s);
            let contribution = Rect {
                x: out.x / s,
                y: out.y / s,
                width: out.width / s,
                height: out.height / s,
            };
            from_contributions
                .add_contribution(tile.index, &nearest(contribution))
                .unwrap();
        }
        let full = nearest(Rect {
            x: 0,
            y: 0,
            width: w,
            height: h,
        });
        let stitched = stitcher.finish().unwrap();
        let worst = full
            .iter()
            .zip(&stitched)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-3, "worst difference {worst}");
        assert_eq!(from_contributions.finish().unwrap(), stitched);
    }

    #[test]
    fn bad_plans_name_the_problem() {
        assert_eq!(
            TilePlan::new(0, 5, 4, TileSpec::default()),
            Err(TileError::EmptyImage {
                width: 0,
                height: 5
            })
        );
        assert_eq!(
            TilePlan::new(64, 64, 4, spec(8, 0, 0)),
            Err(TileError::TileTooSmall { tile: 8 })
        );
        assert_eq!(
            TilePlan::new(64, 64, 4, spec(32, 0, 3)),
            Err(TileError::BadOverlap {
                overlap: 3,
                core: 32
            })
        );
        assert_eq!(
            TilePlan::new(64, 64, 0, TileSpec::default()),
            Err(TileError::BadScale { scale: 0 })
        );
        let msg = TileError::TileTooSmall { tile: 8 }.to_string();
        assert!(msg.contains("minimum is 16"), "{msg}");
    }

    #[test]
    fn stitcher_refuses_wrong_duplicate_and_missing_tiles() {
        let plan = TilePlan::new(40, 40, 2, spec(20, 2, 4)).unwrap();
        let mut st = Stitcher::new(plan.clone(), 1);
        assert!(matches!(
            st.add(9, &[]),
            Err(StitchError::UnknownTile { index: 9, .. })
        ));
        assert!(matches!(
            st.add(0, &[0.0; 3]),
            Err(StitchError::WrongSize { index: 0, .. })
        ));
        let n = (plan.tiles[0].input().area() * 4) as usize;
        st.add(0, &vec![0.0; n]).unwrap();
        assert_eq!(
            st.add(0, &vec![0.0; n]),
            Err(StitchError::Duplicate { index: 0 })
        );
        assert!(matches!(
            st.finish(),
            Err(StitchError::Incomplete {
                missing: 3,
                first: 1,
                ..
            })
        ));
    }
}
