"""Detection: sources in, ImageResult records out (no printing here), for every model family.

The registry gives a :class:`~visiontool.models.protocol.Detector` for ``--model``; this
loop feeds it windows of ``batch_size`` decoded images and turns what comes back into
records: threshold (inclusive), class filter, score order, max-det, image ids. Whatever the
backend, the record is the same (absolute xyxy pixels on the original image, sorted by score).
"""
from __future__ import annotations

import time
from itertools import islice
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from visiontool.errors import PartialFailure, UsageError
from visiontool.io.coco import GroundTruthIndex
from visiontool.io.sources import Item, VideoOptions, item_image_id, iter_items, resolve_inputs
from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.types import Detections, ImageResult, Timings

DEFAULT_THRESHOLD = 0.5


@dataclass
class DetectRun:
    """What one detect call produced (the CLI prints ``results``; compare reads the rest)."""

    results: list[ImageResult]
    timings: Timings
    info: ModelInfo
    failed: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.info.name

    @property
    def params(self) -> int:
        return self.info.params

    @property
    def needs_nms(self) -> bool | None:
        return self.info.needs_nms

    @property
    def device(self) -> str:
        return self.info.device

    @property
    def dtype(self) -> str:
        return self.info.dtype


_UNUSED_LABELS = {"N/A", "NA"}  # DETR's id2label fills the 11 unused COCO ids (12, 26, ...) with "N/A"


def ignored_options(info, nms_iou: float | None, text_threshold: float | None) -> list[str]:
    """Warnings for options the loaded model has no use for (known only once it is loaded)."""
    lines = []
    if nms_iou is not None and info.needs_nms is False:
        lines.append(f"--nms-iou changes nothing: {info.family} needs no NMS (one box per object by design)")
    if text_threshold is not None and info.can("text") and not info.can("text_threshold"):
        lines.append(f"--text-threshold changes nothing: {info.family} scores each phrase as a whole; only "
                     "Grounding DINO thresholds the tokens of a phrase")
    return lines


