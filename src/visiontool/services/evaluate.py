"""COCO evaluation with pycocotools' numbers at native speed (pure orchestration).

Public API (also used by ``compare``)::

    gt = GroundTruth.load("instances_val.json")          # parse once, reuse for many runs
    res = evaluate(gt, "preds.json", "bbox", per_class=True)
    res.stats        # {"map": ..., "map_50": ..., ..., "mar_large": ...}  (torchmetrics key names)
    res.to_dict()    # DESIGN.md §3 evaluate JSON

``evaluate(gt, predictions, iou_type="bbox", *, per_class=False, backend="auto", lenient=False)``
takes ``gt`` as a path, a COCO dict or a :class:`GroundTruth`, and ``predictions`` as a
path (COCO results or visiontool json/jsonl records), a list of COCO result dicts or
visiontool records, or torchmetrics-style per-image dicts (then ``gt`` is the matching
list of target dicts).

Engines (``backend``): ``auto`` picks by measurement (see docs/evaluate.md) —
ultrafast-pycocotools for bbox, hotcoco for segm; both produce pycocotools' precision and
recall arrays bit for bit, except when a GT annotation has id 0: pycocotools then counts
a match to that annotation as a false positive (its match marker is the id, and 0 means
"unmatched"), which the native engines do not reproduce, so ``auto`` hands such
ground truths to faster-coco-eval (≤ 2.2e-16 from pycocotools) or, if that is not
installed, pycocotools itself. ``pycocotools``, ``faster-coco-eval``, ``hotcoco``,
``ultrafast`` force an engine; ``torchmetrics`` runs ``MeanAveragePrecision`` fed through
its own ``coco_to_tm`` (its numbers, which differ; it imports torch).
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from visiontool.errors import InvalidInputError, UsageError
from visiontool.io.coco import GroundTruthIndex, load_json_file
from visiontool.io.predictions import (
    Predictions,
    is_tensor_style,
    load_predictions,
    read_gt_light,
    tensors_to_coco,
)

STAT_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
BACKENDS = ("auto", "ultrafast", "hotcoco", "pycocotools", "faster-coco-eval", "torchmetrics")
_ALIASES = {"ultrafast-pycocotools": "ultrafast", "ultrafast_pycocotools": "ultrafast",
            "faster_coco_eval": "faster-coco-eval", "fce": "faster-coco-eval", "tm": "torchmetrics"}
PRETHRESHOLD_SCORE = 0.05


# ---------------------------------------------------------------------------------------
# ground truth


class GroundTruth:
    """A COCO ground truth parsed once: lookups for validation plus cached engine handles.

    Attributes: ``path`` (or None), ``index`` (:class:`GroundTruthIndex`), ``image_id_array``
    (sorted int64), ``image_hw_array`` ((n, 2) height/width, -1 unknown), ``image_sizes``
    {id: (h, w)}, ``category_id_array`` (sorted), ``category_names`` {id: name}; lazily:
    ``gt_counts`` {category id: non-crowd annotations} and ``has_zero_id``.
    """

    def __init__(self, path: str | None, dataset: dict | None, images: list, categories: list,
                 anns: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 handles: dict | None = None, zero_id_possible: bool = True):
        self.path = path
        self._dataset = dataset
        self._handles: dict[str, Any] = dict(handles or {})
        self._anns = anns
        self._zero_id_possible = zero_id_possible
        self._images, self._categories, self._index = images, categories, None
        for i, cat in enumerate(categories):
            if not isinstance(cat, dict) or "id" not in cat or "name" not in cat:
                raise InvalidInputError(f"ground truth '{path or '<gt>'}': categories[{i}] needs 'id' and 'name'")
        ids = np.array([int(im["id"]) for im in images], dtype=np.int64)
        order = np.argsort(ids, kind="stable")
        self.image_id_array = ids[order]
        hw = np.array([[_int_or(im.get("height")), _int_or(im.get("width"))] for im in images],
                      dtype=np.int64).reshape(-1, 2)
        self.image_hw_array = hw[order]
        self.image_sizes = {int(i): (int(h), int(w)) for i, (h, w) in zip(ids.tolist(), hw.tolist())
                            if h >= 0 and w >= 0}
        self.image_id_set = set(ids.tolist())
        self.category_names = {int(c["id"]): str(c["name"]) for c in categories}
        self.category_id_array = np.array(sorted(self.category_names), dtype=np.int64)
        self.category_id_set = set(self.category_names)

    @property
    def index(self) -> GroundTruthIndex:
        """File-name and category-name lookups (built on first use: only records need them)."""
        if self._index is None:
            self._index = GroundTruthIndex.from_dict({"images": self._images, "categories": self._categories},
                                                     self.path or "<gt>")
        return self._index

    # -- annotation facts, computed on first use (the fast path never needs them)

    def _ann_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self._anns is None:
            light = read_gt_light(self.path) if self._dataset is None else None
            if light is not None:
                self._anns = light[2]
            else:
                self._anns = _ann_arrays_of(self.dataset(), self.path or "<gt>")
        return self._anns

    @property
    def has_zero_id(self) -> bool:
        """Whether an annotation has id 0 (pycocotools then scores matches to it as false positives)."""
        if not self._zero_id_possible:
            return False
        return bool((self._ann_arrays()[0] == 0).any())

    @property
    def gt_counts(self) -> dict[int, int]:
        _, cats, crowd = self._ann_arrays()
        u, n = np.unique(cats[crowd == 0], return_counts=True)
        return {int(c): int(k) for c, k in zip(u.tolist(), n.tolist())}

    # -- construction

    @classmethod
    def load(cls, gt: Any, iou_type: str | None = None) -> GroundTruth:
        """From a path, a COCO dict, or an existing GroundTruth (returned as is).

        For bbox (or ``iou_type=None``) a path is read by ultrafast-pycocotools' native reader,
        whose handle the evaluation reuses; for segm (hotcoco evaluates) msgspec reads only
        what validation needs. Either way the annotations' schema is checked."""
        if isinstance(gt, GroundTruth):
            return gt
        if isinstance(gt, dict):
            return cls._from_dict(gt, None)
        if isinstance(gt, (str, os.PathLike)):
            path = str(gt)
            if not Path(path).is_file():
                raise UsageError(f"ground truth file not found: '{path}'")
            if iou_type != "segm":
                native = _native_gt(path)
                if native is not None:
                    return native
            light = read_gt_light(path)  # validates the annotations' schema too
            if light is not None:
                return cls(path, None, *light)
            return cls._from_dict(load_json_file(path, "ground truth"), path)
        raise UsageError(f"unsupported ground truth of type {type(gt).__name__}")

    @classmethod
    def _from_dict(cls, d: Any, path: str | None) -> GroundTruth:
        name = path or "<gt>"
        if not isinstance(d, dict) or not isinstance(d.get("images"), list):
            raise InvalidInputError(f"ground truth '{name}' has no 'images' list (not a COCO annotation file)")
        if not isinstance(d.get("categories"), list):
            raise InvalidInputError(f"ground truth '{name}' has no 'categories' list")
        for i, im in enumerate(d["images"]):
            if not isinstance(im, dict) or "id" not in im:
                raise InvalidInputError(f"ground truth '{name}': images[{i}] has no 'id'")
        return cls(path, d, d["images"], d["categories"], _ann_arrays_of(d, name))

    def dataset(self) -> dict:
        """The full COCO dict (parsed on first use when loaded from a path). Do not mutate."""
        if self._dataset is None:
            self._dataset = load_json_file(self.path, "ground truth")
        return self._dataset

    def handle(self, engine: str):
        """The engine's COCO object for this GT, built once (compare reuses it across runs)."""
        if engine not in self._handles:
            with _quiet():
                if engine == "ultrafast":
                    from ultrafast_pycocotools import COCO

                    self._handles[engine] = COCO(self.path if self._dataset is None else self._dataset,
                                                 verbose=False)
                elif engine == "hotcoco":
                    from hotcoco import COCO

                    self._handles[engine] = COCO(self.path if self.path else self._dataset)
                else:
                    raise ValueError(engine)
        return self._handles[engine]


