"""What a command runs on, one item at a time: photos, video frames and live streams.

:func:`expand_media` turns SOURCE arguments into :class:`Source` s (photos, video files,
live streams and webcams), checked before any model loads. :func:`iter_items` turns them
(and in-memory images) into :class:`Item` s, decoding lazily — one photo or one frame at a
time — so memory stays flat however many inputs there are and however long a video is.
A source that cannot be read becomes an item with ``error`` (the command reports it and
goes on); a video that breaks mid-way gives its good frames first, then such an item.

Which kind a SOURCE is (``--source-type auto``): ``webcam:N`` and ``rtsp://``, ``rtmp://``,
``srt://``, ``udp://``, ``tcp://``, ``rtp://`` URLs are live streams; files and http(s) URLs
with a video extension (mp4, mkv, webm, mov, avi, ...; an audio extension too, so PyAV can
say "audio only") are videos; everything else is a photo, as before. Directories list
their photos and videos. ``--source-type`` forces a kind: ``image`` (the photo-only
behaviour), ``video`` (decode whatever the extension), ``stream`` (a live URL, e.g. an
http MJPEG or HLS endpoint) and ``webcam`` (``0`` is webcam 0, so a file named ``0``
stays a file otherwise).
"""
from __future__ import annotations

import glob
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from visiontool.errors import ImageLoadError, UsageError

SOURCE_TYPES = ("auto", "image", "video", "stream", "webcam")
AUDIO_EXTENSIONS = {".m4a", ".mp3", ".wav", ".aac", ".flac", ".oga", ".opus", ".wma", ".mka"}
FRAME_ID_STRIDE = 1_000_000  # image_id of frame F of source P when several sources run: P * this + F
_WEBCAM_ARG = re.compile(r"^(?:webcam:|/dev/video)?(\d+)$")


@dataclass(frozen=True)
class Source:
    """One SOURCE after expansion. kind: ``image`` (a photo), ``video`` (a file, local or
    over http(s)) or ``stream`` (live: a streaming URL or a webcam)."""

    name: str
    kind: str = "image"

    @property
    def is_video(self) -> bool:
        return self.kind in ("video", "stream")


@dataclass(frozen=True)
class VideoOptions:
    """How videos and streams are read (``detect --vid-stride/--start/--end/--max-frames/
    --reconnect``); see :func:`visiontool.io.video.iter_frames`."""

    stride: int = 1
    start: Any = None  # visiontool.io.video.Position
    end: Any = None
    max_frames: int | None = None  # per video source
    reconnect: int = 3


@dataclass
class Item:
    """One image or video frame to process.

    name: what records show as ``image`` (the file, URL or video path);
    image: the decoded RGB PIL image (None when ``error`` is set);
    position: 1-based position of its source among the inputs (default image ids);
    frame / time_s: the 0-based frame index in the decoded stream and its presentation time
    in seconds, for video sources (None for photos);
    fps: the video's frame rate (None: a photo, or unknown);
    image_id: the image id when no ground truth is given (None: the default rule).
    """

    name: str
    image: Any = None
    position: int = 0
    frame: int | None = None
    time_s: float | None = None
    error: str | None = None
    fps: float | None = None
    image_id: int | None = None


def frame_file_name(name: str, frame: int) -> str:
    """The COCO ``file_name`` that names frame ``frame`` (0-based) of video ``name`` in a
    ground truth: ``clip.mp4#frame=12`` (matched like a photo's: by path suffix, then base name)."""
    return f"{name}#frame={int(frame)}"


def item_image_id(item: Item, gt=None) -> int | None:
    """The record's image id: from the ground truth when one is given (photos by file name,
    frames by :func:`frame_file_name`), else the photo's numeric stem or position, and for a
    frame its index (several sources: ``position * 1_000_000 + frame``)."""
    from visiontool.convert import default_image_id

    if item.frame is None:
        return gt.image_id_for(item.name) if gt is not None else default_image_id(item.name, item.position)
    if gt is not None:
        return gt.image_id_for(frame_file_name(item.name, item.frame))
    return item.image_id if item.image_id is not None else int(item.frame)


# ----------------------------------------------------------------------------- expansion
def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _kind_of_file(name: str) -> str:
    from visiontool.io.video import is_video_path

    ext = os.path.splitext(name.split("?")[0].lower())[1]
    return "video" if is_video_path(name) or ext in AUDIO_EXTENSIONS else "image"


def _media_in_dir(d: Path, recursive: bool, kinds: tuple[str, ...]) -> list[Path]:
    from visiontool.io.images import IMAGE_EXTENSIONS, files_in_dir
    from visiontool.io.video import VIDEO_EXTENSIONS

    exts = (IMAGE_EXTENSIONS if "image" in kinds else set()) | (VIDEO_EXTENSIONS if "video" in kinds else set())
    return files_in_dir(d, recursive, exts)


