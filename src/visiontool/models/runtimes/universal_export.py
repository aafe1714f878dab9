"""Mask2Former, MaskFormer, OneFormer and EoMT (:mod:`visiontool.models.hf_universal`) in OpenVINO / ONNX Runtime.

Exported: the model's forward ``pixel_values (B, 3, H, W) float32`` (OneFormer also
``task_inputs (B, T) int64``, the tokenised task prompt its processor writes) ``->
class_queries_logits (B, Q, C + 1), masks_queries_logits (B, Q, H/4, W/4)``: the two outputs
transformers' ``post_process_instance_segmentation`` reads, for the four families. Everything
else is the torch adapter's own code: the processor, the grouping by processed shape and the
post-processing (:class:`RuntimeUniversalSegmenter` swaps only
:meth:`UniversalSegmenter.network`). The pixel mask is not an input: none of the four models
reads it (each replaces it with ones).

Shapes: the batch is dynamic; height and width are static. A dynamic-size export does not
reproduce torch at other sizes: the Swin backbones (Mask2Former, MaskFormer, OneFormer) pad to
their window size and merge patches with Python-level shape arithmetic that the tracer turns
into constants (measured: ONNX Runtime fails in a ``Reshape``/``Concat`` of the Swin encoder at
another size, or runs and is 1.0 off), and EoMT's position embeddings are tied to one image
size. So a processor that resizes every image to one size (:func:`fixed_size`: EoMT's, or any
with a fixed ``height``/``width``) gets one export, made when the model loads; any other gets one
static-size export per processed ``(H, W)``, made the first time a batch of that size reaches the
network (as :mod:`.hf_shapes` does for Deformable DETR), each cached.

Equality: Mask2Former's and OneFormer's decoders let each query attend only where its previous
mask logit is positive (``sigmoid < 0.5``): a decision on a float. A logit within float32 noise
(~1e-6) of 0 may fall the other way in an engine; measured once, on the tiny OneFormer in
OpenVINO and one smooth photo (a logit of -9.6e-7 in torch, +3e-7 in OpenVINO; with a 4x6
attention map one flipped position moved the class logits by 0.23, a score by 0.002). No other
photo, grain or family showed it, and the export check cannot rule such inputs out.

Check: before it is cached, each export is run on another input (random pixels, a batch of 2,
against the traced batch of 1 of zeros) and compared with torch (:func:`check_export`: every
output within 1e-3, or 1e-5 of its magnitude); a mismatch is one line, exit 2, nothing cached.
Cache key fields: the weights' hash, family, exporter version, runtime and its version, torch,
transformers, precision, ``shapes: "HxW"``, ``batch: "dynamic"`` and ``policy`` (``fixed-size``
or ``per-shape``).

``visiontool export`` (:func:`write_export`, kind ``transformers-universal``) writes the network
(with a processor that keeps the aspect ratio, one per processed size of ``--image-size``, a
folder each; without the option: one line, exit 2) and the processor's files; OneFormer's DIR
also carries its class metadata file (its processor reads it when it loads, from the hub unless
local: ``--model DIR`` points ``repo_path`` at DIR). ``--model DIR`` loads it
(:func:`load_exported`).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from visiontool.errors import UsageError
from visiontool.models.hf_universal import UniversalSegmenter
from visiontool.models.protocol import ModelInfo
from visiontool.models.runtimes.hf_shapes import PerSizeEngines, per_shape_info

EXPORTER_VERSION = 1
KIND = "transformers-universal"
FAMILIES = frozenset({"mask2former", "maskformer", "oneformer", "eomt"})  # model types
OUTPUTS = ["class_queries_logits", "masks_queries_logits"]
# images of two aspect ratios: a processor giving both one tensor shape fixes the size
PROBE_IMAGES = ((640, 480), (360, 640))


def exportable(det: Any) -> bool:
    return type(det) is UniversalSegmenter and det.model_type in FAMILIES


def inputs_of(model_type: str) -> list[str]:
    return ["pixel_values", "task_inputs"] if model_type == "oneformer" else ["pixel_values"]


def _net(model, model_type: str):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, task_inputs=None):
            extra = {} if task_inputs is None else {"task_inputs": task_inputs}
            out = self.model(pixel_values=pixel_values, **extra)
            return out.class_queries_logits, out.masks_queries_logits

    return Net().eval()


def fixed_size(det: UniversalSegmenter) -> tuple[int, int] | None:
    """The processed ``(H, W)`` when the processor gives images of other aspect ratios one shape, else None."""
    from PIL import Image

    shapes = {tuple(int(s) for s in det.encode([Image.new("RGB", wh)])["pixel_values"].shape[2:])
              for wh in PROBE_IMAGES}
    return shapes.pop() if len(shapes) == 1 else None  # type: ignore[return-value]


def example(det: UniversalSegmenter, size: tuple[int, int], batch: int, seed: int | None = None) -> tuple:
    """The network's inputs at ``size`` for ``batch`` images: zeros (the traced example) or
    random pixels with ``seed``; OneFormer's task prompt as its processor writes it."""
    import torch
    from PIL import Image

    shape = (batch, 3, int(size[0]), int(size[1]))
    pixels = torch.zeros(shape) if seed is None else torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    if det.model_type != "oneformer":
        return (pixels,)
    task = det.encode([Image.new("RGB", (64, 48))])["task_inputs"].long()
    return pixels, task.repeat(batch, 1)


