"""torchmetrics-style per-image inputs (``MeanAveragePrecision.update(preds, target)``) as COCO.

``targets[i]``: ``labels`` (N,), and ``boxes`` (N, 4) xyxy and/or ``masks`` (N, H, W) bool,
optional ``iscrowd`` (N,), ``area`` (N,), ``keypoints`` (N, 17, 3) for keypoints;
``preds[i]``: ``scores`` (N,), ``labels`` (N,), and ``boxes`` (N, 4) xyxy, ``masks``
(N, H, W) bool or ``keypoints`` (N, 17, 3) as the iou type needs. Torch tensors or numpy
arrays; masks may also be (N, 1, H, W) (torchvision's layout) but must be boolean.

Image ``i`` gets id ``i`` and the size of its target masks (of its prediction masks when
it has no targets); prediction masks of another size are scored as pycocotools scores them
(never matched, with a warning: see ``evaluate``). Categories are the union of labels.
Values become float64 before any arithmetic (xyxy -> xywh, areas). Masks become COCO RLE
with pycocotools; GT area = the given ``area`` where it is > 0 (torchmetrics' rule), else
the mask's pixel count (segm) or the box's w*h; a GT box, when none is given, is the
mask's (``maskUtils.toBbox``). Mask predictions carry no box (pycocotools then takes area
and box from the mask). Keypoint GT gets ``num_keypoints`` = visible keypoints and, without
``area``, the box area; keypoint predictions are ``{"keypoints", "score"}`` results (area
from their extent, as in COCO's keypoint results files).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from visiontool.errors import InvalidInputError, UsageError


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def is_tensor_style(obj: Any) -> bool:
    """A list of per-image dicts with ``labels`` and boxes, masks or keypoints (torchmetrics' format)."""
    return (isinstance(obj, (list, tuple)) and len(obj) > 0 and isinstance(obj[0], dict)
            and "labels" in obj[0] and any(k in obj[0] for k in ("boxes", "masks", "keypoints")))


def _masks(d: dict, what: str, n: int) -> np.ndarray:
    m = _np(d["masks"])
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.size == 0 and m.ndim != 3 and n == 0:  # torch.tensor([]): no masks (torchmetrics accepts it)
        m = np.zeros((0, 0, 0), dtype=np.bool_)
    if m.ndim != 3 or m.shape[0] != n:
        raise InvalidInputError(f"{what}: masks must be (N, H, W) with N = {n} labels, got shape {list(m.shape)}")
    binary_ints = np.issubdtype(m.dtype, np.integer) and (not m.size or (m.max() <= 1 and m.min() >= 0))
    if m.dtype != np.bool_ and not binary_ints:
        raise InvalidInputError(f"{what}: masks must be boolean (threshold probabilities first, e.g. masks > 0.5), "
                                f"got {m.dtype}")
    return m


def _rles(m: np.ndarray) -> list[dict]:
    """(N, H, W) -> COCO RLEs with string counts (pycocotools' encoder)."""
    from pycocotools import mask as mask_utils

    if m.shape[0] == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(np.moveaxis(m.astype(np.uint8), 0, -1)))
    return [{"size": [int(v) for v in r["size"]], "counts": r["counts"].decode("ascii")} for r in rles]


