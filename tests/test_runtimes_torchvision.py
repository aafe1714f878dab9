"""``--runtime openvino|onnxruntime`` for torchvision's detectors: the backbone runs in the
runtime, the heads stay torch; records equal the torch path's (boxes within 0.05 px, scores
within 1e-4) for each paradigm, and ``--threshold``/``--nms-iou`` still work per call."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detector_helpers import TV_RCNN, TV_SIZES, save_torchvision, small_photos
from runtimes_helpers import assert_same_detections_unordered, detections_as_dicts, records
from visiontool.cli.main import app

runner = CliRunner()
FAST = "fasterrcnn_mobilenet_v3_large_320_fpn"
# (architecture, builder kwargs, runtimes checked) — every paradigm, each runtime at least twice
CASES = [
    ("retinanet_resnet50_fpn_v2", TV_SIZES, ("openvino",)),
    ("fcos_resnet50_fpn", TV_SIZES, ("onnxruntime",)),
    ("ssdlite320_mobilenet_v3_large", {}, ("openvino", "onnxruntime")),
    ("maskrcnn_resnet50_fpn", TV_RCNN, ("onnxruntime",)),
]


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> Path:
    return small_photos(tmp_path_factory.mktemp("rttvphotos"), images_dir)


@pytest.fixture(scope="module")
def images(photos):
    return [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]


@pytest.fixture(scope="module")
def built(tmp_path_factory, images):
    d = tmp_path_factory.mktemp("rttvmodels")
    cache: dict = {}

    def get(name, kwargs):
        if name not in cache:
            cache[name] = save_torchvision(name, d / f"{name}.pth", images=images, **kwargs)[0]
        return cache[name]
    return get


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rttvcache")


def cli_detect(photos: Path, spec: str, *extra, cache: Path):
    from visiontool.models import loader

    loader.release()
    return runner.invoke(app, ["detect", str(photos), "--model", spec, "--device", "cpu", "-f", "jsonl",
                               "--threshold", "0.3", "--max-det", "300", *extra], env={"VISIONTOOL_CACHE": str(cache)})


@pytest.mark.parametrize("runtime", ["openvino", "onnxruntime"])
def test_cli_records_equal_torch_path(photos, built, shared_cache, runtime):
    spec = f"torchvision:{FAST}:{built(FAST, {})}"
    base = cli_detect(photos, spec, "--batch-size", "2", cache=shared_cache)
    assert base.exit_code == 0, base.stderr
    for extra in ([], ["--nms-iou", "0.3"]):  # per-call NMS still applies (the heads are torch)
        ref = records(cli_detect(photos, spec, *extra, cache=shared_cache).stdout)
        r = cli_detect(photos, spec, "--runtime", runtime, "--batch-size", "2", *extra, cache=shared_cache)
        assert r.exit_code == 0, r.stderr
        got = records(r.stdout)
        assert [x["image"] for x in got] == [x["image"] for x in ref]
        n = sum(assert_same_detections_unordered(x["detections"], y["detections"]) for x, y in zip(ref, got))
        assert n >= 4
    assert len(records(base.stdout)[0]["detections"]) != 0


@pytest.mark.parametrize("name,kwargs,runtime", [(n, k, r) for n, k, rs in CASES for r in rs])
def test_families_equal_torch_path(images, built, shared_cache, monkeypatch, name, kwargs, runtime):
    from visiontool.models import loader
    from visiontool.models.protocol import DetectOptions
    from visiontool.models.registry import load_detector

    monkeypatch.setenv("VISIONTOOL_CACHE", str(shared_cache))
    spec = f"torchvision:{name}:{built(name, kwargs)}"
    # (Mask R-CNN: 100, not 300, detections an image: pasting and encoding 1,100 masks took 11 of its 17 s)
    opts = DetectOptions(threshold=0.3, max_det=100 if name.startswith("maskrcnn") else 300)
    ref = load_detector(spec, "cpu", "float32", **kwargs).predict(images, opts)
    det = load_detector(spec, "cpu", "float32", runtime=runtime, **kwargs)
    assert det.info.runtime == runtime and det.info.extra["exported"] == "backbone"
    assert det.info.backend == f"torchvision+{runtime}"
    got = det.predict(images, opts)
    n = sum(assert_same_detections_unordered(detections_as_dicts(a), detections_as_dicts(b)) for a, b in zip(ref, got))
    assert n >= 4
    if det.info.can("masks"):
        from visiontool.masks import decode

        for a, b in zip(ref, got):
            areas_a = sorted(int(decode(m).sum()) for m in a.masks)
            areas_b = sorted(int(decode(m).sum()) for m in b.masks)
            assert np.allclose(areas_a, areas_b, rtol=0.01, atol=2), (areas_a, areas_b)
    loader.release()
