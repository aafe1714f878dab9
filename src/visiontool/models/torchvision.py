"""torchvision's detection models: ``--model torchvision:NAME[:STATE_DICT.pth]``.

* ``torchvision:NAME`` — the builder's DEFAULT COCO weights through torchvision's own weights
  API (``get_model_weights(NAME).DEFAULT``): the file named by ``weights.url`` in torch hub's
  cache (``<torch hub dir>/checkpoints``), fetched with ``load_state_dict_from_url(...,
  check_hash=True)`` (the hash prefix in the file name is checked). Offline
  (``VISIONTOOL_OFFLINE``/``HF_HUB_OFFLINE``) or with the host unreachable, a missing file is
  one line naming it and the directory to put it in.
* ``torchvision:NAME:FILE.pth`` — a state dict saved with ``torch.save(model.state_dict())``
  (fine-tuned models), read with ``torch.load(weights_only=True)`` (no pickled code runs); a
  ``{"model": state_dict, ...}`` training checkpoint is accepted too. The number of classes
  (and of keypoints) is read from the file; a file made for another architecture is one line
  naming the first tensor that does not fit.

Class names come from the weights' meta (COCO's 91-slot list with ``__background__`` and
``N/A``); a fine-tuned file with another class count names its classes by id.

Models: Faster R-CNN (R50-FPN v1/v2, MobileNetV3 FPN and 320), Mask R-CNN (v1/v2: masks into
the record as RLE), Keypoint R-CNN (the ``keypoints`` column: x, y, score), RetinaNet (v1/v2),
FCOS, SSD300-VGG16, SSDlite320. All need NMS: each applies its own, with ``--nms-iou`` when
given (default the model's). The model's pre-NMS score threshold follows ``--threshold`` when
that is lower (so ``compare`` at threshold 0 gets the low-score detections AP needs); at or
above the model's own threshold the records equal the native call's.

Inference: the model's own ``GeneralizedRCNNTransform`` resizes and normalises each image
alone (preprocessing), images whose padded tensors have the same shape share a forward pass
(so padding never differs from a lone image's: results do not depend on batch-mates), and
boxes come back on the original image. Speed levers (exact up to float rounding): batch-norms
folded into convolutions, channels-last on CPU, ``inference_mode``, weights loaded without
the builder's random initialisation, Mask R-CNN masks pasted and RLE-encoded a few at a time
(torchvision pastes all of an image's masks as (N, H, W) float32 at once: 860 MB for 100
masks on a 1800x1200 photo).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from visiontool.errors import ModelLoadError, UsageError
from visiontool.models.protocol import DetectOptions, ModelInfo
from visiontool.models.torchvision_weights import default_weights, fetch_default, mismatch, no_init, read_state_dict
from visiontool.types import Detections, Timings

PREFIX = "torchvision"
MASK_THRESHOLD = 0.5  # torchvision's masks are probabilities; > 0.5 is the object
PASTE_CHUNK = 16  # masks pasted at once (each an (H, W) float32 plane)
ROI_HEADS_CONTIGUOUS = True  # R-CNN RoI heads stay NCHW when the rest runs channels-last (see TorchvisionDetector)


@dataclass(frozen=True)
class Arch:
    family: str
    paradigm: str
    kind: str  # rcnn | retinanet | fcos | ssd
    classes_key: str  # the state-dict tensor whose rows count the classes
    anchors: int = 1  # rows per class in that tensor


_RCNN_KEY = "roi_heads.box_predictor.cls_score.weight"
_DENSE_KEY = "head.classification_head.cls_logits.weight"
ARCHS: dict[str, Arch] = {
    "fasterrcnn_resnet50_fpn": Arch("fasterrcnn", "two-stage", "rcnn", _RCNN_KEY),
    "fasterrcnn_resnet50_fpn_v2": Arch("fasterrcnn", "two-stage", "rcnn", _RCNN_KEY),
    "fasterrcnn_mobilenet_v3_large_fpn": Arch("fasterrcnn", "two-stage", "rcnn", _RCNN_KEY),
    "fasterrcnn_mobilenet_v3_large_320_fpn": Arch("fasterrcnn", "two-stage", "rcnn", _RCNN_KEY),
    "maskrcnn_resnet50_fpn": Arch("maskrcnn", "two-stage", "rcnn", _RCNN_KEY),
    "maskrcnn_resnet50_fpn_v2": Arch("maskrcnn", "two-stage", "rcnn", _RCNN_KEY),
    "keypointrcnn_resnet50_fpn": Arch("keypointrcnn", "two-stage", "rcnn", _RCNN_KEY),
    "retinanet_resnet50_fpn": Arch("retinanet", "one-stage", "retinanet", _DENSE_KEY, 9),
    "retinanet_resnet50_fpn_v2": Arch("retinanet", "one-stage", "retinanet", _DENSE_KEY, 9),
    "fcos_resnet50_fpn": Arch("fcos", "anchor-free", "fcos", _DENSE_KEY),
    "ssd300_vgg16": Arch("ssd", "one-stage", "ssd", "head.classification_head.module_list.0.weight", 4),
    "ssdlite320_mobilenet_v3_large": Arch("ssdlite", "one-stage", "ssd",
                                          "head.classification_head.module_list.0.1.weight", 6),
}
_KEYPOINTS_KEY = "roi_heads.keypoint_predictor.kps_score_lowres.weight"


# ----------------------------------------------------------------------------- specs
def parse(spec: str) -> tuple[str, str | None]:
    """``torchvision:NAME[:FILE]`` -> (NAME lower-cased, FILE or None)."""
    rest = spec.split(":", 1)[1] if ":" in spec else ""
    name, _, file = rest.partition(":")
    return name.strip().lower(), (file.strip() or None)


def check(spec: str) -> None:
    """Known architecture name; an explicit weights file must exist (UsageError, exit 2)."""
    name, file = parse(spec)
    known = ", ".join(ARCHS)
    if not name:
        raise UsageError(f"--model '{spec}': name a torchvision detector, e.g. torchvision:fasterrcnn_resnet50_fpn_v2 "
                         f"(known: {known})")
    if name not in ARCHS:
        import difflib

        close = difflib.get_close_matches(name, list(ARCHS), n=1, cutoff=0.5)
        hint = f"; did you mean 'torchvision:{close[0]}'?" if close else f" (known: {known})"
        raise UsageError(f"--model '{spec}': torchvision has no detector '{name}'{hint}")
    if file is not None:
        p = Path(file).expanduser()
        if not p.exists():
            raise UsageError(f"--model '{spec}': weights file '{file}' not found")
        if not p.is_file():
            raise UsageError(f"--model '{spec}': '{file}' is a directory; expected a state dict saved with "
                             "torch.save(model.state_dict(), FILE)")


def peek_class_names(spec: str) -> dict[int, str] | None:
    name, file = parse(spec)
    if file is not None:
        return None  # a fine-tuned file may have other classes: only loading tells
    return _names(default_weights(name).meta)


def warm(spec: str) -> None:
    import torchvision.models.detection  # noqa: F401


def _names(meta: dict, count: int | None = None) -> dict[int, str]:
    cats = list(meta.get("categories") or [])
    if count is not None and count != len(cats):
        return {i: str(i) for i in range(count)}
    return {i: str(c) for i, c in enumerate(cats)}


# ----------------------------------------------------------------------------- build
def build(name: str, sd: dict, builder_kwargs: dict | None = None):
    """The architecture ``name`` sized for ``sd`` (classes, keypoints), without pretrained
    downloads. Returns (model, class count, mismatch words or None)."""
    from torchvision.models import get_model

    arch = ARCHS[name]
    kwargs: dict[str, Any] = dict(builder_kwargs or {})
    meta = default_weights(name).meta
    count = len(meta["categories"])
    if arch.classes_key in sd:
        rows = int(sd[arch.classes_key].shape[0])
        if rows % arch.anchors == 0:
            count = rows // arch.anchors
    if name.startswith("keypointrcnn") and _KEYPOINTS_KEY in sd:
        kwargs["num_keypoints"] = int(sd[_KEYPOINTS_KEY].shape[1])
    with no_init():
        model = get_model(name, weights=None, weights_backbone=None, num_classes=count, **kwargs)
    return model, count, mismatch(model.state_dict(), sd)


# ----------------------------------------------------------------------------- load
def load(spec: str, device: str, precision, text: bool = False, optimize: bool = True, quiet: bool = False,
         **builder_kwargs: Any):
    """A :class:`TorchvisionDetector` for ``spec``. ``builder_kwargs`` go to torchvision's
    builder (Python API: e.g. ``min_size``/``max_size``, the resize that decides speed, or
    ``rpn_post_nms_top_n_test``); default the architecture's own."""
    if text:
        raise UsageError(f"--text needs an open-vocabulary model (Grounding DINO, OWLv2, OWL-ViT, OmDet-Turbo); "
                         f"'{spec}' has a fixed class list: use --classes, or drop --model for the default "
                         "IDEA-Research/grounding-dino-tiny")
    check(spec)
    name, file = parse(spec)
    sd = read_state_dict(spec, file) if file is not None else fetch_default(spec, name, quiet)
    try:
        model, count, bad = build(name, sd, builder_kwargs)
    except TypeError as exc:
        raise UsageError(f"'{spec}': torchvision's {name} builder does not take {sorted(builder_kwargs)} ({exc})") \
            from exc
    if bad is not None:
        where = f"'{file}'" if file is not None else "its DEFAULT weights"
        raise ModelLoadError(f"cannot load model '{spec}': {where} do not fit torchvision {name}: {bad}; was the "
                             "file saved from another architecture?")
    model.load_state_dict(sd, strict=False)  # strictness checked above (num_batches_tracked aside)
    meta = default_weights(name).meta
    return TorchvisionDetector(spec, name, model, _names(meta, count), device, precision, optimize,
                               keypoint_names=list(meta.get("keypoint_names") or []))


