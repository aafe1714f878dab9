"""Tiny detectors for the tests (no network, no pretrained weights) and the checks they share.

* torchvision: the real builders with ``weights=None, weights_backbone=None``, heads re-drawn
  so random weights give varied, confident detections; saved with ``torch.save(state_dict)``.
* Ultralytics: models built from the package's own yaml (``yolov8n.yaml``, ``yolov8n-seg.yaml``)
  and saved with ``Model.save``.
* transformers: tiny configs (see ``hf_tiny.py``).

Photos are small copies of the real ones in ../shared/data/images (the tests stay fast on
two shared cores); every record is still on the (small) original image.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SMALL = {"dog.jpg": (200, 134), "groceries.jpg": (200, 134), "dogs.jpg": (214, 120), "truck.jpg": (180, 120)}
# torchvision's R50 models resize to min_size 800 by default and keep 1000 proposals: the tests
# run them small (builder kwargs, which visiontool passes through)
TV_SIZES = {"min_size": 128, "max_size": 192}
TV_RCNN = {**TV_SIZES, "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 100}


def small_photos(directory: Path, images_dir: Path, grain: float = 6.0) -> Path:
    """Downscaled copies of the four photos (two share a size, as in the originals), with a
    little film grain (``grain`` grey levels, PNG so it survives): a random-weight network turns
    a smooth region into exactly tied scores, which any float rounding (folded norms, another
    batch size) may reorder; trained models do not score flat walls like that."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, size in SMALL.items():
        im = np.asarray(Image.open(images_dir / name).convert("RGB").resize(size, Image.BILINEAR), dtype=np.float64)
        im = np.clip(im + rng.normal(0.0, grain, im.shape), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(directory / (Path(name).stem + ".png"))
    return directory


# ----------------------------------------------------------------------------- torchvision
def build_torchvision(name: str, seed: int = 0, images=None, **kwargs):
    """torchvision's ``name`` with random weights whose heads give confident, varied boxes.
    ``images`` (PIL): what the norms and heads are calibrated on (default: noise)."""
    import torch
    from torchvision.models import get_model

    torch.manual_seed(seed)
    model = get_model(name, weights=None, weights_backbone=None, **kwargs).eval()
    g = torch.Generator().manual_seed(seed + 1)
    if images:
        from torchvision.transforms.functional import to_tensor

        tensors = [to_tensor(im) for im in images]
    else:
        tensors = [torch.rand(3, 120, 180, generator=g), torch.rand(3, 134, 200, generator=g)]
    calibrate_batchnorm(model, tensors)
    calibrate_heads(model, tensors)
    return model


# the last layer of each head -> the spread its outputs get (classification logits O(1),
# box deltas small): random weights then give varied scores and sensible boxes, and no two
# candidates are near-ties that float rounding (folded norms) could reorder
HEAD_OUTPUTS = {"cls_logits": 2.0, "cls_score": 2.0, "mask_fcn_logits": 2.0, "kps_score_lowres": 2.0,
                "bbox_ctrness": 1.0, "bbox_pred": 0.1, "bbox_reg": 0.1}


def _head_target(name: str, sigmoid: bool) -> float | None:
    import re

    last = name.rsplit(".", 1)[-1]
    if last in HEAD_OUTPUTS:
        # sigmoid scores (RetinaNet, FCOS) saturate at 1.0 in float32 beyond ~8: a narrower spread
        return HEAD_OUTPUTS[last] / 4 if sigmoid and last == "cls_logits" else HEAD_OUTPUTS[last]
    m = re.search(r"head\.(classification|regression)_head\.module_list\.\d+(\.1)?$", name)
    if m:  # SSD: one conv per level (SSDlite: depthwise block then the 1x1 conv ".1")
        return 2.0 if m.group(1) == "classification" else 0.1
    return None


def calibrate_heads(model, images, rounds: int = 2) -> None:
    """Rescale each head's last layer so its outputs on noise images have the spread of
    ``HEAD_OUTPUTS`` (biases zeroed: no class is favoured)."""
    import torch

    finals = {}
    sigmoid = not hasattr(model, "roi_heads") and "SSD" not in type(model).__name__
    for name, m in model.named_modules():
        t = _head_target(name, sigmoid)
        if t is not None and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.ConvTranspose2d)):
            finals[name] = (m, t)
    with torch.no_grad():
        for m, _ in finals.values():
            if m.bias is not None:
                m.bias.zero_()
        heads = model.roi_heads if hasattr(model, "roi_heads") else model
        saved = heads.score_thresh, heads.detections_per_img
        heads.score_thresh, heads.detections_per_img = 0.0, 20
        for _ in range(rounds):
            seen: dict[str, list] = {}
            hooks = [m.register_forward_hook(lambda mod, i, o, n=n, seen=seen: seen.setdefault(n, []).append(
                o.flatten())) for n, (m, _) in finals.items()]
            try:
                model(images)
            finally:
                for h in hooks:
                    h.remove()
            for n, outs in seen.items():
                std = float(torch.cat(outs).float().std())
                if std > 0:
                    finals[n][0].weight.mul_(finals[n][1] / std)
        heads.score_thresh, heads.detections_per_img = saved


