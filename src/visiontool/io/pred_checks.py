"""Record-by-record checks of predictions (the precise path), shaped on what pycocotools scores.

``COCO.loadRes`` takes its format from the **first** result and then requires it of all:

* first result with a non-empty ``bbox`` (the *bbox* branch): every result needs ``bbox``;
  ``area`` = w·h; ``segmentation`` is kept if present (compressed RLE with str or bytes
  counts, uncompressed RLE, or polygons: COCOeval rasterises them on the GT image size),
  else the box itself becomes the mask -- so box-only results can be scored as segm;
* otherwise with ``segmentation`` (the *segm* branch): every result needs compressed RLE
  (``maskUtils.area`` reads nothing else), ``area`` = mask area, ``bbox`` = its box unless
  given -- so mask-only results can be scored as bbox;
* otherwise with ``keypoints``: ``area`` and ``bbox`` from the keypoints' extent.

``iouType="segm"`` needs masks (or boxes, via the bbox branch), ``"keypoints"`` needs
``keypoints`` (51 numbers: pycocotools' OKS sigmas are COCO's 17 keypoints). What
pycocotools cannot score (polygons in the segm branch, a result without the first one's
``bbox``) is an error naming the result. So are values it would score as nonsense: a score
or box that is not a finite number, boxes of negative size, RLE counts that are not COCO's
(characters outside ``0``..``o``, negative runs, runs beyond height × width -- hotcoco's
reading, also used by :mod:`hotcoco.mask`), and image or category ids absent from the
ground truth.

An RLE whose ``size`` is not its GT image's is scored as pycocotools scores it (it keeps
its own size: area and box are its own, and ``maskUtils.iou`` gives -1 against every GT
mask of another size, so it never matches in segm); :func:`size_mismatch` finds it so
that ``evaluate`` can warn.
"""
from __future__ import annotations

import json
import math
from numbers import Real
from typing import Any

N_KEYPOINT_VALUES = 51  # 17 COCO keypoints x (x, y, visibility)


class Invalid(Exception):
    """One record is invalid: the message without the location prefix."""


class NotScored(Exception):
    """A valid prediction of a category the ground truth does not have. COCOeval takes its
    category ids from the ground truth, so pycocotools leaves such predictions out of every
    number; visiontool leaves them out too and counts them for a warning. ``args``: (what,
    the category id or label; branch, pycocotools' loadRes branch when this is the first result)."""


class Unscored:
    """Counts the :class:`NotScored` predictions, by category id or label."""

    def __init__(self):
        self.n = 0
        self.by_category: dict[str, int] = {}

    def note(self, what) -> None:
        self.n += 1
        key = str(what)
        self.by_category[key] = self.by_category.get(key, 0) + 1

    def fields(self) -> dict:
        if not self.n:
            return {}
        top = sorted(self.by_category.items(), key=lambda kv: -kv[1])
        return {"n_unscored": self.n, "unscored_categories": [f"{k} ({v})" for k, v in top[:5]]
                + ([f"{len(top) - 5} more"] if len(top) > 5 else [])}


def number(v: Any, what: str) -> float:
    t = type(v)
    if t is float:  # the common case first: no ABC check
        if v - v != 0.0:  # inf - inf and nan - nan are nan
            raise Invalid(f"{what} is {v}")
        return v
    if t is not int and (t is bool or not isinstance(v, Real)):
        raise Invalid(f"{what} is not a number ({json.dumps(v, default=repr)[:40]})")
    f = float(v)
    if not math.isfinite(f):
        raise Invalid(f"{what} is {v}")
    return f


def int_id(v: Any, what: str) -> int:
    if type(v) is int and not -2 ** 63 <= v < 2 ** 63:
        raise Invalid(f"{what} is outside the 64-bit integer range ({str(v)[:40]})")
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)) or float(v) != int(v):
        raise Invalid(f"{what} is not an integer ({json.dumps(v, default=repr)[:40]})")
    return int(v)


def box(v: Any, what: str, xyxy: bool) -> list:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise Invalid(f"{what} must be a list of 4 numbers")
    vals = [number(v[0], what), number(v[1], what), number(v[2], what), number(v[3], what)]
    if xyxy:
        if vals[2] < vals[0] or vals[3] < vals[1]:
            raise Invalid(f"{what} {vals} has negative size (x2 < x1 or y2 < y1)")
    elif vals[2] < 0 or vals[3] < 0:
        raise Invalid(f"{what} {vals} has negative width or height")
    return list(v)