def _contiguous_features(module, args):
    """RoIHeads' forward pre-hook: its feature maps in the default (NCHW) layout."""
    features = args[0]
    return (type(features)((k, v.contiguous()) for k, v in features.items()),) + tuple(args[1:])


def _prepared_transform(real):
    """A module standing in for the model's transform during a forward: it hands over the
    images already transformed one by one (so a batch is exactly what each image gets
    alone), and keeps Mask R-CNN's low-resolution masks for pasting in chunks afterwards."""
    from torch import nn

    class Prepared(nn.Module):
        def __init__(self):
            super().__init__()
            self.ready = None
            self.__dict__["real"] = real  # not a submodule: the model's state dict is unchanged

        def forward(self, images, targets=None):
            return self.ready, targets

        def postprocess(self, result, image_shapes, original_sizes):
            held = [r.pop("masks", None) for r in result]
            result = self.real.postprocess(result, image_shapes, original_sizes)
            for r, m in zip(result, held):
                if m is not None:
                    r["mask_probs"] = m
            return result

    return Prepared().eval()


class TorchvisionDetector:
    """A loaded torchvision detector (eval, on its device, batch-norms folded)."""

    def __init__(self, spec: str, name: str, model, class_names: dict[int, str], device: str, precision,
                 optimize: bool = True, keypoint_names: list[str] | None = None):
        import torch

        from visiontool.models.optimize import prepare

        arch = ARCHS[name]
        self.arch = arch
        self.precision = precision
        self.model = model
        params = sum(p.numel() for p in model.parameters())  # as built, before norms are folded away
        extra = prepare(model, device, optimize)
        if arch.kind == "rcnn" and extra.get("channels_last") and ROI_HEADS_CONTIGUOUS:
            # measured: RoIAlign on channels-last features and the box/mask heads' convolutions on
            # (1000, 256, 7, 7) crops run slower channels-last; the backbone and RPN run faster
            model.roi_heads.to(memory_format=torch.contiguous_format)
            model.roi_heads.register_forward_pre_hook(_contiguous_features)
            extra["roi_heads"] = "contiguous"
        self.transform = model.transform
        self.prepared = _prepared_transform(model.transform)
        heads = model.roi_heads if arch.kind == "rcnn" else model
        self.heads = heads
        self.defaults = {"nms_thresh": float(heads.nms_thresh), "score_thresh": float(heads.score_thresh),
                         "detections_per_img": int(heads.detections_per_img)}
        extra.update(model_defaults=dict(self.defaults), min_size=list(self.transform.min_size),
                     max_size=self.transform.max_size)
        caps = {"batch"}
        if arch.family == "maskrcnn":
            caps.add("masks")
        if arch.family == "keypointrcnn":
            caps.add("keypoints")
            extra["keypoint_names"] = keypoint_names or []
        self.info = ModelInfo(name=spec, family=arch.family, backend="torchvision", task="detect",
                              paradigm=arch.paradigm, needs_nms=True,
                              params=params, class_names=class_names,
                              device=device, dtype=precision.name, capabilities=frozenset(caps), extra=extra)
        self.device = torch.device(device)

    def configure(self, options: DetectOptions) -> None:
        """NMS IoU, pre-NMS score threshold and detections per image for this call."""
        h, d = self.heads, self.defaults
        h.nms_thresh = float(options.nms_iou) if options.nms_iou is not None else d["nms_thresh"]
        h.score_thresh = min(d["score_thresh"], float(options.threshold))
        h.detections_per_img = max(1, int(options.max_det)) if options.max_det is not None \
            else d["detections_per_img"]

    def transform_one(self, image):
        """One PIL RGB image -> (float tensor (3, H, W) in [0, 1], its transformed ImageList)."""
        import torch

        arr = np.array(image.convert("RGB") if image.mode != "RGB" else image)  # a writable copy
        t = torch.from_numpy(arr).to(self.device).permute(2, 0, 1).float().div_(255.0)
        with torch.inference_mode():
            il, _ = self.transform([t])
        return t, il

    def predict(self, images: Sequence[Any], options: DetectOptions = DetectOptions(),
                timings: Timings | None = None) -> list[Detections]:
        import torch
        from torchvision.models.detection.image_list import ImageList

        timings = timings if timings is not None else Timings()
        self.configure(options)
        t0 = time.perf_counter()
        prepared = [self.transform_one(im) for im in images]
        timings.preprocess += time.perf_counter() - t0
        groups: dict[tuple, list[int]] = {}
        for i, (_, il) in enumerate(prepared):
            groups.setdefault(tuple(il.tensors.shape), []).append(i)
        out: list[Detections | None] = [None] * len(images)
        channels_last = bool(self.info.extra.get("channels_last"))
        for idxs in groups.values():
            t1 = time.perf_counter()
            tensors = torch.cat([prepared[i][1].tensors for i in idxs])
            if channels_last:
                tensors = tensors.contiguous(memory_format=torch.channels_last)
            self.prepared.ready = ImageList(tensors, [prepared[i][1].image_sizes[0] for i in idxs])
            self.model.transform = self.prepared
            try:
                with torch.inference_mode(), self.precision.context():
                    results = self.model([prepared[i][0] for i in idxs])
            finally:
                self.model.transform = self.transform
                self.prepared.ready = None
            t2 = time.perf_counter()
            timings.inference += t2 - t1
            for i, r in zip(idxs, results):
                out[i] = self.to_detections(r, images[i])
            timings.postprocess += time.perf_counter() - t2
        return out  # type: ignore[return-value]

    def to_detections(self, r: dict, image) -> Detections:
        from visiontool.convert import from_arrays

        columns: dict[str, Any] = {}
        masks = None
        if "mask_probs" in r:
            masks = self.paste(r["mask_probs"], r["boxes"], (image.height, image.width))
        if "keypoints" in r:
            kp = r["keypoints"].float().cpu().double().numpy().copy()
            if "keypoints_scores" in r:
                kp[..., 2] = r["keypoints_scores"].float().cpu().double().numpy()
            columns["keypoints"] = kp
        return from_arrays(r["boxes"].float(), r["scores"].float(), r["labels"], self.info.class_names,
                           masks=masks, **columns).sorted_by_score()

    @staticmethod
    def paste(probs, boxes, size: tuple[int, int]) -> list[dict]:
        """Low-resolution mask probabilities (N, 1, 28, 28) -> N RLEs on the original image,
        pasted by torchvision's own ``paste_masks_in_image``, a chunk at a time."""
        import torch
        from torchvision.models.detection.roi_heads import paste_masks_in_image

        from visiontool.masks import encode_many

        rles: list[dict] = []
        with torch.inference_mode():
            for s in range(0, len(probs), PASTE_CHUNK):
                pasted = paste_masks_in_image(probs[s:s + PASTE_CHUNK].float(), boxes[s:s + PASTE_CHUNK].float(), size)
                rles += encode_many((pasted[:, 0] > MASK_THRESHOLD).cpu().numpy())
        return rles
