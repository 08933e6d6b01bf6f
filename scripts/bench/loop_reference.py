"""PyTorch half of `tessera-worker bench loop`: one VQGAN+CLIP iteration as generate.py runs it
(random codebook tokens, straight-through quantisation, decode, clamp_with_grad, pooled cutouts
with kornia's affine/perspective/jitter/erasing augmentations and noise, CLIP ViT-B/32, spherical
distance loss, Adam lr 0.1, per-channel clamp), with the full-size architectures and random
weights, timed.

The architectures come from the upstream module definitions on PyPI: clip-anytorch's
clip/model.py (loaded as a file, since the package's __init__ needs torchvision) and
taming-transformers-rom1504's Encoder/Decoder/VectorQuantizer, configured as
vqgan_imagenet_f16_16384. The text encoder is not timed (both loops embed prompts once).

    .deps/venv/bin/python scripts/bench/loop_reference.py --sizes 128 256 --batches 1 4 --iterations 3

A batch of B renders is optimised as the Rust loop does it: each render has its own z and Adam,
the B latents are decoded in one batched forward, every render cuts its own cutouts from its
picture, CLIP embeds all B*cutn cutouts at once, and one backward pass serves the summed losses.

Prints one JSON object per size and batch on stdout (what `bench::parse_reference` reads):
    {"impl": "pytorch", "scope": "iteration", "variant": "full", "size": 128, "batch": 1,
     "cutn": 32, "seconds_per_iteration": ..., "peak_mib": ...}

Peak memory is measured as worker/src/peak_memory.rs measures ours: on the CPU the resident-set
high-water mark (VmHWM), restarted before each cell through /proc/self/clear_refs; on CUDA the
GPU's used memory by NVML minus what was used before this process touched the GPU (the CUDA
context, the models and the caching allocator's blocks, as nvidia-smi counts them).

With --overhead it times only the loop's own work around the networks (scope "overhead"):
cutouts with augmentations and noise, quantisation against a 16384x256 codebook, both backward
passes, an Adam step and the clamp; `bench::bench_overhead` times the same in Rust.
"""

import argparse
import ctypes
import importlib.util
import json
import math
import os
import sys
import time

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import nn

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def load_file_module(name, relative):
    """Imports one file of an installed package without running the package's __init__."""
    for base in sys.path:
        path = os.path.join(base, relative)
        if os.path.isfile(path):
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return module
    raise SystemExit(f"{relative} not found: install clip-anytorch (pip install --no-deps clip-anytorch)")


def clip_vit_b_32():
    clip_model = load_file_module("clip_model", os.path.join("clip", "model.py"))
    # embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
    # context_length, vocab_size, transformer_width, transformer_heads, transformer_layers
    return clip_model.CLIP(512, 224, 12, 768, 32, 77, 49408, 512, 8, 12)


class VqganF16(nn.Module):
    """vqgan_imagenet_f16_16384's modules, as taming's VQModel holds them."""

    def __init__(self):
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import VectorQuantizer

        dd = dict(double_z=False, z_channels=256, resolution=256, in_channels=3, out_ch=3, ch=128,
                  ch_mult=[1, 1, 2, 2, 4], num_res_blocks=2, attn_resolutions=[16], dropout=0.0)
        self.encoder = Encoder(**dd)
        self.decoder = Decoder(**dd)
        self.quantize = VectorQuantizer(16384, 256, beta=0.25)
        self.quant_conv = nn.Conv2d(256, 256, 1)
        self.post_quant_conv = nn.Conv2d(256, 256, 1)

    def decode(self, z_q):
        return self.decoder(self.post_quant_conv(z_q))


class StraightThrough(torch.autograd.Function):
    """Values of the first input, gradient handed to the second."""

    @staticmethod
    def forward(ctx, values, gradient_target):
        ctx.shape = gradient_target.shape
        return values

    @staticmethod
    def backward(ctx, grad):
        return None, grad.sum_to_size(ctx.shape)


