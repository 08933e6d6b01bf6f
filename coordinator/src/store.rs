//! Artifacts (pictures, tiles, checkpoints, previews) in object storage through `object_store`:
//! a local directory by default, S3-compatible storage by URL (built with the `s3` feature).
//! Workers and clients move artifacts through the coordinator's RPCs, so only the coordinator
//! holds storage credentials.
//!
//! Keys are chosen here, never by callers: a task's files live under
//! `jobs/{job}/{task}/{attempt}/`, so a late worker of an expired attempt can never overwrite
//! what the current attempt wrote.

use bytes::Bytes;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::prefix::PrefixStore;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use std::sync::Arc;
use tessera_core::task::{sha256_hex, ArtifactRef};
use tokio_stream::{Stream, StreamExt};

/// A problem with stored files.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store spec cannot be opened.
    #[error("artifact store '{spec}': {reason}")]
    Open {
        /// The `--store` value.
        spec: String,
        /// What is wrong.
        reason: String,
    },
    /// A file name a caller may not use.
    #[error("file name '{0}' is not allowed: use 1 to 128 letters, digits, '.', '-' or '_', not starting with '.'")]
    BadName(String),
    /// No such artifact.
    #[error("artifact '{0}' does not exist")]
    NotFound(String),
    /// More bytes than allowed.
    #[error("upload is larger than the limit of {0} bytes")]
    TooLarge(u64),
    /// The store's disk (or quota) is full: a condition that passes once room is made, so
    /// callers retry.
    #[error("the artifact store is full ({0}): make room in it; uploads are retried until then")]
    Full(String),
    /// The store failed.
    #[error("artifact store: {0}")]
    Backend(String),
}

fn backend(e: object_store::Error) -> StoreError {
    let full = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .filter_map(|e| e.downcast_ref::<std::io::Error>())
        .any(|io| {
            matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            )
        });
    if full {
        StoreError::Full(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}

/// Uploads larger than this go up as multipart uploads in parts of this size, so a large
/// picture or checkpoint is not one request that a dropped connection restarts from zero.
/// S3 takes parts of 5 MiB and more.
pub const MULTIPART_ABOVE: usize = 8 << 20;

/// How the S3 client retries a request: a few quick tries, then the error goes back to the
/// caller (a worker's upload or download, which retries with its own backoff), so an
/// unreachable endpoint is reported in a second or two instead of after object_store's default
/// of three minutes per request.
#[cfg(feature = "s3")]
fn s3_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(10),
        ..Default::default()
    }
}

/// Opens `s3://bucket/prefix` with the `AWS_*` environment variables, and says where it
/// lives (the endpoint, for S3-compatible stores) for error messages.
#[cfg(feature = "s3")]
fn open_s3(
    spec: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<(Arc<dyn ObjectStore>, String), String> {
    use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
    let builder = vars
        .into_iter()
        .filter(|(name, _)| name.starts_with("AWS_"))
        .filter_map(|(name, value)| Some((name.to_ascii_lowercase().parse().ok()?, value)))
        .fold(AmazonS3Builder::new(), |b, (key, value)| {
            b.with_config(key, value)
        })
        .with_url(spec)
        .with_retry(s3_retry());
    let endpoint = builder
        .get_config_value(&AmazonS3ConfigKey::Endpoint)
        .unwrap_or_else(|| "AWS".to_string());
    let store = builder.build().map_err(|e| e.to_string())?;
    let url = url::Url::parse(spec).map_err(|e| e.to_string())?;
    let prefix = StorePath::from_url_path(url.path()).map_err(|e| e.to_string())?;
    Ok((
        prefixed(Arc::new(store), prefix),
        format!("{spec} at {endpoint}"),
    ))
}

/// Without the `s3` feature, an `s3://` store cannot be opened; says how to get one.
#[cfg(not(feature = "s3"))]
fn open_s3(
    _: &str,
    _: impl IntoIterator<Item = (String, String)>,
) -> Result<(Arc<dyn ObjectStore>, String), String> {
    Err("S3 needs a coordinator built with `--features s3`".to_string())
}

/// `store` seen from under `prefix` (the store itself for an empty prefix).
fn prefixed(store: Arc<dyn ObjectStore>, prefix: StorePath) -> Arc<dyn ObjectStore> {
    if prefix.as_ref().is_empty() {
        store
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    }
}

/// What a store's refusal at start means, from the S3 error code in its answer: a missing
/// bucket and refused credentials are told apart, so the operator knows what to fix.
fn explain_refusal(error: &str) -> String {
    let cause = [
        (
            "NoSuchBucket",
            "the bucket does not exist: create it, or fix the bucket in the store URL",
        ),
        (
            "InvalidAccessKeyId",
            "the store does not know the access key: check AWS_ACCESS_KEY_ID",
        ),
        (
            "SignatureDoesNotMatch",
            "the secret key is wrong: check AWS_SECRET_ACCESS_KEY",
        ),
        (
            "AccessDenied",
            "the credentials may not list the bucket: check their policy",
        ),
    ]
    .into_iter()
    .find(|(code, _)| error.contains(code));
    match cause {
        Some((code, what)) => format!("{what} ({code}): {error}"),
        None => error.to_string(),
    }
}

/// The coordinator's artifact store.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    max_bytes: u64,
    /// What errors name: the directory, or the URL with the S3 endpoint.
    location: Arc<str>,
}

