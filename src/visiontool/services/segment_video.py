"""Masks through a video: prompts on a frame, propagated by a video-capable SAM-family model.

``segment VIDEO --point X,Y [--frame N]`` / ``--box`` / ``--mask-input`` / ``--prompts FILE``
(entries carry ``frame`` and ``object_id``) / ``--text``: frames are decoded with PyAV
(:mod:`visiontool.io.video`: ``--vid-stride``, ``--start``/``--end``), handed one at a time to
the adapter's ``propagate`` (capability ``video``), and come back as one
``ImageResult(kind="segment", frame, time_s)`` per processed frame, masks carrying their
``object_id``. ``--text`` is SAM 3's own video concept segmentation, or — for models without
text, or with ``--detector`` — the detector's boxes on the prompt frame, each a tracked object
labelled with its phrase.

A video that breaks mid-way raises :class:`~visiontool.io.video.VideoError` after the frames
decoded so far have been yielded (the CLI keeps them and exits 1).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Iterator

import numpy as np

from visiontool.errors import UsageError
from visiontool.types import ImageResult, Prompt

VIDEO_EXAMPLE = "facebook/sam2.1-hiera-tiny"


@dataclass
class VideoJob:
    """One video to segment: its path, prompts (each with a frame, None = the first processed
    frame), ``--text`` phrases, and which frames to read."""

    source: str
    prompts: list[Prompt] = field(default_factory=list)
    text: tuple[str, ...] | None = None
    stride: int = 1
    start: Any = None  # io.video.Position
    end: Any = None
    max_frames_in_memory: int | None = None
    text_frame: int | None = None  # the frame a detector reads --text on (default: the first processed)
    declared_frames: int | None = None  # the container's frame count (set by check_job)


def require_video_model(info, source: str) -> None:
    if not info.can("video"):
        raise UsageError(f"{source} is a video: segment it with a video model (--model {VIDEO_EXAMPLE}, "
                         f"yonigozlan/EdgeTAM-hf or facebook/sam3); '{info.name}' ({info.family}) segments images "
                         "only")


def check_job(job: VideoJob) -> Any:
    """Before any model loads: the video opens, prompts lie inside its frames, prompt frames
    lie before its declared end. Returns :class:`~visiontool.io.video.VideoInfo`."""
    from visiontool.io.prompts import check_mask_size, check_prompt
    from visiontool.io.video import is_stream, probe

    info = probe(job.source)
    for p in job.prompts:
        check_prompt(p, info.width, info.height, job.source)
        check_mask_size(p, info.width, info.height, job.source)
    frames = [p.frame for p in job.prompts if p.frame is not None]
    if job.text_frame is not None:
        frames.append(job.text_frame)
    last = None
    if not is_stream(job.source) and info.frames:
        last = info.frames - 1
        job.declared_frames = int(info.frames)
    if job.end is not None and job.end.unit == "frame":
        last = min(last, int(job.end.value) - 1) if last is not None else int(job.end.value) - 1
    for f in frames:
        if last is not None and f > last:
            raise UsageError(f"prompt frame {f} is beyond the end of {job.source} (its last frame is {last})")
        if job.start is not None and job.start.unit == "frame" and f < job.start.value:
            raise UsageError(f"prompt frame {f} comes before --start {int(job.start.value)}")
    return info


def _frames(job: VideoJob) -> Iterator[tuple[int, float, np.ndarray]]:
    """Decoded frames; a file that ends well before its declared length (FFmpeg reports most
    truncations as a clean end) raises VideoError after its last frame."""
    from visiontool.io.video import VideoError, iter_frames, prefetch

    last = -1
    for fr in prefetch(iter_frames(job.source, stride=job.stride, start=job.start, end=job.end), depth=2):
        last = fr.index
        yield fr.index, fr.time_s, np.asarray(fr.image)
    declared = job.declared_frames
    if declared and job.end is None and last >= 0:
        slack = job.stride + max(2, int(0.02 * declared))  # declared counts are often estimates (duration x fps)
        if last + 1 + slack < declared:
            raise VideoError(f"{job.source}: the video ends after frame {last} of the {declared} it declares "
                             "(truncated or damaged)")


def iter_video(model, job: VideoJob, *, text_options=None, gt=None) -> Iterator[tuple[ImageResult, np.ndarray]]:
    """Yield (ImageResult, rgb) per processed frame, in frame order."""
    require_video_model(model.info, job.source)
    frames = _frames(job)
    prompts = list(job.prompts)
    text = None
    if job.text:
        if text_options is not None and text_options.detector is not None:
            frames, boxes = _grounded(frames, job, text_options)
            prompts += boxes
        elif model.info.can("text"):
            text = list(job.text)
        else:
            from visiontool.services.segment_text import check_text_route

            check_text_route(model.info, "none")
    threshold = text_options.threshold if text_options is not None else 0.5
    name = model.info.name
    if not prompts and text is None:  # e.g. the detector found nothing: every frame has no masks
        from visiontool.types import Detections

        for index, t, rgb in frames:
            h, w = rgb.shape[:2]
            yield ImageResult(image=job.source, width=w, height=h, model=name,
                              image_id=frame_image_id(job.source, index, gt), detections=Detections.empty(True),
                              kind="segment", frame=index, time_s=t), rgb
        return
    for fm in model.propagate(frames, prompts, text=text, threshold=threshold,
                              max_frames_in_memory=job.max_frames_in_memory):
        index, t, dets = fm
        rgb = getattr(fm, "image", None)
        h, w = (rgb.shape[:2] if rgb is not None else (0, 0))
        yield ImageResult(image=job.source, width=w, height=h, model=name,
                          image_id=frame_image_id(job.source, index, gt), detections=dets, kind="segment",
                          frame=index, time_s=t), rgb


def frame_image_id(video: str, index: int, gt=None) -> int | None:
    """A frame's image id: its index, or the GT's for an image named ``<video>#<index>``."""
    if gt is None:
        return int(index)
    return gt.image_id_for(f"{video}#{index}")


def _grounded(frames, job: VideoJob, t) -> tuple[Iterator, list[Prompt]]:
    """Run the detector on the text frame; the frames read so far are put back in front."""
    from PIL import Image

    from visiontool.io.prompts import check_prompt
    from visiontool.services.segment_text import grounded_prompts

    seen = []
    target = job.text_frame
    found = None
    for fr in frames:
        seen.append(fr)
        if target is None or fr[0] == target:
            found = fr
            break
        if fr[0] > target:
            break
    if found is None:
        raise UsageError(f"--frame {target} is not among the processed frames of {job.source}")
    index, _, rgb = found
    boxes = grounded_prompts(t.detector, Image.fromarray(rgb), job.text, threshold=t.threshold,
                             text_threshold=t.text_threshold, max_det=t.max_det)
    h, w = rgb.shape[:2]
    used = {p.object_id for p in job.prompts if p.object_id is not None}
    nxt = 1
    for p in boxes:
        check_prompt(p, w, h, job.source)
        while nxt in used:
            nxt += 1
        p.frame, p.object_id = index, nxt
        used.add(nxt)
    return chain(seen, frames), boxes
