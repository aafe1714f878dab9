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
from typing import Any, Callable, Iterator

import numpy as np

from visiontool.errors import ImageLoadError, UsageError, require

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi", ".mpg", ".mpeg", ".ts", ".m2ts", ".wmv",
                    ".flv", ".3gp", ".ogv"}
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "rtmps://", "srt://", "udp://", "tcp://", "rtp://")
WEBCAM = re.compile(r"^webcam:(\d+)$")
READ_TIMEOUT_S = 10.0  # a source silent this long (connecting, probing or reading) has stalled


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


def _open(name: str):
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
        return mod.open(target, mode="r", format=fmt, options=options, timeout=read_timeout_s())
    except (mod.error.FFmpegError, OSError) as exc:
        reason = _reason(exc)
        if "end of file" in reason.lower():
            reason += ": the file is empty or cut short"
        raise VideoError(f"{name}: cannot open video ({reason})") from exc


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    text = " ".join(str(text).split()) or type(exc).__name__
    if "immediate exit requested" in text.lower():  # PyAV's timeout interrupt
        return f"stalled: no data for {read_timeout_s():g} s"
    return text


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
        width, height = s.codec_context.width, s.codec_context.height
        if not is_stream(name) and _quarter_turns(_first_frame(c, s)) % 2:  # shown upright: portrait
            width, height = height, width
        return VideoInfo(name, width, height, fps, frames, dur, is_stream(name))


def _first_frame(container, stream):
    """The first decoded frame (its side data says how it is shown), or None."""
    try:
        return next(iter(container.decode(stream)), None)
    except Exception:  # noqa: BLE001 - reading the frames reports a broken file properly
        return None


def _quarter_turns(frame) -> int:
    """Counterclockwise quarter turns that show ``frame`` upright: its DISPLAYMATRIX rotation
    (a phone stores portrait video as landscape frames marked -90 or 90), 0 without one."""
    try:
        return int(round(float(frame.rotation or 0) / 90)) % 4 if frame is not None else 0
    except (AttributeError, TypeError, ValueError):  # an older PyAV or odd side data: as stored
        return 0


def upright(frame):
    """A decoded frame as a PIL RGB image the way players show it, as EXIF orientation is
    applied to photos: records, prompts and annotated videos are in the upright frame."""
    from PIL import Image

    img = frame.to_image()
    turn = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180,
            3: Image.Transpose.ROTATE_270}.get(_quarter_turns(frame))
    return img.transpose(turn) if turn is not None else img


@dataclass
class Frame:
    index: int  # 0-based in the decoded stream
    time_s: float  # presentation time in seconds from the stream's start
    image: Any  # PIL RGB image
    fps: float | None = None  # the stream's average frame rate (None: unknown)


def is_network(name: str) -> bool:
    """A source read over the network (or a device): reconnecting makes sense for it."""
    return is_stream(name) or name.lower().startswith(("http://", "https://"))


def read_timeout_s() -> float:
    """Seconds a source may stay silent before it counts as stalled (VISIONTOOL_STREAM_TIMEOUT)."""
    try:
        return max(0.1, float(os.environ.get("VISIONTOOL_STREAM_TIMEOUT", READ_TIMEOUT_S)))
    except ValueError:
        return READ_TIMEOUT_S


def iter_frames(name: str, *, stride: int = 1, start: Position | None = None, end: Position | None = None,
                max_frames: int | None = None, reconnect: int = 0, live: bool | None = None,
                on_retry: Callable[[str], None] | None = None) -> Iterator[Frame]:
    """Decoded RGB frames of ``name``: every ``stride``-th frame from ``start`` up to (excluding)
    ``end``, at most ``max_frames`` of them.

    ``live`` (default: :func:`is_stream`) is a source without an end or a seekable past:
    its frames keep counting across reconnects. A network source (a live one, or a video
    file over http(s)) that cannot be opened, fails or stalls is reopened up to ``reconnect``
    times (1, 2, 4, ... s apart; ``on_retry`` hears why); a file over http resumes after the
    last frame it gave, so no frame comes twice. A local file is never retried: VideoError
    after its last good frame (also when it ends short of the frames or duration its header
    declares — a truncated file)."""
    if stride < 1:
        raise UsageError(f"--vid-stride must be at least 1, got {stride}")
    live = is_stream(name) if live is None else live
    network = live or is_network(name)
    first = start.frame(None) if start is not None and start.unit == "frame" else None
    emitted = 0
    next_index = 0  # the first frame not handed out yet (live: keeps counting across reconnects)
    attempts = 0
    selected_first: int | None = None  # time-based --start: stride counts from the first frame reached
    while True:
        try:
            for index, t, frame, fps in _decode(name, next_index, live, network):
                next_index = index + 1
                attempts = 0
                if end is not None and end.reached(index, t):
                    return
                if start is not None and not start.reached(index, t):
                    continue
                if selected_first is None:
                    selected_first = first if first is not None else index
                if (index - selected_first) % stride:
                    continue
                yield Frame(index, t, upright(frame), fps)
                emitted += 1
                if max_frames is not None and emitted >= max_frames:
                    return
            return  # the source ended cleanly
        except VideoError as exc:
            if not network or attempts >= reconnect:
                if network and reconnect:
                    raise VideoError(f"{exc} (gave up after {reconnect} reconnect attempt"
                                     f"{'s' if reconnect != 1 else ''})") from exc
                raise
            attempts += 1
            delay = min(2 ** (attempts - 1), 30)
            if on_retry is not None:
                on_retry(f"{exc}; reconnecting in {delay} s (attempt {attempts} of {reconnect})")
            time.sleep(delay)


