#!/usr/bin/env python3
"""Turns an official PyTorch checkpoint into a flat safetensors file the worker loads.

Official files nest their tensors: Real-ESRGAN under `params_ema` (or `params`), taming-transformers'
Lightning checkpoints under `state_dict` next to optimizer and trainer state. The worker reads flat
tensor tables only, so this script picks the nested table, keeps every tensor (names unchanged) and
writes it as safetensors. Run it with the project's venv:

    .deps/venv/bin/python scripts/convert_checkpoint.py IN.pth OUT.safetensors [--key params_ema]
"""
import argparse
import pickle
import sys
import types

import torch
from safetensors.torch import save_file

PREFERRED_KEYS = ("params_ema", "params", "state_dict", "model")


class Placeholder(dict):
    """Stands in for a pickled object whose class is not installed. Lightning checkpoints pickle
    trainer objects (pytorch_lightning callbacks, omegaconf configs) next to the tensors; only the
    tensors are kept, so neither package is needed to convert. A dict that also takes list items,
    so whatever state the pickle restores into it is accepted."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def append(self, item):
        pass

    def extend(self, items):
        pass


class TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (Placeholder,), {"__module__": module})


# torch.load takes a pickle module: the standard one with the tolerant Unpickler.
tolerant_pickle = types.ModuleType("tolerant_pickle")
tolerant_pickle.__dict__.update(pickle.__dict__)
tolerant_pickle.Unpickler = TolerantUnpickler


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
    obj = torch.load(args.input, map_location="cpu", weights_only=False, pickle_module=tolerant_pickle)
    tensors = flat_tensors(obj, args.key)
    if not tensors:
        sys.exit(f"error: {args.input} holds no tensors")
    save_file(tensors, args.output)
    print(f"wrote {len(tensors)} tensors to {args.output}")


if __name__ == "__main__":
    main()
