"""Prompts -> masks: the orchestration behind ``visiontool segment``, for every SAM-family model.

Per image: decode (EXIF, RGB), check the prompts against its size, then ask the
:class:`~visiontool.models.protocol.Segmenter` for the masks of its prompts, of its ``--text``
phrases (:mod:`visiontool.services.segment_text`) or of everything (``--auto``). The adapter
handles embeddings (cached on disk), decoding and RLE; this module never knows which backend
runs. Records are ``ImageResult(kind="segment")``. Videos: :mod:`visiontool.services.segment_video`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from visiontool.convert import default_image_id
from visiontool.io.prompts import (  # noqa: F401 (the prompt helpers are part of segment's API)
    build_prompts,
    check_prompt,
    match_record,
    prompts_for_detections,
    prompts_from_json,
)
from visiontool.models.protocol import AUTO_PRESETS, AutoOptions
from visiontool.types import Detections, ImageResult, Prompt

PRESETS = AUTO_PRESETS


@dataclass
class SegmentJob:
    """What to do with one image: its source, its prompts, or everything (``auto``)."""

    source: Any  # ImageSource
    prompts: list[Prompt] = field(default_factory=list)
    auto: bool = False
    text: tuple[str, ...] | None = None  # --text phrases


@dataclass
class TextOptions:
    """How ``--text`` phrases become masks: a zero-shot ``detector`` (grounded) or the model."""

    detector: Any = None  # a loaded Detector, or None for the model's own concept segmentation
    threshold: float = 0.5
    text_threshold: float | None = None
    max_det: int | None = 100


def masks_for_image(model, rgb: np.ndarray, job: SegmentJob, multimask: bool | None,
                    auto_options: AutoOptions | None, name: str,
                    text_options: TextOptions | None = None) -> Detections:
    """The masks of one decoded image (prompts checked against its size first)."""
    h, w = rgb.shape[:2]
    for p in job.prompts:
        check_prompt(p, w, h, name)
    if job.auto:
        return model.segment_auto(rgb, auto_options or AutoOptions(), name=name)
    parts = []
    if job.prompts:
        parts.append(model.segment(rgb, job.prompts, multimask=multimask, name=name))
    if job.text:
        from visiontool.services.segment_text import text_masks

        t = text_options or TextOptions()
        parts.append(text_masks(model, rgb, job.text, detector=t.detector, threshold=t.threshold,
                                text_threshold=t.text_threshold, max_det=t.max_det, name=name))
    if not parts:
        return Detections.empty(with_masks=True)
    return Detections.merge(parts)


def iter_segment(model, jobs: Iterable[SegmentJob], multimask: bool | None = None,
                 auto_options: AutoOptions | None = None, gt=None,
                 on_error: Callable[[str], None] | None = None,
                 text_options: TextOptions | None = None) -> Iterator[tuple[ImageResult, np.ndarray | None]]:
    """Yield (ImageResult, rgb or None) per job; per-image load failures become ``error``
    results (``on_error(message)`` is called) and the others go on."""
    from visiontool.errors import ImageLoadError
    from visiontool.io.images import load_image
    from visiontool.services.image_failures import ModelHealth, image_error

    name_of_model = model.info.name
    health = ModelHealth(lambda: _probe(model))
    for pos, job in enumerate(jobs, 1):
        name = job.source.name
        image_id = gt.image_id_for(name) if gt is not None else default_image_id(name, pos)
        try:
            rgb = np.asarray(load_image(job.source))
        except ImageLoadError as exc:
            if on_error is not None:
                on_error(str(exc))
            yield ImageResult(image=name, width=0, height=0, model=name_of_model, image_id=image_id, kind="segment",
                              error=str(exc)), None
            continue
        h, w = rgb.shape[:2]
        try:
            masks = masks_for_image(model, rgb, job, multimask, auto_options, name, text_options)
        except Exception as exc:  # an image the model fails on (a 20000x1 strip) is that image's error
            if not health.blames_image(exc):
                raise
            message = image_error(name, (w, h), name_of_model, exc)
            if on_error is not None:
                on_error(message)
            yield ImageResult(image=name, width=0, height=0, model=name_of_model, image_id=image_id, kind="segment",
                              error=message), None
            continue
        health.worked()
        yield ImageResult(image=name, width=w, height=h, model=name_of_model, image_id=image_id,
                          detections=masks, kind="segment"), rgb


def _probe(model) -> None:
    """One point prompt on a plain image: raises if the model fails on any image at all."""
    from visiontool.services.image_failures import plain_image

    rgb = np.asarray(plain_image())
    point = Prompt(points=np.array([[rgb.shape[1] / 2, rgb.shape[0] / 2]]), labels=np.array([1]))
    model.segment(rgb, [point], multimask=False, name="a plain probe image")


def segment(images, *, model: str | None = None, checkpoint: str | None = None, points=None, neg_points=None,
            boxes=None, mask_input: str | None = None, prompts: list[Prompt] | None = None,
            detections: dict[str, ImageResult] | list | None = None, auto: bool = False,
            auto_options: AutoOptions | None = None, multimask: bool | None = None, device: str = "auto",
            dtype: str = "auto", cache_dir: str | None = None, use_cache: bool = True, text=None,
            detector: str | None = None, threshold: float = 0.5,
            text_threshold: float | None = None) -> list[ImageResult]:
    """``visiontool.segment``: segment ``images`` (paths); one ImageResult (masks) per image.

    points / neg_points: [(x, y), ...] pixels, together one prompt (with ``boxes`` if exactly
    one box); boxes: [(x1, y1, x2, y2), ...] pixels, one object each; mask_input: PNG path;
    prompts: explicit :class:`~visiontool.types.Prompt` list; detections: detect's records
    (a list of ImageResult or record dicts, or {image: ImageResult}) — one box prompt per
    detection; auto: segment everything. ``model`` (alias ``checkpoint``): a SAM spec.
    text: phrases ("bus, person" or a list) — SAM 3's concept segmentation, or boxes from
    ``detector`` (default IDEA-Research/grounding-dino-tiny for models without text) segmented
    by the model; ``threshold`` applies to those instances. Images that fail to load come back
    with ``error`` set.
    """
    from visiontool.convert import from_record
    from visiontool.io.images import expand_sources
    from visiontool.models.registry import load_segmenter

    names = [str(i) for i in ([images] if isinstance(images, (str, os.PathLike)) else images)]
    sources = expand_sources(names)
    base = build_prompts(points=points, neg_points=neg_points, boxes=boxes, mask_input=mask_input, extra=prompts)
    records = detections
    if isinstance(detections, list):
        records = {}
        for i, r in enumerate(detections):
            r = r if isinstance(r, ImageResult) else from_record(r, f"detections[{i}]")
            records[r.image] = r
    from visiontool.services.detect import parse_text

    phrases = parse_text(text)
    jobs = []
    for s in sources:
        found = match_record(records, s.name)
        extra = prompts_for_detections(found.detections, "detections") if found is not None else []
        jobs.append(SegmentJob(s, list(base) + extra, auto, phrases))
    engine = load_segmenter(model or checkpoint, device, dtype, cache_dir=cache_dir, use_cache=use_cache, quiet=True)
    text_options = None
    if phrases:
        from visiontool.services import segment_text as st

        st.check_text_route(engine.info, detector)
        det = st.load_detector(detector, phrases, device, dtype) if st.wants_detector(engine.info, detector) else None
        text_options = TextOptions(det, threshold, text_threshold)
    return [r for r, _ in iter_segment(engine, jobs, multimask, auto_options, text_options=text_options)]
