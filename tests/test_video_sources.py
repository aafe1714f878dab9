"""visiontool detect on video files: one record per decoded frame, stride and range, formats,
annotated videos, crops, mixed folders — the decoding path with the real tiny DETR."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")

from cli_helpers import assert_user_error  # noqa: E402
from video_helpers import decoded_frames, invoke, jsonl, make_clip, session_video_detr  # noqa: E402
from visiontool.io.video import iter_frames, probe  # noqa: E402

FRAMES, FPS = 12, 12


@pytest.fixture(scope="module")
def detr(tmp_path_factory) -> str:
    return session_video_detr(tmp_path_factory)


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "clip.mp4"
    make_clip(path, frames=FRAMES, fps=FPS)
    return path


def test_one_record_per_decoded_frame_equal_to_the_frame_as_a_photo(detr, clip, tmp_path):
    res = invoke("detect", clip, "-m", detr, "-t", "0", "-f", "jsonl", "--device", "cpu")
    assert res.exit_code == 0, res.stderr
    recs = jsonl(res.stdout)
    assert [r["frame"] for r in recs] == list(range(FRAMES))
    assert [r["time_s"] for r in recs] == pytest.approx([i / FPS for i in range(FRAMES)], abs=1e-6)
    assert {r["image"] for r in recs} == {str(clip)}
    assert {(r["width"], r["height"]) for r in recs} == {(160, 120)}
    assert [r["image_id"] for r in recs] == list(range(FRAMES))
    assert all(len(r["detections"]) == 12 for r in recs)  # every query of the tiny DETR at -t 0
    assert "12 frames in" in res.stderr and "frames/s" in res.stderr
    # the same frame, decoded by PyAV and saved losslessly, gives the same detections as a photo
    frame5 = next(f for f in iter_frames(str(clip)) if f.index == 5)
    frame5.image.save(tmp_path / "frame5.png")
    photo = json.loads(invoke("detect", tmp_path / "frame5.png", "-m", detr, "-t", "0", "-f", "json", "-q",
                              "--device", "cpu").stdout)[0]
    assert photo["detections"] == recs[5]["detections"]


@pytest.mark.parametrize("args, frames", [
    (["--vid-stride", "3"], [0, 3, 6, 9]),
    (["--start", "2", "--end", "10", "--vid-stride", "3"], [2, 5, 8]),
    (["--start", "0.25s", "--end", "0:00.75"], [3, 4, 5, 6, 7, 8]),
    (["--max-frames", "4", "--vid-stride", "2"], [0, 2, 4, 6]),
    (["--start", "10", "--max-frames", "5"], [10, 11]),
])
def test_stride_and_range(detr, clip, args, frames):
    res = invoke("detect", clip, "-m", detr, "-t", "0.99", "-f", "jsonl", "-q", *args)
    assert res.exit_code == 0, res.stderr
    assert [r["frame"] for r in jsonl(res.stdout)] == frames


def test_folder_mixing_photos_and_videos_and_a_file_named_0(detr, clip, tmp_path, monkeypatch):
    d = tmp_path / "media"
    d.mkdir()
    (d / "b.mp4").write_bytes(clip.read_bytes())
    Image.new("RGB", (64, 48), (200, 30, 30)).save(d / "a.png")
    Image.new("RGB", (64, 48), (30, 30, 200)).save(d / "c.jpg")
    (d / "notes.txt").write_text("not media")
    res = invoke("detect", d, "-m", detr, "-t", "0.99", "-f", "jsonl", "-q", "--max-frames", "3")
    assert res.exit_code == 0, res.stderr
    recs = jsonl(res.stdout)
    assert [(Path(r["image"]).name, r.get("frame")) for r in recs] == [
        ("a.png", None), ("b.mp4", 0), ("b.mp4", 1), ("b.mp4", 2), ("c.jpg", None)]
    # several sources: frame ids stay unique (position * 1e6 + frame); photos keep their position
    assert [r["image_id"] for r in recs] == [1, 2_000_000, 2_000_001, 2_000_002, 3]
    # a file named 0 is a file; the webcam is explicit
    monkeypatch.chdir(d)
    Image.new("RGB", (64, 48)).save(d / "0", format="PNG")
    res = invoke("detect", "0", "-m", detr, "-f", "jsonl", "-q")
    assert res.exit_code == 0, res.stderr
    assert jsonl(res.stdout)[0]["image"] == "0" and "frame" not in jsonl(res.stdout)[0]


@pytest.mark.skipif(os.path.exists("/dev/video0"), reason="a real webcam is attached")
def test_webcam_source_is_explicit_and_a_missing_device_is_one_line(detr):
    res = invoke("detect", "--source-type", "webcam", "0", "-m", detr, "--reconnect", "0")
    assert_user_error(res, 1, "webcam:0", "cannot open video")
    res = invoke("detect", "--source-type", "webcam", "front-door", "-m", detr)
    assert_user_error(res, 2, "not a device number")


def test_csv_coco_and_gt_frame_names(detr, clip, tmp_path):
    res = invoke("detect", clip, "-m", detr, "-t", "0.3", "-f", "csv", "-q", "--max-frames", "3")
    assert res.exit_code == 0, res.stderr
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert rows and {"frame", "time_s"} <= set(rows[0])
    assert sorted({int(r["frame"]) for r in rows}) == [0, 1, 2]
    res = invoke("detect", clip, "-m", detr, "-t", "0.3", "-f", "coco", "-q", "--max-frames", "3")
    coco = json.loads(res.stdout)
    assert sorted({r["image_id"] for r in coco}) == [0, 1, 2]
    # a ground truth naming frames as '<video>#frame=N' gives the frames its ids
    gt = {"images": [{"id": 500 + i, "file_name": f"videos/clip.mp4#frame={i}", "width": 160, "height": 120}
                     for i in range(3)],
          "categories": [{"id": 7, "name": "cat"}, {"id": 9, "name": "person"}], "annotations": []}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    res = invoke("detect", clip, "-m", detr, "-t", "0.3", "-f", "coco", "-q", "--max-frames", "3",
                 "--gt", tmp_path / "gt.json")
    assert res.exit_code == 0, res.stderr
    mapped = json.loads(res.stdout)
    assert mapped and {r["image_id"] for r in mapped} <= {500, 501, 502}
    assert {r["category_id"] for r in mapped} <= {7, 9}


def test_save_viz_video_has_the_source_size_rate_and_every_frame(detr, clip, tmp_path):
    out = tmp_path / "annotated.mp4"
    res = invoke("detect", clip, "-m", detr, "-t", "0.3", "-f", "jsonl", "--save-viz", out, "--vid-stride", "2")
    assert res.exit_code == 0, res.stderr
    info = probe(str(out))
    assert (info.width, info.height) == (160, 120)
    assert info.fps == pytest.approx(FPS / 2)
    assert decoded_frames(out) == len(jsonl(res.stdout)) == FRAMES // 2
    assert "annotated: " in res.stderr
    # boxes were drawn: the annotated frames differ from the source frames
    src = [np.asarray(f.image, np.int16) for f in iter_frames(str(clip), stride=2)]
    ann = [np.asarray(f.image, np.int16) for f in iter_frames(str(out))]
    assert max(np.abs(a - b).mean() for a, b in zip(src, ann)) > 1.0


def test_save_viz_dir_and_crops_for_photos_and_frames(detr, clip, tmp_path, images_dir):
    viz, crops = tmp_path / "viz", tmp_path / "crops"
    res = invoke("detect", images_dir / "dog.jpg", clip, "-m", detr, "-t", "0.3", "-f", "jsonl", "--max-frames", "2",
                 "--save-viz", viz, "--save-crops", crops)
    assert res.exit_code == 0, res.stderr
    recs = jsonl(res.stdout)
    assert sorted(p.name for p in viz.iterdir()) == ["clip.mp4", "dog.jpg"]
    assert decoded_frames(viz / "clip.mp4") == 2
    files = sorted(crops.rglob("*.jpg"))
    n = sum(len(r["detections"]) for r in recs)
    assert n > 0 and len(files) == n
    # each crop is its box rounded outwards and clipped to the image
    r = recs[1]
    d = r["detections"][0]
    crop = Image.open(crops / d["label"] / "clip_f000000_0.jpg")
    x1, y1, x2, y2 = d["box"]
    want = (min(160, np.ceil(x2)) - max(0, np.floor(x1)), min(120, np.ceil(y2)) - max(0, np.floor(y1)))
    assert crop.size == want
    assert (crops / recs[0]["detections"][0]["label"] / "dog_0.jpg").is_file()


def test_python_api_streams_frames(detr, clip):
    import visiontool
    from visiontool.io.sources import VideoOptions
    from visiontool.services.detect import run_detect

    results = visiontool.detect(str(clip), detr, threshold=0.5, video=VideoOptions(stride=3))
    assert [r.frame for r in results] == [0, 3, 6, 9]
    seen = []
    run = run_detect(str(clip), detr, threshold=0.5, on_result=seen.append, keep_results=False,
                     video=VideoOptions(stride=3))
    assert run.results == [] and len(seen) == 4
    assert [r.detections.xyxy.tolist() for r in seen] == [r.detections.xyxy.tolist() for r in results]


def _portrait_clip(path: Path, degrees: int, frames: int = 3) -> tuple[int, int, int, int]:
    """A 160x120 clip whose container says: show it turned ``degrees`` counterclockwise (a phone's
    portrait video); one white square at a known place in the stored frames."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=10)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        s.set_display_rotation(degrees)
        img = np.full((120, 160, 3), 96, np.uint8)
        img[30:50, 20:40] = 240
        for _ in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return 20, 30, 40, 50


