"""The transformers DETR family (:mod:`visiontool.models.hf_detection`) in OpenVINO / ONNX Runtime.

Exported: the model's forward ``pixel_values (B, 3, H, W) float32 -> logits (B, Q, C),
pred_boxes (B, Q, 4) cxcywh in [0, 1]``, with batch, height and width dynamic. Everything else
is the torch adapter's own code: the image processor (resize, normalise), the batching by
processed shape, ``post_process_object_detection`` — :class:`RuntimeHFDetector` swaps only
the network call (:meth:`HFDetector.network`).

Shapes: one dynamic-shape export serves every image size (the processor's resize gives each
photo its own shape). Per-shape-bucket exports were measured against it — see docs/runtimes.md.
Some families' traced graphs fix what they compute from the image size (:data:`SHAPE_BOUND`):
RT-DETR, RT-DETR v2, D-FINE and DEIMv2 also trace their batch size into ``view``/``reshape``
constants and their anchors from the image size; Deformable DETR its feature maps' sizes and
level start indices. With a processor that resizes to one fixed size the first four are
exported static, ``(1, 3, H, W)``, and the engine is called once per image (``fixed_batch``).
Otherwise (:func:`per_shape`: Deformable DETR, or one of the four whose processor does not fix
the size) one static ``(1, 3, H, W)`` network is exported per processed image size, lazily, when
that size is first met (:mod:`.hf_shapes`).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from visiontool.models.hf_detection import HFDetector
from visiontool.models.protocol import ModelInfo

EXPORTER_VERSION = 1
KIND = "transformers-detection"
INPUTS, OUTPUTS = ["pixel_values"], ["logits", "pred_boxes"]
DYNAMIC = {"pixel_values": {0: "batch", 2: "height", 3: "width"}}
EXAMPLE_SHAPE = (1, 3, 256, 320)  # the traced example; every axis but channels stays dynamic
# families whose traced graph fixes the batch (and the anchors): exported static at batch 1
BATCH_ONE = frozenset({"rt_detr", "rt_detr_v2", "d_fine", "deimv2"})
# families whose traced graph fixes the image size: without a fixed-size processor, one static
# export per processed size (Deformable DETR: the feature maps' sizes and level start indices)
SHAPE_BOUND = BATCH_ONE | {"deformable_detr"}


def _net(model):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values):
            out = self.model(pixel_values=pixel_values)
            return out.logits, out.pred_boxes

    return Net().eval()


def example_shape(processor) -> tuple[tuple[int, int, int, int], bool]:
    """(the traced example's shape, whether the processor resizes every image to one fixed size)."""
    size = getattr(processor, "size", None)
    if size is not None and not isinstance(size, dict):  # transformers' SizeDict
        size = {k: getattr(size, k, None) for k in ("height", "width")}
    h, w = (size or {}).get("height"), (size or {}).get("width")
    if getattr(processor, "do_resize", True) and h and w:
        return (1, 3, int(h), int(w)), True
    return EXAMPLE_SHAPE, False


def batch_one(det: HFDetector) -> bool:
    """Whether ``det`` is exported static at batch 1 (a :data:`BATCH_ONE` family whose processor
    resizes to one fixed size)."""
    return det.info.family in BATCH_ONE and example_shape(det.processor)[1]


def per_shape(det: HFDetector) -> bool:
    """Whether ``det`` is exported once per processed image size (a :data:`SHAPE_BOUND` family
    whose processor does not resize to one fixed size; :mod:`.hf_shapes`)."""
    return det.info.family in SHAPE_BOUND and not example_shape(det.processor)[1]


def build_into(det: HFDetector, runtime: str, directory: Path, size: tuple[int, int] | None = None) -> list[str]:
    """Export ``det``'s network into ``directory`` for ``runtime``; the file names written.
    ``size`` (H, W): a static ``(1, 3, H, W)`` export (one per-shape export, :mod:`.hf_shapes`).

    The export is then checked against torch on inputs of other shapes than the traced one (a
    batch of 2; other heights and widths unless the processor fixes the size; a static export:
    other pixels at its one shape): a graph that bakes in what it computes from the image size
    fails it and is refused, never cached — why the :data:`SHAPE_BOUND` families are exported
    static, at a fixed size or per shape."""
    import contextlib

    import torch

    from visiontool.models.deformable_attention import original_forward
    from visiontool.models.runtimes.engines import export_network, onnx_linspace_keeps_dtype

    shape, fixed = example_shape(det.processor)
    one = batch_one(det)
    if size is not None:
        shape, fixed, one = (1, 3, *map(int, size)), True, True
    net = _net(det.model)
    # the graph transformers wrote, not the CPU gather path; a static ONNX graph keeps linspace's dtype
    with original_forward(det.model), onnx_linspace_keeps_dtype() if one else contextlib.nullcontext():
        files = export_network(net, (torch.zeros(shape),), runtime, directory, INPUTS, OUTPUTS, {} if one else DYNAMIC)
    check_export(net, runtime, directory, shape, fixed, det.info.family, one)
    return files


def check_export(net, runtime: str, directory: Path, shape, fixed: bool, family: str, one: bool = False) -> None:
    import torch

    from visiontool.errors import UsageError
    from visiontool.models.runtimes.engines import open_engine

    engine = open_engine(runtime, directory)
    _, c, h, w = shape
    probes = [(1, c, h, w)] if one else [(2, c, h, w)] if fixed else [(2, c, h - 64, w + 32), (1, c, h + 32, w - 96)]
    gen = torch.Generator().manual_seed(0)
    for probe in probes:
        x = torch.randn(probe, generator=gen)
        with torch.inference_mode():
            want = [t.float().numpy() for t in net(x)]
        got = engine([x.numpy()])
        worst = query_difference(want, got, TOLERANCE)
        if worst > TOLERANCE:
            raise UsageError(f"--runtime {runtime}: the exported {family} network does not reproduce torch on a "
                             f"{probe[2]}x{probe[3]} input (max difference {worst:.3g}, queries matched in any "
                             "order): its traced graph fixes shapes it computes from the image, so it cannot be "
                             "exported yet; use --runtime torch")


TOLERANCE = 1e-3  # the export check's bound on every output


def query_difference(want: list, got: list, tol: float) -> float:
    """The largest difference between torch's ``(B, Q, ...)`` outputs and the engine's, each
    query of an image matched to one of the engine's: queries that differ by more than ``tol``
    in place may be a permutation of each other (two-stage detectors rank their encoder's
    proposals with a top-k, and proposals whose scores tie within float rounding swap places;
    the detections are the same set). Infinite when they are not a permutation."""
    import numpy as np

    a = np.concatenate([w.reshape(w.shape[0], w.shape[1], -1) for w in want], -1)
    b = np.concatenate([g.reshape(g.shape[0], g.shape[1], -1) for g in got], -1)
    if a.shape != b.shape:
        return float("inf")
    in_place = np.abs(a - b).max(-1)  # (B, Q)
    worst = 0.0
    for i in range(len(a)):
        off = np.flatnonzero(in_place[i] > tol)
        if len(off) == 0:
            worst = max(worst, float(in_place[i].max(initial=0.0)))
            continue
        d = np.abs(a[i, off][:, None] - b[i, off][None]).max(-1)  # the off queries against each other
        j = d.argmin(1)
        if len(set(j.tolist())) != len(off):
            return float("inf")
        rest = np.delete(in_place[i], off)
        worst = max(worst, float(d[np.arange(len(off)), j].max()), float(rest.max(initial=0.0)))
    return worst


def cache_fields(det: HFDetector, runtime: str, size: tuple[int, int] | None = None) -> dict[str, Any]:
    """The export's cache key fields (a per-shape export, ``size``, adds :func:`shape_fields`)."""
    import torch
    import transformers

    from visiontool.models.runtimes.engines import runtime_version
    from visiontool.models.runtimes.export_cache import state_hash

    shape, fixed = example_shape(det.processor)
    return {"kind": KIND, "family": det.info.family, "exporter": EXPORTER_VERSION, "runtime": runtime,
            "runtime_version": runtime_version(runtime), "torch": torch.__version__,
            "transformers": transformers.__version__, "precision": "float32",
            "shapes": "x".join(map(str, shape[2:])) if fixed else "dynamic",
            "weights": state_hash(det.model), **({"batch": 1} if batch_one(det) else {}),
            **(shape_fields(size) if size is not None else {})}


def shape_fields(size: tuple[int, int]) -> dict[str, Any]:
    """What a per-shape export adds to (or overrides in) the cache key fields."""
    return {"shapes": f"{int(size[0])}x{int(size[1])}", "batch": 1, "policy": "per-shape"}


class RuntimeHFDetector(HFDetector):
    """An HFDetector whose network runs in an exported engine (no torch model held)."""

    def __init__(self, info: ModelInfo, processor, engine):
        super().__init__(info, None, processor)
        self.engine = engine
        from visiontool.device import Precision

        self.precision = Precision("float32", "cpu")

    def network(self, pixel_values):
        return run_engine(self.engine, pixel_values)


def run_engine(engine, pixel_values) -> SimpleNamespace:
    """``engine`` on a ``(B, 3, H, W)`` batch: ``logits`` and ``pred_boxes`` as torch tensors (a
    batch-1 export is called image by image)."""
    import numpy as np
    import torch

    x = pixel_values.cpu().numpy()
    if getattr(engine, "fixed_batch", None) == 1 and len(x) > 1:  # a batch-1 export: image by image
        parts = [engine([x[i:i + 1]]) for i in range(len(x))]
        logits, boxes = (np.concatenate([p[k] for p in parts]) for k in (0, 1))
    else:
        logits, boxes = engine([x])
    return SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))


