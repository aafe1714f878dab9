"""Reading and validating predictions for ``visiontool evaluate``.

Accepted formats (recognised from the content, not the file name):

* **COCO results** JSON: ``[{"image_id": int, "category_id": int, "score": float,
  "bbox": [x, y, w, h]}]`` (bbox) and/or ``"segmentation": {"size": [h, w], "counts": str}``
  (COCO RLE; required for segm).
* **visiontool records** (DESIGN.md §3), as a JSON list or JSONL: ``{"image": path,
  "detections": [{"label", "category_id", "score", "box": [x1, y1, x2, y2]}]}`` from
  ``detect`` or ``{"image": path, "masks": [{"label"?, "score", "box", "segmentation": RLE}]}``
  from ``segment``. Images are matched to the GT's ``images[].file_name``, categories by
  name (``category_id`` is used only when a detection has no label).
* In Python: a list of COCO result dicts, or a list of visiontool records.

Validation rejects malformed JSON, missing keys, non-numeric or non-finite scores, boxes
with NaN or negative size, and image/category ids absent from the GT, with one message
naming the first offending record and its index; ``lenient=True`` skips such records and
counts them instead. visiontool records for images that are not in the GT are skipped and
counted (``n_unknown_images``): running detect on a folder with extra photos is normal.

Large COCO results files take a fast path that builds no per-record Python dicts: for
bbox, ultrafast-pycocotools' native reader yields an ``(N, 7)`` float64 array
``[image_id, x, y, w, h, score, category_id]`` that is checked with numpy; for segm,
msgspec checks the schema, types and finite values (box sizes >= 0) and the file itself
goes to the native engine. Only when that check fails (or an input is not COCO results)
is the file parsed into Python objects, to find and name the offending record.
"""
# no `from __future__ import annotations`: msgspec reads the annotations of the local schema classes
import json
import math
import mmap
import os
import sys
from dataclasses import dataclass, field
from itertools import chain
from numbers import Real
from operator import attrgetter, countOf
from pathlib import Path
from typing import Any, Callable

import numpy as np

from visiontool.errors import InvalidInputError, UsageError

ROW_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")


@dataclass
class Predictions:
    """Validated predictions, in one of three carriers (exactly one is set).

    * ``rows``: ``(N, 7)`` float64 ``[image_id, x, y, w, h, score, category_id]`` (bbox only)
    * ``path``: a COCO results file that passed validation unchanged (segm fast path)
    * ``results``: a list of COCO result dicts (already validated; may be mutated by engines)

    ``n``, ``min_score`` and ``predicted_categories`` (sorted unique ids) feed the diagnostics.
    """

    source: str
    n: int
    min_score: float
    predicted_categories: np.ndarray
    rows: np.ndarray | None = None
    path: str | None = None
    results: list | None = None
    fmt: str = "coco"  # "coco" results or visiontool "records"
    n_skipped: int = 0  # invalid records skipped with lenient=True
    skipped_reasons: list[str] = field(default_factory=list)
    n_unknown_images: int = 0  # visiontool records whose image is not in the GT
    deferred_check: Callable[[], bool] | None = None  # a validation still running; must return True

    def __len__(self) -> int:
        return self.n

    @staticmethod
    def summarise(category_ids: np.ndarray, scores: np.ndarray) -> dict:
        """The diagnostic summary fields of a set of predictions."""
        n = int(scores.shape[0])
        cats = category_ids
        if n and cats.min() >= 0 and cats.max() < 10_000_000:
            uniq = np.flatnonzero(np.bincount(cats))
        else:
            uniq = np.unique(cats)
        return {"n": n, "min_score": float(scores.min()) if n else float("nan"),
                "predicted_categories": uniq.astype(np.int64)}

    def to_results(self) -> list[dict]:
        """COCO result dicts (built on demand for engines that need them)."""
        if self.results is not None:
            return self.results
        if self.rows is not None:
            return [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [r[1], r[2], r[3], r[4]],
                     "score": r[5]} for r in self.rows.tolist()]
        with open(self.path, "rb") as fh:
            return json.load(fh)


class _Invalid(Exception):
    """One record is invalid: message without the location prefix."""


# ---------------------------------------------------------------------------------------
# entry point


