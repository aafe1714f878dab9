# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""The numpy decoder path (the one a cache hit takes: torch not imported) against
segment_anything's own ``SamPredictor.predict`` on the same tiny weights and the same image
embedding: low-res logits and predicted IoU to float tolerance, final masks IoU >= 0.999
(issue 8 §4).

``NumpySamDecoder`` switches to torch's kernels when the process has imported torch (it has,
here), so ``sam_array_ops.loaded_torch`` is patched to report no torch: every array operation below
runs on numpy, as in a fresh ``visiontool segment`` process on a cache hit.
"""
from __future__ import annotations

import numpy as np
import pytest
from segment_helpers import decode, sam_engine, sam_predictor_reference, tiny_ckpt  # noqa: F401

from visiontool.masks import str_counts
from visiontool.models import sam_array_ops, sam_decoder
from visiontool.types import Prompt

H_W_PROMPTS = {  # truck.jpg is 1800 x 1200
    "point": dict(points=[[600, 400]], multimask=False),
    "point-multimask": dict(points=[[900, 700]], multimask=True),
    "points+neg": dict(points=[[600, 400], [1500, 300], [100, 900]], labels=[1, 1, 0], multimask=False),
    "neg-only": dict(points=[[100, 900]], labels=[0], multimask=False),
    "box": dict(box=[100, 150, 1300, 1000], multimask=False),
    "box-multimask": dict(box=[400, 300, 1700, 1150], multimask=True),
    "box+points": dict(points=[[600, 400], [1200, 900]], labels=[1, 0], box=[100, 150, 1300, 1000],
                       multimask=False),
    "edge-box": dict(box=[0, 0, 1800, 1200], multimask=False),
}


@pytest.fixture(scope="module")
def setup(tiny_ckpt, images_dir):
    pred, engine, rgb = sam_predictor_reference(tiny_ckpt, images_dir / "truck.jpg")
    emb = pred.features[0].numpy().copy()  # the same embedding for both decoders
    return pred, engine, rgb, emb


@pytest.fixture
def numpy_only(monkeypatch, setup):
    """The decoder as in a process that has not imported torch."""
    monkeypatch.setattr(sam_array_ops, "loaded_torch", lambda: None)
    _, engine, _, _ = setup
    ops = sam_decoder._Ops.get(engine.decoder)
    assert ops.t is None, "the decoder would still use torch"
    return engine


def _reference(pred, prompt: Prompt, mask_input=None):
    kw = dict(multimask_output=bool(prompt.multimask), return_logits=False)
    if prompt.points is not None:
        kw.update(point_coords=prompt.points.astype(np.float64), point_labels=prompt.labels)
    if prompt.box is not None:
        kw["box"] = prompt.box.astype(np.float64)
    if mask_input is not None:
        kw["mask_input"] = mask_input[None].astype(np.float32)
    return pred.predict(**kw)  # masks (M, H, W) bool, iou (M,), low-res logits (M, 4g, 4g)


def _iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def _compare_low(engine, hw, low, ref_low):
    """Logits agree where the masks read them (the decoder skips the padding)."""
    rows, cols = engine.upscaler(hw).low_extent()
    got, want = low[:, :rows, :cols], ref_low[:, :rows, :cols]
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 * scale)  # measured: ~1e-6
    assert np.array_equal(got > 0, want > 0) or np.mean((got > 0) != (want > 0)) < 1e-4


@pytest.mark.parametrize("kind", list(H_W_PROMPTS))
def test_numpy_decoder_matches_sampredictor(setup, numpy_only, kind):
    pred, engine, rgb, emb = setup
    hw = rgb.shape[:2]
    prompt = Prompt(**H_W_PROMPTS[kind])
    ref_masks, ref_iou, ref_low = _reference(pred, prompt)
    [(low, iou)] = engine.predict(emb, [prompt], hw)
    assert low.shape == ref_low.shape and iou.shape == ref_iou.shape == ((3,) if prompt.multimask else (1,))
    np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=2e-6)
    _compare_low(engine, hw, low, ref_low)
    # the records: best predicted IoU first, each mask as SamPredictor's
    masks = engine.masks_from_embedding(emb, [prompt], hw)
    order = np.argsort(-ref_iou, kind="stable")
    assert len(masks) == len(order)
    for i, k in enumerate(order):
        ours = masks.mask(i)
        assert ref_masks[k].any() and not ref_masks[k].all(), "degenerate reference mask: proves nothing"
        assert _iou(ours, ref_masks[k]) >= 0.999
        assert masks.data["predicted_iou"][i] == pytest.approx(float(ref_iou[k]), abs=1e-5)


@pytest.mark.parametrize("multimask", [False, True])
def test_numpy_decoder_mask_input(setup, numpy_only, multimask):
    """A coarse mask prompt (random logits exercise every conv and norm of mask_downscaling)."""
    pred, engine, rgb, emb = setup
    hw = rgb.shape[:2]
    logits = np.random.default_rng(0).normal(0, 5, (256, 256)).astype(np.float32)
    prompt = Prompt(points=[[600, 400]], multimask=multimask)
    ref_masks, ref_iou, ref_low = _reference(pred, prompt, logits)
    dec = engine.decoder
    scale = engine.geometry(*hw)[2]
    low, iou = dec.decode(emb, dec.sparse_embeddings(prompt.points[None] * scale, prompt.labels[None], None),
                          dec.dense_embedding(logits), multimask, extent=engine.upscaler(hw).low_extent())
    np.testing.assert_allclose(iou[0], ref_iou, rtol=0, atol=2e-6)
    _compare_low(engine, hw, low[0], ref_low)
    for ours, want in zip(engine.upscaler(hw).rles(low[0]), ref_masks):
        assert want.any() and not want.all()
        assert _iou(decode(str_counts(ours)).astype(bool), want) >= 0.999


def test_numpy_decoder_mask_png_through_the_engine(setup, numpy_only, tmp_path):
    """``--mask-input PNG``: the engine's own conversion to logits, then the whole predict path."""
    from PIL import Image

    pred, engine, rgb, emb = setup
    h, w = rgb.shape[:2]
    m = np.zeros((h, w), np.uint8)
    m[300:900, 200:1400] = 255
    Image.fromarray(m).save(tmp_path / "coarse.png")
    prompt = Prompt(points=[[600, 400]], mask_input=str(tmp_path / "coarse.png"), multimask=False)
    ref_masks, ref_iou, ref_low = _reference(pred, prompt, engine.mask_logits(prompt.mask_input, (h, w)))
    [(low, iou)] = engine.predict(emb, [prompt], (h, w))
    np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=2e-6)
    _compare_low(engine, (h, w), low, ref_low)