def build_into(det: UniversalSegmenter, runtime: str, directory: Path, size: tuple[int, int]) -> list[str]:
    """Export ``det``'s network at processed size ``size`` (batch dynamic) into ``directory`` and
    check it against torch on a batch of 2 other inputs (:func:`check_export`); the file names written."""
    import torch

    from visiontool.models.runtimes.engines import export_network

    names = inputs_of(det.model_type)
    net = _net(det.model, det.model_type)
    with torch.inference_mode(False):  # a per-shape export starts inside the adapter's inference_mode
        inputs = example(det, size, 1)
        module = _traced(net, inputs) if runtime == "openvino" else net
        files = export_network(module, inputs, runtime, directory, names, OUTPUTS, {n: {0: "batch"} for n in names})
        check_export(det, net, runtime, directory, size)
    return files


def _traced(net, example: tuple):
    """``net`` traced for OpenVINO's converter without the tracer's own re-run check (OpenVINO
    traces with it: 2.2 s of the tiny Mask2Former's 5.7 s export); :func:`check_export` compares
    the export with torch anyway."""
    import warnings

    import torch

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-constant Python branches
        return torch.jit.trace(net, example, check_trace=False, strict=False)


TOLERANCE = 1e-3  # the check's bound on every output, absolute ...
RELATIVE = 1e-5  # ... or relative to the output's largest magnitude (trained models' mask logits reach the hundreds)


def check_export(det: UniversalSegmenter, net, runtime: str, directory: Path, size: tuple[int, int]) -> None:
    """The export in ``directory`` against torch on a batch of two images of random pixels (the
    trace saw one of zeros): every output within :data:`TOLERANCE` (or :data:`RELATIVE` of its
    magnitude); else one line, exit 2. Measured on the tiny models: 5e-6 at most.

    Not :func:`.zs_export.mismatch`'s float64 fallback: EoMT in float64 is not the float32
    network (its class logits 0.72 apart on the tiny model), so that fallback let an engine 0.01
    off pass."""
    import numpy as np
    import torch

    from visiontool.models.runtimes.engines import open_engine

    probe = example(det, size, 2, seed=0)
    got = open_engine(runtime, directory)([t.numpy() for t in probe])
    with torch.inference_mode():
        want = [t.float().numpy() for t in net(*probe)]
    for name, w, g in zip(OUTPUTS, want, got):
        if w.shape != g.shape:
            problem = f"{name} has shape {g.shape}, torch's {w.shape}"
        else:
            worst = float(np.abs(w - g).max())
            if worst <= max(TOLERANCE, RELATIVE * float(np.abs(w).max())):
                continue
            problem = f"{name} differs by up to {worst:.3g}"
        raise UsageError(f"--runtime {runtime}: the exported {det.info.family} network does not reproduce torch on "
                         f"2 images of {size[0]}x{size[1]} ({problem}); use --runtime torch")


