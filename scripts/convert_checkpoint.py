#!/usr/bin/env python3
"""Turns an official PyTorch checkpoint into a flat safetensors file the worker loads.

Official files nest their tensors: Real-ESRGAN under `params_ema` (or `params`), taming-transformers'
Lightning checkpoints under `state_dict` next to optimizer and trainer state. The worker reads flat
tensor tables only, so this script picks the nested table, keeps every tensor (names unchanged) and
writes it as safetensors. Run it with the project's venv:

    .deps/venv/bin/python scripts/convert_checkpoint.py IN.pth OUT.safetensors [--key params_ema]
"""
import argparse
import sys

import torch
from safetensors.torch import save_file

PREFERRED_KEYS = ("params_ema", "params", "state_dict", "model")


def flat_tensors(obj, key):
    """Returns the name -> tensor table inside a loaded checkpoint."""
    if key is not None:
        if key not in obj:
            sys.exit(f"error: checkpoint has no entry '{key}' (it has: {', '.join(map(str, obj))})")
        obj = obj[key]
    elif isinstance(obj, dict) and not all(torch.is_tensor(v) for v in obj.values()):
        for candidate in PREFERRED_KEYS:
            if candidate in obj and isinstance(obj[candidate], dict):
                obj = obj[candidate]
                break
    if not isinstance(obj, dict):
        sys.exit(f"error: expected a table of tensors, found {type(obj).__name__}")
    return {k: v.detach().contiguous() for k, v in obj.items() if torch.is_tensor(v)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--key", help="entry holding the tensors (default: params_ema, params, state_dict)")
    args = parser.parse_args()
    obj = torch.load(args.input, map_location="cpu", weights_only=False)
    tensors = flat_tensors(obj, args.key)
    if not tensors:
        sys.exit(f"error: {args.input} holds no tensors")
    save_file(tensors, args.output)
    print(f"wrote {len(tensors)} tensors to {args.output}")


if __name__ == "__main__":
    main()
