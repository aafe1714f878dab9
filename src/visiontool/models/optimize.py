"""Speed levers applied to torch models on load, each exact up to float rounding.

* :func:`fold_frozen_batchnorm` folds (frozen) batch-norms into the preceding convolution
  (DETR's and torchvision's ResNet backbones use ``FrozenBatchNorm2d``: at inference a
  per-channel affine map, which a convolution can absorb);
* :func:`prepare` puts a model in eval mode on its device, folded, channels-last on CPU, and
  on the CPU binds the gather form of multi-scale deformable attention
  (:mod:`visiontool.models.deformable_attention`).
"""
from __future__ import annotations

import re


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
        # only a norm in eval mode with running statistics and an affine map is a fixed per-channel
        # affine transform (BatchNorm2d(affine=False) has no weight; track_running_stats=False normalises
        # with the batch's own statistics; a training-mode norm updates its statistics)
        if getattr(bn, "training", False) or getattr(bn, "track_running_stats", True) is False:
            return None
        tensors = [getattr(bn, a, None) for a in ("weight", "bias", "running_mean", "running_var")]
        if not all(torch.is_tensor(t) for t in tensors):
            return None
        return (*tensors, getattr(bn, "eps", 1e-5))

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


def prepare(model, device: str, optimize: bool = True) -> dict:
    """Eval mode, batch-norms folded, moved to ``device``, channels-last on CPU (convolutional
    models run ~10-20 % faster there). Returns what was done (for ModelInfo.extra)."""
    import torch

    model.eval()
    info: dict = {}
    if optimize:
        info["folded_batchnorms"] = fold_frozen_batchnorm(model)
    model.to(torch.device(device))
    if optimize and str(device).startswith("cpu"):
        model.to(memory_format=torch.channels_last)
        info["channels_last"] = True
        from visiontool.models.deformable_attention import install

        n = install(model)
        if n:
            info["deformable_attention"] = f"embedding_bag x{n}"
    return info
