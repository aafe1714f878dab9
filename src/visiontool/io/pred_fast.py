"""Fast paths for large valid COCO results files: no per-record Python dicts.

Each path is two steps, so that the first can run in another process while the engine reads
the same file (:mod:`visiontool.io.pred_early`):

* **facts** (no ground truth needed): the file is parsed and checked on its own, and reduced
  to what the second step needs -- the record count, the lowest score, the distinct image and
  category ids (and for segm the distinct ``(image_id, height, width)`` of the masks).

  - bbox: ultrafast-pycocotools' native reader yields an ``(N, 7)`` float64 array
    ``[image_id, x, y, w, h, score, category_id]``, checked with numpy (the engine can take
    the array as is: the file is then parsed once).
  - segm: msgspec checks the schema, types, finite values and box sizes while decoding the
    memory-mapped file into small structs, ~1 MB of text at a time (no RLE counts are
    copied; each slice's pages are dropped from the process when done), so the pass holds
    a few tens of MB whatever the file's size; the structs' numbers become columns through
    msgpack (:class:`_SegmSchema`). The engine then reads the file and checks the counts
    (see :func:`visiontool.services.eval_engines.run_hotcoco`).

* **against the ground truth**: every image id and category id must be the GT's; masks whose
  size is not their image's are counted (scored, with a warning).

Each returns None when the file is not plain valid COCO results of that kind: the precise
path (:mod:`visiontool.io.pred_checks`) then reads it record by record and names the first
offending record, or scores the shapes these paths leave out.
"""
# no `from __future__ import annotations`: msgspec reads the annotations of the local schema classes
import mmap
import re
from itertools import chain
from operator import attrgetter, countOf
from typing import Any, Callable

import numpy as np

from visiontool.io.score_scan import scores_present


def summarise(category_ids: np.ndarray, scores: np.ndarray) -> dict:
    """The diagnostic summary fields of a set of predictions (see ``Predictions``)."""
    n = int(scores.shape[0])
    return {"n": n, "min_score": float(scores.min()) if n else float("nan"),
            "predicted_categories": distinct(category_ids)}


def distinct(ids: np.ndarray) -> np.ndarray:
    """Sorted distinct int64 ids (a bincount when they are small non-negative integers)."""
    if ids.size and ids.min() >= 0 and ids.max() < 10_000_000:
        return np.flatnonzero(np.bincount(ids)).astype(np.int64)
    return np.unique(ids).astype(np.int64)


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


def against_gt(facts: dict | None, gt) -> dict | None:
    """The summary (``n``, ``min_score``, ``predicted_categories``, and for masks of another
    size than their image ``size_mismatches`` / ``size_mismatch_example``) of a file's facts,
    or None when an image or category id is not the ground truth's."""
    if facts is None:
        return None
    if not is_member(facts["image_ids"], gt.image_id_array).all():
        return None
    cats = facts["category_ids"]
    if not is_member(cats, gt.category_id_array).all():
        return None
    out = {"n": facts["n"], "min_score": facts["min_score"], "predicted_categories": cats}
    if "mask_sizes" in facts:
        keys, counts, first = facts["mask_sizes"]  # distinct (image_id, h, w), how many, first index
        bad = size_mismatches(keys[:, 0], keys[:, 1:], gt)
        if bad.any():  # scored as pycocotools scores them (never matched), with a warning
            i = int(np.argmin(np.where(bad, first, np.iinfo(np.int64).max)))
            want = gt.image_sizes[int(keys[i, 0])]
            out["size_mismatches"] = int(counts[bad].sum())
            out["size_mismatch_example"] = (f"result {int(first[i])}: {keys[i, 1]}x{keys[i, 2]} on a "
                                            f"{want[0]}x{want[1]} image")
    return out


# ---------------------------------------------------------------------------------------- bbox


def bbox_facts(path: str, keep_rows: bool = False, rows: np.ndarray | None = None) -> dict | None:
    """Facts of a bbox results file (see the module docstring); ``keep_rows`` adds the
    ``(N, 7)`` array as ``rows``. ``zero_scores`` holds the indices of the 0.0 scores, which
    :func:`with_score_check` checks against the text. ``rows``: the file as the engine's reader
    already parsed it (the same native reader), not parsed again."""
    if rows is None:
        try:
            from ultrafast_pycocotools import _ufcoco

            _, compact = _ufcoco.load_compact_bbox(path, results=True)  # ValueError: not plain COCO results
            rows = np.ascontiguousarray(compact.array_rows(), dtype=np.float64)
            del compact
        except (ImportError, ValueError, OSError, MemoryError, TypeError, RecursionError):
            return None
    n = rows.shape[0]
    # (every column: a contiguous pass is cheaper than a strided one, and the id columns hold
    # what the reader read as integers)
    if n == 0 or not np.isfinite(rows).all() or rows[:, 3:5].min() < 0:
        return None
    zero = np.flatnonzero(rows[:, 5] == 0.0)
    facts = {"n": n, "min_score": float(rows[:, 5].min()), "image_ids": distinct(rows[:, 0].astype(np.int64)),
             "category_ids": distinct(rows[:, 6].astype(np.int64)), "zero_scores": zero}
    if keep_rows:
        facts["rows"] = rows
    return facts