def load_predictions(pred: Any, gt, iou_type: str = "bbox", lenient: bool = False,
                     precise: bool = False) -> Predictions:
    """Validated predictions from a path, a list of COCO result dicts or visiontool records.
    ``precise=True`` skips the native fast path (every record checked in Python)."""
    if iou_type not in ("bbox", "segm"):
        raise UsageError(f"invalid iou type '{iou_type}': expected bbox or segm")
    if isinstance(pred, (str, os.PathLike)):
        path = str(pred)
        if path != "-" and not Path(path).is_file():
            raise UsageError(f"predictions file not found: '{path}'")
        if path != "-" and not precise:
            fast = _fast_path(path, gt, iou_type)
            if fast is not None:
                return fast
        data = _parse_file(path)
        return _from_objects(data, gt, iou_type, lenient, source=f"predictions '{path}'")
    if isinstance(pred, (list, tuple)):
        return _from_objects(list(pred), gt, iou_type, lenient, source="predictions")
    raise UsageError(f"unsupported predictions object of type {type(pred).__name__}")


# ---------------------------------------------------------------------------------------
# fast paths (valid COCO results files; None means "take the precise path")


def _fast_path(path: str, gt, iou_type: str) -> Predictions | None:
    try:
        return _fast_bbox(path, gt) if iou_type == "bbox" else _fast_segm(path, gt)
    except (ImportError, ValueError, OSError, MemoryError, TypeError):
        return None


def _fast_bbox(path: str, gt) -> Predictions | None:
    from ultrafast_pycocotools import _ufcoco

    _, compact = _ufcoco.load_compact_bbox(path, results=True)  # ValueError: not plain COCO results
    rows = np.ascontiguousarray(compact.array_rows(), dtype=np.float64)
    del compact
    if rows.shape[0] == 0:
        return None
    if not _rows_valid(rows, gt):
        return None
    pred = Predictions(source=f"predictions '{path}'", rows=rows, fmt="coco",
                       **Predictions.summarise(rows[:, 6].astype(np.int64), rows[:, 5]))
    if (rows[:, 5] == 0.0).any():
        # a 0.0 may be a null or missing score: scan the text in a thread while the engine
        # (which releases the GIL) evaluates; evaluate() discards the result if the scan fails
        pred.deferred_check = _in_thread(_scores_present, path, rows.shape[0])
    return pred


def _in_thread(fn, *args) -> Callable[[], bool]:
    """Start ``fn(*args)`` in a daemon thread; the returned callable joins it and gives its
    result (False if it raised)."""
    import threading

    box: dict = {}

    def target():
        try:
            box["ok"] = bool(fn(*args))
        except Exception:  # an unreadable file: let the precise path report it
            box["ok"] = False

    th = threading.Thread(target=target, daemon=True)
    th.start()

    def join() -> bool:
        th.join()
        return box.get("ok", False)

    return join


def _rows_valid(rows: np.ndarray, gt) -> bool:
    """Vectorised check of an (N, 7) array; False sends the file to the precise path."""
    if not np.isfinite(rows[:, 1:6]).all():
        return False
    if (rows[:, 3] < 0).any() or (rows[:, 4] < 0).any():
        return False
    if not is_member(rows[:, 0].astype(np.int64), gt.image_id_array).all():
        return False
    return bool(is_member(rows[:, 6].astype(np.int64), gt.category_id_array).all())


def is_member(values: np.ndarray, sorted_ids: np.ndarray) -> np.ndarray:
    """Elementwise ``values in sorted_ids`` (int64): a lookup table when ids are small
    non-negative integers (the usual case), else binary search."""
    if sorted_ids.size == 0:
        return np.zeros(values.shape, dtype=bool)
    lo, hi = int(sorted_ids[0]), int(sorted_ids[-1])
    if lo >= 0 and hi < 50_000_000:
        table = np.zeros(hi + 2, dtype=bool)
        table[sorted_ids] = True
        return table[np.clip(values, 0, hi + 1)] & (values >= 0)
    pos = np.minimum(np.searchsorted(sorted_ids, values), sorted_ids.size - 1)
    return sorted_ids[pos] == values


def _scores_present(path: str, n: int) -> bool:
    """The native reader turns a null or missing score into 0.0. When some scores are 0.0,
    accept the file only if it holds exactly one "score" key per record and none is null."""
    import re

    data = Path(path).read_bytes()
    if b"null" in data and re.search(rb'"score"\s*:\s*null', data) is not None:
        return False
    return data.count(b'"score"') == n


