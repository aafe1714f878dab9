"""The transformers DETR family (:mod:`visiontool.models.hf_detection`) in OpenVINO / ONNX Runtime.

Exported: the model's forward ``pixel_values (B, 3, H, W) float32 -> logits (B, Q, C),
pred_boxes (B, Q, 4) cxcywh in [0, 1]``, with batch, height and width dynamic. Everything else
is the torch adapter's own code: the image processor (resize, normalise), the batching by
processed shape, ``post_process_object_detection`` — :class:`RuntimeHFDetector` swaps only
the network call (:meth:`HFDetector.network`).

Shapes: one dynamic-shape export serves every image size (the processor's resize gives each
photo its own shape). Per-shape-bucket exports were measured against it — see docs/runtimes.md.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from visiontool.models.hf_detection import HFDetector
from visiontool.models.protocol import ModelInfo

EXPORTER_VERSION = 1
KIND = "transformers-detection"
INPUTS, OUTPUTS = ["pixel_values"], ["logits", "pred_boxes"]
DYNAMIC = {"pixel_values": {0: "batch", 2: "height", 3: "width"}}
EXAMPLE_SHAPE = (1, 3, 256, 320)  # the traced example; every axis but channels stays dynamic


def _net(model):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model(pixel_values=pixel_values)
            return out.logits, out.pred_boxes

    return Net().eval()


def build_into(det: HFDetector, runtime: str, directory: Path) -> list[str]:
    """Export ``det``'s network into ``directory`` for ``runtime``; the file names written."""
    import torch

    from visiontool.models.runtimes.engines import export_network

    example = (torch.zeros(EXAMPLE_SHAPE),)
    return export_network(_net(det.model), example, runtime, directory, INPUTS, OUTPUTS, DYNAMIC)


def cache_fields(det: HFDetector, runtime: str) -> dict[str, Any]:
    import torch
    import transformers

    from visiontool.models.runtimes.engines import runtime_version
    from visiontool.models.runtimes.export_cache import state_hash

    return {"kind": KIND, "family": det.info.family, "exporter": EXPORTER_VERSION, "runtime": runtime,
            "runtime_version": runtime_version(runtime), "torch": torch.__version__,
            "transformers": transformers.__version__, "precision": "float32", "shapes": "dynamic",
            "weights": state_hash(det.model)}


class RuntimeHFDetector(HFDetector):
    """An HFDetector whose network runs in an exported engine (no torch model held)."""

    def __init__(self, info: ModelInfo, processor, engine):
        super().__init__(info, None, processor)
        self.engine = engine
        from visiontool.device import Precision

        self.precision = Precision("float32", "cpu")

    def network(self, pixel_values):
        import torch

        logits, boxes = self.engine([pixel_values.cpu().numpy()])
        return SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))


def runtime_info(info: ModelInfo, runtime: str, **extra: Any) -> ModelInfo:
    from dataclasses import replace

    kept = {k: v for k, v in info.extra.items() if k != "channels_last"}
    return replace(info, backend=f"{info.backend}+{runtime}", runtime=runtime, device="cpu", dtype="float32",
                   extra={**kept, **extra})


def accelerate(det: HFDetector, runtime: str, quiet: bool = False) -> RuntimeHFDetector:
    """``det`` with its network exported (cached) and running in ``runtime``."""
    from visiontool.models.runtimes.engines import open_engine
    from visiontool.models.runtimes.export_cache import get_or_build

    fields = cache_fields(det, runtime)
    engine, where = get_or_build(fields, lambda d: build_into(det, runtime, d), lambda d: open_engine(runtime, d),
                                 f"{det.info.name} to {runtime}", quiet=quiet)
    return RuntimeHFDetector(runtime_info(det.info, runtime, export=str(where)), det.processor, engine)


def write_export(det: HFDetector, runtime: str, directory: Path) -> list[str]:
    """A deployable export in ``directory``: the network, the image processor's config (the
    preprocessing) and the model config; the manifest is the caller's."""
    files = build_into(det, runtime, directory)
    det.processor.save_pretrained(str(directory))
    return files + ["preprocessor_config.json"]


def manifest_fields(det: HFDetector) -> dict[str, Any]:
    p = det.processor
    pre = {k: getattr(p, k, None) for k in ("size", "do_resize", "do_rescale", "rescale_factor", "do_normalize",
                                            "image_mean", "image_std", "do_pad")}
    return {"kind": KIND, "preprocessing": json.loads(json.dumps(pre, default=str)),
            "inputs": INPUTS, "outputs": OUTPUTS}


def load_exported(directory: Path, manifest: dict, runtime: str) -> RuntimeHFDetector:
    """The adapter for an export directory written by :func:`write_export`."""
    from transformers import AutoImageProcessor

    from visiontool.models.hf_detection import load_processor
    from visiontool.models.runtimes.engines import open_engine

    processor = load_processor(AutoImageProcessor, str(directory))
    engine = open_engine(runtime, directory)
    names = {int(k): str(v) for k, v in (manifest.get("class_names") or {}).items()}
    info = ModelInfo(name=str(manifest.get("_spec", directory)), family=str(manifest.get("family", "unknown")),
                     backend=f"transformers+{runtime}", task="detect", paradigm="query-based", needs_nms=False,
                     params=int(manifest.get("params", 0)), class_names=names, device="cpu", dtype="float32",
                     capabilities=frozenset({"batch"}), runtime=runtime,
                     extra={"export": str(directory), "source": manifest.get("source")})
    return RuntimeHFDetector(info, processor, engine)
