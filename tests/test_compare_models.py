"""`visiontool compare --model ...`: tiny DETRs run through detect's path, timed, scored; a
model that fails to load is reported in its row (exit 1); --save-preds round trip."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from detr_helpers import build_tiny_detr
from visiontool.cli.main import app
from visiontool.services.compare import STAT_KEYS

runner = CliRunner()
PHOTOS = ("dog.jpg", "groceries.jpg")
MODEL_KEYS = {"params", "ms_per_image", "images_per_s", "peak_memory_mb", "needs_nms", "duplicate_rate",
              "paradigm", "family", "backend"}


def _tiny(path, queries, seed):
    """A tiny DETR whose processor works at ~200 px (the tests stay fast on 2 shared cores)."""
    from transformers import DetrImageProcessor

    build_tiny_detr(path, num_queries=queries, seed=seed)
    DetrImageProcessor(size={"shortest_edge": 160, "longest_edge": 240}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory, images_dir):
    """Two tiny DETRs (8 and 12 queries) and a GT made of the 8-query model's own confident
    detections: the 8-query model must score AP 1 on it, the other one less."""
    from visiontool.services.detect import run_detect

    d = tmp_path_factory.mktemp("cmpmodels")
    q8 = _tiny(d / "q8", 8, 1)
    q12 = _tiny(d / "q12", 12, 2)
    photos = [str(images_dir / n) for n in PHOTOS]
    det = run_detect(photos, str(q8), threshold=0.0, device="cpu")
    names = sorted({str(n) for r in det.results for n in r.detections.names})
    cats = [{"id": 100 + i, "name": n} for i, n in enumerate(names)]  # ids unlike the model's
    cat_of = {c["name"]: c["id"] for c in cats}
    images, anns = [], []
    for i, r in enumerate(det.results, 1):
        images.append({"id": i, "file_name": r.image, "width": r.width, "height": r.height})
        for box, name in zip(r.detections.xyxy.tolist(), r.detections.names):
            x1, y1, x2, y2 = box
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cat_of[str(name)],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    gt = d / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    not_a_model = d / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "README.txt").write_text("no config here")
    return {"dir": d, "q8": q8, "q12": q12, "gt": gt, "photos": photos, "broken": not_a_model}


@pytest.fixture(scope="module")
def model_run(setup):
    """One CLI run: q8 (baseline), q12, a directory that is not a model, a hub id while offline."""
    s = setup
    saved = s["dir"] / "saved"
    png = s["dir"] / "models.png"
    args = ["compare", "--gt", str(s["gt"]), "--images", s["photos"][0], "--images", s["photos"][1],
            "--model", str(s["q8"]), "--model", str(s["q12"]), "--model", str(s["broken"]),
            "--model", "nobody/not-cached-detr", "--name", "q8", "--name", "q12",
            "--device", "cpu", "--save-preds", str(saved), "--plot", str(png), "--format", "json"]
    r = runner.invoke(app, args)
    return r, saved, png


def test_failed_models_are_rows_and_exit_1(model_run):
    r, _, _ = model_run
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert [x["name"] for x in runs] == ["q8", "q12", "not-a-model", "nobody/not-cached-detr"]
    assert "error" not in runs[0] and "error" not in runs[1]
    assert "cannot load model from" in runs[2]["error"]
    assert "nobody/not-cached-detr" in runs[3]["error"] and "cache" in runs[3]["error"]
    for failed in runs[2:]:
        assert failed["map"] is None and failed["delta"] is None and failed["params"] is None
    err = r.stderr
    assert "visiontool: error: not-a-model: cannot load model" in err
    assert err.strip().splitlines()[-1].startswith("visiontool: error: 2 of 4 runs failed")
    assert "compare: [1/4] q8" in err and "compare: [4/4]" in err  # a progress line per model


def test_model_rows_shape_and_values(model_run, setup):
    r, _, _ = model_run
    runs = json.loads(r.stdout)["runs"]
    q8, q12 = runs[0], runs[1]
    for row in (q8, q12):
        assert set(row) == {"name", "iou_type", *STAT_KEYS, "per_class", "delta"} | MODEL_KEYS
        assert row["params"] > 1_000_000  # resnet18 backbone
        assert set(row["ms_per_image"]) == {"preprocess", "inference", "postprocess"}
        assert all(v > 0 for v in row["ms_per_image"].values())
        assert row["images_per_s"] > 0
        assert row["peak_memory_mb"] is not None and row["peak_memory_mb"] > 0  # the model itself is memory
        assert row["needs_nms"] is False and row["paradigm"] == "query-based"  # DETR: set prediction
        assert row["family"] == "detr" and row["backend"] == "transformers"
    # the duplicate rate is what duplicate_flags finds in the same model's own detections
    from visiontool.services.detect import run_detect
    from visiontool.services.duplicates import duplicate_flags

    for row, model in ((q8, setup["q8"]), (q12, setup["q12"])):
        dets = [r.detections for r in run_detect(setup["photos"], str(model), threshold=0.5, device="cpu").results]
        kept = sum(len(d) for d in dets)
        dups = sum(int(duplicate_flags(d.xyxy, d.scores, d.class_ids).sum()) for d in dets)
        expected = None if kept == 0 else dups / kept
        assert row["duplicate_rate"] == pytest.approx(expected) if expected is not None else \
            row["duplicate_rate"] is None
    # the GT is q8's own detections: q8 finds every one of them exactly
    assert q8["map"] == pytest.approx(1.0) and q8["map_50"] == pytest.approx(1.0)
    assert q12["map"] < q8["map"] and q12["delta"]["map"] == pytest.approx(q12["map"] - q8["map"])
    assert all(v == 0.0 for v in q8["delta"].values())


def test_saved_predictions_give_the_same_numbers(model_run, setup):
    r, saved, _ = model_run
    runs = json.loads(r.stdout)["runs"]
    files = sorted(p.name for p in saved.iterdir())
    assert files == ["q12.json", "q8.json"]  # failed models save nothing
    again = runner.invoke(app, ["compare", "--gt", str(setup["gt"]), str(saved / "q8.json"),
                                str(saved / "q12.json"), "-f", "json"])
    assert again.exit_code == 0, again.stderr
    rows = json.loads(again.stdout)["runs"]
    for before, after in zip(runs[:2], rows):
        assert after["name"] == before["name"]
        for k in STAT_KEYS:
            assert after[k] == before[k], k
            assert after["delta"][k] == before["delta"][k]


def test_plot_with_models(model_run):
    _, _, png = model_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_table_for_models_and_mixing_a_file(setup, model_run, tmp_path):
    """A saved file as the baseline and a model run against it, as a table."""
    _, saved, _ = model_run
    r = runner.invoke(app, ["compare", "--gt", str(setup["gt"]), str(saved / "q12.json"),
                            "--images", str(setup["photos"][0]), "--images", str(setup["photos"][1]),
                            "--model", str(setup["q8"]), "--name", "q12-file", "--name", "q8",
                            "--batch-size", "2", "--threshold", "0.05", "-f", "table", "-q"])
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "q12-file (baseline)" in out
    assert "detectors on this machine" in out and "infer ms" in out and "dup rate" in out
    assert "query-based" in out and "paradigm" in out
    assert "compare: [" not in r.stderr  # -q silences progress


def test_images_not_in_gt(setup, images_dir):
    r = runner.invoke(app, ["compare", "--gt", str(setup["gt"]), "--images", str(images_dir / "truck.jpg"),
                            "--model", str(setup["q8"])])
    assert r.exit_code == 2
    assert r.stderr.startswith("visiontool: error: none of the 1 images given is named in the ground truth")


def test_unreadable_image_is_reported_and_exit_1(setup, tmp_path):
    """An image that cannot be decoded: named on stderr, the rest scored, exit 1."""
    gt = json.loads(setup["gt"].read_text())
    gt["images"].append({"id": 99, "file_name": "broken.jpg", "width": 10, "height": 10})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    r = runner.invoke(app, ["compare", "--gt", str(tmp_path / "gt.json"), "--images", setup["photos"][0],
                            "--images", str(tmp_path / "broken.jpg"), "--model", str(setup["q8"]),
                            "--no-warmup", "-f", "json", "-q"])
    assert r.exit_code == 1, r.stderr
    row = json.loads(r.stdout)["runs"][0]
    # numbers exist but are marked: the unread image's objects count as missed
    assert row["map"] is not None and row["incomplete"] is True and row["failed_images"] == 1, (row, r.stderr)
    assert "lower bound" in row["error"]
    assert "broken.jpg" in r.stderr and "Traceback" not in r.stderr
    t = runner.invoke(app, ["compare", "--gt", str(tmp_path / "gt.json"), "--images", setup["photos"][0],
                            "--images", str(tmp_path / "broken.jpg"), "--model", str(setup["q8"]),
                            "--no-warmup", "-f", "table", "-q"])
    assert t.exit_code == 1 and "≥" in t.stdout and "incomplete" in t.stdout


@pytest.mark.parametrize("extra, message", [
    (["--device", "cuda:7"], "cuda:7"),
    (["--threshold", "2"], "--threshold"),
])
def test_model_bad_options_exit_2(setup, extra, message):
    r = runner.invoke(app, ["compare", "--gt", str(setup["gt"]), "--images", setup["photos"][0],
                            "--model", str(setup["q8"]), *extra])
    assert r.exit_code == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("visiontool: error: ") and message in lines[0], lines
    assert "compare: [" not in r.stderr  # nothing ran
