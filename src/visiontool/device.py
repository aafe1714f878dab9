"""Device and precision resolution shared by every command.

``--device auto`` picks cuda, then mps, then cpu. An explicitly requested device that is
absent is a usage error naming what is available. ``--dtype auto`` is float32 on CPU and
float16 on CUDA/MPS. Reduced precision runs under ``torch.autocast`` with float32 weights
(on CPU, bfloat16 autocast uses AVX512-bf16 / AMX where the CPU has it).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from visiontool.errors import UsageError

DEVICE_CHOICES = "auto|cpu|cuda|cuda:N|mps"
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")


def available_devices() -> list[str]:
    import torch

    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def validate_device_spec(spec: str) -> str:
    """Syntax check without importing torch (so bad flags fail before any heavy import)."""
    s = (spec or "auto").strip().lower()
    if s in ("auto", "cpu", "cuda", "mps"):
        return s
    if s.startswith("cuda:") and s[5:].isdigit():
        return s
    raise UsageError(f"invalid --device '{spec}': expected one of {DEVICE_CHOICES}")


def validate_dtype_spec(spec: str) -> str:
    s = (spec or "auto").strip().lower()
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    s = aliases.get(s, s)
    if s not in DTYPE_CHOICES:
        raise UsageError(f"invalid --dtype '{spec}': expected one of {'|'.join(DTYPE_CHOICES)}")
    return s


def resolve_device(spec: str = "auto"):
    """Return a ``torch.device`` for ``spec``; UsageError if an explicit device is absent."""
    import torch

    s = validate_device_spec(spec)
    avail = available_devices()
    if s == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda:0")
        if "mps" in avail:
            return torch.device("mps")
        return torch.device("cpu")
    if s == "cuda":
        s = "cuda:0"
    if s not in avail:
        raise UsageError(f"device '{spec}' is not available here; available: {', '.join(avail)}")
    return torch.device(s)


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


def resolve_dtype(spec: str, device, warn=None) -> Precision:
    """The precision for ``spec`` on ``device``; ``warn(msg)`` is told about slow choices."""
    s = validate_dtype_spec(spec)
    if s == "auto":
        s = "float32" if device.type == "cpu" else "float16"
    if warn is not None and device.type == "cpu":
        if s == "bfloat16" and not cpu_has_native_bf16():
            warn("this CPU has no native bfloat16 (AVX512-BF16/AMX): bfloat16 is emulated and far slower "
                 "than float32 here; use --dtype float32")
        elif s == "float16":
            warn("float16 on CPU is emulated and slow; bfloat16 (on CPUs with AVX512-BF16/AMX) or float32 "
                 "are the CPU choices")
    return Precision(s, device.type)


def auto_summary() -> dict:
    """What `auto` resolves to here (for `visiontool env`)."""
    dev = resolve_device("auto")
    return {"device": str(dev), "dtype": resolve_dtype("auto", dev).name, "available": available_devices()}