def calibrate_batchnorm(model, tensors, passes: int = 2) -> None:
    """Give the backbone's batch-norms the statistics of its own activations on noise images
    (as training would): activations stay O(1) and vary over the image, unlike a random
    network's, whose features are nearly constant and whose scores tie."""
    import torch

    backbone = model.backbone
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        batch = model.transform(tensors)[0].tensors
        backbone.train()
        for _ in range(passes):
            backbone(batch)
    backbone.eval()


def save_torchvision(name: str, path: Path, seed: int = 0, **kwargs) -> tuple[Path, object]:
    """(state-dict file, the model it came from) for ``torchvision:NAME:FILE``."""
    import torch

    model = build_torchvision(name, seed, **kwargs)
    torch.save(model.state_dict(), path)
    return Path(path), model


def torchvision_native(model, image, *, score_thresh=None, nms_thresh=None, detections=None) -> dict:
    """torchvision's own call: ``model([to_tensor(image)])`` in eval mode, optionally with the
    heads' thresholds set as visiontool sets them."""
    import torch
    from torchvision.transforms.functional import to_tensor

    heads = model.roi_heads if hasattr(model, "roi_heads") else model
    saved = (heads.score_thresh, heads.nms_thresh, heads.detections_per_img)
    if score_thresh is not None:
        heads.score_thresh = score_thresh
    if nms_thresh is not None:
        heads.nms_thresh = nms_thresh
    if detections is not None:
        heads.detections_per_img = detections
    try:
        with torch.no_grad():
            out = model([to_tensor(image)])[0]
    finally:
        heads.score_thresh, heads.nms_thresh, heads.detections_per_img = saved
    return {k: v.double().numpy() if v.is_floating_point() else v.numpy() for k, v in out.items()}


