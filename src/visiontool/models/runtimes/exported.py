"""``--model DIR`` where DIR was written by ``visiontool export``: the adapter for an export.

DIR holds ``visiontool-export.json`` (the manifest: format, kind, family, runtime, class
names, preprocessing, source spec, visiontool version), the exported network and what the
family's preprocessing needs, and ``entry.json`` (every file's size and sha256: a damaged
export is one line, exit 2). ``--runtime`` may be omitted, ``auto``, or the export's own
runtime; another runtime is one line.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from visiontool.errors import ModelLoadError, UsageError

MANIFEST_FORMAT = 1
KINDS = ("transformers-detection",)


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


def check(spec: str) -> None:
    read_manifest(spec)


def peek_class_names(spec: str) -> dict[int, str] | None:
    return {int(k): str(v) for k, v in (read_manifest(spec).get("class_names") or {}).items()}


def load(spec: str, device: str, precision, runtime: str | None = None, text: bool = False, **options: Any):
    from visiontool.models import runtimes
    from visiontool.models.runtimes.export_cache import problem

    manifest = read_manifest(spec)
    own = manifest["runtime"]
    if text:
        raise UsageError(f"--text needs an open-vocabulary model; the export '{spec}' has a fixed class list")
    if runtime is not None and runtimes.validate(runtime) not in ("auto", own):
        raise UsageError(f"--model '{spec}' is an {own} export; drop --runtime or pass --runtime {own} (was "
                         f"'{runtime}')")
    runtimes.resolve(own, device)  # the extra is there and the device is the CPU
    if precision.name != "float32":
        raise UsageError(f"--model '{spec}' is a float32 {own} export; pass --dtype float32 (was {precision.name})")
    directory = Path(spec).expanduser()
    why = problem(directory, None)
    if why is not None:
        raise ModelLoadError(f"cannot load export '{spec}': {why}; export the model again with visiontool export")
    manifest = {**manifest, "_spec": spec}
    from visiontool.models.runtimes import hf_export

    return hf_export.load_exported(directory, manifest, own)
