"""Fast paths for large valid COCO results files: no per-record Python dicts.

* bbox: ultrafast-pycocotools' native reader yields an ``(N, 7)`` float64 array
  ``[image_id, x, y, w, h, score, category_id]``, checked with numpy; the engine takes the
  array as is (the file is parsed once).
* segm: msgspec checks the schema, types, finite values and box sizes while decoding the
  memory-mapped file into small structs (no RLE counts are copied); numpy checks image and
  category ids and counts masks whose size is not their image's (scored, with a warning);
  the file then goes to the engine, which checks the counts (see
  :func:`visiontool.services.eval_engines.run_hotcoco`).

Each returns None when the file is not plain valid COCO results of that kind: the precise
path (:mod:`visiontool.io.pred_checks`) then reads it record by record and names the first
offending record, or scores the shapes these paths leave out.
"""
# no `from __future__ import annotations`: msgspec reads the annotations of the local schema classes
from itertools import chain
from operator import attrgetter, countOf
from typing import Any, Callable

import numpy as np


def summarise(category_ids: np.ndarray, scores: np.ndarray) -> dict:
    """The diagnostic summary fields of a set of predictions (see ``Predictions``)."""
    n = int(scores.shape[0])
    cats = category_ids
    if n and cats.min() >= 0 and cats.max() < 10_000_000:
        uniq = np.flatnonzero(np.bincount(cats))
    else:
        uniq = np.unique(cats)
    return {"n": n, "min_score": float(scores.min()) if n else float("nan"),
            "predicted_categories": uniq.astype(np.int64)}


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


# ---------------------------------------------------------------------------------------- bbox


def fast_bbox(path: str, gt) -> dict | None:
    """``{"rows": (N, 7) array, **summary, "deferred_check"?}`` or None."""
    try:
        from ultrafast_pycocotools import _ufcoco

        _, compact = _ufcoco.load_compact_bbox(path, results=True)  # ValueError: not plain COCO results
        rows = np.ascontiguousarray(compact.array_rows(), dtype=np.float64)
        del compact
    except (ImportError, ValueError, OSError, MemoryError, TypeError, RecursionError):
        return None
    if rows.shape[0] == 0 or not _rows_valid(rows, gt):
        return None
    out = {"rows": rows, **summarise(rows[:, 6].astype(np.int64), rows[:, 5])}
    if (rows[:, 5] == 0.0).any():
        # a 0.0 may be a null or missing score: scan the text in a thread while the engine
        # (which releases the GIL) evaluates; evaluate() discards the result if the scan fails
        out["deferred_check"] = in_thread(_scores_present, path, rows.shape[0])
    return out


def _rows_valid(rows: np.ndarray, gt) -> bool:
    """Vectorised check of an (N, 7) array; False sends the file to the precise path."""
    if not np.isfinite(rows[:, 1:6]).all():
        return False
    if (rows[:, 3] < 0).any() or (rows[:, 4] < 0).any():
        return False
    if not is_member(rows[:, 0].astype(np.int64), gt.image_id_array).all():
        return False
    return bool(is_member(rows[:, 6].astype(np.int64), gt.category_id_array).all())


def in_thread(fn, *args) -> Callable[[], bool]:
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


_SCAN_CHUNK = 1 << 22  # 4 MiB: each chunk is counted and searched while it is in the CPU cache


def _scores_present(path: str, n: int) -> bool:
    """The native reader turns a null or missing score into 0.0. When some scores are 0.0,
    accept the file only if it holds exactly one "score" key per record and none is null.

    Read in chunks, each counted and searched while in cache (no whole-file copy: 50 MB less
    at the engine's peak, and ~0.09 s instead of ~0.12 s for 50 MB on the loaded 2-core
    development machine); only a file with "null" somewhere is read again whole for the
    exact pattern."""
    import re

    key, null = b'"score"', b"null"
    keep = len(key) - 1  # a match split across two chunks lies within the last and first `keep` bytes
    count, has_null, tail = 0, False, b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_SCAN_CHUNK)
            if not chunk:
                break
            seam = tail + chunk[:keep]  # no match fits in either half of the seam alone: none counted twice
            count += chunk.count(key) + seam.count(key)
            has_null = has_null or null in chunk or null in seam
            tail = chunk[-keep:] if len(chunk) >= keep else (tail + chunk)[-keep:]
    if count != n:
        return False
    if has_null:
        with open(path, "rb") as fh:
            return re.search(rb'"score"\s*:\s*null', fh.read()) is None
    return True


