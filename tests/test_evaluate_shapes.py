"""Every input shape pycocotools' loadRes + COCOeval scores gets its numbers, from a list and
from a file; what it cannot score is one clear error. Also keypoints and torchmetrics-style
tensors (masks, keypoints), each checked against pycocotools on the same data."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from evaluate_helpers import KEYPOINT_STAT_KEYS, adversarial_set, keypoint_set, oracle
from visiontool.errors import InvalidInputError
from visiontool.services.evaluate import evaluate


def _poly(r):
    x, y, w, h = r["bbox"]
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _uncompressed(rle):
    from pycocotools import mask as mask_utils

    m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    flat = m.flatten(order="F")
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    return {"size": rle["size"], "counts": np.diff(np.concatenate([[0], change])).tolist()}


@pytest.fixture(scope="module")
def sets():
    gt, seg = adversarial_set(1, with_segm=True, first_id=1)
    _, both = adversarial_set(1, with_segm=True, both_bbox_and_segm=True, first_id=1)
    _, box = adversarial_set(1, with_segm=False, first_id=1)
    return gt, {
        "bbox results": box,
        "RLE masks": seg,
        "RLE masks with boxes": both,
        "polygons with boxes": [dict(r, segmentation=_poly(r)) for r in both],
        "uncompressed RLE with boxes": [dict(r, segmentation=_uncompressed(r["segmentation"])) for r in both],
        "masks first, boxes later": [seg[0]] + both[1:],
        "polygons without boxes": [dict({k: v for k, v in r.items() if k != "bbox"}, segmentation=_poly(r))
                                   for r in both],
        "uncompressed RLE without boxes": [dict(r, segmentation=_uncompressed(r["segmentation"])) for r in seg],
    }


SCORED = ["bbox results", "RLE masks", "RLE masks with boxes", "polygons with boxes", "uncompressed RLE with boxes",
          "masks first, boxes later"]
REFUSED = {"polygons without boxes": "cannot score polygons", "uncompressed RLE without boxes": "uncompressed RLE"}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("shape", SCORED)
def test_scored_shapes_equal_pycocotools(sets, tmp_path, shape, iou_type):
    """bbox-only results scored as segm (the box is the mask), masks scored as bbox (the
    mask's box, the mask's area), polygons and uncompressed RLE beside a box, ..."""
    gt, cases = sets
    res = cases[shape]
    ref = oracle(gt, res, iou_type)["stats"]
    assert evaluate(gt, copy.deepcopy(res), iou_type).stats == ref
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert evaluate(str(tmp_path / "gt.json"), str(tmp_path / "r.json"), iou_type).stats == ref


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("shape", list(REFUSED))
def test_shapes_pycocotools_cannot_score_are_one_error(sets, shape, iou_type):
    gt, cases = sets
    with pytest.raises(TypeError):
        oracle(gt, cases[shape], iou_type)  # pycocotools fails on them
    with pytest.raises(InvalidInputError, match=REFUSED[shape]) as exc:
        evaluate(gt, copy.deepcopy(cases[shape]), iou_type)
    assert "result 0:" in str(exc.value)


def test_bytes_counts_from_python(sets):
    gt, cases = sets
    res = [dict(r, segmentation={"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
           for r in cases["RLE masks"]]
    for iou_type in ("bbox", "segm"):
        assert evaluate(gt, copy.deepcopy(res), iou_type).stats == oracle(gt, res, iou_type)["stats"]


def test_ground_truth_rle_and_uncompressed_rle(sets, tmp_path):
    """GT masks as polygons, compressed RLE (string counts) and uncompressed RLE, crowds too."""
    from pycocotools import mask as mask_utils

    gt, cases = sets
    gt = copy.deepcopy(gt)
    sizes = {im["id"]: (im["height"], im["width"]) for im in gt["images"]}
    kinds = set()
    for a in gt["annotations"]:
        h, w = sizes[a["image_id"]]
        if a["iscrowd"]:
            a["segmentation"] = _uncompressed(a["segmentation"])
            kinds.add("uncompressed")
        elif a["id"] % 3 == 0:
            r = mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w))
            a["segmentation"] = {"size": [h, w], "counts": r["counts"].decode()}
            kinds.add("rle")
        else:
            kinds.add("polygon")
    assert kinds == {"uncompressed", "rle", "polygon"}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "r.json").write_text(json.dumps(cases["RLE masks"]))
    for iou_type in ("bbox", "segm"):
        ref = oracle(gt, cases["RLE masks"], iou_type)["stats"]
        assert evaluate(gt, copy.deepcopy(cases["RLE masks"]), iou_type).stats == ref
        assert evaluate(str(tmp_path / "gt.json"), str(tmp_path / "r.json"), iou_type).stats == ref


@pytest.mark.parametrize("with_boxes", [True, False], ids=["with-bbox", "keypoints-only"])
def test_keypoints_equal_pycocotools(tmp_path, with_boxes):
    """With a bbox, loadRes takes area = w*h; without, area and box from the keypoints' extent."""
    gt, res = keypoint_set(3, with_boxes=with_boxes)
    ref = oracle(gt, res, "keypoints")
    r = evaluate(gt, copy.deepcopy(res), "keypoints", per_class=True)
    assert list(r.stats) == KEYPOINT_STAT_KEYS and r.stats == ref["stats"]
    assert r.per_class[0]["ar_20"] == ref["per_class"][1]["ar_20"] and r.per_class[0]["ap"] == ref["per_class"][1]["ap"]
    assert list(r.to_dict()) == ["iou_type", *KEYPOINT_STAT_KEYS, "per_class"]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "r.json").write_text(json.dumps(res))
    assert evaluate(str(tmp_path / "gt.json"), str(tmp_path / "r.json"), "keypoints").stats == ref["stats"]
    # keypoint results scored as boxes: the box loadRes derives (or the given one)
    assert evaluate(gt, copy.deepcopy(res), "bbox").stats == oracle(gt, res, "bbox")["stats"]


