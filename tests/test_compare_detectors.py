"""compare across backends: the detector table (paradigm, NMS, params, speed, memory, AP,
duplicates) and JSON for torchvision, Ultralytics and transformers models in one run, the
AP-vs-images/s frontier plot, a failing model's row, and segm with and without masks."""
from __future__ import annotations

import json
import pytest
from PIL import Image
from typer.testing import CliRunner

from detector_helpers import build_yolo, save_torchvision, small_photos, write_gt
from hf_tiny import build_detector
from hf_tiny_text import build_universal
from visiontool.cli.main import app
from visiontool.services.compare import STAT_KEYS

runner = CliRunner()
TV = "fasterrcnn_mobilenet_v3_large_320_fpn"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, images_dir):
    from visiontool.services.detect import run_detect

    d = tmp_path_factory.mktemp("cmpdet")
    photos = small_photos(d / "photos", images_dir)
    images = [Image.open(p).convert("RGB") for p in sorted(photos.glob("*.png"))]
    tv, _ = save_torchvision(TV, d / "tv.pth", images=images)
    yolo = build_yolo("yolov8n.yaml", d / "y.pt", images)
    specs = {"faster": f"torchvision:{TV}:{tv}", "yolo": f"ultralytics:{yolo}",
             "rtdetr": str(build_detector("rt_detr", d / "rtdetr")),
             "m2f": str(build_universal("mask2former", d / "m2f"))}
    # the ground truth: the torchvision model's own confident detections, named like its COCO labels
    run = run_detect(sorted(str(p) for p in photos.glob("*.png")), specs["faster"], threshold=0.5, device="cpu")
    gt = write_gt(d / "gt.json", run.results)
    return {"dir": d, "photos": photos, "specs": specs, "gt": gt}


@pytest.fixture(scope="module")
def compared(setup):
    s = setup
    args = ["compare", "--gt", str(s["gt"]), "--images", str(s["photos"]), "--device", "cpu", "--format", "json",
            "--plot", str(s["dir"] / "plots"), "--no-warmup"]
    for name in ("faster", "yolo", "rtdetr"):
        args += ["--model", s["specs"][name], "--name", name]
    args += ["--model", "torchvision:fasterrcnn_resnet50_fpn_v2", "--name", "offline"]
    return runner.invoke(app, args)


def test_one_compare_over_three_backends(compared):
    r = compared
    assert r.exit_code == 1, r.stderr  # the offline model failed; the others ran
    runs = {x["name"]: x for x in json.loads(r.stdout)["runs"]}
    expect = {"faster": ("two-stage", True, "fasterrcnn", "torchvision"),
              "yolo": ("anchor-free", True, "yolov8", "ultralytics"),
              "rtdetr": ("query-based", False, "rt_detr", "transformers")}
    for name, (paradigm, nms, family, backend) in expect.items():
        row = runs[name]
        assert "error" not in row, row.get("error")
        assert (row["paradigm"], row["needs_nms"], row["family"], row["backend"]) == (paradigm, nms, family, backend)
        assert row["params"] > 0 and row["images_per_s"] > 0 and row["peak_memory_mb"] is not None
        assert set(row["ms_per_image"]) == {"preprocess", "inference", "postprocess"}
        assert all(row[k] is not None for k in STAT_KEYS)
    # the GT is the torchvision model's own detections above 0.5: it finds all of them
    assert runs["faster"]["map_50"] == pytest.approx(1.0)
    off = runs["offline"]
    assert off["map"] is None and off["paradigm"] is None and "fasterrcnn_resnet50_fpn_v2_coco" in off["error"]
    assert "visiontool: error: offline: cannot load model" in r.stderr


def test_frontier_plot_written_into_a_directory(compared, setup):
    png = setup["dir"] / "plots" / "compare.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_frontier_points():
    from visiontool.io.compare_plot import frontier

    pts = [(1.0, 0.5), (2.0, 0.4), (3.0, 0.45), (4.0, 0.1), (0.5, 0.3)]
    assert frontier(pts) == [0, 2, 3]  # (0.5, 0.3) is slower and worse than (1.0, 0.5); (2.0, 0.4) than (3.0, 0.45)


def test_detector_table(setup, tmp_path):
    s = setup
    r = runner.invoke(app, ["compare", "--gt", str(s["gt"]), "--images", str(s["photos"]), "--device", "cpu",
                            "--model", s["specs"]["faster"], "--name", "faster", "--model", s["specs"]["rtdetr"],
                            "--name", "rtdetr", "-f", "table", "-q", "--no-warmup", "--plot", str(tmp_path / "f.png")])
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    table = out[out.index("detectors on this machine"):]
    for col in ("paradigm", "NMS", "params", "img/s", "pre ms", "infer ms", "post ms", "peak MB", "AP50", "AP75",
                "APs", "APm", "APl", "dup rate"):
        assert col in table, col
    faster = next(ln for ln in table.splitlines() if ln.startswith("│ faster"))
    assert "two-stage" in faster and "│ yes" in faster
    rtdetr = next(ln for ln in table.splitlines() if ln.startswith("│ rtdetr"))
    assert "query-based" in rtdetr and "│ no" in rtdetr
    assert (tmp_path / "f.png").stat().st_size > 10_000


def test_segm_compare_scores_masks_and_marks_box_models(setup):
    s = setup
    r = runner.invoke(app, ["compare", "--gt", str(s["gt"]), "--images", str(s["photos"]), "--device", "cpu",
                            "--iou-type", "segm", "--model", s["specs"]["m2f"], "--name", "m2f",
                            "--model", s["specs"]["rtdetr"], "--name", "boxes", "-f", "json", "--no-warmup"])
    assert r.exit_code == 1, r.stderr
    runs = {x["name"]: x for x in json.loads(r.stdout)["runs"]}
    assert runs["m2f"]["iou_type"] == "segm" and runs["m2f"]["map"] is not None and "error" not in runs["m2f"]
    assert "boxes only" in runs["boxes"]["error"]
