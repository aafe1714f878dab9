# ruff: noqa: F811  (pytest fixtures imported from segment_helpers are re-bound as test arguments)
"""Bad input: exit codes, one `visiontool: error:` line, never a traceback, and no model
loaded for mistakes that can be seen from the command line."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from segment_helpers import assert_user_error, records, run_cli, tiny_ckpt  # noqa: F401

from visiontool.models.sam_official import SamOfficial


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if anything tries to build the SAM engine."""
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the input was validated")

    monkeypatch.setattr(SamOfficial, "__init__", boom)


@pytest.mark.parametrize("args, needles", [
    (["--point", "1801,10"], ["point 1801,10", "outside", "1800x1200"]),
    (["--point", "-1,10"], ["point -1,10"]),
    (["--neg-point", "10,1300"], ["point 10,1300"]),
    (["--box", "10,10,2000,500"], ["box 10,10,2000,500", "outside"]),
    (["--box", "500,10,100,500"], ["box 500,10,100,500", "x2 < x1"]),
    (["--point", "12"], ["--point '12'", "X,Y"]),
    (["--box", "1,2,3"], ["--box '1,2,3'"]),
    (["--point", "a,b"], ["--point 'a,b'"]),
    (["--point", "5,5", "--box", "1,1,9,9", "--box", "2,2,8,8"], ["at most one --box"]),
    ([], ["nothing to segment"]),
    (["--auto", "--point", "5,5"], ["--auto"]),
    (["--points-per-side", "8"], ["add --auto"]),
    (["--auto", "--points-per-side", "100000"], ["--points-per-side 100000: at most 1024"]),  # was a MemoryError
    (["--auto", "--preset", "huge"], ["--preset 'huge'"]),
    (["--auto", "--pred-iou-thresh", "1.5"], ["--pred-iou-thresh"]),
    (["--point", "5,5", "--format", "csv"], ["--format 'csv'"]),
    (["--point", "5,5", "--device", "tpu"], ["--device 'tpu'"]),
    (["--point", "5,5", "--dtype", "int8"], ["--dtype 'int8'"]),
    (["--point", "5,5", "--checkpoint", "nope.pth"], ["nope.pth"]),
    (["--point", "5,5", "-m", "torchvision:fasterrcnn_resnet50_fpn"],  # was "no such directory"
     ["names a detector: `visiontool detect --model torchvision:fasterrcnn_resnet50_fpn` runs it"]),
    (["--point", "5,5", "-m", "ultralytics:yolov8n.pt"], ["names a detector", "--boxes-from"]),
    (["--point", "5,5", "--mask-input", "missing.png"], ["missing.png"]),
    (["--point", "5,5", "--gt", "gt.json"], ["--format coco"]),
    (["--point", "5,5", "--no-cache", "--cache-dir", "x"], ["--no-cache"]),
])
def test_usage_errors_exit_2_before_the_model(images_dir, no_model, args, needles):
    res = run_cli(["segment", images_dir / "truck.jpg", *args])
    assert_user_error(res, 2, *needles)


def test_missing_image_exit_2_before_the_model(images_dir, no_model):
    res = run_cli(["segment", images_dir / "truck.jpg", images_dir / "nope.jpg", "--point", "5,5"])
    assert_user_error(res, 2, "nope.jpg")


@pytest.mark.parametrize("content, needles", [
    ("{not json", ["--prompts", "not valid JSON"]),
    ("[]", ["non-empty JSON list"]),
    ('[{"points": [[1, 2, 3]]}]', ["[0]", "pairs"]),
    ('[{"points": [[1, 2]], "labels": [1, 1]}]', ["labels"]),
    ('[{"box": [1, 2]}]', ["box"]),
    ('[{"label": "x"}]', ["needs points, a box or a mask"]),
    ('[{"points": [[5000, 2]]}]', ["point 5000,2", "outside"]),
    ('[{"box": [1, 2, 3, 4], "mask_input": "zz.png"}]', ["zz.png"]),
    ('["oops"]', ["expected an object"]),
    # a typo gave every point label 1, and a video's keys were ignored on a photo
    ('[{"points": [[5, 5]], "lables": [0]}]', ["p.json[0]: unknown key 'lables'", "did you mean 'labels'?"]),
    ('[{"points": [[5, 5]], "frame": 2}]', ["p.json[0]: 'frame' applies to videos, and every source is a photo"]),
    ('[{"box": [1, 1, 9, 9], "frame": 0, "object_id": 1}]', ["'frame' and 'object_id' apply to videos"]),
])
def test_malformed_prompts_file(images_dir, tmp_path, no_model, content, needles):
    f = tmp_path / "p.json"
    f.write_text(content)
    res = run_cli(["segment", images_dir / "truck.jpg", "--prompts", f])
    assert_user_error(res, 2, *needles)


