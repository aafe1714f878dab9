"""Adversarial COCO sets and the pycocotools oracle, for the evaluate tests.

``adversarial_set(seed, ...)`` returns ``(gt_dict, results_list)`` in COCO formats: a GT
with polygons and crowd RLE regions, annotation id 0, areas exactly on the 32² / 96²
boundaries, images without GT, categories without GT; results with tied scores, images
with more than 100 detections, detections carrying both ``bbox`` and ``segmentation``.

``oracle(gt_dict, results, iou_type)`` runs ``pycocotools.cocoeval.COCOeval`` on deep
copies and returns the 12 stats plus per-class AP/AP50/AP75/AR100 computed from
``eval['precision']`` / ``eval['recall']`` the standard (detectron2) way, -1 where empty.
"""
from __future__ import annotations

import contextlib
import copy
import io

import numpy as np

STAT_KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large",
             "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large"]
KEYPOINT_STAT_KEYS = ["map", "map_50", "map_75", "map_medium", "map_large",
                      "mar", "mar_50", "mar_75", "mar_medium", "mar_large"]


def _rle_str(rle: dict) -> dict:
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _box_polygon(x, y, w, h):
    return [x, y, x + w, y, x + w, y + h, x, y + h]


def adversarial_set(seed: int = 0, n_images: int = 12, n_cats: int = 4, with_segm: bool = True,
                    both_bbox_and_segm: bool = False, many_dets_image: bool = True, first_id: int = 0):
    """A small COCO GT + results exercising every tie-breaking and boundary rule."""
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(seed)
    cat_ids = [1, 3, 7, 10, 11][:n_cats + 1]  # the last one never has GT
    images, anns, res = [], [], []
    ann_id = first_id  # id 0 is legal in COCO and easy to mishandle (falsy)
    for i in range(n_images):
        iid = 100 + i * 3
        w, h = int(rng.integers(64, 200)), int(rng.integers(64, 200))
        images.append({"id": iid, "file_name": f"dir/img_{iid}.jpg", "width": w, "height": h})
        empty_gt = i % 5 == 4
        gts = []
        for k in range(0 if empty_gt else int(rng.integers(1, 7))):
            cat = int(rng.choice(cat_ids[:-1]))
            if k == 0 and i % 3 == 0:
                bw, bh = 32.0, 32.0  # area exactly on the small/medium boundary
            elif k == 0 and i % 3 == 1:
                bw, bh = 48.0, 48.0 * 4 / 3 if 48 * 4 / 3 < h else 32.0
            else:
                bw, bh = float(rng.integers(2, w // 2 + 2)), float(rng.integers(2, h // 2 + 2))
            bx, by = float(rng.integers(0, max(1, w - int(bw)))), float(rng.integers(0, max(1, h - int(bh))))
            crowd = rng.random() < 0.15
            if crowd:
                rle = mask_utils.frPyObjects(np.array([[bx, by, bw, bh]]), h, w)[0]
                seg = _rle_str(rle)
                area = float(mask_utils.area(rle))
            else:
                seg = [_box_polygon(bx, by, bw, bh)]
                area = bw * bh  # 1024.0 or 9216.0 on the boundary images
            if k == 1 and i % 4 == 0:
                area = 96.0 * 96.0  # medium/large boundary, independent of the polygon
            anns.append({"id": ann_id, "image_id": iid, "category_id": cat, "bbox": [bx, by, bw, bh],
                         "area": area, "iscrowd": int(crowd), "segmentation": seg})
            gts.append((bx, by, bw, bh, cat))
            ann_id += 1
        if i % 6 == 5:
            continue  # an image with GT but no predictions
        n_det = 130 if (many_dets_image and i == 1) else int(rng.integers(1, 25))
        for d in range(n_det):
            if gts and d < 2 * len(gts):
                bx, by, bw, bh, cat = gts[d % len(gts)]
                j = rng.normal(0, 0.1, 4)
                box = [bx + j[0] * bw, by + j[1] * bh, max(1.0, bw * (1 + j[2])), max(1.0, bh * (1 + j[3]))]
                if rng.random() < 0.2:
                    cat = int(rng.choice(cat_ids))  # sometimes a category without GT
            else:
                bw, bh = float(rng.uniform(2, w / 2)), float(rng.uniform(2, h / 2))
                box = [float(rng.uniform(0, w - bw)), float(rng.uniform(0, h - bh)), bw, bh]
                cat = int(rng.choice(cat_ids))
            box = [round(float(v), 2) for v in box]
            score = float(rng.choice([0.9, 0.5, 0.5, 0.3, 0.7]) if rng.random() < 0.5
                          else round(float(rng.random()), 2))  # many exact ties
            r = {"image_id": iid, "category_id": cat, "score": score}
            if with_segm:
                poly = [_box_polygon(*box)] if rng.random() < 0.5 else [
                    [box[0], box[1], box[0] + box[2], box[1] + box[3] / 2, box[0], box[1] + box[3]]]
                r["segmentation"] = _rle_str(mask_utils.merge(mask_utils.frPyObjects(poly, h, w)))
                if both_bbox_and_segm:
                    r["bbox"] = box
            else:
                r["bbox"] = box
            res.append(r)
    cats = [{"id": c, "name": f"cat{c}", "supercategory": "s"} for c in cat_ids]
    return {"images": images, "annotations": anns, "categories": cats}, res


def oracle(gt: dict, results: list, iou_type: str = "bbox") -> dict:
    """pycocotools' numbers: {"stats": {key: v}, "per_class": {cat_id: {ap, ap_50, ap_75, ar_100}},
    "precision": array, "recall": array}."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = copy.deepcopy(gt)
        cg.createIndex()
        cd = cg.loadRes(copy.deepcopy(results)) if results else COCO()
        if not results:  # pycocotools cannot loadRes an empty list; an empty result set instead
            cd.dataset = {"images": copy.deepcopy(gt["images"]), "categories": copy.deepcopy(gt["categories"]),
                          "annotations": []}
            cd.createIndex()
        e = COCOeval(cg, cd, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    prec, rec = e.eval["precision"], e.eval["recall"]
    per = {}
    for k, cid in enumerate(e.params.catIds):
        def mean(x):
            x = x[x > -1]
            return float(np.mean(x)) if x.size else -1.0
        per[int(cid)] = {"ap": mean(prec[:, :, k, 0, -1]), "ap_50": mean(prec[0, :, k, 0, -1]),
                         "ap_75": mean(prec[5, :, k, 0, -1]),
                         "ar_20" if iou_type == "keypoints" else "ar_100": mean(rec[:, k, 0, -1])}
    keys = KEYPOINT_STAT_KEYS if iou_type == "keypoints" else STAT_KEYS
    assert len(keys) == len(e.stats)
    return {"stats": dict(zip(keys, (float(v) for v in e.stats))), "per_class": per,
            "precision": prec, "recall": rec}


def _names_and_results_by_image(gt: dict, results: list) -> tuple[dict[int, str], dict[int, list]]:
    names = {c["id"]: c["name"] for c in gt["categories"]}
    by_image: dict[int, list] = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    return names, by_image


def detect_records(gt: dict, results: list, model: str = "test/model") -> list[dict]:
    """visiontool detect-style records (xyxy boxes, labels by name) for the given COCO results."""
    names, by_image = _names_and_results_by_image(gt, results)
    recs = []
    for im in gt["images"]:
        dets = []
        for r in by_image.get(im["id"], []):
            x, y, w, h = r["bbox"]
            dets.append({"label": names[r["category_id"]], "category_id": 1000 + r["category_id"],
                         "score": r["score"], "box": [x, y, x + w, y + h]})
        recs.append({"image": f"/data/photos/{im['file_name']}", "image_id": None, "width": im["width"],
                     "height": im["height"], "model": model, "detections": dets})
    return recs


def segment_records(gt: dict, results: list) -> list[dict]:
    """visiontool segment-style records ("masks" with xyxy box and RLE) for COCO results that
    carry both ``bbox`` and ``segmentation``."""
    names, by_image = _names_and_results_by_image(gt, results)
    recs = []
    for im in gt["images"]:
        masks = []
        for j, r in enumerate(by_image.get(im["id"], [])):
            x, y, w, h = r["bbox"]
            masks.append({"id": j, "label": names[r["category_id"]], "score": r["score"], "area": 0,
                          "box": [x, y, x + w, y + h], "prompt": {"box": [x, y, x + w, y + h]},
                          "segmentation": r["segmentation"]})
        recs.append({"image": im["file_name"], "width": im["width"], "height": im["height"],
                     "model": "sam/test", "masks": masks})
    return recs


def integer_boxes(results: list) -> list:
    """Results with integer-valued boxes (exact through xywh <-> xyxy round trips)."""
    out = []
    for r in results:
        r = dict(r)
        r["bbox"] = [float(round(v)) for v in r["bbox"]]
        r["bbox"][2] = max(r["bbox"][2], 1.0)
        r["bbox"][3] = max(r["bbox"][3], 1.0)
        out.append(r)
    return out


def keypoint_set(seed: int = 0, n_images: int = 15, with_boxes: bool = True):
    """COCO person keypoints: a GT (17 keypoints per person, some invisible, some persons with
    no visible keypoint, crowd regions) and results near the GT plus random ones, with tied
    scores; ``with_boxes`` gives each result a ``bbox`` (loadRes' bbox branch: area = w*h)."""
    rng = np.random.default_rng(seed)
    images, anns, res = [], [], []
    aid = 1
    for i in range(n_images):
        w_img, h_img = int(rng.integers(200, 400)), int(rng.integers(200, 400))
        images.append({"id": i + 1, "width": w_img, "height": h_img, "file_name": f"p{i}.jpg"})
        for k in range(int(rng.integers(0, 5))):
            w, h = float(rng.uniform(20, 150)), float(rng.uniform(20, 150))
            x, y = float(rng.uniform(0, w_img - w)), float(rng.uniform(0, h_img - h))
            kx, ky = rng.uniform(x, x + w, 17), rng.uniform(y, y + h, 17)
            v = rng.choice([0, 1, 2], 17, p=[.3, .2, .5]) if k != 1 else np.zeros(17, np.int64)
            kx[v == 0] = 0
            ky[v == 0] = 0
            anns.append({"id": aid, "image_id": i + 1, "category_id": 1, "bbox": [x, y, w, h],
                         "area": round(w * h * 0.7, 2), "iscrowd": int(rng.random() < 0.1),
                         "keypoints": np.stack([kx, ky, v], 1).reshape(-1).round(2).tolist(),
                         "num_keypoints": int((v > 0).sum()),
                         "segmentation": [_box_polygon(x, y, w, h)]})
            aid += 1
            for _ in range(int(rng.integers(1, 3))):
                jit = rng.normal(0, 4, (17, 2))
                dk = np.stack([kx + jit[:, 0], ky + jit[:, 1], np.ones(17)], 1).reshape(-1).round(2).tolist()
                r = {"image_id": i + 1, "category_id": 1, "keypoints": dk,
                     "score": float(rng.choice([0.5, 0.9])) if rng.random() < 0.3 else round(float(rng.random()), 2)}
                if with_boxes:
                    r["bbox"] = [round(x + jit[0, 0], 2), round(y + jit[0, 1], 2), round(w, 2), round(h, 2)]
                res.append(r)
        for _ in range(int(rng.integers(0, 3))):
            dk = np.stack([rng.uniform(0, w_img, 17), rng.uniform(0, h_img, 17), np.ones(17)], 1)
            r = {"image_id": i + 1, "category_id": 1, "keypoints": dk.reshape(-1).round(2).tolist(),
                 "score": round(float(rng.random()), 2)}
            if with_boxes:
                r["bbox"] = [1.0, 1.0, 30.0, 30.0]
            res.append(r)
    cats = [{"id": 1, "name": "person", "supercategory": "person",
             "keypoints": [f"k{j}" for j in range(17)], "skeleton": []}]
    return {"images": images, "annotations": anns, "categories": cats}, res


# bbox results made invalid: name -> (mutation of one result, text the one error line must contain)
BAD = {
    "missing score": (lambda r: {k: v for k, v in r.items() if k != "score"}, "has no 'score'"),
    "null score": (lambda r: dict(r, score=None), "score is not a number"),
    "string score": (lambda r: dict(r, score="0.9"), "score is not a number"),
    "missing bbox": (lambda r: {k: v for k, v in r.items() if k != "bbox"}, "has no 'bbox'"),
    "missing image_id": (lambda r: {k: v for k, v in r.items() if k != "image_id"}, "has no 'image_id'"),
    "nan box": (lambda r: dict(r, bbox=[float("nan"), 1, 2, 3]), "bbox is nan"),
    "negative width": (lambda r: dict(r, bbox=[1, 1, -2, 3]), "negative width"),
    "negative height": (lambda r: dict(r, bbox=[1, 1, 2, -3]), "negative width or height"),
    "short box": (lambda r: dict(r, bbox=[1, 1, 2]), "list of 4 numbers"),
    "unknown image": (lambda r: dict(r, image_id=987654), "image_id 987654 is not in the ground truth"),
    "not an object": (lambda r: [1, 2], "is not an object"),
}
