//! Tiny real networks with fixed random weights for the loop's tests (here and in the worker's
//! benchmark tests): a convolutional image
//! encoder with a hashed bag-of-words text encoder (the perceptor), and a convolutional
//! autoencoder with a codebook (the codec). They are small enough to run the whole loop on a
//! CPU in milliseconds, yet the loop's gradients flow through real convolutions, upsampling and
//! linear layers, as they do through CLIP and VQGAN.

use super::rng::{Purpose, RunRng, Stream};
use super::traits::{LatentCodec, ModelError, Perceptor};
use tch::{Kind, Tensor};

/// Uniform weights in ±bound drawn from `stream` (not torch's global generator, so tests
/// running in parallel cannot disturb them).
fn weights(stream: &mut Stream, shape: &[i64], bound: f64) -> Tensor {
    let n: i64 = shape.iter().product();
    let values: Vec<f32> = (0..n)
        .map(|_| stream.uniform_in(-bound, bound) as f32)
        .collect();
    Tensor::from_slice(&values).view(shape)
}

/// A conv layer: weight `[out, in, k, k]` with He-uniform bound, and a small bias.
struct Conv {
    weight: Tensor,
    bias: Tensor,
    stride: i64,
    padding: i64,
}

impl Conv {
    fn new(
        s: &mut Stream,
        c_in: i64,
        c_out: i64,
        k: i64,
        stride: i64,
        padding: i64,
        gain: f64,
    ) -> Conv {
        let bound = gain * (6.0 / (c_in * k * k) as f64).sqrt();
        Conv {
            weight: weights(s, &[c_out, c_in, k, k], bound),
            bias: weights(s, &[c_out], 0.1),
            stride,
            padding,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.weight,
            Some(&self.bias),
            [self.stride, self.stride],
            [self.padding, self.padding],
            [1, 1],
            1,
        )
    }
}

/// CLIP's pixel statistics, applied inside as CLIP does.
const MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// A CLIP stand-in: two convolutions, global mean and max pooling and a projection for images, a hashed
/// bag-of-words embedding and a projection for texts.
pub struct TinyPerceptor {
    conv1: Conv,
    conv2: Conv,
    image_proj: Tensor,
    words: Tensor,
    text_proj: Tensor,
    resolution: i64,
    dim: i64,
}

const VOCABULARY: i64 = 97;

impl TinyPerceptor {
    /// Weights drawn from `seed`; images of side 16, embeddings of 16 dimensions.
    pub fn new(seed: u64) -> TinyPerceptor {
        TinyPerceptor::with_width(seed, 16)
    }

    /// Weights drawn from `seed`; images of side 16, embeddings of `dim` dimensions.
    pub fn with_width(seed: u64, dim: i64) -> TinyPerceptor {
        let mut s = RunRng::new(seed).stream(0, Purpose::Init);
        let resolution = 16;
        let features = 2 * 32;
        TinyPerceptor {
            conv1: Conv::new(&mut s, 3, 16, 3, 1, 1, 1.0),
            conv2: Conv::new(&mut s, 16, 32, 3, 2, 1, 1.0),
            image_proj: weights(&mut s, &[features, dim], (3.0 / features as f64).sqrt()),
            words: weights(&mut s, &[VOCABULARY, dim], 1.0),
            text_proj: weights(&mut s, &[dim, dim], (3.0 / dim as f64).sqrt()),
            resolution,
            dim,
        }
    }

    fn word_id(word: &str) -> i64 {
        // FNV-1a: a fixed hash, unlike std's randomly keyed one.
        let hash = word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        (hash % VOCABULARY as u64) as i64
    }
}

fn l2_normalise(x: &Tensor) -> Tensor {
    x / x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12)
}

impl Perceptor for TinyPerceptor {
    fn input_resolution(&self) -> i64 {
        self.resolution
    }

    fn embed_dim(&self) -> i64 {
        self.dim
    }

    fn kind(&self) -> Kind {
        Kind::Float
    }

