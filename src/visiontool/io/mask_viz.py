"""``--save-viz DIR``: the image with each mask as a translucent colour, its box and a label.

The box drawn is the prompt's box when there is one (a detection, ``--box``), else the
mask's extent; the label is the detection label (or ``#id``) and the score.
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import numpy as np

from visiontool.io.coco import decode_rle
from visiontool.io.masks_dir import unique_stem
from visiontool.types import ImageResult


def palette(n: int) -> list[tuple[int, int, int]]:
    """n distinct saturated colours (golden-ratio hue steps)."""
    out = []
    for i in range(n):
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


def render(rgb: np.ndarray, result: ImageResult, alpha: float = 0.45):
    """A PIL image: masks blended in (largest first so small ones stay visible), boxes, labels."""
    from PIL import Image, ImageDraw, ImageFont

    base = rgb.astype(np.float32).copy()
    masks = sorted(result.masks or [], key=lambda m: -m.area)
    colours = dict(zip([m.id for m in result.masks or []], palette(len(result.masks or []))))
    for m in masks:
        sel = decode_rle(m.segmentation).astype(bool)
        base[sel] = base[sel] * (1 - alpha) + np.array(colours[m.id], np.float32) * alpha
    img = Image.fromarray(np.clip(base + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    width = max(2, round(max(img.size) / 500))
    try:
        font = ImageFont.load_default(size=max(12, round(max(img.size) / 60)))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    for m in result.masks or []:
        if m.area == 0:
            continue
        c = colours[m.id]
        # the box the user gave (a detection, --box) if any, else the mask's own extent
        x1, y1, x2, y2 = (m.prompt or {}).get("box") or m.box
        draw.rectangle([x1, y1, x2, y2], outline=c, width=width)
        text = f"{m.label + ' ' if m.label else '#' + str(m.id) + ' '}{m.score:.2f}"
        tb = draw.textbbox((x1, y1), text, font=font)
        th = tb[3] - tb[1]
        ty = y1 - th - 2 * width if y1 - th - 2 * width >= 0 else y1
        draw.rectangle([x1, ty, x1 + (tb[2] - tb[0]) + 2 * width, ty + th + 2 * width], fill=c)
        draw.text((x1 + width, ty + width - (tb[1] - y1)), text, fill=(0, 0, 0), font=font)
    return img


def save_viz(rgb: np.ndarray, result: ImageResult, out_dir: str, used: set[str] | None = None) -> Path:
    """Write ``out_dir/<image stem>.png`` (``-2``… for repeated stems) and return its path."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    name = unique_stem(result.image, used)
    path = d / f"{name}.png"
    tmp = d / f".{name}.png.tmp"
    render(rgb, result).save(tmp, format="PNG")
    tmp.replace(path)
    return path
