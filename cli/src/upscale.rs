//! `tessera upscale`: users' own pictures through the farm's upscaler. Each file is checked
//! locally (so a stray non-picture is named before anything is uploaded), uploaded, and the
//! uploads become one upscale-only job; with `--watch` the pictures are fetched when it ends.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tessera_proto::v1;
use tessera_proto::v1::job_spec::Source;

use crate::args::JobOptions;
use crate::farm::Farm;

/// The largest picture file uploaded: a 4096x4096 16-bit RGBA PNG stored without
/// compression is 128 MiB, the most the farm takes in pixels and depth.
const MAX_PICTURE_BYTES: u64 = 160 << 20;

/// A picture on disk whose first bytes say it is one; read only when it is uploaded, so many
/// large pictures are never in memory at once.
pub struct Picture<'a> {
    path: &'a Path,
    name: String,
}

/// Checks every picture, refusing anything but PNG, JPEG and WebP with the file's name.
pub fn read_pictures(paths: &[PathBuf]) -> anyhow::Result<Vec<Picture<'_>>> {
    paths.iter().map(|path| read_picture(path)).collect()
}

/// Up to `limit` bytes of the file at `path`.
fn read_at_most(path: &Path, limit: u64) -> anyhow::Result<Vec<u8>> {
    let cannot_read = || format!("cannot read {}", path.display());
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(limit).read_to_end(&mut data))
        .with_context(cannot_read)?;
    Ok(data)
}

/// The whole picture, refused past [`MAX_PICTURE_BYTES`] (it may be `/dev/zero` after all).
fn read_whole(path: &Path) -> anyhow::Result<Vec<u8>> {
    let data = read_at_most(path, MAX_PICTURE_BYTES + 1)?;
    if data.len() as u64 > MAX_PICTURE_BYTES {
        anyhow::bail!(
            "{} is larger than {} MiB, more than any picture the farm upscales",
            path.display(),
            MAX_PICTURE_BYTES >> 20
        );
    }
    Ok(data)
}

fn read_picture(path: &Path) -> anyhow::Result<Picture<'_>> {
    // The signature of every format taken fits in its first 16 bytes.
    let start = read_at_most(path, 16)?;
    let known = matches!(
        image::guess_format(&start),
        Ok(image::ImageFormat::Png | image::ImageFormat::Jpeg | image::ImageFormat::WebP)
    );
    if !known {
        anyhow::bail!(
            "{} is not a PNG, JPEG or WebP picture; only those can be upscaled",
            path.display()
        );
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "picture".into());
    Ok(Picture { path, name })
}

/// Uploads the pictures (at least one) and submits them as one upscale-only job with `model`;
/// returns its id.
pub async fn submit(
    farm: &mut Farm,
    model: &str,
    options: &JobOptions,
    pictures: Vec<Picture<'_>>,
    json: bool,
) -> anyhow::Result<String> {
    let first = pictures.first().context("no pictures to upscale")?.path;
    let mut images = Vec::with_capacity(pictures.len());
    let submitted = submit_uploaded(farm, model, options, first, pictures, &mut images, json).await;
    if submitted.is_err() {
        // Refused, or cut short: the uploads made for it would be left behind for good.
        for image in &images {
            if let Err(e) = farm.discard_upload(&image.key).await {
                tracing::warn!(key = %image.key, "cannot discard an upload: {e:#}");
            }
        }
    }
    submitted
}

/// Uploads the pictures, noting each in `images` as it is stored, then submits the job.
async fn submit_uploaded(
    farm: &mut Farm,
    model: &str,
    options: &JobOptions,
    first: &Path,
    pictures: Vec<Picture<'_>>,
    images: &mut Vec<v1::InputImage>,
    json: bool,
) -> anyhow::Result<String> {
    for picture in pictures {
        let data = read_whole(picture.path)?;
        let uploaded = farm
            .upload_input(&upload_name(&picture.name), &data)
            .await
            .with_context(|| format!("cannot upload {}", picture.path.display()))?;
        images.push(v1::InputImage {
            name: picture.name,
            key: uploaded.key,
        });
    }
    let settings = v1::Settings {
        upscale_model: Some(model.to_string()),
        tile: options.tile,
        ..v1::Settings::default()
    };
    let spec = crate::submit::job_spec(
        options,
        first,
        settings,
        Vec::new(),
        Source::Images(v1::ImageList {
            images: images.clone(),
        }),
    );
    crate::submit::submit(farm, spec, json).await
}

/// The name an upload may carry (letters, digits, '.', '-', '_'); the job keeps the real one.
fn upload_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}