impl ArtifactStore {
    /// Opens `spec`: a directory path (created if missing), or a URL (`file:///dir`,
    /// `memory://`, or `s3://bucket/prefix` with the `s3` feature, configured by the usual
    /// `AWS_*` environment variables). Uploads larger than `max_bytes` are refused. Nothing is
    /// asked of the store yet: [`ArtifactStore::check`] does that.
    pub fn open(spec: &str, max_bytes: u64) -> Result<Self, StoreError> {
        Self::open_with(spec, max_bytes, std::env::vars())
    }

    /// [`ArtifactStore::open`] with the `AWS_*` settings taken from `vars` instead of the
    /// process's environment, so stores of different endpoints can be opened side by side.
    pub fn open_with(
        spec: &str,
        max_bytes: u64,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            spec: spec.to_string(),
            reason,
        };
        let (inner, location): (Arc<dyn ObjectStore>, String) = if spec.starts_with("s3://") {
            open_s3(spec, vars).map_err(open_error)?
        } else if spec.contains("://") {
            let url = url::Url::parse(spec).map_err(|e| open_error(e.to_string()))?;
            let (store, prefix) =
                object_store::parse_url(&url).map_err(|e| open_error(e.to_string()))?;
            (prefixed(Arc::from(store), prefix), spec.to_string())
        } else {
            std::fs::create_dir_all(spec).map_err(|e| open_error(e.to_string()))?;
            let local =
                LocalFileSystem::new_with_prefix(spec).map_err(|e| open_error(e.to_string()))?;
            // A deleted upload leaves no empty directory behind.
            (
                Arc::new(local.with_automatic_cleanup(true)),
                spec.to_string(),
            )
        };
        Ok(ArtifactStore {
            inner,
            max_bytes,
            location: location.into(),
        })
    }

    /// Asks the store for its top level once, so a coordinator whose bucket is missing or whose
    /// credentials are refused says which at start instead of failing every upload later.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self.inner.list_with_delimiter(None).await {
            Ok(_) => Ok(()),
            Err(e) => Err(StoreError::Open {
                spec: self.location.to_string(),
                reason: explain_refusal(&e.to_string()),
            }),
        }
    }

    /// A store failure, naming the store (and for S3 its endpoint) so an operator reading the
    /// log knows which service is down.
    fn backend(&self, e: object_store::Error) -> StoreError {
        match backend(e) {
            StoreError::Backend(reason) => {
                StoreError::Backend(format!("{}: {reason}", self.location))
            }
            other => other,
        }
    }

    /// Largest upload accepted.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Stores `data` at `key` and describes it (size, SHA-256, picture size when it is a PNG,
    /// JPEG or WebP the coordinator can read).
    pub async fn put(&self, key: &str, data: Bytes) -> Result<ArtifactRef, StoreError> {
        if data.len() as u64 > self.max_bytes {
            return Err(StoreError::TooLarge(self.max_bytes));
        }
        let artifact = describe(key, &data);
        let path = StorePath::from(key);
        if data.len() <= MULTIPART_ABOVE {
            let payload = PutPayload::from_bytes(data);
            self.inner
                .put(&path, payload)
                .await
                .map_err(|e| self.backend(e))?;
        } else {
            let upload = self
                .inner
                .put_multipart(&path)
                .await
                .map_err(|e| self.backend(e))?;
            let mut parts = WriteMultipart::new_with_chunk_size(upload, MULTIPART_ABOVE);
            parts.put(data);
            parts.finish().await.map_err(|e| self.backend(e))?;
        }
        Ok(artifact)
    }

    /// Whether the stored file still is `artifact` (there, with its length and SHA-256).
    pub async fn intact(&self, artifact: &ArtifactRef) -> Result<bool, StoreError> {
        match self.read(&artifact.key).await {
            Ok(data) => Ok(artifact.holds(&data)),
            Err(StoreError::NotFound(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes `key`; deleting what is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self.inner.delete(&StorePath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend(e)),
        }
    }

    /// The size of `key`, or `NotFound`.
    pub async fn size(&self, key: &str) -> Result<u64, StoreError> {
        match self.inner.head(&StorePath::from(key)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound(key.into())),
            Err(e) => Err(self.backend(e)),
        }
    }

    /// The whole content of `key`.
    pub async fn read(&self, key: &str) -> Result<Bytes, StoreError> {
        match self.inner.get(&StorePath::from(key)).await {
            Ok(r) => r.bytes().await.map_err(|e| self.backend(e)),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound(key.into())),
            Err(e) => Err(self.backend(e)),
        }
    }

    /// The bytes of `key` from `offset`, in the store's chunks, with the total size.
    pub async fn read_from(&self, key: &str, offset: u64) -> Result<(u64, ByteStream), StoreError> {
        let size = self.size(key).await?;
        if offset >= size {
            return Ok((size, Box::pin(tokio_stream::empty())));
        }
        let options = GetOptions {
            range: Some(GetRange::Offset(offset)),
            ..GetOptions::default()
        };
        let got = self
            .inner
            .get_opts(&StorePath::from(key), options)
            .await
            .map_err(|e| self.backend(e))?;
        let store = self.clone();
        Ok((
            size,
            Box::pin(
                got.into_stream()
                    .map(move |r| r.map_err(|e| store.backend(e))),
            ),
        ))
    }
}

