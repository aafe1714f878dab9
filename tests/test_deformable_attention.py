"""The gather form of multi-scale deformable attention (models/deformable_attention.py) against
every transformers family's own ``MultiScaleDeformableAttention`` module, and its binding on load."""
from __future__ import annotations

import importlib

import pytest
import torch

from visiontool.models import deformable_attention as da

FAMILIES = ["deformable_detr", "grounding_dino", "mm_grounding_dino", "omdet_turbo", "rt_detr", "lw_detr", "rf_detr"]
SHAPES = [(20, 30), (10, 15), (5, 8), (3, 4)]


def _inputs(batch: int, queries: int, dtype=torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch, total, 8, 32, generator=g, dtype=dtype)
    # locations reach past every border (zero padding), land on pixel centres and on exact edges
    loc = torch.rand(batch, queries, 8, 4, 4, 2, generator=g, dtype=dtype) * 1.6 - 0.3
    loc[:, :3] = torch.tensor([0.0, 1.0, 0.5], dtype=dtype).view(1, 3, 1, 1, 1, 1)
    loc[:, 3:5] = torch.tensor([-1e12, 1e12], dtype=dtype).view(1, 2, 1, 1, 1, 1)  # far off: zeros, no overflow
    weights = torch.rand(batch, queries, 8, 4, 4, generator=g, dtype=dtype)
    shapes = torch.tensor(SHAPES)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    return value, shapes, SHAPES, starts, loc, weights, 64


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("batch", [1, 2])
def test_same_output_as_the_family_module(family, batch):
    cls = importlib.import_module(f"transformers.models.{family}.modeling_{family}").MultiScaleDeformableAttention
    module = cls()
    args = _inputs(batch, 37, seed=batch)
    with torch.inference_mode():
        want = module(*args)
        assert da.install(module) == 1
        got = module(*args)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5), (got - want).abs().max()
    assert not torch.equal(got, torch.zeros_like(got))


def test_float64_and_the_fallback_for_other_dtypes(monkeypatch):
    cls = importlib.import_module("transformers.models.grounding_dino.modeling_grounding_dino"
                                  ).MultiScaleDeformableAttention
    module = cls()
    ref = cls.forward
    da.install(module)
    calls = []

    def spy(self, *args):
        calls.append(args[0].dtype)
        return ref(self, *args)

    monkeypatch.setattr(cls, "forward", spy)
    with torch.inference_mode():
        args64 = _inputs(1, 11, dtype=torch.float64)
        assert torch.allclose(module(*args64), ref(module, *args64), atol=1e-12)
        assert calls == []  # float64 on the CPU: the gather path
        # bfloat16 is not: the module's own forward runs (whose CPU grid_sample in bf16 is not even
        # deterministic in torch 2.14, so only the route is checked)
        module(*_inputs(1, 11, dtype=torch.bfloat16))
        assert calls == [torch.bfloat16]


def test_bound_on_load_and_released_for_export(tmp_path):
    from hf_tiny import build_detector
    from visiontool.models import registry

    path = build_detector("deformable_detr", tmp_path / "deformable")
    det = registry.load_detector(str(path), "cpu", "float32")
    modules = [m for m in det.model.modules() if type(m).__name__ == da.CLASS_NAME]
    assert modules and det.info.extra.get("deformable_attention") == f"embedding_bag x{len(modules)}"
    assert all("forward" in m.__dict__ for m in modules)
    with da.original_forward(det.model):
        assert not any("forward" in m.__dict__ for m in modules)
    assert all("forward" in m.__dict__ for m in modules)
