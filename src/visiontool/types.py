"""The record types that flow through every command (DESIGN.md §3).

Boxes are absolute pixel floats, **xyxy**, in the coordinates of the original image after
EXIF orientation. COCO's ``[x, y, w, h]`` exists only in COCO files (:mod:`visiontool.convert`).

One record, four spellings: a detection, a SAM mask, a ``--boxes-from`` line and a COCO
result are all rows of :class:`Detections`; :mod:`visiontool.convert` turns them into each
other. Masks are COCO RLE (``{"size": [h, w], "counts": str}``): compact, JSON-ready and
what every output writes; :meth:`Detections.mask` decodes one on demand (pycocotools).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

# Optional per-detection columns (``Detections.data``) and what they hold. Each is an array
# whose first axis has one entry per detection.
COLUMNS = {
    "track_id": "int64: persistent track id (detect --track)",
    "object_id": "int64: the prompted object a video mask belongs to (segment on a video)",
    "phrase": "object (str): the --text phrase a detection answers",
    "predicted_iou": "float64: SAM's own quality estimate of a mask",
    "stability_score": "float64: SAM's stability score (NaN where not computed)",
    "prompt": "object (dict): the prompt a mask answers (points, labels, box, rank, index, crop_box)",
    "keypoints": "float64 (N, K, 3): x, y pixels and visibility/score per keypoint",
}
NO_CLASS = -1  # class_ids value of a mask or box that has no class (a SAM point prompt)


def _column(values: Any, n: int, name: str) -> np.ndarray:
    if isinstance(values, np.ndarray) and values.dtype != object:
        arr = values
    else:
        seq = list(values)
        if seq and all(isinstance(v, (dict, str, type(None))) for v in seq):
            arr = np.empty(len(seq), dtype=object)
            arr[:] = seq
        else:
            arr = np.asarray(seq)
    if len(arr) != n:
        raise ValueError(f"Detections: column {name!r} has {len(arr)} entries, xyxy has {n}")
    return arr


@dataclass(frozen=True, eq=False)
class Detections:
    """N detections (or masks) of one image as parallel arrays (the supervision habit).

    xyxy: (N, 4) float64, pixels, x1 <= x2, y1 <= y2.
    scores: (N,) float64 in [0, 1].
    class_ids: (N,) int64, the model's own label ids (``NO_CLASS`` = -1 when there is none).
    names: (N,) object array of str (or None when there is no label).
    masks: None, or (N,) object array of COCO RLE dicts with str counts, each the image's size.
    data: optional columns, see :data:`COLUMNS`; every array has N rows.
    """

    xyxy: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: np.ndarray
    masks: np.ndarray | None = None
    data: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        xyxy = np.asarray(self.xyxy, dtype=np.float64).reshape(-1, 4)
        n = len(xyxy)
        scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        class_ids = np.asarray(self.class_ids, dtype=np.int64).reshape(-1)
        names = np.empty(len(self.names), dtype=object)
        names[:] = list(self.names)
        for label, arr in (("scores", scores), ("class_ids", class_ids), ("names", names)):
            if len(arr) != n:
                raise ValueError(f"Detections: {label} has {len(arr)} entries, xyxy has {n}")
        masks = None if self.masks is None else _column(self.masks, n, "masks")
        data = {k: _column(v, n, k) for k, v in dict(self.data).items()}
        object.__setattr__(self, "xyxy", xyxy)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "class_ids", class_ids)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "masks", masks)
        object.__setattr__(self, "data", data)

    @classmethod
    def empty(cls, with_masks: bool = False) -> "Detections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object),
                   masks=np.zeros(0, dtype=object) if with_masks else None)

    @classmethod
    def merge(cls, parts: list["Detections"]) -> "Detections":
        """Rows of ``parts`` one after another; a column missing from a part is filled
        (NaN / -1 / None) so that every part keeps its rows."""
        parts = [p for p in parts if p is not None]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        masks = None
        if any(p.masks is not None for p in parts):
            if any(p.masks is None and len(p) for p in parts):
                raise ValueError("Detections.merge: some parts have masks and others do not")
            masks = np.concatenate([p.masks if p.masks is not None else np.zeros(0, object) for p in parts])
        keys = sorted({k for p in parts for k in p.data})
        data = {}
        for k in keys:
            cols = [p.data[k] if k in p.data else _filler(k, len(p), parts) for p in parts]
            data[k] = np.concatenate(cols)
        return cls(np.concatenate([p.xyxy for p in parts]), np.concatenate([p.scores for p in parts]),
                   np.concatenate([p.class_ids for p in parts]), np.concatenate([p.names for p in parts]),
                   masks=masks, data=data)

    def __len__(self) -> int:
        return len(self.scores)

    def __getitem__(self, index: Any) -> "Detections":
        """Select by boolean mask, index array or slice; returns a new Detections."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        return Detections(self.xyxy[index], self.scores[index], self.class_ids[index], self.names[index],
                          masks=None if self.masks is None else self.masks[index],
                          data={k: v[index] for k, v in self.data.items()})

    def with_columns(self, **columns: Any) -> "Detections":
        """A copy with extra (or replaced) ``data`` columns."""
        data = dict(self.data)
        data.update(columns)
        return Detections(self.xyxy, self.scores, self.class_ids, self.names, masks=self.masks, data=data)

    def replace(self, **fields: Any) -> "Detections":
        """A copy with some of xyxy / scores / class_ids / names / masks replaced."""
        base = dict(xyxy=self.xyxy, scores=self.scores, class_ids=self.class_ids, names=self.names,
                    masks=self.masks, data=self.data)
        base.update(fields)
        return Detections(**base)

    def sorted_by_score(self) -> "Detections":
        # stable so that equal scores keep the model's query order
        return self[np.argsort(-self.scores, kind="stable")]

    def mask(self, i: int) -> np.ndarray:
        """Detection ``i``'s mask as an (H, W) bool array (decoded from its RLE)."""
        if self.masks is None:
            raise ValueError("these detections carry no masks")
        from visiontool.masks import decode

        return decode(self.masks[i]).astype(bool)

    def areas(self) -> np.ndarray:
        """(N,) int64 mask areas in pixels (box areas, rounded, when there are no masks)."""
        if self.masks is not None:
            from visiontool.masks import areas

            return areas(list(self.masks))
        w = np.clip(self.xyxy[:, 2] - self.xyxy[:, 0], 0, None)
        h = np.clip(self.xyxy[:, 3] - self.xyxy[:, 1], 0, None)
        return np.rint(w * h).astype(np.int64)