_ZERO_ID = re.compile(rb'"id"\s*:\s*-?0(?:\.0*)?(?:[eE][-+]?\d+)?\s*[,}\]]')


def _native_gt(path: str) -> GroundTruth | None:
    """Images and categories from ultrafast-pycocotools' native reader (its columnar GT
    handle is then reused for the evaluation). That reader requires each annotation's id,
    image_id, category_id and bbox; a byte scan checks there is one non-null "area" per
    annotation and rules annotation id 0 in or out. None: use the precise readers."""
    try:
        from ultrafast_pycocotools import COCO
    except ImportError:
        return None
    try:
        with _quiet():
            h = COCO(path, verbose=False)
        compact, meta = getattr(h, "_compact", None), getattr(h, "_dataset", None)
        if compact is None or not isinstance(meta, dict) or not isinstance(meta.get("images"), list) \
                or not isinstance(meta.get("categories"), list):
            return None
        data = Path(path).read_bytes()
        if data.count(b'"area"') != compact.annotation_count:
            return None
        if b"null" in data and re.search(rb'"area"\s*:\s*null', data) is not None:
            return None
        images, cats = list(h.imgs.values()), list(h.cats.values())
        if not all(isinstance(im, dict) and isinstance(im.get("id"), int) for im in images):
            return None
        if not all(isinstance(c, dict) and isinstance(c.get("id"), int) and "name" in c for c in cats):
            return None
        zero = _ZERO_ID.search(data) is not None
        del data
    except Exception:  # anything unusual: the precise readers report it
        return None
    return GroundTruth(path, None, images, cats, None, {"ultrafast": h}, zero_id_possible=zero)


