"""The open-vocabulary OWL-ViT and OWLv2 through ``--runtime openvino|onnxruntime``: the
records equal the torch path's for the same ``--text`` (boxes within 0.05 px, scores within
1e-4), batch 2 included; the phrases are an input of the export, so a second command with
other phrases (and another number of them) finds the export cached and still gives the torch
path's records. ``visiontool export`` of them and ``--model DIR --text``:
``test_runtimes_zero_shot_export.py`` (Grounding DINO without an exporter: ``test_runtimes_detr.py``)."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from detector_helpers import small_photos
from hf_tiny_text import build_zero_shot
from runtimes_helpers import assert_same_unordered, records
from visiontool.cli.main import app

runner = CliRunner()
FAMILIES = ("owlv2", "owlvit")
RUNTIMES = ("openvino", "onnxruntime")
TEXTS = ("cat, dog, a person", "a red car, tree")  # the second: other phrases, another count


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("owl")
    return {f: build_zero_shot(f, d / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> list[str]:
    d = small_photos(tmp_path_factory.mktemp("owlphotos"), images_dir)
    return [str(p) for p in sorted(d.glob("*.png"))]


def detect(photos, model, text, *extra, cache: Path):
    from visiontool.models import loader

    loader.release()  # each run loads (and finds its export) as a new command would
    return runner.invoke(app, ["detect", *photos, "--model", str(model), "--text", text, "--device", "cpu",
                               "-f", "jsonl", "--threshold", "0.0", "--batch-size", "2", *extra],
                         env={"VISIONTOOL_CACHE": str(cache)})


@pytest.fixture(scope="module")
def torch_records(models, photos, tmp_path_factory):
    cache = tmp_path_factory.mktemp("owlcache-torch")
    out = {}
    for family, model in models.items():
        for text in TEXTS:
            r = detect(photos, model, text, cache=cache)
            assert r.exit_code == 0, (family, r.stderr)
            out[family, text] = records(r.stdout)
    return out


def assert_same(want: list[dict], got: list[dict]) -> None:
    assert_same_unordered(want, got, least=10)  # threshold 0: every patch's box of every photo compared


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", FAMILIES)
def test_owl_records_equal_torch_path_for_any_text(models, photos, torch_records, tmp_path, family, runtime):
    cache = tmp_path / "cache"
    r = detect(photos, models[family], TEXTS[0], "--runtime", runtime, cache=cache)
    assert r.exit_code == 0, r.stderr
    assert "exported" in r.stderr
    got = records(r.stdout)
    assert {d["label"] for rec in got for d in rec["detections"]} == {"cat", "dog", "a person"}
    assert_same(torch_records[family, TEXTS[0]], got)
    # other phrases, another count of them: the same export (no second one), the torch path's records
    r2 = detect(photos, models[family], TEXTS[1], "--runtime", runtime, cache=cache)
    assert r2.exit_code == 0 and "export" not in r2.stderr, r2.stderr
    assert_same(torch_records[family, TEXTS[1]], records(r2.stdout))
    entries = [p for p in (cache / "exports").iterdir() if not p.name.startswith((".", "locks"))]
    assert len(entries) == 1, entries


def test_export_check_allows_float32_rounding_and_nothing_more():
    """Large activations (random weights reach logits of 5,000) put torch's own float32 result
    visibly off the float64 one: an engine as far off as that passes, one further off does not."""
    import numpy as np
    import torch

    from visiontool.models.runtimes.zs_export import mismatch

    class Amplifier(torch.nn.Module):  # (B, P, Q) "logits" of magnitude ~1e5, and boxes in [0, 1]
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(512, 3, generator=torch.Generator().manual_seed(0)) * 300)

        def forward(self, pixel_values, input_ids, attention_mask):
            return (pixel_values * 30) @ self.w + 0 * input_ids.sum(), torch.sigmoid(pixel_values[..., :4])

    net = Amplifier().eval()
    probe = (torch.randn(2, 16, 512, generator=torch.Generator().manual_seed(1)),
             torch.ones(6, 4, dtype=torch.long), torch.ones(6, 4, dtype=torch.long))
    with torch.inference_mode():
        want = [t.numpy() for t in net(*probe)]
        exact = [t.numpy() for t in net.double()(probe[0].double(), probe[1], probe[2])]
    net.float()
    own = float(np.abs(want[0] - exact[0]).max())
    assert own > 1e-3  # the float32 rounding this test is about
    # an engine as close to float64 as torch's float32 is (here: the float64 result itself)
    assert mismatch(net, probe, [exact[0].astype(np.float32), want[1]]) is None
    off = want[0].copy()
    off[0, 0, 0] += 10 * own + 1
    why = mismatch(net, probe, [off, want[1]])
    assert why is not None and "against float64" in why
    assert "shapes differ" in mismatch(net, probe, [want[0][:, :5], want[1]])
