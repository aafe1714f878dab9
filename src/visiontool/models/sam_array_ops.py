"""Array primitives of the numpy SAM / SAM 2 decoders, on numpy or on torch when loaded.

GELU (exact, erf), LayerNorm and softmax in float32 numpy, switching to torch's kernels when
the process has already imported torch (:func:`loaded_torch`; never imported from here: a
``visiontool segment`` on an embedding-cache hit runs without it); and :class:`ArrayOps`, the
shape operations both decoders write once for numpy arrays and torch tensors.
"""
from __future__ import annotations

import math

import numpy as np

_SQRT1_2 = np.float32(1.0 / math.sqrt(2.0))
_BLOCK = 1 << 16  # elements per block for numpy elementwise chains (stay in L2)


def loaded_torch():
    """torch, if this process has already imported it (never imported from here).

    Its multi-threaded elementwise kernels are used for GELU / LayerNorm / softmax on large
    batches; the arithmetic is the same, so results agree with the numpy path to float rounding.
    """
    import sys

    return sys.modules.get("torch")


def erf(x: np.ndarray) -> np.ndarray:
    """Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7), float32."""
    a = np.abs(x)
    t = np.float32(1.0) / (np.float32(1.0) + np.float32(0.3275911) * a)
    y = t * np.float32(1.061405429) + np.float32(-1.453152027)
    for c in (1.421413741, -0.284496736, 0.254829592):
        y *= t
        y += np.float32(c)
    y *= t
    np.multiply(a, a, out=a)
    np.negative(a, out=a)
    np.exp(a, out=a)
    y *= a
    np.subtract(np.float32(1.0), y, out=y)
    return np.copysign(y, x, out=y)


def gelu(x: np.ndarray) -> np.ndarray:
    """Exact (erf) GELU as ``torch.nn.GELU()``."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    torch = loaded_torch()
    if torch is not None:
        return torch.nn.functional.gelu(torch.from_numpy(x)).numpy()
    out = np.empty_like(x)
    flat, fo = x.reshape(-1), out.reshape(-1)
    for i in range(0, flat.size, _BLOCK):
        v = flat[i:i + _BLOCK]
        e = erf(v * _SQRT1_2)
        e += np.float32(1.0)
        e *= v
        e *= np.float32(0.5)
        fo[i:i + _BLOCK] = e
    return out


def layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis (``nn.LayerNorm`` / channels-last ``LayerNorm2d``)."""
    torch = loaded_torch()
    if torch is not None and x.size >= _BLOCK:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        return torch.nn.functional.layer_norm(xt, (x.shape[-1],), torch.from_numpy(w), torch.from_numpy(b),
                                              eps).numpy()
    mu = x.mean(-1, keepdims=True)
    xc = x - mu
    var = np.mean(xc * xc, axis=-1, keepdims=True)
    xc /= np.sqrt(var + np.float32(eps))
    xc *= w
    xc += b
    return xc


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """In place when possible."""
    torch = loaded_torch()
    if torch is not None and x.size >= _BLOCK:
        return torch.softmax(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), dim=axis).numpy()
    x = x - x.max(axis=axis, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=axis, keepdims=True)
    return x


class ArrayOps:
    """Shape operations on numpy arrays, or on torch tensors when ``self.t`` is the torch
    module (the SAM and SAM 2 numpy decoders share them)."""

    t = None

    def arr(self, x: np.ndarray):
        return self.t.from_numpy(np.ascontiguousarray(x, dtype=np.float32)) if self.t is not None else x

    def np(self, x) -> np.ndarray:
        return x.numpy() if self.t is not None else x

    def perm(self, x, axes):
        return x.permute(*axes) if self.t is not None else x.transpose(axes)

    def c(self, x):
        return x.contiguous() if self.t is not None else np.ascontiguousarray(x)

    def cat(self, xs, axis):
        return self.t.cat(xs, axis) if self.t is not None else np.concatenate(xs, axis)

    def stack(self, xs, axis):
        return self.t.stack(xs, axis) if self.t is not None else np.stack(xs, axis)

    def bcast(self, x, shape):
        return x.expand(*shape) if self.t is not None else np.broadcast_to(x, shape)

    def heads(self, x, h):  # (B, T, D) -> (B, h, T, D/h)
        b, n, c = x.shape
        return self.perm(x.reshape(b, n, h, c // h), (0, 2, 1, 3))
