"""Open-vocabulary (zero-shot) detection with transformers: ``--text "forklift, person in a hi-vis vest"``.

Grounding DINO and MM-Grounding-DINO, OWLv2, OWL-ViT and OmDet-Turbo: any model whose config
``model_type`` is one of :data:`visiontool.models.hf_detection.ZERO_SHOT_TYPES` (hub id or a
directory saved with ``save_pretrained``: model, image processor and tokenizer).

The phrases are the labels: each detection's ``label`` (and ``phrase``) is the phrase it
answers, its ``category_id`` the phrase's position. Boxes and scores come from transformers'
own post-processing of each family:

* Grounding DINO takes all phrases in one prompt ("forklift. person in a hi-vis vest.", as the
  model was trained); a box's score is its best token probability (``--threshold``); the
  label is the phrase holding the box's most probable token among those above
  ``--text-threshold`` (default 0.25, the model's own) — a box no phrase token reaches is not
  reported (transformers would give it an empty label).
* OWL-ViT / OWLv2 score every phrase against every box independently; the label is the best.
* OmDet-Turbo applies NMS in its post-processing (``--nms-iou``, default its 0.5).

All are trained with one-to-one matching (DETR-style) except that OmDet-Turbo's output is
deduplicated by its own NMS: ``needs_nms`` says so. Batching: images share a forward pass
only when the processor gives them the same tensor shape without padding (same size, or a
processor that resizes to a fixed size).
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from visiontool.errors import UsageError
from visiontool.models.hf_hub import from_pretrained, load_config
from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.types import Detections, Timings

GROUNDING = {"grounding-dino", "mm-grounding-dino"}
OWL = {"owlvit", "owlv2"}
OMDET = {"omdet-turbo"}
DEFAULT_TEXT_THRESHOLD = 0.25  # Grounding DINO's own default
DEFAULT_OMDET_NMS = 0.5


def text_capabilities(model_type: str) -> frozenset[str]:
    """Phrases, batches, and ``text_threshold`` (the phrase-token matching) for the Grounding DINOs."""
    return frozenset({"text", "batch"} | ({"text_threshold"} if model_type in GROUNDING else set()))


def load(spec: str, device: str, precision, config=None, text: bool = False, optimize: bool = True,
         **_ignored: Any) -> "ZeroShotDetector":
    """The adapter for an open-vocabulary model (``text``: the caller has phrases)."""
    config = config or load_config(spec)
    if not text:
        raise UsageError(f"'{spec}' is an open-vocabulary model: say what to find with --text \"phrase, phrase\"")
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    from visiontool.models.hf_detection import family_of
    from visiontool.models.optimize import prepare

    model = from_pretrained(AutoModelForZeroShotObjectDetection.from_pretrained, spec, config=config)
    processor = from_pretrained(AutoProcessor.from_pretrained, spec)
    params = sum(p.numel() for p in model.parameters())
    extra = prepare(model, device, optimize)
    model_type = str(getattr(config, "model_type", ""))
    size = getattr(getattr(processor, "image_processor", None), "size", None) or {}
    extra["fixed_size"] = bool(size) and ("height" in size and "width" in size)
    info = ModelInfo(name=spec, family=family_of(config), backend="transformers", task="detect",
                     paradigm="open-vocabulary", needs_nms=model_type in OMDET, params=params, class_names={},
                     device=device, dtype=precision.name, capabilities=text_capabilities(model_type), extra=extra)
    return ZeroShotDetector(info, model, processor, model_type, precision)


class ZeroShotDetector:
    """A loaded zero-shot detector; ``predict`` needs ``options.text``."""

    def __init__(self, info: ModelInfo, model, processor, model_type: str, precision):
        self.info = info
        self.model = model
        self.processor = processor
        self.model_type = model_type
        self.precision = precision
        self._spans: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ inputs
    def text_for(self, phrases: Sequence[str]):
        """What the processor gets as ``text`` for one image."""
        if self.model_type in GROUNDING:
            return ". ".join(p.strip().lower() for p in phrases) + "."  # the processor's own merge
        return list(phrases)

    def inputs(self, images: Sequence[Any], phrases: Sequence[str]):
        text = [self.text_for(phrases) for _ in images]
        enc = self.processor(images=list(images), text=text, return_tensors="pt")
        return enc.to(self.info.device)

    def groups(self, images: Sequence[Any]) -> list[list[int]]:
        """Images that may share a forward pass (never padded against each other)."""
        if self.info.extra.get("fixed_size"):
            return [list(range(len(images)))]
        by_size: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(tuple(im.size), []).append(i)
        return list(by_size.values())

    # ------------------------------------------------------------------ predict
    def predict(self, images: Sequence[Any], options: DetectOptions = DetectOptions(),
                timings: Timings | None = None) -> list[Detections]:
        import torch

        phrases = tuple(options.text or ())
        if not phrases:
            raise UsageError(f"'{self.info.name}' is an open-vocabulary model: say what to find with --text")
        timings = timings if timings is not None else Timings()
        out: list[Detections | None] = [None] * len(images)
        for idxs in self.groups(images):
            t0 = time.perf_counter()
            group = [images[i] for i in idxs]
            enc = self.inputs(group, phrases)
            if self.info.extra.get("channels_last") and "pixel_values" in enc:
                enc["pixel_values"] = enc["pixel_values"].contiguous(memory_format=torch.channels_last)
            t1 = time.perf_counter()
            timings.preprocess += t1 - t0
            outputs = self.network(enc)
            t2 = time.perf_counter()
            timings.inference += t2 - t1
            sizes = [(im.height, im.width) for im in group]
            for i, det in zip(idxs, self.postprocess(outputs, enc, sizes, phrases, options)):
                out[i] = det
            timings.postprocess += time.perf_counter() - t2
        return out  # type: ignore[return-value]

    def network(self, enc):
        """The model's forward on the processor's tensors (a runtime twin runs its export instead)."""
        import torch

        with torch.inference_mode(), self.precision.context():
            return self.model(**enc)

    def postprocess(self, outputs, enc, sizes, phrases, options: DetectOptions) -> list[Detections]:
        import torch

        for key in ("logits", "pred_boxes", "decoder_coord_logits", "decoder_class_logits"):
            v = getattr(outputs, key, None)
            if torch.is_tensor(v) and v.is_floating_point():
                setattr(outputs, key, v.float())
        # the processors keep scores > threshold; a hair lower keeps == threshold (the service filters >=)
        threshold = max(float(options.threshold) - 1e-6, 0.0) if options.threshold > 0 else -1.0
        if self.model_type in GROUNDING:
            return self._grounding(outputs, enc, sizes, phrases, options, threshold)
        n = len(sizes)
        if self.model_type in OWL:
            res = self.processor.post_process_grounded_object_detection(
                outputs, threshold=threshold, target_sizes=sizes, text_labels=[list(phrases)] * n)
        else:
            nms = DEFAULT_OMDET_NMS if options.nms_iou is None else float(options.nms_iou)
            res = self.processor.post_process_grounded_object_detection(
                outputs, text_labels=[list(phrases)] * n, threshold=threshold, nms_threshold=nms,
                target_sizes=sizes)  # (its max_num_det is a pre-NMS cut: the service applies --max-det after)
        return [self._detections(r["boxes"], r["scores"], r["labels"], phrases) for r in res]

    def _detections(self, boxes, scores, labels, phrases) -> Detections:
        from visiontool.convert import from_arrays

        ids = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels, dtype=np.int64).reshape(-1)
        names = {i: p for i, p in enumerate(phrases)}
        return from_arrays(boxes, scores, ids, names, phrase=[phrases[i] for i in ids]).sorted_by_score()

    # ------------------------------------------------------------------ Grounding DINO
    def phrase_tokens(self, phrases: tuple[str, ...], input_ids) -> np.ndarray:
        """(T,) phrase index of each prompt token (-1 for separators and special tokens)."""
        key = (phrases, tuple(int(t) for t in input_ids))
        if key not in self._spans:
            text = self.text_for(phrases)
            tok = self.processor.tokenizer(text, return_offsets_mapping=True)
            owner = np.full(len(input_ids), -1, dtype=np.int64)
            if list(tok["input_ids"]) == [int(t) for t in input_ids]:
                bounds, start = [], 0
                for p in phrases:
                    s = p.strip().lower()
                    at = text.index(s, start)
                    bounds.append((at, at + len(s)))
                    start = at + len(s)
                for t, (a, b) in enumerate(tok["offset_mapping"]):
                    if b > a:
                        for k, (lo, hi) in enumerate(bounds):
                            if a >= lo and b <= hi:
                                owner[t] = k
            self._spans[key] = owner
        return self._spans[key]

    def _grounding(self, outputs, enc, sizes, phrases, options: DetectOptions, threshold: float) -> list[Detections]:
        import torch

        text_threshold = DEFAULT_TEXT_THRESHOLD if options.text_threshold is None else float(options.text_threshold)
        res = self.processor.post_process_grounded_object_detection(
            outputs, input_ids=enc["input_ids"], threshold=threshold, text_threshold=text_threshold,
            target_sizes=sizes)
        probs_all = torch.sigmoid(outputs.logits)
        out = []
        for b, r in enumerate(res):
            keep = probs_all[b].max(dim=-1)[0] > threshold  # the same selection as the post-processing
            probs = probs_all[b][keep][:, : enc["input_ids"].shape[1]].cpu().numpy()
            owner = self.phrase_tokens(phrases, enc["input_ids"][b].tolist())
            best = np.full(len(probs), -1, dtype=np.int64)
            if len(probs):
                per_phrase = np.full((len(probs), len(phrases)), -1.0)
                for k in range(len(phrases)):
                    cols = np.flatnonzero(owner == k)
                    if len(cols):
                        per_phrase[:, k] = probs[:, cols].max(axis=1)
                top = per_phrase.argmax(axis=1)
                ok = per_phrase[np.arange(len(probs)), top] > text_threshold
                best[ok] = top[ok]
            sel = best >= 0
            boxes, scores = r["boxes"][torch.from_numpy(sel)], r["scores"][torch.from_numpy(sel)]
            out.append(self._detections(boxes, scores, best[sel], phrases))
        return out
