#!/usr/bin/env python3
"""PyTorch side of `tessera-worker bench upscale`: BasicSR's RRDBNet (Real-ESRGAN x4plus shape,
random weights) on a random SIZE x SIZE image, untiled or in Real-ESRGAN's tiling (each tile read
with PAD pixels of context, pasted without blending). Prints the median milliseconds last."""
import argparse
import pathlib
import statistics
import sys
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "fixtures"))
from make_esrgan_fixtures import upstream_archs  # noqa: E402


def upscale(model, image, tile, pad, scale=4):
    if tile == 0:
        return model(image)
    _, _, h, w = image.shape
    out = image.new_zeros((1, 3, h * scale, w * scale))
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            y0, x0, y1, x1 = max(y - pad, 0), max(x - pad, 0), min(y + tile + pad, h), min(x + tile + pad, w)
            result = model(image[:, :, y0:y1, x0:x1])
            ty, tx = min(y + tile, h), min(x + tile, w)
            out[:, :, y * scale:ty * scale, x * scale:tx * scale] = result[
                :, :, (y - y0) * scale:(ty - y0) * scale, (x - x0) * scale:(tx - x0) * scale]
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--tile", type=int, default=0)
    parser.add_argument("--pad", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    rrdbnet, _ = upstream_archs()
    model = rrdbnet(num_in_ch=3, num_out_ch=3, scale=4, num_feat=64, num_block=23, num_grow_ch=32).eval()
    image = torch.rand(1, 3, args.size, args.size)
    times = []
    with torch.no_grad():
        for i in range(args.repeats + 1):
            start = time.perf_counter()
            upscale(model, image, args.tile, args.pad)
            if i:
                times.append((time.perf_counter() - start) * 1e3)
    print(f"{statistics.median(times):.1f}")


if __name__ == "__main__":
    main()
