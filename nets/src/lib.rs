//! The networks Tessera runs and the maths of its generation loop, as a library anyone can call:
//! OpenAI CLIP, taming-transformers' VQGAN and the ESRGAN family (Real-ESRGAN, SRVGG) in
//! libtorch through `tch`, their checkpoint readers (safetensors, `torch.save` pickles, CLIP's
//! TorchScript archives, ncnn), one weight loader with one error for every model, and the
//! VQGAN+CLIP optimisation loop. Nothing here knows about the farm: no gRPC, no async runtime, no
//! command line. The `tessera-worker` crate is the process that runs these on a farm's tasks.
//!
//! Variable paths mirror the PyTorch state-dict keys of the upstream models, so an official
//! checkpoint loads by name.

pub mod clip;
pub mod device;
pub mod esrgan;
pub mod fixtures;
pub mod generate;
pub mod imageio;
pub mod models;
pub mod ncnn;
pub mod torch_rng;
pub mod upscale;
pub mod vqgan;
pub mod weights;
