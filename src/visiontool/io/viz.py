"""Annotated copies of images: boxes, labels and scores drawn with PIL."""
from __future__ import annotations

import colorsys
import os
from pathlib import Path

from visiontool.types import Detections


def class_color(key: int | str) -> tuple[int, int, int]:
    """A stable, well-separated colour per class (golden-ratio hue walk)."""
    h = (hash(str(key)) % 1000 if not isinstance(key, int) else key) * 0.618033988749895 % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def draw_detections(image, dets: Detections):
    """Return an RGB copy of ``image`` with each detection's box, label and score."""
    from PIL import ImageDraw

    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    width = max(2, round(max(canvas.size) / 400))
    font = _font(max(12, round(max(canvas.size) / 60)))
    for box, score, cid, name in zip(dets.xyxy, dets.scores, dets.class_ids, dets.names):
        color = class_color(int(cid))
        x1, y1, x2, y2 = (float(v) for v in box)
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        text = f"{name} {score:.2f}"
        tb = draw.textbbox((0, 0), text, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 2 * width, ty + th + 2 * width], fill=color)
        draw.text((x1 + width, ty + width - tb[1]), text, fill=(0, 0, 0), font=font)
    return canvas


def viz_path(out_dir: str | os.PathLike, image_name: str, used: set[str], suffix: str = "") -> Path:
    """A path in ``out_dir`` for an annotated copy: never an input, never written twice."""
    base = os.path.basename(image_name.split("?")[0].rstrip("/")) or "image"
    stem, ext = os.path.splitext(base)
    ext = ext.lower() if ext.lower() in (".jpg", ".jpeg", ".png", ".webp", ".bmp") else ".png"
    out = Path(out_dir)
    candidate = out / f"{stem}{suffix}{ext}"
    n = 1
    src = Path(image_name).resolve() if not image_name.startswith(("http://", "https://")) else None
    while str(candidate) in used or (src is not None and candidate.resolve() == src):
        candidate = out / f"{stem}{suffix}-{n}{ext}"
        n += 1
    used.add(str(candidate))
    return candidate


def save_image(img, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".bmp": "BMP"}[path.suffix.lower()]
    kwargs = {"quality": 92} if fmt == "JPEG" else {}
    img.save(tmp, format=fmt, **kwargs)
    os.replace(tmp, path)
