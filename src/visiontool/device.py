"""Device and precision: the one place every command and every model family resolves them.

``--device auto`` picks cuda, then mps, then cpu. An explicitly requested device that is
absent is a usage error naming what is available. ``--dtype auto`` is float32 on CPU and
float16 on CUDA/MPS. Reduced precision runs under ``torch.autocast`` with float32 weights
(on CPU, bfloat16 autocast is fast only with AVX512-BF16 / AMX; elsewhere it is emulated and
20-500x slower, and :func:`resolve` warns).

Resolution imports torch only when a GPU could be present (a CUDA device node, macOS), so
a command that may never need torch (segment's embedding-cache hit) stays torch-free on a
CPU-only machine.
"""
from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from typing import Callable

from visiontool.errors import UsageError

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")
_DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}


def validate_device_spec(spec: str | None) -> str:
    """Syntax check without importing torch (so bad flags fail before any heavy import)."""
    s = (spec or "auto").strip().lower()
    if s in ("auto", "cpu", "cuda", "mps"):
        return s
    if s.startswith("cuda:") and s[5:].isdigit():
        return s
    raise UsageError(f"invalid --device '{spec}': expected one of {DEVICE_CHOICES}")


def validate_dtype_spec(spec: str | None) -> str:
    s = (spec or "auto").strip().lower()
    s = _DTYPE_ALIASES.get(s, s)
    if s not in DTYPE_CHOICES:
        raise UsageError(f"invalid --dtype '{spec}': expected one of {'|'.join(DTYPE_CHOICES)}")
    return s


def gpu_possible() -> bool:
    """Whether a CUDA or MPS device could exist here, decided without importing torch."""
    if sys.platform == "darwin":
        return True
    return os.path.exists("/dev/nvidiactl") or os.path.exists("/dev/nvidia0") or \
        bool(os.environ.get("VISIONTOOL_ASSUME_GPU"))


def available_devices() -> list[str]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def resolve_device(spec: str | None = "auto") -> str:
    """The device for ``spec`` as a string ("cpu", "cuda:0", "mps"); UsageError if an
    explicit device is absent. Imports torch only when a GPU could be present."""
    s = validate_device_spec(spec)
    if s == "cpu" or (s == "auto" and not gpu_possible()):
        return "cpu"
    avail = available_devices()
    if s == "auto":
        gpus = [d for d in avail if d != "cpu"]
        return gpus[0] if gpus else "cpu"
    if s == "cuda":
        s = "cuda:0"
    if s not in avail:
        raise UsageError(f"device '{spec}' is not available here; available: {', '.join(avail)}")
    return s


def device_type(device: str) -> str:
    return str(device).split(":")[0]


def torch_device(device: str):
    import torch

    return torch.device(device)


@dataclass(frozen=True)
class Precision:
    """How a model runs: weights stay float32; ``autocast`` is the reduced dtype or None."""

    name: str  # float32 | float16 | bfloat16
    device_type: str  # cpu | cuda | mps

    @property
    def autocast_dtype(self):
        import torch

        return {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.name]

    def context(self):
        """``torch.autocast`` for reduced precision, a no-op for float32."""
        import torch

        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=dtype)


def cpu_has_native_bf16() -> bool:
    """True where the CPU computes bfloat16 in hardware (AVX512-BF16 or AMX).

    Without it (e.g. AVX2-only CPUs) PyTorch emulates bfloat16 and autocast is 10-500x
    *slower* than float32 (measured here: a 256-channel 3x3 conv took 58 s vs 0.11 s).
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            flags = fh.read()
    except OSError:
        import torch

        return "AVX512" in torch.backends.cpu.get_cpu_capability()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(spec: str | None, device: str, warn: Callable[[str], None] | None = None) -> Precision:
    """The precision for ``spec`` on ``device`` (a string or torch.device); ``warn(msg)`` is
    told about slow choices (emulated bfloat16 or float16 on a CPU)."""
    s = validate_dtype_spec(spec)
    dtype_of = device_type(str(device))
    if s == "auto":
        s = "float32" if dtype_of == "cpu" else "float16"
    if warn is not None and dtype_of == "cpu":
        if s == "bfloat16" and not cpu_has_native_bf16():
            warn("this CPU has no native bfloat16 (AVX512-BF16/AMX): bfloat16 is emulated and far slower "
                 "than float32 here; use --dtype float32")
        elif s == "float16":
            warn("float16 on CPU is emulated and slow; bfloat16 (on CPUs with AVX512-BF16/AMX) or float32 "
                 "are the CPU choices")
    return Precision(s, dtype_of)


def resolve(device: str | None, dtype: str | None, warn: Callable[[str], None] | None = None
            ) -> tuple[str, Precision]:
    """``(device, precision)`` for the flags, with the slow-precision warning: what every
    model load goes through."""
    dev = resolve_device(device)
    return dev, resolve_dtype(dtype, dev, warn=warn)


def auto_summary() -> dict:
    """What `auto` resolves to here (for `visiontool env`)."""
    dev = resolve_device("auto")
    return {"device": dev, "dtype": resolve_dtype("auto", dev).name, "available": available_devices()}