def cache_fields(det: UniversalSegmenter, runtime: str, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The export's cache key fields; ``size`` None: the processor's fixed size (``policy: fixed-size``)."""
    import torch
    import transformers

    from visiontool.models.runtimes.engines import runtime_version
    from visiontool.models.runtimes.export_cache import state_hash

    policy = "per-shape" if size is not None else "fixed-size"
    size = size or fixed_size(det)
    if size is None:
        raise UsageError(f"{det.info.name}: its processor does not resize to one size; it is exported per size")
    return {"kind": KIND, "family": det.info.family, "exporter": EXPORTER_VERSION, "runtime": runtime,
            "runtime_version": runtime_version(runtime), "torch": torch.__version__,
            "transformers": transformers.__version__, "precision": "float32",
            "shapes": f"{int(size[0])}x{int(size[1])}", "batch": "dynamic", "policy": policy,
            "weights": state_hash(det.model)}


def run_engine(engine, batch: dict, names: list[str]) -> SimpleNamespace:
    import torch

    outs = engine([batch[n].cpu().numpy() for n in names])
    return SimpleNamespace(**{k: torch.from_numpy(v) for k, v in zip(OUTPUTS, outs)})


class RuntimeUniversalSegmenter(PerSizeEngines, UniversalSegmenter):
    """A UniversalSegmenter whose network runs in exported engines, one per processed size
    (:class:`.hf_shapes.PerSizeEngines`).

    With a fixed-size processor the one engine is opened at load and no torch model is held.
    Otherwise (``source`` given) an engine is exported or found in the cache when a size is
    first met; the torch adapter stays referenced for that, and every engine opened holds its
    own copy of the weights (one per size met)."""

    def __init__(self, info: ModelInfo, processor, model_type: str, engines: dict, source=None, runtime: str = "",
                 quiet: bool = False, exported: dict | None = None):
        from visiontool.device import Precision

        super().__init__(info, None, processor, model_type, Precision("float32", "cpu"))
        self.names = inputs_of(model_type)
        self.accepts = set(self.names)
        self.init_sizes(source, runtime, cache_fields(source, runtime, (0, 0)) if source is not None else None,
                        engines, quiet, exported)

    def build(self, directory, size: tuple[int, int]) -> list[str]:
        return build_into(self.source, self.runtime, directory, size)

    def size_fields(self, size: tuple[int, int]) -> dict[str, Any]:
        return {"shapes": f"{size[0]}x{size[1]}"}

    def network(self, batch: dict):
        size = tuple(int(s) for s in batch["pixel_values"].shape[2:])
        return run_engine(self.engine_for(size), batch, self.names)


def accelerate(det: UniversalSegmenter, runtime: str, quiet: bool = False) -> RuntimeUniversalSegmenter:
    """``det`` with its network exported (cached) and running in ``runtime``: at load for a
    fixed-size processor, else per processed size as sizes are met."""
    from visiontool.models.runtimes.engines import open_engine
    from visiontool.models.runtimes.export_cache import get_or_build
    from visiontool.models.runtimes.hf_export import runtime_info

    size = fixed_size(det)
    if size is None:
        return RuntimeUniversalSegmenter(per_shape_info(det.info, runtime), det.processor, det.model_type, {},
                                         source=det, runtime=runtime, quiet=quiet)
    engine, where = get_or_build(cache_fields(det, runtime), lambda d: build_into(det, runtime, d, size),
                                 lambda d: open_engine(runtime, d), f"{det.info.name} to {runtime}", quiet=quiet)
    return RuntimeUniversalSegmenter(runtime_info(det.info, runtime, export=str(where)), det.processor,
                                     det.model_type, {size: engine}, runtime=runtime)


# ``visiontool export`` (:mod:`.deploy`) and ``--model DIR`` (:mod:`.exported`)

def class_info(det: UniversalSegmenter) -> tuple[str, dict] | None:
    """OneFormer's class metadata file (its processor reads ``repo_path``/``class_info_file``
    when it loads, from the hub unless local): the file name and its content, for the export
    directory to carry (None for the other families, or a processor without one)."""
    image_processor = det.image_processor
    name = getattr(image_processor, "class_info_file", None)
    if det.model_type != "oneformer" or not name:
        return None
    from transformers.models.oneformer.image_processing_oneformer import load_metadata

    return str(name), load_metadata(image_processor.repo_path, name)  # the local file or the hub's cached copy


def export_sizes(det: UniversalSegmenter, runtime: str, image_sizes) -> list[tuple[int, int]] | None:
    """The processed sizes to export for ``image_sizes`` (``--image-size``) when the processor
    does not resize to one size (none given: one line, exit 2); None for a fixed-size processor."""
    if fixed_size(det) is not None:
        return None
    if not image_sizes:
        from visiontool.models.runtimes.hf_export import per_size_refusal

        raise per_size_refusal(det, runtime)
    from visiontool.models.runtimes.hf_shapes import processed_sizes

    return processed_sizes(lambda im: det.encode([im]), image_sizes)


def write_export(det: UniversalSegmenter, runtime: str, directory: Path, sizes: list | None = None) -> list[str]:
    """A deployable export in ``directory``: the network (with ``sizes``: one per processed
    size, each in a folder named ``HxW``) and the processor's config."""
    from visiontool.models.runtimes.hf_export import with_processor_files
    from visiontool.models.runtimes.hf_shapes import write_per_size

    if sizes:
        files = write_per_size(lambda folder, size: build_into(det, runtime, folder, size), directory, sizes)
    else:
        files = build_into(det, runtime, directory, fixed_size(det))  # type: ignore[arg-type]
    info = class_info(det)
    if info is not None:  # OneFormer: DIR carries its class metadata; loading points repo_path at DIR
        target = Path(directory) / info[0]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(info[1]))
    return with_processor_files(files, det.processor, directory)


