//! CLIP as the loop's [`Perceptor`]: the real image-text model behind the loop's contract.

use tch::{Kind, Tensor};

use super::{ModelError, Perceptor};
use crate::clip::Clip;

impl Perceptor for Clip {
    fn input_resolution(&self) -> i64 {
        Clip::input_resolution(self)
    }

    fn embed_dim(&self) -> i64 {
        Clip::embed_dim(self)
    }

    fn kind(&self) -> Kind {
        Clip::kind(self)
    }

    fn encode_text(&self, texts: &[&str]) -> Result<Tensor, ModelError> {
        Ok(Clip::encode_text(self, texts)?)
    }

    fn encode_image(&self, pixels: &Tensor) -> Tensor {
        Clip::encode_image(self, pixels)
    }
}
