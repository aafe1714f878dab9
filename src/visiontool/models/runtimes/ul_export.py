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
    import warnings

    from visiontool.models.runtimes.engines import no_openvino_telemetry

    with contextlib.redirect_stdout(sys.stderr), warnings.catch_warnings(), no_openvino_telemetry():
        warnings.simplefilter("ignore")  # torch.jit.trace's deprecation notes (Ultralytics traces)
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


def open_exported(det, runtime: str, directory: Path, task: str | None = None, imgsz: int | None = None):
    """``YOLO(exported)``, set up by one tiny untimed prediction (OpenVINO: pinned to f32).
    ``det`` None: ``task`` and ``imgsz`` say what the export is (an export directory)."""
    from ultralytics import YOLO

    if det is not None:
        task, imgsz = det.model.task, det.imgsz
    path = Path(directory) / EXPORTED[runtime]
    if not path.exists():
        raise FileNotFoundError(f"{path.name} is missing")
    from visiontool.models.ultralytics import torch_threads_kept

    with contextlib.redirect_stdout(sys.stderr), torch_threads_kept():
        yolo = YOLO(str(path), task=task)
        kw = dict(device="cpu", verbose=False, save=False)
        if imgsz:
            kw["imgsz"] = int(imgsz)
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


# ----------------------------------------------------------------------------- visiontool export
def write_export(det, runtime: str, directory: Path) -> list[str]:
    """What Ultralytics' own exporter writes (:func:`build_into`: ``model_openvino_model/``
    with ``model.xml``, ``model.bin``, ``metadata.yaml``; or ``model.onnx`` with its metadata
    inside) — the manifest is the caller's."""
    return build_into(det, runtime, directory)


def manifest_fields(det, runtime: str) -> dict[str, Any]:
    """The manifest's Ultralytics fields: ``kind``, ``preprocessing`` (Ultralytics' letterbox at
    ``imgsz``, the network's ``stride``), ``inputs``/``outputs`` and ``ultralytics``: ``model``
    (the path ``YOLO()`` opens), ``task``, ``imgsz`` (the size visiontool passes to predict, null:
    the export's own), ``version``, and the head's ``head``/``end2end``/``paradigm``/``needs_nms``."""
    import ultralytics

    info = det.info
    stride = getattr(det.model.model, "stride", None)
    stride = int(max(stride.tolist())) if hasattr(stride, "tolist") else None
    return {"kind": KIND, "inputs": ["images"], "outputs": ["output0"] + (["output1"] if det.model.task == "segment"
                                                                           else []),
            "preprocessing": {"letterbox": True, "imgsz": det.imgsz, "stride": stride, "scale": "1/255", "rgb": True},
            "ultralytics": {"model": EXPORTED[runtime], "task": det.model.task, "imgsz": det.imgsz,
                            "version": ultralytics.__version__, "head": info.extra.get("head"),
                            "end2end": bool(info.extra.get("end2end")), "paradigm": info.paradigm,
                            "needs_nms": info.needs_nms}}


def load_exported(directory: Path, manifest: dict, runtime: str):
    """The :class:`~visiontool.models.ultralytics.UltralyticsDetector` of an export directory:
    ``YOLO(exported)`` as the ``--runtime`` path opens it (Ultralytics' predict; OpenVINO f32)."""
    from visiontool.models.protocol import ModelInfo
    from visiontool.models.ultralytics import TASKS, UltralyticsDetector, import_ultralytics

    spec = str(manifest.get("_spec", directory))
    ul = manifest.get("ultralytics") or {}
    task = str(ul.get("task", "detect"))
    if task not in TASKS:
        from visiontool.errors import ModelLoadError

        raise ModelLoadError(f"cannot load export '{spec}': its manifest names Ultralytics task '{task}'")
    import_ultralytics()  # the extra is there; configured as for the source model
    imgsz = ul.get("imgsz")
    yolo = open_exported(None, runtime, Path(directory), task=task, imgsz=imgsz)
    caps = {"batch"} | ({"masks"} if task == "segment" else set()) | ({"keypoints"} if task == "pose" else set())
    info = ModelInfo(name=spec, family=str(manifest.get("family", "yolo")), backend=f"ultralytics+{runtime}",
                     task="detect", paradigm=str(ul.get("paradigm", "anchor-free")),
                     needs_nms=bool(ul.get("needs_nms", True)), params=int(manifest.get("params") or 0),
                     class_names={int(k): str(v) for k, v in (manifest.get("class_names") or {}).items()},
                     device="cpu", dtype="float32", capabilities=frozenset(caps), runtime=runtime,
                     extra={"task": task, "head": ul.get("head"), "end2end": bool(ul.get("end2end")),
                            "export": str(directory), "exported": "ultralytics", "source": manifest.get("source")})
    det = UltralyticsDetector.__new__(UltralyticsDetector)  # the adapter around an already-open model
    det.model, det.device, det.half, det.imgsz, det.info = yolo, "cpu", False, imgsz, info
    return det