def file_url_path(url: str) -> str:
    """``file:///data/a%20b.jpg`` -> ``/data/a b.jpg`` (UsageError for another machine's file)."""
    from urllib.parse import urlsplit
    from urllib.request import url2pathname

    parts = urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise UsageError(f"'{url}' names a file on the host '{parts.netloc}'; a file:// URL must name a file on "
                         "this machine (file:///path)")
    return url2pathname(parts.path)


def expand_media(sources: list[str], recursive: bool = False, source_type: str = "auto",
                 stdin=None) -> list[Source]:
    """SOURCE arguments -> Sources in a stable order without duplicates (module docstring).

    UsageError for an unknown ``source_type``, a path that does not exist, a glob that
    matches nothing, a directory with neither photos nor videos, or a ``webcam`` source that
    is not a device number. Streams are not contacted here (an unreachable one fails when
    it is read, after the retries)."""
    from visiontool.io.video import WEBCAM, is_stream

    if source_type not in SOURCE_TYPES:
        raise UsageError(f"invalid --source-type '{source_type}': expected {'|'.join(SOURCE_TYPES)}")
    photos = source_type == "image"
    if not sources:
        raise UsageError("no image given: pass files, directories, globs, URLs, or '-' for paths on stdin" if photos
                         else "no source given: pass files, directories, globs, URLs, streams, or '-' for paths "
                              "on stdin")
    out: list[Source] = []
    seen: set[str] = set()

    def add(name: str, kind: str) -> None:
        if name not in seen:
            seen.add(name)
            out.append(Source(name, kind))

    def add_file(name: str) -> None:
        add(name, "image" if photos else "video" if source_type == "video" else _kind_of_file(name))

    for raw in sources:
        if not raw.strip():  # an unset shell variable ("$DIR") must not mean the current directory
            raise UsageError(f"an empty source was given ('{raw}'); pass a file, directory, glob, URL or stream")
        if raw[:7].lower() == "file://":  # a file URL (copied from a browser, a manifest) names a local path
            raw = file_url_path(raw)
        if raw == "-":
            stream = stdin if stdin is not None else sys.stdin
            lines = [ln.strip() for ln in stream.read().splitlines()]
            lines = [ln for ln in lines if ln and not ln.startswith("#")]
            if not lines:
                raise UsageError(f"'-' was given but stdin holds no {'image ' if photos else ''}paths")
            for s in expand_media(lines, recursive=recursive, source_type=source_type):
                add(s.name, s.kind)
            continue
        if source_type == "webcam":
            m = _WEBCAM_ARG.match(raw.strip())
            if m is None:
                raise UsageError(f"--source-type webcam: '{raw}' is not a device number (give 0 for /dev/video0)")
            add(f"webcam:{int(m.group(1))}", "stream")
            continue
        if source_type == "stream":
            if not (is_stream(raw) or _is_url(raw)):
                raise UsageError(f"--source-type stream: '{raw}' is not a stream URL (rtsp://, rtmp://, srt://, "
                                 "udp://, http(s)://) or webcam:N")
            add(raw, "stream")
            continue
        if not photos and (is_stream(raw) or WEBCAM.match(raw)):
            add(raw, "stream")
            continue
        if _is_url(raw):
            add_file(raw)
            continue
        p = Path(raw).expanduser()
        if p.is_dir():
            kinds = ("video",) if source_type == "video" else ("image",) if photos else ("image", "video")
            files = _media_in_dir(p, recursive, kinds)
            if not files:
                hint = "" if recursive else " (use --recursive to look in subdirectories)"
                what = "videos" if source_type == "video" else "images" if photos else "images or videos"
                raise UsageError(f"directory '{raw}' holds no {what}{hint}")
            for f in files:
                add_file(str(f))
        elif p.is_file():
            add_file(str(p))
        elif glob.has_magic(raw):
            matches = sorted(m for m in glob.glob(os.path.expanduser(raw), recursive=recursive) if os.path.isfile(m))
            if not matches:
                raise UsageError(f"no file matches '{raw}'")
            for m in matches:
                add_file(m)
        elif p.exists():  # a FIFO (<(curl ...)), a socket or a device: no photo or video file to open
            from visiontool.io.readers import check_input_path

            camera = re.fullmatch(r"/dev/video(\d+)", os.path.realpath(p))
            if camera and not photos:  # V4L2's camera device: what webcam:N opens
                add(f"webcam:{int(camera.group(1))}", "stream")
                continue
            check_input_path(p, "source")  # says what it is
            raise UsageError(f"source '{raw}' is a pipe; give the file or URL itself (photos and videos are "
                             "read from files, http(s) URLs and stream URLs such as rtsp://)")
        else:
            hint = " (a webcam? use webcam:N or --source-type webcam)" if raw.isdigit() else ""
            raise UsageError(f"no such file or directory: '{raw}'{hint}")
    return out


