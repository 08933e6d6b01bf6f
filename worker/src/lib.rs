//! The Tessera worker: the models (in libtorch through `tch`) and the tasks that run them.

pub mod clip;
pub mod ncnn;
