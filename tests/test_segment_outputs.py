# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""Every output format round-tripped through pycocotools' RLE decoder, --masks-dir in
amg.py's layout, --save-viz, --output, and COCO results with --gt."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from segment_helpers import decode, records, run_cli, tiny_ckpt  # noqa: F401

PROMPT = ["--box", "100,100,900,700", "--point", "1200,600"]


@pytest.fixture(scope="module")
def reference(tiny_ckpt, images_dir, tmp_path_factory):
    """The json output and the masks it describes (decoded with pycocotools)."""
    cache = tmp_path_factory.mktemp("emb")
    res = run_cli(["segment", images_dir / "truck.jpg", images_dir / "dog.jpg", "--checkpoint", tiny_ckpt,
                   "--box", "100,100,600,400", "--box", "300,200,640,420", "--format", "json", "-q",
                   "--cache-dir", cache])
    assert res.exit_code == 0, res.stderr
    recs = records(res.stdout)
    return recs, cache


def _masks(recs):
    return [(r["image"], m["id"], decode(m["segmentation"])) for r in recs for m in r["masks"]]


def test_json_records(reference):
    recs, _ = reference
    assert [r["image"].rsplit("/", 1)[-1] for r in recs] == ["truck.jpg", "dog.jpg"]
    for r in recs:
        assert set(r) == {"image", "image_id", "width", "height", "model", "masks"}
        for m in r["masks"]:
            assert {"id", "score", "area", "box", "prompt", "segmentation"} <= set(m)
            assert isinstance(m["segmentation"]["counts"], str)
            mask = decode(m["segmentation"])
            assert mask.shape == (r["height"], r["width"]) and int(mask.sum()) == m["area"]
    assert any(0 < m["area"] < r["width"] * r["height"] for r in recs for m in r["masks"])


def test_jsonl_and_output_file_match_json(reference, tiny_ckpt, images_dir, tmp_path):
    recs, cache = reference
    out = tmp_path / "o.jsonl"
    res = run_cli(["segment", images_dir / "truck.jpg", images_dir / "dog.jpg", "--checkpoint", tiny_ckpt,
                   "--box", "100,100,600,400", "--box", "300,200,640,420", "--format", "jsonl", "-q",
                   "--cache-dir", cache, "--output", out])
    assert res.exit_code == 0 and res.stdout == ""
    lines = out.read_text().splitlines()
    assert len(lines) == 2
    got = [json.loads(ln) for ln in lines]
    assert got == recs
    for (_, _, a), (_, _, b) in zip(_masks(got), _masks(recs)):
        np.testing.assert_array_equal(a, b)