/// The content of a stored file, in pieces.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, StoreError>> + Send>>;

/// A file name a caller may give: one path segment of safe characters.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=128).contains(&name.len())
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_string()))
    }
}

/// Where an attempt of a task stores its files.
pub fn task_prefix(job: &str, task: &str, attempt: u32) -> String {
    format!("jobs/{job}/{task}/{attempt}/")
}

/// The task whose attempt stored `key` (see [`task_prefix`]); `None` for uploads and previews.
pub fn producer_of(key: &str) -> Option<&str> {
    match key.split('/').collect::<Vec<_>>()[..] {
        ["jobs", _, task, _, _] => Some(task),
        _ => None,
    }
}

/// Where the latest preview of a task is kept.
pub fn preview_key(job: &str, task: &str) -> String {
    format!("jobs/{job}/previews/{task}.png")
}

/// Where a client's upload goes: a fresh directory per upload, under its tenant's when it
/// has one.
pub fn upload_key(tenant: &str, id: &str, name: &str) -> String {
    match tenant {
        "" => format!("uploads/{id}/{name}"),
        tenant => format!("uploads/{tenant}/{id}/{name}"),
    }
}

/// Whether `key` names an upload a job of `tenant` may use: any upload for a job without a
/// tenant (an admin's or an open farm's), only the tenant's own otherwise.
pub fn upload_usable_by(key: &str, tenant: &str) -> bool {
    match tenant {
        "" => key.starts_with("uploads/"),
        tenant => key.starts_with(&format!("uploads/{tenant}/")),
    }
}

/// What a stored file is: its key, size, SHA-256 and, for a picture the coordinator can read,
/// its size in pixels.
pub fn describe(key: &str, data: &[u8]) -> ArtifactRef {
    let sha256 = sha256_hex(data);
    let (width, height) = image::ImageReader::new(std::io::Cursor::new(data))
        .with_guessed_format()
        .ok()
        .filter(|r| r.format().is_some())
        .and_then(|r| r.into_dimensions().ok())
        .unwrap_or((0, 0));
    ArtifactRef {
        key: key.to_string(),
        size: data.len() as u64,
        sha256,
        width,
        height,
    }
}

