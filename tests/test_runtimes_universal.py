"""Mask2Former, MaskFormer, OneFormer and EoMT through ``--runtime openvino|onnxruntime``
(``runtimes.universal_export``): the records equal the torch path's (boxes within 0.05 px,
scores within 1e-4, masks equal but for pixels whose mask logit is 0 within float32 rounding),
a batch of two images included; a second command finds the cached export and exports nothing;
a failing export check is one line, exit 2, nothing cached; ``visiontool export`` of a
fixed-size model (EoMT) and ``--model DIR`` give the same records, as do Mask2Former and
OneFormer exported per processed size with ``--image-size`` (without it: one line, exit 2)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_helpers import one_error_line
from detector_helpers import small_photos
from runtimes_helpers import BOX_TOL, SCORE_TOL, detect_cli, records, torch_path_records
from visiontool.cli.main import app

runner = CliRunner()
FAMILIES = ("mask2former", "maskformer", "oneformer", "eomt")
RUNTIMES = ("onnxruntime", "openvino")
# pixels a mask may differ by: where the upsampled mask logit is 0 within float32 rounding
# (measured: 1 pixel of one 6,363-pixel Mask2Former mask, logits 5e-6 apart)
MASK_PIXELS = 0.001


def build_maskformer(path: Path, seed: int = 0) -> Path:
    """A tiny MaskFormer (Swin backbone, DETR decoder) with its processor, as hf_tiny_text builds the others."""
    import torch
    import transformers as T

    from hf_tiny import NAMES
    from hf_tiny_text import SIZE, _swin

    torch.manual_seed(seed)
    decoder = T.DetrConfig(d_model=32, encoder_layers=1, decoder_layers=1, encoder_ffn_dim=64, decoder_ffn_dim=64,
                           encoder_attention_heads=2, decoder_attention_heads=2, num_queries=10,
                           use_timm_backbone=False)
    cfg = T.MaskFormerConfig(backbone_config=_swin(("stage1", "stage2", "stage3", "stage4")), decoder_config=decoder,
                             fpn_feature_size=32, mask_feature_size=32, id2label=dict(NAMES),
                             label2id={v: k for k, v in NAMES.items()})
    model = T.AutoModelForUniversalSegmentation.from_config(cfg).eval()
    with torch.no_grad():  # spread the class scores so the best query wins its pixels
        for name, p in model.named_parameters():
            if name.endswith("class_predictor.weight"):
                p.normal_(0.0, 3.0 / p.shape[1] ** 0.5)
    model.save_pretrained(path)
    T.MaskFormerImageProcessor(size=SIZE).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from hf_tiny_text import build_universal

    d = tmp_path_factory.mktemp("universal-rt")
    return {f: build_maskformer(d / f) if f == "maskformer" else build_universal(f, d / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> list[str]:
    """Two photos of one size (one processed size: one export per family and runtime, a batch of 2).
    Grain 10, not 6: at 6 one flat region of dog.png gives the tiny OneFormer a mask logit of
    -9.6e-7, which OpenVINO computes as +3e-7, flipping one masked-attention decision (a score
    0.002 off; ``universal_export``'s docstring)."""
    d = small_photos(tmp_path_factory.mktemp("unrtphotos"), images_dir, grain=10.0)
    return [str(d / "dog.png"), str(d / "groceries.png")]


detect = detect_cli


@pytest.fixture(scope="module")
def torch_records(models, photos, tmp_path_factory):
    return torch_path_records(models, photos, tmp_path_factory.mktemp("unrt-torch"))


def entries(cache: Path) -> list[str]:
    root = cache / "exports"
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) if root.is_dir() else []


def decode(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})