_SEGM_DECODER: Any = None


def _segm_decoder():
    global _SEGM_DECODER
    if _SEGM_DECODER is None:
        import msgspec

        from typing import Annotated

        # finite (NaN fails every comparison; 1e999 parses as inf) and, for w/h, >= 0: the
        # decoder itself checks scores and boxes, so no column of them is built
        big = 1.7976931348623157e308
        finite = Annotated[float, msgspec.Meta(ge=-big, le=big)]
        size = Annotated[float, msgspec.Meta(ge=0, le=big)]

        class RLE(msgspec.Struct, gc=False):
            size: tuple[int, int]  # "counts" is left to the engine (an engine error re-checks precisely)

        class SegmResult(msgspec.Struct, gc=False):
            image_id: int
            category_id: int
            score: finite
            segmentation: RLE
            bbox: tuple[finite, finite, size, size] | None = None

        _SEGM_DECODER = msgspec.json.Decoder(list[SegmResult])
    return _SEGM_DECODER


def _fast_segm(path: str, gt) -> Predictions | None:
    import msgspec

    decoder = _segm_decoder()
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return None
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            try:
                recs = decoder.decode(mm)
            except msgspec.DecodeError:
                return None
    n = len(recs)
    if n == 0:
        return None
    # map(attrgetter) runs the per-record loop in C: about twice as fast as generators
    image_ids = np.fromiter(map(attrgetter("image_id"), recs), np.int64, n)
    cat_ids = np.fromiter(map(attrgetter("category_id"), recs), np.int64, n)
    scores = np.fromiter(map(attrgetter("score"), recs), np.float64, n)
    sizes = np.fromiter(chain.from_iterable(map(attrgetter("segmentation.size"), recs)), np.int64,
                        2 * n).reshape(n, 2)
    n_none = countOf(map(attrgetter("bbox"), recs), None)
    del recs
    if 0 < n_none < n:
        return None  # mixed: pycocotools would fail; the precise path names the record
    if not is_member(image_ids, gt.image_id_array).all() or not is_member(cat_ids, gt.category_id_array).all():
        return None
    if not _sizes_match(image_ids, sizes, gt):
        return None
    summary = Predictions.summarise(cat_ids, scores)
    del image_ids, cat_ids, scores, sizes  # RSS matters on 500k masks: keep only the summary
    return Predictions(source=f"predictions '{path}'", path=path, fmt="coco", **summary)


def _sizes_match(image_ids: np.ndarray, sizes: np.ndarray, gt) -> bool:
    hw = gt.image_hw_array  # (n_images, 2) aligned with image_id_array; -1 where unknown
    ids = gt.image_id_array  # every image id is known to be one of these
    if ids.size and ids[0] >= 0 and ids[-1] < 2_000_000 and (ids[1:] != ids[:-1]).all():
        table = np.empty((int(ids[-1]) + 1, 2), dtype=np.int64)  # a lookup beats a binary search
        table[ids] = hw
        want = table[image_ids]
    else:
        want = hw[np.searchsorted(ids, image_ids)]
    known = want[:, 0] >= 0
    return bool((sizes[known] == want[known]).all())


def read_gt_light(path: str):
    """(images, categories, (ann ids, ann category ids, ann iscrowd)) of a COCO GT file, parsed
    with msgspec into only what validation needs (no polygons). None if msgspec is missing or
    the file does not fit the strict schema (the caller then parses it fully)."""
    try:
        import msgspec
    except ImportError:
        return None

    class Img(msgspec.Struct, gc=False):
        id: int
        file_name: str | None = None
        width: int | None = None
        height: int | None = None

    class Cat(msgspec.Struct, gc=False):
        id: int
        name: str

    class Ann(msgspec.Struct, gc=False):
        id: int
        image_id: int
        category_id: int
        bbox: tuple[float, float, float, float]
        area: float
        iscrowd: int = 0

    class GT(msgspec.Struct, gc=False):
        images: list[Img]
        categories: list[Cat]
        annotations: list[Ann] = []

    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return None
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                g = msgspec.json.decode(mm, type=GT)
    except (msgspec.DecodeError, ValueError, OSError):
        return None
    images = [{"id": im.id, "file_name": im.file_name, "width": im.width, "height": im.height}
              for im in g.images]
    cats = [{"id": c.id, "name": c.name} for c in g.categories]
    n = len(g.annotations)
    arrays = (np.fromiter((a.id for a in g.annotations), np.int64, n),
              np.fromiter((a.category_id for a in g.annotations), np.int64, n),
              np.fromiter((1 if a.iscrowd else 0 for a in g.annotations), np.int64, n))
    return images, cats, arrays


