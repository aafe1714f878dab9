"""Batch-norm folding (``visiontool.models.optimize.fold_frozen_batchnorm``, used when detect
loads a DETR) against the unfolded model: the same outputs (1e-4) and the expected number of
folded norms, on torchvision ResNets and on the tiny DETR of ``detr_helpers`` (issue 8 §4).

(Filed under ``test_sam_*`` only because of how this round's work was split among helpers.)
Norm statistics and affine parameters are made non-trivial first (from data, or random): a
freshly initialised norm is the identity, and folding it would prove nothing.
"""
from __future__ import annotations

import copy

import pytest

from visiontool.models.optimize import fold_frozen_batchnorm


def _randomise_norms(model, seed: int = 0) -> int:
    import torch

    g = torch.Generator().manual_seed(seed)
    n = 0
    with torch.no_grad():
        for m in model.modules():
            if "batchnorm" in type(m).__name__.lower():
                c = m.running_mean.numel()
                m.weight.copy_(torch.rand(c, generator=g) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.1)
                n += 1
    return n


def _norms(model) -> int:
    return sum("batchnorm" in type(m).__name__.lower() for m in model.modules())


def _calibrated_resnet(arch: str, frozen: bool):
    """A torchvision ResNet whose norm statistics come from data (so activations stay at a
    sane scale through 50 layers) and whose affine parameters are random."""
    import torch
    import torchvision
    from torchvision.ops.misc import FrozenBatchNorm2d

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 96, 80))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features) + 0.5)
                m.bias.copy_(torch.randn(m.num_features) * 0.2)
    model.eval()
    if not frozen:
        return model
    twin = getattr(torchvision.models, arch)(weights=None, norm_layer=FrozenBatchNorm2d).eval()
    missing, unexpected = twin.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.endswith("num_batches_tracked") for k in unexpected)
    return twin


@pytest.mark.parametrize("arch, frozen, expected, atol", [
    ("resnet18", False, 20, 1e-4),  # stem + 8 basic blocks x 2 + 3 downsample branches
    ("resnet18", True, 20, 1e-4),
    # stem + 16 bottlenecks x 3 + 4 downsample branches. Outputs reach ~270 and float32 alone
    # is ~3e-4 off float64 there, so this one is judged against float64 only
    ("resnet50", False, 53, None),
])
def test_torchvision_resnet(arch, frozen, expected, atol):
    import torch

    model = _calibrated_resnet(arch, frozen)
    assert _norms(model) == expected
    folded = copy.deepcopy(model)
    assert fold_frozen_batchnorm(folded) == expected
    assert _norms(folded) == 0
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        want, got = model(x), folded(x)
        exact = copy.deepcopy(model).double()(x.double()).float()
    scale = float(want.abs().max())
    assert 1e-2 < scale < 1e3, "degenerate output: the comparison would prove nothing"
    if atol is not None:
        torch.testing.assert_close(got, want, rtol=1e-4, atol=atol)
    # folding adds no error beyond float32 rounding: the folded model is as close to the
    # float64 evaluation of the unfolded one as the unfolded float32 model is
    err_folded, err_plain = float((got - exact).abs().max()), float((want - exact).abs().max())
    assert err_folded <= 2 * err_plain + 1e-6 * scale, (err_folded, err_plain)


def test_norms_not_after_a_conv_are_left_alone():
    """A norm after a ReLU, or after a conv of another width, is not folded."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.conv2 = nn.Conv2d(8, 4, 1)
            self.bn2 = nn.BatchNorm2d(8)  # not conv2's width: applied to conv1's output below
            self.tail = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.BatchNorm2d(8))

        def forward(self, x):
            y = self.bn1(self.conv1(x))
            return self.tail(self.bn2(y)), self.conv2(y)

    torch.manual_seed(0)
    model = Block().eval()
    _randomise_norms(model)
    folded = copy.deepcopy(model)
    assert fold_frozen_batchnorm(folded) == 1  # only conv1 -> bn1
    assert isinstance(folded.bn2, nn.BatchNorm2d) and isinstance(folded.tail[2], nn.BatchNorm2d)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        for a, b in zip(model(x), folded(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_detr_random_norms(tmp_path_factory):
    """The tiny DETR with non-trivial frozen norms, saved like a hub checkpoint."""
    from detr_helpers import build_tiny_detr
    from transformers import AutoModelForObjectDetection, DetrImageProcessor

    base = build_tiny_detr(tmp_path_factory.mktemp("detr") / "tiny")
    model = AutoModelForObjectDetection.from_pretrained(base).eval()
    assert _randomise_norms(model, seed=1) == 20  # timm resnet18 inside DETR: frozen norms
    out = tmp_path_factory.mktemp("detr_bn") / "tiny"
    model.save_pretrained(out)
    DetrImageProcessor().save_pretrained(out)
    return out


def test_tiny_detr_folded_equals_unfolded(tiny_detr_random_norms, images_dir):
    import torch
    from PIL import Image

    from visiontool.models import loader
    from visiontool.device import Precision
    from visiontool.models.hf_detection import HFDetector

    loader.release()
    plain = HFDetector.load(str(tiny_detr_random_norms), "cpu", Precision("float32", "cpu"), optimize=False)
    fast = HFDetector.load(str(tiny_detr_random_norms), "cpu", Precision("float32", "cpu"), optimize=True)
    assert fast.info.extra["folded_batchnorms"] == 20
    assert _norms(plain.model) == 20 and _norms(fast.model) == 0
    with Image.open(images_dir / "dog.jpg") as im:
        inputs = plain.processor(images=im.convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        want = plain.model(**inputs)
        got = fast.model(**inputs)
    for key in ("logits", "pred_boxes"):
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-4)
    feats_differ = want["logits"].std(dim=1).mean()
    assert feats_differ > 1e-3, "queries gave identical outputs: the comparison would prove nothing"
    loader.release()