def test_keypoints_refused_where_pycocotools_fails():
    gt, res = keypoint_set(4, with_boxes=False)
    with pytest.raises(InvalidInputError, match="result 0: has no 'segmentation'"):
        evaluate(gt, res, "segm")
    bad = copy.deepcopy(res)
    bad[2]["keypoints"] = bad[2]["keypoints"][:-3]
    with pytest.raises(InvalidInputError, match="result 2: keypoints must be 51 numbers"):
        evaluate(gt, bad, "keypoints")
    _, boxes = adversarial_set(0, with_segm=False, first_id=1)
    with pytest.raises(InvalidInputError, match="result 0: has no 'keypoints'"):
        evaluate(gt, [dict(b, image_id=1, category_id=1) for b in boxes[:3]], "keypoints")
    gt2 = copy.deepcopy(gt)
    del gt2["annotations"][1]["num_keypoints"]
    with pytest.raises(InvalidInputError, match=r"annotations\[1\] has no 'keypoints' and 'num_keypoints'"):
        evaluate(gt2, res, "keypoints")


# ---------------------------------------------------------------------------------------- tensors


def _mask_data(seed: int, boxes: bool, layout_4d: bool = False):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    targets, preds = [], []
    for _ in range(5):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        n = int(rng.integers(0, 4))
        tm = np.zeros((n, h, w), bool)
        for k in range(n):
            y, x = int(rng.integers(0, h - 10)), int(rng.integers(0, w - 10))
            tm[k, y:y + int(rng.integers(3, h - y)), x:x + int(rng.integers(3, w - x))] = True
        m = int(rng.integers(1, 6))
        pm = np.zeros((m, h, w), bool)
        for k in range(m):
            src = tm[k % n] if n and k < 2 * n else np.zeros((h, w), bool)
            pm[k] = np.roll(src, int(rng.integers(-3, 4)), axis=int(rng.integers(0, 2)))
            if not pm[k].any():
                pm[k, :5, :5] = True
        t = {"labels": torch.tensor(rng.integers(1, 3, n)), "masks": torch.from_numpy(tm),
             "iscrowd": torch.tensor((rng.random(n) < 0.2).astype(np.int64))}
        p = {"labels": torch.tensor(rng.integers(1, 3, m)), "scores": torch.tensor(np.round(rng.random(m), 1)),
             "masks": torch.from_numpy(pm[:, None] if layout_4d else pm)}
        if boxes:
            t["boxes"] = torch.tensor([[0.0, 0.0, 5.0, 5.0]] * n).reshape(-1, 4)
            p["boxes"] = torch.tensor([[0.0, 0.0, 5.0, 5.0]] * m).reshape(-1, 4)
        targets.append(t)
        preds.append(p)
    return targets, preds


