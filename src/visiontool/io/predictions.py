"""Reading and validating predictions for ``visiontool evaluate``.

Accepted formats (recognised from the content, not the file name):

* **COCO results** JSON, as ``pycocotools.COCO.loadRes`` takes them (see
  :mod:`visiontool.io.pred_checks` for the exact rules): ``[{"image_id", "category_id",
  "score", "bbox": [x, y, w, h]}]`` and/or ``"segmentation"`` (COCO RLE; with a ``bbox``
  also polygons or uncompressed RLE) and/or ``"keypoints"`` (51 numbers).
* **visiontool records** (DESIGN.md §3), as a JSON list or JSONL: ``{"image": path,
  "detections": [{"label", "category_id", "score", "box": [x1, y1, x2, y2]}]}`` from
  ``detect`` or ``{"image": path, "masks": [{"label"?, "score", "box", "segmentation": RLE}]}``
  from ``segment``. Images are matched to the GT's ``images[].file_name``, categories by
  name (``category_id`` is used only when a detection has no label).
* In Python: a list of COCO result dicts, or a list of visiontool records.

A file is checked before it is read (a directory, ``/dev/null`` or a symlink loop is named
as such) and rejected from its first bytes when it cannot be JSON (:mod:`visiontool.io.json_input`).
Large valid COCO results files take a fast path that builds no per-record dicts
(:mod:`visiontool.io.pred_fast`); anything else is read one element at a time and checked
record by record, naming the first offending record and its index (``lenient=True`` skips
such records and counts them instead). visiontool records for images that are not in the
GT are skipped and counted (``n_unknown_images``): running detect on a folder with extra
photos is normal.
"""
from __future__ import annotations

import math
import os
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from visiontool.errors import InvalidInputError, UsageError
from visiontool.io import pred_checks as checks
from visiontool.io.gt_read import read_gt_light  # noqa: F401  (re-exported for callers of the old layout)
from visiontool.io.pred_fast import AfterEngineRead, fast_bbox, fast_segm, is_member, summarise  # noqa: F401
from visiontool.io.pred_tensors import is_tensor_style, tensors_to_coco  # noqa: F401

IOU_TYPES = ("bbox", "segm", "keypoints")
ROW_COLUMNS = ("image_id", "x", "y", "w", "h", "score", "category_id")


class NotFast(Exception):
    """The check that ran beside the engine found the file is not plain valid COCO results:
    read it again with ``precise=True``."""


