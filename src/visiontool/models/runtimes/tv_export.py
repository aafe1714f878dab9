"""torchvision detectors (:mod:`visiontool.models.torchvision`) with their backbone in OpenVINO / ONNX Runtime.

Exported: ``model.backbone`` — ``images (B, 3, H, W) float32`` (already resized, normalised and
padded by the model's own transform) ``-> the feature maps`` (FPN levels ``0, 1, ..., pool`` or
``p6, p7``; SSD's extra layers), batch, height and width dynamic. The backbone (ResNet-50 or
MobileNetV3 + FPN, VGG16) carries most of each model's FLOPs. The rest — RPN and RoI heads,
the dense heads, anchors, box decoding, NMS, mask pasting — stays the adapter's torch code, so
``--threshold``, ``--nms-iou`` and ``--max-det`` keep working per call (a whole-model export
bakes them in) and the records keep the torch path's within float rounding.
"""
from __future__ import annotations

from typing import Any

from PIL import Image

EXPORTER_VERSION = 1
KIND = "torchvision-backbone"
INPUTS = ["images"]
DYNAMIC = {"images": {0: "batch", 2: "height", 3: "width"}}


class _Net:
    """``model.backbone`` returning its feature maps as a tuple (names kept aside)."""

    @staticmethod
    def build(backbone, names: list[str]):
        import torch

        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.backbone = backbone

            def forward(self, images):
                out = self.backbone(images)
                return tuple(out[n] for n in names)

        return Net().eval()


def _example(det) -> Any:
    """A tensor as the model's own transform makes it (a 240x320 grey image): the right
    channel count and size rules (SSD's fixed 300/320 px) for tracing."""
    _, il = det.transform_one(Image.new("RGB", (320, 240), (114, 114, 114)))
    return il.tensors.contiguous()


def _names(det, example) -> list[str]:
    import torch

    with torch.inference_mode():
        return list(det.model.backbone(example).keys())


def cache_fields(det, runtime: str) -> dict[str, Any]:
    import torch
    import torchvision

    from visiontool.models.runtimes.engines import runtime_version
    from visiontool.models.runtimes.export_cache import state_hash

    return {"kind": KIND, "family": det.info.family, "exporter": EXPORTER_VERSION, "runtime": runtime,
            "runtime_version": runtime_version(runtime), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "precision": "float32", "shapes": "dynamic",
            "weights": state_hash(det.model.backbone)}


def _runtime_backbone(engine, names: list[str], out_channels):
    import torch
    from collections import OrderedDict

    class RuntimeBackbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.out_channels = out_channels

        def forward(self, images):
            outs = engine([images.detach().cpu().numpy()])
            return OrderedDict((n, torch.from_numpy(o)) for n, o in zip(names, outs))

    return RuntimeBackbone().eval()


def _plan(det) -> tuple[Any, list[str]]:
    example = _example(det)
    return example, _names(det, example)


def build_into(det, runtime: str, directory, example=None, names: list[str] | None = None) -> list[str]:
    """Export ``det.model.backbone`` into ``directory`` for ``runtime``; the file names written."""
    from visiontool.models.runtimes.engines import export_network

    if example is None or names is None:
        example, names = _plan(det)
    net = _Net.build(det.model.backbone, names)
    return export_network(net, (example,), runtime, directory, INPUTS, [f"feature_{n}" for n in names], DYNAMIC)


def accelerate(det, runtime: str, quiet: bool = False):
    """``det`` (a TorchvisionDetector) with its backbone exported (cached) and run in ``runtime``."""
    from visiontool.models.runtimes.engines import open_engine
    from visiontool.models.runtimes.export_cache import get_or_build
    from visiontool.models.runtimes.hf_export import runtime_info

    example, names = _plan(det)
    fields = cache_fields(det, runtime)
    engine, where = get_or_build(fields, lambda d: build_into(det, runtime, d, example, names),
                                 lambda d: open_engine(runtime, d), f"{det.info.name} (backbone) to {runtime}",
                                 quiet=quiet)
    det.model.backbone = _runtime_backbone(engine, names, getattr(det.model.backbone, "out_channels", None))
    det.info = runtime_info(det.info, runtime, export=str(where), exported="backbone")
    return det


# ----------------------------------------------------------------------------- visiontool export
HEADS_FILE = "heads.pt"
TRANSFORM_FIELDS = ("min_size", "max_size", "image_mean", "image_std", "size_divisible", "fixed_size")


def _source_state_dict(det) -> dict:
    """The state dict ``det`` was loaded from, as in its file (before batch-norm folding)."""
    from visiontool.models import torchvision as tvm

    spec = det.info.name
    name, file = tvm.parse(spec)
    return tvm.read_state_dict(spec, file) if file is not None else tvm.fetch_default(spec, name, quiet=True)


