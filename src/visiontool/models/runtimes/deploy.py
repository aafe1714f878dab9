"""``visiontool export``: a deployable directory that ``--model DIR`` loads again.

DIR gets what the family's exporter writes, ``visiontool-export.json`` (the manifest: format,
kind, family, runtime, class names, preprocessing, inputs/outputs, source spec, params,
precision, shapes, visiontool version, files, and the family's own fields) and ``entry.json``
(sizes and sha256 of every file, checked on load). Written into a temporary sibling directory
and renamed into place: DIR is complete or absent. Per family (``kind``):

* ``transformers-detection`` (:mod:`.hf_export`): the whole network (``model.xml``/``model.bin``
  or ``model.onnx``) and ``preprocessor_config.json``; a model exported once per processed image
  size (:func:`.hf_export.per_shape`: Deformable DETR, or RT-DETR-like families whose processor
  does not fix the size) gets one network per processed size of the ``--image-size`` images, each
  in a folder ``HxW`` (the manifest's ``sizes``; ``--model DIR`` refuses an image processed to
  another size, one line, exit 2); without ``--image-size`` it is refused, exit 2;
* ``torchvision-backbone`` (:mod:`.tv_export`): the backbone's export and ``heads.pt`` (the
  non-backbone state dict, rebuilt in torch from the manifest's ``torchvision.builder``);
* ``ultralytics`` (:mod:`.ul_export`): what Ultralytics' own exporter writes
  (``model_openvino_model/`` or ``model.onnx``), run again through Ultralytics' predict;
* ``transformers-zero-shot`` (:mod:`.zs_export`, OWL-ViT and OWLv2): the network with the
  phrases as an input, and the processor's files (``processor_config.json``, the tokenizer's);
  ``--model DIR`` then needs ``--text``;
* ``transformers-grounding`` (:mod:`.gd_deploy`: Grounding DINO, MM-Grounding-DINO, OmDet-Turbo):
  the same, with one network per processed size in a folder ``HxW`` each (Grounding DINO: the
  sizes of ``--image-size``; OmDet-Turbo's processor has one size);
* ``transformers-universal`` (:mod:`.universal_export`: Mask2Former, MaskFormer, OneFormer,
  EoMT): the network and the processor's config (OneFormer's also its class metadata file); per
  processed size as above when the processor does not resize to one size.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from visiontool.errors import UsageError
from visiontool.io.output import out_of_space, write_probe

RUNTIME_NAMES = {"openvino": "openvino", "onnx": "onnxruntime", "onnxruntime": "onnxruntime"}


def check_target(out_dir: str) -> Path:
    """``-o DIR``: absent or an empty directory, its parent writable (UsageError otherwise)."""
    target = Path(out_dir).expanduser()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        what = "is not empty" if target.is_dir() else "is a file"
        raise UsageError(f"-o '{out_dir}' {what}: export writes a directory; name a new (or empty) one")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"-o '{out_dir}': the directory '{parent}' does not exist")
    try:
        write_probe(parent)
    except OSError as exc:
        raise UsageError(f"-o '{out_dir}': cannot write in '{parent}' ({exc.strerror or exc})") from None
    return target


def parse_image_size(text: str) -> tuple[int, int]:
    """``HxW`` (height by width, in pixels) as ``(H, W)``; UsageError otherwise."""
    try:
        h, w = (int(x) for x in str(text).lower().replace("×", "x").split("x"))
    except ValueError:
        h = w = 0
    if not (0 < h <= 65536 and 0 < w <= 65536):
        raise UsageError(f"--image-size '{text}': expected HEIGHTxWIDTH in pixels, e.g. 1080x1920")
    return h, w


def check_runtime(runtime: str) -> str:
    name = RUNTIME_NAMES.get((runtime or "").strip().lower())
    if name is None:
        raise UsageError(f"--runtime '{runtime}': visiontool export writes openvino or onnx")
    return name


def export_model(spec: str, runtime: str, out_dir: str, quiet: bool = False, image_sizes=()) -> Path:
    """Export detection model ``spec`` for ``runtime`` into ``out_dir``; returns the directory.
    ``image_sizes`` (``--image-size``, ``(H, W)`` before processing): for a model exported once
    per processed size, the sizes whose networks DIR holds."""
    from visiontool import __version__
    from visiontool.models import registry
    from visiontool.models.runtimes import resolve
    from visiontool.models.runtimes.export_cache import describe
    from visiontool.models.registry import EXPORT_MANIFEST
    from visiontool.render.console import info

    runtime = check_runtime(runtime)
    image_sizes = list(dict.fromkeys(tuple(int(v) for v in s) for s in image_sizes))  # each once, in order
    target = check_target(out_dir)
    registry.check_detector_spec(spec)
    if registry.detector_module(spec).__name__ == registry.EXPORTED:
        raise UsageError(f"'{spec}' is already an export; export its source model instead")
    resolve(runtime, "cpu")  # the extra is installed
    text = _open_vocabulary(spec)  # an open-vocabulary model loads with its phrases as an input of the export
    det = registry.load_detector(spec, "cpu", "float32", **({"text": True} if text else {}))
    family = exporter_for(det)
    # a model exported once per processed size: the sizes of --image-size (none: refused, one line)
    sizes = family.export_sizes(det, runtime, image_sizes) if hasattr(family, "export_sizes") else None
    if image_sizes and sizes is None:
        from visiontool.render.console import warn

        warn(f"--image-size: {spec} is exported once for every image size; the option changes nothing")
    if not quiet:
        per = f" at processed sizes {', '.join(f'{h}x{w}' for h, w in sizes)}" if sizes else ""
        info(f"exporting {spec} to {runtime}{per} ...")
    t0 = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        if sizes:
            from visiontool.models.runtimes.hf_shapes import per_size_manifest

            files = family.write_export(det, runtime, tmp, sizes)
            fields = {**family.cache_fields(det, runtime, sizes[0]), **per_size_manifest(sizes, image_sizes)}
        else:
            files = family.write_export(det, runtime, tmp)
            fields = family.cache_fields(det, runtime)
        # the input-shape policy as exported: "dynamic", a static "HxW" (with "batch": 1), or
        # "per-shape" with the processed "sizes" (a folder each) and the "image_sizes" asked for
        shapes = {k: fields[k] for k in ("shapes", "batch", "sizes", "image_sizes") if k in fields}
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
        full = out_of_space(exc, tmp.parent) if isinstance(exc, Exception) else None
        shutil.rmtree(tmp, ignore_errors=True)
        from visiontool.errors import VisionToolError

        if full:
            raise VisionToolError(f"visiontool export: cannot write {target}: {full}") from exc
        if isinstance(exc, (VisionToolError, KeyboardInterrupt, MemoryError)) or not isinstance(exc, Exception):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise VisionToolError(f"visiontool export: exporting {spec} to {runtime} failed ({type(exc).__name__}: "
                              f"{first})") from exc
    if not quiet:
        info(f"exported {spec} to {target} ({runtime}) in {time.perf_counter() - t0:.1f} s")
    return target


def _open_vocabulary(spec: str) -> bool:
    """Whether ``spec`` is an open-vocabulary model (OWL-ViT, OWLv2, Grounding DINO,
    MM-Grounding-DINO, OmDet-Turbo: it loads with ``text=True``, its phrases an input of the export)."""
    from visiontool.models import registry

    if registry.detector_module(spec).__name__ != registry.HF_DETECTION:
        return False
    try:
        from visiontool.models.hf_detection import ZERO_SHOT_TYPES
        from visiontool.models.hf_hub import load_config

        model_type = str(getattr(load_config(spec), "model_type", ""))
    except Exception:  # noqa: BLE001 - loading the model reports what is wrong with the spec
        return False
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
    from visiontool.models.runtimes import gd_export

    if gd_export.exportable(det):
        from visiontool.models.runtimes import gd_deploy

        return gd_deploy
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
