//! Paths and helpers shared by the worker's integration tests: the networks' fixtures
//! (`tessera_nets::fixtures`) and the farm harness.
#![allow(dead_code)] // each test binary uses its own subset

pub mod farm;

pub use tessera_nets::fixtures::*;