def runtime_info(info: ModelInfo, runtime: str, **extra: Any) -> ModelInfo:
    from dataclasses import replace

    kept = {k: v for k, v in info.extra.items() if k != "channels_last"}
    # the engines keep their own threads (and per-shape exports are built as sizes are met)
    return replace(info, backend=f"{info.backend}+{runtime}", runtime=runtime, device="cpu", dtype="float32",
                   capabilities=info.capabilities - {"concurrent"}, extra={**kept, **extra})


def accelerate(det: HFDetector, runtime: str, quiet: bool = False) -> RuntimeHFDetector:
    """``det`` with its network exported (cached) and running in ``runtime``; a :func:`per_shape`
    model exports nothing yet (:class:`.hf_shapes.PerShapeHFDetector`: one export per size met)."""
    from visiontool.models.runtimes.engines import open_engine
    from visiontool.models.runtimes.export_cache import get_or_build

    if per_shape(det):
        from visiontool.models.runtimes.hf_shapes import PerShapeHFDetector

        return PerShapeHFDetector(det, runtime, quiet=quiet)
    fields = cache_fields(det, runtime)
    engine, where = get_or_build(fields, lambda d: build_into(det, runtime, d), lambda d: open_engine(runtime, d),
                                 f"{det.info.name} to {runtime}", quiet=quiet)
    return RuntimeHFDetector(runtime_info(det.info, runtime, export=str(where)), det.processor, engine)