def _ann_arrays_of(d: dict, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    anns = d.get("annotations", [])
    if not isinstance(anns, list):
        raise InvalidInputError(f"ground truth '{name}': 'annotations' is not a list")
    for i, a in enumerate(anns):
        if not isinstance(a, dict):
            raise InvalidInputError(f"ground truth '{name}': annotations[{i}] is not an object")
        for key in ("id", "image_id", "category_id", "bbox", "area"):
            if key not in a:
                raise InvalidInputError(f"ground truth '{name}': annotations[{i}] has no '{key}'")
    return (np.array([int(a["id"]) for a in anns], dtype=np.int64),
            np.array([int(a["category_id"]) for a in anns], dtype=np.int64),
            np.array([1 if a.get("iscrowd") else 0 for a in anns], dtype=np.int64))


def _int_or(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return -1


# ---------------------------------------------------------------------------------------
# results


@dataclass
class EvalResult:
    """One evaluation. ``stats`` uses torchmetrics' key names with pycocotools' values (-1
    where COCO says -1); ``precision`` / ``recall`` are COCOeval's ``eval`` arrays
    ([T, R, K, A, M] / [T, K, A, M]) when the engine provides them."""

    iou_type: str
    stats: dict[str, float]
    per_class: list[dict] = field(default_factory=list)
    engine: str = ""
    category_ids: list[int] = field(default_factory=list)
    precision: np.ndarray | None = None
    recall: np.ndarray | None = None
    diagnostics: list[str] = field(default_factory=list)
    n_predictions: int = 0
    n_skipped: int = 0
    n_unknown_images: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        """DESIGN.md §3: {"iou_type", <12 stats>, "per_class": [...]}."""
        d: dict[str, Any] = {"iou_type": self.iou_type}
        d.update({k: float(self.stats[k]) for k in STAT_KEYS})
        d["per_class"] = [dict(r) for r in self.per_class]
        return d


def per_class_from_arrays(precision: np.ndarray, recall: np.ndarray, category_ids: list[int],
                          names: dict[int, str], gt_counts: dict[int, int]) -> list[dict]:
    """AP, AP50, AP75, AR100 per category from COCOeval arrays (area all, maxDets 100), the
    detectron2 way: mean over entries > -1, -1 when there are none. Sorted by category id."""
    out = []
    for k, cid in enumerate(category_ids):
        def mean(x: np.ndarray) -> float:
            x = x[x > -1]
            return float(np.mean(x)) if x.size else -1.0

        out.append({"category_id": int(cid), "name": names.get(int(cid), str(cid)),
                    "ap": mean(precision[:, :, k, 0, -1]), "ap_50": mean(precision[0, :, k, 0, -1]),
                    "ap_75": mean(precision[5, :, k, 0, -1]), "ar_100": mean(recall[:, k, 0, -1]),
                    "gt_count": int(gt_counts.get(int(cid), 0))})
    return out


# ---------------------------------------------------------------------------------------
# engines


@contextlib.contextmanager
def _quiet():
    """Silence engines' progress prints, including those native code writes to fd 1/2."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = []
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(devnull, fd)
        os.close(devnull)
    except OSError:
        pass
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for fd, dup in saved:
            os.dup2(dup, fd)
            os.close(dup)


def _run_ultrafast(gt: GroundTruth, preds: Predictions, iou_type: str):
    from ultrafast_pycocotools import COCOeval

    cg = gt.handle("ultrafast")
    with _quiet():
        if preds.rows is not None and len(preds):
            cd = cg.loadRes(preds.rows)
        elif preds.path is not None:
            cd = cg.loadRes(preds.path)
        else:
            cd = cg.loadRes([dict(r) for r in preds.to_results()])
        e = COCOeval(cg, cd, iou_type, print_function=lambda *a, **k: None)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats, dtype=np.float64), e.eval["precision"], e.eval["recall"], list(e.params.catIds)


def _run_hotcoco(gt: GroundTruth, preds: Predictions, iou_type: str):
    from hotcoco import COCOeval

    cg = gt.handle("hotcoco")
    with _quiet():
        if preds.path is not None:
            cd = cg.load_res(preds.path)
        else:
            res = [dict(r) for r in preds.to_results()]
            if not res:
                return _run_ultrafast(gt, preds, iou_type)
            cd = cg.load_res(res)
        e = COCOeval(cg, cd, iou_type)
        e.evaluate()
        big = len(preds) >= 100_000
        if big:
            release_memory(False)  # the parallel matching's freed buffers, before accumulate allocates
        e.accumulate()
        e.summarize()
        if big:
            release_memory(False)  # again before `eval` copies the arrays out (~15 MB for COCO)
        ev = e.eval
        cats = list(e.params.cat_ids) if hasattr(e.params, "cat_ids") else sorted(gt.category_names)
    return np.asarray(e.stats, dtype=np.float64), np.asarray(ev["precision"]), np.asarray(ev["recall"]), cats


def _run_reference(gt: GroundTruth, preds: Predictions, iou_type: str, engine: str):
    """pycocotools or faster-coco-eval, on deep copies (they rewrite annotations in place)."""
    if engine == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    with _quiet():
        cg = COCO()
        cg.dataset = copy.deepcopy(gt.dataset())
        cg.createIndex()
        res = copy.deepcopy(preds.to_results())
        if res:
            cd = cg.loadRes(res)
        else:  # pycocotools cannot loadRes an empty list
            cd = COCO()
            cd.dataset = {"images": list(cg.dataset["images"]), "categories": copy.deepcopy(
                cg.dataset["categories"]), "annotations": []}
            cd.createIndex()
        kw = {"print_function": lambda *a, **k: None} if engine != "pycocotools" else {}
        e = COCOeval(cg, cd, iou_type, **kw)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats, dtype=np.float64), e.eval["precision"], e.eval["recall"], list(e.params.catIds)


def _run_torchmetrics(gt: GroundTruth, preds: Predictions, iou_type: str, per_class: bool):
    """torchmetrics' own numbers: MeanAveragePrecision fed through its coco_to_tm."""
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as exc:
        raise UsageError(f"backend 'torchmetrics' is not available: {exc}") from None
    with tempfile.TemporaryDirectory(prefix="vt-tm-") as tmp:
        gt_path = gt.path
        if gt_path is None:
            gt_path = str(Path(tmp) / "gt.json")
            Path(gt_path).write_text(json.dumps(gt.dataset()))
        pred_path = preds.path
        if pred_path is None or preds.fmt != "coco":
            pred_path = str(Path(tmp) / "pred.json")
            Path(pred_path).write_text(json.dumps(preds.to_results()))
        with _quiet():
            metric = MeanAveragePrecision(box_format="xywh", iou_type=iou_type, class_metrics=per_class,
                                          extended_summary=True)
            tm_preds, tm_targets = metric.coco_to_tm(pred_path, gt_path, iou_type=iou_type)
            metric.update(tm_preds, tm_targets)
            out = metric.compute()
    stats = np.array([float(out[k]) for k in STAT_KEYS], dtype=np.float64)
    prec = out.get("precision")
    rec = out.get("recall")
    classes = [int(c) for c in np.atleast_1d(np.asarray(out["classes"]))]
    return stats, (None if prec is None else np.asarray(prec, dtype=np.float64)), \
        (None if rec is None else np.asarray(rec, dtype=np.float64)), classes


def release_memory(collect: bool = True) -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after the validation pass over
    a large file, which would otherwise add to the engine's peak RSS). ``collect=False``
    skips the garbage collection (~10 ms) when no Python garbage is expected."""
    if collect:
        import gc

        gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _run(engine: str, gt: GroundTruth, preds: Predictions, iou_type: str, per_class: bool):
    if engine == "torchmetrics":
        return _run_torchmetrics(gt, preds, iou_type, per_class)
    if engine == "ultrafast":
        return _run_ultrafast(gt, preds, iou_type)
    if engine == "hotcoco":
        return _run_hotcoco(gt, preds, iou_type)
    return _run_reference(gt, preds, iou_type, engine)


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def choose_engine(backend: str, iou_type: str, gt: GroundTruth) -> tuple[str, str | None]:
    """(engine, note for stderr or None)."""
    b = _ALIASES.get(backend, backend)
    if b not in BACKENDS:
        raise UsageError(f"invalid --backend '{backend}': expected one of {', '.join(BACKENDS)}")
    modules = {"ultrafast": "ultrafast_pycocotools", "hotcoco": "hotcoco", "pycocotools": "pycocotools",
               "faster-coco-eval": "faster_coco_eval", "torchmetrics": "torchmetrics"}
    if b != "auto":
        if not _importable(modules[b]):
            raise UsageError(f"backend '{b}' is not installed (pip install {modules[b].replace('_', '-')})")
        note = None
        if b in ("ultrafast", "hotcoco") and gt.has_zero_id:
            note = (f"the ground truth has an annotation with id 0: {b} scores a match to it as a true "
                    f"positive, pycocotools as a false positive; use --backend auto for pycocotools' numbers")
        return b, note
    if gt.has_zero_id:
        eng = "faster-coco-eval" if _importable("faster_coco_eval") else "pycocotools"
        return eng, (f"the ground truth has an annotation with id 0, which pycocotools treats as "
                     f"'unmatched'; evaluating with {eng} to reproduce its numbers (slower)")
    if iou_type == "segm" and _importable("hotcoco"):
        return "hotcoco", None
    return "ultrafast", None


# ---------------------------------------------------------------------------------------
# diagnostics


def diagnostics(stats: dict, preds: Predictions, gt: GroundTruth, cats_with_gt: list[int] | None = None
                ) -> list[str]:
    """People-facing hints about the inputs and the numbers (for stderr)."""
    out = []
    if preds.n_unknown_images:
        out.append(f"{preds.n_unknown_images} prediction record(s) are for images absent from the ground "
                   f"truth and were not evaluated")
    if len(preds) == 0:
        out.append("no predictions to evaluate: every AP is 0 (or -1 without ground truth)")
        return out
    m50, m75 = stats["map_50"], stats["map_75"]
    if m50 >= 0.1 and m75 >= 0 and m75 < 0.5 * m50:
        out.append(f"AP50 {m50:.3f} is much higher than AP75 {m75:.3f}: objects are found but localised "
                   f"coarsely")
    low = preds.min_score
    if low >= PRETHRESHOLD_SCORE and len(preds) >= 20:
        out.append(f"no prediction scores below {PRETHRESHOLD_SCORE} (lowest {low:.3f}): the predictions look "
                   f"pre-thresholded, which lowers AP; evaluate with a low detection threshold "
                   f"(e.g. --threshold 0.001)")
    predicted = set(preds.predicted_categories.tolist())
    if cats_with_gt is None:
        cats_with_gt = [c for c, n in sorted(gt.gt_counts.items()) if n > 0]
    missing = [c for c in cats_with_gt if c not in predicted]
    if missing:
        names = ", ".join(gt.category_names.get(c, str(c)) for c in missing[:8])
        more = f" and {len(missing) - 8} more" if len(missing) > 8 else ""
        out.append(f"{len(missing)} ground-truth categor{'y is' if len(missing) == 1 else 'ies are'} never "
                   f"predicted (AP 0): {names}{more}")
    return out


# ---------------------------------------------------------------------------------------
# the entry point


def evaluate(gt: Any, predictions: Any, iou_type: str = "bbox", *, per_class: bool = False,
             backend: str = "auto", lenient: bool = False) -> EvalResult:
    """Evaluate predictions against a COCO ground truth; see the module docstring."""
    t0 = time.perf_counter()
    if iou_type not in ("bbox", "segm"):
        raise UsageError(f"invalid --iou-type '{iou_type}': expected bbox or segm")
    if is_tensor_style(predictions):
        if not isinstance(gt, (list, tuple)):
            raise UsageError("torchmetrics-style predictions need torchmetrics-style targets as gt")
        gt, predictions = tensors_to_coco(list(gt), list(predictions), iou_type)
    gtobj = GroundTruth.load(gt, iou_type)
    engine, note = choose_engine(backend, iou_type, gtobj)
    preds = load_predictions(predictions, gtobj, iou_type, lenient)
    if iou_type == "segm" and len(preds) >= 100_000:
        release_memory()  # masks: the engine's own peak is near the 0.5 GB budget
    try:
        stats, prec, rec, cats = _run(engine, gtobj, preds, iou_type, per_class)
    except (UsageError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:
        # the fast path leaves some checks (e.g. RLE counts) to the engine: name the record
        if preds.results is None and isinstance(predictions, (str, os.PathLike)):
            load_predictions(predictions, gtobj, iou_type, lenient, precise=True)
        raise InvalidInputError(f"{engine} could not evaluate {preds.source}: {type(exc).__name__}: {exc}"
                                ) from exc
    if preds.deferred_check is not None and not preds.deferred_check():
        # the check that ran beside the engine failed: validate record by record (raises and
        # names the record, or with lenient skips it) and evaluate what passes
        preds = load_predictions(predictions, gtobj, iou_type, lenient, precise=True)
        stats, prec, rec, cats = _run(engine, gtobj, preds, iou_type, per_class)
    stat_dict = {k: float(v) for k, v in zip(STAT_KEYS, stats.tolist())}
    rows: list[dict] = []
    if per_class and prec is not None and rec is not None and prec.ndim == 5:
        rows = per_class_from_arrays(prec, rec, cats, gtobj.category_names, gtobj.gt_counts)
    with_gt = None
    if rec is not None and rec.ndim == 4 and engine != "torchmetrics":
        # a category has (non-crowd) GT exactly when its recall is not -1
        with_gt = [int(c) for c, r in zip(cats, rec[0, :, 0, -1].tolist()) if r > -1]
    diags = ([note] if note else []) + diagnostics(stat_dict, preds, gtobj, with_gt)
    if preds.n_skipped:
        diags.insert(0, f"--lenient: skipped {preds.n_skipped} invalid prediction(s); first: "
                        f"{preds.skipped_reasons[0]}")
    return EvalResult(iou_type=iou_type, stats=stat_dict, per_class=rows, engine=engine, category_ids=cats,
                      precision=prec, recall=rec, diagnostics=diags, n_predictions=len(preds),
                      n_skipped=preds.n_skipped, n_unknown_images=preds.n_unknown_images,
                      seconds=time.perf_counter() - t0)
