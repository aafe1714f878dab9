"""DETR-family detectors from Hugging Face transformers.

Any model that ``AutoModelForObjectDetection`` + ``AutoImageProcessor`` accept (DETR,
Conditional/Deformable DETR, YOLOS, RT-DETR, Table Transformer, ...) loads by hub id
(through the Hugging Face cache; ``HF_HUB_OFFLINE`` honoured) or from a local directory
saved with ``save_pretrained``. All of them are set predictors trained with Hungarian
matching, so their outputs need no NMS.

Speed levers applied on load (each keeps outputs within float rounding of the original):
frozen batch-norms are folded into the preceding convolutions, the model runs in
``channels_last`` memory format on CPU, and inference runs under ``torch.inference_mode``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visiontool.errors import ModelLoadError, UsageError
from visiontool.models import loader

DEFAULT_MODEL = "facebook/detr-resnet-50"
# model_type -> whether the architecture needs NMS after its raw outputs (all set predictors: no)
SET_PREDICTION_TYPES = {"detr", "conditional_detr", "deformable_detr", "dab-detr", "yolos", "rt_detr",
                        "rt_detr_v2", "table-transformer", "d_fine", "dfine", "deta", "grounding-dino",
                        "owlvit", "owlv2", "mm-grounding-dino", "lw_detr", "rf_detr"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


def looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or spec.endswith(("/", os.sep)) or os.sep in spec and \
        spec.count("/") > 1


def check_model_spec(spec: str) -> None:
    """Cheap syntax check before anything loads: a missing local path is a usage error."""
    if not spec:
        raise UsageError("--model is empty")
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"--model '{spec}' is a file; expected a directory saved with save_pretrained "
                             "or a Hugging Face hub id")
        return
    if looks_like_path(spec) or not _HUB_ID.match(spec):
        raise UsageError(f"--model '{spec}': no such directory (and not a Hugging Face hub id)")


def _offline_hint(spec: str) -> str:
    return (f"cannot load model '{spec}': it is not in the Hugging Face cache and the hub cannot be reached; "
            f"pre-download it on a connected machine (`hf download {spec}`) and copy the cache "
            f"({_hf_cache()}), set HF_HUB_OFFLINE=1 to use only the cache, or pass --model PATH to a "
            "directory saved with save_pretrained")


def _hf_cache() -> str:
    from visiontool.models.cache import hf_cache_dir

    return hf_cache_dir()


def _classify_load_error(spec: str, exc: BaseException) -> ModelLoadError:
    text = f"{type(exc).__name__}: {exc}"
    local = Path(spec).expanduser().is_dir()
    if local:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ModelLoadError(f"cannot load model from '{spec}': {first}")
    markers = ("offline", "connection", "resolve", "max retries", "timed out", "network", "cannot find the "
               "requested files", "couldn't connect", "localentrynotfound", "name or service", "unreachable",
               "we couldn't connect", "not the path to a directory", "is not a local folder")
    low = text.lower()
    if "repositorynotfound" in low or "404" in low and "not found" in low:
        return ModelLoadError(f"cannot load model '{spec}': no such model on the Hugging Face hub "
                              "(or it is private: log in with `hf auth login`)")
    if any(m in low for m in markers) or loader.is_offline():
        return ModelLoadError(_offline_hint(spec))
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ModelLoadError(f"cannot load model '{spec}': {first}")


def _source_and_kwargs(spec: str) -> tuple[str, dict]:
    """Where from_pretrained should look, and whether it may use the network."""
    local = Path(spec).expanduser()
    if local.exists():
        return str(local), {}
    from visiontool.models.hub import hub_reachable

    if loader.is_offline() or not hub_reachable():
        return spec, {"local_files_only": True}
    return spec, {}


def _quiet_hub_logs():
    """huggingface_hub logs every retry as a warning; the user gets one line from us instead."""
    import logging

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


def load_config(spec: str):
    """The model's config (cheap: no weights), used to validate --classes before loading."""
    from transformers import AutoConfig

    def factory():
        source, kwargs = _source_and_kwargs(spec)
        _quiet_hub_logs()
        try:
            return AutoConfig.from_pretrained(source, **kwargs)
        except Exception as exc:  # noqa: BLE001 - every load failure becomes one user-facing line
            if kwargs.get("local_files_only") and not Path(spec).expanduser().exists():
                raise ModelLoadError(_offline_hint(spec)) from exc
            raise _classify_load_error(spec, exc) from exc

    return loader.cached(("config", spec), factory)