def test_numpy_decoder_batches_like_single_prompts(setup, numpy_only):
    """Six boxes go through the decoder together (chunks of 4): each equals its own
    SamPredictor call."""
    pred, engine, rgb, emb = setup
    hw = rgb.shape[:2]
    rng = np.random.default_rng(1)
    prompts = []
    for _ in range(6):
        x1, y1 = rng.uniform(0, 1200), rng.uniform(0, 800)
        prompts.append(Prompt(box=[x1, y1, x1 + rng.uniform(50, 600), y1 + rng.uniform(50, 400)],
                                  multimask=False))
    got = engine.predict(emb, prompts, hw)
    for p, (low, iou) in zip(prompts, got):
        _, ref_iou, ref_low = _reference(pred, p)
        np.testing.assert_allclose(iou, ref_iou, rtol=0, atol=2e-6)
        _compare_low(engine, hw, low, ref_low)


def test_numpy_and_torch_kernels_agree(setup, monkeypatch):
    """The two runtimes of the one decoder (numpy on a cache hit, torch after a miss) agree."""
    pred, engine, rgb, emb = setup
    hw = rgb.shape[:2]
    prompts = [Prompt(**H_W_PROMPTS[k]) for k in ("point-multimask", "box+points")]
    with_torch = engine.predict(emb, prompts, hw)
    monkeypatch.setattr(sam_array_ops, "loaded_torch", lambda: None)
    without = engine.predict(emb, prompts, hw)
    for (la, ia), (lb, ib) in zip(with_torch, without):
        np.testing.assert_allclose(ia, ib, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(la, lb, rtol=0, atol=2e-4 * max(1.0, float(np.abs(la).max())))
