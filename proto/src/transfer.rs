//! Moving files over the API in pieces: uploads are a header then data chunks, downloads a
//! stream of [`v1::DataChunk`]s. Workers, the CLI and tests all use these, so every client cuts
//! and joins files the same way the coordinator expects.

use crate::v1;
use tonic::{Status, Streaming};

/// Bytes per upload message, well under gRPC's default 4 MiB message limit.
pub const UPLOAD_CHUNK: usize = 1 << 20;

/// HTTP/2 flow-control window of one stream, set on both ends of every connection. With the
/// default 64 KiB a sender stops every 64 KiB until the receiver's window update arrives, so
/// one 16-bit tile (about a megabyte) took a dozen round trips, and on a busy machine each
/// waited for the receiving thread to be scheduled; a whole artifact now fits in one window.
pub const STREAM_WINDOW: u32 = 8 << 20;

/// HTTP/2 flow-control window of a whole connection: room for several concurrent artifact
/// streams (a stitch downloads all of its tiles at once).
pub const CONNECTION_WINDOW: u32 = 32 << 20;

/// The messages of one upload: `header`, then `data` in chunks of [`UPLOAD_CHUNK`] bytes.
pub fn upload_messages(
    header: v1::UploadHeader,
    data: &[u8],
) -> impl tokio_stream::Stream<Item = v1::UploadChunk> + Send + 'static {
    let first = v1::UploadChunk {
        part: Some(v1::upload_chunk::Part::Header(header)),
    };
    let rest: Vec<v1::UploadChunk> = data
        .chunks(UPLOAD_CHUNK)
        .map(|piece| v1::UploadChunk {
            part: Some(v1::upload_chunk::Part::Data(piece.to_vec())),
        })
        .collect();
    tokio_stream::iter(std::iter::once(first).chain(rest))
}

/// Appends a download to `out`, which holds the file's first bytes up to the offset the
/// download was asked from (empty for a whole file), checking that every chunk continues where
/// `out` ends; returns the whole file's length as the server reported it.
pub async fn read_download(
    mut stream: Streaming<v1::DataChunk>,
    out: &mut Vec<u8>,
) -> Result<u64, Status> {
    let mut total = None;
    while let Some(chunk) = stream.message().await? {
        let expected = out.len() as u64;
        if chunk.offset != expected {
            return Err(Status::data_loss(format!(
                "a download chunk starts at byte {}, expected {expected}",
                chunk.offset
            )));
        }
        total = Some(chunk.total_size);
        out.extend_from_slice(&chunk.data);
    }
    Ok(total.unwrap_or(out.len() as u64))
}
