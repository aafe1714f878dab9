"""``visiontool export``: a deployable directory that ``--model DIR`` loads again.

DIR gets what the family's exporter writes, ``visiontool-export.json`` (the manifest: format,
kind, family, runtime, class names, preprocessing, inputs/outputs, source spec, params,
precision, shapes, visiontool version, files, and the family's own fields) and ``entry.json``
(sizes and sha256 of every file, checked on load). Written into a temporary sibling directory
and renamed into place: DIR is complete or absent. Per family (``kind``):

* ``transformers-detection`` (:mod:`.hf_export`): the whole network (``model.xml``/``model.bin``
  or ``model.onnx``) and ``preprocessor_config.json``; a model exported once per processed image
  size (:func:`.hf_export.per_shape`: Deformable DETR, or RT-DETR-like families whose processor
  does not fix the size) is refused, exit 2 — ``--runtime`` caches its per-size exports instead;
* ``torchvision-backbone`` (:mod:`.tv_export`): the backbone's export and ``heads.pt`` (the
  non-backbone state dict, rebuilt in torch from the manifest's ``torchvision.builder``);
* ``ultralytics`` (:mod:`.ul_export`): what Ultralytics' own exporter writes
  (``model_openvino_model/`` or ``model.onnx``), run again through Ultralytics' predict;
* ``transformers-zero-shot`` (:mod:`.zs_export`, OWL-ViT and OWLv2): the network with the
  phrases as an input, and the processor's files (``processor_config.json``, the tokenizer's);
  ``--model DIR`` then needs ``--text``. The other open-vocabulary families
  (:data:`NO_EXPORTER`) are refused before they load, one line, exit 2.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from visiontool.errors import UsageError

# open-vocabulary model types (config.model_type) visiontool export has no exporter for
NO_EXPORTER = frozenset({"grounding-dino", "mm-grounding-dino", "omdet-turbo"})
RUNTIME_NAMES = {"openvino": "openvino", "onnx": "onnxruntime", "onnxruntime": "onnxruntime"}


def check_target(out_dir: str) -> Path:
    """``-o DIR``: absent or an empty directory, its parent writable (UsageError otherwise)."""
    target = Path(out_dir).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(f"-o '{out_dir}' exists and is not an empty directory; name a new directory")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o '{out_dir}': the directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"-o '{out_dir}': cannot write in '{parent}'")
    return target


def check_runtime(runtime: str) -> str:
    name = RUNTIME_NAMES.get((runtime or "").strip().lower())
    if name is None:
        raise UsageError(f"--runtime '{runtime}': visiontool export writes openvino or onnx")
    return name


def export_model(spec: str, runtime: str, out_dir: str, quiet: bool = False) -> Path:
    """Export detection model ``spec`` for ``runtime`` into ``out_dir``; returns the directory."""
    from visiontool import __version__
    from visiontool.models import registry
    from visiontool.models.runtimes import resolve
    from visiontool.models.runtimes.export_cache import describe
    from visiontool.models.registry import EXPORT_MANIFEST
    from visiontool.render.console import info

    runtime = check_runtime(runtime)
    target = check_target(out_dir)
    registry.check_detector_spec(spec)
    if registry.detector_module(spec).__name__ == registry.EXPORTED:
        raise UsageError(f"'{spec}' is already an export; export its source model instead")
    resolve(runtime, "cpu")  # the extra is installed
    text = _open_vocabulary(spec, runtime)  # OWL loads with its phrases as an input; the others are refused here
    det = registry.load_detector(spec, "cpu", "float32", **({"text": True} if text else {}))
    family = exporter_for(det)
    if hasattr(family, "check_deployable"):  # the DETR family: a per-shape model is refused here, in one line
        family.check_deployable(det, runtime)
    if not quiet:
        info(f"exporting {spec} to {runtime} ...")
    t0 = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        files = family.write_export(det, runtime, tmp)
        fields = family.cache_fields(det, runtime)
        # the input-shape policy as exported: "dynamic", or a static "HxW" (with "batch": 1)
        shapes = {k: fields[k] for k in ("shapes", "batch") if k in fields}
        manifest = {"format": 1, **family_fields(family, det, runtime), "family": det.info.family, "runtime": runtime,
                    "class_names": {str(k): v for k, v in det.info.class_names.items()}, "source": spec,
                    "params": det.info.params, "precision": "float32", **shapes,
                    "visiontool_version": __version__, "files": files}
        (tmp / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=1))
        describe(tmp, fields, files + [EXPORT_MANIFEST])
        _share(tmp)
        if target.exists():
            target.rmdir()  # empty, checked above
        os.replace(tmp, target)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        from visiontool.errors import VisionToolError

        if isinstance(exc, (VisionToolError, KeyboardInterrupt, MemoryError)) or not isinstance(exc, Exception):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise VisionToolError(f"visiontool export: exporting {spec} to {runtime} failed ({type(exc).__name__}: "
                              f"{first})") from exc
    if not quiet:
        info(f"exported {spec} to {target} ({runtime}) in {time.perf_counter() - t0:.1f} s")
    return target


def _open_vocabulary(spec: str, runtime: str) -> bool:
    """Whether ``spec`` is an open-vocabulary model with an exporter (OWL-ViT, OWLv2: it loads
    with ``text=True``). One without (:data:`NO_EXPORTER`): one line, exit 2, before it loads."""
    from visiontool.models import registry

    if registry.detector_module(spec).__name__ != registry.HF_DETECTION:
        return False
    try:
        from visiontool.models.hf_detection import ZERO_SHOT_TYPES
        from visiontool.models.hf_hub import load_config

        model_type = str(getattr(load_config(spec), "model_type", ""))
    except Exception:  # noqa: BLE001 - loading the model reports what is wrong with the spec
        return False
    if model_type in NO_EXPORTER:
        import importlib.util

        # gd_export (Grounding DINO, OmDet-Turbo) exports for --runtime, into the cache, not a directory
        cached = importlib.util.find_spec("visiontool.models.runtimes.gd_export") is not None
        how = (f"`visiontool detect --model {spec} --text ... --runtime {runtime}` (its export is cached)" if cached
               else f"`visiontool detect --model {spec} --text ...` (torch)")
        raise UsageError(f"visiontool export: '{spec}' ({model_type}) cannot be exported to a directory yet: of the "
                         f"open-vocabulary families visiontool export writes OWL-ViT and OWLv2 only; run it with {how}")
    return model_type in ZERO_SHOT_TYPES


def exporter_for(det):
    """The exporter module for a loaded torch adapter (UsageError for a family without one)."""
    from visiontool.models.hf_detection import HFDetector
    from visiontool.models.runtimes import hf_export, tv_export
    from visiontool.models.torchvision import TorchvisionDetector

    if type(det) is HFDetector:
        return hf_export
    if type(det) is TorchvisionDetector:
        return tv_export
    from visiontool.models.ultralytics import UltralyticsDetector

    if type(det) is UltralyticsDetector:
        from visiontool.models.runtimes import ul_export

        return ul_export
    from visiontool.models.runtimes import zs_export

    if zs_export.exportable(det):
        return zs_export
    from visiontool.models.runtimes import universal_export

    if universal_export.exportable(det):
        return universal_export
    from visiontool.models.runtimes import EXPORTABLE

    raise UsageError(f"visiontool export: no exporter for {det.info.backend} '{det.info.family}' models yet "
                     f"(exportable: {EXPORTABLE})")


def family_fields(family, det, runtime: str) -> dict:
    """The family's manifest fields (the DETR family's do not depend on the runtime)."""
    from visiontool.models.runtimes import hf_export

    return family.manifest_fields(det) if family is hf_export else family.manifest_fields(det, runtime)


def _share(directory: Path) -> None:
    """The modes a directory made by ``mkdir`` would have (``mkdtemp`` makes it 0700): a
    deployable artefact is read by other users and services."""
    umask = os.umask(0)
    os.umask(umask)
    directory.chmod(0o777 & ~umask)
