"""Every transformers DETR family of ``hf_tiny`` through ``--runtime openvino|onnxruntime``
(DETR itself in ``test_runtimes_detr.py``):
the records equal the torch path's (boxes within 0.05 px, scores within 1e-4), batch 2 included
(RT-DETR, RT-DETR v2, D-FINE and DEIMv2 are exported at batch 1 and called image by image);
the families that cannot be exported are one line, exit 2, nothing cached."""
from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import assert_user_error
from detector_helpers import small_photos
from hf_tiny import FAMILIES, build_detector
from runtimes_helpers import assert_same_detections_unordered, records
from visiontool.cli.main import app

runner = CliRunner()
RUNTIMES = ("openvino", "onnxruntime")
# (family, runtime) -> what the one error line says
REFUSED = {("deformable_detr", "openvino"): "does not reproduce torch",
           ("deformable_detr", "onnxruntime"): "does not reproduce torch",
           ("rf_detr", "onnxruntime"): "the export failed"}  # aten::_upsample_bicubic2d_aa at opset 17


# DETR itself: tests/test_runtimes_detr.py (cache, corruption, extras, compare)
TESTED = tuple(f for f in FAMILIES if f != "detr")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("detr-families")
    return {f: build_detector(f, d / f.replace("-", "_")) for f in TESTED}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> list[str]:
    d = small_photos(tmp_path_factory.mktemp("famphotos"), images_dir)
    return [str(p) for p in sorted(d.glob("*.png"))]


def detect(photos, model, *extra, cache: Path):
    from visiontool.models import loader

    loader.release()  # each run loads (and finds its export) as a new command would
    return runner.invoke(app, ["detect", *photos, "--model", str(model), "--device", "cpu", "-f", "jsonl",
                               "--threshold", "0.0", "--batch-size", "2", *extra],
                         env={"VISIONTOOL_CACHE": str(cache)})


@pytest.fixture(scope="module")
def torch_records(models, photos, tmp_path_factory):
    cache = tmp_path_factory.mktemp("famcache-torch")
    out = {}
    for family, model in models.items():
        r = detect(photos, model, cache=cache)
        assert r.exit_code == 0, (family, r.stderr)
        out[family] = records(r.stdout)
    return out


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", TESTED)
def test_family_records_equal_torch_path(models, photos, torch_records, tmp_path, family, runtime):
    cache = tmp_path / "cache"
    r = detect(photos, models[family], "--runtime", runtime, cache=cache)
    if (family, runtime) in REFUSED:
        assert_user_error(r, 2, REFUSED[family, runtime], "--runtime torch")
        assert not (cache / "exports").exists() or not [p for p in (cache / "exports").iterdir()
                                                         if not p.name.startswith((".", "locks"))]
        return
    assert r.exit_code == 0, r.stderr
    assert "exported" in r.stderr
    assert_same(torch_records[family], records(r.stdout))
    r2 = detect(photos[:1], models[family], "--runtime", runtime, cache=cache)  # the cached export, no second one
    assert r2.exit_code == 0 and "export" not in r2.stderr, r2.stderr
    assert_same(torch_records[family][:1], records(r2.stdout))


def assert_same(want: list[dict], got: list[dict]) -> None:
    """Same images, each with the same detections (random weights: near-tied scores may swap)."""
    assert [r["image"] for r in want] == [r["image"] for r in got]
    n = sum(assert_same_detections_unordered(a["detections"], b["detections"]) for a, b in zip(want, got))
    assert n >= 10, n  # threshold 0: every kept query of every photo compared


@pytest.mark.parametrize("family", ["rt_detr", "d_fine"])
def test_batch_one_family_export_round_trip(models, photos, torch_records, tmp_path, family):
    """``visiontool export`` of a batch-1 family: ``--model DIR`` reads the static batch from the
    export itself and runs a batch of 2 image by image, with the torch path's records."""
    out = tmp_path / f"{family}-onnx"
    r = runner.invoke(app, ["export", str(models[family]), "--runtime", "onnx", "-o", str(out)],
                      env={"VISIONTOOL_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.stderr
    r = detect(photos, out, cache=tmp_path / "cache")
    assert r.exit_code == 0, r.stderr
    assert_same(torch_records[family], records(r.stdout))


def test_export_check_matches_queries_in_any_order():
    """Proposals whose scores tie within rounding swap places in a two-stage detector's top-k:
    the check accepts a permutation of queries, nothing else."""
    import numpy as np

    from visiontool.models.runtimes.hf_export import query_difference

    rng = np.random.default_rng(0)
    logits, boxes = rng.normal(size=(2, 30, 5)).astype(np.float32), rng.random((2, 30, 4), dtype=np.float32)
    perm = np.arange(30)
    perm[[7, 8]] = perm[[8, 7]]
    swapped = [logits[:, perm] + 1e-6, boxes[:, perm]]
    assert query_difference([logits, boxes], swapped, 1e-3) <= 2e-6
    changed = [logits.copy(), boxes.copy()]
    changed[1][1, 4, 2] += 0.01  # one box moved: not a permutation
    assert query_difference([logits, boxes], changed, 1e-3) > 1e-3
    keep = [0, 0, 0] + list(range(3, 30))  # queries 1 and 2 replaced by copies of query 0
    assert query_difference([logits, boxes], [logits[:, keep], boxes[:, keep]], 1e-3) == float("inf")
