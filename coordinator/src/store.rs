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
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tessera_core::task::ArtifactRef;
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
    /// The store failed.
    #[error("artifact store: {0}")]
    Backend(String),
}

fn backend(e: object_store::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// The coordinator's artifact store.
#[derive(Clone, Debug)]
pub struct ArtifactStore {
    inner: Arc<dyn ObjectStore>,
    max_bytes: u64,
}

impl ArtifactStore {
    /// Opens `spec`: a directory path (created if missing), or a URL (`file:///dir`,
    /// `memory://`, or `s3://bucket/prefix` with the `s3` feature, configured by the usual
    /// `AWS_*` environment variables). Uploads larger than `max_bytes` are refused.
    pub fn open(spec: &str, max_bytes: u64) -> Result<Self, StoreError> {
        let open_error = |reason: String| StoreError::Open {
            spec: spec.to_string(),
            reason,
        };
        let inner: Arc<dyn ObjectStore> = if spec.contains("://") {
            let url = url::Url::parse(spec).map_err(|e| open_error(e.to_string()))?;
            let options = std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .map(|(k, v)| (k.to_ascii_lowercase(), v));
            let (store, prefix) = object_store::parse_url_opts(&url, options).map_err(|e| {
                open_error(format!(
                    "{e} (S3 needs a coordinator built with `--features s3`)"
                ))
            })?;
            if prefix.as_ref().is_empty() {
                Arc::from(store)
            } else {
                Arc::new(PrefixStore::new(store, prefix))
            }
        } else {
            std::fs::create_dir_all(spec).map_err(|e| open_error(e.to_string()))?;
            Arc::new(LocalFileSystem::new_with_prefix(spec).map_err(|e| open_error(e.to_string()))?)
        };
        Ok(ArtifactStore { inner, max_bytes })
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
        self.inner
            .put(&StorePath::from(key), PutPayload::from_bytes(data))
            .await
            .map_err(backend)?;
        Ok(artifact)
    }

    /// The size of `key`, or `NotFound`.
    pub async fn size(&self, key: &str) -> Result<u64, StoreError> {
        match self.inner.head(&StorePath::from(key)).await {
            Ok(meta) => Ok(meta.size),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound(key.into())),
            Err(e) => Err(backend(e)),
        }
    }

    /// The whole content of `key`.
    pub async fn read(&self, key: &str) -> Result<Bytes, StoreError> {
        match self.inner.get(&StorePath::from(key)).await {
            Ok(r) => r.bytes().await.map_err(backend),
            Err(object_store::Error::NotFound { .. }) => Err(StoreError::NotFound(key.into())),
            Err(e) => Err(backend(e)),
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
            .map_err(backend)?;
        Ok((
            size,
            Box::pin(got.into_stream().map(|r| r.map_err(backend))),
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
    let sha256 = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
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

    #[test]
    fn names_are_single_safe_segments() {
        assert!(check_name("checkpoint-150.safetensors").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "sp ace"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
