"""Upstream reference networks, run from their published source files.

BasicSR's package cannot be imported on a CPU-only venv without torchvision, OpenCV and its CUDA
ops, and none of that touches the networks. This module reads the architecture files straight out
of the BasicSR wheel that scripts/setup.sh downloads into .deps/reference/ and executes them with
only those unrelated imports stubbed, so the forward code that runs is exactly upstream's.
"""
import pathlib
import sys
import zipfile
import types

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The newest BasicSR published as a wheel (its later releases are sdists that need a build).
BASICSR_WHEEL = ROOT / ".deps" / "reference" / "basicsr-1.3.3.3-py3-none-any.whl"


class _Registry:
    """Stand-in for basicsr.utils.registry.ARCH_REGISTRY: registration is irrelevant here."""

    def register(self, obj=None, **_):
        return obj if obj is not None else (lambda o: o)


def _stub(name, **attrs):
    module = sys.modules.get(name) or types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__path__ = []
    sys.modules[name] = module
    return module


def _load_basicsr_archs():
    if "basicsr.archs.rrdbnet_arch" in sys.modules:
        return sys.modules["basicsr.archs.rrdbnet_arch"]
    if not BASICSR_WHEEL.exists():
        sys.exit(f"error: {BASICSR_WHEEL} is missing: run scripts/setup.sh")
    _stub("torchvision")
    _stub("basicsr")
    _stub("basicsr.ops")
    _stub("basicsr.ops.dcn", ModulatedDeformConvPack=type("ModulatedDeformConvPack", (), {}),
          modulated_deform_conv=None)
    _stub("basicsr.utils", get_root_logger=lambda *a, **k: None)
    _stub("basicsr.utils.registry", ARCH_REGISTRY=_Registry())
    _stub("basicsr.archs")
    with zipfile.ZipFile(BASICSR_WHEEL) as wheel:
        for name in ("arch_util", "rrdbnet_arch"):
            source = wheel.read(f"basicsr/archs/{name}.py").decode()
            module = types.ModuleType(f"basicsr.archs.{name}")
            module.__package__ = "basicsr.archs"
            sys.modules[module.__name__] = module
            exec(compile(source, f"basicsr/archs/{name}.py", "exec"), module.__dict__)
    return sys.modules["basicsr.archs.rrdbnet_arch"]


def rrdbnet(num_block=23, num_feat=64, num_grow_ch=32):
    """BasicSR's x4 RRDBNet (Real-ESRGAN x4plus with the defaults)."""
    arch = _load_basicsr_archs()
    return arch.RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_block=num_block,
                        num_grow_ch=num_grow_ch)