def fold_frozen_batchnorm(module) -> int:
    """Fold (frozen) batch-norms that directly follow a conv into the conv's weight and bias.

    Recognises the two layouts of ResNet-style backbones: siblings named ``convN``/``bnN``
    (timm and torchvision blocks, whose forward calls them in that order) and consecutive
    ``Conv2d`` -> norm children of a ``Sequential`` (downsample branches). A folded norm is
    replaced by ``Identity``. Returns how many were folded.
    """
    import torch
    from torch import nn

    def norm_params(bn):
        if not all(hasattr(bn, a) for a in ("weight", "bias", "running_mean", "running_var")):
            return None
        eps = getattr(bn, "eps", 1e-5)
        return bn.weight, bn.bias, bn.running_mean, bn.running_var, eps

    def fold(conv: nn.Conv2d, bn) -> bool:
        p = norm_params(bn)
        if p is None or conv.out_channels != p[0].numel():
            return False
        w, b, mean, var, eps = (t.detach().float() if torch.is_tensor(t) else t for t in p)
        scale = w * torch.rsqrt(var + eps)
        conv_w = conv.weight.detach().float() * scale.reshape(-1, 1, 1, 1)
        conv_b = conv.bias.detach().float() if conv.bias is not None else torch.zeros_like(mean)
        new_b = (conv_b - mean) * scale + b
        conv.weight = nn.Parameter(conv_w.to(conv.weight.dtype), requires_grad=False)
        conv.bias = nn.Parameter(new_b.to(conv.weight.dtype), requires_grad=False)
        return True

    def is_norm(m) -> bool:
        name = type(m).__name__.lower()
        return "batchnorm" in name and norm_params(m) is not None

    count = 0
    for parent in list(module.modules()):
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            names = list(children)
            for a, b in zip(names, names[1:]):
                if isinstance(children[a], nn.Conv2d) and is_norm(children[b]) and fold(children[a], children[b]):
                    setattr(parent, b, nn.Identity())
                    count += 1
            continue
        for name, child in children.items():
            m = re.fullmatch(r"conv(\d*)", name)
            if not m or not isinstance(child, nn.Conv2d):
                continue
            bn_name = f"bn{m.group(1)}"
            bn = children.get(bn_name)
            if bn is not None and is_norm(bn) and fold(child, bn):
                setattr(parent, bn_name, nn.Identity())
                count += 1
    return count


@dataclass
class Detector:
    """A loaded detector: the model in eval mode on its device, and its image processor."""

    name: str
    model: Any
    processor: Any
    device: Any
    id2label: dict[int, str]
    model_type: str
    needs_nms: bool | None
    params: int
    info: dict = field(default_factory=dict)

    @property
    def label2id(self) -> dict[str, int]:
        return {v.lower(): k for k, v in self.id2label.items()}


def load_detector(spec: str = DEFAULT_MODEL, device=None, optimize: bool = True) -> Detector:
    """Load (once per process) a detector by hub id or local directory onto ``device``."""
    import torch

    device = device or torch.device("cpu")
    key = ("detector", spec, str(device), optimize)
    return loader.cached(key, lambda: _load(spec, device, optimize))


def _load(spec: str, device, optimize: bool) -> Detector:
    import torch
    from transformers import AutoImageProcessor, AutoModelForObjectDetection
    from transformers.utils import logging as hf_logging

    config = load_config(spec)
    # the checkpoint carries the backbone's weights: never fetch ImageNet weights for it
    for holder in (config, getattr(config, "backbone_config", None)):
        if holder is not None and getattr(holder, "use_pretrained_backbone", False):
            holder.use_pretrained_backbone = False
    source, kwargs = _source_and_kwargs(spec)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # unused-weight chatter is not for users
    local = not kwargs and Path(spec).expanduser().exists()
    if local:
        hf_logging.disable_progress_bar()  # a local load is instant; hub downloads keep their bars
    try:
        model = AutoModelForObjectDetection.from_pretrained(source, config=config, **kwargs)
        try:
            processor = AutoImageProcessor.from_pretrained(source, **kwargs)
        except Exception:  # noqa: BLE001
            # processors saved before transformers v5 may lack a fast variant
            processor = AutoImageProcessor.from_pretrained(source, use_fast=False, **kwargs)
    except ModelLoadError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _classify_load_error(spec, exc) from exc
    finally:
        hf_logging.set_verbosity(verbosity)
        if local:
            hf_logging.enable_progress_bar()
    model.eval()
    info: dict = {}
    if optimize:
        info["folded_batchnorms"] = fold_frozen_batchnorm(model)
    model.to(device)
    if optimize and device.type == "cpu":
        model.to(memory_format=torch.channels_last)
        info["channels_last"] = True
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    model_type = getattr(config, "model_type", "unknown")
    needs_nms = False if model_type in SET_PREDICTION_TYPES else None
    params = sum(p.numel() for p in model.parameters())
    return Detector(spec, model, processor, device, id2label, model_type, needs_nms, params, info)
