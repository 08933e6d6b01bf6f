//! The Tessera worker process: the farm link and task session, the local commands (`render`,
//! `upscale`) and the benchmarks. The networks they run live in `tessera-nets`.

pub mod bench;
pub mod farm;
pub mod malloc;
pub mod peak_memory;
pub mod render_cmd;
