"""detect --track: ids stay with their object along known trajectories, for every tracker the
trackers library offers; low-score frames continue a track; --text and --vid-stride too."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("av")
pytest.importorskip("trackers")

from video_helpers import SquareDetector, install_detector, invoke, jsonl, make_clip  # noqa: E402

FRAMES = 30
TRACKERS = ["bytetrack", "sort", "ocsort", "botsort", "cbiou", "mcbyte"]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list]:
    """Three squares moving right 2 px a frame, none reaching an edge."""
    path = tmp_path_factory.mktemp("track") / "squares.mp4"
    truth = make_clip(path, frames=FRAMES, size=(240, 120), squares=3, speed=2)
    assert max(b[2] for boxes in truth for b in boxes) < 240
    return path, truth


@pytest.fixture(scope="module")
def bouncing(tmp_path_factory) -> tuple[Path, list]:
    """Three squares crossing faster, two of them bouncing off the right edge mid-clip."""
    path = tmp_path_factory.mktemp("track") / "bouncing.mp4"
    return path, make_clip(path, frames=FRAMES, squares=3)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def ids_per_square(recs: list[dict], truth: list) -> dict[int, list[tuple[int, int | None, dict]]]:
    """{square k: [(frame, track id or None, detection)]} matching detections to the known boxes."""
    out: dict[int, list] = {}
    for r in recs:
        for det in r["detections"]:
            k = max(range(len(truth[r["frame"]])), key=lambda j: _iou(det["box"], truth[r["frame"]][j]))
            assert _iou(det["box"], truth[r["frame"]][k]) > 0.8, (r["frame"], det)
            out.setdefault(k, []).append((r["frame"], det.get("track_id"), det))
    return out


def test_available_trackers_are_the_libraries():
    from visiontool.services.track import available_trackers

    assert set(TRACKERS) <= set(available_trackers())


@pytest.mark.parametrize("tracker", TRACKERS)
def test_ids_stay_with_their_square_along_the_known_trajectory(clip, monkeypatch, tracker):
    path, truth = clip
    install_detector(monkeypatch, SquareDetector())
    res = invoke("detect", path, "-m", "squares", "--tracker", tracker, "-f", "jsonl", "-q")
    assert res.exit_code == 0, res.stderr
    recs = jsonl(res.stdout)
    assert [r["frame"] for r in recs] == list(range(FRAMES))
    per = ids_per_square(recs, truth)
    assert sorted(per) == [0, 1, 2]
    seen = []
    for k, rows in per.items():
        ids = [tid for _f, tid, _d in rows if tid is not None]
        first = min(f for f, tid, _d in rows if tid is not None)
        assert first <= 3, (k, rows[:4])  # confirmed after at most minimum_consecutive_frames
        assert len(set(ids)) == 1 and ids[0] >= 1, (k, ids)
        assert [f for f, tid, _d in rows if tid is not None] == list(range(first, FRAMES))  # never lost
        seen.append(ids[0])
    assert len(set(seen)) == 3


def test_bytetrack_keeps_ids_through_a_bounce(bouncing, monkeypatch):
    path, truth = bouncing
    install_detector(monkeypatch, SquareDetector())
    res = invoke("detect", path, "-m", "squares", "--track", "-f", "jsonl", "-q")
    assert res.exit_code == 0, res.stderr
    for rows in ids_per_square(jsonl(res.stdout), truth).values():
        assert len({tid for _f, tid, _d in rows if tid is not None}) == 1


def test_a_low_score_frame_continues_a_track_and_a_low_score_object_starts_none(clip, monkeypatch):
    path, truth = clip

    def score(n: int, k: int) -> float:
        if k == 1:
            return 0.3  # never reaches --threshold: never tracked, never written
        return 0.3 if k == 0 and 10 <= n < 14 else 0.9

    det = install_detector(monkeypatch, SquareDetector(score))
    res = invoke("detect", path, "-m", "squares", "--track", "-t", "0.5", "-f", "jsonl", "-q")
    assert res.exit_code == 0, res.stderr
    per = ids_per_square(jsonl(res.stdout), truth)
    assert 1 not in per
    top = {f: (tid, d["score"]) for f, tid, d in per[0]}
    assert sorted(top) == list(range(FRAMES))  # ByteTrack's second association kept frames 10-13
    assert [top[f][1] for f in range(10, 14)] == pytest.approx([0.3] * 4)
    assert len({tid for tid, _s in list(top.values())[2:]}) == 1
    # without tracking the same run keeps only scores >= threshold
    det.seen = 0
    res = invoke("detect", path, "-m", "squares", "-t", "0.5", "-f", "jsonl", "-q")
    plain = ids_per_square(jsonl(res.stdout), truth)
    assert sorted(f for f, _t, _d in plain[0]) == [f for f in range(FRAMES) if not 10 <= f < 14]


def test_tracks_with_text_phrases_and_a_stride(clip, monkeypatch):
    path, truth = clip
    install_detector(monkeypatch, SquareDetector())
    res = invoke("detect", path, "-m", "squares", "--text", "moving box", "--track", "--vid-stride", "2", "-f",
                 "jsonl", "-q")
    assert res.exit_code == 0, res.stderr
    recs = jsonl(res.stdout)
    assert [r["frame"] for r in recs] == list(range(0, FRAMES, 2))
    assert {d["label"] for r in recs for d in r["detections"]} == {"moving box"}
    per = ids_per_square(recs, truth)
    for rows in per.values():
        assert len({tid for _f, tid, _d in rows if tid is not None}) == 1


def test_each_video_gets_its_own_tracker_and_photos_pass_through(clip, monkeypatch, tmp_path):
    from PIL import Image

    path, _truth = clip
    install_detector(monkeypatch, SquareDetector())
    second = tmp_path / "again.mp4"
    second.write_bytes(path.read_bytes())
    Image.new("RGB", (160, 120), (96, 96, 96)).save(tmp_path / "empty.png")
    res = invoke("detect", path, tmp_path / "empty.png", second, "-m", "squares", "--track", "-f", "jsonl", "-q",
                 "--max-frames", "6")
    assert res.exit_code == 0, res.stderr
    recs = jsonl(res.stdout)
    first = {d.get("track_id") for r in recs[:6] for d in r["detections"]} - {None}
    again = {d.get("track_id") for r in recs[7:] for d in r["detections"]} - {None}
    assert first == again == {1, 2, 3}  # the second video starts from id 1 again
    assert recs[6]["image"].endswith("empty.png") and "frame" not in recs[6]


def test_python_api_tracks(clip, monkeypatch):
    import visiontool

    path, _truth = clip
    install_detector(monkeypatch, SquareDetector())
    results = visiontool.detect(str(path), "squares", track="ocsort")
    ids = [set(r.detections.data["track_id"].tolist()) for r in results]
    assert len(results) == FRAMES and ids[-1] == {1, 2, 3}
    assert all(np.all(r.detections.scores[:-1] >= r.detections.scores[1:]) for r in results)  # score order
