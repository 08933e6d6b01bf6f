//! Reading users' pictures into the form the networks take, and writing results back losslessly
//! in the same kind (greyscale stays greyscale, alpha stays, 16-bit stays 16-bit).

use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageBuffer, ImageReader};

/// Largest width or height accepted, so a hostile header cannot make us allocate gigabytes.
pub const MAX_SIDE: u32 = 16_384;
/// Largest decoded allocation accepted (bytes), against decompression bombs.
pub const MAX_DECODED_BYTES: u64 = 2 << 30;

/// A picture as the upscaler sees it: colour in [0,1] plus what is needed to write it back.
#[derive(Clone, Debug, PartialEq)]
pub struct Picture {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Colour, row-major, interleaved RGB (greyscale is replicated into the three channels).
    pub rgb: Vec<f32>,
    /// Opacity in [0,1], row-major, if the source had an alpha channel.
    pub alpha: Option<Vec<f32>>,
    /// Whether the source was greyscale, so the result is written as greyscale too.
    pub grey: bool,
    /// Whether the source had 16 bits per channel, so the result keeps them.
    pub sixteen_bit: bool,
}

/// What a picture is besides its pixels: the form it is written back in, so that an upscale,
/// local or on the farm, returns the same kind of picture it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PictureKind {
    /// It has an opacity channel.
    pub alpha: bool,
    /// It is greyscale.
    pub grey: bool,
    /// It has 16 bits per channel.
    pub sixteen_bit: bool,
}

impl PictureKind {
    /// Values per pixel while it is worked on: three of colour (greyscale is replicated), and
    /// one of opacity when it has alpha.
    pub fn channels(self) -> usize {
        if self.alpha {
            4
        } else {
            3
        }
    }
}

/// A picture that cannot be read or written, naming the file and the reason.
#[derive(Debug, thiserror::Error)]
pub enum ImageIoError {
    /// The file is missing, unreadable, truncated or not a supported format.
    #[error("cannot read image {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The file could not be opened at all.
    #[error("cannot open image {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The result could not be written.
    #[error("cannot write image {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: image::ImageError,
    },
    /// The picture's data does not match its stated size.
    #[error("picture data holds {got} values, {width}x{height} needs {expected}")]
    BadData {
        width: u32,
        height: u32,
        got: usize,
        expected: usize,
    },
}

impl Picture {
    /// A picture from interleaved RGB values in [0,1], without alpha, written as 8-bit RGB.
    pub fn from_rgb(width: u32, height: u32, rgb: Vec<f32>) -> Result<Self, ImageIoError> {
        let picture = Picture {
            width,
            height,
            rgb,
            alpha: None,
            grey: false,
            sixteen_bit: false,
        };
        picture.check()?;
        Ok(picture)
    }

    /// Number of pixels.
    pub fn pixels(&self) -> usize {
        self.width as usize * self.height as usize
    }

    /// How the picture is written back, which its upscale keeps.
    pub fn kind(&self) -> PictureKind {
        PictureKind {
            alpha: self.alpha.is_some(),
            grey: self.grey,
            sixteen_bit: self.sixteen_bit,
        }
    }

    /// A picture of `kind` from interleaved values, [`PictureKind::channels`] per pixel
    /// (colour, then opacity when it has alpha), as the upscaler's tiles carry them.
    pub fn from_interleaved(
        kind: PictureKind,
        width: u32,
        height: u32,
        values: &[f32],
    ) -> Result<Self, ImageIoError> {
        let channels = kind.channels();
        let expected = width as usize * height as usize * channels;
        if values.len() != expected {
            return Err(ImageIoError::BadData {
                width,
                height,
                got: values.len(),
                expected,
            });
        }
        let pixels = values.chunks_exact(channels);
        Ok(Picture {
            width,
            height,
            rgb: pixels.clone().flat_map(|p| &p[..3]).copied().collect(),
            alpha: kind.alpha.then(|| pixels.map(|p| p[3]).collect()),
            grey: kind.grey,
            sixteen_bit: kind.sixteen_bit,
        })
    }

