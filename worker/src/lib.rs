//! The Tessera worker: the models (in libtorch through `tch`) and the tasks that run them.

pub mod bench;
pub mod clip;
pub mod device;
pub mod esrgan;
pub mod farm;
pub mod generate;
pub mod imageio;
pub mod malloc;
pub mod models;
pub mod ncnn;
pub mod peak_memory;
pub mod render_cmd;
pub mod torch_rng;
pub mod upscale;
pub mod vqgan;
