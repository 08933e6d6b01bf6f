//! `tessera upscale`: users' own pictures through the farm's upscaler. Each file is checked
//! locally (so a stray non-picture is named before anything is uploaded), uploaded, and the
//! uploads become one upscale-only job; with `--watch` the pictures are fetched when it ends.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tessera_proto::v1;
use tessera_proto::v1::job_spec::Source;

use crate::args::JobOptions;
use crate::farm::Farm;

/// A picture read from disk, ready to upload.
pub struct Picture<'a> {
    path: &'a Path,
    name: String,
    data: Vec<u8>,
}

/// Reads every picture, refusing anything but PNG, JPEG and WebP with the file's name.
pub fn read_pictures(paths: &[PathBuf]) -> anyhow::Result<Vec<Picture<'_>>> {
    paths.iter().map(|path| read_picture(path)).collect()
}

fn read_picture(path: &Path) -> anyhow::Result<Picture<'_>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let known = matches!(
        image::guess_format(&data),
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
    Ok(Picture { path, name, data })
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
    for picture in pictures {
        let uploaded = farm
            .upload_input(&upload_name(&picture.name), &picture.data)
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
        Source::Images(v1::ImageList { images }),
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
