"""Universal-segmentation models as instance detectors: Mask2Former, MaskFormer, OneFormer, EoMT.

Their instance outputs, from transformers' own ``post_process_instance_segmentation``, become
detections with masks: one per instance with its class, score (class probability times mean
mask probability, as transformers computes it) and RLE mask on the original image; the box is
the mask's extent (x2, y2 exclusive). Mask2Former and MaskFormer give one binary map per
instance (instances may overlap, as COCO's ``segm`` evaluation expects); OneFormer and EoMT
give one segmentation map, where a pixel belongs to one instance only.

``--threshold`` is their instance score threshold (inclusive, as theirs). Query-based set
predictors: no NMS. Images share a forward pass only when the processor gives them the same
tensor shape, so no image is padded against another.
"""
from __future__ import annotations

import inspect
import time
from typing import Any, Sequence

import numpy as np

from visiontool.models.hf_hub import from_pretrained, load_config
from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.types import Detections, Timings

BINARY_MAPS = {"mask2former", "maskformer"}  # post-processing can return per-instance maps


def load(spec: str, device: str, precision, config=None, optimize: bool = True, **_ignored: Any):
    from transformers import AutoImageProcessor, AutoModelForUniversalSegmentation, AutoProcessor

    from visiontool.models.hf_detection import family_of, load_processor
    from visiontool.models.optimize import prepare

    config = config or load_config(spec)
    model_type = str(getattr(config, "model_type", ""))
    for holder in (config, getattr(config, "backbone_config", None)):
        if holder is not None and getattr(holder, "use_pretrained_backbone", False):
            holder.use_pretrained_backbone = False
    model = from_pretrained(AutoModelForUniversalSegmentation.from_pretrained, spec, config=config)
    processor = load_processor(AutoProcessor if model_type == "oneformer" else AutoImageProcessor, spec)
    params = sum(p.numel() for p in model.parameters())
    extra = prepare(model, device, optimize)
    names = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    info = ModelInfo(name=spec, family=family_of(config), backend="transformers", task="detect",
                     paradigm="query-based", needs_nms=False, params=params, class_names=names, device=device,
                     dtype=precision.name, capabilities=frozenset({"masks", "batch"}), extra=extra)
    return UniversalSegmenter(info, model, processor, model_type, precision)


class UniversalSegmenter:
    """A loaded universal-segmentation model answering ``predict`` with instance masks."""

    def __init__(self, info: ModelInfo, model, processor, model_type: str, precision):
        self.info = info
        self.model = model
        self.processor = processor
        self.model_type = model_type
        self.precision = precision
        # the forward's parameters (a runtime twin, holding no model, sets its export's inputs)
        self.accepts = set(inspect.signature(model.forward).parameters) if model is not None else set()

    @property
    def image_processor(self):
        return getattr(self.processor, "image_processor", self.processor)

    def network(self, batch: dict):
        """The network call: the processor's tensors (``pixel_values``; OneFormer's ``task_inputs``)
        -> outputs with ``class_queries_logits`` and ``masks_queries_logits`` (a runtime twin
        overrides it; :mod:`visiontool.models.runtimes.universal_export`)."""
        return self.model(**batch)

    def encode(self, images: Sequence[Any]):
        if self.model_type == "oneformer":
            return self.processor(images=list(images), task_inputs=["instance"] * len(images), return_tensors="pt")
        return self.processor(images=list(images), return_tensors="pt")

    def predict(self, images: Sequence[Any], options: DetectOptions = DetectOptions(),
                timings: Timings | None = None) -> list[Detections]:
        import torch

        from visiontool.models.hf_detection import group_by_shape

        timings = timings if timings is not None else Timings()
        t0 = time.perf_counter()
        encoded = [self.encode([im]) for im in images]
        timings.preprocess += time.perf_counter() - t0
        out: list[Detections | None] = [None] * len(images)
        for idxs in group_by_shape([e["pixel_values"] for e in encoded]):
            t1 = time.perf_counter()
            batch = {k: torch.cat([encoded[i][k] for i in idxs]).to(self.info.device)
                     for k in encoded[idxs[0]].keys() if k in self.accepts and torch.is_tensor(encoded[idxs[0]][k])}
            if self.info.extra.get("channels_last"):
                batch["pixel_values"] = batch["pixel_values"].contiguous(memory_format=torch.channels_last)
            with torch.inference_mode(), self.precision.context():
                outputs = self.network(batch)
            t2 = time.perf_counter()
            timings.inference += t2 - t1
            for key in ("class_queries_logits", "masks_queries_logits"):
                v = getattr(outputs, key, None)
                if torch.is_tensor(v):
                    setattr(outputs, key, v.float())
            sizes = [(images[i].height, images[i].width) for i in idxs]
            for i, r in zip(idxs, self.postprocess(outputs, sizes, options)):
                out[i] = r
            timings.postprocess += time.perf_counter() - t2
        return out  # type: ignore[return-value]

    def postprocess(self, outputs, sizes, options: DetectOptions) -> list[Detections]:
        """transformers' instance post-processing -> Detections with masks (RLE)."""
        from visiontool.masks import boxes as mask_boxes
        from visiontool.masks import encode_many

        proc = self.image_processor
        threshold = float(options.threshold)
        if self.model_type in BINARY_MAPS:
            res = proc.post_process_instance_segmentation(outputs, threshold=threshold, target_sizes=sizes,
                                                          return_binary_maps=True)
        elif self.model_type == "oneformer":
            res = proc.post_process_instance_segmentation(outputs, task_type="instance", threshold=threshold,
                                                          target_sizes=sizes)
        else:
            res = proc.post_process_instance_segmentation(outputs, threshold=threshold, target_sizes=sizes)
        dets = []
        for r in res:
            info = r["segments_info"]
            seg = r["segmentation"]
            if not info or seg is None:
                dets.append(Detections.empty(with_masks=True))
                continue
            seg = seg.cpu().numpy()
            if seg.ndim == 3:  # one binary map per instance, in segments_info order
                binary = seg > 0.5
            else:  # a segmentation map of segment ids
                binary = np.stack([seg == s["id"] for s in info])
            rles = encode_many(binary.astype(np.uint8))
            scores = np.array([float(s["score"]) for s in info])
            labels = np.array([int(s["label_id"]) for s in info], dtype=np.int64)
            names = [self.info.class_names.get(int(c), str(int(c))) for c in labels]
            keep = binary.reshape(len(info), -1).any(axis=1)  # a map may lose all its pixels to later ones
            d = Detections(mask_boxes(rles), scores, labels, names, masks=rles)
            dets.append(d[keep].sorted_by_score())
        return dets
