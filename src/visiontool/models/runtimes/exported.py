"""``--model DIR`` where DIR was written by ``visiontool export``: the adapter for an export.

DIR holds ``visiontool-export.json`` (the manifest: format, kind, family, runtime, class
names, preprocessing, source spec, visiontool version), the exported network and what the
family needs around it, and ``entry.json`` (every file's size and sha256: a damaged export is
one line, exit 1; a manifest of another format or kind, exit 2). ``--runtime`` may be
omitted, ``auto``, or the export's own runtime; another runtime is one line. The source model
is never needed. Kinds: ``transformers-detection`` (:func:`.hf_export.load_exported`),
``torchvision-backbone`` (:func:`.tv_export.load_exported`: the heads rebuilt in torch),
``ultralytics`` (:func:`.ul_export.load_exported`: Ultralytics' own predict, extra ``[yolo]``)
``transformers-zero-shot`` (:func:`.zs_export.load_exported`: OWL-ViT / OWLv2, whose
phrases are an input: it needs ``--text``, and has no class names of its own),
``transformers-grounding`` (:func:`.gd_deploy.load_exported`: Grounding DINO,
MM-Grounding-DINO, OmDet-Turbo; ``--text`` as OWL) and ``transformers-universal``
(:func:`.universal_export.load_exported`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visiontool.errors import ModelLoadError, UsageError, VisionToolError

MANIFEST_FORMAT = 1
ZERO_SHOT_KIND = "transformers-zero-shot"  # zs_export.KIND (not imported: it imports transformers' modules)
GROUNDING_KIND = "transformers-grounding"  # gd_export.KIND: Grounding DINO, MM-Grounding-DINO, OmDet-Turbo
OPEN_VOCABULARY = (ZERO_SHOT_KIND, GROUNDING_KIND)  # the phrases are an input: --model DIR needs --text
UNIVERSAL_KIND = "transformers-universal"  # universal_export.KIND: Mask2Former, MaskFormer, OneFormer, EoMT
KINDS = ("transformers-detection", "torchvision-backbone", "ultralytics", *OPEN_VOCABULARY, UNIVERSAL_KIND)


def read_manifest(spec: str) -> dict:
    from visiontool.models.registry import EXPORT_MANIFEST

    path = Path(spec).expanduser() / EXPORT_MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"--model '{spec}': {EXPORT_MANIFEST} is unreadable ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UsageError(f"--model '{spec}': {EXPORT_MANIFEST} has another format (expected format "
                         f"{MANIFEST_FORMAT}); export the model again with visiontool export")
    if manifest.get("kind") not in KINDS or manifest.get("runtime") not in ("openvino", "onnxruntime"):
        raise UsageError(f"--model '{spec}': {EXPORT_MANIFEST} names kind '{manifest.get('kind')}' and runtime "
                         f"'{manifest.get('runtime')}', which this visiontool cannot run")
    return manifest


def check_extra(spec: str, manifest: dict) -> None:
    """An Ultralytics export runs through Ultralytics: the extra must be installed (exit 2)."""
    if manifest.get("kind") == "ultralytics":
        from visiontool.errors import MissingExtraError
        from visiontool.models.ultralytics import is_installed

        if not is_installed():
            raise MissingExtraError(f"--model '{spec}'", "yolo", "ultralytics")


def check_runtime(spec: str, manifest: dict, runtime: str | None) -> None:
    """``--runtime`` with an export: omitted, ``auto`` or the export's own (UsageError otherwise)."""
    from visiontool.models import runtimes

    own = manifest["runtime"]
    if runtime is not None and runtimes.validate(runtime) not in ("auto", own):
        raise UsageError(f"--model '{spec}' is an {own} export; drop --runtime or pass --runtime {own} (was "
                         f"'{runtime}')")


def check(spec: str) -> None:
    check_extra(spec, read_manifest(spec))


def peek_class_names(spec: str) -> dict[int, str] | None:
    """The export's class names; None for an open-vocabulary export (loading it says --text is needed)."""
    manifest = read_manifest(spec)
    if manifest["kind"] in OPEN_VOCABULARY:
        return None
    return {int(k): str(v) for k, v in (manifest.get("class_names") or {}).items()}


def check_text(spec: str, manifest: dict, text: bool) -> None:
    """``--text`` is needed by an open-vocabulary export and refused by the others (exit 2)."""
    if manifest["kind"] in OPEN_VOCABULARY:
        if not text:
            raise UsageError(f"--model '{spec}' is an open-vocabulary {manifest.get('family', '')} export: say what "
                             "to find with --text \"phrase, phrase\"")
    elif text:
        raise UsageError(f"--text needs an open-vocabulary model; the export '{spec}' has a fixed class list")


def load(spec: str, device: str, precision, runtime: str | None = None, text: bool = False, **options: Any):
    from visiontool.models import runtimes
    from visiontool.models.runtimes.export_cache import problem

    manifest = read_manifest(spec)
    own = manifest["runtime"]
    check_text(spec, manifest, text)
    check_runtime(spec, manifest, runtime)
    runtimes.resolve(own, device)  # the extra is there and the device is the CPU
    if precision.name != "float32":
        raise UsageError(f"--model '{spec}' is a float32 {own} export; pass --dtype float32 (was {precision.name})")
    directory = Path(spec).expanduser()
    why = problem(directory, None)
    if why is not None:
        raise ModelLoadError(f"cannot load export '{spec}': {why}; export the model again with visiontool export")
    manifest = {**manifest, "_spec": spec}
    kind = manifest["kind"]
    check_extra(spec, manifest)
    try:
        if kind == "torchvision-backbone":
            from visiontool.models.runtimes import tv_export

            return tv_export.load_exported(directory, manifest, own, precision)
        if kind == "ultralytics":
            from visiontool.models.runtimes import ul_export

            return ul_export.load_exported(directory, manifest, own)
        if kind == UNIVERSAL_KIND:
            from visiontool.models.runtimes import universal_export

            return universal_export.load_exported(directory, manifest, own)
        if kind == ZERO_SHOT_KIND:
            from visiontool.models.runtimes import zs_export

            return zs_export.load_exported(directory, manifest, own)
        if kind == GROUNDING_KIND:
            from visiontool.models.runtimes import gd_deploy

            return gd_deploy.load_exported(directory, manifest, own)
        from visiontool.models.runtimes import hf_export

        return hf_export.load_exported(directory, manifest, own)
    except (VisionToolError, KeyboardInterrupt, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a file the runtime or torch cannot read: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise ModelLoadError(f"cannot load export '{spec}': {type(exc).__name__}: {first}; export the model again "
                             "with visiontool export") from exc
