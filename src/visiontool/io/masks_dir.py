"""``--masks-dir DIR``: one PNG per mask plus ``metadata.csv``, as segment-anything's
``scripts/amg.py`` writes them, in ``DIR/<image stem>/``.

metadata.csv columns: id, area, bbox_x0, bbox_y0, bbox_w, bbox_h (COCO xywh pixels),
point_input_x, point_input_y (the first prompt point, else the box centre), predicted_iou,
stability_score, crop_box_x0, crop_box_y0, crop_box_w, crop_box_h. PNGs are 0/255 'L'.
"""
from __future__ import annotations

import os
from pathlib import Path

from visiontool.io.coco import decode_rle, xyxy_to_xywh
from visiontool.types import ImageResult

HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
          "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")


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


def image_folder(root: str | os.PathLike, image: str, used: set[str] | None = None) -> Path:
    """``root/<stem>``, unique among the images of one run (see :func:`unique_stem`)."""
    return Path(root) / unique_stem(image, used)


def write_masks_dir(result: ImageResult, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rows = [HEADER]
    for m in result.masks or []:
        Image.fromarray(decode_rle(m.segmentation) * 255).save(folder / f"{m.id}.png")
        p = m.prompt or {}
        if p.get("points"):
            px, py = p["points"][0]
        elif p.get("box"):
            b = p["box"]
            px, py = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        else:
            px, py = "", ""
        crop = p.get("crop_box") or [0, 0, result.width, result.height]
        cx, cy, cw, ch = xyxy_to_xywh(crop)
        vals = [m.id, m.area, *xyxy_to_xywh(m.box), px, py,
                "" if m.predicted_iou is None else m.predicted_iou,
                "" if m.stability_score is None else m.stability_score, cx, cy, cw, ch]
        rows.append(",".join(_num(v) for v in vals))
    tmp = folder / ".metadata.csv.tmp"
    tmp.write_text("\n".join(rows) + "\n", encoding="utf-8")
    os.replace(tmp, folder / "metadata.csv")
    return folder


def _num(v) -> str:
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)
