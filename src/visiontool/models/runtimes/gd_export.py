"""Grounding DINO, MM-Grounding-DINO and OmDet-Turbo (:mod:`visiontool.models.hf_zero_shot`) in
OpenVINO / ONNX Runtime.

Exported: the model's forward with the phrases as inputs, so one export serves every ``--text``
(any phrases, any number of them, any token count):

* Grounding DINO, MM-Grounding-DINO: ``pixel_values (B, 3, H, W) float32, input_ids (B, T),
  token_type_ids (B, T), attention_mask (B, T) int64 -> logits (B, Q, max_text_len) (-inf past
  the prompt's tokens, as torch), pred_boxes (B, Q, 4)``; the batch and T dynamic.
* OmDet-Turbo: ``pixel_values (1, 3, H, W), classes_input_ids (C, L) int64, tasks_input_ids
  (1, L), tasks_attention_mask (1, L) -> decoder_class_logits (1, Q, C), decoder_coord_logits
  (1, Q, 4)``; C (the phrases) and L dynamic, the batch static at 1 (its decoder, RT-DETR's,
  traces the batch into ``view`` constants): a batch of B images is B engine calls. The
  network exported is the model's own forward with its language part written without its
  Python-side LRU caches of phrase embeddings (those would trace as constants) and with the
  task prompt's truncation to its longest prompt computed in the graph (``.item()`` in
  transformers); before each export it is checked to give the model's own outputs
  (:func:`check_omdet_net`).

Shapes: the image size is static, one export per processed ``(H, W)``, exported lazily when a
size first reaches the network and cached on disk (as :mod:`.hf_shapes` does for Deformable
DETR): a dynamic-size export was measured not to run at another size (Grounding DINO's Swin
backbone traces its window partition's sizes into ``Reshape`` constants — ONNX Runtime "The
input tensor cannot be reshaped" at another size — and the deformable attention its levels'
sizes). OmDet-Turbo's processor resizes every image to one size: one export.

Both runtimes get the same graph: torch's TorchScript ONNX exporter (opset 17), which OpenVINO
then converts (:func:`onnx_to_openvino`; OpenVINO's own converter from torch, what the other
families use, took 8.7 s against 2.9 s on the tiny Grounding DINO, and lacks
``aten::special_logit``). While tracing only (undone after it; it computes the same values):
Grounding DINO's text mask builder (``torch.isin`` and ``torch.cummax``/``cummin``, which the
ONNX exporter lacks: "Exporting the operator 'aten::isin' to ONNX opset version 17 is not
supported") is replaced by comparisons and min/max reductions (:func:`text_masks`); the
deformable attention traces transformers' own forward
(:func:`visiontool.models.deformable_attention.original_forward`) and ONNX keeps ``linspace``'s
dtype (:func:`.engines.onnx_linspace_keeps_dtype`).

Each export is checked against torch before it is cached, on another image (random pixels at
its size), other phrases and another number of them (and, for Grounding DINO, a batch of 2):
:func:`.zs_export.mismatch` (float32 within its tolerance, else against float64), with
matching infinities counting as equal and queries allowed to come out permuted
(:func:`.hf_export.query_difference`: the encoder's top-k of near-tied proposals). A mismatch
is one ``visiontool: error:`` line, exit 2, and nothing is cached.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

from visiontool.errors import UsageError
from visiontool.models.hf_zero_shot import GROUNDING, OMDET, ZeroShotDetector
from visiontool.models.runtimes.hf_shapes import PerSizeEngines, per_shape_info

EXPORTER_VERSION = 1
KIND = "transformers-grounding"
GD_INPUTS = ["pixel_values", "input_ids", "token_type_ids", "attention_mask"]
GD_OUTPUTS = ["logits", "pred_boxes"]
GD_DYNAMIC = {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "tokens"},
              "token_type_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
# classes_attention_mask is not an input: the model never reads it (a class is the text model's state
# at its end token, the largest id; transformers uses the mask only as its embedding cache's key)
OMDET_INPUTS = ["pixel_values", "classes_input_ids", "tasks_input_ids", "tasks_attention_mask"]
OMDET_OUTPUTS = ["decoder_class_logits", "decoder_coord_logits"]
OMDET_DYNAMIC = {"classes_input_ids": {0: "classes", 1: "class_tokens"}, "tasks_input_ids": {1: "task_tokens"},
                 "tasks_attention_mask": {1: "task_tokens"}}
TRACED = ("object", "thing")  # the traced example's phrases (one image); the check uses others
PROBE = ("a photo of a cat", "dog", "person in a hi-vis vest")  # the check: other phrases, another count
INF_AS = 1e4  # the check compares -inf logits (tokens past the prompt) as this finite value


def exportable(det: Any) -> bool:
    return type(det) is ZeroShotDetector and det.model_type in GROUNDING | OMDET


def _omdet(det: ZeroShotDetector) -> bool:
    return det.model_type in OMDET


# ---------------------------------------------------------------------------------- networks
def _gd_net(model):
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, input_ids, token_type_ids, attention_mask):
            out = self.model(pixel_values=pixel_values, input_ids=input_ids, token_type_ids=token_type_ids,
                             attention_mask=attention_mask)
            return out.logits, out.pred_boxes

    return Net().eval()


def _omdet_net(model):
    """OmDet-Turbo's forward for one image's phrases (transformers' ``OmDetTurboForObjectDetection.
    forward`` and ``get_language_embedding`` without the embedding caches; every image of a batch has
    the same number of phrases, so the class embeddings regroup with a reshape)."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, classes_input_ids, tasks_input_ids, tasks_attention_mask):
            m = self.model
            batch = pixel_values.shape[0]
            encoded = m.encoder(m.vision_backbone(pixel_values), return_dict=True)
            language = m.language_backbone
            # a class: the text model's state at its end token (the largest id), projected
            states = language.model(classes_input_ids)[0]
            rows = torch.ones_like(classes_input_ids[:, 0]).cumsum(0) - 1
            classes = states[rows, classes_input_ids.argmax(dim=-1)] @ language.text_projection
            class_features = classes.reshape(batch, -1, classes.shape[-1]).transpose(0, 1)  # (C, B, D)
            # the task prompt: every token's state, cut to the longest prompt (in the graph, not .item())
            states = language.model(tasks_input_ids)[0]
            keep = torch.arange((tasks_attention_mask != 0).sum(1).max(), device=states.device)
            task_features = states.index_select(1, keep).transpose(0, 1)  # (L, B, D)
            task_mask = tasks_attention_mask.index_select(1, keep)
            out = m.decoder(encoded.extracted_states, class_features, task_features, task_mask, return_dict=True)
            return out.decoder_classes[-1], out.decoder_coords[-1]

    return Net().eval()