def parse_classes(spec: str | Sequence[str] | None, id2label: dict[int, str]) -> set[int] | None:
    """``--classes person,dog,3`` -> the model's label ids; names are case-insensitive."""
    if spec is None:
        return None
    items = [spec] if isinstance(spec, str) else list(spec)
    tokens = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
    if not tokens:
        if items:  # --classes "" (an unset shell variable) must not mean every class
            raise UsageError(f"--classes '{','.join(map(str, items))}' names no class (give names or ids, "
                             "e.g. --classes person,car)")
        return None
    unused = {k for k, v in id2label.items() if str(v).strip().upper() in _UNUSED_LABELS}
    by_name = {v.lower(): k for k, v in id2label.items() if k not in unused}
    wanted: set[int] = set()
    for tok in tokens:
        if tok.upper() in _UNUSED_LABELS or (tok.lstrip("-").isdigit() and int(tok) in unused):
            what = (f"an id this model leaves unused (label '{id2label[int(tok)]}')" if tok.lstrip("-").isdigit()
                    else "the label this model gives its unused ids")
            raise UsageError(f"--classes: '{tok}' is {what}; name a class, e.g. '{next(iter(by_name), '')}'")
        if tok.lower() in by_name:
            wanted.add(by_name[tok.lower()])
        elif tok.lstrip("-").isdigit() and int(tok) in id2label:
            wanted.add(int(tok))
        else:
            import difflib

            close = difflib.get_close_matches(tok.lower(), list(by_name), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise UsageError(f"--classes: '{tok}' is not a class of this model{hint}")
    return wanted


def parse_text(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``--text "forklift, person in a hi-vis vest"`` -> ("forklift", "person in a hi-vis vest").
    Repeated flags add phrases; an empty phrase is a usage error."""
    if text is None:
        return None
    items = [text] if isinstance(text, str) else list(text)
    phrases: list[str] = []
    for item in items:
        parts = [p.strip() for p in str(item).split(",")]
        if any(not p for p in parts):
            raise UsageError(f"--text '{item}': empty phrase (give comma-separated phrases, e.g. "
                             "--text \"forklift, person in a hi-vis vest\")")
        phrases += [p for p in parts if p not in phrases]
    return tuple(phrases) or None


def check_detect_options(threshold: float, batch_size: int) -> None:
    """The option checks every detection run makes before loading anything (detect, compare)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise UsageError(f"--threshold must be within [0, 1], got {threshold}")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    from visiontool.services.forward_streams import requested_streams

    requested_streams()  # VISIONTOOL_CPU_STREAMS, checked before any model loads


def filter_detections(d: Detections, threshold: float, classes: set[int] | None, max_det: int | None) -> Detections:
    """Keep score >= threshold (inclusive) and wanted classes; sort by score; cut to max_det."""
    keep = d.scores >= threshold
    if classes is not None:
        keep &= np.isin(d.class_ids, list(classes))
    d = d[keep].sorted_by_score()
    if max_det is not None and max_det >= 0:
        d = d[:max_det]
    return d


def iter_detect(items: Iterable[Item], detector, options: DetectOptions, *, classes: set[int] | None = None,
                batch_size: int = 1, gt: GroundTruthIndex | None = None,
                timings: Timings | None = None) -> Iterator[tuple[ImageResult, Any]]:
    """Yield ``(result, decoded image or None)`` per item, in order; failed items carry
    ``result.error``. Decoding time counts as preprocessing. On a CPU, an adapter that
    declares ``"concurrent"`` runs its windows as parallel single-threaded forward passes
    (:mod:`visiontool.services.forward_streams`); the records are the same, in the same order."""
    from visiontool.services import forward_streams
    from visiontool.services.image_failures import ModelHealth, image_error, plain_image

    timings = timings if timings is not None else Timings()
    name = detector.info.name
    health = ModelHealth(lambda: detector.predict([plain_image()], options, Timings()))

    def forward(window: list[Item], into: Timings) -> dict[int, Detections]:
        """The window's decoded items' detections, by ``id(item)``. An image the model fails
        on gets ``error`` (the others in its window are run again one by one), unless the
        model fails on a plain image too (then the error stops the run)."""
        good = [x for x in window if x.error is None]
        if not good:
            return {}
        try:
            dets = detector.predict([x.image for x in good], options, into)
        except Exception as exc:
            if not health.blames_image(exc):
                raise
            if len(good) > 1:
                return {k: v for x in good for k, v in forward([x], into).items()}
            good[0].error = image_error(good[0].name, good[0].image.size, name, exc)
            good[0].image = None
            return {}
        health.worked()
        return {id(x): d for x, d in zip(good, dets)}

    streams, threads = forward_streams.plan(detector.info)
    windows = _windows(iter(items), max(1, int(batch_size)), timings)
    if streams > 1:
        passes = forward_streams.run_in_order(windows, forward, timings, streams, threads)
    else:
        passes = ((window, forward(window, timings)) for window in windows)
    for window, by_id in passes:
        for x in window:
            image_id = item_image_id(x, gt)
            if x.error is not None:
                yield ImageResult(image=x.name, width=0, height=0, model=name, image_id=image_id, error=x.error,
                                  frame=x.frame, time_s=x.time_s), None
                continue
            timings.images += 1
            d = filter_detections(by_id[id(x)], options.threshold, classes, options.max_det)
            yield ImageResult(image=x.name, width=x.image.width, height=x.image.height, model=name,
                              image_id=image_id, detections=d, frame=x.frame, time_s=x.time_s), x.image


def _windows(it: Iterator[Item], size: int, timings: Timings) -> Iterator[list[Item]]:
    """Windows of ``size`` items; drawing them decodes (counted as preprocessing)."""
    while True:
        t0 = time.perf_counter()
        window = list(islice(it, size))
        timings.preprocess += time.perf_counter() - t0
        if not window:
            return
        yield window


def detect(sources: str | Path | Any | Sequence[Any], model: str | None = None, **options) -> list[ImageResult]:
    """``visiontool.detect``: the records ``visiontool detect`` prints, one per input.

    Same options as :func:`run_detect`; an image that cannot be read raises
    PartialFailure after the others are done unless ``raise_on_failure=False`` (then its
    record carries ``error``).
    """
    options.setdefault("raise_on_failure", True)
    return run_detect(sources, model, **options).results


def prepare_detector(model: str | None, *, classes=None, text=None, device: str = "auto", dtype: str = "auto",
                     warn: Callable[[str], None] | None = None, **load_options: Any):
    """Check, then load: ``(detector, class ids wanted, phrases)``. Everything a user can get
    wrong (spec, --classes, --text) fails before the weights load where the family allows."""
    from visiontool.models import registry

    phrases = parse_text(text)
    if model is None:
        model = registry.DEFAULT_TEXT_DETECTOR if phrases else registry.DEFAULT_DETECTOR
    registry.check_detector_spec(model)
    names = registry.peek_class_names(model) if classes is not None and not phrases else None
    if classes is not None and phrases:
        raise UsageError("--classes selects among a model's fixed classes; with --text the phrases are the classes")
    wanted = parse_classes(classes, names) if names is not None else None
    if phrases:
        load_options["text"] = True
    detector = registry.load_detector(model, device, dtype, warn=warn, **load_options)
    if classes is not None and names is None and not phrases:
        wanted = parse_classes(classes, detector.info.class_names)
    return detector, wanted, phrases


def run_detect(
    sources: str | Path | Any | Sequence[Any],
    model: str | None = None,
    *,
    threshold: float = DEFAULT_THRESHOLD,
    classes: str | Sequence[str] | None = None,
    max_det: int | None = 100,
    batch_size: int = 1,
    device: str = "auto",
    dtype: str = "auto",
    gt: str | Path | GroundTruthIndex | None = None,
    recursive: bool = False,
    text: str | Sequence[str] | None = None,
    text_threshold: float | None = None,
    nms_iou: float | None = None,
    items: Iterable[Item] | None = None,
    on_result: Callable[[ImageResult], None] | None = None,
    on_image: Callable[[ImageResult, Any], None] | None = None,
    raise_on_failure: bool = False,
    warn: Callable[[str], None] | None = None,
    load_options: dict | None = None,
    keep_results: bool = True,
    video: VideoOptions | None = None,
    track: Any = None,
    source_type: str = "auto",
) -> DetectRun:
    """Detect objects and time it: what ``visiontool detect`` and ``compare`` run.

    ``sources``: a path, directory, glob or URL (or a list of them), PIL images or HxWx3
    uint8 arrays (or ``items``: prepared :class:`~visiontool.io.sources.Item` s, e.g. video
    frames). ``model``: any spec of :mod:`visiontool.models.registry` (default DETR-R50, or
    Grounding DINO tiny with ``text``). ``threshold`` is inclusive; ``text``: open-vocabulary
    phrases. Returns a :class:`DetectRun` whose ``results`` are the records the CLI prints.
    ``on_result`` is called as each image finishes (the CLI streams with it); ``on_image``
    also gets the decoded RGB image (annotated copies). Images that cannot be read are
    reported through ``result.error``; with ``raise_on_failure`` a PartialFailure is raised
    at the end. ``keep_results=False`` keeps no records in memory (a long video streamed
    through ``on_result``).

    Videos and streams among ``sources`` give one record per frame (``frame``, ``time_s``;
    ``video``: stride, range, max frames, reconnects; ``source_type`` as ``--source-type``).
    ``track`` (True, a tracker name or a :class:`~visiontool.services.track.TrackOptions`)
    adds persistent ``track_id`` s across each video's frames.
    """
    from visiontool.services.video_detect import check_track_sources, iter_media_detect

    check_detect_options(threshold, batch_size)
    named = resolve_inputs(sources, recursive, source_type) if items is None else None
    stage = None
    if track is not None and track is not False:
        from visiontool.services.track import TrackOptions, TrackStage, check_track_options

        if named is not None:
            check_track_sources(named)
        opts = track if isinstance(track, TrackOptions) else check_track_options(
            track if isinstance(track, str) else None)
        stage = TrackStage(opts, threshold, (video or VideoOptions()).stride, warn=warn)
    gt_index = GroundTruthIndex.load(gt) if isinstance(gt, (str, Path)) else gt
    detector, wanted, phrases = prepare_detector(model, classes=classes, text=text, device=device, dtype=dtype,
                                                 warn=warn, **(load_options or {}))
    for line in ignored_options(detector.info, nms_iou, text_threshold) if warn is not None else ():
        warn(line)
    floor = stage.detection_floor() if stage is not None else float(threshold)
    options = DetectOptions(threshold=floor, max_det=max_det, nms_iou=nms_iou, text=phrases,
                            text_threshold=text_threshold)
    timings = Timings()
    results: list[ImageResult] = []
    failed: list[str] = []
    t0 = time.perf_counter()
    stream = iter_items(named, video, on_retry=warn) if items is None else items
    for r, img in iter_media_detect(stream, detector, options, classes=wanted, batch_size=batch_size, gt=gt_index,
                                    timings=timings, track=stage):
        if r.error:
            failed.append(r.error)
        if keep_results:
            results.append(r)
        if on_result is not None:
            on_result(r)
        if on_image is not None and img is not None:
            on_image(r, img)
    timings.wall = time.perf_counter() - t0
    run = DetectRun(results, timings, detector.info, failed)
    if failed and raise_on_failure:
        raise PartialFailure(f"{len(failed)} of {timings.images + len(failed)} images failed")
    return run
