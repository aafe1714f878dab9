"""``segment VIDEO --runtime openvino|onnxruntime``: each frame's image features come from the
image path's cached export (the same entry ``segment IMAGE --runtime`` made), the rest of the
tracker stays transformers'. Checked on the tiny SAM 2 video, EdgeTAM video and SAM 3 tracker
models: the features equal the video model's own ``get_image_features`` (relative error
<= 1e-3, position encodings equal), the masks through the CLI equal ``--runtime torch``'s
(IoU >= 0.999, same object ids on every frame) with the torch vision encoder never called, a
new process finds the export, and ``--text`` on a video with ``--runtime`` is one line, exit 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sam_family_helpers import engine, iou, model_dirs_fixture, records, rle_mask, run_cli

from cli_helpers import assert_user_error, one_error_line

model_dirs = model_dirs_fixture()
REPO = Path(__file__).resolve().parents[1]
RUNTIMES = ("openvino", "onnxruntime")
FAMILIES = ("sam2_video", "edgetam_video", "sam3_video")
SIZE = (160, 120)
PROMPT_FRAME = 2
_TORCH: dict = {}  # family -> the --runtime torch records (computed once)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """6 frames of two moving squares (PyAV) and the prompts on frame 2: a point on the first
    square, a box around the second (objects 1 and 2; frames 0-1 are the backward pass)."""
    from visiontool.io.video import write_test_video

    d = tmp_path_factory.mktemp("video-rt")
    path = d / "squares.mp4"
    boxes = write_test_video(path, frames=6, size=SIZE, fps=12, squares=2)
    b0, b1 = boxes[PROMPT_FRAME]
    prompts = d / "objects.json"
    prompts.write_text(json.dumps([
        {"points": [[(b0[0] + b0[2]) / 2, (b0[1] + b0[3]) / 2]], "frame": PROMPT_FRAME, "object_id": 1},
        {"box": [float(v) for v in b1], "frame": PROMPT_FRAME, "object_id": 2}]))
    args = ["--prompts", str(prompts)]
    from PIL import Image

    from visiontool.io.video import iter_frames

    still = d / "frame0.png"
    Image.fromarray(np.asarray(next(iter(iter_frames(str(path)))).image)).save(still)
    return path, args, still


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("video-rt-exports")


def _video(clip, model, *extra, env=None):
    from typer.testing import CliRunner

    from visiontool.cli.main import app
    from visiontool.models import loader

    loader.release()  # as a new command: the model loads, the export is found on disk
    path, prompt_args, _ = clip
    args = ["segment", str(path), "--model", str(model), *prompt_args, "--device", "cpu", "-f", "jsonl", *extra]
    return CliRunner().invoke(app, [str(a) for a in args], env=env or {})


def _torch_records(clip, model, fam):
    if fam not in _TORCH:
        r = _video(clip, model, "--runtime", "torch")
        assert r.exit_code == 0, r.stderr
        _TORCH[fam] = records(r.stdout)
    return _TORCH[fam]


def _assert_same_video(a: list[dict], b: list[dict], hw) -> None:
    assert [r["frame"] for r in a] == [r["frame"] for r in b] == list(range(6))
    informative, seen = 0, set()
    for x, y in zip(a, b):
        ids = [m["object_id"] for m in x["masks"]]  # an object absent (or empty) on a frame is left out
        assert [m["object_id"] for m in y["masks"]] == ids, x["frame"]
        seen |= set(ids)
        for m, n in zip(x["masks"], y["masks"]):
            assert iou(rle_mask(m["segmentation"]), rle_mask(n["segmentation"])) >= 0.999, (x["frame"], m["object_id"])
            assert abs(m["score"] - n["score"]) <= 1e-3
            informative += 0 < m["area"] < hw[0] * hw[1]
    assert seen == {1, 2}
    assert informative >= 6  # masks that are neither empty nor the whole frame: the comparison can fail


@pytest.mark.parametrize("fam", FAMILIES)
def test_frame_features_equal_the_video_models_own(model_dirs, export_cache, monkeypatch, fam):
    """What is put into the session's feature cache equals what the model would compute itself."""
    import torch

    from visiontool.models import loader
    from visiontool.models.hf_sam_video_features import RuntimeFrameFeatures

    monkeypatch.setenv("VISIONTOOL_CACHE", str(export_cache))
    loader.release()
    eng = engine(model_dirs(fam), use_cache=False, runtime="openvino")
    model = eng.torch_model(eng.s.video_class)
    rgb = np.random.default_rng(1).integers(0, 255, (SIZE[1], SIZE[0], 3), dtype=np.uint8)
    pv = eng.pixel_values(rgb)[0]
    got = RuntimeFrameFeatures(eng, model)(pv)
    with torch.inference_mode():
        want = model.get_image_features(pv[None], return_dict=True)
    feats, pos = want.fpn_hidden_states, want.fpn_position_encoding
    assert len(got["vision_feats"]) == len(feats) == len(got["vision_pos_embeds"]) == len(pos)
    for g, w in zip(got["vision_feats"], feats):
        assert g.shape == w.shape
        rel = float(torch.linalg.norm((g - w).double()) / torch.linalg.norm(w.double()))
        assert rel <= 1e-3, rel
    for g, w in zip(got["vision_pos_embeds"], pos):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-6)
    loader.release()


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("fam", FAMILIES)
def test_video_masks_equal_torch_with_the_image_paths_export(model_dirs, clip, export_cache, monkeypatch, fam,
                                                            runtime):
    import transformers

    model = model_dirs(fam)
    env = {"VISIONTOOL_CACHE": str(export_cache)}
    ref = _torch_records(clip, model, fam)
    # the image path makes (or finds) the export ...
    from typer.testing import CliRunner

    from visiontool.cli.main import app
    from visiontool.models import loader

    loader.release()
    img = CliRunner().invoke(app, ["segment", str(clip[2]), "--model", str(model), "--point", "30,40", "--device",
                                   "cpu", "-f", "jsonl", "--no-cache", "--runtime", runtime], env=env)
    assert img.exit_code == 0, img.stderr
    # ... and the video reads it: no second export, and the torch vision encoder never runs
    cls = getattr(transformers, {"sam2_video": "Sam2VideoModel", "edgetam_video": "EdgeTamVideoModel",
                                 "sam3_video": "Sam3TrackerVideoModel"}[fam])

    def no_torch_encoder(*a, **k):
        raise AssertionError("the torch vision encoder ran")

    monkeypatch.setattr(cls, "get_image_features", no_torch_encoder)
    r = _video(clip, model, "--runtime", runtime, env=env)
    assert r.exit_code == 0, r.stderr
    assert "export" not in r.stderr
    out = records(r.stdout)
    _assert_same_video(ref, out, (SIZE[1], SIZE[0]))
    assert all(rec["model"] == ref[0]["model"] for rec in out)
    loader.release()