    fn encode_text(&self, texts: &[&str]) -> Result<Tensor, ModelError> {
        let rows = texts
            .iter()
            .map(|text| {
                let ids: Vec<i64> = text
                    .split_whitespace()
                    .map(|w| Self::word_id(&w.to_lowercase()))
                    .collect();
                if ids.is_empty() {
                    return Err(format!("text {text:?} has no words").into());
                }
                Ok(self
                    .words
                    .index_select(0, &Tensor::from_slice(&ids))
                    .mean_dim(0, false, Kind::Float))
            })
            .collect::<Result<Vec<Tensor>, ModelError>>()?;
        Ok(l2_normalise(
            &Tensor::stack(&rows, 0).matmul(&self.text_proj),
        ))
    }

    fn encode_image(&self, pixels: &Tensor) -> Tensor {
        let mean = Tensor::from_slice(&MEAN).view([1, 3, 1, 1]);
        let std = Tensor::from_slice(&STD).view([1, 3, 1, 1]);
        let x = (pixels - mean) / std;
        let x = self.conv1.forward(&x).gelu("none");
        let x = self.conv2.forward(&x).gelu("none");
        // Pooled statistics, not positions: like CLIP, little moved by the augmentations.
        let pooled = Tensor::cat(
            &[
                x.mean_dim([2i64, 3].as_slice(), false, Kind::Float),
                x.amax([2i64, 3].as_slice(), false),
            ],
            1,
        );
        l2_normalise(&pooled.matmul(&self.image_proj))
    }
}

/// A VQGAN stand-in with factor 4: a codebook of 32 four-dimensional codes, a two-layer
/// strided encoder and a decoder of convolutions and nearest-neighbour upsampling.
pub struct TinyCodec {
    codebook: Tensor,
    enc1: Conv,
    enc2: Conv,
    dec1: Conv,
    dec2: Conv,
    dec3: Conv,
}

impl TinyCodec {
    /// Weights and codebook drawn from `seed`.
    pub fn new(seed: u64) -> TinyCodec {
        let mut s = RunRng::new(seed).stream(1, Purpose::Init);
        TinyCodec {
            codebook: weights(&mut s, &[32, 4], 1.0),
            enc1: Conv::new(&mut s, 3, 8, 4, 2, 1, 1.0),
            enc2: Conv::new(&mut s, 8, 4, 4, 2, 1, 0.5),
            dec1: Conv::new(&mut s, 4, 16, 3, 1, 1, 1.0),
            dec2: Conv::new(&mut s, 16, 8, 3, 1, 1, 1.0),
            dec3: Conv::new(&mut s, 8, 3, 3, 1, 1, 0.7),
        }
    }
}

impl LatentCodec for TinyCodec {
    fn encode(&self, image: &Tensor) -> Result<Tensor, ModelError> {
        if image.size().len() != 4 || image.size()[1] != 3 {
            return Err(format!("expected [N, 3, H, W], got {:?}", image.size()).into());
        }
        Ok(self.enc2.forward(&self.enc1.forward(image).gelu("none")))
    }

    fn decode(&self, z_q: &Tensor) -> Tensor {
        (0..self.decode_stages()).fold(z_q.shallow_clone(), |x, i| self.decode_stage(i, &x))
    }

    /// Three pieces, so the loop's stage-by-stage backward is exercised.
    fn decode_stages(&self) -> usize {
        3
    }

    fn decode_stage(&self, index: usize, x: &Tensor) -> Tensor {
        let up = |x: &Tensor| {
            let (h, w) = (x.size()[2], x.size()[3]);
            x.upsample_nearest2d([2 * h, 2 * w], None, None)
        };
        match index {
            0 => self.dec1.forward(x).gelu("none"),
            1 => self.dec2.forward(&up(x)).gelu("none"),
            _ => self.dec3.forward(&up(x)),
        }
    }

    fn codebook(&self) -> Tensor {
        self.codebook.shallow_clone()
    }

    fn downsampling_factor(&self) -> i64 {
        4
    }

    fn kind(&self) -> Kind {
        Kind::Float
    }
}

/// Both tiny networks, on the CPU. Also limits torch to one intra-op thread (OpenMP: this test
/// thread; MKL: the process): on tensors this small, and on a loaded machine, thread hand-offs
/// cost far more than they save (a 20x slowdown measured on the shared 2-core machine).
pub fn tiny_models() -> (TinyPerceptor, TinyCodec) {
    tch::set_num_threads(1);
    (TinyPerceptor::new(101), TinyCodec::new(202))
}
