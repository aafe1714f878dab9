"""``--model torchvision:NAME[:FILE.pth]``: every paradigm torchvision offers, against
torchvision's own ``model(images)`` on the same weights; masks, keypoints, COCO output, the
DEFAULT-weights download (loopback, hash-checked), and every bad spec."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cli_helpers import assert_user_error, one_error_line
from detector_helpers import (TV_RCNN, TV_SIZES, assert_same_detections, load_coco_results, save_torchvision,
                              small_photos, torchvision_native, write_gt)
from visiontool.cli.main import app
from visiontool.models.protocol import DetectOptions

runner = CliRunner()
FAST = "fasterrcnn_mobilenet_v3_large_320_fpn"  # small by design (320 px): the CLI tests use it
# one architecture per paradigm and output kind; R50 models run at 128-192 px (TV_SIZES)
FAMILIES = {
    FAST: ("fasterrcnn", "two-stage", {}),
    "maskrcnn_resnet50_fpn": ("maskrcnn", "two-stage", TV_RCNN),
    "keypointrcnn_resnet50_fpn": ("keypointrcnn", "two-stage", TV_RCNN),
    "retinanet_resnet50_fpn_v2": ("retinanet", "one-stage", TV_SIZES),
    "fcos_resnet50_fpn": ("fcos", "anchor-free", TV_SIZES),
    "ssdlite320_mobilenet_v3_large": ("ssdlite", "one-stage", {}),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> Path:
    return small_photos(tmp_path_factory.mktemp("tvphotos"), images_dir)


@pytest.fixture(scope="module")
def images(photos):
    return [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]


@pytest.fixture(scope="module")
def built(tmp_path_factory, images):
    """name -> (state-dict file, the torchvision model it came from), built on first use."""
    d = tmp_path_factory.mktemp("tvmodels")
    cache: dict = {}

    def get(name):
        if name not in cache:
            cache[name] = save_torchvision(name, d / f"{name}.pth", images=images, **FAMILIES[name][2])
        return cache[name]
    return get


def adapter(file: Path, name: str):
    from visiontool.models.registry import load_detector

    return load_detector(f"torchvision:{name}:{file}", "cpu", "float32", **FAMILIES[name][2])


@pytest.mark.parametrize("name", list(FAMILIES))
def test_records_equal_torchvision_and_do_not_depend_on_the_batch(name, built, images):
    file, model = built(name)
    det = adapter(file, name)
    family, paradigm, _ = FAMILIES[name]
    info = det.info
    assert (info.backend, info.family, info.paradigm, info.needs_nms) == ("torchvision", family, paradigm, True)
    assert info.params == sum(p.numel() for p in model.parameters())
    # names from the weights' meta: COCO's 91 slots ("__background__", "person", ..., "N/A" gaps)
    assert info.class_names[1] == "person" and info.class_names[0] in ("__background__", "no person")
    assert len(info.class_names) == (2 if family == "keypointrcnn" else 91)
    top = 8 if family in ("maskrcnn", "keypointrcnn") else 100  # their mask/keypoint heads run per detection
    opts = DetectOptions(threshold=0.05, max_det=top)
    batch = det.predict(images, opts)  # four images, two of them the same size: one forward for those two
    same_size = [i for i, im in enumerate(images) if im.size == images[0].size]
    assert len(same_size) == 2
    for i in same_size:
        im, ours = images[i], batch[i]
        native = torchvision_native(model, im, detections=top)
        keep = native["scores"] >= 0.05
        assert len(ours) > 5
        assert_same_detections(ours, native["boxes"][keep], native["scores"][keep], native["labels"][keep])
        assert np.all(ours.xyxy[:, 2] <= im.width + 1e-3) and np.all(ours.xyxy[:, 3] <= im.height + 1e-3)
        alone = det.predict([im], opts)[0]
        assert_same_detections(alone, ours.xyxy, ours.scores, ours.class_ids, box_tol=1e-3)
        if family == "maskrcnn":
            assert ours.masks is not None and len(ours.masks) == len(ours)
            for i in range(min(len(ours), 5)):
                mask = ours.mask(i)
                assert mask.shape == (im.height, im.width)
                j = int(np.argmin(np.abs(native["scores"] - ours.scores[i])))
                expected = native["masks"][j, 0] > 0.5
                assert (mask != expected).sum() <= 2  # pasted by torchvision's own function
        if family == "keypointrcnn":
            kp = ours.data["keypoints"]
            assert kp.shape == (len(ours), 17, 3)
            j = [int(np.argmin(np.abs(native["scores"] - s))) for s in ours.scores]
            assert np.abs(kp[..., :2] - native["keypoints"][j][..., :2]).max() <= 0.01
            assert np.abs(kp[..., 2] - native["keypoints_scores"][j]).max() <= 1e-3


def test_nms_iou_and_threshold_reach_the_model(built, images):
    file, model = built(FAST)
    det = adapter(file, FAST)
    im = images[0]
    for iou in (0.3, 0.7):
        ours = det.predict([im], DetectOptions(threshold=0.05, nms_iou=iou))[0]
        native = torchvision_native(model, im, nms_thresh=iou)
        assert_same_detections(ours, native["boxes"], native["scores"], native["labels"])
    loose = det.predict([im], DetectOptions(threshold=0.5, nms_iou=0.7, max_det=1000))[0]
    strict = det.predict([im], DetectOptions(threshold=0.5, nms_iou=0.2, max_det=1000))[0]
    assert len(strict) < len(loose)
    # below the model's own 0.05, the model's pre-NMS threshold follows --threshold (compare needs the tail)
    low = det.predict([im], DetectOptions(threshold=0.0, max_det=5000))[0]
    native = torchvision_native(model, im, score_thresh=0.0, detections=5000)
    assert low.scores.min() < 0.05 and len(low) == len(native["scores"])
    assert det.info.extra["model_defaults"]["score_thresh"] == 0.05  # the model keeps its own default


def test_cli_coco_output_loads_against_a_gt_named_by_file(built, photos, tmp_path):
    from visiontool.services.detect import run_detect

    file, _ = built(FAST)
    spec = f"torchvision:{FAST}:{file}"
    pngs = sorted(str(p) for p in photos.glob("*.png"))
    run = run_detect(pngs, spec, threshold=0.3, device="cpu")
    gt = write_gt(tmp_path / "gt.json", run.results)
    r = runner.invoke(app, ["detect", *pngs, "-m", spec, "-t", "0.3", "--device", "cpu", "-f", "coco",
                            "--gt", str(gt), "-q"])
    assert r.exit_code == 0, r.stderr
    rows = json.loads(r.stdout)
    assert rows and {"image_id", "category_id", "bbox", "score"} <= set(rows[0])
    coco, res = load_coco_results(gt, rows)
    assert set(res.getImgIds()) <= set(coco.getImgIds())
    # the CLI prints what the Python API returns (labels from the weights' meta, COCO 91-slot names)
    r = runner.invoke(app, ["detect", pngs[0], "-m", spec, "-t", "0.3", "--device", "cpu", "-f", "json", "-q"])
    rec = json.loads(r.stdout)[0]
    assert [d["box"] for d in rec["detections"]] == run.results[0].detections.xyxy.tolist()
    assert all(d["label"] == run.results[0].detections.names[i] for i, d in enumerate(rec["detections"]))


def test_masks_and_keypoints_go_into_records_and_coco(built, photos, tmp_path):
    from visiontool.convert import to_coco_results, to_record
    from visiontool.io.coco import GroundTruthIndex
    from visiontool.services.detect import run_detect
    from visiontool.services.evaluate import evaluate

    pngs = sorted(str(p) for p in photos.glob("*.png"))
    for name, iou_type in (("maskrcnn_resnet50_fpn", "segm"), ("keypointrcnn_resnet50_fpn", "keypoints")):
        file, _ = built(name)
        run = run_detect(pngs, f"torchvision:{name}:{file}", threshold=0.05, device="cpu", max_det=5,
                         load_options=FAMILIES[name][2])
        gt = write_gt(tmp_path / f"{name}.json", run.results, keypoints=17 if iou_type == "keypoints" else 0)
        index = GroundTruthIndex.load(str(gt))
        rows = []
        for res in run.results:
            rec = to_record(res)
            assert len(rec["detections"]) == 5
            if iou_type == "segm":
                seg = rec["detections"][0]["segmentation"]
                assert seg["size"] == [res.height, res.width] and isinstance(seg["counts"], str)
            else:
                assert len(rec["detections"][0]["keypoints"]) == 17
            res.image_id = index.image_id_for(res.image)
            rows += to_coco_results(res, index)
        coco, loaded = load_coco_results(gt, rows)
        assert len(loaded.getAnnIds()) == len(rows)
        if iou_type == "segm":
            assert all("segmentation" in r for r in rows)
            assert evaluate(str(gt), rows, "segm").stats["map"] >= 0  # scored by the segm evaluator
        else:
            assert all(len(r["keypoints"]) == 51 for r in rows)


# ----------------------------------------------------------------------------- DEFAULT weights
@pytest.fixture()
def served_weights(built, monkeypatch, tmp_path):
    """torchvision's DEFAULT weights URL pointed at a loopback server holding our state dict,
    named with the first 8 hex digits of its sha256 as torch.hub's hash check expects."""
    import hashlib

    from torchvision.models import get_model_weights

    from segment_helpers import loopback_server

    file, _ = built(FAST)
    body = file.read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:8]
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VISIONTOOL_OFFLINE", raising=False)
    from visiontool.models import loader

    loader.release()  # a model loaded by an earlier test would not download
    weights = get_model_weights(FAST).DEFAULT
    routes = {f"/good-{digest}.pth": (body, "ok"), "/bad-00000000.pth": (body, "ok")}
    with loopback_server(routes) as base:
        def point(name):
            monkeypatch.setattr(weights.value, "url", base + name)
            return tmp_path / "torch" / "hub" / "checkpoints" / name
        yield point, file, f"good-{digest}.pth"


