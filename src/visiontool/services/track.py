"""Multi-object tracking (``detect --track``) with Roboflow's ``trackers`` library.

``trackers`` (Apache-2.0) implements ByteTrack (default), SORT, OC-SORT, BoT-SORT, C-BIoU
and McByte behind one ``update(sv.Detections) -> sv.Detections`` call; this module adapts
it to visiontool's record and never associates boxes itself:

* one tracker per video source, created at the source's first frame with the frame rate
  the tracker sees (the video's fps divided by ``--vid-stride``, so lost-track buffers keep
  their meaning in seconds), reset for the next video;
* ``--threshold`` becomes the tracker's confidence split: detections with score >=
  threshold may start tracks (``track_activation_threshold``) and are associated first
  (``high_conf_det_threshold``); the detector itself runs down to :data:`TRACK_LOW` (0.1,
  Ultralytics' ``track_low_thresh``) so ByteTrack-style trackers can continue a track
  through a low-score frame (their second association). A record keeps every detection
  with score >= threshold plus the lower ones a tracker matched to a track;
* ids are the library's plus one, so they start at 1 like MOTChallenge ids; a detection a
  tracker has not confirmed yet (ByteTrack confirms a new track on its second
  consecutive frame) carries no ``track_id``;
* BoT-SORT and McByte get the frame for camera-motion compensation (BGR for BoT-SORT,
  RGB for McByte, as each documents); the others take boxes only.

Tracking is class-agnostic, as in the library: a track keeps its id when the detector's
label for the object changes from one frame to the next (the record keeps each frame's label).
"""
from __future__ import annotations

import inspect
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from visiontool.errors import UsageError, require
from visiontool.types import Detections, ImageResult

DEFAULT_TRACKER = "bytetrack"
TRACK_LOW = 0.1  # detections down to this score are handed to the tracker (low-score association)
FRAME_ORDER = {"botsort": "bgr", "mcbyte": "rgb"}  # trackers that use the image (CMC), and its channel order


def _trackers():
    return require("trackers", "--track", "track")


def available_trackers() -> dict[str, type]:
    """{name: tracker class} for every tracker the installed ``trackers`` package exports."""
    mod = _trackers()
    base = mod.core.base.BaseTracker
    out = {}
    for attr in getattr(mod, "__all__", dir(mod)):
        cls = getattr(mod, attr, None)
        if isinstance(cls, type) and issubclass(cls, base) and getattr(cls, "tracker_id", None):
            out[str(cls.tracker_id)] = cls
    return dict(sorted(out.items()))


def _coerce(value: str, default: Any, key: str, annotation: Any = None) -> Any:
    if isinstance(default, bool):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise UsageError(f"--tracker-opt {key}={value}: expected true or false")
    for kind in (int, float):
        if isinstance(default, kind):
            try:
                number = kind(value)
            except ValueError:
                raise UsageError(f"--tracker-opt {key}={value}: expected {kind.__name__}") from None
            if not math.isfinite(number):  # nan made every comparison false: no track was ever made
                raise UsageError(f"--tracker-opt {key}={value}: expected a finite number")
            if "threshold" in key and not 0.0 <= number <= 1.0:  # a score or an IoU
                raise UsageError(f"--tracker-opt {key}={value}: expected a number in [0, 1]")
            return number
    choices = typing.get_args(annotation) if typing.get_origin(annotation) is typing.Literal else ()
    if choices and value not in choices:
        raise UsageError(f"--tracker-opt {key}={value}: expected one of {', '.join(map(str, choices))}")
    return value


def parse_tracker_options(name: str, opts: list[str] | None) -> dict[str, Any]:
    """``--tracker-opt lost_track_buffer=60`` -> {"lost_track_buffer": 60}, checked against the
    tracker's constructor (names and the types of their defaults)."""
    cls = available_trackers()[name]
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k != "self"}
    simple = {k: p.default for k, p in params.items()
              if isinstance(p.default, (bool, int, float, str)) and k != "frame_rate"}
    out: dict[str, Any] = {}
    for item in opts or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--tracker-opt '{item}': expected KEY=VALUE (e.g. lost_track_buffer=60)")
        if key not in simple:
            raise UsageError(f"--tracker-opt '{key}': {name} has no such option (it has: {', '.join(sorted(simple))})")
        out[key] = _coerce(value, simple[key], key, params[key].annotation)
    return out


