"""Model specs -> adapters: the one table that knows which module serves which ``--model``.

A spec is what the user types:

* detect / compare / ``segment --detector``: a Hugging Face hub id or local directory
  (:mod:`~visiontool.models.hf_detection`), ``torchvision:NAME[:STATE_DICT.pth]``,
  ``ultralytics:NAME|PATH`` (extra ``[yolo]``), or a directory written by ``visiontool export``;
* segment: ``vit_b|vit_l|vit_h`` or a segment-anything ``.pth`` (:mod:`~visiontool.models.sam_official`),
  or a Hugging Face mask-generation model (SAM, SAM-HQ, SAM 2, EdgeTAM, SAM 3).

Every adapter module provides ``check(spec)`` (cheap: before anything loads, UsageError for
a bad spec), ``load(spec, device, precision, **options)`` and optionally
``peek_class_names(spec)`` (the class names without loading weights, to validate
``--classes`` early). Loaded adapters are cached per process by (spec, device, precision,
options); :func:`visiontool.models.loader.release` frees them.
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from visiontool.errors import UsageError
from visiontool.models import loader

# "prefix:" -> the adapter module for detection specs with that prefix
DETECTOR_PREFIXES = {
    "torchvision": "visiontool.models.torchvision",
    "ultralytics": "visiontool.models.ultralytics",
}
HF_DETECTION = "visiontool.models.hf_detection"
EXPORTED = "visiontool.models.runtimes.exported"
SAM_OFFICIAL = "visiontool.models.sam_official"
HF_SAM = "visiontool.models.hf_sam"
EXPORT_MANIFEST = "visiontool-export.json"
_PREFIX = re.compile(r"^([A-Za-z][\w\-]*):(.*)$")
DEFAULT_DETECTOR = "facebook/detr-resnet-50"
DEFAULT_TEXT_DETECTOR = "IDEA-Research/grounding-dino-tiny"


def _module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:  # an adapter this build does not have
        if exc.name == name:
            raise UsageError(f"this visiontool build has no backend module {name}") from exc
        raise


def split_prefix(spec: str) -> tuple[str | None, str]:
    """``"torchvision:fasterrcnn_resnet50_fpn"`` -> ("torchvision", "fasterrcnn_resnet50_fpn");
    a spec that exists as a path, or has no prefix, -> (None, spec)."""
    if os.path.exists(os.path.expanduser(spec)):
        return None, spec
    m = _PREFIX.match(spec)
    if m is None or "/" in m.group(1):
        return None, spec
    return m.group(1).lower(), m.group(2)


def detector_module(spec: str) -> ModuleType:
    """The adapter module serving detection spec ``spec`` (UsageError for an unknown prefix)."""
    if not spec or not spec.strip():
        raise UsageError("--model is empty")
    prefix, _ = split_prefix(spec)
    if prefix is not None:
        if prefix not in DETECTOR_PREFIXES:
            import difflib

            close = difflib.get_close_matches(prefix, list(DETECTOR_PREFIXES), n=1)
            hint = f"; did you mean '{close[0]}:'?" if close else ""
            known = ", ".join(f"{p}:" for p in DETECTOR_PREFIXES)
            raise UsageError(f"--model '{spec}': unknown backend '{prefix}:' (known: {known}, or a Hugging Face "
                             f"hub id or directory){hint}")
        return _module(DETECTOR_PREFIXES[prefix])
    if (Path(spec).expanduser() / EXPORT_MANIFEST).is_file():
        return _module(EXPORTED)
    return _module(HF_DETECTION)


def check_detector_spec(spec: str) -> None:
    """Everything about ``spec`` that can be checked without loading a model."""
    detector_module(spec).check(spec)


def peek_class_names(spec: str) -> dict[int, str] | None:
    """The detector's class names without its weights (None when only loading tells)."""
    mod = detector_module(spec)
    peek = getattr(mod, "peek_class_names", None)
    return peek(spec) if peek is not None else None


def warm(spec: str) -> None:
    """Import the libraries ``spec``'s adapter will use (compare measures memory after this)."""
    fn = getattr(detector_module(spec), "warm", None)
    if fn is not None:
        fn(spec)


