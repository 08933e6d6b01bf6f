//! Generated code of the `tessera.v1` gRPC package, shared by the coordinator, workers and CLI,
//! and the conversions between its messages and the `tessera-core` types they carry.

/// Messages and services of `tessera.v1`.
pub mod v1 {
    tonic::include_proto!("tessera.v1");
}

pub mod access;
pub mod convert;
pub mod transfer;