# ---------------------------------------------------------------------------------------
# the precise path: Python objects, one record at a time


def _parse_file(path: str) -> Any:
    try:
        raw = (sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes())
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(f"predictions '{path}' is not UTF-8 JSON") from None
    except OSError as exc:
        raise UsageError(f"cannot read predictions '{path}': {exc.strerror or exc}") from None
    from visiontool.io.records import parse_json_or_jsonl

    return parse_json_or_jsonl(text, f"predictions '{path}'")


def _from_objects(data: Any, gt, iou_type: str, lenient: bool, source: str) -> Predictions:
    if isinstance(data, dict):
        if "annotations" in data and "images" in data:
            raise InvalidInputError(f"{source} is a COCO ground-truth file, not predictions "
                                    f"(expected a list of results or visiontool records)")
        if "detections" in data or "masks" in data:
            data = [data]
        else:
            raise InvalidInputError(f"{source} is a JSON object; expected a list of COCO results "
                                    f"or visiontool records")
    if not isinstance(data, list):
        raise InvalidInputError(f"{source}: expected a JSON list, got {type(data).__name__}")
    first = next((d for d in data if isinstance(d, dict)), None)
    if first is not None and ("detections" in first or "masks" in first
                              or ("image" in first and "image_id" not in first)):
        return _from_records(data, gt, iou_type, lenient, source)
    return _from_results(data, gt, iou_type, lenient, source)


def _fail_or_skip(lenient: bool, where: str, msg: str, skipped: list) -> None:
    if not lenient:
        raise InvalidInputError(f"{where}: {msg}")
    skipped.append(f"{where}: {msg}")


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, Real):
        raise _Invalid(f"{what} is not a number ({json.dumps(v)[:40]})")
    f = float(v)
    if not math.isfinite(f):
        raise _Invalid(f"{what} is {v}")
    return f


def _int_id(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, Real) or not math.isfinite(float(v)) or float(v) != int(v):
        raise _Invalid(f"{what} is not an integer ({json.dumps(v)[:40]})")
    return int(v)


def _box(v: Any, what: str, xyxy: bool) -> list:
    if not isinstance(v, (list, tuple)) or len(v) != 4:
        raise _Invalid(f"{what} must be a list of 4 numbers")
    vals = [_number(x, what) for x in v]
    if xyxy:
        if vals[2] < vals[0] or vals[3] < vals[1]:
            raise _Invalid(f"{what} {vals} has negative size (x2 < x1 or y2 < y1)")
    elif vals[2] < 0 or vals[3] < 0:
        raise _Invalid(f"{what} {vals} has negative width or height")
    return list(v)


def _rle(v: Any, gt, image_id: int, what: str = "segmentation") -> dict:
    if not isinstance(v, dict) or "size" not in v or "counts" not in v:
        raise _Invalid(f"{what} must be COCO RLE {{'size': [h, w], 'counts': ...}}")
    size = v["size"]
    if (not isinstance(size, (list, tuple)) or len(size) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in size)):
        raise _Invalid(f"{what}.size must be [height, width]")
    if not isinstance(v["counts"], (str, list)):
        raise _Invalid(f"{what}.counts must be a string or a list of run lengths")
    want = gt.image_sizes.get(image_id)
    if want is not None and tuple(size) != tuple(want):
        raise _Invalid(f"{what}.size {list(size)} differs from the GT image size {list(want)}")
    return v


