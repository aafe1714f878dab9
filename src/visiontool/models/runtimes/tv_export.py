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


def accelerate(det, runtime: str, quiet: bool = False):
    """``det`` (a TorchvisionDetector) with its backbone exported (cached) and run in ``runtime``."""
    from visiontool.models.runtimes.engines import export_network, open_engine
    from visiontool.models.runtimes.export_cache import get_or_build
    from visiontool.models.runtimes.hf_export import runtime_info

    example = _example(det)
    names = _names(det, example)
    outputs = [f"feature_{n}" for n in names]
    dynamic = {"images": {0: "batch", 2: "height", 3: "width"}}

    def build(directory):
        net = _Net.build(det.model.backbone, names)
        return export_network(net, (example,), runtime, directory, ["images"], outputs, dynamic)

    fields = cache_fields(det, runtime)
    engine, where = get_or_build(fields, build, lambda d: open_engine(runtime, d),
                                 f"{det.info.name} (backbone) to {runtime}", quiet=quiet)
    det.model.backbone = _runtime_backbone(engine, names, getattr(det.model.backbone, "out_channels", None))
    det.info = runtime_info(det.info, runtime, export=str(where), exported="backbone")
    return det
