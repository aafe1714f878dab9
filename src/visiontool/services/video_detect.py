"""The per-frame detection loop over photos, video files and streams (``detect`` on any source).

Items (:func:`visiontool.io.sources.iter_items`: photos decoded one at a time, video
frames one at a time) are produced in a background thread (:func:`visiontool.io.video.prefetch`,
a few items ahead), so decoding overlaps inference; they go through the ordinary detection
loop (:func:`visiontool.services.detect.iter_detect`, batches of equal-shape images) and,
with ``--track``, through a :class:`~visiontool.services.track.TrackStage`. Nothing is kept
per frame: each result is handed on as it finishes, so memory stays flat however long the
video (``run_detect(..., keep_results=False)``).
"""
from __future__ import annotations

import time
from typing import Any, Iterable, Iterator

from visiontool.errors import UsageError
from visiontool.io.sources import Item, Source
from visiontool.models.protocol import DetectOptions
from visiontool.types import ImageResult, Timings

PREFETCH_DEPTH = 4  # items decoded ahead of the model (a few frames: bounded memory)


def check_track_sources(sources: list[Any]) -> None:
    """``--track`` needs at least one video or stream among the sources (exit 2 otherwise)."""
    named = [s for s in sources if isinstance(s, Source)]
    if named and not any(s.is_video for s in named):
        what = f"'{named[0].name}' is a photo" if len(named) == 1 else "every source is a photo"
        raise UsageError(f"--track follows objects across video frames: {what}; give a video file, a stream or "
                         "a webcam")
    if not named and sources:
        raise UsageError("--track needs video sources (paths or stream URLs), not in-memory images")


def iter_media_detect(items: Iterable[Item], detector, options: DetectOptions, *, classes: set[int] | None = None,
                      batch_size: int = 1, gt=None, timings: Timings | None = None, track=None,
                      prefetch_depth: int = PREFETCH_DEPTH) -> Iterator[tuple[ImageResult, Any]]:
    """Yield ``(result, decoded image or None)`` per item, in order (failed items carry
    ``result.error``). ``track``: a TrackStage; then ``options.threshold`` should be its
    :meth:`~visiontool.services.track.TrackStage.detection_floor` — the stage applies the
    user's threshold after tracking. ``prefetch_depth`` 0 decodes in this thread."""
    from visiontool.io.video import prefetch
    from visiontool.services.detect import iter_detect

    timings = timings if timings is not None else Timings()
    fps_of: dict[str, float] = {}

    def remember(stream: Iterable[Item]) -> Iterator[Item]:
        for it in stream:
            if it.fps:
                fps_of[it.name] = it.fps
            yield it

    stream = remember(items)
    if prefetch_depth > 0:
        stream = prefetch(stream, prefetch_depth)
    try:
        for result, image in iter_detect(stream, detector, options, classes=classes, batch_size=batch_size, gt=gt,
                                         timings=timings):
            if track is not None and image is not None:
                t0 = time.perf_counter()
                result = track(result, image, fps_of.get(result.image))
                timings.postprocess += time.perf_counter() - t0
            yield result, image
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()  # stop the decoding thread now (an error, an interrupt, the consumer stopped)
