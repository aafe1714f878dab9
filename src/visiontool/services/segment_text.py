"""Text prompts -> masks: SAM 3's own concept segmentation, or grounded segmentation.

``segment IMAGE --text "yellow school bus"``:

* with a text-capable model (SAM 3) and no ``--detector``: the model's concept segmentation —
  every instance of each phrase with its mask and score;
* otherwise (any SAM, or SAM 3 given a ``--detector``): a zero-shot detector finds the
  phrases' boxes (``detect --text`` with the same model, threshold and text threshold: the
  same records), and each box becomes a box prompt carrying the detection's label, class id
  and score — exactly what ``detect --text … | segment --boxes-from -`` does, in one process.

``threshold`` (inclusive) applies to the instances: the detector's boxes or SAM 3's scores.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from visiontool.errors import UsageError
from visiontool.types import Detections, Prompt

DEFAULT_THRESHOLD = 0.5
MAX_INSTANCES = 100  # detect's --max-det default, so the pipe and --text agree
NO_DETECTOR = ("none", "off")


def wants_detector(model_info, detector: str | None) -> bool:
    """Whether --text goes through a detector (grounded) rather than the model itself."""
    if detector is not None and detector.lower() in NO_DETECTOR:
        return False
    return detector is not None or not model_info.can("text")


def check_text_route(model_info, detector: str | None, what: str = "--text") -> None:
    """UsageError when --text has neither a text-capable model nor a detector."""
    if model_info.can("text") or not (detector is not None and detector.lower() in NO_DETECTOR):
        return
    raise UsageError(f"{what} needs a text-capable model (SAM 3, e.g. facebook/sam3) or a zero-shot detector "
                     f"(--detector, default IDEA-Research/grounding-dino-tiny); '{model_info.name}' "
                     f"({model_info.family}) takes no text and --detector is '{detector}'")


def load_detector(spec: str | None, phrases: Sequence[str], device: str = "auto", dtype: str = "auto",
                  warn: Callable[[str], None] | None = None):
    """The zero-shot detector for ``phrases`` (default IDEA-Research/grounding-dino-tiny)."""
    from visiontool.services.detect import prepare_detector

    detector, _, _ = prepare_detector(spec, text=list(phrases), device=device, dtype=dtype, warn=warn)
    return detector


def grounded_prompts(detector, image: Any, phrases: Sequence[str], *, threshold: float = DEFAULT_THRESHOLD,
                     text_threshold: float | None = None, max_det: int | None = MAX_INSTANCES,
                     origin: str = "--text") -> list[Prompt]:
    """The detector's boxes for ``phrases`` on ``image`` (PIL RGB) as box prompts, as
    ``detect --text`` records would give them to ``--boxes-from``."""
    from visiontool.io.prompts import prompts_for_detections
    from visiontool.models.protocol import DetectOptions
    from visiontool.services.detect import filter_detections

    options = DetectOptions(threshold=float(threshold), max_det=max_det, text=tuple(phrases),
                            text_threshold=text_threshold)
    dets = detector.predict([image], options)[0]
    dets = filter_detections(dets, float(threshold), None, max_det)
    return prompts_for_detections(dets, origin)


def text_masks(model, rgb: np.ndarray, phrases: Sequence[str], *, detector=None,
               threshold: float = DEFAULT_THRESHOLD, text_threshold: float | None = None,
               max_det: int | None = MAX_INSTANCES, name: str = "image") -> Detections:
    """Masks for ``phrases`` on an (H, W, 3) uint8 image: the detector's boxes segmented by
    ``model`` when a detector is given, else the model's own concept segmentation."""
    from PIL import Image

    from visiontool.io.prompts import check_prompt

    if detector is None:
        return model.segment_text(rgb, list(phrases), threshold=float(threshold), name=name)
    prompts = grounded_prompts(detector, Image.fromarray(rgb), phrases, threshold=threshold,
                               text_threshold=text_threshold, max_det=max_det)
    if not prompts:
        return Detections.empty(with_masks=True)
    h, w = rgb.shape[:2]
    for p in prompts:
        check_prompt(p, w, h, name)  # a detector's box may overhang a little: clipped, as --boxes-from
    dets = model.segment(rgb, prompts, multimask=False, name=name)
    return dets.with_columns(phrase=list(dets.names))
