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

``iou_type`` is ``bbox``, ``segm`` or ``keypoints`` (COCO person keypoints: 17 per
instance, OKS; 10 stats, see :data:`KEYPOINT_STAT_KEYS`). Every input shape pycocotools'
``loadRes`` + ``COCOeval`` scores gets its numbers (see :mod:`visiontool.io.pred_checks`);
what it cannot score is an error naming the first offending record.

Engines (``backend``, :mod:`visiontool.services.eval_engines`): ``auto`` picks by
measurement -- ultrafast-pycocotools for bbox, hotcoco for segm and keypoints, both
bit-identical to pycocotools -- except for ground truths with an annotation id 0
(faster-coco-eval or pycocotools then). ``pycocotools``, ``faster-coco-eval``, ``hotcoco``,
``ultrafast`` force an engine; ``torchmetrics`` runs ``MeanAveragePrecision`` fed through
its own ``coco_to_tm`` (its numbers, which differ; it imports torch).
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visiontool.errors import InvalidInputError, UsageError
from visiontool.io import pred_early
from visiontool.io.readers import one_stdin
from visiontool.io.predictions import (
    IOU_TYPES,
    NotFast,
    Predictions,
    is_tensor_style,
    load_predictions,
    tensors_to_coco,
)
from visiontool.services.eval_engines import (  # noqa: F401  (re-exported: compare and tests use them)
    ALIASES,
    BACKENDS,
    BadCounts,
    choose_engine,
    run,
)
from visiontool.services.ground_truth import EngineCannotReadGT, GroundTruth  # noqa: F401
from visiontool.services.peak_memory import release_memory

STAT_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
# pycocotools' summarizeKps, in its order: AP and AR at 20 detections per image, OKS .50:.95,
# .50, .75, medium and large objects (COCO's keypoint protocol has no small range)
KEYPOINT_STAT_KEYS = ("map", "map_50", "map_75", "map_medium", "map_large",
                      "mar", "mar_50", "mar_75", "mar_medium", "mar_large")


def stat_keys(iou_type: str) -> tuple[str, ...]:
    return KEYPOINT_STAT_KEYS if iou_type == "keypoints" else STAT_KEYS


PRETHRESHOLD_SCORE = 0.05


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
    n_unscored: int = 0  # predictions of categories the GT lacks (left out, as COCOeval leaves them)
    seconds: float = 0.0
    # the GroundTruth scored against, with the engine's handle: pass it as ``gt`` to score other
    # predictions without reading it again
    ground_truth: Any = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        """DESIGN.md §3: {"iou_type", <12 stats (10 for keypoints)>, "per_class": [...]}."""
        d: dict[str, Any] = {"iou_type": self.iou_type}
        d.update({k: float(self.stats[k]) for k in stat_keys(self.iou_type)})
        d["per_class"] = [dict(r) for r in self.per_class]
        return d


def per_class_from_arrays(precision: np.ndarray, recall: np.ndarray, category_ids: list[int],
                          names: dict[int, str], gt_counts: dict[int, int], ar_key: str = "ar_100") -> list[dict]:
    """AP, AP50, AP75, AR100 per category from COCOeval arrays (area all, the largest
    maxDets: 100, or 20 for keypoints with ``ar_key="ar_20"``), the detectron2 way: mean
    over entries > -1, -1 when there are none. Sorted by category id."""
    out = []
    for k, cid in enumerate(category_ids):
        def mean(x: np.ndarray) -> float:
            x = x[x > -1]
            return float(np.mean(x)) if x.size else -1.0

        out.append({"category_id": int(cid), "name": names.get(int(cid), str(cid)),
                    "ap": mean(precision[:, :, k, 0, -1]), "ap_50": mean(precision[0, :, k, 0, -1]),
                    "ap_75": mean(precision[5, :, k, 0, -1]), ar_key: mean(recall[:, k, 0, -1]),
                    "gt_count": int(gt_counts.get(int(cid), 0))})
    return out


# ---------------------------------------------------------------------------------------
# diagnostics


def diagnostics(stats: dict, preds: Predictions, gt: GroundTruth, cats_with_gt: list[int] | None = None
                ) -> list[str]:
    """People-facing hints about the inputs and the numbers (for stderr)."""
    out = []
    if preds.n_unknown_images:
        out.append(f"{preds.n_unknown_images} prediction record(s) are for images absent from the ground "
                   f"truth and were not evaluated")
    if preds.n_unscored:
        out.append(f"{preds.n_unscored} prediction(s) are of categories the ground truth does not have "
                   f"({', '.join(preds.unscored_categories)}); COCOeval scores the ground truth's categories "
                   f"only, so they count for nothing (pycocotools' numbers)")
    if preds.size_mismatches:
        out.append(f"{preds.size_mismatches} prediction mask(s) are not the size of their ground-truth image "
                   f"(first: {preds.size_mismatch_example}); scored as pycocotools scores them: a mask keeps "
                   f"its own size (area and box), so in segm it never matches a ground-truth mask (IoU -1, a "
                   f"false positive). Resize masks to the original image size first")
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


