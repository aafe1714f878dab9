"""``--runtime openvino|onnxruntime`` for Ultralytics YOLO: Ultralytics' own exporter (dynamic,
fp32) run inside visiontool's export cache; records equal the torch path's (boxes within
0.05 px, scores within 1e-4); nothing is written next to the weights or in the working
directory."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from detector_helpers import build_yolo, small_photos
from runtimes_helpers import assert_same_detections_unordered, records

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> Path:
    return small_photos(tmp_path_factory.mktemp("rtyphotos"), images_dir)


@pytest.fixture(scope="module")
def yolo(tmp_path_factory, photos) -> Path:
    pytest.importorskip("ultralytics")
    images = [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]
    return build_yolo("yolov8n.yaml", tmp_path_factory.mktemp("rtyolo") / "yolov8n-tiny.pt", images)


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_records_equal_torch_path_and_no_stray_files(photos, yolo, tmp_path, monkeypatch, runtime):
    from visiontool.cli.main import app
    from visiontool.models import loader

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = sorted(os.listdir(yolo.parent))
    args = ["detect", str(photos), "--model", f"ultralytics:{yolo}", "--device", "cpu", "-f", "jsonl",
            "--threshold", "0.3", "--batch-size", "2"]
    loader.release()
    ref = runner.invoke(app, args)
    assert ref.exit_code == 0, ref.stderr
    loader.release()
    r = runner.invoke(app, args + ["--runtime", runtime])
    assert r.exit_code == 0, r.stderr
    assert f"to {runtime} in" in r.stderr
    a, b = records(ref.stdout), records(r.stdout)
    n = sum(assert_same_detections_unordered(x["detections"], y["detections"]) for x, y in zip(a, b))
    assert n >= 4
    assert sorted(os.listdir(yolo.parent)) == before and os.listdir(work) == []
    loader.release()