def test_a_new_process_finds_the_video_export(model_dirs, clip, tmp_path):
    model = model_dirs("sam2_video")
    cache = tmp_path / "cache"
    first = _video(clip, model, "--runtime", "onnxruntime", env={"VISIONTOOL_CACHE": str(cache)})
    assert first.exit_code == 0, first.stderr
    assert f"exported {model} image encoder to onnxruntime in" in first.stderr
    env = {**os.environ, "VISIONTOOL_CACHE": str(cache), "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    path, prompt_args, _ = clip
    cmd = [sys.executable, "-m", "visiontool", "segment", str(path), "--model", str(model), *prompt_args,
           "--device", "cpu", "-f", "jsonl", "--runtime", "onnxruntime"]
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "export" not in second.stderr
    assert second.stdout == first.stdout
    assert len(list((cache / "exports").iterdir())) == 1  # one entry, no temporary leftovers


def test_sam3_text_on_a_video_with_a_runtime_is_refused(model_dirs, clip):
    path = clip[0]
    r = run_cli(["segment", path, "--model", model_dirs("sam3_video"), "--text", "white", "--device", "cpu",
                 "--runtime", "openvino", "-q"])
    line = one_error_line(r)
    assert "--text on a video" in line and "--runtime torch" in line


def test_runtime_usage_errors_on_a_video(model_dirs, clip):
    r = run_cli(["segment", clip[0], "--model", model_dirs("sam2_video"), "--point", "10,10", "--device", "cpu",
                 "--dtype", "float16", "--runtime", "onnxruntime"])
    assert_user_error(r, 2, "runs float32 exports only")
