"""The backend-neutral model protocol: what every model family's adapter provides.

Services talk to models only through these types; nothing outside an adapter module knows
which library (transformers, torchvision, Ultralytics, segment-anything, a runtime) runs.

* :class:`Detector` — ``predict(images, options, timings) -> list[Detections]``: boxes
  (absolute xyxy pixels on the original image), scores, the model's class ids and names,
  masks when the model makes them; sorted by score. Each adapter applies its own NMS
  (``options.nms_iou``, default the model's) when its paradigm needs one.
* :class:`Segmenter` — promptable segmentation (the SAM family): ``segment(image,
  prompts)``, ``segment_auto(image, options)`` and, where ``info.capabilities`` says so,
  ``segment_text`` and video propagation.

Adapters are created by :mod:`visiontool.models.registry` (``load_detector`` /
``load_segmenter``), which picks the module from the spec and caches the loaded model
per process (:mod:`visiontool.models.loader`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from visiontool.types import Detections, Prompt, Timings

# what an adapter may declare in ModelInfo.capabilities ("concurrent": predict may run on several
# threads at once, as it keeps no per-call state on the object; see services.forward_streams)
CAPABILITIES = ("text", "masks", "keypoints", "video", "points", "boxes", "mask_input", "auto", "batch",
                "concurrent")
PARADIGMS = ("two-stage", "one-stage", "anchor-free", "query-based", "open-vocabulary", "promptable")


@dataclass
class ModelInfo:
    """What a loaded model is (for records, compare's table and messages)."""

    name: str  # the spec as the user gave it (records' "model")
    family: str  # architecture family: detr, rt_detr, fasterrcnn, yolov8, grounding-dino, sam, sam2, ...
    backend: str  # transformers | torchvision | ultralytics | segment-anything | openvino | onnxruntime
    task: str  # detect | segment
    paradigm: str  # one of PARADIGMS
    needs_nms: bool | None  # None: unknown
    params: int = 0
    class_names: dict[int, str] = field(default_factory=dict)  # {} for open vocabulary and SAM
    device: str = "cpu"
    dtype: str = "float32"
    capabilities: frozenset[str] = frozenset()
    runtime: str = "torch"
    extra: dict[str, Any] = field(default_factory=dict)  # adapter-specific facts (folded norms, export path)

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


@dataclass(frozen=True)
class DetectOptions:
    """What a detection call asks for. Adapters may use ``threshold`` and ``max_det`` to
    prune early; the service applies them again (inclusive threshold, score order) so every
    backend gives the same records."""

    threshold: float = 0.5
    max_det: int | None = 100
    nms_iou: float | None = None  # None: the model's own default
    text: tuple[str, ...] | None = None  # open-vocabulary phrases
    text_threshold: float | None = None  # None: the model's default (where it has one)


@runtime_checkable
class Detector(Protocol):
    info: ModelInfo

    def predict(self, images: Sequence[Any], options: DetectOptions,
                timings: Timings | None = None) -> list[Detections]:
        """One Detections per PIL RGB image, in order; results never depend on batch-mates."""


@dataclass(frozen=True)
class AutoOptions:
    """``--auto`` (segment everything): SamAutomaticMaskGenerator's knobs, same names and defaults."""

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_area: int = 0  # min_mask_region_area: holes/islands under this many pixels are removed

    def replace(self, **kw) -> "AutoOptions":
        from dataclasses import replace

        return replace(self, **{k: v for k, v in kw.items() if v is not None})


AUTO_PRESETS = {
    "fast": AutoOptions(points_per_side=16, pred_iou_thresh=0.86, stability_score_thresh=0.92),
    "default": AutoOptions(),
    "quality": AutoOptions(points_per_side=32, crop_n_layers=1, crop_n_points_downscale_factor=2,
                           pred_iou_thresh=0.86, stability_score_thresh=0.92, min_area=100),
}


@runtime_checkable
class Segmenter(Protocol):
    """Promptable segmentation. Images are (H, W, 3) uint8 RGB arrays; prompts are in image
    pixels; results are Detections with masks (RLE), ``predicted_iou`` and ``prompt`` columns,
    multimask answers ordered best predicted IoU first."""

    info: ModelInfo
    stats: dict  # counters: encoder_runs, cache_hits (the embedding cache at work)

    def segment(self, image: np.ndarray, prompts: list[Prompt], *, multimask: bool | None = None,
                name: str = "image") -> Detections: ...

    def segment_auto(self, image: np.ndarray, options: AutoOptions, *, name: str = "image") -> Detections: ...


class TextSegmenter(Protocol):
    """A segmenter with ``"text"`` in its capabilities (SAM 3: concept segmentation)."""

    def segment_text(self, image: np.ndarray, phrases: Sequence[str], *, threshold: float,
                     name: str = "image") -> Detections: ...


class VideoSegmenter(Protocol):
    """A segmenter with ``"video"`` in its capabilities: prompts on frames, masks propagated.

    ``frames`` yields (index, time_s, (H, W, 3) uint8); the result yields (index, time_s,
    Detections) for every frame, each mask carrying its ``object_id``."""

    def propagate(self, frames: Iterator[tuple[int, float, np.ndarray]], prompts: list[Prompt], *,
                  text: Sequence[str] | None = None, threshold: float = 0.5,
                  max_frames_in_memory: int | None = None) -> Iterator[tuple[int, float, Detections]]: ...
