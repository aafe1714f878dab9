# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""Every prompt kind through the CLI on a real photo, and the numpy decoder against
segment-anything's own SamPredictor on the same tiny checkpoint."""
from __future__ import annotations

import json

import numpy as np
import pytest
from segment_helpers import decode, records, run_cli, sam_engine, sam_predictor_reference, tiny_ckpt  # noqa: F401

from visiontool.masks import str_counts
from visiontool.types import Prompt


def _run(tiny_ckpt, images_dir, *args, image="truck.jpg", input=None):
    res = run_cli(["segment", images_dir / image, "--checkpoint", tiny_ckpt, "--format", "json", "-q", *args],
                  input=input)
    assert res.exit_code == 0, (res.stdout, res.stderr)
    return records(res.stdout)


def test_single_point_gives_three_ranked_masks(tiny_ckpt, images_dir):
    [rec] = _run(tiny_ckpt, images_dir, "--point", "600,400")
    assert (rec["width"], rec["height"]) == (1800, 1200)
    masks = rec["masks"]
    assert len(masks) == 3
    ious = [m["predicted_iou"] for m in masks]
    assert ious == sorted(ious, reverse=True)
    assert [m["prompt"]["rank"] for m in masks] == [1, 2, 3]
    for m in masks:
        assert m["prompt"]["points"] == [[600.0, 400.0]] and m["prompt"]["labels"] == [1]
        mask = decode(m["segmentation"])
        assert mask.shape == (1200, 1800)
        assert int(mask.sum()) == m["area"]
        if m["area"]:
            ys, xs = np.nonzero(mask)
            assert m["box"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_single_mask_flag_and_negative_points(tiny_ckpt, images_dir):
    [rec] = _run(tiny_ckpt, images_dir, "--point", "600,400", "--single-mask")
    assert len(rec["masks"]) == 1
    [rec] = _run(tiny_ckpt, images_dir, "--point", "600,400", "--neg-point", "100,100")
    assert len(rec["masks"]) == 1  # two points are not ambiguous: one mask by default
    assert rec["masks"][0]["prompt"]["labels"] == [1, 0]
    [rec] = _run(tiny_ckpt, images_dir, "--point", "600,400", "--neg-point", "100,100", "--multimask")
    assert len(rec["masks"]) == 3


def test_each_box_is_its_own_object(tiny_ckpt, images_dir):
    [rec] = _run(tiny_ckpt, images_dir, "--box", "100,100,900,700", "--box", "1000,200,1700,1100")
    assert [m["prompt"]["box"] for m in rec["masks"]] == [[100, 100, 900, 700], [1000, 200, 1700, 1100]]
    assert [m["id"] for m in rec["masks"]] == [0, 1]


def test_box_with_points_and_mask_input(tiny_ckpt, images_dir, tmp_path):
    from PIL import Image

    coarse = np.zeros((1200, 1800), np.uint8)
    coarse[300:900, 400:1400] = 255
    Image.fromarray(coarse).save(tmp_path / "coarse.png")
    [rec] = _run(tiny_ckpt, images_dir, "--box", "300,200,1500,1000", "--point", "800,600",
                 "--mask-input", tmp_path / "coarse.png")
    [m] = rec["masks"]
    assert m["prompt"]["box"] == [300, 200, 1500, 1000] and m["prompt"]["mask_input"].endswith("coarse.png")
    # the coarse mask changes the answer
    [plain] = _run(tiny_ckpt, images_dir, "--box", "300,200,1500,1000", "--point", "800,600")
    assert plain["masks"][0]["segmentation"] != m["segmentation"]


def test_prompts_file(tiny_ckpt, images_dir, tmp_path):
    spec = [{"points": [[600, 400]], "label": "truck"},
            {"box": [100, 100, 900, 700], "neg_points": [[500, 400]]},
            {"points": [[300, 300], [320, 310]], "labels": [1, 0], "multimask": True}]
    (tmp_path / "p.json").write_text(json.dumps(spec))
    [rec] = _run(tiny_ckpt, images_dir, "--prompts", tmp_path / "p.json")
    masks = rec["masks"]
    assert len(masks) == 3 + 1 + 3
    assert masks[0]["label"] == "truck"
    assert [m["prompt"]["index"] for m in masks] == [0, 0, 0, 1, 2, 2, 2]
    assert masks[3]["prompt"]["labels"] == [0] and masks[3]["prompt"]["box"] == [100, 100, 900, 700]


DETECT_RECORDS = [
    {"image": "truck.jpg", "image_id": 1, "width": 1800, "height": 1200, "model": "detr",
     "detections": [{"label": "truck", "category_id": 8, "score": 0.97, "box": [120.5, 80.0, 1650.0, 1100.0]},
                    {"label": "person", "category_id": 1, "score": 0.61, "box": [10.0, 20.0, 200.0, 400.0]}]},
    {"image": "dog.jpg", "image_id": 2, "width": 0, "height": 0, "model": "detr",
     "detections": [{"label": "dog", "category_id": 18, "score": 0.88, "box": [50.0, 60.0, 300.0, 400.0]}]},
]


def _detect_lines(images_dir, fmt):
    recs = [dict(r, image=str(images_dir / r["image"])) for r in DETECT_RECORDS]
    return json.dumps(recs) if fmt == "json" else "".join(json.dumps(r) + "\n" for r in recs)


@pytest.mark.parametrize("fmt", ["jsonl", "json"])
def test_boxes_from_stdin_several_images(tiny_ckpt, images_dir, fmt):
    res = run_cli(["segment", "--boxes-from", "-", "--checkpoint", tiny_ckpt, "--format", "jsonl", "-q"],
                  input=_detect_lines(images_dir, fmt))
    assert res.exit_code == 0, res.stderr
    recs = records(res.stdout)
    assert [r["image"].rsplit("/", 1)[-1] for r in recs] == ["truck.jpg", "dog.jpg"]
    truck = recs[0]["masks"]
    assert [(m["label"], m["category_id"], m["score"]) for m in truck] == [("truck", 8, 0.97), ("person", 1, 0.61)]
    assert truck[0]["prompt"]["box"] == [120.5, 80.0, 1650.0, 1100.0]
    assert recs[1]["masks"][0]["label"] == "dog" and len(recs[1]["masks"]) == 1
    for r in recs:
        for m in r["masks"]:
            assert decode(m["segmentation"]).shape == (r["height"], r["width"])


def test_boxes_from_file_with_explicit_images(tiny_ckpt, images_dir, tmp_path):
    f = tmp_path / "det.jsonl"
    f.write_text(_detect_lines(images_dir, "jsonl"))
    res = run_cli(["segment", images_dir / "dog.jpg", "--boxes-from", f, "--checkpoint", tiny_ckpt,
                   "--format", "json", "-q"])
    assert res.exit_code == 0, res.stderr
    [rec] = records(res.stdout)
    assert [m["label"] for m in rec["masks"]] == ["dog"]


def test_auto_segments_everything(tiny_ckpt, images_dir):
    [rec] = _run(tiny_ckpt, images_dir, "--auto", "--points-per-side", "4", "--pred-iou-thresh", "0",
                 "--stability-score-thresh", "0", image="dog.jpg")
    masks = rec["masks"]
    assert masks, "no masks at all"
    assert all(m["prompt"]["auto"] for m in masks)
    assert [m["id"] for m in masks] == list(range(len(masks)))
    scores = [m["score"] for m in masks]
    assert scores == sorted(scores, reverse=True)
    for m in masks:
        assert 0 <= m["stability_score"] <= 1
        assert int(decode(m["segmentation"]).sum()) == m["area"] > 0
    # a strict stability threshold keeps a subset
    [strict] = _run(tiny_ckpt, images_dir, "--auto", "--points-per-side", "4", "--pred-iou-thresh", "0",
                    "--stability-score-thresh", "0.99", image="dog.jpg")
    assert len(strict["masks"]) <= len(masks)
    assert all(m["stability_score"] >= 0.99 for m in strict["masks"])


def test_auto_min_area_removes_small_islands_and_holes(tiny_ckpt, images_dir):
    import cv2

    args = ("--auto", "--points-per-side", "3", "--pred-iou-thresh", "0", "--stability-score-thresh", "0")
    [plain] = _run(tiny_ckpt, images_dir, *args, image="dog.jpg")
    [rec] = _run(tiny_ckpt, images_dir, *args, "--min-area", "5000", image="dog.jpg")
    assert rec["masks"] and len(rec["masks"]) <= len(plain["masks"])
    for m in rec["masks"]:
        mask = decode(m["segmentation"]).astype(np.uint8)
        assert int(mask.sum()) == m["area"]
        for working in (mask, 1 - mask):  # islands, then holes (component 0 is the other side)
            _, _, stats, _ = cv2.connectedComponentsWithStats(working, 8)
            sizes = stats[1:, -1]
            assert len(sizes) <= 1 or sizes.min() >= 5000, sizes


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("mode", ["holes", "islands"])
def test_remove_small_regions_matches_segment_anything(seed, mode):
    from segment_anything.utils.amg import remove_small_regions as reference

    from visiontool.services.auto_masks import remove_small_regions

    rng = np.random.default_rng(seed)
    mask = np.zeros((60, 80), bool)
    for _ in range(12):  # blobs of assorted sizes, some touching
        y, x, r = rng.integers(0, 60), rng.integers(0, 80), rng.integers(1, 9)
        yy, xx = np.ogrid[:60, :80]
        mask ^= (yy - y) ** 2 + (xx - x) ** 2 <= r * r
    ours, changed = remove_small_regions(mask, 30, mode)
    ref, ref_changed = reference(mask, 30, mode)
    assert changed == ref_changed
    assert np.array_equal(ours, ref)


# ----------------------------------------------------------------------------- vs SamPredictor
@pytest.fixture(scope="module")
def reference(tiny_ckpt, images_dir):
    return sam_predictor_reference(tiny_ckpt, images_dir / "truck.jpg")


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.mark.parametrize("kind", ["point", "points+neg", "box", "box+point", "multimask", "mask"])
def test_masks_match_sampredictor(reference, kind):
    pred, engine, rgb = reference
    h, w = rgb.shape[:2]
    kw, prompt = {}, None
    if kind == "point":
        kw = dict(point_coords=np.array([[600.0, 400.0]]), point_labels=np.array([1]), multimask_output=False)
        prompt = Prompt(points=[[600, 400]], multimask=False)
    elif kind == "points+neg":
        kw = dict(point_coords=np.array([[600.0, 400.0], [100.0, 900.0]]), point_labels=np.array([1, 0]),
                  multimask_output=False)
        prompt = Prompt(points=[[600, 400], [100, 900]], labels=[1, 0])
    elif kind == "box":
        kw = dict(box=np.array([100.0, 150.0, 1300.0, 1000.0]), multimask_output=False)
        prompt = Prompt(box=[100, 150, 1300, 1000])
    elif kind == "box+point":
        kw = dict(point_coords=np.array([[600.0, 400.0]]), point_labels=np.array([1]),
                  box=np.array([100.0, 150.0, 1300.0, 1000.0]), multimask_output=False)
        prompt = Prompt(points=[[600, 400]], box=[100, 150, 1300, 1000])
    elif kind == "multimask":
        kw = dict(point_coords=np.array([[900.0, 700.0]]), point_labels=np.array([1]), multimask_output=True)
        prompt = Prompt(points=[[900, 700]])
    else:
        logits = np.random.default_rng(0).normal(0, 5, (1, 256, 256)).astype(np.float32)
        kw = dict(point_coords=np.array([[600.0, 400.0]]), point_labels=np.array([1]), mask_input=logits,
                  multimask_output=False)
        prompt = Prompt(points=[[600, 400]], multimask=False)
    ref_masks, ref_iou, _ = pred.predict(**kw)
    emb = engine.encode(rgb)
    np.testing.assert_allclose(emb, pred.features[0].numpy(), rtol=1e-4, atol=1e-4)
    if kind == "mask":  # feed the same low-res logits (bypassing the PNG conversion)
        dec = engine.decoder
        scale = engine.geometry(h, w)[2]
        low, iou = dec.decode(emb, dec.sparse_embeddings(prompt.points[None] * scale, prompt.labels[None], None),
                              dec.dense_embedding(logits[0]), False)
        up = engine.upscaler((h, w))
        ours = [(decode(str_counts(r)).astype(bool)) for r in up.rles(low[0])]
        got_iou = iou[0]
    else:
        masks = engine.segment(rgb, [prompt])
        order = np.argsort(-ref_iou, kind="stable")
        ref_masks, ref_iou = ref_masks[order], ref_iou[order]
        ours = [masks.mask(i) for i in range(len(masks))]
        got_iou = masks.data["predicted_iou"]
    assert len(ours) == len(ref_masks)
    np.testing.assert_allclose(got_iou, ref_iou, rtol=1e-4, atol=1e-5)
    for a, b in zip(ours, ref_masks):
        assert b.any() and not b.all(), "degenerate reference mask: the test would prove nothing"
        assert _iou(a, b) >= 0.999