# ---------------------------------------------------------------------------------------- segm

_SEGM_DECODER: Any = None


def _segm_decoder():
    global _SEGM_DECODER
    if _SEGM_DECODER is None:
        from typing import Annotated

        import msgspec

        # a box, when present, is checked while decoding (finite; w, h >= 0); the score
        # (always present) is checked as a column (a constraint per value costs more)
        big = 1.7976931348623157e308
        finite = Annotated[float, msgspec.Meta(ge=-big, le=big)]
        size = Annotated[float, msgspec.Meta(ge=0, le=big)]

        class Size(msgspec.Struct, array_like=True, gc=False):
            h: int
            w: int

        class RLE(msgspec.Struct, gc=False):
            size: Size  # "counts" is left to the engine (see the module docstring)

        class SegmResult(msgspec.Struct, gc=False):
            image_id: int
            category_id: int
            score: float
            segmentation: RLE
            bbox: tuple[finite, finite, size, size] | None = None

        _SEGM_DECODER = msgspec.json.Decoder(list[SegmResult])
    return _SEGM_DECODER


def fast_segm(data, gt) -> dict | None:
    """Summary of a valid segm results document ``data`` (a buffer: the mapped file), or None."""
    import msgspec

    try:
        recs = _segm_decoder().decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None
    n = len(recs)
    if n == 0:
        return None
    # map(attrgetter) runs the per-record loop in C: about twice as fast as generators
    image_ids = np.fromiter(map(attrgetter("image_id"), recs), np.int64, n)
    cat_ids = np.fromiter(map(attrgetter("category_id"), recs), np.int64, n)
    scores = np.fromiter(map(attrgetter("score"), recs), np.float64, n)
    sizes = np.fromiter(chain.from_iterable(map(attrgetter("segmentation.size.h", "segmentation.size.w"), recs)),
                        np.int64, 2 * n).reshape(n, 2)
    # pycocotools takes its format from the first result: if it has a box, all must
    mixed = recs[0].bbox is not None and countOf(map(attrgetter("bbox"), recs), None) > 0
    del recs
    if mixed or not np.isfinite(scores).all():
        return None  # the precise path names the record
    if not is_member(image_ids, gt.image_id_array).all() or not is_member(cat_ids, gt.category_id_array).all():
        return None
    out = summarise(cat_ids, scores)
    bad = size_mismatches(image_ids, sizes, gt)
    if bad.any():  # scored as pycocotools scores them (never matched), with a warning
        i = int(np.flatnonzero(bad)[0])
        want = gt.image_sizes[int(image_ids[i])]
        out["size_mismatches"] = int(np.count_nonzero(bad))
        out["size_mismatch_example"] = f"result {i}: {sizes[i, 0]}x{sizes[i, 1]} on a {want[0]}x{want[1]} image"
    return out


def size_mismatches(image_ids: np.ndarray, sizes: np.ndarray, gt) -> np.ndarray:
    """Boolean mask: the (height, width) in ``sizes`` differs from its image's in the GT
    (where the GT knows it)."""
    hw = gt.image_hw_array  # (n_images, 2) aligned with image_id_array; -1 where unknown
    ids = gt.image_id_array  # every image id is known to be one of these
    if ids.size and ids[0] >= 0 and ids[-1] < 2_000_000 and (ids[1:] != ids[:-1]).all():
        table = np.empty((int(ids[-1]) + 1, 2), dtype=np.int64)  # a lookup beats a binary search
        table[ids] = hw
        want = table[image_ids]
    else:
        want = hw[np.searchsorted(ids, image_ids)]
    known = want[:, 0] >= 0
    return known & (sizes != want).any(axis=1)
