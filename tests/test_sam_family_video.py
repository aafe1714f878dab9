"""Masks through a video: transformers' documented propagation recipe reproduced (forward from
the prompt frame and backward to the start), one record per decoded frame with stable object
ids, --vid-stride/--start/--end, the annotated mp4, bounded tracking state, SAM 3 text and
grounded text on videos, and every bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sam_family_helpers import engine, iou, model_dirs_fixture, records, rle_mask, run_cli

from visiontool.types import Prompt

model_dirs = model_dirs_fixture()
SIZE = (160, 120)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """24 frames of two moving squares (PyAV), their boxes, and the decoded RGB frames."""
    from visiontool.io.video import iter_frames, write_test_video

    path = tmp_path_factory.mktemp("video") / "squares.mp4"
    boxes = write_test_video(path, frames=24, size=SIZE, fps=12, squares=2)
    frames = [(f.index, f.time_s, np.asarray(f.image)) for f in iter_frames(str(path))]
    return path, boxes, frames


def _centre(b):
    return [(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]


def _prompts(boxes, frame):
    return [Prompt(points=[_centre(boxes[frame][0])], labels=[1], frame=frame),
            Prompt(box=list(boxes[frame][1]), frame=frame)]


def _recipe(path, frames, boxes, frame, reverse):
    """transformers' documented video recipe on the whole clip: a session on all frames, the
    prompts added on ``frame``, then propagate_in_video_iterator (one direction per session)."""
    import torch
    import transformers as T

    from visiontool.models.hf_sam_video import video_processor

    model = T.Sam2VideoModel.from_pretrained(str(path)).eval()
    proc = video_processor(engine(path))
    sess = proc.init_video_session(video=[f[2] for f in frames], inference_device="cpu", dtype=torch.float32)
    proc.add_inputs_to_inference_session(sess, frame_idx=frame, obj_ids=[1],
                                         input_points=[[[_centre(boxes[frame][0])]]], input_labels=[[[1]]])
    proc.add_inputs_to_inference_session(sess, frame_idx=frame, obj_ids=[2],
                                         input_boxes=[[[float(v) for v in boxes[frame][1]]]])
    sess.obj_with_new_inputs = [1, 2]
    out = {}
    with torch.inference_mode():
        model(inference_session=sess, frame_idx=frame)
        for o in model.propagate_in_video_iterator(sess, start_frame_idx=frame, reverse=reverse):
            m = proc.post_process_masks([o.pred_masks], original_sizes=[[SIZE[1], SIZE[0]]], binarize=True)[0]
            out[o.frame_idx] = m[:, 0].numpy()
    return out


def _compare(results, ref, frames_to_check):
    n = 0
    for index, _, dets in results:
        if index not in frames_to_check:
            continue
        assert sorted(dets.data["object_id"].tolist()) == [1, 2]
        for j, oid in enumerate(dets.data["object_id"]):
            assert iou(rle_mask(dets.masks[j]), ref[index][oid - 1]) >= 0.999, (index, oid)
            n += 1
    assert n == 2 * len(frames_to_check)


def test_propagation_is_the_documented_recipe_forward_and_backward(model_dirs, clip):
    path, boxes, frames = clip
    eng = engine(model_dirs("sam2_video"))
    res = list(eng.propagate(iter(frames), _prompts(boxes, 10)))
    assert [r[0] for r in res] == list(range(24))  # one result per frame, in frame order
    assert all(r.image.shape == (SIZE[1], SIZE[0], 3) for r in res)
    _compare(res, _recipe(model_dirs("sam2_video"), frames, boxes, 10, reverse=False), set(range(10, 24)))
    _compare(res, _recipe(model_dirs("sam2_video"), frames, boxes, 10, reverse=True), set(range(0, 11)))


def test_tracking_state_stays_bounded(model_dirs, clip, monkeypatch):
    """After each frame no more past outputs are kept than the model reads (or --max-frames-in-memory)."""
    from visiontool.models import hf_sam_video

    path, boxes, frames = clip
    seen = []
    orig = hf_sam_video.VideoRun.prune

    def prune(self, k, reverse):
        orig(self, k, reverse)
        s = self.session
        seen.append((self.window, max(len(od["non_cond_frame_outputs"]) for od in s.output_dict_per_obj.values()),
                     len(s.processed_frames or {}), any("high_res_masks" in o for od in s.output_dict_per_obj.values()
                                                         for st in od.values() for o in st.values())))

    monkeypatch.setattr(hf_sam_video.VideoRun, "prune", prune)
    eng = engine(model_dirs("sam2_video"))
    full = list(eng.propagate(iter(frames), _prompts(boxes, 0)))
    assert seen and all(kept <= window and pixels == 0 and not high for window, kept, pixels, high in seen)
    seen.clear()
    small = list(eng.propagate(iter(frames), _prompts(boxes, 0), max_frames_in_memory=2))
    assert {w for w, *_ in seen} == {2} and max(k for _, k, *_ in seen) <= 2
    assert len(small) == len(full) == 24
    # a window at least as long as what the model reads changes nothing
    exact = list(eng.propagate(iter(frames), _prompts(boxes, 0), max_frames_in_memory=100))
    for a, b in zip(full, exact):
        assert [m["counts"] for m in a[2].masks] == [m["counts"] for m in b[2].masks]


@pytest.mark.parametrize("fam", ["edgetam_video", "sam3_video"])
def test_other_video_families_through_the_cli(model_dirs, clip, fam, tmp_path):
    path, boxes, _ = clip
    cx, cy = _centre(boxes[5][0])
    res = run_cli(["segment", path, "--model", model_dirs(fam), "--point", f"{cx},{cy}", "--frame", "5", "-f",
                   "jsonl", "-q", "--save-viz", tmp_path / "out.mp4"])
    assert res.exit_code == 0, res.stderr
    recs = records(res.stdout)
    assert [r["frame"] for r in recs] == list(range(24))
    assert all(r["image"] == str(path) and (r["width"], r["height"]) == SIZE for r in recs)
    assert all([m["object_id"] for m in r["masks"]] in ([1], []) for r in recs)
    assert sum(bool(r["masks"]) for r in recs) >= 12
    assert _count_frames(tmp_path / "out.mp4") == 24


def _count_frames(path) -> int:
    import av

    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def test_cli_records_stride_window_and_annotated_video(model_dirs, clip, tmp_path):
    path, boxes, _ = clip
    model = model_dirs("sam2_video")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([
        {"points": [_centre(boxes[0][0])], "frame": 0, "object_id": 7, "label": "white"},
        {"box": [float(v) for v in boxes[12][1]], "frame": 12, "object_id": 3, "label": "red"},
    ]))
    res = run_cli(["segment", path, "--model", model, "--prompts", prompts, "--vid-stride", "3", "-f", "jsonl", "-q",
                   "--save-viz", tmp_path / "viz"])
    assert res.exit_code == 0, res.stderr
    recs = records(res.stdout)
    assert [r["frame"] for r in recs] == list(range(0, 24, 3))
    assert [r["image_id"] for r in recs] == [r["frame"] for r in recs]
    assert all(abs(r["time_s"] - r["frame"] / 12) < 1e-6 for r in recs)
    ids = [[m["object_id"] for m in r["masks"]] for r in recs]
    assert all(set(i) <= {7} for i in ids[:4]) and all(set(i) <= {3, 7} for i in ids[4:])  # red joins on frame 12
    assert any(3 in i for i in ids[4:])
    assert all(m["label"] == {7: "white", 3: "red"}[m["object_id"]] for r in recs for m in r["masks"])
    assert _count_frames(tmp_path / "viz" / "squares.mp4") == 8

    res = run_cli(["segment", path, "--model", model, "--point", "40,40", "--start", "4", "--end", "10", "--frame",
                   "6", "-f", "coco", "-q"])
    assert res.exit_code == 0, res.stderr
    rows = json.loads(res.stdout)
    assert sorted({r["image_id"] for r in rows}) <= list(range(4, 10)) and rows


def test_sam3_text_on_a_video(model_dirs, clip):
    path, _, _ = clip
    res = run_cli(["segment", path, "--model", model_dirs("sam3_video"), "--text", "square", "--threshold", "0.3",
                   "--end", "8", "-f", "jsonl", "-q"])
    assert res.exit_code == 0, res.stderr
    recs = records(res.stdout)
    assert [r["frame"] for r in recs] == list(range(8))
    masks = [m for r in recs for m in r["masks"]]
    assert masks and all(m["label"] == "square" == m["phrase"] and "object_id" in m for m in masks)


def test_grounded_text_on_a_video(model_dirs, clip, monkeypatch):
    from test_sam_family_text import FakeDetector

    det = FakeDetector()
    monkeypatch.setattr("visiontool.models.registry.load_detector", lambda *a, **k: det)
    path, _, _ = clip
    res = run_cli(["segment", path, "--model", model_dirs("sam2_video"), "--text", "white, red", "--frame", "2",
                   "-f", "jsonl", "-q"])
    assert res.exit_code == 0, res.stderr
    recs = records(res.stdout)
    assert len(recs) == 24
    labels = {(m["object_id"], m["label"]) for r in recs for m in r["masks"]}
    assert labels <= {(1, "white"), (2, "red")} and len(labels) == 2


# ----------------------------------------------------------------------------- bad input
def test_video_given_to_an_image_model(model_dirs, clip):
    path, _, _ = clip
    for model in (str(model_dirs("sam2")), None):
        args = ["segment", path, "--point", "4,4", "-q"] + (["--model", model] if model else [])
        res = run_cli(args)
        assert res.exit_code == 2, res.stderr
        assert "facebook/sam2.1-hiera-tiny" in res.stderr and "Traceback" not in res.stderr


def test_truncated_video_keeps_the_frames_decoded(model_dirs, tmp_path):
    from visiontool.io.video import write_test_video

    good = tmp_path / "clip.mkv"
    write_test_video(good, frames=24, size=SIZE, fps=12)
    data = good.read_bytes()
    bad = tmp_path / "cut.mkv"
    bad.write_bytes(data[:int(len(data) * 0.6)])
    res = run_cli(["segment", bad, "--model", model_dirs("sam2_video"), "--point", "20,60", "-f", "jsonl", "-q"])
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("visiontool: error:")]
    assert len(lines) == 1 and "truncated" in lines[0]
    recs = records(res.stdout)
    assert 0 < len(recs) < 24 and [r["frame"] for r in recs] == list(range(len(recs)))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 4096)
    res = run_cli(["segment", garbage, "--model", model_dirs("sam2_video"), "--point", "20,60", "-q"])
    assert res.exit_code == 1 and "cannot open video" in res.stderr and res.stdout == ""


@pytest.mark.parametrize("args, needle", [
    (["--point", "20,60", "--frame", "40"], "beyond the end"),
    (["--point", "200,60"], "outside"),
    (["--point", "20,60", "--frame", "3", "--vid-stride", "2"], "not among the processed frames"),
    (["--text", "x", "--detector", "none"], "needs a text-capable model"),
    (["--auto"], "--auto segments images"),
])
def test_bad_video_input(model_dirs, clip, args, needle):
    path, _, _ = clip
    res = run_cli(["segment", path, "--model", model_dirs("sam2_video"), "-q", *args])
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert needle in res.stderr and "Traceback" not in res.stderr