def test_default_weights_download_with_hash_check_then_cache(served_weights, images, tmp_path):
    from visiontool.models import loader

    point, file, good = served_weights
    cached = point(good)
    photo = str(_png(images[0], tmp_path / "in"))
    r = runner.invoke(app, ["detect", photo, "-m", f"torchvision:{FAST}", "--device", "cpu", "-t", "0.3", "-f", "json"])
    assert r.exit_code == 0, r.stderr
    assert cached.is_file() and cached.read_bytes() == file.read_bytes()  # in torch hub's cache
    assert r.stdout.lstrip().startswith("[")  # torch.hub's "Downloading" line went to stderr
    assert "Downloading" in r.stderr
    rec = json.loads(r.stdout)[0]
    loader.release()
    same = runner.invoke(app, ["detect", photo, "-m", f"torchvision:{FAST}:{file}", "--device", "cpu", "-t", "0.3",
                               "-f", "json"])
    assert json.loads(same.stdout)[0]["detections"] == rec["detections"]


def test_default_weights_failing_the_hash_check_is_one_line(served_weights, images, tmp_path):
    point, _, _ = served_weights
    cached = point("bad-00000000.pth")
    r = runner.invoke(app, ["detect", str(_png(images[0], tmp_path)), "-m", f"torchvision:{FAST}", "--device", "cpu"])
    assert_user_error(r, 1, "hash", "bad-00000000.pth")  # one error line after the download's progress
    assert r.stdout == "" and "Downloading" in r.stderr
    assert not cached.exists()  # nothing half-written is left in the cache


