"""The COCO evaluation engines behind ``evaluate`` and the choice between them.

Each ``run_*`` takes a :class:`GroundTruth` and validated :class:`Predictions` and returns
``(stats, precision, recall, category ids)`` with COCOeval's arrays. ``auto`` picks by
measurement (benchmarks/evaluate.py): ultrafast-pycocotools for bbox, hotcoco for segm and
keypoints; both give pycocotools' precision and recall bit for bit on every input shape
pycocotools scores (tests/test_evaluate_shapes.py), except when a GT annotation has id 0:
pycocotools then counts a match to it as a false positive (its match marker is the id, 0
meaning "unmatched"), which the native engines do not reproduce, so such ground truths go
to faster-coco-eval (within 2.2e-16) or pycocotools itself.
"""
from __future__ import annotations

import numpy as np

from visiontool.errors import InvalidInputError, UsageError
from visiontool.io.predictions import Predictions
from visiontool.services.ground_truth import GroundTruth, quiet
from visiontool.services.peak_memory import release_memory

BACKENDS = ("auto", "ultrafast", "hotcoco", "pycocotools", "faster-coco-eval", "torchmetrics")
ALIASES = {"ultrafast-pycocotools": "ultrafast", "ultrafast_pycocotools": "ultrafast",
           "faster_coco_eval": "faster-coco-eval", "fce": "faster-coco-eval", "tm": "torchmetrics"}
_MODULES = {"ultrafast": "ultrafast_pycocotools", "hotcoco": "hotcoco", "pycocotools": "pycocotools",
            "faster-coco-eval": "faster_coco_eval", "torchmetrics": "torchmetrics"}


class BadCounts(Exception):
    """The engine could not read some results' RLE counts (0-based indices in ``args[0]``)."""


def run_ultrafast(gt: GroundTruth, preds: Predictions, iou_type: str):
    from ultrafast_pycocotools import COCOeval

    cg = gt.handle("ultrafast")
    with quiet():
        if preds.rows is not None and len(preds):
            cd = cg.loadRes(preds.rows)
            preds.rows = None  # the engine holds its own copy: free ours (56 B a box) before it evaluates
            if len(preds) >= 100_000:
                release_memory(False)
        elif preds.path is not None:
            cd = cg.loadRes(preds.path)
            # the check runs on the rows the reader parsed (its compact store, a private field;
            # without it the check parses the file itself); NotFast: read it precisely
            compact = getattr(cd, "_compact", None)
            preds.settle(np.asarray(compact.array_rows(), dtype=np.float64) if compact is not None else None)
        else:
            cd = cg.loadRes([dict(r) for r in preds.to_results()])
        e = COCOeval(cg, cd, iou_type, print_function=lambda *a, **k: None)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return np.asarray(e.stats, dtype=np.float64), e.eval["precision"], e.eval["recall"], list(e.params.catIds)


def run_hotcoco(gt: GroundTruth, preds: Predictions, iou_type: str, arrays: bool = True):
    from hotcoco import COCOeval

    cg = gt.handle("hotcoco")
    with quiet():
        count_areas = False
        if preds.path is not None:
            cd = cg.load_res(preds.path)
            preds.settle()  # the check that ran beside the reader (NotFast: read it precisely)
            count_areas = iou_type == "segm"
            if len(preds) >= 100_000:
                release_memory(False)  # the parser's freed buffers, before evaluate allocates
        else:
            res = [dict(r) for r in preds.to_results()] if preds.rows is None else preds.rows
            if not len(res):
                return run_ultrafast(gt, preds, iou_type)
            cd = cg.load_res(res)
            del res
        e = COCOeval(cg, cd, iou_type)
        areas = _AreasBeside(cd) if count_areas else None
        e.evaluate()
        if areas is not None:
            _check_areas(cd, len(preds), areas.result())
        big = len(preds) >= 100_000
        if big:
            release_memory(False)  # the parallel matching's freed buffers, before accumulate allocates
        e.accumulate()
        e.summarize()
        cats = list(e.params.cat_ids) if hasattr(e.params, "cat_ids") else sorted(gt.category_names)
        stats = np.asarray(e.stats, dtype=np.float64)
        if not arrays:  # `eval` copies precision, recall and scores out (~16 MB for COCO) at the peak
            return stats, None, None, cats
        if big:
            release_memory(False)  # before `eval` copies the arrays out
        ev = e.eval
    return stats, np.asarray(ev["precision"]), np.asarray(ev["recall"]), cats


class _AreasBeside:
    """Count the results hotcoco gave an area, in a thread beside ``evaluate`` (which releases
    the GIL; hotcoco scores a result it gave no area without failing, and its numbers are
    discarded if there is one). Made just before ``evaluate``. The new thread first waits on an
    event, which releases the GIL, and the constructor sets it once ``start`` has returned:
    counting at once, the thread would hold the GIL the main thread needs to call ``evaluate``
    (measured: up to 6 ms, until the interpreter's switch interval ends). Results of images the
    ground truth does not have are not counted: the count then falls short and
    :func:`_check_areas` asks again over all results."""

    def __init__(self, cd):
        import threading

        go, self._n = threading.Event(), None
        self._thread = threading.Thread(target=self._count, args=(cd, go), daemon=True)
        self._thread.start()
        go.set()

    def _count(self, cd, go) -> None:
        go.wait()
        images = cd.get_img_ids()  # a few hundred images at a time: no list of every result at evaluate's peak
        self._n = sum(len(cd.get_ann_ids(img_ids=images[i:i + 256], area_rng=[0.0, 1e300]))
                      for i in range(0, len(images), 256))

    def result(self) -> int | None:
        self._thread.join()
        return self._n


