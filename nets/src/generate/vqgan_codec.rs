//! VQGAN as the loop's [`LatentCodec`]: the real autoencoder behind the loop's contract.

use tch::{Kind, Tensor};

use super::{LatentCodec, ModelError};
use crate::vqgan::VqModel;

impl LatentCodec for VqModel {
    /// Quantised latents, as taming's `VQModel.encode` returns and `generate.py` starts from.
    fn encode(&self, image: &Tensor) -> Result<Tensor, ModelError> {
        let z = VqModel::encode(self, image)?;
        Ok(self.quantize(&z).0)
    }

    fn decode(&self, z_q: &Tensor) -> Tensor {
        VqModel::decode(self, z_q)
    }

    fn decode_stages(&self) -> usize {
        VqModel::decode_stage_count(self)
    }

    fn decode_stage(&self, index: usize, x: &Tensor) -> Tensor {
        VqModel::decode_stage(self, index, x)
    }

    fn codebook(&self) -> Tensor {
        VqModel::codebook(self)
    }

    fn downsampling_factor(&self) -> i64 {
        VqModel::downsampling_factor(self)
    }

    fn kind(&self) -> Kind {
        VqModel::codebook(self).kind()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vqgan::VqConfig;

    #[test]
    fn a_tiny_vqgan_serves_as_the_loops_codec() {
        let yaml = "model:\n  target: taming.models.vqgan.VQModel\n  params:\n    embed_dim: 8\n    n_embed: 16\n    ddconfig:\n      double_z: false\n      z_channels: 8\n      resolution: 32\n      in_channels: 3\n      out_ch: 3\n      ch: 32\n      ch_mult: [1, 2]\n      num_res_blocks: 1\n      attn_resolutions: [16]\n      dropout: 0.0\n";
        let cfg = VqConfig::from_yaml(yaml).unwrap();
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let model = crate::torch_rng::exclusive(|| {
            tch::manual_seed(0);
            VqModel::new(&vs.root(), &cfg)
        });
        let codec: &dyn LatentCodec = &model;
        let z = codec
            .encode(&Tensor::zeros(
                [1, 3, 32, 32],
                (Kind::Float, tch::Device::Cpu),
            ))
            .unwrap();
        assert_eq!(z.size(), [1, 8, 16, 16]);
        assert_eq!(codec.codebook().size(), [16, 8]);
        assert_eq!(codec.decode(&z).size(), [1, 3, 32, 32]);
        // Bottleneck, 2 levels of 2 resnet blocks, 1 upsampling, output layers.
        assert_eq!(codec.decode_stages(), 7);
        assert_eq!(
            (codec.downsampling_factor(), codec.kind()),
            (2, Kind::Float)
        );
        let err = codec.encode(&Tensor::zeros(
            [1, 3, 31, 32],
            (Kind::Float, tch::Device::Cpu),
        ));
        assert!(err.is_err());
    }
}
