"""Compare prediction sets and detectors side by side on one COCO ground truth.

Pure orchestration over the two existing code paths (no second evaluator or inference loop):

* every run is scored by :func:`visiontool.services.evaluate.evaluate` against one
  :class:`~visiontool.services.evaluate.GroundTruth` parsed once;
* a model run goes through :func:`visiontool.services.detect.run_detect` (one model at a
  time, its cached weights released before the next one loads), its records become COCO
  results with :func:`visiontool.convert.to_coco_results` on the GT's index, and those are
  evaluated like a file.

Python API::

    from visiontool import compare
    res = compare("gt.json", ["a.json", "b.json"], names=["A", "B"])
    res = compare("gt.json", models=["facebook/detr-resnet-50", "./my-detr"], images="photos/")
    res.to_dict()        # DESIGN.md §3: {"runs": [{"name", <evaluate keys>, "delta", ...}]}

The first run is the baseline; ``delta`` holds ``run - baseline`` for the 12 COCO stats.
A single run is allowed (its deltas are 0). File runs come first, then model runs, in the
order given.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence


from visiontool.errors import UsageError, VisionToolError
from visiontool.io.readers import check_input_path, one_stdin
from visiontool.services.compare_runs import (  # noqa: F401 (the public names of compare)
    MODEL_KEYS,
    STAT_KEYS,
    CompareResult,
    CompareRun,
    deltas,
    parse_sort_key,
)
from visiontool.services.duplicates import DUPLICATE_IOU, DUPLICATE_MIN_SCORE, duplicate_flags, duplicate_rate
from visiontool.services.peak_memory import PeakMemory, release_memory

DEFAULT_THRESHOLD = 0.0  # AP integrates over the whole precision-recall curve: keep low scores

# ---------------------------------------------------------------------------------------
# names


def _default_name(source: Any, kind: str, index: int) -> str:
    if isinstance(source, (str, os.PathLike)):
        s = str(source).rstrip("/\\")
        if kind == "file":
            return Path(s).stem or s
        return Path(s).name if Path(s).expanduser().exists() else s  # a hub id names itself
    return f"run{index + 1}"


def _unique_names(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            n = f"{n}#{seen[n]}"
        else:
            seen[n] = 1
        out.append(n)
    return out


def safe_file_name(name: str) -> str:
    """A run name usable as a file name (for --save-preds)."""
    s = re.sub(r"[^\w.\-]+", "_", name).strip("._")
    return s or "run"


# ---------------------------------------------------------------------------------------
# the entry point


def compare(
    gt: Any,
    predictions: Any = None,
    *,
    models: Sequence[str] | None = None,
    images: Any = None,
    names: Sequence[str] | None = None,
    iou_type: str = "bbox",
    per_class: bool = False,
    backend: str = "auto",
    lenient: bool = False,
    threshold: float = DEFAULT_THRESHOLD,
    max_det: int = 100,
    batch_size: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    runtime: str = "torch",
    recursive: bool = False,
    save_preds: str | os.PathLike | None = None,
    duplicate_iou: float = DUPLICATE_IOU,
    duplicate_min_score: float = DUPLICATE_MIN_SCORE,
    warmup: bool = True,
    on_event: Callable[[str], None] | None = None,
    warn: Callable[[str], None] | None = None,
) -> CompareResult:
    """Score prediction sets and/or models on one ground truth; the first run is the baseline.

    ``gt``: COCO ground truth (path, dict or GroundTruth). ``predictions``: one or a list of
    anything :func:`~visiontool.services.evaluate.evaluate` accepts (paths to COCO results
    or visiontool json/jsonl records, lists of dicts). ``models``: hub ids or local
    directories, run on ``images`` (files, directories, globs; only those the GT names are
    run) with the shared ``threshold`` (default 0.0: AP needs low-score detections),
    ``max_det``, ``batch_size``, ``device``, ``dtype``, ``runtime`` (a load option: torch |
    openvino | onnxruntime | auto); with ``iou_type="segm"`` a model that makes
    no masks gets an error row. ``names`` label the runs in order
    (files first, then models). ``save_preds``: a directory receiving each model's COCO
    results as ``<name>.json``. ``warmup``: run each model on one image before timing it
    (and, once, the first model before any memory is measured), so no model is charged for
    one-time set-up.

    Invalid input (missing files, malformed predictions, bad options) raises UsageError /
    InvalidInputError before any model runs. A model that cannot be loaded or run does
    not stop the others: its run carries ``error``.
    """
    from visiontool.services.evaluate import GroundTruth, evaluate

    say = on_event or (lambda _msg: None)
    tell = warn or (lambda _msg: None)
    preds = [] if predictions is None else (
        list(predictions) if isinstance(predictions, (list, tuple)) and not _is_result_list(predictions)
        else [predictions])
    models = list(models or [])
    # -- everything a user can get wrong, before any evaluation or model load
    if iou_type not in ("bbox", "segm"):
        raise UsageError(f"invalid --iou-type '{iou_type}': expected bbox or segm")
    if not preds and not models:
        raise UsageError("nothing to compare: give prediction files and/or --model (with --images)")
    if models and images is None:
        raise UsageError("--model needs --images DIR (the images the ground truth describes)")
    if images is not None and not models:
        raise UsageError("--images is only used with --model")
    total = len(preds) + len(models)
    names = list(names or [])
    if len(names) > total:
        raise UsageError(f"{len(names)} --name values for {total} run{'s' if total != 1 else ''}")
    paths = [str(p) for p in preds if isinstance(p, (str, os.PathLike))]
    for p in paths:
        check_input_path(p, "predictions")
    one_stdin([gt] + paths)
    sources = [(p, "file") for p in preds] + [(m, "model") for m in models]
    labels = _unique_names([names[i] if i < len(names) and names[i] else _default_name(s, k, i)
                            for i, (s, k) in enumerate(sources)])
    gtobj = GroundTruth.load(gt)
    named_images: list[str] = []
    if models:
        from visiontool.services.detect import check_detect_options

        check_detect_options(threshold, batch_size)
        from visiontool.device import resolve_device, validate_device_spec, validate_dtype_spec
        from visiontool.models.registry import check_detector_spec

        validate_device_spec(device)
        validate_dtype_spec(dtype)
        for m in models:
            check_detector_spec(m)

        resolve_device(device)  # an absent --device cuda fails here, not after the prediction files
        named_images = _images_in_gt(images, recursive, gtobj, tell)
    if save_preds is not None and Path(save_preds).exists() and not Path(save_preds).is_dir():
        raise UsageError(f"--save-preds '{save_preds}' is a file; expected a directory")

    runs: list[CompareRun] = []
    # -- prediction files: cheap, and an invalid one stops everything (exit 2) before models run
    for (source, _), name in zip(sources[:len(preds)], labels):
        res = evaluate(gtobj, source, iou_type, per_class=per_class, backend=backend, lenient=lenient, warn=False)
        runs.append(CompareRun(name, "file", str(source) if isinstance(source, (str, os.PathLike)) else "<object>",
                               iou_type, res.stats, res.per_class, diagnostics=res.diagnostics,
                               n_predictions=res.n_predictions))
    # -- models, one at a time
    for k, (model, name) in enumerate(zip(models, labels[len(preds):])):
        say(f"compare: [{k + 1}/{len(models)}] {name}: detecting on {len(named_images)} image"
            f"{'s' if len(named_images) != 1 else ''}")
        run, results = _run_model(model, name, named_images, gtobj, threshold=threshold, max_det=max_det,
                                  batch_size=batch_size, device=device, dtype=dtype, warn=tell,
                                  load_options={} if runtime == "torch" else {"runtime": runtime},
                                  duplicate_iou=duplicate_iou, duplicate_min_score=duplicate_min_score,
                                  warmup=warmup, first=not any(r.kind == "model" and r.error is None for r in runs),
                                  iou_type=iou_type)
        if run.error is None:
            if save_preds is not None:
                run.saved_to = str(_save(results, save_preds, name))
            res = evaluate(gtobj, results, iou_type, per_class=per_class, backend=backend, lenient=lenient,
                           warn=False)
            run.stats, run.per_class = res.stats, res.per_class
            # we chose the threshold: evaluate's "looks pre-thresholded" hint would only mislead
            # (a model with few queries simply has no low scores to give)
            run.diagnostics = [d for d in res.diagnostics
                               if not (d.startswith("no prediction scores below") and threshold < 0.05)]
            run.n_predictions = res.n_predictions
            say(f"compare: {name}: AP {res.stats['map']:.4f}, {run.images_per_s or 0:.2f} images/s, "
                f"peak +{run.peak_memory_mb or 0:.0f} MB")
        runs.append(run)
    # -- deltas against the baseline
    base = runs[0]
    for r in runs:
        if r.ok and base.ok:
            r.delta = deltas(r.stats, base.stats)
    return CompareResult(runs, iou_type, gtobj.shown)


def _is_result_list(obj: Any) -> bool:
    """A single in-memory prediction set (a list of dicts), as opposed to a list of sets."""
    return len(obj) > 0 and all(isinstance(x, dict) for x in obj)


def _images_in_gt(images: Any, recursive: bool, gtobj, tell: Callable[[str], None]) -> list[str]:
    """The image files to run models on: those of ``images`` the GT names (by file name)."""
    from visiontool.io.images import expand_sources

    items = list(images) if isinstance(images, (list, tuple)) else [images]
    found = [s.name for s in expand_sources([str(x) for x in items], recursive=recursive)]
    matched = [n for n in found if gtobj.index.image_id_for(n) is not None]
    if not matched:
        raise UsageError(f"none of the {len(found)} images given is named in the ground truth's "
                         f"images[].file_name (e.g. '{os.path.basename(found[0])}')")
    if len(matched) < len(found):
        tell(f"{len(found) - len(matched)} of {len(found)} images are not in the ground truth and were skipped")
    ids = {gtobj.index.image_id_for(n) for n in matched}
    missing = len(gtobj.image_id_set - ids)
    if missing:
        tell(f"{missing} ground-truth image(s) have no file among the images given: their objects count as "
             f"missed by every model")
    return matched


def _run_model(model: str, name: str, named_images: list[str], gtobj, *, threshold: float, max_det: int,
               batch_size: int, device: str, dtype: str, warn: Callable[[str], None],
               duplicate_iou: float, duplicate_min_score: float, warmup: bool = True,
               first: bool = False, iou_type: str = "bbox",
               load_options: dict | None = None) -> tuple[CompareRun, list[dict]]:
    """Load, run and time one model through detect's path; memory released before and after.

    Peak memory covers the load, the warm-up image and the timed pass; the timings are the
    timed pass's (model loading excluded, the warm-up image not counted). Returns the run and
    its COCO results (ids mapped on the GT)."""
    from visiontool.convert import to_coco_results
    from visiontool.models import loader
    from visiontool.services.detect import run_detect

    run = CompareRun(name, "model", model, iou_type)
    common = dict(threshold=threshold, max_det=max_det, device=device, dtype=dtype, gt=gtobj.index,
                  raise_on_failure=False, warn=warn, load_options=dict(load_options or {}))
    _release()
    _warm_imports(model)
    try:
        if first and warmup:
            # once per process: the runtime's one-time set-up (thread pools, kernel caches,
            # allocator arenas) would otherwise be charged to the first model only
            run_detect(named_images[:1], model, batch_size=1, **common)
            _release()
        with PeakMemory(_device_name(device)) as mem:
            if warmup:  # load + one untimed image: the timed pass below reuses the loaded model
                run_detect(named_images[:1], model, batch_size=1, **common)
            det = run_detect(named_images, model, batch_size=batch_size, **common)
    except UsageError:
        raise
    except VisionToolError as exc:
        run.error = str(exc)
        _release()
        return run, []
    except (KeyboardInterrupt, MemoryError):
        loader.release()
        raise
    except Exception as exc:  # noqa: BLE001 - a model that breaks mid-run is reported in its row
        run.error = f"{type(exc).__name__}: {exc}"
        _release()
        return run, []
    t = det.timings
    info = det.info
    run.params, run.needs_nms, run.device, run.dtype = int(info.params), info.needs_nms, info.device, info.dtype
    run.paradigm, run.family, run.backend = info.paradigm, info.family, info.backend
    run.ms_per_image = t.ms_per_image()
    run.images_per_s = t.images / t.wall if t.wall > 0 else None
    run.peak_memory_mb = mem.mb
    run.images = t.images
    run.failed_images = list(det.failed)
    ok = [r for r in det.results if not r.error]
    if iou_type == "segm" and not info.can("masks"):
        run.error = (f"{info.family} ({info.backend}) gives boxes only: --iou-type segm needs a model that makes "
                     "masks (Mask R-CNN, an Ultralytics -seg model, Mask2Former/OneFormer/EoMT)")
        del det
        _release()
        return run, []
    run.duplicate_rate = duplicate_rate(ok, duplicate_min_score, duplicate_iou)
    stats: dict = {}
    coco: list[dict] = []
    for r in ok:
        coco.extend(to_coco_results(r, gtobj.index, stats))
    if stats.get("unmatched_labels"):
        labels = ", ".join(sorted(str(x) for x in stats["unmatched_labels"]))
        warn(f"{name}: labels without a ground-truth category of the same name were not scored: {labels}")
    del det
    _release()
    return run, coco


def _device_name(device: str) -> str:
    from visiontool.device import resolve_device

    try:
        return resolve_device(device)
    except VisionToolError:
        return "cpu"


def _warm_imports(model: str) -> None:
    """Import the model's code before memory is measured, so the first model is not charged
    for library imports the others reuse (the adapter's own ``warm`` hook)."""
    from visiontool.models.registry import warm

    try:
        warm(model)
    except (VisionToolError, ImportError, KeyError, ValueError):
        pass  # the load itself reports what is wrong


def _release() -> None:
    """Drop cached models and hand freed heap back to the OS before the next measurement."""
    from visiontool.models import loader

    loader.release()
    release_memory()


def _save(results: list[dict], directory: str | os.PathLike, name: str) -> Path:
    """Write one model's COCO results to ``directory/<name>.json`` (atomically)."""
    import json

    from visiontool.io.output import open_output

    path = Path(directory) / f"{safe_file_name(name)}.json"
    with open_output(path) as fh:
        json.dump(results, fh)
        fh.write("\n")
    return path


__all__ = ["compare", "CompareResult", "CompareRun", "duplicate_flags", "duplicate_rate", "PeakMemory",
           "parse_sort_key", "deltas", "DEFAULT_THRESHOLD", "STAT_KEYS", "MODEL_KEYS"]