/// Why an uploaded picture is refused.
#[derive(Debug, thiserror::Error)]
pub enum PictureError {
    /// Not one of the formats the coordinator reads.
    #[error("'{0}' is not a PNG, JPEG or WebP picture")]
    NotAPicture(String),
    /// More pixels than an input picture may have (a decompression bomb declares a huge size
    /// in a tiny file).
    #[error("'{name}' is {width}x{height}, more than the limit of {max} pixels")]
    TooManyPixels {
        /// The file name given with the upload.
        name: String,
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit (`Limits::max_input_pixels`).
        max: u64,
    },
    /// Decoding it would take more than the limits derived from the pixel limit allow.
    #[error("'{name}' is larger than the limit of {max} pixels allows to decode: {reason}")]
    OverLimits {
        /// The file name given with the upload.
        name: String,
        /// The limit (`Limits::max_input_pixels`).
        max: u64,
        /// Which of the decoder's limits it exceeds.
        reason: String,
    },
    /// Its data does not decode to the picture its header declares.
    #[error("'{name}' is truncated or corrupt: {reason}")]
    Corrupt {
        /// The file name given with the upload.
        name: String,
        /// What the decoder found.
        reason: String,
    },
}

/// Bytes per pixel of the widest picture the formats decode to (16-bit RGBA).
const MAX_BYTES_PER_PIXEL: u64 = 8;