class ClampPushBack(torch.autograd.Function):
    """Clamp to [lo, hi]; outside the range the gradient passes only towards the range."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        ctx.lo, ctx.hi = lo, hi
        ctx.save_for_backward(x)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        keep = grad * (x - x.clamp(ctx.lo, ctx.hi)) >= 0
        return grad * keep, None, None


def quantize(z, codebook):
    x = z.movedim(1, 3)
    d = x.pow(2).sum(-1, keepdim=True) + codebook.pow(2).sum(1) - 2 * x @ codebook.T
    x_q = codebook[d.argmin(-1)]
    return StraightThrough.apply(x_q, x).movedim(3, 1)


def spherical_loss(image_embeds, target, weight=1.0):
    a = F.normalize(image_embeds.unsqueeze(1), dim=2)
    b = F.normalize(target.unsqueeze(0), dim=2)
    d = (a - b).norm(dim=2).div(2).arcsin().pow(2).mul(2)
    return abs(weight) * (d * math.copysign(1, weight)).mean()


class PooledCutouts(nn.Module):
    def __init__(self, cut_size, cutn):
        super().__init__()
        self.cut_size, self.cutn = cut_size, cutn
        self.augs = nn.Sequential(
            K.RandomAffine(degrees=15, translate=0.1, shear=5, p=0.7, padding_mode="zeros", keepdim=True),
            K.RandomPerspective(distortion_scale=0.7, p=0.7),
            K.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.1, p=0.7),
            K.RandomErasing(scale=(0.1, 0.4), ratio=(0.3, 1 / 0.3), same_on_batch=True, p=0.7),
        )

    def forward(self, image):
        size = (self.cut_size, self.cut_size)
        pooled = (F.adaptive_avg_pool2d(image, size) + F.adaptive_max_pool2d(image, size)) / 2
        batch = self.augs(pooled.repeat(self.cutn, 1, 1, 1))
        facs = batch.new_empty([self.cutn, 1, 1, 1]).uniform_(0, 0.1)
        return batch + facs * torch.randn_like(batch)


class PeakMemory:
    """Peak memory of this process in MiB, as worker/src/peak_memory.rs measures it."""

    def __init__(self, device):
        self.gpu = None
        if device.type == "cuda":
            try:
                nvml = ctypes.CDLL("libnvidia-ml.so.1")
                handle = ctypes.c_void_p()
                if nvml.nvmlInit_v2() == 0 and nvml.nvmlDeviceGetHandleByIndex_v2(
                        device.index or 0, ctypes.byref(handle)) == 0:
                    self.gpu = (nvml, handle)
                    self.baseline = self.gpu_used()
            except OSError:
                pass

    def gpu_used(self):
        memory = (ctypes.c_ulonglong * 3)()  # nvmlMemory_t: total, free, used
        nvml, handle = self.gpu
        return memory[2] if nvml.nvmlDeviceGetMemoryInfo(handle, memory) == 0 else None

    def restart(self):
        """Frees heap back to the kernel and restarts the resident-set high-water mark."""
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak_mib(self):
        return self.gpu_taken_mib() if self.gpu is not None else self.status_mib("VmHWM:")

    def in_use_mib(self):
        return self.gpu_taken_mib() if self.gpu is not None else self.status_mib("VmRSS:")

    def gpu_taken_mib(self):
        used = self.gpu_used()
        return None if used is None or self.baseline is None else (used - self.baseline) / 2**20

    @staticmethod
    def status_mib(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1]) / 1024
        return None


def timed(step, args, device, memory):
    """Seconds of the fastest of args.iterations calls of `step` after args.warmup (on a shared
    machine the least disturbed by other load; bench.rs reports the same), and MiB in use at
    the start and at the peak."""
    memory.restart()
    start = memory.in_use_mib()
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    seconds = math.inf
    for _ in range(args.iterations):
        began = time.perf_counter()
        step()
        sync()
        seconds = min(seconds, time.perf_counter() - began)
    return seconds, start, memory.peak_mib()


def row(scope, size, batch, args, seconds, start, peak):
    return {"impl": "pytorch", "scope": scope, "variant": "clip-fp16" if args.clip_half else "full",
            "size": size, "batch": batch, "cutn": args.cutn, "seconds_per_iteration": seconds,
            "start_mib": start, "peak_mib": peak}


def time_overhead(size, args, device, memory):
    image = torch.rand(1, 3, size, size, device=device).requires_grad_(True)
    codebook = torch.randn(16384, 256, device=device)
    z = torch.randn(1, 256, size // 16, size // 16, device=device).requires_grad_(True)
    opt = torch.optim.Adam([z], lr=0.1)
    cutouts = PooledCutouts(224, args.cutn)

    def step():
        opt.zero_grad(set_to_none=True)
        image.grad = None
        (cutouts(image).mean() + quantize(z, codebook).mean()).backward()
        opt.step()
        with torch.no_grad():
            z.copy_(z.clamp(-1, 1))

    return row("overhead", size, 1, args, *timed(step, args, device, memory))


def time_size(size, batch, args, clip, vqgan, device, memory):
    codebook = vqgan.quantize.embedding.weight
    tokens = size // 16
    zs = []
    for _ in range(batch):
        ids = torch.randint(codebook.shape[0], [tokens * tokens], device=device)
        z = codebook[ids].view(1, tokens, tokens, -1).permute(0, 3, 1, 2).contiguous()
        zs.append(z.requires_grad_(True))
    z_min = codebook.min(0).values[None, :, None, None]
    z_max = codebook.max(0).values[None, :, None, None]
    opts = [torch.optim.Adam([z], lr=0.1) for z in zs]
    cutouts = PooledCutouts(clip.visual.input_resolution, args.cutn)
    mean = torch.tensor(CLIP_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=device).view(1, 3, 1, 1)
    targets = torch.randn(batch, 1, 512, device=device)
    clip_dtype = clip.visual.conv1.weight.dtype

    def step():
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        image = ClampPushBack.apply(vqgan.decode(quantize(torch.cat(zs), codebook)).add(1).div(2), 0, 1)
        cuts = torch.cat([cutouts(image[b:b + 1]) for b in range(batch)])
        embeds = clip.encode_image(((cuts - mean) / std).to(clip_dtype)).float()
        sum(spherical_loss(e, t) for e, t in zip(embeds.chunk(batch), targets)).backward()
        for z, opt in zip(zs, opts):
            opt.step()
            with torch.no_grad():
                z.copy_(z.maximum(z_min).minimum(z_max))

    return row("iteration", size, batch, args, *timed(step, args, device, memory))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1], help="renders optimised together")
    parser.add_argument("--cutn", type=int, default=32)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--clip-half", action="store_true", help="CLIP in float16, as generate.py on CUDA")
    parser.add_argument("--overhead", action="store_true", help="time only the loop's work around the networks")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    memory = PeakMemory(device)  # before anything touches the GPU
    if args.overhead:
        for size in args.sizes:
            print(json.dumps(time_overhead(size, args, device, memory)), flush=True)
        return
    clip = clip_vit_b_32().eval().requires_grad_(False).to(device)
    if args.clip_half:
        clip = clip.half()
    vqgan = VqganF16().eval().requires_grad_(False).to(device)
    for size in args.sizes:
        for batch in args.batches:
            print(json.dumps(time_size(size, batch, args, clip, vqgan, device, memory)), flush=True)


if __name__ == "__main__":
    main()