# container formats whose header states the duration (an MPEG-TS/PS "duration" is an estimate)
_DECLARED_DURATION = ("matroska", "mov", "mp4", "avi", "flv", "asf", "ogg", "nut")


def _decode(name: str, resume_from: int, live: bool,
            network: bool = False) -> Iterator[tuple[int, float, Any, float | None]]:
    """(index, time_s, av.VideoFrame, fps) for each decoded frame. A live source numbers its
    frames from ``resume_from``; any other source from 0, silently skipping the frames below
    ``resume_from`` (those a previous connection already gave)."""
    mod = av()
    container = _open(name)
    try:
        stream = _video_stream(container, name)
        fps = float(stream.average_rate) if stream.average_rate else \
            (float(stream.guessed_rate) if stream.guessed_rate else None)
        tb = float(stream.time_base) if stream.time_base else None
        t0 = stream.start_time if stream.start_time is not None else 0
        index = resume_from if live else 0
        first = index
        last_t = -1.0
        try:
            for frame in container.decode(stream):
                if frame.pts is not None and tb:
                    t = (frame.pts - t0) * tb
                else:
                    t = index / fps if fps else 0.0
                if index >= resume_from:
                    yield index, t, frame, fps
                last_t = max(last_t, t)
                index += 1
        except (mod.error.FFmpegError, OSError, ValueError) as exc:
            what = "stream failed" if live or network else "corrupt or truncated video"
            raise VideoError(f"{name}: {what} after {index - first} decoded frame(s) "
                             f"({_reason(exc)})") from exc
        if live:
            return
        if index == 0:
            raise VideoError(f"{name}: no decodable frame (empty or corrupt video)")
        short = _shortfall(container, stream, index, last_t, fps)
        if short:
            raise VideoError(f"{name}: truncated or corrupt video: {short}")
    finally:
        container.close()


def _shortfall(container, stream, decoded: int, last_t: float, fps: float | None) -> str | None:
    """Why a file that ended cleanly is nevertheless incomplete (None: it is complete): fewer
    frames than its header counts, or (no count) an end well before its declared duration."""
    declared = int(stream.frames or 0)
    if declared:
        if decoded < declared - (2 + declared // 500):
            return f"decoded {decoded} of the {declared} frames its header declares"
        return None
    fmt = (container.format.name or "") if container.format is not None else ""
    if not any(f in fmt.split(",") for f in _DECLARED_DURATION):
        return None
    tb = float(stream.time_base) if stream.time_base else None
    duration = float(stream.duration * tb) if stream.duration and tb else \
        (container.duration / 1_000_000 if container.duration else None)
    if duration is None or fps is None:
        return None
    covered = last_t + 1.0 / fps
    if covered < duration - max(0.5, 2.0 / fps, 0.002 * duration):
        return f"decoded {decoded} frame(s) covering {covered:.2f} s of its declared {duration:.2f} s"
    return None


def prefetch(items: Iterator[Any], depth: int = 4) -> Iterator[Any]:
    """Run ``items`` (e.g. decoding) in a background thread, ``depth`` ahead of the consumer,
    so decoding overlaps inference. Exceptions are re-raised in the consumer, in order. When
    the consumer stops early (an error, an interrupt, ``--max-frames``), the thread stops at
    its next hand-over and drops ``items``."""
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    done = object()
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for it in items:
                if not put((it, None)):
                    return
            put((done, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((done, exc))

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
                     fps: int = 12, squares: int = 1,
                     speed: float | None = None) -> list[list[tuple[int, int, int, int]]]:
    """A synthetic clip of squares moving on grey (for tests and benchmarks); returns each
    frame's square boxes (x1, y1, x2, y2), the known trajectories. Square k starts at
    x = k * width / squares on its own row (rows never overlap) and moves right by ``speed``
    pixels per frame, bouncing off the edges, so every trajectory is continuous; by default
    square 0 crosses the frame from left to right over the clip."""
    w, h = size
    side = max(8, min(w, h) // 6)
    span = max(w - side, 1)
    speed = span / max(frames - 1, 1) if speed is None else float(speed)
    boxes_per_frame = []
    with VideoWriter(path, fps, w, h) as vw:
        for i in range(frames):
            img = np.full((h, w, 3), 96, np.uint8)
            boxes = []
            for k in range(squares):
                u = (k * w / max(squares, 1) + i * speed) % (2 * span)
                x = int(round(u if u <= span else 2 * span - u))
                y = int((k + 1) * (h - side) / (squares + 1))
                img[y:y + side, x:x + side] = (240, 240, 240) if k % 2 == 0 else (220, 60, 60)
                boxes.append((x, y, x + side, y + side))
            vw.write(img)
            boxes_per_frame.append(boxes)
    return boxes_per_frame