def _mask_oracle(targets, preds):
    """pycocotools on the same data: masks as RLE (pycocotools' encoder), GT area the mask's."""
    from pycocotools import mask as mask_utils

    images, anns, res, labels = [], [], [], set()
    aid = 1
    for i, (t, p) in enumerate(zip(targets, preds)):
        tm = t["masks"].numpy()
        pm = p["masks"].numpy().reshape(-1, *tm.shape[1:]) if tm.ndim == 3 else p["masks"].numpy()
        h, w = pm.shape[-2:]
        images.append({"id": i, "width": int(w), "height": int(h)})
        for k in range(tm.shape[0]):
            rle = mask_utils.encode(np.asfortranarray(tm[k].astype(np.uint8)))
            anns.append({"id": aid, "image_id": i, "category_id": int(t["labels"][k]), "iscrowd": int(t["iscrowd"][k]),
                         "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"].decode()},
                         "area": float(mask_utils.area(rle)), "bbox": [float(v) for v in mask_utils.toBbox(rle)]})
            aid += 1
            labels.add(int(t["labels"][k]))
        for k in range(pm.shape[0]):
            rle = mask_utils.encode(np.asfortranarray(pm[k].reshape(h, w).astype(np.uint8)))
            res.append({"image_id": i, "category_id": int(p["labels"][k]), "score": float(p["scores"][k]),
                        "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"].decode()}})
            labels.add(int(p["labels"][k]))
    cats = [{"id": c, "name": str(c)} for c in sorted(labels)]
    return {"images": images, "annotations": anns, "categories": cats}, res


@pytest.mark.parametrize("boxes,layout_4d", [(False, False), (True, False), (False, True)],
                         ids=["masks-only", "with-boxes", "N1HW"])
def test_torchmetrics_style_masks_equal_pycocotools(boxes, layout_4d):
    targets, preds = _mask_data(7, boxes, layout_4d)
    gt, res = _mask_oracle(targets, preds)
    ref = oracle(gt, res, "segm")
    r = evaluate(targets, preds, "segm", per_class=True)
    assert r.stats == ref["stats"]
    assert {row["category_id"]: row["ap"] for row in r.per_class} == {c: v["ap"] for c, v in ref["per_class"].items()}


def test_torchmetrics_style_float_masks_are_refused():
    torch = pytest.importorskip("torch")
    targets, preds = _mask_data(8, False)
    preds[0]["masks"] = preds[0]["masks"].float() * 0.7
    with pytest.raises(InvalidInputError, match="prediction 0: masks must be boolean"):
        evaluate(targets, preds, "segm")
    assert torch.is_tensor(preds[0]["masks"])


def test_torchmetrics_style_keypoints_equal_pycocotools():
    """torchvision keypoint R-CNN's layout: keypoints (N, 17, 3), boxes, labels, scores."""
    torch = pytest.importorskip("torch")
    gt, res = keypoint_set(5, n_images=6, with_boxes=False)
    by_image = {im["id"]: i for i, im in enumerate(gt["images"])}
    targets = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64),
                "keypoints": torch.zeros((0, 17, 3)), "area": torch.zeros(0), "iscrowd": torch.zeros(0)}
               for _ in gt["images"]]
    preds = [{"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64), "scores": torch.zeros(0),
              "keypoints": torch.zeros((0, 17, 3))} for _ in gt["images"]]
    ref_gt = copy.deepcopy(gt)  # the same data as the tensors carry (image ids are positions)
    for im in ref_gt["images"]:
        im["id"] = by_image[im["id"]]
    for a in ref_gt["annotations"]:
        a["image_id"] = by_image[a["image_id"]]
        t = targets[a["image_id"]]
        x, y, w, h = a["bbox"]
        xyxy = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64)
        x1, y1, x2, y2 = xyxy[0].tolist()
        a["bbox"] = [x1, y1, x2 - x1, y2 - y1]
        t["boxes"] = torch.cat([t["boxes"].double(), xyxy])
        t["labels"] = torch.cat([t["labels"], torch.tensor([1])])
        kp = torch.tensor(a["keypoints"], dtype=torch.float64).reshape(1, 17, 3)
        t["keypoints"] = torch.cat([t["keypoints"].double(), kp])
        t["area"] = torch.cat([t["area"].double(), torch.tensor([a["area"]], dtype=torch.float64)])
        t["iscrowd"] = torch.cat([t["iscrowd"], torch.tensor([float(a["iscrowd"])])])
    for r in res:
        p = preds[by_image[r["image_id"]]]
        p["labels"] = torch.cat([p["labels"], torch.tensor([1])])
        p["scores"] = torch.cat([p["scores"].double(), torch.tensor([r["score"]], dtype=torch.float64)])
        kp = torch.tensor(r["keypoints"], dtype=torch.float64).reshape(1, 17, 3)
        p["keypoints"] = torch.cat([p["keypoints"].double(), kp])
    ref_res = [dict(r, image_id=by_image[r["image_id"]]) for r in res]
    r = evaluate(targets, preds, "keypoints")
    ref = oracle(ref_gt, ref_res, "keypoints")["stats"]
    assert r.stats == ref