def _from_results(data: list, gt, iou_type: str, lenient: bool, source: str) -> Predictions:
    images, cats = gt.image_id_set, gt.category_id_set
    kept, skipped = [], []
    box_mode = None  # for segm: pycocotools takes its loadRes branch from the first record
    for i, r in enumerate(data):
        where = f"{source}: result {i}"
        try:
            if not isinstance(r, dict):
                raise _Invalid(f"is not an object ({type(r).__name__})")
            for key in ("image_id", "category_id", "score"):
                if key not in r:
                    raise _Invalid(f"has no '{key}'")
            iid = _int_id(r["image_id"], "image_id")
            cid = _int_id(r["category_id"], "category_id")
            _number(r["score"], "score")
            if iou_type == "bbox":
                if "bbox" not in r:
                    raise _Invalid("has no 'bbox'")
                _box(r["bbox"], "bbox", xyxy=False)
            else:
                if "segmentation" not in r:
                    raise _Invalid("has no 'segmentation'")
                _rle(r["segmentation"], gt, iid)
                has_box = "bbox" in r and r["bbox"] != []
                if has_box:
                    _box(r["bbox"], "bbox", xyxy=False)
                if box_mode is None:
                    box_mode = has_box
                elif has_box != box_mode:
                    raise _Invalid("has " + ("a" if has_box else "no") + " 'bbox' while the first result "
                                   + ("does not" if has_box else "does") + " (pycocotools cannot mix them)")
            if iid not in images:
                raise _Invalid(f"image_id {iid} is not in the ground truth")
            if cid not in cats:
                raise _Invalid(f"category_id {cid} is not in the ground truth")
        except _Invalid as exc:
            _fail_or_skip(lenient, where, str(exc), skipped)
            continue
        if r["image_id"] != iid or r["category_id"] != cid:
            r = dict(r, image_id=iid, category_id=cid)
        kept.append(r)
    return _make(kept, skipped, source, "coco", 0)


def _from_records(data: list, gt, iou_type: str, lenient: bool, source: str) -> Predictions:
    kept, skipped = [], []
    unknown = 0
    for i, rec in enumerate(data):
        where = f"{source}: record {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("image"), str):
            _fail_or_skip(lenient, where, "is not a visiontool record (no 'image' path)", skipped)
            continue
        where = f"{where} ('{rec['image']}')"
        iid = gt.index.image_id_for(rec["image"])
        rid = rec.get("image_id")
        if iid is None and isinstance(rid, int) and not isinstance(rid, bool) and rid in gt.image_id_set:
            iid = rid  # detect --gt already resolved it (e.g. the file was renamed since)
        if iid is None:
            unknown += 1
            continue
        items_key = "detections" if iou_type == "bbox" or "masks" not in rec else "masks"
        items = rec.get(items_key, rec.get("detections", rec.get("masks")))
        if not isinstance(items, list):
            _fail_or_skip(lenient, where, "has no 'detections' or 'masks' list", skipped)
            continue
        if iou_type == "segm" and items_key != "masks" and items:
            _fail_or_skip(lenient, where, "has no 'masks' (segm evaluation needs segment records "
                                                "or COCO results with RLE)", skipped)
            continue
        for j, det in enumerate(items):
            w = f"{where}, {items_key[:-1]} {j}"
            try:
                if not isinstance(det, dict):
                    raise _Invalid("is not an object")
                if "score" not in det:
                    raise _Invalid("has no 'score'")
                score = _number(det["score"], "score")
                cid = _category_of(det, gt)
                if "box" in det and det["box"] is not None:
                    x1, y1, x2, y2 = (float(v) for v in _box(det["box"], "box", xyxy=True))
                    box = [x1, y1, x2 - x1, y2 - y1]
                elif iou_type == "bbox":
                    raise _Invalid("has no 'box'")
                else:
                    box = None
                res = {"image_id": iid, "category_id": cid, "score": score}
                if box is not None:
                    res["bbox"] = box
                if iou_type == "segm":
                    if "segmentation" not in det:
                        raise _Invalid("has no 'segmentation'")
                    res["segmentation"] = _rle(det["segmentation"], gt, iid)
            except _Invalid as exc:
                _fail_or_skip(lenient, w, str(exc), skipped)
                continue
            kept.append(res)
    # the COCO results a segment run writes carry bbox when every mask has one
    if iou_type == "segm" and kept and not all("bbox" in r for r in kept):
        for r in kept:
            r.pop("bbox", None)
    return _make(kept, skipped, source, "records", unknown)


def _category_of(det: dict, gt) -> int:
    label = det.get("label")
    if label is not None:
        cid = gt.index.category_id_for(str(label))
        if cid is None:
            raise _Invalid(f"label '{label}' is not a category of the ground truth")
        return cid
    if "category_id" in det:
        cid = _int_id(det["category_id"], "category_id")
        if cid not in gt.category_id_set:
            raise _Invalid(f"category_id {cid} is not in the ground truth (and no label to match by name)")
        return cid
    if len(gt.category_id_set) == 1:
        return next(iter(gt.category_id_set))
    raise _Invalid("has neither 'label' nor 'category_id'")


