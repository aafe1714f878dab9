"""``--masks-dir DIR``: one PNG per mask plus ``metadata.csv``, as segment-anything's
``scripts/amg.py`` writes them, in ``DIR/<image stem>/``.

metadata.csv columns: id, area, bbox_x0, bbox_y0, bbox_w, bbox_h (COCO xywh pixels),
point_input_x, point_input_y (the first prompt point, else the box centre), predicted_iou,
stability_score, crop_box_x0, crop_box_y0, crop_box_w, crop_box_h. PNGs are 0/255 'L'.
"""
from __future__ import annotations

import os
from pathlib import Path

from visiontool.convert import xyxy_to_xywh
from visiontool.io.output import atomic_write, save_image
from visiontool.io.viz import unique_stem
from visiontool.types import ImageResult

HEADER = ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
          "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")


def image_folder(root: str | os.PathLike, image: str, used: set[str] | None = None) -> Path:
    """``root/<stem>``, unique among the images of one run (see :func:`unique_stem`)."""
    return Path(root) / unique_stem(image, used)


def write_masks_dir(result: ImageResult, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    d = result.detections
    rows = [HEADER]
    areas = d.areas()
    prompts = d.data.get("prompt")
    piou = d.data.get("predicted_iou")
    stab = d.data.get("stability_score")
    for i in range(len(d)):
        save_image(Image.fromarray(d.mask(i).astype("uint8") * 255), folder / f"{i}.png")
        p = (prompts[i] if prompts is not None else None) or {}
        if p.get("points"):
            px, py = p["points"][0]
        elif p.get("box"):
            b = p["box"]
            px, py = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2
        else:
            px, py = "", ""
        crop = p.get("crop_box") or [0, 0, result.width, result.height]
        cx, cy, cw, ch = xyxy_to_xywh(crop)
        vals = [i, int(areas[i]), *xyxy_to_xywh(d.xyxy[i]), px, py, _opt(piou, i), _opt(stab, i), cx, cy, cw, ch]
        rows.append(",".join(_num(v) for v in vals))
    with atomic_write(folder / "metadata.csv", fsync=False) as fh:
        fh.write("\n".join(rows) + "\n")
    return folder


def _opt(col, i: int):
    if col is None:
        return ""
    v = float(col[i])
    return "" if v != v else v


def _num(v) -> str:
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)
