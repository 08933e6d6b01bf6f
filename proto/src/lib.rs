//! Generated code of the `tessera.v1` gRPC package, shared by the coordinator, workers and CLI,
//! and the conversions between its messages and the `tessera-core` types they carry.

/// Messages and services of `tessera.v1`.
pub mod v1 {
    tonic::include_proto!("tessera.v1");
}

/// Largest message a coordinator accepts (a prompt file of many prompts, an upload chunk);
/// clients refuse to send more, with a message that says so, rather than have it cut off.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Metadata key of an `UNAVAILABLE` answer that the coordinator itself gave because its state
/// store (Redis) does not answer, so a client can say that, rather than that the coordinator
/// cannot be reached: a transport failure carries no such key.
pub const STATE_STORE_DOWN: &str = "tessera-state-store-down";

pub mod access;
pub mod convert;
pub mod transfer;
