"""The record types that flow through every command (DESIGN.md §3).

Boxes are absolute pixel floats, **xyxy**, in the coordinates of the original image after
EXIF orientation. COCO's ``[x, y, w, h]`` exists only in :mod:`visiontool.io.coco`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Detections:
    """N detections of one image as parallel arrays (the supervision habit).

    xyxy: (N, 4) float64, pixels, x1 <= x2, y1 <= y2.
    scores: (N,) float64 in [0, 1].
    class_ids: (N,) int64, the model's own label ids (``model.config.id2label`` keys).
    names: (N,) object array of str, the model's label names.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: np.ndarray

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(xyxy)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        names = np.asarray(list(self.names), dtype=object).reshape(-1)
        for label, arr in (("scores", scores), ("class_ids", class_ids), ("names", names)):
            if len(arr) != n:
                raise ValueError(f"Detections: {label} has {len(arr)} entries, xyxy has {n}")
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)
        object.__setattr__(self, "names", names)

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object))

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: Any) -> "Detections":
        """Select by boolean mask, index array or slice; returns a new Detections."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index], self.names[index])

    def sorted_by_score(self) -> "Detections":
        # stable so that equal scores keep the model's query order
        return self[np.argsort(-self.scores, kind="stable")]

    def to_list(self) -> list[dict]:
        return [
            {"label": str(n), "category_id": int(c), "score": float(s), "box": [float(v) for v in b]}
            for b, s, c, n in zip(self.xyxy, self.scores, self.class_ids, self.names)
        ]


@dataclass
class Mask:
    """One segmentation mask. ``segmentation`` is COCO RLE with string counts."""

    id: int
    score: float
    area: int
    box: list[float]  # xyxy pixels
    segmentation: dict  # {"size": [h, w], "counts": str}
    prompt: dict | None = None
    label: str | None = None
    category_id: int | None = None
    predicted_iou: float | None = None
    stability_score: float | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"id": self.id}
        if self.label is not None:
            d["label"] = self.label
        if self.category_id is not None:
            d["category_id"] = self.category_id
        d.update(score=float(self.score), area=int(self.area), box=[float(v) for v in self.box],
                 prompt=self.prompt, segmentation=self.segmentation)
        if self.predicted_iou is not None:
            d["predicted_iou"] = float(self.predicted_iou)
        if self.stability_score is not None:
            d["stability_score"] = float(self.stability_score)
        return d


@dataclass
class ImageResult:
    """Everything one command found in one image: the record of DESIGN.md §3."""

    image: str
    width: int
    height: int
    model: str
    image_id: int | None = None
    detections: Detections = field(default_factory=Detections.empty)
    masks: list[Mask] | None = None  # set by segment
    error: str | None = None  # set when this image failed; the others go on

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"image": self.image, "image_id": self.image_id, "width": self.width,
                             "height": self.height, "model": self.model}
        if self.masks is None:
            d["detections"] = self.detections.to_list()
        else:
            d["masks"] = [m.to_dict() for m in self.masks]
        return d
