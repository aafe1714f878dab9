"""Duplicate rate: the share of kept detections that NMS would remove (a set predictor's claim, measured)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

DUPLICATE_IOU = 0.7
DUPLICATE_MIN_SCORE = 0.5  # duplicates are counted among the detections a user would keep


def duplicate_flags(xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                    iou: float = DUPLICATE_IOU) -> np.ndarray:
    """For one image's detections, True where a detection overlaps a higher-scoring detection
    of the same class with IoU > ``iou`` (what NMS would remove). ``xyxy`` (N, 4) pixels.

    Equal scores are ranked by position (the earlier one is "higher"), so two identical
    boxes with the same score count as one duplicate, not two.
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(xyxy)
    flags = np.zeros(n, dtype=bool)
    if n < 2:
        return flags
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    b = xyxy[order]
    c = np.asarray(class_ids)[order]
    x1 = np.maximum(b[:, None, 0], b[None, :, 0])
    y1 = np.maximum(b[:, None, 1], b[None, :, 1])
    x2 = np.minimum(b[:, None, 2], b[None, :, 2])
    y2 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area[:, None] + area[None, :] - inter
    ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    # row i, column j < i: j ranks above i
    higher = np.tril(np.ones((n, n), dtype=bool), k=-1)
    dup_sorted = ((ious > iou) & (c[:, None] == c[None, :]) & higher).any(axis=1)
    flags[order] = dup_sorted
    return flags


def duplicate_rate(results: Sequence[Any], min_score: float = DUPLICATE_MIN_SCORE,
                   iou: float = DUPLICATE_IOU) -> float | None:
    """Share of detections (score >= ``min_score``, over all images) that overlap a
    higher-scoring same-class detection in the same image at IoU > ``iou``; None when there
    are no such detections. ``results``: ImageResult records (or objects with ``detections``)."""
    total = dups = 0
    for r in results:
        d = getattr(r, "detections", None)
        if d is None or len(d) == 0:
            continue
        keep = d.scores >= min_score
        if not keep.any():
            continue
        flags = duplicate_flags(d.xyxy[keep], d.scores[keep], d.class_ids[keep], iou)
        total += int(keep.sum())
        dups += int(flags.sum())
    return None if total == 0 else dups / total
