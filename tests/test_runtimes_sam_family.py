"""``segment --model <transformers SAM family> --runtime openvino|onnxruntime``: the image encoder
(SAM, SAM-HQ, SAM 2, EdgeTAM; SAM 3's ViT backbone) exported with a static input, its features
within 1e-3 relative error of torch's on the same weights, the same masks through the CLI, the
export reused by a new process, runtime embeddings cached apart from torch ones, an export that
does not reproduce torch refused (exit 2, nothing cached). Videos: tests/test_sam_video_runtime.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sam_family_helpers import engine, image, iou, model_dirs_fixture, records, rle_mask, run_cli

from cli_helpers import assert_user_error

model_dirs = model_dirs_fixture()
REPO = Path(__file__).resolve().parents[1]
RUNTIMES = ("openvino", "onnxruntime")
FAMILIES = ("sam", "sam_hq", "sam2", "edgetam")
REL_TOL = 1e-3
IMG = image()


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory) -> Path:
    """One visiontool cache (exports) for the module: each family is exported once per runtime."""
    return tmp_path_factory.mktemp("rt-sam-family-cache")


@pytest.fixture(scope="module")
def photo(images_dir, tmp_path_factory) -> Path:
    from PIL import Image

    p = tmp_path_factory.mktemp("rt-sam-family") / "dog.png"
    im = Image.open(images_dir / "dog.jpg").convert("RGB")
    im.thumbnail((160, 160))
    im.save(p)
    return p


def _features(x) -> list[np.ndarray]:
    return [x] if isinstance(x, np.ndarray) else list(x)


def _rel(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(np.asarray(b, np.float64)))


def _segment(photo, model, cache_dir, *extra, export_cache=None):
    from visiontool.models import loader

    loader.release()  # each command loads its model (and finds its export on disk) as a new command would
    env = {"VISIONTOOL_CACHE": str(export_cache)} if export_cache is not None else {}
    from typer.testing import CliRunner

    from visiontool.cli.main import app

    args = ["segment", str(photo), "--model", str(model), "--point", "60,50", "--box", "20,15,130,100",
            "--multimask", "--device", "cpu", "-f", "jsonl", "--cache-dir", str(cache_dir), *extra]
    return CliRunner().invoke(app, args, env=env)


def _assert_same_masks(a: dict, b: dict) -> int:
    ma, mb = a["masks"], b["masks"]
    assert len(ma) == len(mb) >= 2
    for x, y in zip(ma, mb):
        assert x["prompt"] == y["prompt"]
        assert abs(x["score"] - y["score"]) <= 1e-3, (x["score"], y["score"])
        assert iou(rle_mask(x["segmentation"]), rle_mask(y["segmentation"])) >= 0.99
    return sum(0 < m["area"] < a["width"] * a["height"] for m in ma)


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("fam", FAMILIES)
def test_features_and_masks_equal_torch(model_dirs, photo, export_cache, tmp_path, monkeypatch, fam, runtime):
    from visiontool.models import loader

    path = model_dirs(fam)
    monkeypatch.setenv("VISIONTOOL_CACHE", str(export_cache))
    # the features the adapter caches (SAM 2 / EdgeTAM: s0, s1 and the embedding) against torch's
    ref = _features(engine(path, use_cache=False).encode(IMG))
    eng = engine(path, use_cache=False, runtime=runtime)
    assert eng.info.runtime == runtime and eng.info.backend == f"transformers+{runtime}"
    got = _features(eng.encode(IMG))
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert len(got) == {"sam": 1, "sam_hq": 2}.get(fam, 3)
    for g, r in zip(got, ref):
        assert _rel(g, r) <= REL_TOL
    # the CLI: the same masks as --runtime torch; the embedding cache keeps the two apart
    emb = tmp_path / "emb"
    t = _segment(photo, path, emb, "--runtime", "torch", export_cache=export_cache)
    assert t.exit_code == 0, t.stderr
    r = _segment(photo, path, emb, "--runtime", runtime, export_cache=export_cache)
    assert r.exit_code == 0, r.stderr
    assert f"({runtime})" in r.stderr and "encoding" in r.stderr  # not torch's cache entry
    assert _assert_same_masks(records(t.stdout)[0], records(r.stdout)[0]) >= 1
    for rt, first in (("torch", t), (runtime, r)):  # each finds its own entry now
        again = _segment(photo, path, emb, "--runtime", rt, export_cache=export_cache)
        assert again.exit_code == 0, again.stderr
        assert "encoding" not in again.stderr and "export" not in again.stderr
        assert again.stdout == first.stdout
    loader.release()


def test_a_new_process_finds_the_export(model_dirs, photo, tmp_path):
    path = model_dirs("sam2")
    cache = tmp_path / "cache"
    first = _segment(photo, path, tmp_path / "emb1", "--runtime", "onnxruntime", export_cache=cache)
    assert first.exit_code == 0, first.stderr
    assert f"exported {path} image encoder to onnxruntime in" in first.stderr  # with its time
    env = {**os.environ, "VISIONTOOL_CACHE": str(cache), "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "visiontool", "segment", str(photo), "--model", str(path), "--point", "60,50",
           "--box", "20,15,130,100", "--multimask", "--device", "cpu", "-f", "jsonl",
           "--cache-dir", str(tmp_path / "emb2"), "--runtime", "onnxruntime"]
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "encoding" in second.stderr  # a fresh embedding cache: the encoder ran, from the cached export
    assert "exporting" not in second.stderr
    assert second.stdout == first.stdout
    assert len(list((cache / "exports").iterdir())) == 1  # one entry, no temporary leftovers


def test_an_export_that_does_not_reproduce_torch_is_refused_not_cached(model_dirs, photo, tmp_path, monkeypatch):
    from visiontool.models.runtimes import sam_export

    monkeypatch.setattr(sam_export, "REL_TOL", -1.0)  # every export now "fails" the check against torch
    cache = tmp_path / "cache"
    r = _segment(photo, model_dirs("sam"), tmp_path / "emb", "--runtime", "onnxruntime", export_cache=cache)
    line = assert_user_error(r, 2, "does not reproduce torch", "--runtime torch")
    assert "relative error" in line
    assert not list((cache / "exports").iterdir())  # no entry, no temporary leftovers
    assert not list((tmp_path / "emb").rglob("*.npy"))


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_sam3_backbone_in_the_runtime(model_dirs, export_cache, monkeypatch, runtime):
    """SAM 3: the ViT backbone is exported; the tracker's features (points, boxes) and the
    concept segmentation (--text) read it as they read torch's."""
    from visiontool.models import loader

    path = model_dirs("sam3_video")
    monkeypatch.setenv("VISIONTOOL_CACHE", str(export_cache))
    tor = engine(path, use_cache=False)
    rt = engine(path, use_cache=False, runtime=runtime)
    for g, r in zip(_features(rt.encode(IMG)), _features(tor.encode(IMG))):
        assert _rel(g, r) <= REL_TOL
    a = tor.segment_text(IMG, ["bus", "truck"], threshold=0.3)
    b = rt.segment_text(IMG, ["bus", "truck"], threshold=0.3)
    assert len(a) == len(b) >= 1
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-3)
    for x, y in zip(a.masks, b.masks):
        assert iou(rle_mask(x), rle_mask(y)) >= 0.99
    loader.release()


@pytest.mark.parametrize("args,needle", [
    (["--device", "cpu", "--dtype", "float16", "--runtime", "openvino"], "runs float32 exports only"),
    (["--device", "cpu", "--dtype", "bfloat16", "--runtime", "onnxruntime"], "runs float32 exports only"),
    (["--device", "cuda", "--runtime", "openvino"], "cuda"),
])
def test_runtime_usage_errors(model_dirs, photo, args, needle):
    r = run_cli(["segment", photo, "--model", model_dirs("sam"), "--point", "10,10", *args])
    assert_user_error(r, 2, needle)  # (a float16-on-CPU warning may precede the error line)