def test_default_weights_offline_names_the_file_and_where_to_put_it(images, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    r = runner.invoke(app, ["detect", str(_png(images[0], tmp_path)), "-m", "torchvision:fasterrcnn_resnet50_fpn_v2",
                            "--device", "cpu"])
    line = one_error_line(r, 1)
    assert "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth" in line
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in line
    assert "torchvision:fasterrcnn_resnet50_fpn_v2:FILE.pth" in line


def _png(im, d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    p = d / "one.png"
    im.save(p)
    return p


# ----------------------------------------------------------------------------- bad specs
def test_bad_specs(built, images, tmp_path):
    photo = str(_png(images[0], tmp_path))
    file, _ = built(FAST)
    r = runner.invoke(app, ["detect", photo, "-m", "torchvison:fasterrcnn_resnet50_fpn"])
    one_error_line(r, 2)
    assert "unknown backend 'torchvison:'" in r.stderr and "did you mean 'torchvision:'" in r.stderr
    r = runner.invoke(app, ["detect", photo, "-m", "torchvision:fasterrcnn_resnet50"])
    assert "did you mean 'torchvision:fasterrcnn_resnet50_fpn'" in one_error_line(r, 2)
    r = runner.invoke(app, ["detect", photo, "-m", f"torchvision:{FAST}:{tmp_path / 'nope.pth'}"])
    assert "weights file" in one_error_line(r, 2) and "nope.pth" in r.stderr
    r = runner.invoke(app, ["detect", photo, "-m", f"torchvision:{FAST}:{tmp_path}"])
    assert "is a directory" in one_error_line(r, 2)
    # a state dict of another architecture: one line naming the first tensor that does not fit
    r = runner.invoke(app, ["detect", photo, "-m", f"torchvision:ssdlite320_mobilenet_v3_large:{file}",
                            "--device", "cpu"])
    line = assert_user_error(r, 1, "do not fit torchvision ssdlite320_mobilenet_v3_large", "tensor")
    assert "another architecture" in line
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    r = runner.invoke(app, ["detect", photo, "-m", f"torchvision:{FAST}:{junk}", "--device", "cpu"])
    assert "not a weights-only state dict" in one_error_line(r, 1)
    # --text needs an open-vocabulary model; an empty phrase is a usage error too
    r = runner.invoke(app, ["detect", photo, "-m", f"torchvision:{FAST}:{file}", "--text", "dog", "--device", "cpu"])
    assert "--text needs an open-vocabulary model" in one_error_line(r, 2)
    r = runner.invoke(app, ["detect", photo, "-m", f"torchvision:{FAST}:{file}", "--text", "dog,,cat"])
    assert "empty phrase" in one_error_line(r, 2)


def test_fine_tuned_class_count_and_training_checkpoint(images, tmp_path):
    """A model fine-tuned to 3 classes (a {"model": state_dict} checkpoint, as torchvision's
    reference scripts save) loads with 3 classes named by id."""
    import torch

    from visiontool.models.registry import load_detector

    from detector_helpers import build_torchvision

    model = build_torchvision(FAST, num_classes=3, images=images)
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    det = load_detector(f"torchvision:{FAST}:{tmp_path / 'ckpt.pth'}", "cpu", "float32")
    assert det.info.class_names == {0: "0", 1: "1", 2: "2"}
    ours = det.predict(images[:1], DetectOptions(threshold=0.05))[0]
    native = torchvision_native(model, images[0])
    assert_same_detections(ours, native["boxes"], native["scores"], native["labels"])