@pytest.mark.parametrize("degrees", [-90, 90, 180])
def test_a_rotated_video_is_detected_upright_as_players_show_it(tmp_path, monkeypatch, degrees):
    """A phone's portrait video (landscape frames and a display rotation) was read sideways: records
    160x120, boxes and the annotated video turned, where photos get their EXIF orientation."""
    from video_helpers import SquareDetector, install_detector

    install_detector(monkeypatch, SquareDetector())
    clip = tmp_path / "portrait.mp4"
    x1, y1, x2, y2 = _portrait_clip(clip, degrees)
    w, h = (120, 160) if degrees % 180 else (160, 120)
    assert (probe(str(clip)).width, probe(str(clip)).height) == (w, h)
    res = invoke("detect", clip, "-m", "squares", "-f", "jsonl", "--save-viz", tmp_path / "viz.mp4", "-q")
    assert res.exit_code == 0, res.stderr
    recs = jsonl(res.stdout)
    # the stored box, turned as the frame is: -90 clockwise, 90 counterclockwise, 180 both ways
    want = {-90: [120 - y2, x1, 120 - y1, x2], 90: [y1, 160 - x2, y2, 160 - x1],
            180: [160 - x2, 120 - y2, 160 - x1, 120 - y1]}[degrees]
    assert {(r["width"], r["height"]) for r in recs} == {(w, h)}
    assert all(r["detections"][0]["box"] == pytest.approx(want, abs=1) for r in recs), recs[0]
    assert (probe(str(tmp_path / "viz.mp4")).width, probe(str(tmp_path / "viz.mp4")).height) == (w, h)