def _check_areas(cd, n: int, with_area: int | None = None) -> None:
    """hotcoco reads a result whose RLE counts are not COCO's (a character outside '0'..'o',
    a negative run, runs beyond height x width) as one without an area: name them.
    ``with_area``: how many have one, if already counted (:class:`_AreasBeside`)."""
    if with_area == n:
        return
    ids = cd.get_ann_ids(area_rng=[0.0, 1e300])
    if len(ids) != n:
        bad = sorted(set(range(1, n + 1)) - set(ids))  # ids are positions + 1, as pycocotools numbers them
        raise BadCounts([i - 1 for i in bad])


def run_reference(gt: GroundTruth, preds: Predictions, iou_type: str, engine: str):
    """pycocotools or faster-coco-eval, on deep copies (they rewrite annotations in place)."""
    import copy

    if engine == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    res = copy.deepcopy(preds.to_results())
    if iou_type == "segm":
        _check_runs_cover_images(res)
    with quiet():
        cg = COCO()
        cg.dataset = copy.deepcopy(gt.dataset())
        cg.createIndex()
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


def rle_total(counts: str) -> int:
    """Sum of the runs of compressed COCO RLE counts (pycocotools' rleFrString)."""
    s = counts.encode("ascii") if isinstance(counts, str) else counts
    cnts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x = k = 0
        more = 1
        while more and p < n:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        cnts.append(x)
    return sum(cnts)


def _check_runs_cover_images(res: list) -> None:
    """pycocotools loops forever on a mask whose runs end before height x width (hotcoco reads
    the rest as background): refuse such masks before handing them to a reference engine."""
    for i, r in enumerate(res):
        seg = r.get("segmentation")
        if isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes)):
            h, w = seg["size"]
            total = rle_total(seg["counts"])
            if total != h * w:
                raise InvalidInputError(f"result {i}: segmentation.counts covers {total} pixels, not height x "
                                        f"width = {h * w}: pycocotools cannot score such a mask")


def run_torchmetrics(gt: GroundTruth, preds: Predictions, iou_type: str, per_class: bool):
    """torchmetrics' own numbers: MeanAveragePrecision fed through its coco_to_tm."""
    if iou_type == "keypoints":
        raise UsageError("backend 'torchmetrics' has no keypoints evaluation")
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as exc:
        raise UsageError(f"backend 'torchmetrics' is not available: {exc}") from None
    import json
    import tempfile
    from pathlib import Path

    from visiontool.services.evaluate import STAT_KEYS

    with tempfile.TemporaryDirectory(prefix="vt-tm-") as tmp:
        gt_path = gt.path
        if gt_path is None:
            gt_path = str(Path(tmp) / "gt.json")
            Path(gt_path).write_text(json.dumps(gt.dataset()))
        pred_path = preds.path
        if pred_path is None or preds.fmt != "coco":
            pred_path = str(Path(tmp) / "pred.json")
            Path(pred_path).write_text(json.dumps(preds.to_results()))
        with quiet():
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


def run(engine: str, gt: GroundTruth, preds: Predictions, iou_type: str, per_class: bool, arrays: bool = True):
    """(stats, precision, recall, category ids); ``arrays=False`` lets an engine skip copying
    COCOeval's arrays out (precision and recall may then be None)."""
    if engine not in ("ultrafast", "hotcoco"):
        preds.settle()  # these read the results as dicts: the check comes first
    if engine == "torchmetrics":
        return run_torchmetrics(gt, preds, iou_type, per_class)
    if engine == "ultrafast":
        return run_ultrafast(gt, preds, iou_type)
    if engine == "hotcoco":
        return run_hotcoco(gt, preds, iou_type, arrays or per_class)
    return run_reference(gt, preds, iou_type, engine)


def importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def choose_engine(backend: str, iou_type: str, gt: GroundTruth) -> tuple[str, str | None]:
    """(engine, note for stderr or None)."""
    b = ALIASES.get(backend, backend)
    if b not in BACKENDS:
        raise UsageError(f"invalid --backend '{backend}': expected one of {', '.join(BACKENDS)}")
    if b != "auto":
        if not importable(_MODULES[b]):
            raise UsageError(f"backend '{b}' is not installed (pip install {_MODULES[b].replace('_', '-')})")
        note = None
        if b in ("ultrafast", "hotcoco") and gt.has_zero_id:
            note = (f"the ground truth has an annotation with id 0: {b} scores a match to it as a true "
                    f"positive, pycocotools as a false positive; use --backend auto for pycocotools' numbers")
        return b, note
    if gt.has_zero_id:
        eng = "faster-coco-eval" if importable("faster_coco_eval") else "pycocotools"
        return eng, (f"the ground truth has an annotation with id 0, which pycocotools treats as "
                     f"'unmatched'; evaluating with {eng} to reproduce its numbers (slower)")
    if iou_type in ("segm", "keypoints") and importable("hotcoco"):
        return "hotcoco", None
    return "ultrafast", None