def rle_problem(counts: Any, h: int, w: int) -> str | None:
    """Why COCO RLE ``counts`` (str or bytes: compressed; list: uncompressed) cannot be a mask
    of ``h`` × ``w`` pixels, or None. Compressed counts are read by hotcoco.mask (characters
    in ``0``..``o``, no negative run, runs within h·w)."""
    if isinstance(counts, list):
        import numpy as np

        try:
            runs = np.asarray(counts)
        except (ValueError, TypeError):
            runs = np.zeros(1, dtype=object)
        if runs.ndim != 1 or runs.dtype.kind not in "iu" or (runs.size and runs.min() < 0):
            return "counts must be non-negative integers"
        if int(runs.sum()) > h * w:
            return f"counts cover {int(runs.sum())} pixels, more than height x width = {h * w}"
        return None
    if isinstance(counts, bytes):
        try:
            counts = counts.decode("ascii")
        except UnicodeDecodeError:
            return "counts is not an ASCII RLE string"
    from hotcoco import mask as hmask

    try:
        hmask.area({"size": [h, w], "counts": counts})
    except (ValueError, TypeError, OverflowError) as exc:
        reason = str(exc).removeprefix("invalid RLE: ")
        return f"counts is not a COCO RLE of {h}x{w} pixels ({reason})"
    return None


