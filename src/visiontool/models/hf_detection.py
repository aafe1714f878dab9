"""Hugging Face transformers object detectors (closed vocabulary): the DETR family and its heirs.

Any model that ``AutoModelForObjectDetection`` + ``AutoImageProcessor`` load — DETR,
Conditional/Deformable/DAB-DETR, YOLOS, RT-DETR(v2), D-FINE, DEIMv2, LW-DETR, RF-DETR, Table
Transformer — by hub id (Hugging Face cache; ``HF_HUB_OFFLINE`` honoured) or from a local
directory saved with ``save_pretrained``. All are set predictors trained with Hungarian
matching: their outputs need no NMS.

Speed levers applied on load (each keeps outputs within float rounding): frozen batch-norms
folded into the preceding convolutions, ``channels_last`` on CPU, ``torch.inference_mode``.

Batching: transformers pads a mixed-size batch to its largest image and the padding changes
every padded image's detections (transformers #23218), so only images whose processed
tensors have the same shape share a forward pass; a batch of them gives each image what it
gets alone (up to float summation order; the tests bound it).

Open-vocabulary (zero-shot) and universal-segmentation configs are served by their own
modules; :func:`load` hands them over.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from visiontool.convert import from_transformers
from visiontool.errors import UsageError, VisionToolError
from visiontool.models.hf_hub import check_hf_spec, from_pretrained, load_config
from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.types import Detections, Timings

# config.model_type of the open-vocabulary detectors (served by hf_zero_shot)
ZERO_SHOT_TYPES = {"grounding-dino", "mm-grounding-dino", "owlvit", "owlv2", "omdet-turbo"}
# universal segmentation models whose instance outputs are detections with masks (hf_universal)
UNIVERSAL_TYPES = {"mask2former", "oneformer", "eomt", "maskformer"}


def check(spec: str) -> None:
    from visiontool.models.sam import is_checkpoint_name

    if is_checkpoint_name(spec):
        raise UsageError(f"--model '{spec}' is a segment-anything checkpoint: `visiontool segment --model {spec}` "
                         "runs it; this command takes a detector")
    if spec.lower().endswith((".pt", ".pth")):  # `-m yolov8n.pt`, the Ultralytics CLI's habit
        raise UsageError(f"--model '{spec}' is a weights file: name an Ultralytics model ultralytics:{spec}, a "
                         f"torchvision state dict torchvision:ARCH:{spec}; a segment-anything checkpoint is for "
                         "`visiontool segment`")
    check_hf_spec(spec)
    local = Path(spec).expanduser()
    if (local / "config.json").is_file():
        from visiontool.models.hf_sam_spec import read_config

        try:
            model_type = read_config(local, spec).get("model_type", "")
        except (VisionToolError, AttributeError):
            return  # the load reports a broken config properly
        not_a_segmenter(str(model_type), spec)


def not_a_segmenter(model_type: str, spec: str) -> None:
    """A SAM-family model given where a detector is wanted: one line pointing at segment."""
    from visiontool.models.hf_sam_spec import MODEL_TYPES

    if model_type in MODEL_TYPES:
        raise UsageError(f"--model '{spec}' is a SAM-family mask generator ('{model_type}'): `visiontool segment "
                         f"--model {spec}` runs it; this command takes a detector")


def peek_class_names(spec: str) -> dict[int, str] | None:
    config = load_config(spec)
    if getattr(config, "model_type", "") in ZERO_SHOT_TYPES:
        return None
    return {int(k): str(v) for k, v in (config.id2label or {}).items()}


def warm(spec: str) -> None:
    """Import the transformers modelling module of ``spec``'s architecture (no weights)."""
    import torch  # noqa: F401
    from transformers.models.auto.modeling_auto import MODEL_FOR_OBJECT_DETECTION_MAPPING

    config = load_config(spec)
    if getattr(config, "model_type", "") not in ZERO_SHOT_TYPES | UNIVERSAL_TYPES:
        MODEL_FOR_OBJECT_DETECTION_MAPPING[type(config)]


def family_of(config) -> str:
    return str(getattr(config, "model_type", "unknown")).replace("-", "_")


