"""Tracking runs side by side (``compare --mot``): HOTA/MOTA/IDF1 against one MOT ground truth, and fps.

Runs are MOT prediction files (or folders of sequences), and/or detectors run with a tracker
on the video of the sequence (``--video``): each model x tracker pair is run through
detect's own path (:func:`visiontool.services.detect.run_detect` with ``track=``), its MOT
rows kept in memory, and timed (frames/s over the whole run: decoding, detection and
tracking). All runs are scored in one TrackEval call (:mod:`visiontool.services.mot_metrics`);
the first run is the baseline of the Δ columns. A model that fails to load or run gets an
error row and the others still run.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from visiontool.errors import MissingExtraError, UsageError, VisionToolError
from visiontool.services.mot_metrics import MotEvaluation, MotRun, evaluate_mot


@dataclass
class TrackingComparison:
    runs: list[MotRun]
    evaluation: MotEvaluation
    diagnostics: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[MotRun]:
        return [r for r in self.runs if r.extra.get("error")]

    def to_dict(self) -> dict:
        """``{"backend", "benchmark", "preprocessing", "sequences", "runs": [{"name", <metrics>, "delta",
        "fps", "model", "tracker", "runtime", "frames", "error"}]}`` — the first run is the baseline."""
        base = self.runs[0].metrics if self.runs else {}
        runs = []
        for r in self.runs:
            d: dict = {"name": r.name}
            d.update({k: _finite(v) for k, v in r.metrics.items()})
            d["delta"] = {k: _finite(v - base[k]) for k, v in r.metrics.items()
                          if isinstance(v, (int, float)) and isinstance(base.get(k), (int, float))}
            d.update({k: v for k, v in r.extra.items() if v is not None})
            runs.append(d)
        ev = self.evaluation
        return {"backend": ev.backend, "benchmark": ev.benchmark, "preprocessing": ev.preprocessing,
                "sequences": list(ev.sequences), "runs": runs}


def _finite(v):
    return None if isinstance(v, float) and not math.isfinite(v) else v


def compare_tracking(gt: str, preds: list[str] | None = None, *, models: list[str] | None = None,
                     video: str | None = None, trackers: list[str] | None = None, names: list[str] | None = None,
                     preproc: str = "auto", threshold: float = 0.5, max_det: int = 100, batch_size: int = 1,
                     device: str = "auto", dtype: str = "auto", text: str | None = None,
                     load_options: dict | None = None, vid_stride: int = 1,
                     on_event: Callable[[str], None] | None = None,
                     warn: Callable[[str], None] | None = None) -> TrackingComparison:
    """Score prediction files and (model x tracker) runs on ``video`` against MOT ground truth ``gt``.

    ``names`` label the runs in order (files first, then model runs); default: the file or
    folder name, and ``<model dir>+<tracker>`` for a model run. Model runs need ``video``
    and a ground truth of one sequence (the video's frames are MOT frames, 1-based).
    ``load_options``: the detectors' load options, e.g. ``{"runtime": "openvino"}``."""
    from visiontool.io.mot import find_gt_sequences
    from visiontool.services.track import check_track_options

    preds = list(preds or [])
    models = list(models or [])
    if not preds and not models:
        raise UsageError("compare --mot needs MOT prediction files (or folders) and/or --model with --video")
    if models and not video:
        raise UsageError("compare --mot --model runs each model with a tracker on a video: give --video VIDEO")
    if video and not models:
        raise UsageError("--video is what --model runs on: give at least one --model")
    tracker_opts = [check_track_options(t) for t in (trackers or [None])]
    if models:
        seqs = find_gt_sequences(gt)
        if len(seqs) != 1:
            raise UsageError(f"--model runs on one video, but the ground truth holds {len(seqs)} sequences")
        from visiontool.io.sources import expand_media

        srcs = expand_media([video])
        if len(srcs) != 1 or not srcs[0].is_video:
            raise UsageError(f"--video '{video}' is not one video file or stream")
    labels = list(names or [])
    with tempfile.TemporaryDirectory(prefix="visiontool-compare-mot-") as tmp:
        files: list[str] = list(preds)
        extras: list[dict] = [{} for _ in preds]
        run_labels: list[str] = []
        failed: list[MotRun] = []
        k = len(preds)
        for model in models:
            for opts in tracker_opts:
                label = labels[k] if k < len(labels) else f"{Path(model.rstrip('/')).name}+{opts.tracker}"
                k += 1
                if on_event is not None:
                    on_event(f"compare: running {model} with {opts.tracker} on {video}")
                path = Path(tmp) / f"run{len(files)}.txt"
                try:
                    extra = _run_model(model, opts, video, path, threshold=threshold, max_det=max_det,
                                       batch_size=batch_size, device=device, dtype=dtype, text=text,
                                       vid_stride=vid_stride, warn=warn, load_options=load_options)
                except MissingExtraError:
                    raise  # --runtime without its extra: exit 2 with the install line, as detect
                except VisionToolError as exc:
                    failed.append(MotRun(label, {}, {}, {"model": model, "tracker": opts.tracker,
                                                         "error": str(exc)}))
                    continue
                files.append(str(path))
                extras.append(extra)
                run_labels.append(label)
        file_labels = labels[:len(preds)]
        if not files:
            raise UsageError("no run could be scored: " + "; ".join(f"{r.name}: {r.extra['error']}" for r in failed))
        evaluation = evaluate_mot(gt, files, preproc=preproc)
    names_out = _names(preds, file_labels, run_labels)
    runs = []
    for run, label, extra in zip(evaluation.runs, names_out, extras):
        run.name = label
        run.extra = extra
        runs.append(run)
    return TrackingComparison(runs + failed, evaluation, list(evaluation.diagnostics))


def _names(preds: list[str], given: list[str], run_labels: list[str]) -> list[str]:
    from visiontool.services.mot_metrics import _label, _unique

    out = [given[i] if i < len(given) else _label(p) for i, p in enumerate(preds)]
    return _unique(out + run_labels)


def _run_model(model: str, opts, video: str, path: Path, *, threshold: float, max_det: int, batch_size: int,
               device: str, dtype: str, text, vid_stride: int, warn, load_options: dict | None = None) -> dict:
    """Detect + track ``video`` with ``model``; MOT rows to ``path``; returns fps, frames, model, tracker."""
    from visiontool.errors import PartialFailure
    from visiontool.io.mot import MotWriter
    from visiontool.io.sources import VideoOptions
    from visiontool.services.detect import run_detect

    t0 = time.perf_counter()
    with MotWriter(str(path)) as writer:
        run = run_detect(video, model, threshold=threshold, max_det=max_det, batch_size=batch_size, device=device,
                         dtype=dtype, text=text, load_options=load_options,
                         on_result=lambda r: None if r.error else writer.write(r), warn=warn,
                         keep_results=False, video=VideoOptions(stride=vid_stride), track=opts)
    wall = time.perf_counter() - t0
    if run.failed:
        raise PartialFailure(run.failed[0])
    frames = run.timings.images
    return {"model": model, "tracker": opts.tracker, "runtime": run.info.runtime, "frames": frames,
            "fps": frames / run.timings.wall if run.timings.wall > 0 else None,
            "wall_s": round(wall, 3)}