def assert_same(want: list[dict], got: list[dict], least: int = 2) -> int:
    """Same images, same detections in order: label, score, box (the mask's extent) within
    tolerance, masks equal but for :data:`MASK_PIXELS` of their area. Returns the count."""
    assert [r["image"] for r in want] == [r["image"] for r in got]
    n = 0
    for ra, rb in zip(want, got):
        da, db = ra["detections"], rb["detections"]
        assert len(da) == len(db), (ra["image"], len(da), len(db))
        for x, y in zip(da, db):
            assert (x["label"], x["category_id"]) == (y["label"], y["category_id"]), (x, y)
            assert abs(x["score"] - y["score"]) <= SCORE_TOL, (x["score"], y["score"])
            assert max(abs(p - q) for p, q in zip(x["box"], y["box"])) <= BOX_TOL, (x["box"], y["box"])
            ma, mb = decode(x["segmentation"]), decode(y["segmentation"])
            assert ma.shape == mb.shape and ma.any()
            assert int((ma != mb).sum()) <= MASK_PIXELS * ma.sum(), int((ma != mb).sum())
            n += 1
    assert n >= least, n
    return n


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("family", FAMILIES)
def test_records_equal_torch_path(models, photos, torch_records, tmp_path, family, runtime):
    cache = tmp_path / "cache"
    r = detect(photos, models[family], "--runtime", runtime, cache=cache)
    assert r.exit_code == 0, r.stderr
    assert "exported" in r.stderr
    assert_same(torch_records[family], records(r.stdout))
    made = entries(cache)
    assert len(made) == 1, made  # one processed size: one export (batch dynamic: the pair runs as one batch)
    key = json.loads((cache / "exports" / made[0] / "entry.json").read_text())["key"]
    assert (key["family"], key["runtime"], key["batch"]) == (family, runtime, "dynamic")
    assert key["policy"] == ("fixed-size" if family == "eomt" else "per-shape") and len(key["weights"]) == 64
    r2 = detect(photos[:1], models[family], "--runtime", runtime, cache=cache)  # the cached export, no second one
    assert r2.exit_code == 0 and "export" not in r2.stderr, r2.stderr
    assert entries(cache) == made
    assert_same(torch_records[family][:1], records(r2.stdout), least=1)


def test_failed_check_is_one_line_and_not_cached(models, photos, tmp_path, monkeypatch):
    """An export whose outputs are not torch's (here: the engine's mask logits shifted) is refused."""
    from visiontool.models.runtimes import engines

    real = engines.open_engine

    def off(runtime, directory):
        engine = real(runtime, directory)
        return lambda inputs: [o + 0.01 for o in engine(inputs)]

    monkeypatch.setattr(engines, "open_engine", off)
    cache = tmp_path / "cache"
    r = detect(photos, models["eomt"], "--runtime", "onnxruntime", "-q", cache=cache)
    line = one_error_line(r)
    assert "does not reproduce torch" in line and "--runtime torch" in line
    assert entries(cache) == []


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_export_round_trip(models, photos, torch_records, tmp_path, runtime):
    """``visiontool export`` of a fixed-size model, then ``--model DIR``: the torch path's records."""
    out = tmp_path / "eomt-export"
    r = runner.invoke(app, ["export", str(models["eomt"]), "--runtime", runtime, "-o", str(out)],
                      env={"VISIONTOOL_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((out / "visiontool-export.json").read_text())
    assert (manifest["kind"], manifest["family"], manifest["shapes"]) == ("transformers-universal", "eomt", "128x128")
    r = detect(photos, out, cache=tmp_path / "cache")
    assert r.exit_code == 0, r.stderr
    assert_same(torch_records["eomt"], records(r.stdout))


@pytest.mark.parametrize("family", ["mask2former", "oneformer"])
def test_export_of_a_per_shape_model(models, photos, torch_records, tmp_path, family):
    """A processor that keeps the aspect ratio: without --image-size one line, exit 2, nothing
    written; with the photos' size, DIR holds that processed size's network and gives the torch
    path's records. OneFormer's DIR carries its class metadata: it loads with its source gone."""
    import shutil

    from PIL import Image

    env = {"VISIONTOOL_CACHE": str(tmp_path / "cache")}
    source = tmp_path / "source"
    shutil.copytree(models[family], source)
    if family == "oneformer":  # the processor reads its class metadata from repo_path: the copy's
        config = json.loads((source / "processor_config.json").read_text())
        config["image_processor"]["repo_path"] = str(source)
        (source / "processor_config.json").write_text(json.dumps(config))
    r = runner.invoke(app, ["export", str(source), "--runtime", "onnx", "-o", str(tmp_path / "o")], env=env)
    line = one_error_line(r)
    assert "once per processed image size" in line and "--image-size" in line and "--runtime onnxruntime" in line
    assert not (tmp_path / "o").exists()
    w, h = Image.open(photos[0]).size
    out = tmp_path / f"{family}-onnx"
    r = runner.invoke(app, ["export", str(source), "--runtime", "onnx", "-o", str(out), "--image-size", f"{h}x{w}"],
                      env=env)
    assert r.exit_code == 0, r.stderr
    manifest = json.loads((out / "visiontool-export.json").read_text())
    assert manifest["shapes"] == "per-shape" and len(manifest["sizes"]) == 1 and (out / manifest["sizes"][0]).is_dir()
    shutil.rmtree(source)
    r = detect(photos, out, cache=tmp_path / "cache")
    assert r.exit_code == 0, r.stderr
    assert_same(torch_records[family], records(r.stdout))
