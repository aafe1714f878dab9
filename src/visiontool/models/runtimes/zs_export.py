"""OWL-ViT and OWLv2 (:mod:`visiontool.models.hf_zero_shot`) in OpenVINO / ONNX Runtime.

Exported: the model's forward ``pixel_values (B, 3, H, W) float32, input_ids (B·Q, T) int64,
attention_mask (B·Q, T) int64 -> logits (B, P, Q), pred_boxes (B, P, 4)`` (P: the image's
patches, Q: the phrases per image), with the batch, the number of phrases and the token length
dynamic: the phrases are an input, so one export serves every ``--text``. H and W are the
processor's one fixed size (the vision transformer's position embeddings are tied to it). The
export is checked against torch at another batch and another number of phrases than the traced
ones before it is cached (:func:`mismatch`). Everything else is the torch adapter's own code: the processor (image
resize, tokenizer) and transformers' ``post_process_grounded_object_detection`` —
:class:`RuntimeZeroShotDetector` swaps only the network call (:meth:`ZeroShotDetector.network`).

``visiontool export`` writes the same network into a deployable directory (:func:`write_export`:
the network, and the processor's ``save_pretrained`` files — the image processor's config and the
tokenizer), with :func:`manifest_fields` in its manifest; ``--model DIR --text ...`` loads it
with :func:`load_exported` (the processor from DIR, no torch model, no hub).

Grounding DINO, MM-Grounding-DINO and OmDet-Turbo have no exporter yet (not tried; their image
branches use deformable attention, which Deformable DETR showed traces the image size into its
graph, and Grounding DINO's processor does not fix the size).
"""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from visiontool.errors import UsageError
from visiontool.models.hf_zero_shot import OWL, ZeroShotDetector

EXPORTER_VERSION = 1
KIND = "transformers-zero-shot"
INPUTS, OUTPUTS = ["pixel_values", "input_ids", "attention_mask"], ["logits", "pred_boxes"]
DYNAMIC = {"pixel_values": {0: "batch"}, "input_ids": {0: "queries", 1: "tokens"},
           "attention_mask": {0: "queries", 1: "tokens"}}
TRACED = ("object", "thing")  # the traced example's phrases (one image); the check uses other counts
PROBE = ("a photo of a cat", "dog", "person")  # the check: two images, three phrases each
TOLERANCE = 1e-3
# model_type -> the processor class an export directory is loaded with (the image processor and tokenizer)
PROCESSORS = {"owlv2": "Owlv2Processor", "owlvit": "OwlViTProcessor"}
PREPROCESSING = ("size", "do_resize", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                 "do_pad", "do_center_crop", "crop_size")  # hf_export.PREPROCESSING and OWL's center crop


def exportable(det: Any) -> bool:
    return type(det) is ZeroShotDetector and det.model_type in OWL


def _net(model):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, input_ids, attention_mask):
            out = self.model(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask)
            return out.logits, out.pred_boxes

    return Net().eval()


def _example(det: ZeroShotDetector, phrases: tuple[str, ...], n_images: int, seed: int | None = None) -> tuple:
    """The processor's tensors for ``n_images`` images and ``phrases`` (random pixels with ``seed``)."""
    import torch
    from PIL import Image

    enc = det.processor(images=[Image.new("RGB", (64, 48))] * n_images, text=[list(phrases)] * n_images,
                        return_tensors="pt")
    pixels = enc["pixel_values"].float()
    if seed is not None:
        pixels = torch.randn(pixels.shape, generator=torch.Generator().manual_seed(seed))
    return pixels, enc["input_ids"].long(), enc["attention_mask"].long()


def image_size(det: ZeroShotDetector) -> tuple[int, int]:
    return tuple(int(s) for s in _example(det, TRACED, 1)[0].shape[2:])  # type: ignore[return-value]


def build_into(det: ZeroShotDetector, runtime: str, directory: Path) -> list[str]:
    """Export ``det``'s network into ``directory`` for ``runtime`` and check it (the file names written)."""
    from visiontool.models.runtimes.engines import export_network, open_engine

    net = _net(det.model)
    files = export_network(net, _example(det, TRACED, 1), runtime, directory, INPUTS, OUTPUTS, DYNAMIC)
    probe = _example(det, PROBE, 2, seed=0)
    got = open_engine(runtime, directory)([t.numpy() for t in probe])
    problem = mismatch(net, probe, got)
    if problem:
        raise UsageError(f"--runtime {runtime}: the exported {det.info.family} network does not reproduce torch on 2 "
                         f"images x {len(PROBE)} phrases ({problem}); use --runtime torch")
    return files


FLOAT32_SLACK = 4.0


def mismatch(net, probe: tuple, got: list) -> str | None:
    """Why the engine's outputs ``got`` on ``probe`` are not torch's (None when they are).

    Within :data:`TOLERANCE` of torch's float32 outputs passes. Otherwise both are compared with
    the network run in float64: float32 rounding grows with the activations, and OWLv2-B/16 with
    random weights (the benchmark's) reaches logits of 5,160, where torch's own float32 result is
    0.0049 from float64 in the logits and 0.0042 in the normalised boxes (ONNX Runtime 0.0032 and
    0.0011, OpenVINO 0.0093 and 0.0096). The engine passes when it is within
    :data:`FLOAT32_SLACK` times torch's own distance of the float64 result, output by output."""
    import copy

    import numpy as np
    import torch

    with torch.inference_mode():
        want = [t.float().numpy() for t in net(*probe)]
    if any(w.shape != g.shape for w, g in zip(want, got)):
        return "output shapes differ: " + ", ".join(f"{w.shape} vs {g.shape}" for w, g in zip(want, got))
    worst = max(float(np.abs(w - g).max()) for w, g in zip(want, got))
    if worst <= TOLERANCE:
        return None
    exact_net = copy.deepcopy(net).double()
    with torch.inference_mode():
        exact = [t.numpy() for t in exact_net(*(p.double() if p.is_floating_point() else p for p in probe))]
    del exact_net
    for w, g, e in zip(want, got, exact):
        own, engine = float(np.abs(w - e).max()), float(np.abs(g - e).max())
        if engine > max(TOLERANCE, FLOAT32_SLACK * own):
            return (f"max difference {worst:.3g}; against float64 the engine is {engine:.3g} off where torch's float32 "
                    f"is {own:.3g}")
    return None