@dataclass
class Predictions:
    """Validated predictions, in one of three carriers (exactly one is set).

    * ``rows``: ``(N, 7)`` float64 ``[image_id, x, y, w, h, score, category_id]`` (bbox
      results evaluated as bbox)
    * ``path``: a COCO results file (a JSON list) that passed validation unchanged
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
    pending: Any = None  # a check of ``path`` still running in a child (:class:`~visiontool.io.pred_early.Pending`)
    n_unscored: int = 0  # valid predictions of categories the GT lacks: left out, as COCOeval leaves them
    unscored_categories: list[str] = field(default_factory=list)  # the commonest, "category_id 7 (12)"
    size_mismatches: int = 0  # masks (used by the iou type) whose size is not their GT image's
    size_mismatch_example: str = ""  # the first, e.g. "result 3: 10x10 on a 640x480 image"

    def __len__(self) -> int:
        self.settle()
        return self.n

    def settle(self, rows: np.ndarray | None = None) -> None:
        """Finish the check of ``path`` the engine's reading overlapped (a child computing it,
        or, for bbox, the ``rows`` the engine's reader parsed) and take its summary; raise
        :class:`NotFast` when the file is not plain valid COCO results after all (the
        precise path then reads it)."""
        if self.pending is None:
            return
        pending, self.pending = self.pending, None
        summary = pending.result(rows)
        if summary is None:
            raise NotFast(self.source)
        for k, v in summary.items():
            setattr(self, k, v)

    summarise = staticmethod(summarise)

    def to_results(self) -> list[dict]:
        """COCO result dicts (built on demand for engines that need them)."""
        if self.results is not None:
            return self.results
        if self.rows is not None:
            return [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": [r[1], r[2], r[3], r[4]],
                     "score": r[5]} for r in self.rows.tolist()]
        from visiontool.io.json_input import open_json

        with open_json(self.path, "predictions") as inp:
            import msgspec

            return msgspec.json.decode(inp.body())


# ---------------------------------------------------------------------------------------
# entry point


def load_predictions(pred: Any, gt, iou_type: str = "bbox", lenient: bool = False,
                     precise: bool = False, early=None) -> Predictions:
    """Validated predictions from a path, a list of COCO result dicts or visiontool records.
    ``precise=True`` skips the native fast paths (every record checked in Python).

    ``early``: the :class:`~visiontool.io.pred_early.EarlyCheck` started on the file ``pred``;
    a plain file then comes back at once with the check still running (``pending``): call
    :meth:`Predictions.settle` before trusting it (``len()`` does)."""
    if iou_type not in IOU_TYPES:
        raise UsageError(f"invalid iou type '{iou_type}': expected bbox, segm or keypoints")
    if isinstance(pred, (str, os.PathLike)):
        return _from_file(str(pred), gt, iou_type, lenient, precise, early)
    if isinstance(pred, (list, tuple)):
        return _from_items(enumerate(pred), "list", None, gt, iou_type, lenient, "predictions")
    if isinstance(pred, np.ndarray):
        return _from_items(enumerate(numpy_results(pred)), "list", None, gt, iou_type, lenient, "predictions")
    raise UsageError(f"unsupported predictions object of type {type(pred).__name__}")


def numpy_results(a: np.ndarray) -> list[dict]:
    """An ``(N, 7)`` array ``[image_id, x, y, w, h, score, category_id]`` as the result dicts
    pycocotools' ``loadNumpyAnnotations`` makes of it (ids truncated by ``int()``)."""
    if a.ndim != 2 or a.shape[1] != 7:
        raise InvalidInputError(f"predictions: a results array must be (N, 7) [image_id, x, y, w, h, score, "
                                f"category_id], got shape {list(a.shape)}")
    try:
        rows = a.astype(np.float64).tolist()
    except (TypeError, ValueError):
        raise InvalidInputError(f"predictions: a results array must be numeric, got {a.dtype}") from None
    out = []
    for r in rows:
        if not (math.isfinite(r[0]) and math.isfinite(r[6])):
            raise InvalidInputError(f"predictions: result {len(out)}: image_id and category_id must be finite")
        out.append({"image_id": int(r[0]), "bbox": r[1:5], "score": r[5], "category_id": int(r[6])})
    return out


def _from_file(path: str, gt, iou_type: str, lenient: bool, precise: bool, early=None) -> Predictions:
    from visiontool.io.json_input import Items, iter_items, open_json

    with open_json(path, "predictions") as inp:
        source = inp.label
        # the engines read a file themselves only when it is a plain JSON document (no BOM,
        # no leading blanks) in a regular file
        plain = inp.start == 0 and not isinstance(inp.data, (bytes, bytearray))
        # the engine may read the file itself only if it looks like COCO results (a list whose
        # first element is a result, not a visiontool record): its reader would go slowly
        # through anything else before the check refused it
        results_file = False
        if plain and not precise and (early is not None or iou_type == "bbox"):
            head = _first_element(inp.data)
            results_file = isinstance(head, dict) and not _is_records(head, "list")
        if early is not None:
            if results_file:
                from visiontool.io.pred_early import Pending

                return Predictions(source=source, n=0, min_score=float("nan"),
                                   predicted_categories=np.zeros(0, np.int64), path=path,
                                   pending=Pending(early, gt))
            early.cancel()
        if results_file and iou_type == "bbox":
            # the engine reads the file; its parsed rows are checked before it evaluates them
            return Predictions(source=source, n=0, min_score=float("nan"),
                               predicted_categories=np.zeros(0, np.int64), path=path,
                               pending=AfterEngineRead(path, gt))
        if not precise and plain:
            fast = fast_bbox(path, gt) if iou_type == "bbox" else (
                fast_segm(path, gt) if iou_type == "segm" else None)
            if fast is not None:
                rows = fast.pop("rows", None)
                return Predictions(source=source, rows=rows, path=None if rows is not None else path, **fast)
        info = Items("list", None)
        first, items = _peek(iter_items(inp, info))
        if first is not None and _is_records(first[1], info.shape):
            return _from_records(items, gt, iou_type, lenient, source)
        _check_shape(first, info.shape, source)

        def reopen():
            with open_json(path, "predictions") as again:
                yield from iter_items(again)

        by_path = plain and info.shape == "list"
        return _from_results(items, gt, iou_type, lenient, source, path if by_path else None,
                             reopen if by_path else None)


