"""``visiontool export`` for torchvision detectors and Ultralytics YOLO: the directory is a
deployable artefact — ``detect --model DIR`` loads it without the source model (its weights
file moved away, an empty visiontool cache) and gives the records of ``--runtime X`` on the
source (boxes within 0.05 px, scores within 1e-4, matched order-free as random heads give
near-tied scores); the manifest says how to rebuild the model; a damaged file is one line."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import chdir, contextmanager
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import assert_user_error
from detector_helpers import build_yolo, save_torchvision, small_photos
from runtimes_helpers import assert_same_detections_unordered, gt_from_records, records
from visiontool.cli.main import app

runner = CliRunner()
FAST = "fasterrcnn_mobilenet_v3_large_320_fpn"
RUNTIMES = {"openvino": "openvino", "onnx": "onnxruntime"}  # export name -> runtime name
FAMILIES = ("torchvision", "ultralytics")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> Path:
    return small_photos(tmp_path_factory.mktemp("rtxdphotos"), images_dir)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, photos) -> dict[str, tuple[str, Path]]:
    """family -> (spec, the weights file it reads)."""
    import importlib.util

    images = [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]
    d = tmp_path_factory.mktemp("rtxdmodels")
    for sub in ("tv", "yolo"):  # each weights file alone in its directory (nothing may appear beside it)
        (d / sub).mkdir()
    tv, _ = save_torchvision(FAST, d / "tv" / "frcnn.pth", images=images)
    out = {"torchvision": (f"torchvision:{FAST}:{tv}", tv)}
    if importlib.util.find_spec("ultralytics") is not None:
        y = build_yolo("yolov8n.yaml", d / "yolo" / "yolov8n-tiny.pt", images)
        out["ultralytics"] = (f"ultralytics:{y}", y)
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """An empty working directory for every CLI call: nothing may be written into it."""
    return tmp_path_factory.mktemp("rtxdcwd")


@pytest.fixture(scope="module")
def exports(sources, tmp_path_factory, workdir) -> dict[tuple[str, str], Path]:
    """(family, export name) -> the directory ``visiontool export`` wrote (once per module)."""
    base = tmp_path_factory.mktemp("rtxdexports")
    made = {}
    with chdir(workdir):
        for family, (spec, weights) in sources.items():
            before = sorted(os.listdir(weights.parent))
            for name in RUNTIMES:
                out = base / f"{family}-{name}"
                r = runner.invoke(app, ["export", spec, "--runtime", name, "-o", str(out)],
                                  env={"VISIONTOOL_CACHE": str(base / "cache")})
                assert r.exit_code == 0, r.stderr
                assert r.stdout == "" and f"exported {spec} to {out}" in r.stderr
                made[family, name] = out
            assert sorted(os.listdir(weights.parent)) == before  # nothing next to the weights
        assert os.listdir(workdir) == []
    assert not (base / "cache" / "exports").exists()  # export writes DIR only, not the cache
    assert not [p for p in base.iterdir() if ".tmp-" in p.name]
    return made




@contextmanager
def moved_away(weights: Path):
    """The source weights are not where the spec says while the export is used."""
    hidden = weights.with_name(weights.name + ".hidden")
    weights.rename(hidden)
    try:
        yield
    finally:
        hidden.rename(weights)


def detect(photos: Path, model, *extra, cache: Path):
    from visiontool.models import loader

    loader.release()
    return runner.invoke(app, ["detect", str(photos), "--model", str(model), "--device", "cpu", "-f", "jsonl",
                               "--threshold", "0.3", "--batch-size", "2", *extra],
                         env={"VISIONTOOL_CACHE": str(cache)})


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(RUNTIMES))
def test_export_round_trip_equals_runtime_path(sources, exports, photos, workdir, tmp_path, family, name):
    if family not in sources:
        pytest.skip("extra [yolo] not installed")
    spec, weights = sources[family]
    out = exports[family, name]
    runtime = RUNTIMES[name]
    manifest = json.loads((out / "visiontool-export.json").read_text())
    assert manifest["runtime"] == runtime and manifest["source"] == spec and manifest["precision"] == "float32"
    assert manifest["class_names"]["1"] in ("person", "bicycle") and manifest["visiontool_version"]
    assert (out / "entry.json").is_file() and all((out / f).is_file() for f in manifest["files"])
    if family == "torchvision":
        assert manifest["kind"] == "torchvision-backbone" and manifest["family"] == "fasterrcnn"
        tv = manifest["torchvision"]
        assert tv["builder"] == FAST and (out / tv["heads"]).is_file()
        assert manifest["preprocessing"]["min_size"] == [320] and manifest["outputs"][0] == "feature_0"
        import torch

        heads = torch.load(out / tv["heads"], weights_only=True)
        assert heads and not any(k.startswith("backbone.") for k in heads)  # the backbone is in the export
    else:
        assert manifest["kind"] == "ultralytics" and manifest["ultralytics"]["task"] == "detect"
        assert (out / manifest["ultralytics"]["model"]).exists()

    with chdir(workdir):
        ref = detect(photos, spec, "--runtime", runtime, cache=tmp_path / "src-cache")
        assert ref.exit_code == 0, ref.stderr
        with moved_away(weights):
            fresh = tmp_path / "fresh-cache"
            r = detect(photos, out, cache=fresh)
            assert r.exit_code == 0, r.stderr
            assert not (fresh / "exports").exists()  # nothing exported: the directory is the export
            again = detect(photos, out, "--runtime", runtime, cache=fresh)
            assert again.exit_code == 0 and again.stdout == r.stdout
        assert os.listdir(workdir) == []
    a, b = records(ref.stdout), records(r.stdout)
    assert [x["image"] for x in a] == [x["image"] for x in b] and {x["model"] for x in b} == {str(out)}
    n = sum(assert_same_detections_unordered(x["detections"], y["detections"]) for x, y in zip(a, b))
    assert n >= 4
    assert "exporting" not in r.stderr


def test_export_dir_python_api_info(exports):
    """The adapter of an export says what it runs (compare's table shows it)."""
    from visiontool.models import loader
    from visiontool.models.registry import load_detector

    out = exports["torchvision", "openvino"]
    det = load_detector(str(out), "cpu", "float32")
    assert det.info.backend == "torchvision+openvino" and det.info.extra["exported"] == "backbone"
    assert det.info.needs_nms and det.info.params > 1_000_000
    loader.release()


@pytest.mark.parametrize("family,damage", [("torchvision", "heads.pt"), ("torchvision", "model.bin"),
                                           ("ultralytics", "model_openvino_model/model.bin")])
def test_damaged_export_file_is_one_line(sources, exports, photos, tmp_path, family, damage):
    if family not in sources:
        pytest.skip("extra [yolo] not installed")
    out = tmp_path / "copy"
    shutil.copytree(exports[family, "openvino"], out)
    target = out / damage
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    r = detect(photos, out, cache=tmp_path / "cache")
    assert_user_error(r, 1, damage, "export the model again")


def test_torchvision_heads_of_another_architecture_is_one_line(exports, photos, tmp_path):
    """A manifest naming another builder than the heads were saved from (hand-edited, with a
    matching entry.json) is one line, not a traceback."""
    from visiontool.models.runtimes.export_cache import describe

    out = tmp_path / "copy"
    shutil.copytree(exports["torchvision", "onnx"], out)
    mpath = out / "visiontool-export.json"
    manifest = json.loads(mpath.read_text())
    manifest["torchvision"]["builder"] = "retinanet_resnet50_fpn"
    mpath.write_text(json.dumps(manifest))
    entry = json.loads((out / "entry.json").read_text())
    describe(out, entry["key"], list(entry["files"]))
    r = detect(photos, out, cache=tmp_path / "cache")
    assert_user_error(r, 1, "heads.pt does not fit torchvision retinanet_resnet50_fpn")


def test_compare_runs_export_dirs(exports, sources, photos, tmp_path):
    """compare takes export directories as --model: each runs in its runtime (its backend says
    which) and is scored."""
    models = [exports["torchvision", "openvino"]]
    if "ultralytics" in sources:
        models.append(exports["ultralytics", "onnx"])
    ref = records(detect(photos, models[0], cache=tmp_path / "cache").stdout)
    gt = gt_from_records(ref, tmp_path / "gt.json")
    from visiontool.models import loader

    loader.release()
    args = ["compare", "--gt", str(gt), "--images", str(photos), "--device", "cpu", "-f", "json", "--no-warmup"]
    for m in models:
        args += ["--model", str(m)]
    r = runner.invoke(app, args, env={"VISIONTOOL_CACHE": str(tmp_path / "cache")})
    assert r.exit_code == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert [x["backend"] for x in runs] == ["torchvision+openvino", "ultralytics+onnxruntime"][:len(models)]
    assert 0.0 < runs[0]["map"] < 1.0


def test_ultralytics_export_without_the_extra_is_exit_2(sources, exports, photos, tmp_path, monkeypatch):
    if "ultralytics" not in sources:
        pytest.skip("extra [yolo] not installed")
    from visiontool.models import ultralytics

    monkeypatch.setattr(ultralytics, "is_installed", lambda: False)
    r = detect(photos, exports["ultralytics", "openvino"], cache=tmp_path / "cache")
    assert_user_error(r, 2, "pip install 'visiontool[yolo]'")