@pytest.mark.parametrize("content, needles", [
    ("{oops", ["--boxes-from", "line 1"]),
    ("[{oops", ["--boxes-from", "not valid JSON"]),
    ('{"image": "a.jpg"}', ["record 1", "detections"]),
    ('{"image": "a.jpg", "detections": [{"box": [1, 2]}]}', ["detection 1", "box"]),
    ("", ["empty"]),
])
def test_malformed_boxes_from(images_dir, no_model, content, needles):
    res = run_cli(["segment", "--boxes-from", "-"], input=content)
    assert_user_error(res, 2, *needles)


def test_boxes_from_naming_a_missing_image(images_dir, no_model):
    rec = {"image": str(images_dir / "gone.jpg"), "detections": [{"box": [1, 2, 3, 4], "score": 0.5}]}
    res = run_cli(["segment", "--boxes-from", "-"], input=json.dumps(rec))
    assert_user_error(res, 2, "gone.jpg")


def test_detection_boxes_overhanging_the_image_are_clipped(tiny_ckpt, images_dir):
    rec = {"image": str(images_dir / "dog.jpg"),
           "detections": [{"box": [-5, 2, 830, 40], "score": 0.5, "label": "dog"}]}
    res = run_cli(["segment", "--boxes-from", "-", "--checkpoint", tiny_ckpt, "--format", "json", "-q"],
                  input=json.dumps(rec))
    assert res.exit_code == 0, res.stderr
    [r] = records(res.stdout)
    assert r["masks"][0]["prompt"]["box"] == [0, 2, 800, 40]


@pytest.mark.parametrize("box", [[1e9, 1e9, 1e9 + 10, 1e9 + 10], [0, 0, 1e9, 40], [-900, 2, -100, 40]])
def test_detection_box_far_outside_the_image_is_the_same_error_as_box(tiny_ckpt, images_dir, no_model, box):
    """A --boxes-from box far off the image is exit 2 like --box, not a full-image mask."""
    rec = {"image": str(images_dir / "dog.jpg"), "detections": [{"box": box, "score": 0.5, "label": "dog"}]}
    res = run_cli(["segment", "--boxes-from", "-", "--checkpoint", tiny_ckpt, "--format", "json"],
                  input=json.dumps(rec))
    assert_user_error(res, 2, "lies outside", "800x534")
    assert res.stdout == ""


def test_detection_box_upside_down(images_dir, no_model):
    rec = {"image": str(images_dir / "dog.jpg"), "detections": [{"box": [100, 2, 30, 40], "score": 0.5}]}
    res = run_cli(["segment", "--boxes-from", "-"], input=json.dumps(rec))
    assert_user_error(res, 2, "x2 < x1")


def test_boxes_from_missing_file(no_model):
    res = run_cli(["segment", "--boxes-from", "nope.jsonl"])
    assert_user_error(res, 2, "nope.jsonl")


