"""``segment --auto --preset quality`` (a layer of crops, min-area clean-up) against
segment_anything's own ``SamAutomaticMaskGenerator`` with the same settings on the same
weights: the same masks (matched one to one by IoU >= 0.99), the same count, the same
scores, crops and points (issue 8 §4).

A random tiny SAM gives every point the same near-threshold texture (one degenerate mask
after NMS), so this uses :func:`segment_helpers.build_blob_sam`: the tiny architecture
rewired to find the coloured discs of a synthetic scene, which yields masks from the whole
image and from crops, some removed by the IoU threshold, others by crop edges and NMS.
The masks barely depend on the point, so a grid of 4 points per side (the crops get 2)
finds them all and keeps the test short; every other knob is the preset's.
"""
from __future__ import annotations

import numpy as np
import pytest
from segment_helpers import blob_scene, build_blob_sam, decode, records, run_cli

from visiontool.services.segment import PRESETS

POINTS = 4


@pytest.fixture(scope="module")
def blob_files(tmp_path_factory):
    import torch
    from PIL import Image

    from visiontool.models import sam as sam_models

    root = tmp_path_factory.mktemp("blobs")
    torch.save(build_blob_sam().state_dict(), root / "blob_sam.pth")
    rgb, _ = blob_scene()
    Image.fromarray(rgb).save(root / "scene.png")
    with torch.no_grad():  # the reference model from the very file the CLI loads
        sam = sam_models.build_sam(sam_models.load_state_dict(root / "blob_sam.pth"))
    return root, sam, rgb


def _reference(sam, rgb, pred_iou_thresh, stability_score_thresh):
    from segment_anything import SamAutomaticMaskGenerator

    q = PRESETS["quality"]
    gen = SamAutomaticMaskGenerator(
        sam, points_per_side=POINTS, points_per_batch=q.points_per_batch, pred_iou_thresh=pred_iou_thresh,
        stability_score_thresh=stability_score_thresh, stability_score_offset=q.stability_score_offset,
        box_nms_thresh=q.box_nms_thresh, crop_n_layers=q.crop_n_layers, crop_nms_thresh=q.crop_nms_thresh,
        crop_overlap_ratio=q.crop_overlap_ratio, crop_n_points_downscale_factor=q.crop_n_points_downscale_factor,
        min_mask_region_area=q.min_area, output_mode="binary_mask")
    return gen.generate(rgb)


_RUNS: dict = {}


def _ours(root, *extra):
    """The CLI's masks (each configuration run once per module)."""
    key = (str(root), extra)
    if key in _RUNS:
        return _RUNS[key]
    res = run_cli(["segment", root / "scene.png", "--checkpoint", root / "blob_sam.pth", "--auto", "--preset",
                   "quality", "--points-per-side", str(POINTS), "--format", "json", "--device", "cpu", "--no-cache",
                   "-q", *extra])
    assert res.exit_code == 0, (res.stdout, res.stderr)
    _RUNS[key] = records(res.stdout)[0]["masks"]
    return _RUNS[key]


@pytest.mark.parametrize("thresholds", ["preset", "none"])
def test_quality_preset_matches_automatic_mask_generator(blob_files, thresholds):
    root, sam, rgb = blob_files
    q = PRESETS["quality"]
    assert q.crop_n_layers == 1 and q.min_area > 0
    if thresholds == "preset":
        iou_t, stab_t, extra = q.pred_iou_thresh, q.stability_score_thresh, ()
    else:
        iou_t, stab_t, extra = 0.0, 0.0, ("--pred-iou-thresh", "0", "--stability-score-thresh", "0")
    ref = _reference(sam, rgb, iou_t, stab_t)
    # SamAutomaticMaskGenerator also returns masks that are empty (every pixel below the
    # threshold) when no threshold removes them; visiontool leaves those out by design
    ref = [r for r in ref if r["area"] > 0]
    ours = _ours(root, *extra)
    assert len(ref) >= 3, "too few reference masks: the comparison would prove little"
    assert len({tuple(r["crop_box"]) for r in ref}) >= 2, "no mask from a crop"
    assert len(ours) == len(ref)
    # one-to-one by IoU: greedy on the best pairs
    a = [decode(m["segmentation"]).astype(bool) for m in ours]
    b = [r["segmentation"] for r in ref]
    iou = np.array([[(x & y).sum() / max((x | y).sum(), 1) for y in b] for x in a])
    pairs = []
    while len(pairs) < len(a):
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        assert iou[i, j] >= 0.99, f"mask {i} has no counterpart (best IoU {iou[i, j]:.4f})"
        pairs.append((i, j))
        iou[i, :], iou[:, j] = -1, -1
    for i, j in pairs:
        m, r = ours[i], ref[j]
        x, y, w, h = r["crop_box"]
        assert m["prompt"]["crop_box"] == [x, y, x + w, y + h]
        assert np.allclose(m["prompt"]["points"], r["point_coords"], atol=1e-6)
        assert m["predicted_iou"] == pytest.approx(r["predicted_iou"], abs=1e-5)
        assert m["stability_score"] == pytest.approx(r["stability_score"], abs=1e-3)
        assert m["area"] == pytest.approx(r["area"], rel=0.01)
        rx, ry, rw, rh = r["bbox"]  # SAM's is XYWH with an inclusive right/bottom edge
        assert m["box"] == pytest.approx([rx, ry, rx + rw + 1, ry + rh + 1], abs=1.0)


def test_thresholds_remove_masks(blob_files):
    """The preset's IoU threshold is doing something here (else the first test proves less)."""
    root, _, _ = blob_files
    assert len(_ours(root)) < len(_ours(root, "--pred-iou-thresh", "0", "--stability-score-thresh", "0"))
