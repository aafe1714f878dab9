"""Weights of torchvision's detection models: the DEFAULT files through torch hub's cache, or a state dict file.

* :func:`fetch_default`: the builder's DEFAULT COCO weights (``get_model_weights(NAME).DEFAULT``)
  from ``<torch hub dir>/checkpoints``, downloaded with ``load_state_dict_from_url(...,
  check_hash=True)`` when missing and allowed; offline or unreachable, one line naming the file
  and the directory to put it in.
* :func:`read_state_dict`: a ``torch.save(model.state_dict())`` file, read weights-only (no
  pickled code runs), ``{"model": ...}`` training checkpoints unwrapped.
* :func:`mismatch`: the first tensor of a file that does not fit the architecture, as words.
* :func:`no_init`: build an architecture without its random initialisation (every tensor is
  loaded right after).
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from visiontool.errors import ModelLoadError


def default_weights(name: str):
    """torchvision's DEFAULT weights enum member of the builder ``name`` (its url and meta)."""
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def hub_checkpoints_dir() -> str:
    import torch

    return os.path.join(torch.hub.get_dir(), "checkpoints")


def fetch_default(spec: str, name: str, quiet: bool = False) -> dict:
    """The DEFAULT weights' state dict, from torch hub's cache or downloaded with its hash check."""
    import torch

    from visiontool.models.hf_hub import endpoint_reachable, is_offline

    weights = default_weights(name)
    url = weights.url
    filename = os.path.basename(url.split("?")[0])
    directory = hub_checkpoints_dir()
    cached = os.path.join(directory, filename)
    if not os.path.exists(cached):
        how = (f"download {url} on a connected machine and put it in {directory}, or pass "
               f"torchvision:{name}:FILE.pth")
        if is_offline():
            raise ModelLoadError(f"cannot load model '{spec}': its weights {filename} are not in torch hub's cache "
                                 f"and downloads are off (VISIONTOOL_OFFLINE/HF_HUB_OFFLINE); {how}")
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if not endpoint_reachable(f"{parts.scheme}://{parts.netloc}/"):
            raise ModelLoadError(f"cannot load model '{spec}': its weights {filename} are not in torch hub's cache "
                                 f"and {parts.netloc} cannot be reached; {how}")
    try:
        # torch.hub announces its downloads on stdout, which carries our data: send it to stderr
        with contextlib.redirect_stdout(sys.stderr):
            return torch.hub.load_state_dict_from_url(url, model_dir=directory, map_location="cpu",
                                                      progress=not quiet, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - network, hash, disk: one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "hash" in first:
            first = f"the download failed its hash check ({first})"
        raise ModelLoadError(f"cannot load model '{spec}': {filename}: {first}") from exc


def read_state_dict(spec: str, file: str) -> dict:
    """A state dict from ``file`` (weights_only), unwrapping ``{"model": ...}`` checkpoints."""
    import torch

    try:
        obj = torch.load(Path(file).expanduser(), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickled code, corrupt file, not a torch file
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"cannot load model '{spec}': '{file}' is not a weights-only state dict saved with "
                             f"torch.save(model.state_dict(), FILE) ({first[:200]})") from exc
    for key in ("model", "state_dict"):
        inner = obj.get(key) if isinstance(obj, dict) else None
        if isinstance(inner, dict) and inner and all(torch.is_tensor(v) for v in inner.values()):
            obj = inner
            break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ModelLoadError(f"cannot load model '{spec}': '{file}' holds no state dict (a dict of tensors saved "
                             "with torch.save(model.state_dict(), FILE))")
    return obj


def mismatch(model_sd: dict, sd: dict) -> str | None:
    """The first difference between a model's state dict and a file's, as words (None: they fit).

    ``num_batches_tracked`` counters are ignored (FrozenBatchNorm2d, which pretrained
    torchvision models use, has none; BatchNorm2d has one; neither matters at inference)."""
    def real(keys):
        return [k for k in keys if not k.endswith("num_batches_tracked")]

    missing = [k for k in real(model_sd) if k not in sd]
    unexpected = [k for k in real(sd) if k not in model_sd]
    shapes = [k for k in real(model_sd) if k in sd and tuple(sd[k].shape) != tuple(model_sd[k].shape)]
    total = len(missing) + len(unexpected) + len(shapes)
    if not total:
        return None
    more = f" (and {total - 1} more difference{'s' if total > 2 else ''})" if total > 1 else ""
    if shapes:
        k = shapes[0]
        return f"tensor '{k}' is {tuple(sd[k].shape)} in the file but {tuple(model_sd[k].shape)} in the model{more}"
    if missing:
        return f"the file has no tensor '{missing[0]}'{more}"
    return f"the file has a tensor '{unexpected[0]}' the model does not{more}"


@contextlib.contextmanager
def no_init():
    """Build without the builder's random initialisation (every tensor is loaded right after;
    the strict load guarantees none is left out). Transformers' ``no_init_weights`` idea."""
    from torch.nn import init

    names = ["kaiming_uniform_", "kaiming_normal_", "normal_", "uniform_", "constant_", "zeros_", "ones_",
             "xavier_uniform_", "xavier_normal_", "trunc_normal_"]
    saved = {n: getattr(init, n) for n in names if hasattr(init, n)}
    for n in saved:
        setattr(init, n, lambda tensor, *a, **k: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)