def _net(det: ZeroShotDetector):
    return _omdet_net(det.model) if _omdet(det) else _gd_net(det.model)


def _names(det: ZeroShotDetector) -> tuple[list[str], list[str], dict]:
    return (OMDET_INPUTS, OMDET_OUTPUTS, OMDET_DYNAMIC) if _omdet(det) else (GD_INPUTS, GD_OUTPUTS, GD_DYNAMIC)


def _encoded(det: ZeroShotDetector, phrases: tuple[str, ...], n_images: int, size: tuple[int, int], seed: int):
    """The processor's tensors for ``n_images`` images of processed size ``size`` and ``phrases``,
    the pixels replaced by random ones from ``seed``."""
    import torch
    from PIL import Image

    enc = det.processor(images=[Image.new("RGB", (size[1], size[0]))] * n_images,
                        text=[det.text_for(phrases)] * n_images, return_tensors="pt")
    enc["pixel_values"] = torch.randn((n_images, 3, *size), generator=torch.Generator().manual_seed(seed))
    if not _omdet(det) and "token_type_ids" not in enc:
        enc["token_type_ids"] = torch.zeros_like(enc["input_ids"])
    return enc


def _example(det: ZeroShotDetector, phrases: tuple[str, ...], n_images: int, size: tuple[int, int],
             seed: int) -> tuple:
    """The network's inputs (:func:`_encoded`), in the export's input order."""
    enc = _encoded(det, phrases, n_images, size, seed)
    return tuple(enc[k] if k == "pixel_values" else enc[k].long() for k in _names(det)[0])