def _is_cluster_run(path) -> bool:
    """``path`` is the --output-dir of an ``--engine ray`` run (any other directory is refused
    by the predictions reader as a directory)."""
    if not os.path.isdir(path):
        return False
    from visiontool.io.shards import OutputDir

    return OutputDir(os.fspath(path)).has_job()


def _cluster_run_records(directory) -> tuple[list[dict], str | None]:
    """The records of an ``--engine ray --output-dir DIR`` run (what ``visiontool merge DIR``
    writes), and a note when the run has not finished or some of its images failed."""
    from visiontool.services.merge import iter_records, open_run, unfinished

    state = open_run(directory)  # UsageError when DIR is not such a run
    records = list(iter_records(directory, state=state))
    notes = []
    if not state.complete:
        notes.append(f"{os.fspath(directory)} holds {state.rows} of {state.total} images: {unfinished(state)}; "
                     "rerun it with --resume (scoring what is there)")
    if state.failed:
        notes.append(f"{state.failed} of {state.total} images failed in that run and have no predictions")
    return records, "; ".join(notes) or None


def evaluate(gt: Any, predictions: Any, iou_type: str = "bbox", *, per_class: bool = False,
             backend: str = "auto", lenient: bool = False, arrays: bool = True, warn: bool = True) -> EvalResult:
    """Evaluate predictions against a COCO ground truth; see the module docstring.

    ``warn``: scoring that departs from what the user likely meant but is pycocotools' own
    (prediction masks of another size than their image) also raises a Python
    ``UserWarning`` (the CLI passes False: it prints every diagnostic on stderr itself).

    ``arrays=False``: the caller needs no ``precision`` / ``recall`` arrays (no per-class
    table, no PR curves), so an engine may skip copying them out at its memory peak (hotcoco:
    ~16 MB at COCO scale); they are then None unless ``per_class``."""
    t0 = time.perf_counter()
    if iou_type not in IOU_TYPES:
        raise UsageError(f"invalid --iou-type '{iou_type}': expected bbox, segm or keypoints")
    one_stdin([gt, predictions])
    if is_tensor_style(predictions):
        if not isinstance(gt, (list, tuple)):
            raise UsageError("torchmetrics-style predictions need torchmetrics-style targets as gt")
        gt, predictions = tensors_to_coco(list(gt), list(predictions), iou_type)
    # a large results file starts being checked in a child now, beside the GT and the engine
    early = pred_early.start(predictions, iou_type)
    try:
        gtobj = GroundTruth.load(gt, iou_type)
        gtobj.require(iou_type)
        engine, note = choose_engine(backend, iou_type, gtobj)
        run_note = None
        if isinstance(predictions, (str, os.PathLike)) and _is_cluster_run(predictions):
            predictions, run_note = _cluster_run_records(predictions)
        preds = load_predictions(predictions, gtobj, iou_type, lenient, early=early)
        if preds.pending is None and iou_type == "segm" and len(preds) >= 100_000:
            release_memory(False)  # masks: the engine's own peak is near the 0.5 GB budget
        try:
            (stats, prec, rec, cats), engine, note = _score(engine, note, backend, gtobj, preds, predictions,
                                                            iou_type, per_class, lenient, arrays)
        except NotFast:  # the check beside the engine refused the file: read it record by record
            preds = load_predictions(predictions, gtobj, iou_type, lenient, precise=True)
            (stats, prec, rec, cats), engine, note = _score(engine, note, backend, gtobj, preds, predictions,
                                                            iou_type, per_class, lenient, arrays)
    finally:
        if early is not None:
            early.cancel()  # reaps the child if an error came first; a no-op once its answer is read
    if preds.deferred_check is not None and not preds.deferred_check():
        # the check that ran beside the engine failed: validate record by record (raises and
        # names the record, or with lenient skips it) and evaluate what passes
        preds = load_predictions(predictions, gtobj, iou_type, lenient, precise=True)
        stats, prec, rec, cats = run(engine, gtobj, preds, iou_type, per_class, arrays)
    keys = stat_keys(iou_type)
    stat_dict = {k: float(v) for k, v in zip(keys, stats.tolist())}
    rows: list[dict] = []
    if per_class and prec is not None and rec is not None and prec.ndim == 5:
        rows = per_class_from_arrays(prec, rec, cats, gtobj.category_names, gtobj.gt_counts,
                                     "ar_20" if iou_type == "keypoints" else "ar_100")
    with_gt = None
    if rec is not None and rec.ndim == 4 and engine != "torchmetrics":
        # a category has (non-crowd) GT exactly when its recall is not -1
        with_gt = [int(c) for c, r in zip(cats, rec[0, :, 0, -1].tolist()) if r > -1]
    diags = [n for n in (run_note, note) if n] + _gt_diagnostics(gtobj, iou_type)
    diags += diagnostics(stat_dict, preds, gtobj, with_gt)
    if warn:
        import warnings

        for d in diags:
            if "not the size of their" in d:
                warnings.warn(d, UserWarning, stacklevel=2)
    if preds.n_skipped:
        diags.insert(0, f"--lenient: skipped {preds.n_skipped} invalid prediction(s); first: "
                        f"{preds.skipped_reasons[0]}")
    return EvalResult(iou_type=iou_type, stats=stat_dict, per_class=rows, engine=engine, category_ids=cats,
                      precision=prec, recall=rec, diagnostics=diags, n_predictions=len(preds),
                      n_skipped=preds.n_skipped, n_unknown_images=preds.n_unknown_images,
                      n_unscored=preds.n_unscored, seconds=time.perf_counter() - t0, ground_truth=gtobj)