def test_corrupt_image_among_several(tiny_ckpt, images_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes((images_dir / "dog.jpg").read_bytes()[:2000])
    res = run_cli(["segment", images_dir / "dog.jpg", bad, images_dir / "truck.jpg", "--checkpoint", tiny_ckpt,
                   "--point", "20,20", "--format", "jsonl", "-q"])
    assert res.exit_code == 1
    # the failed image is an error (as in detect), named once, then the summary line
    named = [ln for ln in res.stderr.splitlines() if "broken.jpg" in ln]
    assert len(named) == 1 and named[0].startswith("visiontool: error:"), res.stderr
    assert "warning" not in res.stderr
    assert_user_error(res, 1, "1 of 3 images could not be processed", "broken.jpg", single=False)
    assert [r["image"].rsplit("/", 1)[-1] for r in records(res.stdout)] == ["dog.jpg", "truck.jpg"]


def test_mask_input_of_the_wrong_size(tiny_ckpt, images_dir, tmp_path):
    from PIL import Image

    Image.new("L", (10, 10), 255).save(tmp_path / "small.png")
    res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", tiny_ckpt, "--mask-input",
                   tmp_path / "small.png", "-q"])
    assert_user_error(res, 2, "10x10", "800x534")


@pytest.mark.parametrize("fmt", ["json", "jsonl"])
def test_a_mask_input_that_is_no_image_is_refused_before_the_model_and_stdout_stays_empty(images_dir, no_model,
                                                                                         tmp_path, fmt):
    """It was found only when the mask was read, after json's '[' had gone to stdout."""
    (tmp_path / "m.png").write_text("not a png")
    res = run_cli(["segment", images_dir / "dog.jpg", "--mask-input", tmp_path / "m.png", "--format", fmt])
    assert_user_error(res, 2, "m.png' is not a readable image")
    assert res.stdout == ""


def test_mask_input_alone(tiny_ckpt, images_dir, tmp_path):
    from PIL import Image

    m = Image.new("L", (800, 534), 0)
    m.paste(255, (100, 100, 400, 300))
    m.save(tmp_path / "m.png")
    res = run_cli(["segment", images_dir / "dog.jpg", "--checkpoint", tiny_ckpt, "--mask-input", tmp_path / "m.png",
                   "-q", "--format", "json"])
    assert res.exit_code == 0, res.stderr
    [rec] = records(res.stdout)
    assert len(rec["masks"]) == 1 and rec["masks"][0]["prompt"]["mask_input"].endswith("m.png")


def test_help_is_instant_and_has_no_torch():
    code = ("import sys; from visiontool.cli.main import app\n"
            "try:\n app(['segment', '--help'])\nexcept SystemExit: pass\n"
            "assert 'torch' not in sys.modules, 'torch imported by --help'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "--boxes-from" in p.stdout and "--masks-dir" in p.stdout


def test_a_json_list_stopped_by_an_error_is_valid_json_or_nothing():
    """``-f json`` to stdout: an error before the first record leaves nothing (it left "["), one after
    it leaves the finished records as a closed list, as jsonl keeps its lines."""
    import io
    from contextlib import redirect_stdout

    from visiontool.errors import InvalidInputError
    from visiontool.io.records import RecordWriter
    from visiontool.types import ImageResult

    for n in (0, 2):
        buf = io.StringIO()
        with redirect_stdout(buf), pytest.raises(InvalidInputError):
            with RecordWriter("json", None) as w:
                for k in range(n):
                    w.write(ImageResult(f"im{k}.jpg", 4, 3, "m", image_id=k + 1, kind="segment"))
                raise InvalidInputError("the third image is bad")
        if n == 0:
            assert buf.getvalue() == ""
        else:
            assert [r["image"] for r in json.loads(buf.getvalue())] == ["im0.jpg", "im1.jpg"]


def test_boxes_from_video_frame_records_is_one_line_before_the_model(tmp_path, no_model):
    """`detect clip.mp4 | segment --boxes-from -` merged every frame's boxes into one record and then
    read the video as a photo ('not an image', exit 1, after the model had loaded)."""
    recs = [{"image": str(tmp_path / "clip.mp4"), "frame": k, "time_s": k / 10, "width": 64, "height": 48,
             "detections": [{"label": "cat", "score": 0.9, "box": [1, 1, 9, 9]}]} for k in range(3)]
    (tmp_path / "dets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    res = run_cli(["segment", "--boxes-from", tmp_path / "dets.jsonl"])
    assert_user_error(res, 2, "record 1 is frame 0 of the video", "--boxes-from segments photos")
