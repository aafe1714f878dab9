"""``visiontool export`` of Grounding DINO, MM-Grounding-DINO and OmDet-Turbo (:mod:`.gd_export`),
and ``--model DIR`` of what it writes (kind ``transformers-grounding``).

DIR holds one network per processed image size, each in a folder named ``HxW`` (the phrases are
inputs, so one directory serves every ``--text``), and the processor's ``save_pretrained``
files (image processor, tokenizer). Grounding DINO's processor keeps the aspect ratio, so the
sizes are those of ``--image-size`` (the sizes of the images it will see, before processing;
none given: one line, exit 2); OmDet-Turbo's resizes every image to one size: one folder,
no option needed. ``--model DIR`` needs ``--text``, holds no torch model, opens a size's
network when an image of that size first arrives and refuses an image processed to another
size (one line, exit 2)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from visiontool.models.hf_zero_shot import GROUNDING, OMDET, ZeroShotDetector, text_capabilities
from visiontool.models.runtimes import gd_export

KIND = gd_export.KIND
PROBE_IMAGE = (480, 640)  # (H, W): a fixed-size processor's one size is found from any image


def export_sizes(det: ZeroShotDetector, runtime: str, image_sizes) -> list[tuple[int, int]]:
    from visiontool.models.runtimes.hf_export import per_size_refusal
    from visiontool.models.runtimes.hf_shapes import processed_sizes

    def encode(im):
        return det.processor.image_processor(images=im, return_tensors="pt")

    if det.info.extra.get("fixed_size"):
        sizes = processed_sizes(encode, [PROBE_IMAGE])
        if image_sizes:
            from visiontool.render.console import warn

            h, w = sizes[0]
            warn(f"--image-size: {det.info.name}'s processor resizes every image to {h}x{w}; the option "
                 "changes nothing")
        return sizes
    if not image_sizes:
        raise per_size_refusal(det, runtime)
    return processed_sizes(encode, image_sizes)


def write_export(det: ZeroShotDetector, runtime: str, directory: Path, sizes: list) -> list[str]:
    """The checked network per size (:func:`.gd_export.build_into`), a folder each, and the
    processor's files; the file names written (the manifest is the caller's)."""
    from visiontool.models.runtimes.hf_export import with_processor_files
    from visiontool.models.runtimes.hf_shapes import write_per_size

    files = write_per_size(lambda folder, size: gd_export.build_into(det, runtime, folder, size), directory, sizes)
    return with_processor_files(files, det.processor, directory)


def cache_fields(det: ZeroShotDetector, runtime: str, size: tuple[int, int] | None = None) -> dict[str, Any]:
    return {**gd_export.cache_fields(det, runtime), **(gd_export.shape_fields(size) if size is not None else {})}


def manifest_fields(det: ZeroShotDetector, runtime: str) -> dict[str, Any]:
    from visiontool.models.runtimes.hf_export import preprocessing_fields

    inputs, outputs, dynamic = gd_export._names(det)
    return {"kind": KIND, "model_type": det.model_type, "processor_class": type(det.processor).__name__,
            "max_text_len": int(getattr(det.model.config, "max_text_len", 0) or 0),
            "preprocessing": preprocessing_fields(det.processor.image_processor), "inputs": inputs,
            "outputs": outputs, "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in dynamic.items()}}


def load_exported(directory: Path, manifest: dict, runtime: str) -> gd_export.RuntimeGroundingDetector:
    """The adapter for a directory written by :func:`write_export` (the processor from DIR,
    local files only; no torch model)."""
    import transformers

    from visiontool.errors import ModelLoadError
    from visiontool.models.runtimes.hf_export import exported_info
    from visiontool.models.runtimes.hf_shapes import per_size_dirs

    spec = str(manifest.get("_spec", directory))
    model_type = str(manifest.get("model_type"))
    cls = getattr(transformers, str(manifest.get("processor_class")), None)
    if model_type not in GROUNDING | OMDET or cls is None or not manifest.get("sizes"):
        raise ModelLoadError(f"cannot load export '{spec}': its manifest names model type '{model_type}', processor "
                             f"'{manifest.get('processor_class')}' and sizes {manifest.get('sizes')}; export the model "
                             "again with visiontool export")
    processor = cls.from_pretrained(str(directory), local_files_only=True)
    size = getattr(processor.image_processor, "size", None) or {}
    info = exported_info(directory, {**manifest, "class_names": {}}, runtime, text_capabilities(model_type),
                         paradigm="open-vocabulary", family=model_type,
                         fixed_size=bool(size) and ("height" in size and "width" in size))
    return gd_export.RuntimeGroundingDetector(None, runtime, info=replace(info, needs_nms=model_type in OMDET),
                                              processor=processor, model_type=model_type,
                                              max_text_len=int(manifest.get("max_text_len") or 0),
                                              exported=per_size_dirs(directory, manifest))