def check_omdet_net(det: ZeroShotDetector, net, size: tuple[int, int]) -> None:
    """The exported OmDet-Turbo forward (:func:`_omdet_net`, rewritten from transformers') gives
    the model's own outputs (UsageError otherwise: a transformers release that changed them)."""
    import torch
    import transformers

    from visiontool.models.runtimes.zs_export import TOLERANCE

    enc = _encoded(det, PROBE, 1, size, seed=2)
    with torch.inference_mode():
        own = det.model(**{k: v for k, v in enc.items() if k != "pixel_mask"})
        ours = net(*(enc[k] for k in OMDET_INPUTS))
    worst = max(float((a - b).abs().max()) for a, b in zip((own.decoder_class_logits, own.decoder_coord_logits),
                                                           ours))
    if not worst <= TOLERANCE:
        raise UsageError(f"the OmDet-Turbo network visiontool exports differs from transformers' "
                         f"{transformers.__version__} forward (max difference {worst:.3g}); use "
                         "--runtime torch")


# ---------------------------------------------------------------------------------- export
@contextlib.contextmanager
def traceable(det: ZeroShotDetector) -> Iterator[None]:
    """While exporting ``det``: the patches the module docstring lists (undone afterwards)."""
    from unittest import mock

    from visiontool.models.deformable_attention import original_forward
    from visiontool.models.runtimes.engines import onnx_linspace_keeps_dtype

    with contextlib.ExitStack() as stack:
        stack.enter_context(original_forward(det.model))
        if not _omdet(det):
            import importlib

            module = importlib.import_module(type(det.model).__module__)
            name = "generate_masks_with_special_tokens_and_transfer_map"
            if hasattr(module, name):
                stack.enter_context(mock.patch.object(module, name, text_masks))
        stack.enter_context(onnx_linspace_keeps_dtype())
        yield


def text_masks(input_ids, special_tokens):
    """transformers' ``generate_masks_with_special_tokens_and_transfer_map`` (Grounding DINO: each
    token attends to its own phrase; position ids restart after each delimiter) from comparisons
    and min/max reductions instead of ``isin``/``cummax``/``cummin`` (the same values; a (B, T, T)
    intermediate, T the prompt's tokens)."""
    import torch

    special = (input_ids.unsqueeze(-1) == special_tokens.view(1, 1, -1)).any(-1)  # (B, T)
    idx = torch.ones_like(input_ids[0]).cumsum(0) - 1  # 0..T-1, T dynamic in the graph
    i, j = idx.view(1, -1, 1), idx.view(1, 1, -1)
    at = special.unsqueeze(1)  # (B, 1, T): a delimiter at j
    seq_len, last = idx[-1:] + 1, idx[-1:]
    prev_special = torch.where(at & (j < i), j, torch.full_like(j, -1)).amax(-1)  # the last delimiter before i
    next_special = torch.where(at & (j >= i), j, seq_len.view(1, 1, 1)).amin(-1)  # the first at or after i
    valid_block = (next_special != 0) & (next_special != last) & (next_special != seq_len)
    mask = (next_special.unsqueeze(2) == next_special.unsqueeze(1)) & valid_block.unsqueeze(1)
    mask = (i == j) | mask
    position_ids = idx.view(1, -1) - prev_special - 1
    position_ids = torch.where(valid_block, position_ids, torch.zeros_like(position_ids))
    return mask, torch.clamp(position_ids, min=0).to(torch.long)


