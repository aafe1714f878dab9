"""Segment everything: ``SamAutomaticMaskGenerator``'s algorithm over any promptable model.

Backend-blind: the model is reached through three primitives every SAM-family adapter has —
``embedding(rgb, name)`` (cached), ``decode_points(emb, points, hw)`` (single foreground
points -> low-res logits (B, 3, h, w) and predicted IoU (B, 3)) and ``upscale_t(low, hw)``
(-> full-size logits transposed, (b, W, H)).

A grid of single-point prompts per crop (multimask), then the same filters in the same
order: predicted IoU, stability score (on full-resolution logits), boxes touching a crop
edge, box NMS within a crop and across crops (smaller crops preferred), then, with
``min_area`` > 0, SAM's ``min_mask_region_area`` post-processing: holes and islands smaller
than that many pixels are removed (OpenCV connected components, as ``amg.remove_small_regions``)
and a box NMS prefers the masks that needed no change. Embeddings of the image and of every
crop go through the embedding cache.
"""
from __future__ import annotations

import math
from itertools import product

import numpy as np

from visiontool.types import Detections


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n², 2) points evenly spaced in [0, 1]², XY, as ``amg.build_point_grid``."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def generate_crop_boxes(im_hw: tuple[int, int], n_layers: int, overlap_ratio: float):
    """Crop boxes XYXY (the image first) and their layer, as ``amg.generate_crop_boxes``."""
    im_h, im_w = im_hw
    short = min(im_h, im_w)
    boxes, layers = [[0, 0, im_w, im_h]], [0]

    def crop_len(orig, n, overlap):
        return int(math.ceil((overlap * (n - 1) + orig) / n))

    for i in range(n_layers):
        n = 2 ** (i + 1)
        overlap = int(overlap_ratio * short * (2 / n))
        cw, ch = crop_len(im_w, n, overlap), crop_len(im_h, n, overlap)
        x0s = [int((cw - overlap) * k) for k in range(n)]
        y0s = [int((ch - overlap) * k) for k in range(n)]
        for x0, y0 in product(x0s, y0s):
            boxes.append([x0, y0, min(x0 + cw, im_w), min(y0 + ch, im_h)])
            layers.append(i + 1)
    return boxes, layers


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float) -> np.ndarray:
    """Greedy NMS on XYXY boxes; indices kept, highest score first (stable on ties)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= thresh]
    return np.array(keep, dtype=np.int64)


def _mask_boxes(binary_t: np.ndarray) -> np.ndarray:
    """(b, W, H) bool -> (b, 4) XYXY with inclusive max (``amg.batched_mask_to_box``)."""
    out = np.zeros((binary_t.shape[0], 4))
    for i, m in enumerate(binary_t):
        cols = np.nonzero(m.any(axis=1))[0]  # x
        rows = np.nonzero(m.any(axis=0))[0]  # y
        if cols.size:
            out[i] = [cols[0], rows[0], cols[-1], rows[-1]]
    return out


def _near_crop_edge(box, crop, orig, atol=20.0) -> bool:
    x0, y0, _, _ = crop
    b = np.array(box, float) + [x0, y0, x0, y0]
    near_crop = np.isclose(b, np.array(crop, float), atol=atol, rtol=0)
    near_image = np.isclose(b, np.array(orig, float), atol=atol, rtol=0)
    return bool(np.any(near_crop & ~near_image))


def remove_small_regions(mask: np.ndarray, area_thresh: float, mode: str) -> tuple[np.ndarray, bool]:
    """Remove connected ``"holes"`` or ``"islands"`` under ``area_thresh`` pixels from an
    (H, W) bool mask; returns (mask, changed). segment-anything's ``amg.remove_small_regions``
    (8-connectivity; if every island is small, the largest is kept)."""
    import cv2

    correct_holes = mode == "holes"
    working = (correct_holes ^ mask).astype(np.uint8)
    n_labels, regions, stats, _ = cv2.connectedComponentsWithStats(working, 8)
    sizes = stats[:, -1][1:]  # row 0 is the background
    small = [i + 1 for i, size in enumerate(sizes) if size < area_thresh]
    if not small:
        return mask, False
    fill = [0] + small
    if not correct_holes:
        fill = [i for i in range(n_labels) if i not in fill]
        if not fill:
            fill = [int(np.argmax(sizes)) + 1]
    return np.isin(regions, fill), True


def postprocess_small_regions(found: list, min_area: int, nms_thresh: float) -> list:
    """``SamAutomaticMaskGenerator.postprocess_small_regions`` on (rle, box, ...) tuples: clean
    holes and islands, then NMS with score 1 for unchanged masks and 0 for changed ones, and
    re-encode the kept masks that changed."""
    from pycocotools import mask as mask_utils

    cleaned, scores = [], []
    for f in found:
        m = mask_utils.decode(f[0]).astype(bool)
        m, changed_holes = remove_small_regions(m, min_area, "holes")
        m, changed_islands = remove_small_regions(m, min_area, "islands")
        cleaned.append(m)
        scores.append(0.0 if (changed_holes or changed_islands) else 1.0)
    boxes = np.zeros((len(found), 4))
    for i, m in enumerate(cleaned):
        ys, xs = np.nonzero(m)
        if xs.size:
            boxes[i] = [xs.min(), ys.min(), xs.max(), ys.max()]
    out = []
    for i in nms(boxes, np.array(scores), nms_thresh):
        f = found[i]
        if scores[i] == 0.0:
            rle = mask_utils.encode(np.asfortranarray(cleaned[i].astype(np.uint8)))
            f = (rle, boxes[i], *f[2:])
        out.append(f)
    return out


def generate(model, rgb: np.ndarray, opts, name: str = "image") -> Detections:
    """All masks of an (H, W, 3) image, best predicted IoU first, with ``predicted_iou``,
    ``stability_score`` and ``prompt`` (the grid point and crop box) columns."""
    from pycocotools import mask as mask_utils

    from visiontool.convert import from_sam
    from visiontool.masks import LOGIT_THRESHOLD, stability_scores, str_counts

    h, w = rgb.shape[:2]
    crops, layers = generate_crop_boxes((h, w), opts.crop_n_layers, opts.crop_overlap_ratio)
    grids = [build_point_grid(int(opts.points_per_side / (opts.crop_n_points_downscale_factor ** i)))
             for i in range(opts.crop_n_layers + 1)]
    found = []  # (rle, box_full_xyxy, iou, stability, point, crop)
    for crop, layer in zip(crops, layers):
        x0, y0, x1, y1 = crop
        sub = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        ch, cw = sub.shape[:2]
        emb = model.embedding(sub, name if crop == crops[0] else f"{name} crop {crop}")
        pts = grids[layer] * np.array([cw, ch])
        crop_found = []
        for b0 in range(0, len(pts), opts.points_per_batch):
            batch = pts[b0:b0 + opts.points_per_batch]
            low, iou = model.decode_points(emb, batch, (ch, cw))
            low = low.reshape(-1, *low.shape[2:])
            iou = iou.reshape(-1)
            point_of = np.repeat(batch, 3, axis=0)
            keep = np.nonzero(iou > opts.pred_iou_thresh)[0] if opts.pred_iou_thresh > 0 else np.arange(len(iou))
            for c0 in range(0, len(keep), 8):
                idx = keep[c0:c0 + 8]
                lg = model.upscale_t(low[idx], (ch, cw))  # (b, cw, ch)
                stab = stability_scores(lg, LOGIT_THRESHOLD, opts.stability_score_offset)
                binary = lg > LOGIT_THRESHOLD
                boxes = _mask_boxes(binary)
                for j, i in enumerate(idx):
                    if opts.stability_score_thresh > 0 and stab[j] < opts.stability_score_thresh:
                        continue
                    if _near_crop_edge(boxes[j], crop, [0, 0, w, h]):
                        continue
                    m = binary[j]
                    if crop != [0, 0, w, h]:  # back to the image frame
                        full = np.zeros((w, h), bool)
                        full[x0:x1, y0:y1] = m
                        m = full
                    rle = mask_utils.encode(np.asfortranarray(m.T.view(np.uint8)))
                    crop_found.append((rle, boxes[j] + [x0, y0, x0, y0], float(iou[i]), float(stab[j]),
                                       point_of[i] + [x0, y0], crop))
        if crop_found:
            kb = nms(np.array([f[1] for f in crop_found], float), np.array([f[2] for f in crop_found]),
                     opts.box_nms_thresh)
            found.extend(crop_found[i] for i in kb)
    if len(crops) > 1 and found:
        areas = np.array([(f[5][2] - f[5][0]) * (f[5][3] - f[5][1]) for f in found], float)
        kb = nms(np.array([f[1] for f in found], float), 1.0 / areas, opts.crop_nms_thresh)
        found = [found[i] for i in kb]
    if opts.min_area > 0 and found:
        found = postprocess_small_regions(found, opts.min_area, opts.box_nms_thresh)
    found = [f for f in found if mask_utils.area(f[0]) >= 1]  # nothing left of these
    found.sort(key=lambda f: -f[2])  # stable: ties keep their order
    return from_sam([str_counts(f[0]) for f in found], [f[2] for f in found], [None] * len(found),
                    stability=[f[3] for f in found],
                    extra_prompt=[{"auto": True, "points": [[float(f[4][0]), float(f[4][1])]],
                                   "crop_box": [int(v) for v in f[5]]} for f in found])