def fast_bbox(path: str, gt) -> dict | None:
    """``{"rows": (N, 7) array, **summary, "deferred_check"?}`` or None, in this process."""
    facts = bbox_facts(path, keep_rows=True)
    out = against_gt(facts, gt)
    if out is None:
        return None
    out["rows"] = facts["rows"]
    return with_score_check(out, path, facts)


def with_score_check(out: dict | None, path: str, facts: dict) -> dict | None:
    """``out`` (a file's summary) with, when some of its scores are 0.0 (maybe a null or missing
    score: the native reader reads those as 0.0), the check of the text started in a thread
    beside the engine, which releases the GIL (``deferred_check``: evaluate() discards the
    engine's result if the check fails)."""
    if out is not None and facts["zero_scores"].size:
        out["deferred_check"] = in_thread(scores_present, path, facts["zero_scores"], facts["n"])
    return out


class AfterEngineRead:
    """The check of a bbox results file the engine reads itself: :meth:`result` takes the rows
    its reader parsed (ultrafast-pycocotools' compact results: the file is parsed once), or
    parses the file when the engine is another one. A 0.0 score is checked against the text
    in a thread beside the evaluation (``deferred_check``)."""

    def __init__(self, path: str, gt):
        self.path, self.gt = path, gt

    def result(self, rows: np.ndarray | None = None) -> dict | None:
        facts = bbox_facts(self.path, rows=rows)
        return with_score_check(against_gt(facts, self.gt), self.path, facts)

    def cancel(self) -> None:
        pass


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


# ---------------------------------------------------------------------------------------- segm

_SEGM: Any = None
# bytes of JSON text decoded at a time (~2,800 masks of COCO's size): the structs of one slice
# (~0.7 MB) reuse the same few pymalloc arenas, which a 16 MB slice's (~11 MB) did not: they were
# unmapped after each slice and faulted in again. COCO-val's 178 MB of masks: the check 0.33 ->
# 0.30 s, page faults 31k -> 11k (4 MB slices: 0.31 s)
SEGM_SLICE = 1 << 20
_BETWEEN = re.compile(rb"\}\s*,\s*\{")  # the seam between two records of a results list
_COLUMNS = ("image_id", "category_id", "height", "width", "score")
# a record's numbers in one pass (a tuple per record, flattened): _SegmSchema.columns' fallback
_SEGM_NUMBERS = attrgetter("image_id", "category_id", "segmentation.size.h", "segmentation.size.w", "score")
_EXACT = float(1 << 53)  # integers up to this size are exact as float64


class _SegmSchema:
    """msgspec's decoder of a segm results list and the columns of what it decoded.

    Every number is decoded as a float (JSON's ``1`` and ``1.0`` alike), so that msgpack writes
    each decoded record in the same number of bytes: a fixed layout that numpy reads as columns
    at C speed. Taking the five numbers out of 500k structs one attribute at a time cost ~0.1 s
    of the check's ~0.27; re-encoding them costs ~0.05 (COCO-val's masks). Whether ids and
    sizes are integers is checked on the columns (:func:`segm_facts`)."""

    def __init__(self):
        from typing import Annotated

        import msgspec

        # a box, when present, is checked while decoding (finite; w, h >= 0); the score
        # (always present) is checked as a column (a constraint per value costs more)
        big = 1.7976931348623157e308
        finite = Annotated[float, msgspec.Meta(ge=-big, le=big)]
        size = Annotated[float, msgspec.Meta(ge=0, le=big)]

        class Size(msgspec.Struct, array_like=True, gc=False):
            h: float
            w: float

        class RLE(msgspec.Struct, gc=False):
            size: Size  # "counts" is left to the engine (see the module docstring)

        class SegmResult(msgspec.Struct, gc=False):
            image_id: float
            category_id: float
            score: float
            segmentation: RLE
            bbox: tuple[finite, finite, size, size] | None = None

        self.decoder = msgspec.json.Decoder(list[SegmResult])
        self.encoder = msgspec.msgpack.Encoder()
        # where each number sits in a record's msgpack bytes, found from a record of marked values
        marks = (0.125, 0.25, 0.375, 0.5, 0.625)  # image_id, category_id, h, w, score
        self.layouts = {}
        for boxed in (False, True):
            rec = SegmResult(marks[0], marks[1], marks[4], RLE(Size(marks[2], marks[3])),
                             (1.5, 2.5, 3.5, 4.5) if boxed else None)
            raw = self.encoder.encode(rec)
            offsets = [raw.find(b"\xcb" + np.float64(m).byteswap().tobytes()) + 1 for m in marks]
            if min(offsets) <= 0:  # msgspec writes floats otherwise: take the numbers one by one
                self.layouts = {}
                break
            self.layouts[boxed] = np.dtype({"names": list(_COLUMNS), "formats": [">f8"] * 5,
                                            "offsets": offsets, "itemsize": len(raw)})

    def columns(self, recs: list, boxed: bool) -> np.ndarray | None:
        """The ``(n, 5)`` float64 numbers of decoded records in :data:`_COLUMNS`' order, or
        None when a record's box is missing and ``boxed`` (the first record had one)."""
        n = len(recs)
        layout = self.layouts.get(boxed)
        if layout is not None:
            raw = self.encoder.encode(recs)
            start = len(raw) - n * layout.itemsize  # after the list's header (1, 3 or 5 bytes)
            if start in (1, 3, 5):  # every record has the layout: the same box or none
                rec = np.frombuffer(raw, layout, count=n, offset=start)
                out = np.empty((n, 5), dtype=np.float64)
                for j, name in enumerate(_COLUMNS):
                    out[:, j] = rec[name]
                return out
        # records with and without a box, or no layout: one record at a time
        if boxed and countOf(map(attrgetter("bbox"), recs), None):
            return None  # pycocotools takes its format from the first result: if it has a box, all must
        return np.fromiter(chain.from_iterable(map(_SEGM_NUMBERS, recs)), np.float64, 5 * n).reshape(n, 5)


