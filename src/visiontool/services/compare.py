"""Compare prediction sets and detectors side by side on one COCO ground truth.

Pure orchestration over the two existing code paths (no second evaluator or inference loop):

* every run is scored by :func:`visiontool.services.evaluate.evaluate` against one
  :class:`~visiontool.services.evaluate.GroundTruth` parsed once;
* a model run goes through :func:`visiontool.services.detect.run_detect` (one model at a
  time, its cached weights released before the next one loads), its records become COCO
  results with :func:`visiontool.io.records.coco_results` on the GT's index, and those are
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

import gc
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from visiontool.errors import UsageError, VisionToolError

STAT_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
MODEL_KEYS = ("params", "ms_per_image", "images_per_s", "peak_memory_mb", "needs_nms", "duplicate_rate")
DEFAULT_THRESHOLD = 0.0  # AP integrates over the whole precision-recall curve: keep low scores
DUPLICATE_IOU = 0.7
DUPLICATE_MIN_SCORE = 0.5  # duplicates are counted among the detections a user would keep

# short names people type -> JSON keys (for --sort-by); "lower is better" keys sort ascending
SORT_ALIASES = {"ap": "map", "ap50": "map_50", "ap75": "map_75", "aps": "map_small", "apm": "map_medium",
                "apl": "map_large", "ar1": "mar_1", "ar10": "mar_10", "ar100": "mar_100", "ars": "mar_small",
                "arm": "mar_medium", "arl": "mar_large", "fps": "images_per_s", "ms": "inference",
                "memory": "peak_memory_mb", "mem": "peak_memory_mb", "dup": "duplicate_rate",
                "duplicates": "duplicate_rate", "preprocess": "preprocess", "inference": "inference",
                "postprocess": "postprocess"}
SORT_KEYS = STAT_KEYS + ("name", "params", "images_per_s", "peak_memory_mb", "duplicate_rate",
                         "preprocess", "inference", "postprocess")
_ASCENDING = {"name", "params", "peak_memory_mb", "duplicate_rate", "preprocess", "inference", "postprocess"}


# ---------------------------------------------------------------------------------------
# records


@dataclass
class CompareRun:
    """One row: a prediction set or a model, its COCO numbers and (models) cost figures.

    ``stats``: the 12 COCO stats (torchmetrics key names, -1 where COCO says -1);
    ``delta``: ``stats - baseline stats`` (None where only one side is -1);
    ``error``: why the run has no numbers (a model that failed to load or run).
    """

    name: str
    kind: str  # "file" | "model"
    source: str
    iou_type: str = "bbox"
    stats: dict[str, float] | None = None
    per_class: list[dict] = field(default_factory=list)
    delta: dict[str, float | None] | None = None
    error: str | None = None
    diagnostics: list[str] = field(default_factory=list)
    n_predictions: int = 0
    # model runs only
    params: int | None = None
    ms_per_image: dict[str, float] | None = None
    images_per_s: float | None = None
    peak_memory_mb: float | None = None
    needs_nms: bool | None = None
    duplicate_rate: float | None = None
    images: int = 0
    failed_images: list[str] = field(default_factory=list)
    device: str | None = None
    dtype: str | None = None
    saved_to: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.stats is not None

    def value(self, key: str) -> Any:
        """A sortable/plottable value by JSON key (ms keys read ``ms_per_image``)."""
        if key in STAT_KEYS:
            return None if self.stats is None else self.stats[key]
        if key in ("preprocess", "inference", "postprocess"):
            return None if self.ms_per_image is None else self.ms_per_image[key]
        return getattr(self, key, None)

    def to_dict(self) -> dict:
        """DESIGN.md §3: name, every evaluate key, delta, and the model-only keys for models."""
        d: dict[str, Any] = {"name": self.name, "iou_type": self.iou_type}
        for k in STAT_KEYS:
            d[k] = None if self.stats is None else float(self.stats[k])
        d["per_class"] = [dict(r) for r in self.per_class]
        d["delta"] = None if self.delta is None else dict(self.delta)
        if self.kind == "model":
            d.update(params=self.params, ms_per_image=None if self.ms_per_image is None else dict(self.ms_per_image),
                     images_per_s=self.images_per_s, peak_memory_mb=self.peak_memory_mb,
                     needs_nms=self.needs_nms, duplicate_rate=self.duplicate_rate)
        if self.error is not None:
            d["error"] = self.error
        return d


@dataclass
class CompareResult:
    """All runs, baseline first (``runs[0]``)."""

    runs: list[CompareRun]
    iou_type: str = "bbox"
    gt: str | None = None

    @property
    def baseline(self) -> CompareRun:
        return self.runs[0]

    @property
    def failed(self) -> list[CompareRun]:
        """Runs without numbers, or model runs on which some images could not be read."""
        return [r for r in self.runs if not r.ok or r.failed_images]

    def to_dict(self) -> dict:
        return {"runs": [r.to_dict() for r in self.runs]}

    def sorted(self, key: str | None) -> "CompareResult":
        """The baseline stays first; the other runs ordered by ``key`` (see :func:`parse_sort_key`),
        runs without a value last."""
        if not key:
            return self
        name, descending = parse_sort_key(key)
        head, rest = self.runs[:1], self.runs[1:]
        have = [r for r in rest if r.value(name) is not None]
        missing = [r for r in rest if r.value(name) is None]
        have.sort(key=lambda r: r.value(name), reverse=descending)
        return CompareResult(head + have + missing, self.iou_type, self.gt)

    def per_class_moves(self, top: int = 10) -> list[dict]:
        """Categories whose AP moved most between runs: ``{"category_id", "name", "gt_count",
        "ap": [per run, None where absent or -1], "move": max |AP - baseline AP|}``, largest first.
        Categories without ground truth (AP -1 everywhere) are left out."""
        ok = [r for r in self.runs if r.ok and r.per_class]
        if not ok:
            return []
        table: dict[int, dict] = {}
        for i, run in enumerate(self.runs):
            for row in run.per_class:
                entry = table.setdefault(int(row["category_id"]), {
                    "category_id": int(row["category_id"]), "name": row["name"], "gt_count": row["gt_count"],
                    "ap": [None] * len(self.runs)})
                entry["ap"][i] = None if row["ap"] == -1 else float(row["ap"])
        moves = []
        for entry in table.values():
            vals = [v for v in entry["ap"] if v is not None]
            if not vals:
                continue
            base = entry["ap"][0]
            if base is not None:
                move = max(abs(v - base) for v in vals)
            else:
                move = max(vals) - min(vals)
            moves.append(dict(entry, move=float(move)))
        moves.sort(key=lambda e: (-e["move"], e["name"]))
        return moves[:top] if top and top > 0 else moves


def parse_sort_key(key: str) -> tuple[str, bool]:
    """``--sort-by`` value -> (JSON key, descending). Accepts JSON keys and short names (AP,
    AP50, AR100, fps, ms, memory, dup, ...); a leading ``-`` or ``+`` forces descending or
    ascending. Default direction: best first (AP high, time/memory/duplicates low)."""
    raw = key.strip()
    forced = None
    if raw[:1] in "+-":
        forced = raw[0] == "-"
        raw = raw[1:]
    low = raw.lower()
    name = low if low in SORT_KEYS else SORT_ALIASES.get(low.replace("_", "").replace("-", ""), None)
    if name is None:
        name = SORT_ALIASES.get(low)
    if name is None:
        raise UsageError(f"invalid --sort-by '{key}': expected one of {', '.join(SORT_KEYS)} "
                         f"(or AP, AP50, AP75, APs, APm, APl, AR100, fps, ms, memory, dup)")
    descending = name not in _ASCENDING
    return name, (descending if forced is None else forced)


def deltas(stats: dict[str, float], base: dict[str, float]) -> dict[str, float | None]:
    """``stats - base`` per COCO key; 0 where both are -1, None where only one is."""
    out: dict[str, float | None] = {}
    for k in STAT_KEYS:
        a, b = float(stats[k]), float(base[k])
        if a == -1 and b == -1:
            out[k] = 0.0
        elif a == -1 or b == -1:
            out[k] = None
        else:
            out[k] = a - b
    return out


# ---------------------------------------------------------------------------------------
# duplicate rate


def duplicate_flags(xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray,
                    iou: float = DUPLICATE_IOU) -> np.ndarray:
    """For one image's detections, True where a detection overlaps a higher-scoring detection
    of the same class with IoU > ``iou`` (what NMS would remove). ``xyxy`` (N, 4) pixels.

    Equal scores are ranked by position (the earlier one is "higher"), so two identical
    boxes with the same score count as one duplicate, not two.
    """
    xyxy = np.asarray(xyxy, dtype=np.float64).reshape(-1, 4)
    n = len(xyxy)
    flags = np.zeros(n, dtype=bool)
    if n < 2:
        return flags
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    b = xyxy[order]
    c = np.asarray(class_ids)[order]
    x1 = np.maximum(b[:, None, 0], b[None, :, 0])
    y1 = np.maximum(b[:, None, 1], b[None, :, 1])
    x2 = np.minimum(b[:, None, 2], b[None, :, 2])
    y2 = np.minimum(b[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area[:, None] + area[None, :] - inter
    ious = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    # row i, column j < i: j ranks above i
    higher = np.tril(np.ones((n, n), dtype=bool), k=-1)
    dup_sorted = ((ious > iou) & (c[:, None] == c[None, :]) & higher).any(axis=1)
    flags[order] = dup_sorted
    return flags


def duplicate_rate(results: Sequence[Any], min_score: float = DUPLICATE_MIN_SCORE,
                   iou: float = DUPLICATE_IOU) -> float | None:
    """Share of detections (score >= ``min_score``, over all images) that overlap a
    higher-scoring same-class detection in the same image at IoU > ``iou``; None when there
    are no such detections. ``results``: ImageResult records (or objects with ``detections``)."""
    total = dups = 0
    for r in results:
        d = getattr(r, "detections", None)
        if d is None or len(d) == 0:
            continue
        keep = d.scores >= min_score
        if not keep.any():
            continue
        flags = duplicate_flags(d.xyxy[keep], d.scores[keep], d.class_ids[keep], iou)
        total += int(keep.sum())
        dups += int(flags.sum())
    return None if total == 0 else dups / total


# ---------------------------------------------------------------------------------------
# peak memory


class PeakMemory:
    """Peak resident memory (MB) a block adds on top of what the process held when it started.

    On Linux the kernel's high-water mark is reset (``/proc/self/clear_refs`` <- 5) and read
    back from ``VmHWM``; where that is not allowed, a thread samples ``/proc/self/statm``
    every 5 ms. On CUDA the device's peak allocated memory is reported instead (the weights
    and activations live there). ``mb`` is None where neither works.
    """

    def __init__(self, device: str = "cpu"):
        self.device = str(device)
        self.mb: float | None = None
        self._base = 0
        self._peak = 0
        self._mode = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    @staticmethod
    def _hwm() -> int:
        try:
            with open("/proc/self/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return 0

    def __enter__(self) -> "PeakMemory":
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            self._mode = "cuda"
            return self
        self._base = self._rss()
        if self._base == 0:
            return self
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._mode = "hwm"
        except OSError:
            self._mode = "sample"
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __exit__(self, *exc) -> bool:
        if self._mode == "cuda":
            import torch

            torch.cuda.synchronize()
            self.mb = max(0, torch.cuda.max_memory_allocated() - self._base) / 2 ** 20
        elif self._mode == "hwm":
            self.mb = max(0, self._hwm() - self._base) / 2 ** 20
        elif self._mode == "sample":
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.mb = max(0, self._peak - self._base) / 2 ** 20
        return False


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
    ``max_det``, ``batch_size``, ``device``, ``dtype``. ``names`` label the runs in order
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
    if models and iou_type == "segm":
        raise UsageError("--iou-type segm needs prediction files with masks; detection models give boxes")
    total = len(preds) + len(models)
    names = list(names or [])
    if len(names) > total:
        raise UsageError(f"{len(names)} --name values for {total} run{'s' if total != 1 else ''}")
    for p in preds:
        if isinstance(p, (str, os.PathLike)) and str(p) != "-" and not Path(p).is_file():
            raise UsageError(f"predictions file not found: '{p}'")
    sources = [(p, "file") for p in preds] + [(m, "model") for m in models]
    labels = _unique_names([names[i] if i < len(names) and names[i] else _default_name(s, k, i)
                            for i, (s, k) in enumerate(sources)])
    gtobj = GroundTruth.load(gt)
    named_images: list[str] = []
    if models:
        from visiontool.services.detect import check_detect_options

        check_detect_options(threshold, batch_size)
        from visiontool.device import validate_device_spec, validate_dtype_spec
        from visiontool.models.detr import check_model_spec

        validate_device_spec(device)
        validate_dtype_spec(dtype)
        for m in models:
            check_model_spec(m)
        from visiontool.device import resolve_device

        resolve_device(device)  # an absent --device cuda fails here, not after the prediction files
        named_images = _images_in_gt(images, recursive, gtobj, tell)
    if save_preds is not None and Path(save_preds).exists() and not Path(save_preds).is_dir():
        raise UsageError(f"--save-preds '{save_preds}' is a file; expected a directory")

    runs: list[CompareRun] = []
    # -- prediction files: cheap, and an invalid one stops everything (exit 2) before models run
    for (source, _), name in zip(sources[:len(preds)], labels):
        res = evaluate(gtobj, source, iou_type, per_class=per_class, backend=backend, lenient=lenient)
        runs.append(CompareRun(name, "file", str(source) if isinstance(source, (str, os.PathLike)) else "<object>",
                               iou_type, res.stats, res.per_class, diagnostics=res.diagnostics,
                               n_predictions=res.n_predictions))
    # -- models, one at a time
    for k, (model, name) in enumerate(zip(models, labels[len(preds):])):
        say(f"compare: [{k + 1}/{len(models)}] {name}: detecting on {len(named_images)} image"
            f"{'s' if len(named_images) != 1 else ''}")
        run, results = _run_model(model, name, named_images, gtobj, threshold=threshold, max_det=max_det,
                         batch_size=batch_size, device=device, dtype=dtype, warn=tell,
                         duplicate_iou=duplicate_iou, duplicate_min_score=duplicate_min_score,
                         warmup=warmup, first=not any(r.kind == "model" and r.error is None for r in runs))
        if run.error is None:
            if save_preds is not None:
                run.saved_to = str(_save(results, save_preds, name))
            res = evaluate(gtobj, results, iou_type, per_class=per_class, backend=backend, lenient=lenient)
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
    return CompareResult(runs, iou_type, gtobj.path)


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
               first: bool = False) -> tuple[CompareRun, list[dict]]:
    """Load, run and time one model through detect's path; memory released before and after.

    Peak memory covers the load, the warm-up image and the timed pass; the timings are the
    timed pass's (model loading excluded, the warm-up image not counted). Returns the run and
    its COCO results (ids mapped on the GT)."""
    from visiontool.io.records import coco_results
    from visiontool.models import loader
    from visiontool.services.detect import run_detect

    run = CompareRun(name, "model", model)
    common = dict(threshold=threshold, max_det=max_det, device=device, dtype=dtype, gt=gtobj.index,
                  raise_on_failure=False, warn=warn)
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
    run.params, run.needs_nms, run.device, run.dtype = int(det.params), det.needs_nms, det.device, det.dtype
    run.ms_per_image = t.ms_per_image()
    run.images_per_s = t.images / t.wall if t.wall > 0 else None
    run.peak_memory_mb = mem.mb
    run.images = t.images
    run.failed_images = list(det.failed)
    ok = [r for r in det.results if not r.error]
    run.duplicate_rate = duplicate_rate(ok, duplicate_min_score, duplicate_iou)
    stats: dict = {}
    coco: list[dict] = []
    for r in ok:
        coco.extend(coco_results(r, gtobj.index, stats))
    if stats.get("unmatched_labels"):
        labels = ", ".join(sorted(str(x) for x in stats["unmatched_labels"]))
        warn(f"{name}: labels without a ground-truth category of the same name were not scored: {labels}")
    del det
    _release()
    return run, coco


def _device_name(device: str) -> str:
    from visiontool.device import resolve_device

    try:
        return str(resolve_device(device))
    except VisionToolError:
        return "cpu"


def _warm_imports(model: str) -> None:
    """Import the model's code (transformers modelling module, timm) before memory is
    measured, so the first model is not charged for library imports the others reuse."""
    try:
        import torch  # noqa: F401
        from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING

        from visiontool.models.detr import load_config

        MODEL_FOR_OBJECT_DETECTION_MAPPING[type(load_config(model))]
    except (VisionToolError, KeyError, ImportError, ValueError):
        pass  # the load itself reports what is wrong


def _release() -> None:
    """Drop cached models and hand freed heap back to the OS before the next measurement."""
    from visiontool.models import loader
    from visiontool.services.evaluate import release_memory

    loader.release()
    gc.collect()
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
