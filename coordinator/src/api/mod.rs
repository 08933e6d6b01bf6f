//! The gRPC services: [`jobs::JobsApi`] for users and [`workers::WorkersApi`] for workers,
//! sharing one [`Coordinator`].

pub mod capacity;
pub mod convert;
pub mod estimate;
pub mod jobs;
pub mod waiting;
pub mod workers;

use crate::auth::Auth;
use crate::metrics::Metrics;
use crate::state::{Policy, StateBackend, StateError};
use crate::store::{ArtifactStore, StoreError};
use crate::webhooks::Webhooks;
use bytes::{Bytes, BytesMut};
use rand::Rng;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tessera_core::job::{Limits, ModelCatalog, Settings};
use tessera_proto::v1;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

/// Bytes per message when streaming files.
pub const CHUNK: usize = 256 * 1024;

/// What both services share: the state, the artifacts and the rules.
pub struct Coordinator {
    /// Jobs, tasks, leases, workers, events.
    pub backend: Arc<dyn StateBackend>,
    /// Pictures, tiles, checkpoints.
    pub store: ArtifactStore,
    /// Retry and ban rules.
    pub policy: Policy,
    /// Lease length without heartbeat.
    pub lease_ms: u64,
    /// Longest wait of a lease request.
    pub max_wait_ms: u64,
    /// Bounds on one job.
    pub limits: Limits,
    /// Models jobs may name.
    pub catalog: ModelCatalog,
    /// Settings of a job that sets nothing.
    pub defaults: Settings,
    /// What this coordinator counts, and the farm gauges it reads at each scrape.
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown: long waits and streams end.
    pub shutdown: CancellationToken,
    /// Tokens and tenants; `None` when the coordinator is open.
    pub auth: Option<Arc<Auth>>,
    /// Where job webhooks may point, what signs them: submissions are checked against it.
    pub webhooks: Arc<Webhooks>,
}

/// Milliseconds since the Unix epoch: the time every transition is stamped with.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh id: a letter then 15 lower-case letters and digits (no `.` or `:`, which task ids
/// and storage keys use as separators).
pub fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let first = ALPHABET[rng.gen_range(0..26)] as char;
    std::iter::once(first)
        .chain((0..15).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char))
        .collect()
}

impl From<StateError> for Status {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Unavailable(_) => {
                let mut status = Status::unavailable(e.to_string());
                let marker = tonic::metadata::MetadataValue::from_static("1");
                status
                    .metadata_mut()
                    .insert(tessera_proto::STATE_STORE_DOWN, marker);
                status
            }
            StateError::JobExists(_) => Status::already_exists(e.to_string()),
            StateError::OverQuota(_) => Status::resource_exhausted(e.to_string()),
            StateError::Corrupt { .. } | StateError::InUse { .. } => {
                Status::internal(e.to_string())
            }
        }
    }
}

impl From<StoreError> for Status {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::BadName(_) => Status::invalid_argument(e.to_string()),
            StoreError::TooLarge(_) => Status::resource_exhausted(e.to_string()),
            StoreError::NotFound(_) => Status::not_found(e.to_string()),
            StoreError::Open { .. } | StoreError::Full(_) | StoreError::Backend(_) => {
                tracing::warn!("{e}");
                Status::unavailable(e.to_string())
            }
        }
    }
}

/// Reads an upload stream: its header, then its data up to `max` bytes.
pub async fn read_upload(
    mut stream: Streaming<v1::UploadChunk>,
    max: u64,
) -> Result<(v1::UploadHeader, Bytes), Status> {
    let header = match stream.message().await?.and_then(|c| c.part) {
        Some(v1::upload_chunk::Part::Header(h)) => h,
        _ => {
            return Err(Status::invalid_argument(
                "an upload must start with its header",
            ))
        }
    };
    let mut data = BytesMut::new();
    while let Some(chunk) = stream.message().await? {
        match chunk.part {
            Some(v1::upload_chunk::Part::Data(d)) => {
                if (data.len() + d.len()) as u64 > max {
                    return Err(StoreError::TooLarge(max).into());
                }
                data.extend_from_slice(&d);
            }
            _ => return Err(Status::invalid_argument("an upload has one header, first")),
        }
    }
    Ok((header, data.freeze()))
}

/// A boxed stream of gRPC messages.
pub type MessageStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Streams `key` from `offset` in chunks of [`CHUNK`] bytes.
pub async fn stream_artifact(
    store: &ArtifactStore,
    key: &str,
    offset: u64,
) -> Result<MessageStream<v1::DataChunk>, Status> {
    let (total_size, source) = store.read_from(key, offset).await?;
    let mut source = Box::pin(source);
    let stream = async_stream(move |tx| async move {
        let mut position = offset;
        let mut buffer = BytesMut::new();
        loop {
            let piece = source.next().await;
            let done = piece.is_none();
            match piece {
                Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                Some(Err(e)) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    return;
                }
                None => {}
            }
            while buffer.len() >= CHUNK || (done && !buffer.is_empty()) {
                let data = buffer.split_to(buffer.len().min(CHUNK));
                let chunk = v1::DataChunk {
                    offset: position,
                    total_size,
                    data: data.to_vec(),
                };
                position += data.len() as u64;
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            if done {
                return;
            }
        }
    });
    Ok(stream)
}

/// A message stream fed by `produce` through a bounded channel, so a slow reader holds back
/// the producer and a gone reader stops it.
pub fn async_stream<T, F, Fut>(produce: F) -> MessageStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(produce(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