def load_detector(spec: str, device: str = "auto", dtype: str = "auto",
                  warn: Callable[[str], None] | None = None, **options: Any):
    """A :class:`~visiontool.models.protocol.Detector` for ``spec`` on ``device``, loaded once
    per process (``options``: adapter options such as ``text=True`` or ``runtime=...``)."""
    from visiontool.device import resolve

    mod = detector_module(spec)
    mod.check(spec)
    dev, precision = resolve(device, dtype, warn)
    runtime = options.pop("runtime", None)
    if mod.__name__ == EXPORTED:  # the export directory names its runtime
        options["runtime"] = runtime
        runtime = None
    elif runtime is not None:
        from visiontool.models import runtimes

        runtime = runtimes.resolve(runtime, dev)
    key = ("detector", spec, dev, precision.name, runtime or "torch", tuple(sorted(options.items())))

    def build():
        det = mod.load(spec, dev, precision, **options)
        if runtime not in (None, "torch"):
            from visiontool.models import runtimes

            det = runtimes.accelerate(det, runtime, quiet=bool(options.get("quiet")))
        return det
    return loader.cached(key, build)


# ----------------------------------------------------------------------------- segmenters
def segmenter_module(spec: str) -> ModuleType:
    prefix, _ = split_prefix(spec)
    if prefix in DETECTOR_PREFIXES:
        raise UsageError(f"--model '{spec}' names a detector: `visiontool detect --model {spec}` runs it; segment "
                         "takes a SAM-family model, and a detector's boxes with --boxes-from "
                         "(detect … | segment --boxes-from -)")
    sam = _module(SAM_OFFICIAL)
    if sam.is_checkpoint_name(spec) or spec.lower().endswith((".pth", ".pt")) or Path(spec).expanduser().is_file():
        return sam
    return _module(HF_SAM)


def check_segmenter_spec(spec: str) -> None:
    segmenter_module(spec).check(spec)


def peek_segmenter_capabilities(spec: str | None) -> frozenset[str] | None:
    """What a segmenter can do (``points``, ``auto``, ``text``, ``video``, ...) without loading
    it: known for the official checkpoints and for local or already-cached transformers
    models; None when only loading tells (a hub model not downloaded yet)."""
    if spec is None or segmenter_module(spec).__name__ == SAM_OFFICIAL:
        return frozenset({"points", "boxes", "mask_input", "auto"})
    from visiontool.models import hf_sam_spec

    path = hf_sam_spec.cached_dir(spec)
    if path is None or not (path / "config.json").is_file():
        return None
    try:
        s = hf_sam_spec.read_spec(str(path), download=False)
    except Exception:  # noqa: BLE001 - the load reports it properly
        return None
    caps = set()
    if s.kind is not None:
        caps |= {"points", "boxes", "mask_input", "auto"}
    if s.text:
        caps.add("text")
    if s.video:
        caps.add("video")
    return frozenset(caps)


def load_segmenter(spec: str | None, device: str = "auto", dtype: str = "auto",
                   warn: Callable[[str], None] | None = None, **options: Any):
    """A :class:`~visiontool.models.protocol.Segmenter` (``spec`` None: the default SAM
    checkpoint for the device). ``options``: ``cache_dir``, ``use_cache``, ``quiet``, ``runtime``
    (the image encoder's: torch, or openvino/onnxruntime through a cached export, float32 on the CPU)."""
    from visiontool.device import resolve

    dev, precision = resolve(device, dtype, warn)
    if spec is None:
        spec = _module(SAM_OFFICIAL).default_checkpoint_name(dev.split(":")[0])
    mod = segmenter_module(spec)
    mod.check(spec)
    runtime = options.pop("runtime", None)
    if runtime is not None:
        from visiontool.models import runtimes

        runtime = runtimes.resolve(runtime, dev)
        if runtime != "torch":  # the image encoder only: sam_official and hf_sam export it (runtimes.sam_export)
            if precision.name != "float32":
                raise UsageError(f"--runtime {runtime} runs float32 exports only; pass --dtype float32 (was "
                                 f"{precision.name})")
            options["runtime"] = runtime
    return mod.load(spec, dev, precision, **options)