def _segm_schema() -> _SegmSchema:
    global _SEGM
    if _SEGM is None:
        _SEGM = _SegmSchema()
    return _SEGM


def _slices(data, step: int):
    """``(begin, end)`` byte ranges of ``data`` (a JSON list of objects) that each hold whole
    records and are each followed and preceded by a byte that is not part of a record: cut at
    a ``}, {`` seam about every ``step`` bytes. A seam inside a string (possible only in a
    field COCO does not have) makes a slice end inside that string, so its decoding fails and
    the file goes to the precise path."""
    begin = data.find(b"[") + 1
    last = data.rfind(b"]")
    if begin <= 0 or last < begin:
        return  # not a list: no slice, no facts
    while True:
        m = _BETWEEN.search(data, begin + step) if begin + step < last else None
        if m is None:
            yield begin, last
            return
        yield begin, m.start() + 1
        begin = m.end() - 1


def segm_facts(path: str) -> dict | None:
    """Facts of a segm results file, or None.

    The file is mapped copy-on-write: each slice is decoded in place as a JSON list by writing
    ``[`` and ``]`` into the bytes around it (a private copy of one page per slice; the file is
    untouched), and once decoded its pages are dropped from this process."""
    import msgspec

    schema = _segm_schema()
    parts = []  # (n, 5) numbers of each slice, in _COLUMNS' order
    boxed: bool | None = None
    try:
        with open(path, "rb") as fh:
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
    except (OSError, ValueError):
        return None
    view = memoryview(data)
    try:
        for a, b in _slices(data, SEGM_SLICE):
            data[a - 1] = 0x5B  # "[": the list's own, a comma or a blank
            data[b] = 0x5D  # "]": the list's own, a comma or a blank
            recs = schema.decoder.decode(view[a - 1:b + 1])
            if hasattr(mmap, "MADV_DONTNEED"):
                lo = a - a % mmap.PAGESIZE
                data.madvise(mmap.MADV_DONTNEED, lo, b - lo)  # decoded: drop the pages from our RSS
            if not recs:
                continue
            if boxed is None:  # pycocotools takes its format from the first result: if it has a box, all must
                boxed = recs[0].bbox is not None
            cols = schema.columns(recs, boxed)
            del recs
            if cols is None:
                return None
            parts.append(cols)
    except (msgspec.DecodeError, RecursionError, ValueError):
        return None
    finally:
        view.release()
        data.close()
    if not parts:
        return None
    cols = np.concatenate(parts) if len(parts) > 1 else parts[0]
    score = cols[:, 4]
    if not np.isfinite(score).all():
        return None  # the precise path names the record
    nums = cols[:, :4]  # ids and sizes: integers (JSON 1 or 1.0, as pycocotools reads ids; a size
    if not (np.abs(nums) < _EXACT).all():  # spelled 3.0 is refused by the engine, then named precisely)
        return None
    ints = nums.astype(np.int64)
    if not (ints == nums).all():
        return None
    return {"n": int(score.shape[0]), "min_score": float(score.min()), "image_ids": distinct(ints[:, 0]),
            "category_ids": distinct(ints[:, 1]), "mask_sizes": distinct_rows(ints[:, [0, 2, 3]])}


def fast_segm(path: str, gt) -> dict | None:
    """Summary of a valid segm results file, or None, in this process."""
    return against_gt(segm_facts(path), gt)


def distinct_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(keys, counts, first)``: the distinct rows of an ``(N, k)`` int64 array, how often
    each occurs and the index of its first occurrence. Results come grouped by image, so runs
    of equal rows are collapsed first (O(N)) and only the runs are sorted."""
    n = rows.shape[0]
    starts = np.flatnonzero(np.concatenate([[True], (rows[1:] != rows[:-1]).any(axis=1)]))
    lengths = np.diff(np.append(starts, n))
    keys, inverse = np.unique(rows[starts], axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, weights=lengths, minlength=len(keys)).astype(np.int64)
    first = np.full(len(keys), n, dtype=np.int64)
    np.minimum.at(first, inverse, starts)
    return keys, counts, first


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
