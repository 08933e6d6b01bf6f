//! Logic that the coordinator, the workers and the CLI must agree on, kept free of libtorch so
//! the coordinator and CLI never link it.

#[doc(hidden)]
pub mod fuzzing;
pub mod job;
pub mod loop_options;
pub mod plan;
pub mod prompt;
pub mod rates;
pub mod settings;
pub mod sweep;
pub mod task;
pub mod tiles;
pub mod timing;
