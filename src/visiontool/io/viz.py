"""Annotated copies (``--save-viz``): masks as translucent colour, boxes, labels, scores, track ids.

One renderer for every command: detections with or without masks (Mask R-CNN, YOLO-seg,
SAM), tracks (their id in the label and a colour per id). For SAM masks the box drawn is
the prompt's box when there is one (a detection, ``--box``), else the mask's extent.
"""
from __future__ import annotations

import colorsys
import os
from pathlib import Path
from typing import Any

import numpy as np

from visiontool.types import NO_CLASS, Detections


def color_for(key: int | str) -> tuple[int, int, int]:
    """A stable, well-separated colour per key (golden-ratio hue walk)."""
    k = key if isinstance(key, (int, np.integer)) else sum(ord(c) * 31 ** i for i, c in enumerate(str(key)[:16]))
    r, g, b = colorsys.hsv_to_rgb((int(k) * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _keys(d: Detections, segment: bool) -> list:
    """The colour key of each row: track/object id, else (SAM) the row, else the class."""
    for col in ("track_id", "object_id"):
        if col in d.data:
            return [int(v) for v in d.data[col]]
    if segment:
        return list(range(len(d)))
    return [int(c) if c != NO_CLASS else str(n) for c, n in zip(d.class_ids, d.names)]


def _label(d: Detections, i: int, segment: bool) -> str:
    name = d.names[i]
    parts = []
    for col, mark in (("track_id", "#"), ("object_id", "obj ")):
        if col in d.data and int(d.data[col][i]) >= 0:
            parts.append(f"{mark}{int(d.data[col][i])}")
    if name is not None:
        parts.append(str(name))
    elif segment and not parts:
        parts.append(f"#{i}")
    parts.append(f"{float(d.scores[i]):.2f}")
    return " ".join(parts)


def render(image, dets: Detections, segment: bool = False, alpha: float = 0.45, trails: dict | None = None):
    """An RGB PIL copy of ``image`` (PIL or (H, W, 3) uint8) with ``dets`` drawn on it.

    Masks are blended largest first so small ones stay visible. ``trails``: {track id: [(x, y), ...]}
    centre points drawn as a polyline (``--track`` videos)."""
    from PIL import Image, ImageDraw

    rgb = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
    keys = _keys(dets, segment)
    colours = [color_for(k) for k in keys]
    if dets.masks is not None and len(dets):
        base = rgb.astype(np.float32)
        areas = dets.areas()
        for i in np.argsort(-areas, kind="stable"):
            if dets.masks[i] is None:
                continue
            sel = dets.mask(int(i))
            base[sel] = base[sel] * (1 - alpha) + np.array(colours[i], np.float32) * alpha
        canvas = Image.fromarray(np.clip(base + 0.5, 0, 255).astype(np.uint8))
    else:
        canvas = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 400))
    font = _font(max(12, round(max(canvas.size) / 60)))
    prompts = dets.data.get("prompt")
    for i in range(len(dets)):
        box = dets.xyxy[i]
        if prompts is not None and isinstance(prompts[i], dict) and prompts[i].get("box"):
            box = prompts[i]["box"]
        x1, y1, x2, y2 = (float(v) for v in box)
        if segment and x2 <= x1 and y2 <= y1:
            continue  # an empty mask: nothing to point at
        c = colours[i]
        draw.rectangle([x1, y1, x2, y2], outline=c, width=width)
        text = _label(dets, i, segment)
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 2 * width, ty + th + 2 * width], fill=c)
        draw.text((x1 + width, ty + width - tb[1]), text, fill=(0, 0, 0), font=font)
    for tid, points in (trails or {}).items():
        if len(points) > 1:
            draw.line([tuple(map(float, p)) for p in points], fill=color_for(int(tid)), width=width)
    return canvas


def unique_stem(image: str, used: set[str] | None = None) -> str:
    """The image's file stem; a second image with the same stem gets ``<stem>-2`` and so on
    (``used`` collects the names handed out)."""
    stem = Path(image.split("?")[0]).stem or "image"
    name, n = stem, 2
    while used is not None and name in used:
        name, n = f"{stem}-{n}", n + 1
    if used is not None:
        used.add(name)
    return name


