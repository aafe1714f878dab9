"""Issue 14: whatever pycocotools scores, visiontool scores the same -- all 12 stats and the
per-class AP within 1e-12 of pycocotools' own COCOeval, through the CLI (``--format json
--per-class``) and through the Python API (COCO dicts and torchmetrics-style tensors), on
every engine: torchmetrics' own segm inputs (masks only, empty masks, images without
targets or predictions), ground truths with odd metadata, results without ``bbox`` scored
as bbox, without ``segmentation`` scored as segm, polygon results, and result masks whose
size is not their image's (scored as pycocotools scores them, with a warning)."""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
from typer.testing import CliRunner

from evaluate_helpers import STAT_KEYS, adversarial_set, oracle
from visiontool.cli.main import app
from visiontool.services.evaluate import evaluate

runner = CliRunner()
ENGINES = ["auto", "pycocotools", "faster-coco-eval", "hotcoco", "ultrafast"]
TOL = 1e-12


def assert_same(stats: dict, per_class, ref: dict) -> None:
    """12 stats and per-class AP equal pycocotools' within 1e-12 (-1 stays -1)."""
    for k in STAT_KEYS:
        assert abs(stats[k] - ref["stats"][k]) <= TOL, (k, stats[k], ref["stats"][k])
    got = {int(r["category_id"]): r["ap"] for r in per_class}
    want = {c: v["ap"] for c, v in ref["per_class"].items()}
    assert got.keys() == want.keys()
    for c in want:
        assert abs(got[c] - want[c]) <= TOL, (c, got[c], want[c])


