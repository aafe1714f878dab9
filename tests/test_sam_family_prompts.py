"""Every prompt kind on every transformers SAM family, against transformers' own processor,
model and ``post_process_masks`` on the same tiny checkpoint (mask IoU >= 0.999, the same
predicted IoUs); --auto on every family; the CLI on a saved model directory."""
from __future__ import annotations

import numpy as np
import pytest
from sam_family_helpers import (engine, image, iou, model_dirs_fixture, records, reference_masks, rle_mask,
                                run_cli)

from visiontool.types import Prompt

model_dirs = model_dirs_fixture()
IMAGE_FAMILIES = ["sam", "sam_hq", "sam2", "sam2_video", "edgetam", "edgetam_video", "sam3_video"]
IMG = image()

PROMPTS = {  # name: (Prompt kwargs, multimask)
    "point": (dict(points=[[40, 30]], labels=[1]), True),
    "point_neg": (dict(points=[[40, 30], [100, 70]], labels=[1, 0]), False),
    "box": (dict(box=[15, 5, 75, 55]), False),
    "point_box": (dict(points=[[40, 30]], labels=[1], box=[15, 5, 75, 55]), False),
}


def _check(fam, path, dets, prompt_kw, multimask, mask_logits=None) -> int:
    """Asserts the masks equal transformers'; returns how many are neither empty nor full."""
    ref, ref_iou = reference_masks(fam, path, IMG, points=prompt_kw.get("points"), labels=prompt_kw.get("labels"),
                                   box=prompt_kw.get("box"), mask_logits=mask_logits, multimask=multimask)
    order = np.argsort(-ref_iou, kind="stable")
    assert len(dets) == len(order)
    np.testing.assert_allclose(dets.data["predicted_iou"], ref_iou[order], rtol=1e-4, atol=1e-5)
    informative = 0
    for i, k in enumerate(order):
        ours = rle_mask(dets.masks[i])
        assert ours.shape == IMG.shape[:2]
        informative += int(0 < ours.sum() < ours.size)
        assert iou(ours, ref[k]) >= 0.999, (fam, i, iou(ours, ref[k]))
    return informative


@pytest.mark.parametrize("fam", IMAGE_FAMILIES)
def test_every_prompt_kind_matches_transformers(model_dirs, fam):
    path = model_dirs(fam)
    eng = engine(path)
    informative = 0
    for kw, multimask in PROMPTS.values():
        dets = eng.segment(IMG, [Prompt(**kw)], multimask=multimask)
        informative += _check(fam, path, dets, kw, multimask)
    assert informative >= 2, "the random test model gives only empty or full masks"
    # a coarse mask prompt: the same low-res logits given to transformers' model
    mask = np.zeros(IMG.shape[:2], np.uint8)
    mask[10:50, 20:70] = 255
    from PIL import Image

    png = path.parent / f"{fam}_mask.png"
    Image.fromarray(mask).save(png)
    dets = eng.segment(IMG, [Prompt(points=[[40, 30]], labels=[1], mask_input=str(png))], multimask=False)
    _check(fam, path, dets, dict(points=[[40, 30]], labels=[1]), False, mask_logits=eng.mask_logits(str(png),
                                                                                                 IMG.shape[:2]))
    assert eng.stats["encoder_runs"] <= 1  # one image, one encoder run (SAM 3: the backbone)


@pytest.mark.parametrize("fam", ["sam", "sam2", "sam3_video"])
def test_a_batch_of_boxes_equals_one_box_at_a_time(model_dirs, fam):
    eng = engine(model_dirs(fam))
    boxes = [[15, 5, 75, 55], [60, 40, 127, 95], [0, 0, 128, 96], [30, 20, 40, 35]]
    batch = eng.segment(IMG, [Prompt(box=b) for b in boxes])
    assert [m["box"] for m in batch.data["prompt"]] == [[float(v) for v in b] for b in boxes]
    for i, b in enumerate(boxes):
        one = eng.segment(IMG, [Prompt(box=b)])
        assert iou(rle_mask(batch.masks[i]), rle_mask(one.masks[0])) >= 0.999
        assert abs(batch.data["predicted_iou"][i] - one.data["predicted_iou"][0]) < 1e-4


@pytest.mark.parametrize("fam", ["sam", "sam_hq", "sam2", "edgetam", "sam3_video"])
def test_auto_masks_are_the_grid_points_answers(model_dirs, fam):
    """--auto on every family: each kept mask is one of the three answers to its grid point."""
    from visiontool.models.protocol import AutoOptions

    eng = engine(model_dirs(fam))
    opts = AutoOptions(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=0.99)
    dets = eng.segment_auto(IMG, opts)
    assert len(dets) >= 1
    for i in range(min(len(dets), 3)):
        pt = dets.data["prompt"][i]["points"][0]
        answers = eng.segment(IMG, [Prompt(points=[pt], labels=[1])], multimask=True)
        assert max(iou(rle_mask(dets.masks[i]), rle_mask(a)) for a in answers.masks) >= 0.999


def test_cli_on_a_model_directory(model_dirs, tmp_path):
    from PIL import Image

    path = model_dirs("sam2")
    img = tmp_path / "shapes.png"
    Image.fromarray(IMG).save(img)
    res = run_cli(["segment", img, "--model", path, "--point", "40,30", "--box", "15,5,75,55", "--box",
                   "60,40,127,95", "--format", "json", "-q"])
    assert res.exit_code == 2 and "at most one --box" in res.stderr  # points + two boxes: ambiguous
    res = run_cli(["segment", img, "--model", path, "--box", "15,5,75,55", "--box", "60,40,127,95", "--format",
                   "json", "-q", "--masks-dir", tmp_path / "masks", "--save-viz", tmp_path / "viz"])
    assert res.exit_code == 0, res.stderr
    [rec] = records(res.stdout)
    assert rec["model"] == str(path) and len(rec["masks"]) == 2
    eng = engine(path)
    direct = eng.segment(IMG, [Prompt(box=[15, 5, 75, 55]), Prompt(box=[60, 40, 127, 95])])
    for m, rle in zip(rec["masks"], direct.masks):
        assert iou(rle_mask(m["segmentation"]), rle_mask(rle)) == 1.0
    assert len(list((tmp_path / "masks").rglob("*.png"))) == 2
    assert (tmp_path / "viz" / "shapes.png").is_file()


@pytest.mark.parametrize("spec, needle", [("not/a/dir/", "no such directory"),
                                          ("__detr__", "not a SAM-family mask generator")])
def test_a_model_that_is_not_a_sam_family_model(tmp_path, spec, needle):
    from PIL import Image

    if spec == "__detr__":
        (tmp_path / "detr").mkdir()
        (tmp_path / "detr" / "config.json").write_text('{"model_type": "detr"}')
        spec = str(tmp_path / "detr")
    img = tmp_path / "i.png"
    Image.fromarray(IMG).save(img)
    res = run_cli(["segment", img, "--model", spec, "--point", "4,4", "-q"])
    assert res.exit_code == 2 and needle in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