def _filler(key: str, n: int, parts: list[Detections]) -> np.ndarray:
    like = next(p.data[key] for p in parts if key in p.data)
    shape = (n,) + like.shape[1:]
    if like.dtype == object:
        return np.full(shape, None, dtype=object)
    if np.issubdtype(like.dtype, np.integer):
        return np.full(shape, -1, dtype=like.dtype)
    return np.full(shape, np.nan, dtype=np.float64)


@dataclass
class Prompt:
    """One object to segment: any mix of points, one box and one coarse mask.

    points: (P, 2) float XY pixels; labels: (P,) 1 foreground / 0 background;
    box: (4,) XYXY pixels; mask_input: path of a PNG the size of the image.
    label / category_id / score: carried from a detection (``--boxes-from``, ``--text``).
    multimask: None = SAM's advice (3 hypotheses for a lone point, else 1).
    frame: the video frame the prompt is given on (None = an image, or frame 0).
    object_id: the object a video prompt starts (several prompts may share one).
    """

    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask_input: str | None = None
    label: str | None = None
    category_id: int | None = None
    score: float | None = None
    multimask: bool | None = None
    source: str = "prompt"  # what the user wrote it with, for messages
    from_detection: bool = False  # boxes from --boxes-from are clipped to the image, not rejected
    frame: int | None = None
    object_id: int | None = None

    def __post_init__(self) -> None:
        if self.points is not None:
            self.points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
            self.labels = (np.ones(len(self.points), np.int64) if self.labels is None
                           else np.asarray(self.labels, dtype=np.int64).reshape(-1))
            if len(self.points) == 0:
                self.points, self.labels = None, None
        if self.box is not None:
            self.box = np.asarray(self.box, dtype=np.float64).reshape(4)
        if self.points is None and self.box is None and self.mask_input is None:
            from visiontool.errors import InvalidInputError

            raise InvalidInputError(f"{self.source}: a prompt needs points, a box or a mask input")

    def wants_multimask(self, override: bool | None) -> bool:
        if override is not None:
            return override
        if self.multimask is not None:
            return self.multimask
        return self.box is None and self.mask_input is None and self.points is not None and len(self.points) == 1

    def describe(self) -> dict:
        d: dict = {}
        if self.points is not None:
            d["points"] = [[float(x), float(y)] for x, y in self.points]
            d["labels"] = [int(v) for v in self.labels]
        if self.box is not None:
            d["box"] = [float(v) for v in self.box]
        if self.mask_input is not None:
            d["mask_input"] = self.mask_input
        if self.frame is not None:
            d["frame"] = int(self.frame)
        return d


@dataclass
class Timings:
    """Seconds spent per stage over ``images`` images (adapters add to it as they go)."""

    preprocess: float = 0.0
    inference: float = 0.0
    postprocess: float = 0.0
    images: int = 0
    wall: float = 0.0

    def ms_per_image(self) -> dict[str, float]:
        n = max(self.images, 1)
        return {"preprocess": 1000 * self.preprocess / n, "inference": 1000 * self.inference / n,
                "postprocess": 1000 * self.postprocess / n}

    def summary(self, unit: str = "image") -> str:
        ms = self.ms_per_image()
        rate = self.images / self.wall if self.wall > 0 else 0.0
        return (f"{self.images} {unit}{'s' if self.images != 1 else ''} in {self.wall:.2f} s "
                f"({rate:.2f} {unit}s/s): preprocess {ms['preprocess']:.0f} ms, inference "
                f"{ms['inference']:.0f} ms, postprocess {ms['postprocess']:.1f} ms per {unit}")


@dataclass
class ImageResult:
    """Everything one command found in one image (or video frame): the record of DESIGN.md §3.

    ``kind`` decides the record's spelling: ``"detect"`` lists ``detections``, ``"segment"``
    lists ``masks`` (the same rows, with ids, areas and prompts).
    """

    image: str
    width: int
    height: int
    model: str
    image_id: int | None = None
    detections: Detections = field(default_factory=Detections.empty)
    kind: str = "detect"
    error: str | None = None  # set when this image failed; the others go on
    frame: int | None = None  # video frame index (0-based, in the decoded stream)
    time_s: float | None = None  # the frame's presentation time in seconds

    def to_dict(self) -> dict:
        from visiontool.convert import to_record

        return to_record(self)
