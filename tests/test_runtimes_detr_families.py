"""Every transformers DETR family of ``hf_tiny`` through ``--runtime openvino|onnxruntime``
(DETR itself in ``test_runtimes_detr.py``):
the records equal the torch path's (boxes within 0.05 px, scores within 1e-4), batch 2 included
(RT-DETR, RT-DETR v2, D-FINE and DEIMv2 are exported at batch 1 and called image by image);
the families that cannot be exported are one line, exit 2, nothing cached. Deformable DETR, and
RT-DETR with a processor that does not fix the size, are exported once per processed size
(``runtimes.hf_shapes``): two sizes, a batch of two images of one size split, a second command
finding every export cached, ``visiontool export --image-size`` writing a network per size."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import assert_user_error, one_error_line
from detector_helpers import small_photos
from hf_tiny import FAMILIES, build_detector
from runtimes_helpers import assert_same_unordered, detect_cli, records, torch_path_records
from visiontool.cli.main import app

runner = CliRunner()
RUNTIMES = ("openvino", "onnxruntime")
# (family, runtime) -> what the one error line says
REFUSED = {("rf_detr", "onnxruntime"): "the export failed"}  # aten::_upsample_bicubic2d_aa at opset 17


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


detect = detect_cli


@pytest.fixture(scope="module")
def torch_records(models, photos, tmp_path_factory):
    return torch_path_records(models, photos, tmp_path_factory.mktemp("famcache-torch"))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", [f for f in TESTED if f != "deformable_detr"])  # per-shape: below
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
    assert_same_unordered(want, got, least=10)  # threshold 0: every kept query of every photo compared


@pytest.mark.parametrize("family", ["rt_detr", "d_fine"])
def test_batch_one_family_export_round_trip(models, photos, torch_records, tmp_path, family):
    """``visiontool export`` of a batch-1 family: ``--model DIR`` reads the static batch from the
    export itself and runs a batch of 2 image by image, with the torch path's records."""
    out = tmp_path / f"{family}-onnx"
    r = runner.invoke(app, ["export", str(models[family]), "--runtime", "onnx", "-o", str(out)],
                      env={"VISIONTOOL_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((out / "visiontool-export.json").read_text())
    assert manifest["batch"] == 1 and re.fullmatch(r"\d+x\d+", manifest["shapes"]), manifest  # static, as exported
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


# ----------------------------------------------------------------------------- per-shape exports
# dog and groceries share a processed size (128x191 at 128-192 px), dogs has another (108x192):
# in this order, batch 2 puts the first two in one forward pass of a batch-1 export (split)
PER_SHAPE_PHOTOS = ("dog.png", "groceries.png", "dogs.png")
PER_SHAPE_SIZES = {"128x191", "108x192"}


@pytest.fixture(scope="module")
def shape_photos(photos) -> list[str]:
    by_name = {Path(p).name: p for p in photos}
    return [by_name[n] for n in PER_SHAPE_PHOTOS]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One export cache for the per-shape tests (the autouse fixture gives each test a fresh one)."""
    return tmp_path_factory.mktemp("famcache-shapes")


def in_order(recs: list[dict], photos: list[str]) -> list[dict]:
    by_image = {r["image"]: r for r in recs}
    return [by_image[p] for p in photos]


def per_shape_entries(cache: Path, runtime: str) -> dict[str, dict]:
    """The cache's per-shape export entries for ``runtime``: shape -> key fields."""
    import json

    out = {}
    for entry in (cache / "exports").glob("*/entry.json"):
        key = json.loads(entry.read_text())["key"]
        if key.get("policy") == "per-shape" and key["runtime"] == runtime:
            assert key["shapes"] not in out, key
            out[key["shapes"]] = key
    return out


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_deformable_detr_exported_per_shape(models, shape_photos, torch_records, shared_cache, runtime):
    want = in_order(torch_records["deformable_detr"], shape_photos)
    r = detect(shape_photos, models["deformable_detr"], "--runtime", runtime, cache=shared_cache)
    assert r.exit_code == 0, r.stderr
    exported = [ln for ln in r.stderr.splitlines() if ln.startswith("exported ")]
    assert len(exported) == 2 and {ln.split(" at ")[1].split()[0] for ln in exported} == PER_SHAPE_SIZES, r.stderr
    assert_same(want, records(r.stdout))
    keys = per_shape_entries(shared_cache, runtime)
    assert set(keys) == PER_SHAPE_SIZES and all(k["batch"] == 1 for k in keys.values()), keys
    # a new command (new loader state) finds both exports cached: nothing is exported again
    r2 = detect(shape_photos, models["deformable_detr"], "--runtime", runtime, cache=shared_cache)
    assert r2.exit_code == 0 and "exporting" not in r2.stderr, r2.stderr
    assert_same(want, records(r2.stdout))


def test_deformable_detr_per_shape_engines(models, shape_photos, shared_cache, monkeypatch):
    """The Python API: one engine per processed size, opened when the size is first met (from
    the cache the test above filled; exported when this test runs alone)."""
    from PIL import Image

    from visiontool.models import loader, registry
    from visiontool.models.runtimes.hf_shapes import PerShapeHFDetector

    monkeypatch.setenv("VISIONTOOL_CACHE", str(shared_cache))
    loader.release()
    det = registry.load_detector(str(models["deformable_detr"]), "cpu", "float32", runtime="onnxruntime")
    assert isinstance(det, PerShapeHFDetector) and det.engines == {}  # nothing opened before a size is met
    det.predict([Image.open(p).convert("RGB") for p in shape_photos])
    assert set(det.engines) == {(128, 191), (108, 192)}
    loader.release()


def test_deformable_detr_export_dir_per_size(models, shape_photos, torch_records, tmp_path):
    """``visiontool export --image-size``: one network per processed size of the sizes named, in
    a folder each; ``--model DIR`` gives the torch path's records for those sizes and refuses an
    image processed to another, one line, exit 2. Without --image-size: refused, nothing written."""
    from PIL import Image

    env = {"VISIONTOOL_CACHE": str(tmp_path / "cache")}
    refused = tmp_path / "refused"
    r = runner.invoke(app, ["export", str(models["deformable_detr"]), "--runtime", "onnx", "-o", str(refused)], env=env)
    line = one_error_line(r, 2)
    assert "once per processed image size" in line and "--image-size" in line and "--runtime onnxruntime" in line
    assert not refused.exists()
    r = runner.invoke(app, ["export", str(models["deformable_detr"]), "--runtime", "onnx", "-o", str(refused),
                            "--image-size", "640"], env=env)
    assert "--image-size '640'" in one_error_line(r, 2) and not refused.exists()

    out = tmp_path / "deformable-onnx"
    sizes = [f"{h}x{w}" for w, h in (Image.open(p).size for p in shape_photos)]
    r = runner.invoke(app, ["export", str(models["deformable_detr"]), "--runtime", "onnx", "-o", str(out),
                            *[a for s in sizes for a in ("--image-size", s)]], env=env)
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((out / "visiontool-export.json").read_text())
    assert manifest["shapes"] == "per-shape" and set(manifest["sizes"]) == PER_SHAPE_SIZES, manifest
    assert sorted(manifest["image_sizes"]) == sorted(set(sizes))
    assert {p.name for p in out.iterdir() if p.is_dir()} == PER_SHAPE_SIZES
    r = detect(shape_photos, out, cache=tmp_path / "cache")
    assert r.exit_code == 0, r.stderr
    assert_same(in_order(torch_records["deformable_detr"], shape_photos), records(r.stdout))

    square = tmp_path / "square.png"
    Image.open(shape_photos[0]).resize((150, 150)).save(square)
    r = detect([str(square)], out, cache=tmp_path / "cache")
    line = one_error_line(r, 2)
    assert "processed to 128x128" in line and "--image-size" in line and all(s in line for s in PER_SHAPE_SIZES)


def test_rt_detr_without_fixed_size_exported_per_shape(models, shape_photos, tmp_path):
    """RT-DETR (a batch-1 family) whose processor resizes by shortest/longest edge: per-shape
    exports, equal to its torch path (one runtime: onnxruntime exports fastest). Its feature
    pyramid needs sizes divisible by 32 (in torch too): photos of 3:2 and 2:1 give 128x192 and
    96x192."""
    import shutil

    from PIL import Image
    from transformers import RTDetrImageProcessor

    from hf_tiny import SMALL_SIZE

    model = tmp_path / "rt-detr-edges"
    shutil.copytree(models["rt_detr"], model)
    RTDetrImageProcessor(size=SMALL_SIZE).save_pretrained(model)  # no fixed size: one shape per aspect ratio
    photos = []
    for src, size in zip(shape_photos, [(192, 128), (192, 128), (192, 96)]):
        photos.append(str(tmp_path / Path(src).name))
        Image.open(src).resize(size, Image.BILINEAR).save(photos[-1])
    torch_run = detect(photos, model, cache=tmp_path / "cache")
    assert torch_run.exit_code == 0, torch_run.stderr
    r = detect(photos, model, "--runtime", "onnxruntime", cache=tmp_path / "cache")
    assert r.exit_code == 0, r.stderr
    assert_same(records(torch_run.stdout), records(r.stdout))
    assert set(per_shape_entries(tmp_path / "cache", "onnxruntime")) == {"128x192", "96x192"}