def export_sizes(det: HFDetector, runtime: str, image_sizes) -> list[tuple[int, int]] | None:
    """``visiontool export``'s processed sizes for a :func:`per_shape` model: those of
    ``image_sizes`` (``--image-size``; none given: one line, exit 2, as no directory can hold
    every size its processor may produce); None for a model exported once for every size."""
    if not per_shape(det):
        return None
    if not image_sizes:
        raise per_size_refusal(det, runtime)
    from visiontool.models.runtimes.hf_shapes import processed_sizes

    return processed_sizes(lambda im: det.processor(images=im, return_tensors="pt"), image_sizes)


def per_size_refusal(det, runtime: str):
    """The one line refusing ``visiontool export`` of a model exported once per processed size."""
    from visiontool.errors import UsageError

    return UsageError(f"visiontool export: {det.info.name} ({det.info.family}) is exported once per processed image "
                      "size (its traced graph fixes the image size and its processor does not resize to one "
                      "size): name the sizes of the images it will see with --image-size HEIGHTxWIDTH "
                      f"(repeatable), or run it with --runtime {runtime}, which caches one export per size it meets")


def write_export(det: HFDetector, runtime: str, directory: Path, sizes: list | None = None) -> list[str]:
    """A deployable export in ``directory``: the network (with ``sizes``, from
    :func:`export_sizes`: one per processed size, each in a folder named ``HxW``) and the image
    processor's config (the preprocessing); the manifest is the caller's."""
    if sizes:
        from visiontool.models.runtimes.hf_shapes import write_per_size

        files = write_per_size(lambda folder, size: build_into(det, runtime, folder, size), directory, sizes)
    else:
        files = build_into(det, runtime, directory)
    return with_processor_files(files, det.processor, directory)


