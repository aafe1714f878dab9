"""Prompts in the batches a SAM mask decoder takes (the official adapter and the transformers one)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from visiontool.types import Prompt


def decode_by_shape(prompts: list[Prompt], multimask: bool | None, scale: np.ndarray,
                    decode: Callable[..., tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Low-res logits (M, 4g, 4g) and predicted IoU (M,) for each prompt, in the prompts' order.

    Prompts of one shape (as many points, a box or not, the same coarse mask, the same
    multimask answer) are decoded in one batch: ``decode(n, points, labels, boxes, mask_input,
    multimask)`` with points (n, k, 2) and boxes (n, 4) scaled by ``scale`` (X, Y) into the model's
    input frame (None where the batch has none) returns logits (n, M, 4g, 4g) and IoU (n, M)."""
    results: list = [None] * len(prompts)
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(prompts):
        sig = (0 if p.points is None else len(p.points), p.box is not None, p.mask_input,
               p.wants_multimask(multimask))
        groups.setdefault(sig, []).append(i)
    for (npts, has_box, mask_path, mm), idx in groups.items():
        pts = np.stack([prompts[i].points * scale for i in idx]) if npts else None
        labels = np.stack([prompts[i].labels for i in idx]) if npts else None
        boxes = np.stack([(prompts[i].box.reshape(2, 2) * scale).reshape(4) for i in idx]) if has_box else None
        low, iou = decode(len(idx), pts, labels, boxes, mask_path, mm)
        for j, i in enumerate(idx):
            results[i] = (low[j], iou[j])
    return results