# ----------------------------------------------------------------------------- items
def in_memory(items: Iterable[Any]) -> list[tuple[str, Any]]:
    """Python-API inputs: PIL images and HxWx3 uint8 arrays become (name, RGB image)."""
    from PIL import Image

    out = []
    for i, item in enumerate(items):
        if isinstance(item, np.ndarray):
            item = Image.fromarray(item)
        if not isinstance(item, Image.Image):
            raise UsageError(f"cannot process a {type(item).__name__}: pass paths, URLs, PIL images or HxWx3 "
                             "uint8 arrays")
        out.append((getattr(item, "filename", "") or f"<image {i}>", item.convert("RGB")))
    return out


def resolve_inputs(sources: Any, recursive: bool = False, source_type: str = "auto") -> list[Any]:
    """Python-API ``sources`` (a path, URL, glob, directory, video, stream, PIL image, array, or
    a list of them) -> :class:`Source` s, or (name, decoded image) pairs for in-memory images;
    paths are checked now (UsageError)."""
    items = list(sources) if isinstance(sources, (list, tuple)) else [sources]
    if all(isinstance(s, (str, Path)) for s in items):
        return expand_media([str(s) for s in items], recursive=recursive, source_type=source_type)
    return in_memory(items)


def iter_items(named: Iterable[Any], video: VideoOptions | None = None,
               on_retry: Callable[[str], None] | None = None, fps_table: dict | None = None) -> Iterator[Item]:
    """Items in input order, each decoded when it is reached (EXIF orientation, RGB).

    ``named``: :class:`Source` s, or (name, decoded image or None) pairs (a None image is
    read from ``name``: a photo, or a video by its extension). A video gives one item per
    selected frame (``video``: stride, range, max frames, reconnects; ``on_retry`` hears
    each reconnect), then, if it broke, one item with ``error``. ``fps_table`` (optional)
    receives each video's frame rate, {name: fps}, before its first frame is yielded."""
    from visiontool.io.images import ImageSource, is_url, load_image

    named = list(named)
    multi = len(named) > 1
    video = video or VideoOptions()
    for position, entry in enumerate(named, 1):
        if isinstance(entry, Source):
            name, image, kind = entry.name, None, entry.kind
        else:
            name, image = entry
            kind = "image" if image is not None else _auto_kind(name)
        if image is not None:
            yield Item(name, image, position)
            continue
        if kind != "image":
            yield from _frames(name, position, kind == "stream", multi, video, on_retry, fps_table)
            continue
        try:
            yield Item(name, load_image(ImageSource(name, is_url(name))), position)
        except ImageLoadError as exc:
            yield Item(name, None, position, error=str(exc))


def _auto_kind(name: str) -> str:
    from visiontool.io.video import WEBCAM, is_stream

    if is_stream(name) or WEBCAM.match(name):
        return "stream"
    return _kind_of_file(name)


def _frames(name: str, position: int, live: bool, multi: bool, video: VideoOptions,
            on_retry: Callable[[str], None] | None, fps_table: dict | None) -> Iterator[Item]:
    from visiontool.io.video import VideoError, iter_frames

    last = None
    try:
        for fr in iter_frames(name, stride=video.stride, start=video.start, end=video.end,
                              max_frames=video.max_frames, reconnect=video.reconnect, live=live,
                              on_retry=on_retry):
            if fps_table is not None and fr.fps:
                fps_table[name] = fr.fps
            last = fr
            yield Item(name, fr.image, position, frame=fr.index, time_s=fr.time_s, fps=fr.fps,
                       image_id=position * FRAME_ID_STRIDE + fr.index if multi else fr.index)
    except VideoError as exc:
        yield Item(name, None, position, error=str(exc))
        return
    if last is None and video.start is not None and not live:  # asked for frames the video does not have
        start = f"{video.start.value:g}s" if video.start.unit == "s" else f"frame {int(video.start.value)}"
        yield Item(name, None, position, error=f"{name}: --start {start} is at or after the end of the video: "
                                               "no frame was processed")


def expected_items(sources: list[Source], video: VideoOptions | None = None) -> int | None:
    """How many items ``sources`` will give (a progress bar's total): one per photo, and for a
    local video the frames its header declares, after range, stride and ``max_frames``.
    None when a stream, a remote video or an unreadable header makes it unknowable."""
    from visiontool.io.video import VideoError, is_network, probe

    video = video or VideoOptions()
    total = 0
    for s in sources:
        if not s.is_video:
            total += 1
            continue
        if s.kind == "stream" or is_network(s.name):
            return None
        try:
            info = probe(s.name)
        except (VideoError, UsageError):
            return None
        if not info.frames:
            return None
        first = video.start.frame(info.fps) if video.start is not None else 0
        last = min(info.frames, video.end.frame(info.fps)) if video.end is not None else info.frames
        n = max(0, -(-(last - first) // max(1, video.stride)))
        total += min(n, video.max_frames) if video.max_frames is not None else n
    return total