    fn check(&self) -> Result<(), ImageIoError> {
        let expected = self.pixels() * 3;
        let alpha_ok = self.alpha.as_ref().is_none_or(|a| a.len() == self.pixels());
        if self.rgb.len() != expected || !alpha_ok {
            return Err(ImageIoError::BadData {
                width: self.width,
                height: self.height,
                got: self.rgb.len(),
                expected,
            });
        }
        Ok(())
    }
}

/// Decodes a PNG, JPEG or WebP file (8 or 16 bits, greyscale or colour, with or without alpha).
pub fn read(path: &Path) -> Result<Picture, ImageIoError> {
    let read_err = |source| ImageIoError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut reader = ImageReader::open(path)
        .map_err(|source| ImageIoError::Open {
            path: path.to_path_buf(),
            source,
        })?
        .with_guessed_format()
        .map_err(|source| ImageIoError::Open {
            path: path.to_path_buf(),
            source,
        })?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODED_BYTES);
    reader.limits(limits);
    let decoded = reader.decode().map_err(read_err)?;
    Ok(from_dynamic(&decoded))
}

/// Converts a decoded image into a [`Picture`], remembering its kind.
pub fn from_dynamic(image: &DynamicImage) -> Picture {
    let color = image.color();
    let rgba = image.to_rgba32f();
    let (width, height) = rgba.dimensions();
    let mut rgb = Vec::with_capacity(width as usize * height as usize * 3);
    let mut alpha = Vec::with_capacity(if color.has_alpha() {
        width as usize * height as usize
    } else {
        0
    });
    for px in rgba.pixels() {
        rgb.extend_from_slice(&px.0[..3]);
        if color.has_alpha() {
            alpha.push(px.0[3]);
        }
    }
    Picture {
        width,
        height,
        rgb,
        alpha: color.has_alpha().then_some(alpha),
        grey: !color.has_color(),
        sixteen_bit: color.bytes_per_pixel() / color.channel_count() >= 2,
    }
}

/// Writes a picture as lossless PNG in its own kind (grey or colour, alpha, 8 or 16 bits).
pub fn write_png(path: &Path, picture: &Picture) -> Result<(), ImageIoError> {
    picture.check()?;
    to_dynamic(picture)
        .save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| ImageIoError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// Encodes a picture as lossless PNG bytes in its own kind.
pub fn encode_png(picture: &Picture) -> Result<Vec<u8>, ImageIoError> {
    picture.check()?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    to_dynamic(picture)
        .write_to(&mut bytes, image::ImageFormat::Png)
        .map_err(|source| ImageIoError::Write {
            path: PathBuf::from("<memory>"),
            source,
        })?;
    Ok(bytes.into_inner())
}

/// Quantises a value in [0,1] to `max` levels, rounding to nearest as Real-ESRGAN does.
fn quantise(value: f32, max: f32) -> f32 {
    (value.clamp(0.0, 1.0) * max).round()
}

fn to_dynamic(p: &Picture) -> DynamicImage {
    let (w, h) = (p.width, p.height);
    let built = if p.sixteen_bit {
        let data = samples(p, u16::MAX as f32, |v| v as u16);
        match (p.alpha.is_some(), p.grey) {
            (false, true) => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageLuma16),
            (false, false) => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageRgb16),
            (true, true) => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageLumaA16),
            (true, false) => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageRgba16),
        }
    } else {
        let data = samples(p, u8::MAX as f32, |v| v as u8);
        match (p.alpha.is_some(), p.grey) {
            (false, true) => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageLuma8),
            (false, false) => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageRgb8),
            (true, true) => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageLumaA8),
            (true, false) => ImageBuffer::from_raw(w, h, data).map(DynamicImage::ImageRgba8),
        }
    };
    built.expect("buffer length follows from the checked picture size")
}