def viz_path(out_dir: str | os.PathLike, image_name: str, used: set[str], ext: str | None = None,
             suffix: str = "") -> Path:
    """A path in ``out_dir`` for an annotated copy: never an input, never written twice.
    The extension follows the input's (jpg, png, webp, bmp) unless ``ext`` is given."""
    base = os.path.basename(image_name.split("?")[0].rstrip("/")) or "image"
    stem, own = os.path.splitext(base)
    if ext is None:
        ext = own.lower() if own.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp") else ".png"
    src = Path(image_name).resolve() if not image_name.startswith(("http://", "https://")) else None
    n = 1
    name = f"{stem}{suffix}"
    candidate = Path(out_dir) / f"{name}{ext}"
    while str(candidate) in used or (src is not None and candidate.resolve() == src):
        candidate = Path(out_dir) / f"{name}-{n}{ext}"
        n += 1
    used.add(str(candidate))
    return candidate


def save_annotated(image, dets: Detections, path: Path, segment: bool = False) -> Path:
    from visiontool.io.output import save_image

    save_image(render(image, dets, segment), path)
    return path


# ----------------------------------------------------------------------------- videos and trails
TRAIL_FRAMES = 30  # a trail shows a track's last centres over this many frames


class Trails:
    """Short trails for ``--save-viz`` of a tracked video: each track's recent box centres
    (``{track id: [(x, y), ...]}`` for :func:`render`). Tracks unseen for ``length`` frames
    are forgotten, so memory stays bounded however long the video."""

    def __init__(self, length: int = TRAIL_FRAMES):
        from collections import deque

        self.length = length
        self._deque = deque
        self._points: dict[int, Any] = {}
        self._last: dict[int, int] = {}
        self._step = 0

    def update(self, dets: Detections) -> dict:
        self._step += 1
        ids = dets.data.get("track_id")
        if ids is not None:
            for box, tid in zip(dets.xyxy, ids):
                tid = int(tid)
                if tid < 0:
                    continue
                pts = self._points.setdefault(tid, self._deque(maxlen=self.length))
                pts.append(((box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0))
                self._last[tid] = self._step
        for tid in [t for t, s in self._last.items() if self._step - s > self.length]:
            del self._points[tid], self._last[tid]
        return {t: list(p) for t, p in self._points.items()}


class AnnotationSink:
    """``--save-viz``: annotated copies, as results arrive.

    A photo becomes an annotated image in ``target`` (a directory; never an input, never
    written twice). A video or stream becomes an annotated video — ``target`` itself when it
    is a video file name (one video source), else ``target/<stem>.mp4`` — with the source's
    size and frame rate divided by ``stride`` (so its duration matches), ids and trails
    drawn for tracks. Each video file is written to a temporary sibling and renamed when
    closed: also on an interrupt, after the encoder is flushed, so it always plays."""

    def __init__(self, target: str | os.PathLike, fps_table: dict | None = None, stride: int = 1,
                 video_file: bool = False):
        self.target = Path(target)
        self.fps_table = fps_table if fps_table is not None else {}
        self.stride = max(1, int(stride))
        self.video_file = video_file
        self.used: set[str] = set()
        self.written: list[Path] = []
        self._writer = None
        self._source: str | None = None
        self._trails = Trails()

    def __call__(self, result, image) -> None:
        if result.frame is None:
            self.written.append(save_annotated(image, result.detections, viz_path(self.target, result.image,
                                                                                  self.used)))
            return
        if result.image != self._source:
            self._open(result.image, image.size)
        frame = render(image, result.detections, trails=self._trails.update(result.detections))
        if frame.size != self._writer.size:  # a stream that changed resolution mid-way
            frame = frame.resize(self._writer.size)
        self._writer.write(frame)

    def _open(self, name: str, size: tuple[int, int]) -> None:
        from visiontool.io.video import VideoWriter

        self.close()
        if self.video_file:
            path = self.target
        else:
            import re

            safe = re.sub(r"[:/\\?*]+", "-", name.split("?")[0].rstrip("/").split("/")[-1] or name)
            path = viz_path(self.target, name if os.path.exists(name) else safe, self.used, ext=".mp4")
        fps = self.fps_table.get(name) or 30.0
        self._writer = VideoWriter(path, fps / self.stride, size[0], size[1])
        self._source = name
        self._trails = Trails()
        self.written.append(path)

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            writer.close()

    def __enter__(self) -> "AnnotationSink":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False