def manifest_fields(det: HFDetector) -> dict[str, Any]:
    return {"kind": KIND, "preprocessing": preprocessing_fields(det.processor), "inputs": INPUTS, "outputs": OUTPUTS}


# shared by the transformers families' export directories (here, zero-shot and universal segmentation)
PREPROCESSING = ("size", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                 "do_pad")


def preprocessing_fields(image_processor, keys: tuple[str, ...] = PREPROCESSING) -> dict[str, Any]:
    """The image processor's settings for the manifest, as JSON data (informative: the saved
    processor config is what loads); transformers' ``SizeDict`` (a dataclass) becomes the dict
    of its set fields, not its repr."""
    import dataclasses

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {k: v for k, v in dataclasses.asdict(value).items() if v is not None}
        return value

    return json.loads(json.dumps({k: plain(getattr(image_processor, k, None)) for k in keys}, default=str))


def with_processor_files(files: list[str], processor, directory) -> list[str]:
    """``files`` (the network's, in ``directory``) and every file the processor's ``save_pretrained``
    writes there (image processor config, tokenizer), as paths relative to ``directory``."""
    directory = Path(directory)
    processor.save_pretrained(str(directory))
    saved = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file())
    return files + [f for f in saved if f not in set(files)]


def exported_info(directory, manifest: dict, runtime: str, capabilities: frozenset, paradigm: str = "query-based",
                  family: str = "unknown", **extra: Any) -> ModelInfo:
    """The ModelInfo of an export directory's adapter (no torch model: float32 on the CPU)."""
    return ModelInfo(name=str(manifest.get("_spec", directory)), family=str(manifest.get("family", family)),
                     backend=f"transformers+{runtime}", task="detect", paradigm=paradigm, needs_nms=False,
                     params=int(manifest.get("params", 0)),
                     class_names={int(k): str(v) for k, v in (manifest.get("class_names") or {}).items()},
                     device="cpu", dtype="float32", capabilities=capabilities, runtime=runtime,
                     extra={"export": str(directory), "source": manifest.get("source"), **extra})


def load_exported(directory: Path, manifest: dict, runtime: str) -> RuntimeHFDetector:
    """The adapter for an export directory written by :func:`write_export`."""
    from transformers import AutoImageProcessor

    from visiontool.models.hf_detection import load_processor
    from visiontool.models.runtimes.engines import open_engine

    processor = load_processor(AutoImageProcessor, str(directory))
    info = exported_info(directory, manifest, runtime, frozenset({"batch"}))
    if manifest.get("sizes"):  # one network per processed size, each opened when first met
        from visiontool.models.runtimes.hf_shapes import PerShapeHFDetector, per_size_dirs

        return PerShapeHFDetector(None, runtime, info=info, processor=processor,
                                  exported=per_size_dirs(directory, manifest))
    return RuntimeHFDetector(info, processor, open_engine(runtime, directory))
