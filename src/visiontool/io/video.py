"""Video files, live streams and webcams in, annotated videos out — PyAV (FFmpeg) underneath.

Sources: files (mp4, mkv, webm, mov, avi, ...), live URLs (``rtsp://``, ``rtmp://``, ``srt://``,
``udp://``; an ``http(s)://`` URL whose path has a video extension), and webcams (``webcam:N``,
V4L2 ``/dev/videoN`` on Linux). Frames are decoded one at a time (FFmpeg's own threads), so
memory stays flat however long the video; ``frame`` is the 0-based index in the decoded
stream and ``time_s`` its presentation time.

A file that breaks mid-way yields every frame decoded before the damage, then raises
:class:`VideoError` (exit 1: the frames already written are kept). A live stream that fails
or stalls is reopened up to ``reconnect`` times with exponential backoff; one that ends
cleanly ends the run.

:class:`VideoWriter` writes an annotated copy (same size and frame rate) to a temporary
sibling and renames it when closed — also on an interrupt, after flushing the encoder, so
the file is always playable.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from visiontool.errors import ImageLoadError, UsageError, require

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".wmv",
                    ".flv", ".3gp", ".ogv"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "srt://", "udp://", "tcp://", "rtp://")
WEBCAM = re.compile(r"^webcam:(\d+)$")
OPEN_TIMEOUT_S = 10.0  # connecting / first packet
READ_TIMEOUT_S = 10.0  # a live stream silent this long has stalled


class VideoError(ImageLoadError):
    """A video could not be opened or broke while decoding (exit 1; earlier frames are kept)."""


def av():
    return require("av", "video input", "video")


def is_video_path(name: str) -> bool:
    base = name.split("?")[0].lower()
    return os.path.splitext(base)[1] in VIDEO_EXTENSIONS


def is_stream(name: str) -> bool:
    """A live source: a streaming URL or a webcam (explicitly ``webcam:N``)."""
    return name.lower().startswith(STREAM_SCHEMES) or WEBCAM.match(name) is not None


def is_video_source(name: str) -> bool:
    return is_stream(name) or is_video_path(name)


@dataclass(frozen=True)
class Position:
    """A point in a video: a frame index, or a time in seconds."""

    value: float
    unit: str  # "frame" | "s"

    def frame(self, fps: float | None) -> int:
        if self.unit == "frame":
            return int(self.value)
        return int(round(self.value * (fps or 30.0)))

    def reached(self, index: int, time_s: float) -> bool:
        return index >= self.value if self.unit == "frame" else time_s >= self.value - 1e-9


def parse_position(text: str | None, flag: str) -> Position | None:
    """``--start``/``--end``: ``120`` (a frame index), ``4.5s`` or ``1:30`` / ``0:01:30.5`` (time)."""
    if text is None:
        return None
    t = str(text).strip().lower()
    try:
        if t.endswith("s"):
            val, unit = float(t[:-1]), "s"
        elif ":" in t:
            parts = [float(p) for p in t.split(":")]
            if len(parts) > 3:
                raise ValueError
            val, unit = sum(p * 60 ** i for i, p in enumerate(reversed(parts))), "s"
        else:
            val, unit = int(t), "frame"
    except ValueError:
        raise UsageError(f"invalid {flag} '{text}': expected a frame index (120), seconds (4.5s) or a time "
                         "(1:30)") from None
    if not np.isfinite(val) or val < 0:
        raise UsageError(f"invalid {flag} '{text}': must be >= 0")
    return Position(val, unit)


@dataclass
class VideoInfo:
    name: str
    width: int
    height: int
    fps: float | None
    frames: int | None  # as the container declares it (None: unknown, e.g. live)
    duration_s: float | None
    live: bool = False


def _open(name: str, timeout: float = OPEN_TIMEOUT_S):
    """An av container for a file, URL or webcam (VideoError with FFmpeg's reason)."""
    mod = av()
    options: dict[str, str] = {}
    fmt = None
    target = name
    m = WEBCAM.match(name)
    if m:
        target, fmt = f"/dev/video{m.group(1)}", "v4l2"
    if name.lower().startswith(("rtsp://", "rtsps://")):
        options["rtsp_transport"] = "tcp"
    try:
        return mod.open(target, mode="r", format=fmt, options=options, timeout=(timeout, READ_TIMEOUT_S))
    except (mod.error.FFmpegError, OSError) as exc:
        raise VideoError(f"{name}: cannot open video ({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _video_stream(container, name: str):
    streams = container.streams.video
    if not streams:
        kinds = sorted({s.type for s in container.streams})
        what = "audio only" if kinds == ["audio"] else f"no video stream (streams: {', '.join(kinds) or 'none'})"
        raise VideoError(f"{name}: {what}; nothing to detect")
    s = streams[0]
    s.thread_type = "AUTO"  # FFmpeg's frame/slice threads
    return s


def probe(name: str) -> VideoInfo:
    """Size, frame rate and declared length of a video source (opens it, decodes nothing)."""
    with _open(name) as c:
        s = _video_stream(c, name)
        fps = float(s.average_rate) if s.average_rate else (float(s.guessed_rate) if s.guessed_rate else None)
        dur = float(s.duration * s.time_base) if s.duration and s.time_base else \
            (c.duration / 1_000_000 if c.duration else None)
        frames = int(s.frames) if s.frames else (int(round(dur * fps)) if dur and fps else None)
        return VideoInfo(name, s.codec_context.width, s.codec_context.height, fps, frames, dur, is_stream(name))


@dataclass
class Frame:
    index: int  # 0-based in the decoded stream
    time_s: float
    image: Any  # PIL RGB image


def iter_frames(name: str, *, stride: int = 1, start: Position | None = None, end: Position | None = None,
                max_frames: int | None = None, reconnect: int = 0) -> Iterator[Frame]:
    """Decoded RGB frames of ``name``: every ``stride``-th frame from ``start`` up to (excluding)
    ``end``, at most ``max_frames`` of them. VideoError after the last good frame if the
    video breaks; a live source is reopened up to ``reconnect`` times (1, 2, 4, ... s apart)."""
    if stride < 1:
        raise UsageError(f"--vid-stride must be at least 1, got {stride}")
    emitted = 0
    next_index = 0  # frames of a live source keep counting across reconnects
    attempts = 0
    live = is_stream(name)
    while True:
        try:
            for fr in _decode(name, next_index, live):
                next_index = fr.index + 1
                attempts = 0
                if end is not None and end.reached(fr.index, fr.time_s):
                    return
                if start is not None and not start.reached(fr.index, fr.time_s):
                    continue
                offset = fr.index - (start.frame(None) if start is not None and start.unit == "frame" else 0)
                if offset % stride:
                    continue
                yield fr
                emitted += 1
                if max_frames is not None and emitted >= max_frames:
                    return
            return  # the source ended cleanly
        except VideoError:
            if not live or attempts >= reconnect:
                raise
            attempts += 1
            time.sleep(min(2 ** (attempts - 1), 30))


def _decode(name: str, first_index: int, live: bool) -> Iterator[Frame]:
    mod = av()
    container = _open(name)
    try:
        stream = _video_stream(container, name)
        fps = float(stream.average_rate) if stream.average_rate else None
        index = first_index
        try:
            for frame in container.decode(stream):
                t = float(frame.time) if frame.time is not None else (index / fps if fps else 0.0)
                yield Frame(index, t, frame.to_image())
                index += 1
        except (mod.error.FFmpegError, OSError, ValueError) as exc:
            what = "stream failed" if live else "corrupt or truncated video"
            raise VideoError(f"{name}: {what} after {index - first_index} decoded frame(s) "
                             f"({_reason(exc)})") from exc
        if index == first_index and not live:
            raise VideoError(f"{name}: no decodable frame (empty or corrupt video)")
    finally:
        container.close()


def prefetch(items: Iterator[Any], depth: int = 4) -> Iterator[Any]:
    """Run ``items`` (e.g. decoding) in a background thread, ``depth`` ahead of the consumer,
    so decoding overlaps inference. Exceptions are re-raised in the consumer, in order."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def work():
        try:
            for it in items:
                while not stop.is_set():
                    try:
                        q.put((it, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put((done, exc))

    th = threading.Thread(target=work, daemon=True, name="visiontool-prefetch")
    th.start()
    try:
        while True:
            it, exc = q.get()
            if it is done:
                if exc is not None:
                    raise exc
                return
            yield it
    finally:
        stop.set()


class VideoWriter:
    """An annotated video: same size and frame rate as the input, H.264 in mp4/mkv/mov, VP9
    in webm, MPEG-4 in avi. Written to a temporary sibling and renamed on close (also after
    an interrupt: the encoder is flushed first, so the file plays)."""

    CODECS = {".webm": "libvpx-vp9", ".avi": "mpeg4"}

    def __init__(self, path: str | os.PathLike, fps: float | None, width: int, height: int):
        mod = av()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        ext = self.path.suffix.lower() or ".mp4"
        self.tmp = self.path.with_name(f".{self.path.stem}.{os.getpid()}.part{ext}")
        self.container = mod.open(str(self.tmp), mode="w")
        codec = self.CODECS.get(ext, "libx264")
        from fractions import Fraction

        rate = Fraction(fps or 30.0).limit_denominator(1001)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width, height
        even = width % 2 == 0 and height % 2 == 0
        self.stream.pix_fmt = "yuv420p" if even or codec != "libx264" else "yuv444p"
        if codec == "libx264":
            self.stream.options = {"preset": "veryfast", "crf": "20"}
        self.size = (width, height)
        self.frames = 0
        self._closed = False

    def write(self, image) -> None:
        mod = av()
        rgb = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        if (rgb.shape[1], rgb.shape[0]) != self.size:
            raise ValueError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, the video is {self.size[0]}x{self.size[1]}")
        frame = mod.VideoFrame.from_ndarray(np.ascontiguousarray(rgb, dtype=np.uint8), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> Path:
        if self._closed:
            return self.path
        self._closed = True
        try:
            for packet in self.stream.encode(None):  # flush the encoder's delayed frames
                self.container.mux(packet)
        finally:
            self.container.close()
        if self.frames:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
        return self.path

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def write_test_video(path: str | os.PathLike, frames: int = 24, size: tuple[int, int] = (160, 120),
                     fps: int = 12, squares: int = 1) -> list[list[tuple[int, int, int, int]]]:
    """A synthetic clip of white squares moving on grey (for tests and benchmarks); returns
    each frame's square boxes (x1, y1, x2, y2), the known trajectories."""
    w, h = size
    side = max(8, min(w, h) // 6)
    boxes_per_frame = []
    with VideoWriter(path, fps, w, h) as vw:
        for i in range(frames):
            img = np.full((h, w, 3), 96, np.uint8)
            boxes = []
            for k in range(squares):
                x = int((k * w / max(squares, 1) + i * (w - side) / max(frames - 1, 1)) % (w - side))
                y = int((k + 1) * (h - side) / (squares + 1))
                img[y:y + side, x:x + side] = (240, 240, 240) if k % 2 == 0 else (220, 60, 60)
                boxes.append((x, y, x + side, y + side))
            vw.write(img)
            boxes_per_frame.append(boxes)
    return boxes_per_frame
