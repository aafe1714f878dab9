"""Every object-detection family of the installed transformers behind ``--model DIR``: tiny
random-weight models against transformers' own processor + model + post-processing."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from detector_helpers import assert_same_detections, load_coco_results, small_photos, write_gt
from hf_tiny import FAMILIES, build_detector
from visiontool.cli.main import app
from visiontool.models.protocol import DetectOptions

runner = CliRunner()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> Path:
    return small_photos(tmp_path_factory.mktemp("hfphotos"), images_dir)


@pytest.fixture(scope="module")
def images(photos):
    return [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("hfmodels")
    cache: dict = {}

    def get(family):
        if family not in cache:
            cache[family] = build_detector(family, d / family.replace("-", "_"))
        return cache[family]
    return get


def native(path: Path, image, threshold: float):
    """transformers' own call: processor -> model -> post_process_object_detection."""
    import torch
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    processor = AutoImageProcessor.from_pretrained(str(path))
    model = AutoModelForObjectDetection.from_pretrained(str(path)).eval()
    with torch.no_grad():
        out = model(**processor(images=image, return_tensors="pt"))
    r = processor.post_process_object_detection(out, threshold=threshold, target_sizes=[(image.height, image.width)])
    return {k: v.double().numpy() if v.is_floating_point() else v.numpy() for k, v in r[0].items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_records_equal_transformers_and_do_not_depend_on_the_batch(family, models, images):
    from visiontool.models.registry import load_detector

    path = models(family)
    det = load_detector(str(path), "cpu", "float32")
    info = det.info
    assert (info.backend, info.paradigm, info.needs_nms) == ("transformers", "query-based", False)
    assert info.family == family.replace("-", "_")
    assert info.class_names[3] == "dog"
    opts = DetectOptions(threshold=0.0, max_det=None)
    batch = det.predict(images, opts)
    for im, ours in zip(images[:2], batch[:2]):  # dog.png and dogs.png: two sizes
        ref = native(path, im, 0.0)
        assert len(ours) > 0
        assert_same_detections(ours, ref["boxes"], ref["scores"], ref["labels"])
        assert list(ours.names) == [info.class_names[int(c)] for c in ours.class_ids]
    for im, ours in zip(images, batch):
        alone = det.predict([im], opts)[0]
        assert_same_detections(alone, ours.xyxy, ours.scores, ours.class_ids, box_tol=1e-3)


def test_cli_coco_output_for_a_transformers_family(models, photos, tmp_path):
    from visiontool.services.detect import run_detect

    path = str(models("rt_detr"))
    pngs = sorted(str(p) for p in photos.glob("*.png"))
    run = run_detect(pngs, path, threshold=0.2, device="cpu")
    gt = write_gt(tmp_path / "gt.json", run.results)
    r = runner.invoke(app, ["detect", *pngs, "-m", path, "-t", "0.2", "--device", "cpu", "-f", "coco", "--gt", str(gt),
                            "-q"])
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    _, res = load_coco_results(gt, rows)
    assert len(res.getAnnIds()) == sum(len(x.detections) for x in run.results)
    assert np.isclose(rows[0]["score"], max(float(x.detections.scores.max()) for x in run.results
                                            if len(x.detections) and x.image.endswith(Path(pngs[0]).name)))


def test_text_on_a_closed_vocabulary_model_is_exit_2(models, photos):
    from cli_helpers import one_error_line

    r = runner.invoke(app, ["detect", str(sorted(photos.glob("*.png"))[0]), "-m", str(models("detr")), "--text", "dog",
                            "--device", "cpu"])
    assert "--text needs an open-vocabulary model" in one_error_line(r, 2)