@dataclass(frozen=True)
class TrackOptions:
    """``--track [--tracker NAME] [--tracker-opt KEY=VALUE]...``."""

    tracker: str = DEFAULT_TRACKER
    params: dict = field(default_factory=dict)


def check_track_options(tracker: str | None, opts: list[str] | None = None) -> TrackOptions:
    """UsageError now (before any model loads) for an unknown tracker or option; exit 2 with
    the install line when the ``trackers`` package is missing."""
    name = (tracker or DEFAULT_TRACKER).strip().lower()
    known = available_trackers()
    if name not in known:
        import difflib

        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        raise UsageError(f"unknown --tracker '{tracker}': expected one of {', '.join(known)}{hint}")
    return TrackOptions(name, parse_tracker_options(name, opts))


class TrackStage:
    """Adds ``track_id`` to each frame's detections, one tracker per video source.

    Call it with every (result, image, fps) in order; photos (``result.frame is None``) and
    failed items pass through unchanged. ``threshold`` is the user's ``--threshold``; run the
    detector at :meth:`detection_floor` so the tracker also sees the low-score boxes."""

    def __init__(self, options: TrackOptions, threshold: float, stride: int = 1,
                 warn: Callable[[str], None] | None = None):
        self.options = options
        self.threshold = float(threshold)
        self.stride = max(1, int(stride))
        self.warn = warn
        self.cls = available_trackers()[options.tracker]
        self._tracker = None
        self._source: str | None = None
        self.updates = 0  # frames tracked

    def detection_floor(self) -> float:
        return min(self.threshold, TRACK_LOW)

    def _new_tracker(self, fps: float | None):
        params = inspect.signature(self.cls.__init__).parameters
        kwargs: dict[str, Any] = {}
        rate = (fps or 30.0) / self.stride
        if "frame_rate" in params:
            kwargs["frame_rate"] = rate
        for key in ("track_activation_threshold", "high_conf_det_threshold"):
            if key in params:
                kwargs[key] = self.threshold
        kwargs.update(self.options.params)
        try:
            return self.cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--tracker {self.options.tracker}: {exc}") from None

    def __call__(self, result: ImageResult, image: Any, fps: float | None = None) -> ImageResult:
        if result.frame is None or result.error is not None:
            return result
        if result.image != self._source or self._tracker is None:
            self._tracker = self._new_tracker(fps)
            self._source = result.image
        d = result.detections
        ids = self._update(d, image)
        keep = (d.scores >= self.threshold) | (ids >= 1)
        tracked = d.with_columns(track_id=ids)[keep].sorted_by_score()
        result.detections = tracked
        self.updates += 1
        return result

    def _update(self, d: Detections, image: Any) -> np.ndarray:
        """Track ids (>= 1, or -1 when unconfirmed) for the rows of ``d``."""
        import supervision as sv

        det = sv.Detections(xyxy=d.xyxy.astype(np.float32).reshape(-1, 4),
                            confidence=d.scores.astype(np.float32),
                            class_id=d.class_ids.astype(int), data={"row": np.arange(len(d))})
        frame = None
        order = FRAME_ORDER.get(self.options.tracker)
        if order is not None and image is not None:
            rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
            frame = np.ascontiguousarray(rgb[:, :, ::-1]) if order == "bgr" else rgb
        out = self._tracker.update(det, frame=frame) if frame is not None else self._tracker.update(det)
        ids = np.full(len(d), -1, dtype=np.int64)
        tid = getattr(out, "tracker_id", None)
        if len(out) and tid is not None and "row" in out.data:
            rows = np.asarray(out.data["row"], dtype=np.int64)
            tid = np.asarray(tid, dtype=np.int64)
            ids[rows] = np.where(tid >= 0, tid + 1, -1)
        return ids
