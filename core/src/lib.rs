//! Logic that the coordinator, the workers and the CLI must agree on, kept free of libtorch so
//! the coordinator and CLI never link it.

pub mod prompt;
pub mod tiles;
