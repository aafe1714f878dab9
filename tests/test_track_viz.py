"""--save-viz of a tracked video: ids and short trails drawn, trails bounded; crops named by track."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("av")
pytest.importorskip("trackers")

from video_helpers import SquareDetector, decoded_frames, install_detector, invoke, jsonl, make_clip  # noqa: E402
from visiontool.io.video import iter_frames  # noqa: E402
from visiontool.io.viz import Trails, color_for, render  # noqa: E402
from visiontool.types import Detections  # noqa: E402


def test_trails_follow_tracks_and_forget_stale_ones():
    trails = Trails(length=3)
    for i in range(5):
        d = Detections([[10 * i, 0, 10 * i + 10, 10]], [0.9], [0], ["a"], data={"track_id": [1]})
        pts = trails.update(d)
    assert pts == {1: [(25.0, 5.0), (35.0, 5.0), (45.0, 5.0)]}  # the last 3 centres
    empty = Detections.empty().with_columns(track_id=np.zeros(0, np.int64))
    for _ in range(4):
        pts = trails.update(empty)
    assert pts == {}  # unseen for more than 3 frames: forgotten


def test_render_draws_a_trail_in_the_tracks_colour():
    img = Image.new("RGB", (100, 60), (0, 0, 0))
    d = Detections([[70, 20, 90, 40]], [0.9], [0], ["a"], data={"track_id": [4]})
    plain = np.asarray(render(img, d))
    trail = np.asarray(render(img, d, trails={4: [(5.0, 50.0), (60.0, 50.0)]}))
    changed = np.argwhere(np.abs(trail.astype(int) - plain.astype(int)).sum(axis=2) > 0)
    assert len(changed) and changed[:, 0].min() >= 45  # only along the trail's row
    assert tuple(trail[50, 30]) == color_for(4)


def test_a_tracked_video_is_annotated_with_trails_and_crops_per_track(tmp_path, monkeypatch):
    install_detector(monkeypatch, SquareDetector())
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=16, size=(240, 120), squares=2, speed=4)
    out, crops = tmp_path / "tracked.mp4", tmp_path / "crops"
    res = invoke("detect", clip, "-m", "squares", "--track", "-f", "jsonl", "--save-viz", out, "--save-crops", crops)
    assert res.exit_code == 0, res.stderr
    recs = jsonl(res.stdout)
    assert decoded_frames(out) == 16
    last = [np.asarray(f.image, np.int16) for f in iter_frames(str(out))][-1]
    src = [np.asarray(f.image, np.int16) for f in iter_frames(str(clip))][-1]
    # left of the white square (id 1), along its centre row, the trail was drawn over the background
    d = next(d for d in recs[-1]["detections"] if d["label"] == "square")
    x1, y1, _x2, y2 = d["box"]
    row = int((y1 + y2) / 2)
    assert np.abs(last[row, int(x1) - 30: int(x1) - 5] - src[row, int(x1) - 30: int(x1) - 5]).mean() > 20
    names = sorted(p.name for p in (crops / "square").iterdir())
    assert "clip_f000015_id1.jpg" in names and "clip_f000000_0.jpg" in names  # untracked first frame: its rank
