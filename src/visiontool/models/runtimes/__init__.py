"""Inference runtimes other than torch: OpenVINO and ONNX Runtime, through cached exports.

``--runtime torch|openvino|onnxruntime|auto`` reaches :func:`visiontool.models.registry.load_detector`
as a load option; nothing outside ``models/`` branches on it. For a runtime other than torch the
family's torch adapter is loaded as usual (its weights give the export cache key), its network is
exported once (:mod:`.export_cache`), and a runtime twin of the adapter keeps the adapter's own
pre- and post-processing while the network call runs in the engine (:mod:`.engines`).

Families with an exporter: the transformers DETR family (:mod:`.hf_export`: the whole network;
:mod:`.hf_shapes`: one static export per processed image size for Deformable DETR and the
RT-DETR-like families without a fixed-size processor), torchvision's detectors
(:mod:`.tv_export`: the backbone), Ultralytics (:mod:`.ul_export`: Ultralytics' own exporter) and
the open-vocabulary OWL-ViT and OWLv2 (:mod:`.zs_export`: the network, phrases as an input),
Grounding DINO, MM-Grounding-DINO and OmDet-Turbo (:mod:`.gd_export`: the network, phrases as
an input, one static-size export per processed size),
and the universal-segmentation Mask2Former, MaskFormer, OneFormer and EoMT
(:mod:`.universal_export`: the network, one static-size export per processed size).
Other families asked for another runtime are one line, exit 2 (:func:`accelerate`).
"""
from __future__ import annotations

import platform
from typing import Any

from visiontool.errors import UsageError, require

RUNTIMES = ("torch", "openvino", "onnxruntime", "auto")
EXPORTABLE = ("the transformers DETR family, OWL-ViT and OWLv2, Grounding DINO, MM-Grounding-DINO, OmDet-Turbo, "
              "Mask2Former, MaskFormer, OneFormer, EoMT, torchvision detectors, Ultralytics YOLO")
EXTRAS = {"openvino": ("openvino", "openvino"), "onnxruntime": ("onnxruntime", "onnx")}  # runtime -> (module, extra)


def validate(runtime: str | None) -> str:
    """The runtime name, lower-cased (UsageError for an unknown one)."""
    name = (runtime or "torch").strip().lower()
    if name == "onnx":
        name = "onnxruntime"
    if name not in RUNTIMES:
        raise UsageError(f"--runtime '{runtime}': expected one of {', '.join(RUNTIMES)}")
    return name


def _is_x86() -> bool:
    return platform.machine().lower() in {"x86_64", "amd64", "i386", "i686", "x86"}


def resolve(runtime: str | None, device: str) -> str:
    """``auto`` -> openvino on an x86 CPU when the extra imports, else torch; an explicit
    openvino/onnxruntime needs its extra (exit 2 with the install line) and a CPU device."""
    name = validate(runtime)
    cpu = str(device).startswith("cpu")
    if name == "auto":
        if cpu and _is_x86():
            try:
                import openvino  # noqa: F401
                return "openvino"
            except ImportError:
                pass
        return "torch"
    if name == "torch":
        return name
    module, extra = EXTRAS[name]
    require(module, f"--runtime {name}", extra)
    if not cpu:
        raise UsageError(f"--runtime {name} runs on the CPU here; pass --device cpu (device was '{device}'), or "
                         "--runtime torch")
    return name


def accelerate(detector: Any, runtime: str, quiet: bool = False) -> Any:
    """``detector`` (a loaded torch adapter) running its network in ``runtime``."""
    if runtime == "torch":
        return detector
    if getattr(detector.info, "dtype", "float32") != "float32":
        raise UsageError(f"--runtime {runtime} runs float32 exports only; pass --dtype float32 (was "
                         f"{detector.info.dtype})")
    from visiontool.models.hf_detection import HFDetector

    if type(detector) is HFDetector:
        from visiontool.models.runtimes import hf_export

        return hf_export.accelerate(detector, runtime, quiet=quiet)
    from visiontool.models.torchvision import TorchvisionDetector

    if type(detector) is TorchvisionDetector:
        from visiontool.models.runtimes import tv_export

        return tv_export.accelerate(detector, runtime, quiet=quiet)
    from visiontool.models.ultralytics import UltralyticsDetector

    if type(detector) is UltralyticsDetector:
        from visiontool.models.runtimes import ul_export

        return ul_export.accelerate(detector, runtime, quiet=quiet)
    from visiontool.models.runtimes import zs_export

    if zs_export.exportable(detector):
        return zs_export.accelerate(detector, runtime, quiet=quiet)
    from visiontool.models.runtimes import gd_export

    if gd_export.exportable(detector):
        return gd_export.accelerate(detector, runtime, quiet=quiet)
    from visiontool.models.runtimes import universal_export

    if universal_export.exportable(detector):
        return universal_export.accelerate(detector, runtime, quiet=quiet)
    info = detector.info
    raise UsageError(f"--runtime {runtime}: no exporter for {info.backend} '{info.family}' models yet (exportable: "
                     f"{EXPORTABLE}); use --runtime torch")