def _score(engine: str, note: str | None, backend: str, gtobj: GroundTruth, preds: Predictions, predictions: Any,
           iou_type: str, per_class: bool, lenient: bool, arrays: bool):
    """``((stats, precision, recall, category ids), engine, note)``: the engine's run, with
    pycocotools' engine when the chosen one cannot read the GT, and an engine's error turned
    into one line about the input it concerns. Raises :class:`NotFast` when the check beside
    the engine refused the file."""
    try:
        try:
            return run(engine, gtobj, preds, iou_type, per_class, arrays), engine, note
        except EngineCannotReadGT as exc:
            if ALIASES.get(backend, backend) != "auto":
                raise
            # the engine's reader refused metadata pycocotools ignores: pycocotools' own engine
            note = f"{exc}; evaluated with pycocotools instead (slower)"
            return run("pycocotools", gtobj, preds, iou_type, per_class, arrays), "pycocotools", note
    except (UsageError, KeyboardInterrupt, MemoryError, NotFast):
        raise
    except Exception as exc:
        preds.settle()  # a file the engine read before its check finished: NotFast if the check refuses it
        # the fast path leaves some checks (RLE counts) to the engine: name the record
        if preds.results is None and isinstance(predictions, (str, os.PathLike)):
            parsed = load_predictions(predictions, gtobj, iou_type, lenient, precise=True)
            if preds.path is not None and not isinstance(exc, BadCounts):
                # the engine's own reader refused a file Python's json reads, as pycocotools does
                # (hotcoco: a key given twice in a result): the engine scores the parsed records
                try:
                    records = dataclasses.replace(parsed, results=parsed.to_results(), path=None)
                    scored = run(engine, gtobj, records, iou_type, per_class, arrays)
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    pass
                else:
                    why = (f"{engine}'s reader refused {preds.source} ({type(exc).__name__}: {exc}); scored its "
                           "records as pycocotools reads them")
                    return scored, engine, f"{note}; {why}" if note else why
        if isinstance(exc, BadCounts):
            raise InvalidInputError(f"{preds.source}: result {exc.args[0][0]}: segmentation.counts is not a "
                                    f"COCO RLE") from None
        # both inputs checked out, so the engine's message decides which one it is about
        raise InvalidInputError(f"{engine} could not evaluate {preds.source} against {gtobj.label}: "
                                f"{type(exc).__name__}: {exc}"
                                ) from exc


def _gt_diagnostics(gt: GroundTruth, iou_type: str) -> list[str]:
    """A ground truth without annotations is scored as pycocotools scores it (every AP and AR
    -1: there is nothing to find), with a warning, since that is rarely what was meant; so
    are GT masks of another size than their image (no result mask of the image's size
    matches them)."""
    if iou_type == "segm" and gt.rle_size_mismatch:
        n, first = gt.rle_size_mismatch
        return [f"{gt.label}: {n} ground-truth mask(s) are not the size of their image (first: {first}); "
                f"scored as pycocotools scores them: no prediction mask of the image's size can match them"]
    if gt.n_annotations:
        return []
    what = "has no 'annotations' list" if not gt.has_annotations else "has an empty 'annotations' list"
    return [f"{gt.label} {what}: with nothing to find every AP and AR is -1 (pycocotools' numbers); "
            f"is it an image list rather than the annotation file?"]