def cache_fields(det: ZeroShotDetector, runtime: str) -> dict[str, Any]:
    import torch
    import transformers

    from visiontool.models.runtimes.engines import runtime_version
    from visiontool.models.runtimes.export_cache import state_hash

    return {"kind": KIND, "family": det.info.family, "exporter": EXPORTER_VERSION, "runtime": runtime,
            "runtime_version": runtime_version(runtime), "torch": torch.__version__,
            "transformers": transformers.__version__, "precision": "float32",
            "shapes": "x".join(map(str, image_size(det))), "weights": state_hash(det.model)}


class RuntimeZeroShotDetector(ZeroShotDetector):
    """A ZeroShotDetector whose network runs in an exported engine (no torch model held)."""

    def __init__(self, info, processor, model_type: str, engine):
        from visiontool.device import Precision

        super().__init__(info, None, processor, model_type, Precision("float32", "cpu"))
        self.engine = engine

    def network(self, enc):
        import torch

        logits, boxes = self.engine([enc["pixel_values"].cpu().numpy(), enc["input_ids"].cpu().numpy(),
                                     enc["attention_mask"].cpu().numpy()])
        return SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))


def accelerate(det: ZeroShotDetector, runtime: str, quiet: bool = False) -> RuntimeZeroShotDetector:
    """``det`` with its network exported (cached) and running in ``runtime``."""
    from visiontool.models.runtimes.engines import open_engine
    from visiontool.models.runtimes.export_cache import get_or_build
    from visiontool.models.runtimes.hf_export import runtime_info

    engine, where = get_or_build(cache_fields(det, runtime), lambda d: build_into(det, runtime, d),
                                 lambda d: open_engine(runtime, d), f"{det.info.name} to {runtime}", quiet=quiet)
    return RuntimeZeroShotDetector(runtime_info(det.info, runtime, export=str(where)), det.processor,
                                   det.model_type, engine)


# ---------------------------------------------------------------------- visiontool export
def write_export(det: ZeroShotDetector, runtime: str, directory: Path) -> list[str]:
    """A deployable export in ``directory``: the checked network (:func:`build_into`) and the
    processor's own files (``save_pretrained``: image processor config, tokenizer); the file
    names written. The manifest is the caller's (:mod:`.deploy`)."""
    from visiontool.models.runtimes.hf_export import with_processor_files

    return with_processor_files(build_into(det, runtime, Path(directory)), det.processor, directory)


def manifest_fields(det: ZeroShotDetector, runtime: str) -> dict[str, Any]:
    """What the manifest says about an OWL export: the processor and tokenizer classes, the one
    image size the network takes, the preprocessing, the inputs and outputs with their dynamic axes."""
    from visiontool.models.runtimes.hf_export import preprocessing_fields

    image_processor, tokenizer = det.processor.image_processor, det.processor.tokenizer
    return {"kind": KIND, "model_type": det.model_type, "processor_class": type(det.processor).__name__,
            "image_size": list(image_size(det)), "preprocessing": preprocessing_fields(image_processor, PREPROCESSING),
            "tokenizer": {"class": type(tokenizer).__name__, "max_length": int(tokenizer.model_max_length)},
            "inputs": INPUTS, "outputs": OUTPUTS,
            "dynamic_axes": {k: {str(a): n for a, n in v.items()} for k, v in DYNAMIC.items()}}


def load_exported(directory: Path, manifest: dict, runtime: str) -> RuntimeZeroShotDetector:
    """The adapter for an export directory written by :func:`write_export`: the processor from
    ``directory`` (local files only), the network in ``runtime``; no torch model."""
    import transformers

    from visiontool.errors import ModelLoadError
    from visiontool.models.runtimes.engines import open_engine
    from visiontool.models.runtimes.hf_export import exported_info

    spec = str(manifest.get("_spec", directory))
    model_type = str(manifest.get("model_type"))
    if model_type not in PROCESSORS or manifest.get("processor_class") != PROCESSORS[model_type]:
        raise ModelLoadError(f"cannot load export '{spec}': its manifest names model type '{model_type}' and "
                             f"processor '{manifest.get('processor_class')}' (expected one of {sorted(PROCESSORS)} "
                             "with its processor); export the model again with visiontool export")
    processor = getattr(transformers, PROCESSORS[model_type]).from_pretrained(str(directory), local_files_only=True)
    want = tuple(int(s) for s in manifest.get("image_size") or ())
    got = image_size(SimpleNamespace(processor=processor))
    if want and got != want:
        raise ModelLoadError(f"cannot load export '{spec}': its processor makes {got[0]}x{got[1]} images, the network "
                             f"was exported for {want[0]}x{want[1]}; export the model again with visiontool export")
    engine = open_engine(runtime, directory)
    size = getattr(processor.image_processor, "size", None) or {}
    info = exported_info(directory, {**manifest, "class_names": {}}, runtime, frozenset({"text", "batch"}),
                         paradigm="open-vocabulary", family=model_type,
                         fixed_size=bool(size) and ("height" in size and "width" in size))
    return RuntimeZeroShotDetector(info, processor, model_type, engine)