def _first_element(data) -> Any:
    """The first element of a JSON list from the first 64 KB of ``data`` (None if that is not
    where a list's first element ends)."""
    import json

    head = bytes(data[:1 << 16]).decode("utf-8", "ignore")
    if not head.startswith("["):
        return None
    start = len(head) - len(head[1:].lstrip())
    try:
        return json.JSONDecoder().raw_decode(head, start)[0]
    except ValueError:
        return None


def _from_items(items, shape: str, info, gt, iou_type: str, lenient: bool, source: str) -> Predictions:
    """Predictions from in-memory (index, value) pairs."""
    first, items = _peek(items)
    if first is not None and _is_records(first[1], shape):
        return _from_records(items, gt, iou_type, lenient, source)
    return _from_results(items, gt, iou_type, lenient, source, None, None)


def _peek(items):
    items = iter(items)
    first = next(items, None)
    if first is None:
        return None, iter(())

    def chained():
        yield first
        yield from items

    return first, chained()


def _is_records(v: Any, shape: str) -> bool:
    """visiontool records (detect/segment) rather than COCO results, from the first element."""
    return isinstance(v, dict) and ("detections" in v or "masks" in v or ("image" in v and "image_id" not in v))


def _check_shape(first, shape: str, source: str) -> None:
    if first is None or shape != "object":
        return
    v = first[1]
    if isinstance(v, dict) and "annotations" in v and "images" in v:
        raise InvalidInputError(f"{source} is a COCO ground-truth file, not predictions "
                                f"(expected a list of results or visiontool records)")
    what = "a JSON object" if isinstance(v, dict) else f"a JSON {type(v).__name__}"
    raise InvalidInputError(f"{source} is {what}; expected a JSON list of COCO results or visiontool records")


class _Failures:
    """Raise on the first invalid record, or (lenient) count them and keep five reasons."""

    def __init__(self, lenient: bool):
        self.lenient, self.n, self.reasons = lenient, 0, []

    def __call__(self, where: str, msg: str) -> None:
        if not self.lenient:
            raise InvalidInputError(f"{where}: {msg}")
        self.n += 1
        if len(self.reasons) < 5:
            self.reasons.append(f"{where}: {msg}")


def _from_results(items, gt, iou_type: str, lenient: bool, source: str, path: str | None,
                  reopen: Callable | None) -> Predictions:
    """COCO results, record by record. bbox results evaluated as bbox become an (N, 7) array;
    for a file (``reopen`` given) whose results all pass unchanged only the summary columns
    are kept and the engine reads the file itself; otherwise the (normalised) dicts."""
    keep = reopen is None
    fail = _Failures(lenient)
    branch = None
    cats, scores = array("q"), array("d")
    rows: array | None = array("d") if iou_type == "bbox" else None
    kept: list = []
    redo = False
    mism = _Mismatches()
    unscored = checks.Unscored()
    for i, r in items:
        try:
            out, branch_now, changed = checks.check_result(r, gt, iou_type, branch)
        except checks.Invalid as exc:
            fail(f"{source}: result {i}", str(exc))
            continue
        except checks.NotScored as exc:  # valid, of a category the GT lacks: left out, as COCOeval does
            unscored.note(exc.args[0])
            out, branch_now, changed = None, exc.args[1], True
        if branch is None:
            branch = branch_now  # the first result's, as pycocotools' loadRes takes it
            if branch != "bbox":
                rows = None
        redo = redo or changed
        if out is None:
            continue
        if uses_mask(out, iou_type):
            mm = checks.size_mismatch(out, gt)
            if mm is not None:
                mism.note(f"result {i}", mm)
        cats.append(out["category_id"])
        scores.append(float(out["score"]))
        if rows is not None:
            b = out["bbox"]
            rows.extend((out["image_id"], float(b[0]), float(b[1]), float(b[2]), float(b[3]),
                         float(out["score"]), out["category_id"]))
        elif keep:
            kept.append(out)
    n = len(cats)
    summary = summarise(np.frombuffer(cats, np.int64) if n else np.zeros(0, np.int64),
                        np.frombuffer(scores, np.float64) if n else np.zeros(0))
    extra = {"n_skipped": fail.n, "skipped_reasons": fail.reasons, **mism.fields(), **unscored.fields()}
    if rows is not None:
        # a view of the array('d') (which it keeps alive): no second copy at the peak
        return Predictions(source=source, rows=np.frombuffer(rows, np.float64).reshape(n, 7), **summary, **extra)
    if not keep and n == 0:
        return Predictions(source=source, results=[], **summary, **extra)
    if not keep:
        if redo or fail.n:  # the engine needs the dicts: read the file again, keeping them
            return _from_results(reopen(), gt, iou_type, lenient, source, None, None)
        return Predictions(source=source, path=path, **summary, **mism.fields())
    return Predictions(source=source, results=kept, **summary, **extra)


