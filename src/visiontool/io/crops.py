"""``--save-crops DIR``: one image per detection, cut from the original photo or frame.

Layout: ``DIR/<label>/<source stem>[_f<frame>][_id<track>|_<rank>].jpg`` — a folder per
label (``object`` when there is none); for video frames the 0-based frame index (six
digits) and, with ``--track``, the track id, so one track's crops sort together; otherwise
the detection's rank in its record (0 = highest score). Boxes are rounded outwards to whole
pixels and clipped to the image; a box with no area inside the image gives no crop.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

from visiontool.types import ImageResult

_UNSAFE = re.compile(r"[\\/:*?\"<>|\x00-\x1f]+")


def label_dir(label) -> str:
    """A folder name for a label: path separators and control characters replaced, spaces kept."""
    text = _UNSAFE.sub("_", str(label)).strip(" .") if label is not None else ""
    return text or "object"


class CropWriter:
    """Writes the crops of each result as it arrives (JPEG, atomically)."""

    def __init__(self, out_dir: str | os.PathLike):
        self.out_dir = Path(out_dir)
        self.count = 0
        self._stems: dict[str, str] = {}
        self._used: set[str] = set()

    def _stem(self, name: str) -> str:
        from visiontool.io.viz import unique_stem

        if name not in self._stems:
            safe = _UNSAFE.sub("-", name.split("?")[0].rstrip("/").split("/")[-1] or name)
            self._stems[name] = unique_stem(safe, self._used)
        return self._stems[name]

    def __call__(self, result: ImageResult, image) -> None:
        from visiontool.io.output import save_image

        d = result.detections
        if result.error is not None or not len(d):
            return
        stem = self._stem(result.image)
        if result.frame is not None:
            stem = f"{stem}_f{int(result.frame):06d}"
        ids = d.data.get("track_id")
        w, h = image.size
        for i in range(len(d)):
            x1, y1, x2, y2 = (float(v) for v in d.xyxy[i])
            box = (max(0, math.floor(x1)), max(0, math.floor(y1)), min(w, math.ceil(x2)), min(h, math.ceil(y2)))
            if box[2] <= box[0] or box[3] <= box[1]:
                continue
            tag = f"id{int(ids[i])}" if ids is not None and int(ids[i]) >= 0 else str(i)
            path = self.out_dir / label_dir(d.names[i]) / f"{stem}_{tag}.jpg"
            save_image(image.crop(box), path)
            self.count += 1