def manifest_fields(det: UniversalSegmenter, runtime: str) -> dict[str, Any]:
    from visiontool.models.runtimes.hf_export import preprocessing_fields

    return {"kind": KIND, "model_type": det.model_type, "preprocessing": preprocessing_fields(det.image_processor),
            "inputs": inputs_of(det.model_type), "outputs": OUTPUTS}


def load_exported(directory: Path, manifest: dict, runtime: str) -> RuntimeUniversalSegmenter:
    """The adapter for an export directory written by :func:`write_export`."""
    from transformers import AutoImageProcessor, AutoProcessor

    from visiontool.models.hf_detection import load_processor
    from visiontool.models.runtimes.engines import open_engine
    from visiontool.models.runtimes.hf_export import exported_info

    model_type = str(manifest.get("model_type", ""))
    if model_type == "oneformer":  # its class metadata is in DIR (write_export), not at its source
        processor = load_processor(AutoProcessor, str(directory), repo_path=str(directory))
    else:
        processor = load_processor(AutoImageProcessor, str(directory))
    info = exported_info(directory, manifest, runtime, frozenset({"masks", "batch"}))
    if manifest.get("sizes"):  # one network per processed size, each opened when first met
        from visiontool.models.runtimes.hf_shapes import per_size_dirs

        return RuntimeUniversalSegmenter(info, processor, model_type, {}, runtime=runtime,
                                         exported=per_size_dirs(directory, manifest))
    h, w = (int(s) for s in str(manifest.get("shapes", "")).split("x"))
    return RuntimeUniversalSegmenter(info, processor, model_type, {(h, w): open_engine(runtime, directory)},
                                     runtime=runtime)