def test_coco_results_load_in_pycocotools(reference, tiny_ckpt, images_dir, tmp_path):
    from pycocotools.coco import COCO

    recs, cache = reference
    res = run_cli(["segment", images_dir / "truck.jpg", images_dir / "dog.jpg", "--checkpoint", tiny_ckpt,
                   "--box", "100,100,600,400", "--box", "300,200,640,420", "--format", "coco", "-q",
                   "--cache-dir", cache])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert len(rows) == sum(len(r["masks"]) for r in recs)
    gt = {"images": [{"id": r["image_id"], "file_name": r["image"].rsplit("/", 1)[-1], "width": r["width"],
                      "height": r["height"]} for r in recs],
          "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(rows))
    coco = COCO(str(tmp_path / "gt.json"))
    dt = coco.loadRes(str(tmp_path / "res.json"))
    flat = [m for r in recs for m in r["masks"]]
    for ann, m in zip(sorted(dt.anns.values(), key=lambda a: a["id"]), flat):
        np.testing.assert_array_equal(dt.annToMask(ann), decode(m["segmentation"]))
        x, y, w, h = ann["bbox"]
        assert [x, y, x + w, y + h] == pytest.approx(m["box"])


def test_coco_with_gt_maps_ids_by_name(tiny_ckpt, images_dir, tmp_path):
    det = [{"image": str(images_dir / "dog.jpg"), "image_id": 1, "width": 0, "height": 0, "model": "m",
            "detections": [{"label": "dog", "category_id": 18, "score": 0.9, "box": [50, 60, 300, 400]},
                           {"label": "unicorn", "category_id": 99, "score": 0.5, "box": [0, 0, 50, 50]}]}]
    gt = {"images": [{"id": 4242, "file_name": "dog.jpg", "width": 1, "height": 1}], "annotations": [],
          "categories": [{"id": 7, "name": "Dog"}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = run_cli(["segment", "--boxes-from", "-", "--checkpoint", tiny_ckpt, "--format", "coco", "--gt",
                   tmp_path / "gt.json", "-q"], input=json.dumps(det))
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert [(r["image_id"], r["category_id"], r["score"]) for r in rows] == [(4242, 7, 0.9)]
    assert "unicorn" in res.stderr


def test_table_format_keeps_whole_rows_off_terminal(tiny_ckpt, images_dir, tmp_path):
    # a long folder (as on a CI runner) must not fold the file name or squeeze a column away
    deep = tmp_path / ("a_rather_long_folder_name_" * 3) / "photos"
    deep.mkdir(parents=True)
    (deep / "dog.jpg").write_bytes((images_dir / "dog.jpg").read_bytes())
    res = run_cli(["segment", deep / "dog.jpg", "--checkpoint", tiny_ckpt, "--point", "100,100",
                   "--format", "table", "-q"])
    assert res.exit_code == 0, res.stderr
    header = next(line for line in res.stdout.splitlines() if "image" in line)
    for column in ("image", "id", "label", "score", "area", "box (x1, y1, x2, y2)"):
        assert column in header
    row = next(line for line in res.stdout.splitlines() if "dog.jpg" in line)
    area = json.loads(run_cli(["segment", deep / "dog.jpg", "--checkpoint", tiny_ckpt, "--point", "100,100",
                               "--format", "json", "-q"]).stdout)[0]["masks"][0]["area"]
    assert f" {area} " in row and "\x1b[" not in res.stdout


def test_masks_dir_amg_layout(tiny_ckpt, images_dir, tmp_path):
    from PIL import Image

    res = run_cli(["segment", images_dir / "truck.jpg", "--checkpoint", tiny_ckpt, *PROMPT, "--multimask",
                   "--format", "json", "-q", "--masks-dir", tmp_path / "m"])
    assert res.exit_code == 0, res.stderr
    [rec] = records(res.stdout)
    folder = tmp_path / "m" / "truck"
    header = (folder / "metadata.csv").read_text().splitlines()[0]
    assert header == ("id,area,bbox_x0,bbox_y0,bbox_w,bbox_h,point_input_x,point_input_y,predicted_iou,"
                      "stability_score,crop_box_x0,crop_box_y0,crop_box_w,crop_box_h")
    rows = list(csv.DictReader(open(folder / "metadata.csv")))
    assert len(rows) == len(rec["masks"]) == 3
    for row, m in zip(rows, rec["masks"]):
        png = np.asarray(Image.open(folder / f"{row['id']}.png"))
        assert png.shape == (1200, 1800) and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png > 0, decode(m["segmentation"]).astype(bool))
        assert int(row["area"]) == m["area"]
        x, y, w, h = (float(row[k]) for k in ("bbox_x0", "bbox_y0", "bbox_w", "bbox_h"))
        assert [x, y, x + w, y + h] == pytest.approx(m["box"])
        assert (float(row["point_input_x"]), float(row["point_input_y"])) == (1200.0, 600.0)
        assert float(row["predicted_iou"]) == pytest.approx(m["predicted_iou"])
        assert [row[k] for k in ("crop_box_x0", "crop_box_y0", "crop_box_w", "crop_box_h")] == ["0", "0", "1800",
                                                                                                 "1200"]


def test_save_viz(tiny_ckpt, images_dir, tmp_path):
    from PIL import Image

    res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", tiny_ckpt, "--box", "50,60,300,400",
                   "--point", "500,300", "--format", "json", "-q", "--save-viz", tmp_path / "viz"])
    assert res.exit_code == 0, res.stderr
    [rec] = records(res.stdout)
    out = tmp_path / "viz" / "dog.png"
    img = np.asarray(Image.open(out).convert("RGB"))
    orig = np.asarray(Image.open(images_dir / "dog.jpg").convert("RGB"))
    assert img.shape == orig.shape
    mask = decode(rec["masks"][0]["segmentation"]).astype(bool)
    diff = np.abs(img.astype(int) - orig.astype(int)).sum(-1)
    if mask.any():
        assert diff[mask].mean() > diff[~mask].mean()  # the mask is tinted, the rest mostly not
