#!/usr/bin/env python3
"""PyTorch reference timing for `tessera-worker bench vqgan`: the full-size vqgan_imagenet_f16_16384
decoder (taming-transformers' own modules, random weights) forward plus backward, the gradient taken
with respect to the latent only (weights frozen), as the generation loop does. Mirrors
worker/src/bench/vqgan.rs step for step. Prints the milliseconds per iteration as the LAST line.

    .deps/venv/bin/python scripts/bench/vqgan_reference.py SIZE [ITERS]
"""
import argparse
import contextlib
import io
import time

import torch
from taming.modules.diffusionmodules.model import Decoder

DDCONFIG = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
EMBED_DIM = 256
FACTOR = 16


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("size", type=int, help="image side in pixels (rounded down to a multiple of 16)")
    parser.add_argument("iters", type=int, nargs="?", default=3, help="timed iterations after one warm-up")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # Decoder prints its latent shape
        decoder = Decoder(**DDCONFIG)
    post_quant_conv = torch.nn.Conv2d(EMBED_DIM, DDCONFIG["z_channels"], 1)
    model = torch.nn.Sequential(post_quant_conv, decoder).to(device).eval().requires_grad_(False)
    side = max(args.size // FACTOR, 1)
    z = torch.randn(1, EMBED_DIM, side, side, device=device, requires_grad=True)

    def step():
        loss = model(z).square().mean()
        z.grad = None
        loss.backward()

    step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    synchronize(device)
    print(f"{(time.perf_counter() - start) * 1000.0 / max(args.iters, 1):.3f}")


if __name__ == "__main__":
    main()