def _make(kept: list, skipped: list, source: str, fmt: str, unknown: int) -> Predictions:
    n = len(kept)
    return Predictions(
        source=source,
        **Predictions.summarise(np.fromiter((r["category_id"] for r in kept), np.int64, n),
                                np.fromiter((float(r["score"]) for r in kept), np.float64, n)),
        results=kept, fmt=fmt, n_skipped=len(skipped), skipped_reasons=skipped[:5], n_unknown_images=unknown,
    )


# ---------------------------------------------------------------------------------------
# torchmetrics-style per-image tensors


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    return np.asarray(x)


def is_tensor_style(obj: Any) -> bool:
    """A list of per-image dicts with ``boxes``/``labels`` (torchmetrics' input format)."""
    return (isinstance(obj, (list, tuple)) and len(obj) > 0 and isinstance(obj[0], dict)
            and "labels" in obj[0] and ("boxes" in obj[0] or "masks" in obj[0]))


def tensors_to_coco(targets: list, preds: list, iou_type: str = "bbox") -> tuple[dict, list]:
    """torchmetrics-style inputs -> (COCO GT dict, COCO results list).

    ``targets[i]``: ``boxes`` (N, 4) xyxy, ``labels`` (N,), optional ``iscrowd``, ``area``,
    ``masks`` (N, H, W) bool; ``preds[i]``: ``boxes``, ``scores``, ``labels``, optional
    ``masks``. Image ``i`` gets id ``i``; categories are the union of labels. Values are
    converted to float64 before any arithmetic (xyxy -> xywh, areas), so the numbers are
    pycocotools' for the data the tensors hold.
    """
    from visiontool.io.coco import encode_rle

    if len(targets) != len(preds):
        raise UsageError(f"{len(preds)} prediction dicts but {len(targets)} target dicts")
    images, anns, results, labels = [], [], [], set()
    ann_id = 1
    for i, (t, p) in enumerate(zip(targets, preds)):
        h = w = 0
        tm = _np(t["masks"]) if "masks" in t else None
        pm = _np(p["masks"]) if "masks" in p else None
        for m in (tm, pm):
            if m is not None and m.ndim == 3:
                h, w = int(m.shape[1]), int(m.shape[2])
        images.append({"id": i, "width": w, "height": h, "file_name": f"{i}"})
        tl = _np(t["labels"]).astype(np.int64).reshape(-1)
        tb = _np(t["boxes"]).astype(np.float64).reshape(-1, 4) if "boxes" in t else None
        crowd = _np(t["iscrowd"]).astype(np.int64).reshape(-1) if "iscrowd" in t else np.zeros(len(tl), np.int64)
        area = _np(t["area"]).astype(np.float64).reshape(-1) if "area" in t else None
        for k in range(len(tl)):
            a = {"id": ann_id, "image_id": i, "category_id": int(tl[k]), "iscrowd": int(crowd[k])}
            if tb is not None:
                x1, y1, x2, y2 = tb[k].tolist()
                a["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            if iou_type == "segm":
                a["segmentation"] = encode_rle(tm[k])
            if area is not None:
                a["area"] = float(area[k])
            elif iou_type == "segm":
                a["area"] = float(np.count_nonzero(tm[k]))
            else:
                a["area"] = a["bbox"][2] * a["bbox"][3]
            anns.append(a)
            ann_id += 1
            labels.add(int(tl[k]))
        pl = _np(p["labels"]).astype(np.int64).reshape(-1)
        ps = _np(p["scores"]).astype(np.float64).reshape(-1)
        pb = _np(p["boxes"]).astype(np.float64).reshape(-1, 4) if "boxes" in p and iou_type == "bbox" else None
        for k in range(len(pl)):
            r = {"image_id": i, "category_id": int(pl[k]), "score": float(ps[k])}
            if iou_type == "bbox":
                x1, y1, x2, y2 = pb[k].tolist()
                r["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                r["segmentation"] = encode_rle(pm[k])
            results.append(r)
            labels.add(int(pl[k]))
    cats = [{"id": c, "name": str(c)} for c in sorted(labels)]
    return {"images": images, "annotations": anns, "categories": cats}, results
