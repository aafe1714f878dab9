"""evaluate's numbers against pycocotools.cocoeval.COCOeval (the oracle), exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest

from evaluate_helpers import (
    STAT_KEYS,
    adversarial_set,
    detect_records,
    integer_boxes,
    oracle,
    segment_records,
)
from visiontool.services.evaluate import GroundTruth, evaluate


def close(a: float, b: float, engine: str) -> bool:
    """Bit-identical for the native engines and pycocotools; faster-coco-eval (used for
    ground truths with annotation id 0) sums in another order: within 1e-12."""
    return a == b if engine != "faster-coco-eval" else abs(a - b) <= 1e-12


def assert_same(result, ref, per_class=True):
    got = result.to_dict()
    for k in STAT_KEYS:
        assert close(got[k], ref["stats"][k], result.engine), (k, got[k], ref["stats"][k], result.engine)
    if per_class:
        assert result.per_class, "per-class rows missing"
        for row in result.per_class:
            want = ref["per_class"][row["category_id"]]
            for k in ("ap", "ap_50", "ap_75", "ar_100"):
                assert close(row[k], want[k], result.engine), (row["category_id"], k, row[k], want[k])


CASES = [("bbox", {"with_segm": False}), ("segm", {"with_segm": True}),
         ("segm", {"with_segm": True, "both_bbox_and_segm": True}),
         ("bbox", {"with_segm": True, "both_bbox_and_segm": True})]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("iou_type,kw", CASES, ids=["bbox", "segm", "segm+bbox", "bbox+segm"])
@pytest.mark.parametrize("first_id", [1, 0], ids=["ids-from-1", "id-0"])
def test_adversarial_sets_equal_pycocotools(tmp_path, seed, iou_type, kw, first_id):
    """Crowd regions, tied scores, area boundaries, empty images, categories without GT,
    >100 detections on an image, annotation id 0, detections with bbox and segmentation:
    in memory (precise path) and from files (native fast path)."""
    gt, res = adversarial_set(seed, first_id=first_id, **kw)
    ref = oracle(gt, res, iou_type)
    r = evaluate(gt, res, iou_type, per_class=True)
    assert_same(r, ref)
    if first_id == 0:
        assert r.engine in ("faster-coco-eval", "pycocotools")
    else:
        assert r.engine in ("ultrafast", "hotcoco")
    gp, dp = tmp_path / "gt.json", tmp_path / "dt.json"
    gp.write_text(json.dumps(gt))
    dp.write_text(json.dumps(res))
    assert_same(evaluate(str(gp), str(dp), iou_type, per_class=True), ref)


def test_adversarial_set_has_the_hard_cases():
    gt, res = adversarial_set(0, with_segm=False)
    anns = gt["annotations"]
    assert any(a["id"] == 0 for a in anns)
    assert any(a["iscrowd"] for a in anns)
    assert any(a["area"] in (32.0 ** 2, 96.0 ** 2) for a in anns)
    per_image = {}
    for r in res:
        per_image[r["image_id"]] = per_image.get(r["image_id"], 0) + 1
    assert max(per_image.values()) > 100
    assert len({r["score"] for r in res}) < len(res)  # ties
    with_gt = {a["image_id"] for a in anns}
    assert any(im["id"] not in with_gt for im in gt["images"])  # images without GT
    assert any(im["id"] not in per_image for im in gt["images"])  # images without predictions
    no_gt_cats = {c["id"] for c in gt["categories"]} - {a["category_id"] for a in anns}
    assert no_gt_cats
    r = evaluate(gt, res, "bbox", per_class=True)
    rows = {row["category_id"]: row for row in r.per_class}
    for c in no_gt_cats:
        assert rows[c]["ap"] == -1 and rows[c]["gt_count"] == 0


@pytest.mark.parametrize("iou_type,name", [("bbox", "instances_val2014_fakebbox100_results.json"),
                                           ("segm", "instances_val2014_fakesegm100_results.json")])
def test_real_subset(coco_dir, iou_type, name):
    gt_path, dt_path = coco_dir / "instances_val2014_100.json", coco_dir / name
    ref = oracle(json.loads(gt_path.read_text()), json.loads(dt_path.read_text()), iou_type)
    r = evaluate(str(gt_path), str(dt_path), iou_type, per_class=True)
    assert_same(r, ref)
    assert r.engine == ("ultrafast" if iou_type == "bbox" else "hotcoco")
    assert {row["gt_count"] for row in r.per_class} != {0}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_two_image(coco_dir, iou_type):
    """Detections carrying both bbox and RLE; one image without annotations."""
    gt_path, dt_path = coco_dir / "two-image" / "gt.json", coco_dir / "two-image" / "dt.json"
    ref = oracle(json.loads(gt_path.read_text()), json.loads(dt_path.read_text()), iou_type)
    assert_same(evaluate(str(gt_path), str(dt_path), iou_type, per_class=True), ref)


@pytest.mark.parametrize("backend", ["pycocotools", "faster-coco-eval", "hotcoco", "ultrafast"])
def test_forced_backends_agree_on_real_subset(coco_dir, backend):
    gt_path = coco_dir / "instances_val2014_100.json"
    dt_path = coco_dir / "instances_val2014_fakebbox100_results.json"
    ref = oracle(json.loads(gt_path.read_text()), json.loads(dt_path.read_text()), "bbox")
    r = evaluate(str(gt_path), str(dt_path), "bbox", backend=backend)
    assert r.engine == backend
    for k in STAT_KEYS:
        assert abs(r.stats[k] - ref["stats"][k]) <= 1e-12


def test_native_engines_differ_on_id_0_and_auto_does_not():
    """Why auto routes id-0 ground truths away from the native engines."""
    gt, res = adversarial_set(1, with_segm=False, first_id=0)
    ref = oracle(gt, res, "bbox")
    native = evaluate(gt, res, "bbox", backend="ultrafast")
    assert any(native.stats[k] != ref["stats"][k] for k in STAT_KEYS)
    assert any("id 0" in d for d in native.diagnostics)
    assert_same(evaluate(gt, res, "bbox", per_class=True), ref)


@pytest.mark.parametrize("jsonl", [False, True], ids=["json", "jsonl"])
def test_detect_records_round_trip(tmp_path, jsonl):
    """visiontool detect output (xyxy boxes, labels by name, other category ids, paths with
    directories) gives the numbers of the equivalent COCO results."""
    gt, res = adversarial_set(2, with_segm=False, first_id=1)
    res = integer_boxes(res)  # xywh -> xyxy -> xywh is exact on integers
    ref = oracle(gt, res, "bbox")
    recs = detect_records(gt, res)
    p = tmp_path / ("dets.jsonl" if jsonl else "dets.json")
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n" if jsonl else json.dumps(recs))
    r = evaluate(gt, str(p), "bbox", per_class=True)
    assert_same(r, ref)
    assert r.n_predictions == len(res)
    assert_same(evaluate(gt, recs, "bbox", per_class=True), ref)  # Python objects too


def test_segment_records_round_trip():
    gt, res = adversarial_set(3, with_segm=True, both_bbox_and_segm=True, first_id=1)
    res = integer_boxes(res)
    ref = oracle(gt, res, "segm")
    assert_same(evaluate(gt, segment_records(gt, res), "segm", per_class=True), ref)


def test_torchmetrics_style_arrays_equal_pycocotools():
    """Per-image dicts of arrays (torch tensors work the same; numpy keeps the test light)."""
    rng = np.random.default_rng(5)
    targets, preds, gt_anns, results, images = [], [], [], [], []
    aid = 1
    for i in range(6):
        n = int(rng.integers(1, 5))
        xy = rng.integers(0, 80, (n, 2)).astype(np.float64)
        wh = rng.integers(4, 60, (n, 2)).astype(np.float64)
        labels = rng.integers(0, 3, n)
        crowd = (rng.random(n) < 0.2).astype(np.int64)
        targets.append({"boxes": np.hstack([xy, xy + wh]), "labels": labels, "iscrowd": crowd})
        images.append({"id": i, "width": 200, "height": 200})
        for k in range(n):
            gt_anns.append({"id": aid, "image_id": i, "category_id": int(labels[k]), "iscrowd": int(crowd[k]),
                            "bbox": [*xy[k].tolist(), *wh[k].tolist()], "area": float(wh[k, 0] * wh[k, 1])})
            aid += 1
        m = int(rng.integers(0, 8))
        pxy = rng.integers(0, 80, (m, 2)).astype(np.float64)
        pwh = rng.integers(4, 60, (m, 2)).astype(np.float64)
        pl = rng.integers(0, 4, m)
        ps = np.round(rng.random(m), 1)
        preds.append({"boxes": np.hstack([pxy, pxy + pwh]), "scores": ps, "labels": pl})
        for k in range(m):
            results.append({"image_id": i, "category_id": int(pl[k]), "score": float(ps[k]),
                            "bbox": [*pxy[k].tolist(), *pwh[k].tolist()]})
    cats = sorted({a["category_id"] for a in gt_anns} | {r["category_id"] for r in results})
    gt = {"images": images, "annotations": gt_anns, "categories": [{"id": c, "name": str(c)} for c in cats]}
    ref = oracle(gt, results, "bbox")
    assert_same(evaluate(targets, preds, "bbox", per_class=True), ref)


def test_ground_truth_object_is_reusable(coco_dir):
    """compare passes one GroundTruth to many evaluate() calls."""
    g = GroundTruth.load(str(coco_dir / "instances_val2014_100.json"))
    a = evaluate(g, str(coco_dir / "instances_val2014_fakebbox100_results.json"), "bbox")
    b = evaluate(g, str(coco_dir / "instances_val2014_fakebbox100_results.json"), "bbox")
    c = evaluate(g, str(coco_dir / "instances_val2014_fakesegm100_results.json"), "segm")
    assert a.stats == b.stats and c.stats["map"] != a.stats["map"]
    assert list(a.to_dict()) == ["iou_type", *STAT_KEYS, "per_class"]


def test_empty_predictions(coco_dir, tmp_path):
    p = tmp_path / "empty.json"
    p.write_text("[]")
    r = evaluate(str(coco_dir / "instances_val2014_100.json"), str(p), "bbox")
    assert r.stats["map"] == 0.0 and r.n_predictions == 0
    assert any("no predictions" in d for d in r.diagnostics)


def test_torch_tensors_are_accepted():
    """The torchmetrics input format itself (torch tensors, xyxy), through the exact engine."""
    torch = pytest.importorskip("torch")
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 60.0], [70.0, 5.0, 90.0, 30.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.zeros((0, 4)), "labels": torch.zeros((0,), dtype=torch.int64)}]
    preds = [{"boxes": torch.tensor([[12.0, 10.0, 50.0, 58.0], [70.0, 6.0, 88.0, 30.0], [0.0, 0.0, 5.0, 5.0]]),
              "scores": torch.tensor([0.9, 0.5, 0.5]), "labels": torch.tensor([1, 2, 2])},
             {"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "scores": torch.tensor([0.25]),
              "labels": torch.tensor([1])}]
    gt = {"images": [{"id": 0, "width": 0, "height": 0}, {"id": 1, "width": 0, "height": 0}],
          "categories": [{"id": 1, "name": "1"}, {"id": 2, "name": "2"}],
          "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [10.0, 10.0, 40.0, 50.0],
                           "area": 2000.0, "iscrowd": 0},
                          {"id": 2, "image_id": 0, "category_id": 2, "bbox": [70.0, 5.0, 20.0, 25.0],
                           "area": 500.0, "iscrowd": 0}]}
    res = [{"image_id": 0, "category_id": 1, "bbox": [12.0, 10.0, 38.0, 48.0], "score": float(torch.tensor(0.9))},
           {"image_id": 0, "category_id": 2, "bbox": [70.0, 6.0, 18.0, 24.0], "score": 0.5},
           {"image_id": 0, "category_id": 2, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5},
           {"image_id": 1, "category_id": 1, "bbox": [1.0, 1.0, 8.0, 8.0], "score": 0.25}]
    assert_same(evaluate(targets, preds, "bbox", per_class=True), oracle(gt, res, "bbox"))


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_arrays_false_gives_the_same_numbers(coco_dir, iou_type):
    """Without per-class rows or PR curves the engine may skip copying COCOeval's arrays out:
    the stats and diagnostics stay the same."""
    gt_path = coco_dir / "instances_val2014_100.json"
    dt_path = coco_dir / f"instances_val2014_fake{iou_type}100_results.json"
    full = evaluate(str(gt_path), str(dt_path), iou_type)
    lean = evaluate(str(gt_path), str(dt_path), iou_type, arrays=False)
    assert lean.stats == full.stats and lean.diagnostics == full.diagnostics
    assert full.precision is not None
    with_rows = evaluate(str(gt_path), str(dt_path), iou_type, arrays=False, per_class=True)
    assert with_rows.precision is not None and with_rows.per_class