def rle(v: Any, gt, image_id: int, what: str = "segmentation", compressed_only: bool = False) -> dict:
    """Checks one RLE against its image's size in ``gt``; returns it with str counts."""
    if not isinstance(v, dict) or "size" not in v or "counts" not in v:
        raise Invalid(f"{what} must be COCO RLE {{'size': [h, w], 'counts': ...}}")
    size = v["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size)):
        raise Invalid(f"{what}.size must be [height, width]")
    counts = v["counts"]
    if not isinstance(counts, (str, bytes, list)):
        raise Invalid(f"{what}.counts must be a string or a list of run lengths")
    if compressed_only and isinstance(counts, list):
        raise Invalid(f"{what} must be COCO RLE with string counts: pycocotools cannot score uncompressed "
                      f"RLE in results without a 'bbox'")
    problem = rle_problem(counts, int(size[0]), int(size[1]))
    if problem:
        raise Invalid(f"{what}.{problem}")
    if isinstance(counts, bytes):
        return {"size": list(size), "counts": counts.decode("ascii")}
    return v


def size_mismatch(r: dict, gt) -> tuple[list, list] | None:
    """(mask size, GT image size) when result ``r`` carries an RLE of another size than its
    image's (where the GT gives one), else None. ``r`` is a checked result."""
    seg = r.get("segmentation")
    if type(seg) is dict:
        want = gt.image_sizes.get(r["image_id"])
        if want is not None and tuple(seg["size"]) != tuple(want):
            return list(seg["size"]), list(want)
    return None


def polygons(v: Any, what: str = "segmentation") -> list:
    if not v or not all(isinstance(p, (list, tuple)) and len(p) >= 4 and len(p) % 2 == 0 for p in v):
        raise Invalid(f"{what} must be COCO RLE or a list of polygons [[x1, y1, x2, y2, ...], ...]")
    for p in v:
        for x in p:
            number(x, what)
    return v


def segmentation(v: Any, gt, image_id: int, branch: str) -> Any:
    """A result's segmentation: any COCO form in the bbox branch, compressed RLE otherwise."""
    if branch == "bbox" and isinstance(v, list):
        return polygons(v)
    if branch != "bbox" and isinstance(v, list):
        raise Invalid("segmentation must be COCO RLE {'size': [h, w], 'counts': str}: pycocotools cannot "
                      "score polygons in results without a 'bbox'")
    return rle(v, gt, image_id, compressed_only=branch != "bbox")


def keypoints(v: Any, what: str = "keypoints") -> list:
    if not isinstance(v, (list, tuple)) or len(v) != N_KEYPOINT_VALUES:
        n = len(v) if isinstance(v, (list, tuple)) else type(v).__name__
        raise Invalid(f"{what} must be {N_KEYPOINT_VALUES} numbers (17 COCO keypoints x (x, y, v)), got {n}")
    for x in v:
        number(x, what)
    return list(v)


def branch_of(first: dict) -> str | None:
    """pycocotools' loadRes branch for results whose first element is ``first``."""
    if "bbox" in first and first["bbox"] != []:
        return "bbox"
    if "segmentation" in first:
        return "segm"
    if "keypoints" in first:
        return "keypoints"
    return None


def check_result(r: Any, gt, iou_type: str, branch: str | None) -> tuple[dict, str, bool]:
    """(result, branch, changed) for one COCO result, ``branch`` being the first result's
    (None for the first). ``changed``: the returned dict differs from ``r`` (ids made int,
    bytes counts made str). Raises :class:`Invalid`."""
    if not isinstance(r, dict):
        raise Invalid(f"is not an object ({type(r).__name__})")
    for key in ("image_id", "category_id", "score"):
        if key not in r:
            raise Invalid(f"has no '{key}'")
    iid = int_id(r["image_id"], "image_id")
    cid = int_id(r["category_id"], "category_id")
    number(r["score"], "score")
    if branch is None:
        branch = branch_of(r)
        if branch is None:
            raise Invalid({"bbox": "has no 'bbox'", "segm": "has no 'segmentation'",
                           "keypoints": "has no 'keypoints'"}[iou_type])
    out = r
    if branch == "bbox":
        if "bbox" not in r or r["bbox"] == []:
            raise Invalid("has no 'bbox' while the first result has one (pycocotools cannot mix them)")
        box(r["bbox"], "bbox", xyxy=False)
        if iou_type == "segm" and "segmentation" in r:
            seg = segmentation(r["segmentation"], gt, iid, branch)
            if seg is not r["segmentation"]:
                out = dict(r, segmentation=seg)
    elif branch == "segm":
        if "segmentation" not in r:
            raise Invalid("has no 'segmentation'")
        seg = segmentation(r["segmentation"], gt, iid, branch)
        if seg is not r["segmentation"]:
            out = dict(r, segmentation=seg)
        if iou_type == "bbox" and "bbox" in r:
            box(r["bbox"], "bbox", xyxy=False)
        elif "bbox" in r and r["bbox"] != []:
            box(r["bbox"], "bbox", xyxy=False)
    else:  # keypoints
        if iou_type == "segm":
            raise Invalid("has no 'segmentation' (segm evaluation needs masks or boxes)")
        if "keypoints" not in r:
            raise Invalid("has no 'keypoints'")
    if iou_type == "keypoints":
        if "keypoints" not in r:
            raise Invalid("has no 'keypoints'")
        keypoints(r["keypoints"])
    if iid not in gt.image_id_set:
        raise Invalid(f"image_id {iid} is not in the ground truth")
    if cid not in gt.category_id_set:
        raise NotScored(f"category_id {cid}", branch)
    if r["image_id"] != iid or r["category_id"] != cid or type(r["image_id"]) is not int \
            or type(r["category_id"]) is not int:
        out = dict(out, image_id=iid, category_id=cid)
    return out, branch, out is not r


def category_of(det: dict, gt, cache: dict | None = None) -> int:
    """A visiontool detection's GT category: by label (name), else its category_id, else the
    GT's only category. ``cache``: {label: id} across calls (names repeat)."""
    label = det.get("label")
    if label is not None:
        cid = cache.get(label) if cache is not None and type(label) is str else None
        if cid is None:
            cid = gt.index.category_id_for(str(label))
            if cid is None:
                raise NotScored(f"'{label}'", None)
            if cache is not None and type(label) is str:
                cache[label] = cid
        return cid
    if "category_id" in det:
        cid = int_id(det["category_id"], "category_id")
        if cid not in gt.category_id_set:
            raise NotScored(f"category_id {cid}", None)
        return cid
    if len(gt.category_id_set) == 1:
        return next(iter(gt.category_id_set))
    raise Invalid("has neither 'label' nor 'category_id'")


def record_results(rec: Any, gt, iou_type: str, fail, labels: dict | None = None,
                   unscored: Unscored | None = None) -> tuple[list[dict], bool]:
    """COCO results for one visiontool record (detect's ``detections`` or segment's ``masks``);
    ``(results, known)``: ``known`` is False when the record's image is not in the GT (its
    detections are not evaluated). ``fail(where_suffix, message)`` reports an invalid record
    or detection (raising, or counting it with --lenient); this returns what passed. A
    detection of a category the GT lacks is left out and counted in ``unscored``."""
    if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
        fail("", "is not a visiontool record (no 'image' path)")
        return [], True
    suffix = f" ('{rec['image']}')"
    iid = gt.index.image_id_for(rec["image"])
    rid = rec.get("image_id")
    if iid is None and isinstance(rid, int) and not isinstance(rid, bool) and rid in gt.image_id_set:
        iid = rid  # detect --gt already resolved it (e.g. the file was renamed since)
    if iid is None:
        return [], False
    if iou_type == "keypoints":
        fail(suffix, "keypoints evaluation needs COCO results with 'keypoints', not visiontool records")
        return [], True
    key = "detections" if iou_type == "bbox" or "masks" not in rec else "masks"
    items = rec.get(key, rec.get("detections", rec.get("masks")))
    if not isinstance(items, list):
        fail(suffix, "has no 'detections' or 'masks' list")
        return [], True
    if iou_type == "segm" and key != "masks" and items and not all(
            isinstance(d, dict) and "segmentation" in d for d in items):
        fail(suffix, "has no 'masks' (segm evaluation needs segment records or COCO results with RLE)")
        return [], True
    out = []
    for j, det in enumerate(items):
        try:
            if not isinstance(det, dict):
                raise Invalid("is not an object")
            if "score" not in det:
                raise Invalid("has no 'score'")
            res = {"image_id": iid, "category_id": category_of(det, gt, labels), "score": number(det["score"], "score")}
            if det.get("box") is not None:
                x1, y1, x2, y2 = (float(v) for v in box(det["box"], "box", xyxy=True))
                res["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            elif iou_type == "bbox" and "segmentation" not in det:
                raise Invalid("has no 'box'")
            if iou_type == "segm" or (iou_type == "bbox" and "bbox" not in res):
                if "segmentation" not in det:
                    raise Invalid("has no 'segmentation'")
                res["segmentation"] = rle(det["segmentation"], gt, iid)
        except Invalid as exc:
            fail(f"{suffix}, {key[:-1]} {j}", str(exc))
            continue
        except NotScored as exc:
            if unscored is not None:
                unscored.note(exc.args[0])
            continue
        out.append(res)
    return out, True