# ----------------------------------------------------------------------------- checks
def assert_same_detections(ours, boxes, scores, labels=None, box_tol=0.01, score_tol=1e-4):
    """visiontool's Detections equal a native result: same count, boxes within ``box_tol`` px,
    scores within ``score_tol``, same labels, in score order. Pairs are matched by nearest
    box among equal scores (ties may come in either order)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    assert len(ours) == len(boxes), (len(ours), len(boxes))
    if not len(boxes):
        return
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    labels = None if labels is None else np.asarray(labels).reshape(-1)[order]
    assert np.all(np.diff(ours.scores) <= 0), "records are sorted by score"
    used = np.zeros(len(ours), bool)
    for b, s, k in zip(boxes, scores, range(len(boxes))):
        cand = np.flatnonzero(~used & (np.abs(ours.scores - s) <= score_tol))
        assert len(cand), f"no detection with score {s}"
        j = cand[np.argmin(np.abs(ours.xyxy[cand] - b).max(axis=1))]
        used[j] = True
        assert np.abs(ours.xyxy[j] - b).max() <= box_tol, (ours.xyxy[j], b)
        if labels is not None:
            assert int(ours.class_ids[j]) == int(labels[k])


def write_gt(path: Path, results, names: list[str] | None = None, keypoints: int = 0) -> Path:
    """A COCO ground truth naming the records' images by file name, with each record's own
    detections as annotations (categories named like the model's labels)."""
    names = names or sorted({str(n) for r in results for n in r.detections.names})
    cats = [{"id": 1 + i, "name": n} for i, n in enumerate(names)]
    if keypoints:
        for c in cats:
            c["keypoints"] = [f"k{i}" for i in range(keypoints)]
            c["skeleton"] = []
    cat_of = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    for i, r in enumerate(results, 1):
        images.append({"id": i, "file_name": Path(r.image).name, "width": r.width, "height": r.height})
        for box, name in zip(r.detections.xyxy.tolist(), r.detections.names):
            if str(name) not in cat_of:
                continue
            x1, y1, x2, y2 = box
            a = {"id": len(anns) + 1, "image_id": i, "category_id": cat_of[str(name)],
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": max((x2 - x1) * (y2 - y1), 1.0), "iscrowd": 0,
                 "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]}  # the box as a polygon: segm GT too
            if keypoints:
                a["keypoints"] = [v for k in range(keypoints) for v in (x1 + k, y1 + k, 2)]
                a["num_keypoints"] = keypoints
            anns.append(a)
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def load_coco_results(gt: Path, results: list[dict]):
    """pycocotools' own loader on a results list (raises if anything is malformed)."""
    from pycocotools.coco import COCO

    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(gt))
        return coco, coco.loadRes(results) if results else None


# ----------------------------------------------------------------------------- Ultralytics
COCO80 = ["person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
          "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
          "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
          "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
          "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
          "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
          "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
          "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
          "teddy bear", "hair drier", "toothbrush"]


def build_yolo(yaml: str, path: Path, images=None, seed: int = 0) -> Path:
    """An Ultralytics model from its packaged ``yaml`` with COCO's 80 names, batch-norms
    calibrated on ``images`` and class logits spread out (random YOLO heads start at a 1 %
    prior: nothing would be detected), saved with ``Model.save`` for ``ultralytics:PATH``."""
    import torch

    from visiontool.models.ultralytics import import_ultralytics

    import_ultralytics()  # settings into visiontool's (test) cache, quiet, offline
    from ultralytics import YOLO

    torch.manual_seed(seed)
    model = YOLO(yaml)
    net = model.model
    net.names = dict(enumerate(COCO80[:net.model[-1].nc]))  # 80 classes (a pose model: 1, person)
    g = torch.Generator().manual_seed(seed + 1)
    if images:  # as Ultralytics' predict sees them: letterboxed to 640 (each alone: a minimal rectangle)
        from ultralytics.data.augment import LetterBox

        boxed = [LetterBox((640, 640), auto=True, stride=32)(image=np.asarray(im)) for im in images]
        shape = boxed[0].shape
        batch = torch.stack([torch.from_numpy(b).permute(2, 0, 1).float() / 255 for b in boxed if b.shape == shape])
    else:
        batch = torch.rand(2, 3, 448, 640, generator=g)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    with torch.no_grad():
        net.train()
        net(batch)
        net.eval()
        head = net.model[-1]
        finals = [branch[-1] for branch in head.cv3]  # the class-logit convs, one per level
        outs: list = []
        hooks = [f.register_forward_hook(lambda mod, i, o: outs.append(o.flatten())) for f in finals]
        for f in finals:
            f.bias.zero_()
        net(batch)
        for h in hooks:
            h.remove()
        std = float(torch.cat(outs).std())
        for f in finals:
            f.weight.mul_(0.4 / std)  # sigmoid scores: a narrow spread keeps them off 1.0
    for m in norms:
        m.momentum = 0.03
    model.save(str(path))
    return Path(path)