def write_export(det, runtime: str, directory) -> list[str]:
    """A deployable export of ``det`` in ``directory``: the backbone exported as for the cache,
    and ``heads.pt`` — every tensor of the source state dict outside ``backbone.`` (RPN, RoI or
    dense heads; unfolded, as trained), saved with ``torch.save`` and read back with
    ``weights_only=True``. The manifest (:func:`manifest_fields`) names the builder."""
    from pathlib import Path

    import torch

    files = build_into(det, runtime, directory)
    heads = {k: v.detach().cpu().contiguous() for k, v in _source_state_dict(det).items()
             if not k.startswith("backbone.")}
    torch.save(heads, Path(directory) / HEADS_FILE)
    return files + [HEADS_FILE]


def _jsonable(v):
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def manifest_fields(det, runtime: str = "") -> dict[str, Any]:
    """The manifest's torchvision fields: ``kind``, ``preprocessing`` (the model's
    ``GeneralizedRCNNTransform``: min/max size, mean, std, size divisor, SSD's fixed size),
    ``inputs``/``outputs`` of the exported backbone and ``torchvision``: ``builder`` (the
    ``torchvision.models.get_model`` name), ``heads`` (the state-dict file), ``feature_names``
    (the backbone's output keys, in output order), ``out_channels``, ``model_defaults`` (NMS IoU,
    score threshold, detections per image), ``keypoint_names``."""
    _, names = _plan(det)
    t = det.transform
    pre = {f: _jsonable(getattr(t, f, None)) for f in TRANSFORM_FIELDS}
    extra = det.info.extra
    return {"kind": KIND, "preprocessing": pre, "inputs": INPUTS, "outputs": [f"feature_{n}" for n in names],
            "torchvision": {"builder": _builder(det), "heads": HEADS_FILE, "feature_names": [str(n) for n in names],
                            "out_channels": getattr(det.model.backbone, "out_channels", None),
                            "model_defaults": dict(det.defaults),
                            "keypoint_names": list(extra.get("keypoint_names") or [])}}


def _builder(det) -> str:
    from visiontool.models import torchvision as tvm

    return tvm.parse(det.info.name)[0]


def load_exported(directory, manifest: dict, runtime: str, precision):
    """The :class:`~visiontool.models.torchvision.TorchvisionDetector` of an export directory:
    the builder's architecture with the heads from ``heads.pt`` (torch) and the backbone in the
    exported engine, set up as the ``--runtime`` path sets up the source model."""
    from pathlib import Path

    import torch

    from visiontool.errors import ModelLoadError
    from visiontool.models import torchvision as tvm
    from visiontool.models.runtimes.engines import open_engine
    from visiontool.models.runtimes.hf_export import runtime_info
    from visiontool.models.torchvision_weights import mismatch

    spec = str(manifest.get("_spec", directory))
    tv = manifest.get("torchvision") or {}
    name = str(tv.get("builder", ""))
    if name not in tvm.ARCHS:
        raise ModelLoadError(f"cannot load export '{spec}': its manifest names torchvision builder '{name}', which "
                             "this visiontool does not know")
    heads = torch.load(Path(directory) / str(tv.get("heads", HEADS_FILE)), map_location="cpu", weights_only=True)
    model, _count, _ = tvm.build(name, heads)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
    bad = mismatch(own, heads)
    if bad is not None:
        raise ModelLoadError(f"cannot load export '{spec}': {HEADS_FILE} does not fit torchvision {name}: {bad}")
    model.load_state_dict(heads, strict=False)
    names = [str(n) for n in tv.get("feature_names") or []]
    model.backbone = _runtime_backbone(open_engine(runtime, Path(directory)), names, tv.get("out_channels"))
    for f, v in (manifest.get("preprocessing") or {}).items():
        if f in TRANSFORM_FIELDS and v is not None:
            setattr(model.transform, f, tuple(v) if f in ("min_size", "fixed_size") else v)
    heads_mod = model.roi_heads if tvm.ARCHS[name].kind == "rcnn" else model
    for k, v in (tv.get("model_defaults") or {}).items():
        setattr(heads_mod, k, v)
    class_names = {int(k): str(v) for k, v in (manifest.get("class_names") or {}).items()}
    det = tvm.TorchvisionDetector(spec, name, model, class_names, "cpu", precision, True,
                                  keypoint_names=list(tv.get("keypoint_names") or []))
    det.info = runtime_info(det.info, runtime, export=str(directory), exported="backbone",
                            source=manifest.get("source"))
    from dataclasses import replace

    det.info = replace(det.info, params=int(manifest.get("params") or det.info.params))
    return det