/// The picture's samples in its own channel layout, quantised to `max` levels and cast.
fn samples<T>(p: &Picture, max: f32, cast: impl Fn(f32) -> T + Copy) -> Vec<T> {
    let q = |v: f32| cast(quantise(v, max));
    let rgb = p.rgb.chunks_exact(3);
    // Greyscale results are the mean of the three channels the network produced.
    let grey = |c: &[f32]| q((c[0] + c[1] + c[2]) / 3.0);
    match (&p.alpha, p.grey) {
        (None, true) => rgb.map(grey).collect(),
        (None, false) => p.rgb.iter().map(|&v| q(v)).collect(),
        (Some(a), true) => rgb.zip(a).flat_map(|(c, &a)| [grey(c), q(a)]).collect(),
        (Some(a), false) => rgb
            .zip(a)
            .flat_map(|(c, &a)| [q(c[0]), q(c[1]), q(c[2]), q(a)])
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> Picture {
        let rgb = (0..width * height * 3)
            .map(|i| (i % 256) as f32 / 255.0)
            .collect();
        Picture::from_rgb(width, height, rgb).unwrap()
    }

    #[test]
    fn every_kind_round_trips_through_png() {
        let dir = tempfile::tempdir().unwrap();
        for (grey, alpha, sixteen_bit) in [
            (false, false, false),
            (true, false, false),
            (false, true, false),
            (true, true, true),
            (false, false, true),
        ] {
            let mut p = gradient(7, 5);
            if grey {
                p.rgb = p.rgb.chunks(3).flat_map(|c| [c[0]; 3]).collect();
            }
            p.grey = grey;
            p.sixteen_bit = sixteen_bit;
            p.alpha = alpha.then(|| (0..35).map(|i| i as f32 / 34.0).collect());
            let path = dir.path().join("p.png");
            write_png(&path, &p).unwrap();
            let back = read(&path).unwrap();
            assert_eq!(
                (back.grey, back.alpha.is_some(), back.sixteen_bit),
                (grey, alpha, sixteen_bit)
            );
            let levels = if sixteen_bit { 65535.0 } else { 255.0 };
            let worst = p
                .rgb
                .iter()
                .zip(&back.rgb)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f32::max);
            assert!(
                worst <= 0.5 / levels + 1e-6,
                "{grey} {alpha} {sixteen_bit}: {worst}"
            );
        }
    }

    #[test]
    fn jpeg_and_webp_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let img = DynamicImage::ImageRgb8(ImageBuffer::from_fn(16, 9, |x, y| {
            image::Rgb([(x * 16) as u8, (y * 28) as u8, 128])
        }));
        for name in ["a.jpg", "a.webp"] {
            let path = dir.path().join(name);
            img.save(&path).unwrap();
            let p = read(&path).unwrap();
            assert_eq!((p.width, p.height, p.grey), (16, 9, false));
        }
    }

    #[test]
    fn unreadable_files_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        let err = read(&missing).unwrap_err().to_string();
        assert!(err.contains("missing.png"), "{err}");

        let truncated = dir.path().join("truncated.png");
        let bytes = encode_png(&gradient(32, 32)).unwrap();
        std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
        let err = read(&truncated).unwrap_err().to_string();
        assert!(err.contains("truncated.png"), "{err}");

        let text = dir.path().join("notes.png");
        std::fs::write(&text, "not a picture").unwrap();
        assert!(read(&text).unwrap_err().to_string().contains("notes.png"));
    }

    #[test]
    fn headers_claiming_huge_sizes_are_refused() {
        // A valid PNG header that claims 100000 x 100000 pixels with almost no data.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bomb.png");
        let mut bytes = encode_png(&gradient(1, 1)).unwrap();
        bytes[16..20].copy_from_slice(&100_000u32.to_be_bytes());
        bytes[20..24].copy_from_slice(&100_000u32.to_be_bytes());
        let crc = crc32fast::hash(&bytes[12..29]);
        bytes[29..33].copy_from_slice(&crc.to_be_bytes());
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("bomb.png"), "{err}");
    }
}