def onnx_to_openvino(directory: Path) -> list[str]:
    """``model.onnx`` in ``directory`` converted to OpenVINO's ``model.xml``/``model.bin`` (float32
    weights; the ONNX file removed). Measured on the tiny Grounding DINO: 1.7 s to ONNX + 1.2 s to
    convert, against 8.7 s for OpenVINO's own converter from torch (what :func:`.engines.export_network`
    does) — and the same graph for both runtimes."""
    import openvino as ov

    from visiontool.models.runtimes.engines import no_openvino_telemetry

    onnx = directory / "model.onnx"
    with no_openvino_telemetry():
        model = ov.convert_model(str(onnx))
    ov.save_model(model, str(directory / "model.xml"), compress_to_fp16=False)
    onnx.unlink()
    return ["model.xml", "model.bin"]


def build_into(det: ZeroShotDetector, runtime: str, directory: Path, size: tuple[int, int]) -> list[str]:
    """Export ``det``'s network at processed size ``size`` (H, W) into ``directory`` for
    ``runtime`` and check it against torch (the file names written)."""
    from visiontool.models.deformable_attention import original_forward
    from visiontool.models.runtimes.engines import export_network, open_engine

    net = _net(det)
    if _omdet(det):
        check_omdet_net(det, net, size)
    inputs, outputs, dynamic = _names(det)
    example = _example(det, TRACED, 1, size, seed=0)
    with traceable(det):
        files = export_network(net, example, "onnxruntime", directory, inputs, outputs, dynamic)
    if runtime == "openvino":
        files = onnx_to_openvino(Path(directory))
    n_images = 1 if _omdet(det) else 2
    probe = _example(det, PROBE, n_images, size, seed=1)
    got = open_engine(runtime, directory)([t.numpy() for t in probe])
    with original_forward(det.model):  # the reference: the graph that was traced (see the module docstring)
        problem = difference(net, probe, got)
    if problem:
        raise UsageError(f"--runtime {runtime}: the exported {det.info.family} network does not reproduce torch on "
                         f"{n_images} image(s) of {size[0]}x{size[1]} x {len(PROBE)} phrases ({problem}); use "
                         "--runtime torch")
    return files


def difference(net, probe: tuple, got: list) -> str | None:
    """Why the engine's outputs ``got`` on ``probe`` are not torch's (None when they are):
    :func:`.zs_export.mismatch` on outputs whose infinities are :data:`INF_AS`, else torch's and
    the engine's queries matched in any order within its tolerance."""
    import numpy as np
    import torch

    from visiontool.models.runtimes.hf_export import query_difference
    from visiontool.models.runtimes.zs_export import TOLERANCE, mismatch

    class Finite(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, *args):
            return tuple(torch.nan_to_num(t, posinf=INF_AS, neginf=-INF_AS) for t in self.net(*args))

    finite = Finite().eval()
    got = [np.nan_to_num(g, posinf=INF_AS, neginf=-INF_AS) for g in got]
    problem = mismatch(finite, probe, got)
    if problem is None:
        return None
    with torch.inference_mode():
        want = [t.float().numpy() for t in finite(*probe)]
    if query_difference(want, got, TOLERANCE) <= TOLERANCE:
        return None
    return problem


# ---------------------------------------------------------------------------------- running
def cache_fields(det: ZeroShotDetector, runtime: str) -> dict[str, Any]:
    """The key fields shared by ``det``'s exports (:func:`shape_fields` adds the size)."""
    import torch
    import transformers

    from visiontool.models.runtimes.engines import runtime_version
    from visiontool.models.runtimes.export_cache import state_hash

    return {"kind": KIND, "family": det.info.family, "model_type": det.model_type, "exporter": EXPORTER_VERSION,
            "runtime": runtime, "runtime_version": runtime_version(runtime), "torch": torch.__version__,
            "transformers": transformers.__version__, "precision": "float32", "text": "dynamic",
            "batch": 1 if _omdet(det) else "dynamic", "weights": state_hash(det.model)}


def shape_fields(size: tuple[int, int]) -> dict[str, Any]:
    return {"shapes": f"{int(size[0])}x{int(size[1])}", "policy": "per-shape"}