/// Checks an uploaded picture before it is stored: a PNG, JPEG or WebP of at most `max_pixels`
/// that decodes completely. Reading only the header (as [`describe`] does) would let a truncated
/// picture, one whose header lies about its size or a decompression bomb through to a worker;
/// decoding it here, with `image`'s limits, refuses them with a message naming `name`.
pub fn check_upload(name: &str, data: &[u8], max_pixels: u64) -> Result<(), PictureError> {
    use image::{DynamicImage, ImageDecoder, ImageFormat};
    let corrupt = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => PictureError::OverLimits {
            name: name.to_string(),
            max: max_pixels,
            reason: e.to_string(),
        },
        _ => PictureError::Corrupt {
            name: name.to_string(),
            reason: e.to_string(),
        },
    };
    let mut reader = image::ImageReader::new(std::io::Cursor::new(data))
        .with_guessed_format()
        .map_err(|e| corrupt(e.into()))?;
    if !matches!(
        reader.format(),
        Some(ImageFormat::Png | ImageFormat::Jpeg | ImageFormat::WebP)
    ) {
        return Err(PictureError::NotAPicture(name.to_string()));
    }
    let side = u32::try_from(max_pixels).unwrap_or(u32::MAX);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(side);
    limits.max_image_height = Some(side);
    limits.max_alloc = Some(max_pixels.saturating_mul(MAX_BYTES_PER_PIXEL));
    reader.limits(limits);
    let decoder = reader.into_decoder().map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(PictureError::TooManyPixels {
            name: name.to_string(),
            width,
            height,
            max: max_pixels,
        });
    }
    if width == 0 || height == 0 {
        return Err(PictureError::Corrupt {
            name: name.to_string(),
            reason: format!("it declares {width}x{height} pixels"),
        });
    }
    DynamicImage::from_decoder(decoder).map_err(corrupt)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32) -> Bytes {
        let mut out = Vec::new();
        image::RgbImage::new(width, height)
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        Bytes::from(out)
    }

    #[tokio::test]
    async fn stores_describes_and_reads_back_from_an_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = ArtifactStore::open(dir.path().to_str().unwrap(), 1 << 20).unwrap();
        let data = png(20, 12);
        let a = store.put("jobs/j/t/1/out.png", data.clone()).await.unwrap();
        assert_eq!((a.width, a.height, a.size), (20, 12, data.len() as u64));
        assert_eq!(a.sha256.len(), 64);
        assert!(dir.path().join("jobs/j/t/1/out.png").exists());
        let (size, stream) = store.read_from(&a.key, 5).await.unwrap();
        let chunks: Vec<Bytes> = stream.map(|c| c.unwrap()).collect().await;
        assert_eq!(size, data.len() as u64);
        assert_eq!(chunks.concat(), data[5..].to_vec());
        let (_, rest) = store.read_from(&a.key, size).await.unwrap();
        assert_eq!(rest.collect::<Vec<_>>().await.len(), 0);
        let other = store
            .put("ck.bin", Bytes::from_static(b"xyz"))
            .await
            .unwrap();
        assert_eq!((other.width, other.height), (0, 0));
        assert!(matches!(
            store.size("nope").await,
            Err(StoreError::NotFound(_))
        ));
        let small = ArtifactStore::open("memory://", 2).unwrap();
        assert!(matches!(
            small.put("a", Bytes::from_static(b"abc")).await,
            Err(StoreError::TooLarge(2))
        ));
    }

    /// A 64x64 PNG of varied pixels, so its compressed data is not a few bytes.
    fn varied_png() -> Vec<u8> {
        let picture = image::RgbImage::from_fn(64, 64, |x, y| {
            image::Rgb([(x * 7 + y * 13) as u8, (x * y) as u8, (x ^ y) as u8])
        });
        let mut out = Vec::new();
        picture
            .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
            .unwrap();
        out
    }

    /// `png` with its IHDR declaring `width`x`height`, its CRC recomputed so only the size lies.
    fn with_declared_size(mut png: Vec<u8>, width: u32, height: u32) -> Vec<u8> {
        assert_eq!(&png[12..16], b"IHDR");
        png[16..20].copy_from_slice(&width.to_be_bytes());
        png[20..24].copy_from_slice(&height.to_be_bytes());
        let crc = crc32(&png[12..29]);
        png[29..33].copy_from_slice(&crc.to_be_bytes());
        png
    }

    /// CRC-32 as PNG chunks use it (ISO 3309, reflected 0xEDB88320).
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    const MAX_PIXELS: u64 = 4096 * 4096;

    #[test]
    fn upload_check_accepts_a_valid_picture() {
        check_upload("x.png", &varied_png(), MAX_PIXELS).unwrap();
        check_upload("y.png", &png(20, 12), MAX_PIXELS).unwrap();
        let mut jpeg = Vec::new();
        image::RgbImage::new(16, 8)
            .write_to(
                &mut std::io::Cursor::new(&mut jpeg),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        check_upload("z.jpg", &jpeg, MAX_PIXELS).unwrap();
    }

    #[test]
    fn upload_check_refuses_a_decompression_bomb() {
        let bomb = with_declared_size(png(1, 1).to_vec(), 100_000, 100_000);
        assert!(bomb.len() < 100, "a tiny file: {} bytes", bomb.len());
        let err = check_upload("x.png", &bomb, MAX_PIXELS).unwrap_err();
        assert!(matches!(err, PictureError::TooManyPixels { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "'x.png' is 100000x100000, more than the limit of 16777216 pixels"
        );
        // A side longer than the pixel limit is refused by the decoder's own limits.
        let wide = with_declared_size(png(1, 1).to_vec(), 20_000_000, 1);
        let err = check_upload("w.png", &wide, MAX_PIXELS).unwrap_err();
        assert!(
            err.to_string().starts_with("'w.png' is ")
                && err.to_string().contains("16777216 pixels"),
            "{err}"
        );
    }

    #[test]
    fn upload_check_refuses_a_truncated_picture() {
        let whole = varied_png();
        for cut in [whole.len() / 2, whole.len() - 20, 40] {
            let err = check_upload("x.png", &whole[..cut], MAX_PIXELS).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("'x.png' is truncated or corrupt: "),
                "cut at {cut}: {err}"
            );
        }
    }

    #[test]
    fn upload_check_refuses_a_header_that_lies_about_the_size() {
        // The header of a 64x64 picture claiming 256x256: the data runs out.
        let lying = with_declared_size(varied_png(), 256, 256);
        assert_eq!(
            (describe("k", &lying).width, describe("k", &lying).height),
            (256, 256),
            "the header alone is believed"
        );
        let err = check_upload("x.png", &lying, MAX_PIXELS).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("'x.png' is truncated or corrupt: "),
            "{err}"
        );
    }

    #[test]
    fn upload_check_refuses_what_is_not_a_picture() {
        for data in [&b"hello"[..], b"", b"GIF89a\x01\x00\x01\x00"] {
            let err = check_upload("notes.txt", data, MAX_PIXELS).unwrap_err();
            assert_eq!(
                err.to_string(),
                "'notes.txt' is not a PNG, JPEG or WebP picture"
            );
        }
    }

    /// Replays every committed input of the `upload_image` fuzz target (`fuzz/corpus/`) as the
    /// target does, so CI on the stable toolchain catches a picture check that panics again or
    /// accepts what the job's plan would see without pixels.
    #[test]
    fn upload_image_corpus_is_checked_cleanly() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/upload_image");
        let mut replayed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(entry.unwrap().path()).unwrap();
            if check_upload("fuzz.png", &data, MAX_PIXELS).is_ok() {
                let a = describe("uploads/fuzz/fuzz.png", &data);
                let pixels = u64::from(a.width) * u64::from(a.height);
                assert!(
                    (1..=MAX_PIXELS).contains(&pixels),
                    "{}x{}",
                    a.width,
                    a.height
                );
            }
            replayed += 1;
        }
        assert!(replayed > 0, "corpus {} is empty", dir.display());
    }

    #[test]
    fn names_are_single_safe_segments() {
        assert!(check_name("checkpoint-150.safetensors").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