def load(spec: str, device: str, precision, **options: Any):
    """The adapter for ``spec``: closed-vocabulary detection here, zero-shot and universal
    segmentation in their modules (chosen by ``config.model_type``)."""
    config = load_config(spec)
    model_type = getattr(config, "model_type", "")
    not_a_segmenter(str(model_type), spec)
    if model_type in ZERO_SHOT_TYPES:
        from visiontool.models import hf_zero_shot

        return hf_zero_shot.load(spec, device, precision, config=config, **options)
    if options.get("text"):
        raise UsageError(f"--text needs an open-vocabulary model (Grounding DINO, OWLv2, OWL-ViT, OmDet-Turbo); "
                         f"'{spec}' ({model_type}) has a fixed class list: use --classes, or drop --model for "
                         "the default IDEA-Research/grounding-dino-tiny")
    if model_type in UNIVERSAL_TYPES:
        from visiontool.models import hf_universal

        return hf_universal.load(spec, device, precision, config=config, **options)
    return HFDetector.load(spec, device, precision, config=config)


class HFDetector:
    """A loaded transformers object detector: model (eval, on its device) and image processor."""

    def __init__(self, info: ModelInfo, model, processor):
        self.info = info
        self.model = model
        self.processor = processor

    @classmethod
    def load(cls, spec: str, device: str, precision, config=None, optimize: bool = True) -> "HFDetector":
        from transformers import AutoImageProcessor, AutoModelForObjectDetection

        from visiontool.models.optimize import prepare

        config = config or load_config(spec)
        # the checkpoint carries the backbone's weights: never fetch ImageNet weights for it
        for holder in (config, getattr(config, "backbone_config", None)):
            if holder is not None and getattr(holder, "use_pretrained_backbone", False):
                holder.use_pretrained_backbone = False
        model = from_pretrained(AutoModelForObjectDetection.from_pretrained, spec, config=config)
        processor = load_processor(AutoImageProcessor, spec)
        extra = prepare(model, device, optimize)
        id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
        info = ModelInfo(name=spec, family=family_of(config), backend="transformers", task="detect",
                         paradigm="query-based", needs_nms=False,
                         params=sum(p.numel() for p in model.parameters()), class_names=id2label, device=device,
                         dtype=precision.name, capabilities=frozenset({"batch", "concurrent"}), extra=extra)
        det = cls(info, model, processor)
        det.precision = precision
        return det

    def network(self, pixel_values):
        """The network call: (B, 3, H, W) -> outputs with ``logits`` and ``pred_boxes``
        (a runtime twin overrides it; :mod:`visiontool.models.runtimes.hf_export`)."""
        return self.model(pixel_values=pixel_values)

    def predict(self, images: Sequence[Any], options: DetectOptions = DetectOptions(),
                timings: Timings | None = None) -> list[Detections]:
        import torch

        timings = timings if timings is not None else Timings()
        t0 = time.perf_counter()
        tensors = [self.processor(images=im, return_tensors="pt")["pixel_values"] for im in images]
        t1 = time.perf_counter()
        timings.preprocess += t1 - t0
        out: list[Detections | None] = [None] * len(images)
        for idxs in group_by_shape(tensors):
            t2 = time.perf_counter()
            pixel_values = torch.cat([tensors[i] for i in idxs]).to(self.info.device)
            if self.info.extra.get("channels_last"):
                pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self.precision.context():
                outputs = self.network(pixel_values)
            t3 = time.perf_counter()
            timings.inference += t3 - t2
            for key in ("logits", "pred_boxes"):
                if getattr(outputs, key, None) is not None:
                    setattr(outputs, key, getattr(outputs, key).float())
            sizes = [(images[i].height, images[i].width) for i in idxs]
            processed = self.processor.post_process_object_detection(outputs, threshold=-1.0, target_sizes=sizes)
            for i, p in zip(idxs, processed):
                out[i] = from_transformers(p, self.info.class_names).sorted_by_score()
            timings.postprocess += time.perf_counter() - t3
        return out  # type: ignore[return-value]


def group_by_shape(tensors: Sequence[Any]) -> list[list[int]]:
    """Indices of tensors with equal shapes, in first-seen order (the only safe batches)."""
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault(tuple(t.shape), []).append(i)
    return list(groups.values())


def load_processor(auto_cls, spec: str, **kwargs: Any):
    """The model's processor; processors saved before transformers v5 may lack a fast variant."""
    try:
        return from_pretrained(auto_cls.from_pretrained, spec, **kwargs)
    except Exception:  # noqa: BLE001
        return from_pretrained(auto_cls.from_pretrained, spec, use_fast=False, **kwargs)