class RuntimeGroundingDetector(PerSizeEngines, ZeroShotDetector):
    """A ZeroShotDetector whose network runs in exported engines, one per processed image size
    (:class:`.hf_shapes.PerSizeEngines`: opened from the export cache or exported when a size is
    first met).

    Like :class:`.hf_shapes.PerShapeHFDetector` it keeps the torch adapter (``source``) for its
    whole life, since a size not yet met needs it to export, and each engine opened holds its
    own copy of the weights."""

    def __init__(self, source: ZeroShotDetector | None, runtime: str, quiet: bool = False, *, info=None,
                 processor=None, model_type: str = "", max_text_len: int = 0, exported: dict | None = None):
        """From the torch adapter ``source``; or (``source`` None) from an export directory
        (:mod:`.gd_deploy`): its ``info``, ``processor``, ``model_type``, the model's
        ``max_text_len`` and per-size folders (``exported``)."""
        from visiontool.device import Precision

        if source is not None:
            info = per_shape_info(source.info, runtime)
            processor, model_type = source.processor, source.model_type
            max_text_len = int(getattr(source.model.config, "max_text_len", 0) or 0)
        super().__init__(info, None, processor, model_type, Precision("float32", "cpu"))
        self.max_text_len = max_text_len
        self.init_sizes(source, runtime, cache_fields(source, runtime) if source is not None else None, quiet=quiet,
                        exported=exported)

    def build(self, directory, size: tuple[int, int]) -> list[str]:
        return build_into(self.source, self.runtime, directory, size)

    def size_fields(self, size: tuple[int, int]) -> dict[str, Any]:
        return shape_fields(size)

    def network(self, enc):
        import numpy as np
        import torch

        pixels = enc["pixel_values"].float().cpu()
        mask = enc.get("pixel_mask")
        if mask is not None and not bool(mask.all()):  # the adapter never pads; the export takes no mask
            raise UsageError(f"--runtime {self.runtime}: {self.info.name} got padded images, which its export does "
                             "not take; use --runtime torch")
        engine = self.engine_for(tuple(int(s) for s in pixels.shape[2:]))
        if not _omdet(self):
            ids = enc["input_ids"]
            limit = self.max_text_len
            if limit and ids.shape[1] > limit:  # torch fails too (a shape error in its contrastive head)
                raise UsageError(f"--text: the prompt is {ids.shape[1]} tokens, more than {self.info.name} takes "
                                 f"({limit}); use fewer or shorter phrases")
            types = enc.get("token_type_ids")
            logits, boxes = engine([pixels.numpy(), ids.cpu().numpy(),
                                    (torch.zeros_like(ids) if types is None else types).cpu().numpy(),
                                    enc["attention_mask"].cpu().numpy()])
            return SimpleNamespace(logits=torch.from_numpy(logits), pred_boxes=torch.from_numpy(boxes))
        # OmDet-Turbo: one image per call, with its own phrases (classes_structure: how many per image)
        counts = [int(c) for c in enc["classes_structure"]]
        if len(set(counts)) > 1:  # padded phrase counts would need the padding the export leaves out
            raise UsageError(f"--runtime {self.runtime}: {self.info.name} expects the same phrases for every image")
        starts = np.concatenate([[0], np.cumsum(counts)])
        classes, tasks = enc["classes_input_ids"].cpu().numpy(), enc["tasks_input_ids"].cpu().numpy()
        task_mask = enc["tasks_attention_mask"].cpu().numpy()
        parts = [engine([pixels[b:b + 1].numpy(), classes[starts[b]:starts[b + 1]], tasks[b:b + 1],
                         task_mask[b:b + 1]]) for b in range(len(pixels))]
        logits, boxes = (np.concatenate([p[k] for p in parts]) for k in (0, 1))
        return SimpleNamespace(decoder_class_logits=torch.from_numpy(logits),
                               decoder_coord_logits=torch.from_numpy(boxes),
                               classes_structure=enc["classes_structure"])


def accelerate(det: ZeroShotDetector, runtime: str, quiet: bool = False) -> RuntimeGroundingDetector:
    """``det`` running its network in ``runtime``: exported per processed size when first met (cached)."""
    return RuntimeGroundingDetector(det, runtime, quiet=quiet)
