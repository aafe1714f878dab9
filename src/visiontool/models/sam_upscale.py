"""SAM's mask geometry: the model's input size for an image, and low-res logits -> masks.

:class:`MaskUpscaler` does what ``Sam.postprocess_masks`` + a threshold do (two bilinear
resizes, 256 -> 1024 padded -> the original size) as one banded separable product per axis.
"""
from __future__ import annotations

import numpy as np


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """``ResizeLongestSide.get_preprocess_shape``: (new_h, new_w)."""
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


def _taps(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear (align_corners=False) source indices and weights, as torch computes them."""
    scale = in_len / out_len
    src = (np.arange(out_len, dtype=np.float64) + 0.5) * scale - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), in_len - 1)
    i1 = np.minimum(i0 + 1, in_len - 1)
    lam = (src - i0).astype(np.float64)
    return i0, i1, lam


def upscale_matrix(low: int, padded: int, valid: int, out: int) -> np.ndarray:
    """(out, low) matrix of SAM's two bilinear resizes along one axis:
    low -> padded (256 -> 1024), keep the first ``valid`` (unpadded) samples, valid -> out."""
    a0, a1, al = _taps(padded, low)
    m1 = np.zeros((valid, low))
    r = np.arange(valid)
    np.add.at(m1, (r, a0[:valid]), 1 - al[:valid])
    np.add.at(m1, (r, a1[:valid]), al[:valid])
    b0, b1, bl = _taps(out, valid)
    return (m1[b0] * (1 - bl)[:, None] + m1[b1] * bl[:, None]).astype(np.float32)


def _band_tiles(a: np.ndarray, tile: int = 64) -> list[tuple[int, int, int, int, np.ndarray]]:
    """Split a banded (out, low) interpolation matrix into output tiles with their source band."""
    tiles = []
    for o0 in range(0, a.shape[0], tile):
        blk = a[o0:o0 + tile]
        nz = np.nonzero(blk.any(0))[0]
        c0, c1 = int(nz[0]), int(nz[-1]) + 1
        tiles.append((o0, o0 + blk.shape[0], c0, c1, np.ascontiguousarray(blk[:, c0:c1].T)))
    return tiles


def _apply_last(x: np.ndarray, tiles, out_len: int) -> np.ndarray:
    out = np.empty(x.shape[:-1] + (out_len,), np.float32)
    for o0, o1, c0, c1, kt in tiles:
        np.matmul(x[..., c0:c1], kt, out=out[..., o0:o1])
    return out


class MaskUpscaler:
    """Low-res logits (B, 4g, 4g) -> binary masks at the original size, as SAM's
    ``postprocess_masks`` + threshold, but as one banded separable product per axis:
    each output pixel reads only the ≤4×4 low-res logits it depends on (no 1024² detour)."""

    def __init__(self, low: int, padded: int, input_hw: tuple[int, int], original_hw: tuple[int, int]):
        self.h, self.w = original_hw
        self.ty = _band_tiles(upscale_matrix(low, padded, input_hw[0], self.h))
        self.tx = _band_tiles(upscale_matrix(low, padded, input_hw[1], self.w))

    def low_extent(self) -> tuple[int, int]:
        """(rows, cols) of the low-res logits that any output pixel reads."""
        return max(t[3] for t in self.ty), max(t[3] for t in self.tx)

    def logits_t(self, low: np.ndarray) -> np.ndarray:
        """(B, 4g, 4g) -> (B, W, H) full-resolution logits, transposed (Fortran order per mask)."""
        a = _apply_last(np.ascontiguousarray(low, np.float32), self.tx, self.w)  # (B, 4g rows, W)
        a = np.ascontiguousarray(a.transpose(0, 2, 1))  # (B, W, 4g)
        return _apply_last(a, self.ty, self.h)  # (B, W, H)

    def rles(self, low: np.ndarray, threshold: float = 0.0, chunk: int = 8) -> list[dict]:
        """COCO RLEs (bytes counts) of ``logits > threshold`` at the original size."""
        from pycocotools import mask as mask_utils

        out: list[dict] = []
        for i in range(0, low.shape[0], chunk):
            binary = (self.logits_t(low[i:i + chunk]) > threshold).view(np.uint8)  # (b, W, H)
            out.extend(mask_utils.encode(binary.transpose(2, 1, 0)))  # (H, W, b), Fortran order
        return out