def cli(tmp_path, gt: dict, res: list, iou_type: str, engine: str = "auto"):
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(res))
    r = runner.invoke(app, ["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred", str(tmp_path / "res.json"),
                            "--iou-type", iou_type, "--backend", engine, "--per-class", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout), r.stderr


def check_everywhere(tmp_path, gt: dict, res: list, iou_type: str, engine: str = "auto") -> tuple[str, list]:
    """CLI and API give pycocotools' numbers; returns (CLI stderr, API diagnostics)."""
    ref = oracle(gt, res, iou_type)
    out, err = cli(tmp_path, gt, res, iou_type, engine)
    assert_same(out, out["per_class"], ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = evaluate(copy.deepcopy(gt), copy.deepcopy(res), iou_type, per_class=True, backend=engine)
    assert_same(r.stats, r.per_class, ref)
    return err, r.diagnostics


@pytest.fixture(scope="module")
def data():
    gt, seg = adversarial_set(1, with_segm=True, first_id=1)
    _, box = adversarial_set(1, with_segm=False, first_id=1)
    _, both = adversarial_set(1, with_segm=True, both_bbox_and_segm=True, first_id=1)
    return gt, seg, box, both


# ------------------------------------------------------------------ (2) odd GT metadata


ODD_METADATA = {
    "info-is-a-string": lambda g: g.update(info="fake info"),  # detectron2's evaluation test
    "licenses-is-a-string": lambda g: g.update(licenses="none"),
    "no-info": lambda g: g.pop("info", None),
    "info-is-a-list": lambda g: g.update(info=[1, "x"]),
    "extra-top-level-keys": lambda g: g.update(foo={"bar": [1, 2]}, type="instances", version=3),
    "odd-image-fields": lambda g: [im.update(license="cc-by", coco_url=None, flickr_url=3) for im in g["images"]],
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("odd", list(ODD_METADATA))
def test_metadata_pycocotools_ignores_is_ignored(data, tmp_path, odd, iou_type, engine):
    gt, seg, box, _ = data
    gt = copy.deepcopy(gt)
    ODD_METADATA[odd](gt)
    check_everywhere(tmp_path, gt, box if iou_type == "bbox" else seg, iou_type, engine)


def test_engine_refusing_the_gt_is_blamed_on_the_gt(data, monkeypatch):
    """If an engine's reader cannot read a ground truth at all, the error names the ground
    truth (never the predictions); ``auto`` then scores with pycocotools."""
    import hotcoco

    from visiontool.errors import InvalidInputError

    gt, seg, _, _ = data

    class Refusing:
        def __init__(self, *a, **k):
            raise ValueError("invalid type: string \"fake info\", expected struct Info")

    monkeypatch.setattr(hotcoco, "COCO", Refusing)
    with pytest.raises(InvalidInputError) as exc:
        evaluate(copy.deepcopy(gt), copy.deepcopy(seg), "segm", backend="hotcoco")
    assert "ground truth" in str(exc.value) and "predictions" not in str(exc.value)
    r = evaluate(copy.deepcopy(gt), copy.deepcopy(seg), "segm")
    assert r.engine == "pycocotools" and r.stats == oracle(gt, seg, "segm")["stats"]


# ------------------------------------------------------------ (3)-(5) result shapes


def _poly(r):
    x, y, w, h = r["bbox"]
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def _tri(r):
    x, y, w, h = r["bbox"]
    return [[x, y, x + w, y + h / 2, x + w / 3, y + h]]


SHAPES = {
    # (3) masks without a box, scored as bbox: the box is maskUtils.toBbox of the RLE
    "rle-without-bbox": ("bbox", lambda seg, box, both: seg),
    # (4) boxes without a mask, scored as segm: loadRes makes the box a 4-corner polygon
    "bbox-without-segmentation": ("segm", lambda seg, box, both: box),
    # (5) polygon results (with the box loadRes needs before it reads a polygon)
    "polygon-rectangles": ("segm", lambda seg, box, both: [dict(r, segmentation=_poly(r)) for r in both]),
    "polygon-triangles": ("segm", lambda seg, box, both: [dict(r, segmentation=_tri(r)) for r in both]),
    "polygon-triangles-as-bbox": ("bbox", lambda seg, box, both: [dict(r, segmentation=_tri(r)) for r in both]),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_result_shapes_equal_pycocotools(data, tmp_path, shape, engine):
    gt, seg, box, both = data
    iou_type, make = SHAPES[shape]
    check_everywhere(tmp_path, gt, make(seg, box, both), iou_type, engine)


# ---------------------------------------------------------- (6) mask size != image size


def _small_mask(r, h=10, w=10):
    from pycocotools import mask as mask_utils

    m = np.zeros((h, w), np.uint8, order="F")
    m[2:8, 2:8] = 1
    return dict(r, segmentation={"size": [h, w], "counts": mask_utils.encode(m)["counts"].decode()})


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_mask_of_another_size_is_scored_as_pycocotools_with_a_warning(data, tmp_path, iou_type, engine):
    """pycocotools keeps a result RLE's own size: maskUtils.iou gives -1 against every GT mask
    of another size (never a match), area and box are its own. Same numbers, and a warning
    on stderr (CLI), in the diagnostics and as a UserWarning (API)."""
    gt, seg, _, both = data
    res = [_small_mask(r) if i % 4 == 1 else r for i, r in enumerate(seg)]
    err, diags = check_everywhere(tmp_path, gt, res, iou_type, engine)
    n = sum(1 for i in range(len(seg)) if i % 4 == 1)
    assert f"{n} prediction mask(s) are not the size of their ground-truth image" in err
    assert "result 1: 10x10 on a" in err and err.count("visiontool: warning:") >= 1
    assert any("not the size of their ground-truth image" in d for d in diags)
    with pytest.warns(UserWarning, match="not the size of their ground-truth image"):
        evaluate(copy.deepcopy(gt), copy.deepcopy(res), iou_type)
    if iou_type == "segm":  # beside a box too (the bbox branch keeps the mask as it is)
        res = [_small_mask(r) if i % 3 == 0 else r for i, r in enumerate(both)]
        check_everywhere(tmp_path, gt, res, iou_type, engine)


def test_input_pycocotools_cannot_score_stays_one_error(data, tmp_path):
    gt, seg, box, _ = data
    for res, text in [([dict(box[0], score=float("nan"))] + box[1:], "score is nan"),
                      ([dict(box[0], image_id=99999)] + box[1:], "image_id 99999 is not in the ground truth"),
                      ([dict(box[0], category_id="cat")] + box[1:], "category_id is not an integer"),
                      ([dict(box[0], image_id=10 ** 30)] + box[1:], "image_id is outside the 64-bit integer range"),
                      ([dict(seg[0], segmentation=[[1, 2, 3, 4, 5, 6]])] + seg[1:], "cannot score polygons")]:
        (tmp_path / "gt.json").write_text(json.dumps(gt))
        (tmp_path / "res.json").write_text(json.dumps(res))
        r = runner.invoke(app, ["evaluate", "--gt", str(tmp_path / "gt.json"), "--pred",
                                str(tmp_path / "res.json"), "--iou-type", "segm", "--format", "json"])
        assert r.exit_code == 2, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("visiontool: error:") and text in lines[0], r.stderr
        assert "result 0:" in lines[0] and "res.json" in lines[0]


# ------------------------------------------------- (1) torchmetrics-style tensors


def _docstring_case(torch):
    """torchmetrics' MeanAveragePrecision(iou_type="segm") docstring example."""
    mask_pred = [[0, 0, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]
    mask_tgt = [[0, 0, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]
    preds = [dict(masks=torch.tensor([mask_pred], dtype=torch.bool), scores=torch.tensor([0.536]),
                  labels=torch.tensor([0]))]
    target = [dict(masks=torch.tensor([mask_tgt], dtype=torch.bool), labels=torch.tensor([0]))]
    return target, preds


def _random_case(torch, seed: int, n_images: int = 6):
    """Masks only (no boxes), uint8 or bool, empty masks, images without targets and images
    without predictions, several labels."""
    rng = np.random.default_rng(seed)
    targets, preds = [], []
    for i in range(n_images):
        h, w = int(rng.integers(30, 70)), int(rng.integers(30, 70))
        n = 0 if i == 1 else int(rng.integers(1, 4))
        tm = np.zeros((n, h, w), bool)
        for k in range(n):
            if i == 2 and k == 0:
                continue  # an empty target mask
            y, x = int(rng.integers(0, h - 8)), int(rng.integers(0, w - 8))
            tm[k, y:y + int(rng.integers(3, h - y)), x:x + int(rng.integers(3, w - x))] = True
        m = 0 if i == 3 else int(rng.integers(1, 5))
        pm = np.zeros((m, h, w), bool)
        for k in range(m):
            if i == 4 and k == 0:
                continue  # an empty predicted mask
            src = tm[k % n] if n else np.zeros((h, w), bool)
            pm[k] = np.roll(src, int(rng.integers(-2, 3)), axis=int(rng.integers(0, 2)))
            if not pm[k].any():
                pm[k, 1:6, 1:6] = True
        dtype = torch.uint8 if i % 2 else torch.bool
        targets.append({"masks": torch.from_numpy(tm).to(dtype), "labels": torch.tensor(rng.integers(1, 4, n))})
        preds.append({"masks": torch.from_numpy(pm).to(dtype), "labels": torch.tensor(rng.integers(1, 4, m)),
                      "scores": torch.tensor(rng.random(m), dtype=torch.float32)})
    return targets, preds


def tensors_as_coco(targets, preds):
    """The same data as pycocotools sees it: each image with its size, GT RLE with area =
    maskUtils.area (as torchmetrics gives it), results as RLE without a box (loadRes then takes
    maskUtils.area and maskUtils.toBbox)."""
    from pycocotools import mask as mask_utils

    def rle(m):
        r = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
        return r, {"size": [int(v) for v in r["size"]], "counts": r["counts"].decode()}

    images, anns, res, labels = [], [], [], set()
    for i, (t, p) in enumerate(zip(targets, preds)):
        tm, pm = t["masks"].numpy(), p["masks"].numpy()
        h, w = (tm if tm.shape[0] else pm).shape[1:]
        images.append({"id": i, "height": int(h), "width": int(w)})
        for k in range(tm.shape[0]):
            r, s = rle(tm[k])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(t["labels"][k]), "iscrowd": 0,
                         "segmentation": s, "area": float(mask_utils.area(r)),
                         "bbox": [float(v) for v in mask_utils.toBbox(r)]})
            labels.add(int(t["labels"][k]))
        for k in range(pm.shape[0]):
            res.append({"image_id": i, "category_id": int(p["labels"][k]), "score": float(p["scores"][k]),
                        "segmentation": rle(pm[k])[1]})
            labels.add(int(p["labels"][k]))
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": str(c)} for c in sorted(labels)]}, res


@pytest.mark.parametrize("case", ["docstring", "random-a", "random-b"])
def test_torchmetrics_segm_tensors_equal_pycocotools(tmp_path, case):
    """Targets with ``masks`` and ``labels`` only (no ``boxes``), predictions with ``masks``,
    ``scores``, ``labels``: pycocotools' numbers from the API (tensors) and the CLI (the same
    data as COCO files). torchmetrics itself can differ: its IoU thresholds are float32 (0.6
    becomes 0.60000002, so the docstring's IoU-0.6 match is lost: 0.2, pycocotools 0.3), and
    for segm it drops images without target masks (their predictions are then not counted)."""
    torch = pytest.importorskip("torch")
    targets, preds = _docstring_case(torch) if case == "docstring" else _random_case(
        torch, {"random-a": 3, "random-b": 11}[case])
    gt, res = tensors_as_coco(targets, preds)
    ref = oracle(gt, res, "segm")
    r = evaluate(targets, preds, "segm", per_class=True)
    assert_same(r.stats, r.per_class, ref)
    if case == "docstring":
        assert r.stats["map"] == pytest.approx(0.3) and r.stats["map_50"] == pytest.approx(1.0)
    out, _ = cli(tmp_path, gt, res, "segm")
    assert_same(out, out["per_class"], ref)
    # the masks scored as boxes (mask-only results, box from toBbox)
    if case != "docstring":
        ref_box = oracle(gt, res, "bbox")
        out, _ = cli(tmp_path, gt, res, "bbox")
        assert_same(out, out["per_class"], ref_box)


def test_torchmetrics_prediction_masks_of_another_size(tmp_path):
    """A predicted mask at another resolution than its target masks: the image has the
    targets' size; pycocotools never matches the smaller mask; a UserWarning says so."""
    torch = pytest.importorskip("torch")
    targets, preds = _random_case(torch, 5, n_images=3)
    small = torch.zeros((1, 10, 10), dtype=torch.bool)
    small[0, 2:8, 2:8] = True
    preds.append({"masks": small, "labels": torch.tensor([1]), "scores": torch.tensor([0.99])})
    targets.append({"masks": torch.zeros((1, 40, 40), dtype=torch.bool), "labels": torch.tensor([1])})
    targets[-1]["masks"][0, 2:8, 2:8] = True
    gt, res = tensors_as_coco(targets, preds)
    assert gt["images"][-1]["height"] == 40 and res[-1]["segmentation"]["size"] == [10, 10]
    ref = oracle(gt, res, "segm")
    with pytest.warns(UserWarning, match="1 prediction mask"):
        r = evaluate(targets, preds, "segm", per_class=True)
    assert_same(r.stats, r.per_class, ref)
    out, err = cli(tmp_path, gt, res, "segm")
    assert_same(out, out["per_class"], ref)
    assert "not the size of their ground-truth image" in err


@pytest.mark.parametrize("engine", ENGINES)
def test_keypoints_ignore_odd_metadata_too(tmp_path, engine):
    from evaluate_helpers import KEYPOINT_STAT_KEYS, keypoint_set

    gt, res = keypoint_set(3, with_boxes=False)
    gt = copy.deepcopy(gt)
    gt.update(info="fake info", licenses="none")
    for im in gt["images"]:
        im["license"] = "cc-by"
    ref = oracle(gt, res, "keypoints")
    out, _ = cli(tmp_path, gt, res, "keypoints", engine)
    r = evaluate(copy.deepcopy(gt), copy.deepcopy(res), "keypoints", per_class=True, backend=engine)
    for stats in (out, r.stats):
        assert all(abs(stats[k] - ref["stats"][k]) <= TOL for k in KEYPOINT_STAT_KEYS)
    assert abs(r.per_class[0]["ap"] - ref["per_class"][1]["ap"]) <= TOL


def test_torchmetrics_given_area_and_empty_tensors(tmp_path):
    """A given ``area`` counts where it is > 0 (torchmetrics' conversion: 0 means "compute
    it" from the mask); ``torch.tensor([])`` stands for "no masks" on either side."""
    torch = pytest.importorskip("torch")
    targets, preds = _random_case(torch, 9, n_images=5)
    gt, res = tensors_as_coco(targets, preds)
    k = 0
    for t in targets:
        n = len(t["labels"])
        area = torch.zeros(n, dtype=torch.float64)
        for j in range(n):
            if (k + j) % 2:
                area[j] = 500.0 + k + j  # moves the object to another area range
        for j in range(n):
            if area[j] > 0:
                gt["annotations"][k + j]["area"] = float(area[j])
        t["area"] = area
        k += n
    targets.append({"masks": torch.tensor([]), "labels": torch.tensor([], dtype=torch.int64)})
    preds.append({"masks": torch.tensor([]), "labels": torch.tensor([], dtype=torch.int64),
                  "scores": torch.tensor([])})
    gt["images"].append({"id": len(targets) - 1, "height": 0, "width": 0})
    ref = oracle(gt, res, "segm")
    r = evaluate(targets, preds, "segm", per_class=True)
    assert_same(r.stats, r.per_class, ref)


@pytest.mark.parametrize("engine", ENGINES)
def test_gt_mask_of_another_size_is_scored_as_pycocotools_with_a_warning(data, tmp_path, engine):
    """A GT RLE (crowd or not, compressed or not) of another size than its image keeps its own
    size in pycocotools: no result mask of the image's size matches it."""
    gt, seg, _, _ = data
    gt = copy.deepcopy(gt)
    for i, a in enumerate(gt["annotations"]):
        if a["iscrowd"] or i % 5 == 1:
            a["segmentation"] = _small_mask({})["segmentation"]
        elif i % 5 == 2:
            a["segmentation"] = {"size": [10, 10], "counts": [22, 6, 4, 6, 62]}
    err, diags = check_everywhere(tmp_path, gt, seg, "segm", engine)
    assert "ground-truth mask(s) are not the size of their image (first: annotations[" in err
    assert any("ground-truth mask(s) are not the size" in d for d in diags)
    with pytest.warns(UserWarning, match="ground-truth mask"):
        evaluate(copy.deepcopy(gt), copy.deepcopy(seg), "segm")


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_numpy_results_and_coco_object_as_pycocotools_takes_them(data, iou_type):
    """loadRes takes an (N, 7) array [image_id, x, y, w, h, score, category_id]; COCOeval a
    COCO object as the ground truth: the API takes both."""
    from pycocotools.coco import COCO

    gt, _, box, _ = data
    arr = np.array([[r["image_id"], *r["bbox"], r["score"], r["category_id"]] for r in box])
    ref = oracle(gt, [{"image_id": int(a[0]), "bbox": list(a[1:5]), "score": a[5], "category_id": int(a[6])}
                      for a in arr], iou_type)
    coco = COCO()
    coco.dataset = copy.deepcopy(gt)
    coco.createIndex()
    for g in (gt, coco):
        r = evaluate(g, arr, iou_type, per_class=True)
        assert_same(r.stats, r.per_class, ref)
