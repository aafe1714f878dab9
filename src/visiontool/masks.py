"""Binary masks: COCO RLE encoding and decoding, areas, boxes, SAM's stability score.

The one place masks are encoded (pycocotools underneath). Records carry RLE with **str**
counts (``{"size": [h, w], "counts": "..."}``), JSON-ready; pycocotools itself wants bytes.
"""
from __future__ import annotations

import numpy as np

LOGIT_THRESHOLD = 0.0  # SAM's mask_threshold: a pixel is in the mask where its logit > 0
STABILITY_OFFSET = 1.0


def str_counts(rle: dict) -> dict:
    """An RLE with bytes counts (pycocotools) -> str counts (records)."""
    counts = rle["counts"]
    return {"size": [int(v) for v in rle["size"]],
            "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts}


def _native(rle: dict) -> dict:
    """A record's RLE -> what pycocotools takes (bytes counts; uncompressed list counts converted)."""
    from pycocotools import mask as mask_utils

    counts = rle.get("counts")
    if isinstance(counts, list):
        h, w = rle["size"]
        return mask_utils.frPyObjects(rle, h, w)
    if isinstance(counts, str):
        return {"size": rle["size"], "counts": counts.encode("ascii")}
    return rle


def encode(mask: np.ndarray) -> dict:
    """One binary (H, W) mask -> COCO RLE with str counts."""
    from pycocotools import mask as mask_utils

    return str_counts(mask_utils.encode(np.asfortranarray(np.asarray(mask, dtype=np.uint8))))


def encode_many(masks: np.ndarray) -> list[dict]:
    """(N, H, W) binary masks -> N RLEs with str counts (one pycocotools call)."""
    from pycocotools import mask as mask_utils

    m = np.asarray(masks)
    if m.shape[0] == 0:
        return []
    # pycocotools wants (H, W, N) in Fortran order: a transposed C-contiguous (N, W, H) array is that
    return [str_counts(r) for r in mask_utils.encode(np.ascontiguousarray(m.transpose(0, 2, 1), dtype=np.uint8)
                                                     .transpose(2, 1, 0))]


def encode_transposed(binary_t: np.ndarray) -> list[dict]:
    """(N, W, H) uint8/bool masks (already transposed, C order) -> N RLEs with str counts.

    The cheapest layout for pycocotools (its Fortran (H, W, N) order is this array's memory).
    """
    from pycocotools import mask as mask_utils

    b = np.ascontiguousarray(binary_t).view(np.uint8) if binary_t.dtype == bool else \
        np.ascontiguousarray(binary_t, dtype=np.uint8)
    if b.shape[0] == 0:
        return []
    return [str_counts(r) for r in mask_utils.encode(b.transpose(2, 1, 0))]


def decode(rle: dict) -> np.ndarray:
    """COCO RLE (str, bytes or uncompressed list counts) -> (H, W) uint8 0/1 mask."""
    from pycocotools import mask as mask_utils

    return mask_utils.decode(_native(rle))


def areas(rles: list[dict]) -> np.ndarray:
    """(N,) int64 pixel counts."""
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(mask_utils.area([_native(r) for r in rles]), dtype=np.int64).reshape(-1)


def boxes(rles: list[dict]) -> np.ndarray:
    """(N, 4) float64 xyxy extents (pycocotools' toBbox: x2 = x + w, exclusive); zeros for empty masks."""
    from pycocotools import mask as mask_utils

    if not rles:
        return np.zeros((0, 4))
    xywh = np.asarray(mask_utils.toBbox([_native(r) for r in rles]), dtype=np.float64).reshape(-1, 4)
    out = xywh.copy()
    out[:, 2] += out[:, 0]
    out[:, 3] += out[:, 1]
    return out


def check_rle(rle: object, height: int | None = None, width: int | None = None) -> str | None:
    """Why ``rle`` is not a usable COCO RLE for an image of (height, width), or None if it is.

    Decodes it (pycocotools' own check): garbage counts that would decode into a mask of
    another length are caught here, not in the middle of an evaluation."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        return "expected {\"size\": [h, w], \"counts\": …}"
    try:
        h, w = (int(v) for v in rle["size"])
    except (TypeError, ValueError):
        return "size must be [height, width]"
    if h < 0 or w < 0:
        return "size must be non-negative"
    if height is not None and (h, w) != (height, width):
        return f"size {h}x{w} (h x w) is not the image's {height}x{width}"
    counts = rle["counts"]
    if isinstance(counts, list):
        if any(not isinstance(c, int) or c < 0 for c in counts) or sum(counts) != h * w:
            return "uncompressed counts must be non-negative integers summing to h*w"
        return None
    if not isinstance(counts, (str, bytes)):
        return "counts must be a string (compressed RLE) or a list of integers"
    try:
        text = counts.encode("ascii") if isinstance(counts, str) else counts
        if any(c < 48 or c > 111 for c in text):  # pycocotools' alphabet: chr(48)..chr(111)
            return "counts holds characters outside the COCO RLE alphabet"
        from pycocotools import mask as mask_utils

        n = int(mask_utils.area({"size": [h, w], "counts": text}))
        if n > h * w or n < 0:
            return "counts describe more pixels than the mask has"
        if mask_utils.decode({"size": [h, w], "counts": text}).shape != (h, w):
            return "counts do not decode to the mask's size"
    except (UnicodeEncodeError, ValueError, TypeError) as exc:
        return f"counts cannot be decoded ({exc})"
    return None


def stability_scores(logits: np.ndarray, threshold: float = LOGIT_THRESHOLD,
                     offset: float = STABILITY_OFFSET) -> np.ndarray:
    """SAM's stability score per mask: IoU of the masks thresholded at ``threshold ± offset``.

    ``logits``: (B, ...) float; returns (B,) float64."""
    axes = tuple(range(1, logits.ndim))
    inter = (logits > threshold + offset).sum(axis=axes)
    union = (logits > threshold - offset).sum(axis=axes)
    return inter / np.maximum(union, 1)


def box_and_area(rle: dict) -> tuple[list[float], int]:
    """(xyxy extent, area) of one mask; an empty mask has box [0, 0, 0, 0] and area 0."""
    area = int(areas([rle])[0])
    if area == 0:
        return [0.0, 0.0, 0.0, 0.0], 0
    return [float(v) for v in boxes([rle])[0]], area