def _xywh(b: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = b.tolist()
    return [x1, y1, x2 - x1, y2 - y1]


def _keypoints(d: dict, what: str, n: int) -> np.ndarray:
    k = _np(d["keypoints"]).astype(np.float64)
    if k.ndim != 3 or k.shape[0] != n or k.shape[1:] != (17, 3):
        raise InvalidInputError(f"{what}: keypoints must be (N, 17, 3) (x, y, visibility) with N = {n} labels, "
                                f"got shape {list(k.shape)}")
    return k.reshape(n, 51)


def tensors_to_coco(targets: list, preds: list, iou_type: str = "bbox") -> tuple[dict, list]:
    """torchmetrics-style inputs -> (COCO GT dict, COCO results list); see the module docstring."""
    if len(targets) != len(preds):
        raise UsageError(f"{len(preds)} prediction dicts but {len(targets)} target dicts")
    need = {"bbox": "boxes", "segm": "masks", "keypoints": "keypoints"}[iou_type]
    images, anns, results, labels = [], [], [], set()
    ann_id = 1
    for i, (t, p) in enumerate(zip(targets, preds)):
        for d, what in ((t, f"target {i}"), (p, f"prediction {i}")):
            if need not in d:
                raise InvalidInputError(f"{what} has no '{need}' ({iou_type} evaluation needs them)")
            if what.startswith("prediction") and "scores" not in d:
                raise InvalidInputError(f"{what} has no 'scores'")
        tl = _np(t["labels"]).astype(np.int64).reshape(-1)
        pl = _np(p["labels"]).astype(np.int64).reshape(-1)
        tm = _masks(t, f"target {i}", len(tl)) if iou_type == "segm" else None
        pm = _masks(p, f"prediction {i}", len(pl)) if iou_type == "segm" else None
        h = w = 0
        for m in (pm, tm):  # the targets' mask size is the image's (then the predictions')
            if m is not None and (m.shape[0] or not h):
                h, w = int(m.shape[1]), int(m.shape[2])
        images.append({"id": i, "width": w, "height": h, "file_name": f"{i}"})
        tb = _np(t["boxes"]).astype(np.float64).reshape(-1, 4) if "boxes" in t else None
        crowd = _np(t["iscrowd"]).astype(np.int64).reshape(-1) if "iscrowd" in t else np.zeros(len(tl), np.int64)
        area = _np(t["area"]).astype(np.float64).reshape(-1) if "area" in t else None
        trle = _rles(tm) if tm is not None else None
        tk = _keypoints(t, f"target {i}", len(tl)) if iou_type == "keypoints" else None
        if tb is None and trle is None:
            raise InvalidInputError(f"target {i} has no 'boxes'")
        if trle is not None and tb is None:
            from pycocotools import mask as mask_utils

            tb_xywh = [list(map(float, mask_utils.toBbox({"size": r["size"], "counts": r["counts"].encode()})))
                       for r in trle]
        for k in range(len(tl)):
            a = {"id": ann_id, "image_id": i, "category_id": int(tl[k]), "iscrowd": int(crowd[k])}
            a["bbox"] = _xywh(tb[k]) if tb is not None else tb_xywh[k]
            if trle is not None:
                a["segmentation"] = trle[k]
            if tk is not None:
                a["keypoints"] = tk[k].tolist()
                a["num_keypoints"] = int(np.count_nonzero(tk[k, 2::3] > 0))
            if area is not None and area[k] > 0:  # torchmetrics' rule: a given area of 0 means "compute it"
                a["area"] = float(area[k])
            elif tm is not None:
                a["area"] = float(np.count_nonzero(tm[k]))
            else:
                a["area"] = a["bbox"][2] * a["bbox"][3]
            anns.append(a)
            ann_id += 1
            labels.add(int(tl[k]))
        ps = _np(p["scores"]).astype(np.float64).reshape(-1)
        if iou_type == "bbox":
            pb = _np(p["boxes"]).astype(np.float64).reshape(-1, 4)
            shapes = [{"bbox": _xywh(pb[k])} for k in range(len(pl))]
        elif iou_type == "segm":
            shapes = [{"segmentation": r} for r in _rles(pm)]
        else:
            pk = _keypoints(p, f"prediction {i}", len(pl))
            shapes = [{"keypoints": pk[k].tolist()} for k in range(len(pl))]
        if not len(ps) == len(pl) == len(shapes):
            raise InvalidInputError(f"prediction {i}: {len(ps)} scores, {len(pl)} labels and {len(shapes)} "
                                    f"{need} differ in number")
        for k in range(len(pl)):
            results.append({"image_id": i, "category_id": int(pl[k]), "score": float(ps[k]), **shapes[k]})
            labels.add(int(pl[k]))
    cats = [{"id": c, "name": str(c)} for c in sorted(labels)]
    return {"images": images, "annotations": anns, "categories": cats}, results
