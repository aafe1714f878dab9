"""Ultralytics YOLO models (:mod:`visiontool.models.ultralytics`) through Ultralytics' own exporter.

``YOLO(weights).export(format="openvino"|"onnx", dynamic=True, half=False)`` — the export
Ultralytics documents for CPUs — run on a copy of the weights inside the export cache's
temporary directory (so nothing lands next to the user's weights or in the working
directory), then loaded back with ``YOLO(exported)``: predictions still go through
Ultralytics' own ``predict`` (letterbox, NMS with the call's ``--threshold``/``--nms-iou``,
masks, keypoints), so the adapter is the same :class:`UltralyticsDetector`.

Dynamic shapes: Ultralytics letterboxes same-size images to a minimal rectangle only for
dynamic exports (a static export gets a padded square, other boxes than the torch path).

Precision: Ultralytics compiles OpenVINO with the CPU plugin's default precision, bfloat16 on
CPUs with AVX512-BF16/AMX (this machine's): the compiled model is replaced by an f32 one.
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from PIL import Image

EXPORTER_VERSION = 1
KIND = "ultralytics"
FORMATS = {"openvino": "openvino", "onnxruntime": "onnx"}
EXPORTED = {"openvino": "model_openvino_model", "onnxruntime": "model.onnx"}


def cache_fields(det, runtime: str) -> dict[str, Any]:
    import torch
    import ultralytics

    from visiontool.models.runtimes.engines import runtime_version
    from visiontool.models.runtimes.export_cache import state_hash

    return {"kind": KIND, "family": det.info.family, "task": det.model.task, "exporter": EXPORTER_VERSION,
            "runtime": runtime, "runtime_version": runtime_version(runtime), "torch": torch.__version__,
            "ultralytics": ultralytics.__version__, "precision": "float32", "shapes": "dynamic",
            "imgsz": det.imgsz, "weights": state_hash(det.model.model)}


def build_into(det, runtime: str, directory: Path) -> list[str]:
    """Ultralytics' exporter on a copy of the weights in ``directory``; the files it wrote."""
    from ultralytics import YOLO

    weights = directory / "model.pt"
    with contextlib.redirect_stdout(sys.stderr):
        det.model.save(str(weights))
        kw: dict[str, Any] = dict(format=FORMATS[runtime], dynamic=True, half=False, device="cpu", verbose=False)
        if det.imgsz:
            kw["imgsz"] = int(det.imgsz)
        YOLO(str(weights)).export(**kw)
    weights.unlink()
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


def _pin_f32(yolo, xml: Path) -> None:
    """Recompile Ultralytics' OpenVINO model with f32 inference precision (see the module doc)."""
    import openvino as ov

    backend = getattr(getattr(getattr(yolo, "predictor", None), "model", None), "backend", None)
    if backend is None or not hasattr(backend, "ov_compiled_model"):
        raise RuntimeError("Ultralytics' OpenVINO backend is not where visiontool expects it")
    from functools import partial

    core = ov.Core()
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    backend.compile_model = partial(core.compile_model, device_name="CPU", config=config)
    backend.ov_compiled_model = backend.compile_model(core.read_model(str(xml)))


def open_exported(det, runtime: str, directory: Path):
    """``YOLO(exported)``, set up by one tiny untimed prediction (OpenVINO: pinned to f32)."""
    from ultralytics import YOLO

    path = Path(directory) / EXPORTED[runtime]
    if not path.exists():
        raise FileNotFoundError(f"{path.name} is missing")
    with contextlib.redirect_stdout(sys.stderr):
        yolo = YOLO(str(path), task=det.model.task)
        kw = dict(device="cpu", verbose=False, save=False)
        if det.imgsz:
            kw["imgsz"] = int(det.imgsz)
        yolo.predict(Image.new("RGB", (64, 48)), **kw)
    if runtime == "openvino":
        _pin_f32(yolo, next(path.glob("*.xml")))
    return yolo


def accelerate(det, runtime: str, quiet: bool = False):
    """``det`` (an UltralyticsDetector) predicting through its Ultralytics export for ``runtime``."""
    from visiontool.models.runtimes.export_cache import get_or_build
    from visiontool.models.runtimes.hf_export import runtime_info

    fields = cache_fields(det, runtime)
    yolo, where = get_or_build(fields, lambda d: build_into(det, runtime, d),
                               lambda d: open_exported(det, runtime, d), f"{det.info.name} to {runtime}", quiet=quiet)
    det.model = yolo
    det.device, det.half = "cpu", False
    det.info = runtime_info(det.info, runtime, export=str(where), exported="ultralytics")
    return det