def _from_records(items, gt, iou_type: str, lenient: bool, source: str) -> Predictions:
    """visiontool records; for bbox their boxes go straight into an (N, 7) array (no dict per
    detection is kept), otherwise COCO result dicts."""
    fail = _Failures(lenient)
    kept: list[dict] = []
    rows = array("d")
    labels: dict = {}
    unknown = seen = 0
    first_unknown = None
    unscored = checks.Unscored()
    for i, rec in items:
        where = f"{source}: record {i}"
        res, known = checks.record_results(rec, gt, iou_type, lambda suffix, msg, w=where: fail(w + suffix, msg),
                                           labels, unscored)
        seen += 1
        unknown += not known
        if not known and first_unknown is None:
            first_unknown = rec.get("image") if isinstance(rec, dict) else None
        if iou_type == "bbox" and all("bbox" in r for r in res):
            for r in res:
                b = r["bbox"]
                rows.extend((r["image_id"], b[0], b[1], b[2], b[3], r["score"], r["category_id"]))
        else:
            kept.extend(res)
    if unknown and unknown == seen:  # not one photo of the GT: the wrong --gt, or the wrong folder
        raise InvalidInputError(f"{source}: none of its {seen} record(s) is for an image of the ground truth "
                                f"(first: '{first_unknown}'); records are matched to images[].file_name by path "
                                "suffix or base name: is it the ground truth of these photos?")
    if iou_type == "bbox" and not kept:
        n = len(rows) // 7
        arr = np.frombuffer(rows, np.float64).reshape(n, 7) if n else np.zeros((0, 7))
        return Predictions(source=source, rows=arr, fmt="records", **summarise(arr[:, 6].astype(np.int64), arr[:, 5]),
                           n_skipped=fail.n, skipped_reasons=fail.reasons, n_unknown_images=unknown,
                           **unscored.fields())
    if len(rows):  # some detections without a box (masks only): all as dicts
        r7 = np.frombuffer(rows, np.float64).reshape(-1, 7).tolist()
        kept = [{"image_id": int(r[0]), "category_id": int(r[6]), "bbox": r[1:5], "score": r[5]} for r in r7] + kept
    # pycocotools takes the format from the first result: keep boxes only when all have one
    if kept and not all("bbox" in r for r in kept):
        for r in kept:
            if "segmentation" in r:
                r.pop("bbox", None)
    out = _make(source, "records", kept, None, fail.reasons, unknown)
    out.n_skipped = fail.n
    for k, v in unscored.fields().items():
        setattr(out, k, v)
    mism = _Mismatches()
    for r in kept:
        if uses_mask(r, iou_type):
            mm = checks.size_mismatch(r, gt)
            if mm is not None:
                mism.note(f"image_id {r['image_id']}", mm)
    for k, v in mism.fields().items():
        setattr(out, k, v)
    return out


def uses_mask(r: dict, iou_type: str) -> bool:
    """Whether pycocotools reads result ``r``'s mask for ``iou_type`` (segm; bbox without a box)."""
    return iou_type == "segm" or (iou_type == "bbox" and "bbox" not in r)


class _Mismatches:
    """Counts results whose RLE size is not their GT image's; keeps the first as an example."""

    def __init__(self):
        self.n, self.example = 0, ""

    def note(self, where: str, mm: tuple) -> None:
        if not self.n:
            (h, w), (gh, gw) = mm
            self.example = f"{where}: {h}x{w} on a {gh}x{gw} image"
        self.n += 1

    def fields(self) -> dict:
        return {"size_mismatches": self.n, "size_mismatch_example": self.example} if self.n else {}


def _make(source: str, fmt: str, kept: list, rows, reasons: list, unknown: int) -> Predictions:
    n = len(kept)
    return Predictions(
        source=source,
        **summarise(np.fromiter((r["category_id"] for r in kept), np.int64, n),
                    np.fromiter((float(r["score"]) for r in kept), np.float64, n)),
        results=kept, fmt=fmt, skipped_reasons=reasons[:5], n_unknown_images=unknown,
    )
