"""Bad video input, Ctrl-C in the middle of a video, and memory that stays flat on a long clip."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("av")

from cli_helpers import assert_user_error, one_error_line  # noqa: E402
from video_helpers import (  # noqa: E402
    SquareDetector, decoded_frames, install_detector, invoke, jsonl, make_clip, session_video_detr, wait_for,
    write_audio_only, write_zero_frame_video)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad-media")
    make_clip(d / "good.mp4", frames=12)
    make_clip(d / "whole.mkv", frames=48)
    data = (d / "whole.mkv").read_bytes()
    (d / "truncated.mkv").write_bytes(data[: len(data) // 2])
    (d / "garbage.mp4").write_bytes(os.urandom(4096))
    write_audio_only(d / "audio.m4a")
    write_zero_frame_video(d / "zero.mkv")
    Image.new("RGB", (64, 48), (10, 200, 10)).save(d / "photo.png")
    return d


@pytest.fixture()
def squares(monkeypatch):
    return install_detector(monkeypatch, SquareDetector())


def test_a_truncated_video_keeps_its_decoded_frames_then_one_line_exit_1(media, squares):
    res = invoke("detect", media / "truncated.mkv", "-m", "squares", "-f", "jsonl")
    line = assert_user_error(res, 1, "truncated.mkv", "truncated or corrupt video")
    frames = [r["frame"] for r in jsonl(res.stdout)]
    assert 0 < len(frames) < 48 and frames == list(range(len(frames)))
    assert f"decoded {len(frames)} frame(s)" in line


@pytest.mark.parametrize("name, needle", [
    ("audio.m4a", "audio only"),
    ("zero.mkv", "cannot open video"),
    ("garbage.mp4", "cannot open video"),
])
def test_unusable_media_is_one_line_exit_1(media, squares, name, needle):
    res = invoke("detect", media / name, "-m", "squares", "-f", "jsonl")
    assert one_error_line(res, 1).count(name) == 1
    assert needle in res.stderr


@pytest.mark.parametrize("start, shown", [("20", "frame 20"), ("2s", "2s"), ("12", "frame 12")])
def test_a_start_past_the_end_is_named_not_a_silent_empty_run(media, squares, start, shown):
    """good.mp4 has 12 frames (0-11) at 12 fps, whole.mkv 48: the start past good.mp4's end is
    one line naming it, exit 1; whole.mkv's frames from there are still written."""
    res = invoke("detect", media / "good.mp4", media / "whole.mkv", "-m", "squares", "-f", "jsonl", "--start", start)
    assert_user_error(res, 1, f"good.mp4: --start {shown} is at or after the end of the video: no frame was "
                              "processed", single=False)
    assert "whole.mkv: --start" not in res.stderr
    assert {r["image"] for r in jsonl(res.stdout)} == {str(media / "whole.mkv")}
    last = invoke("detect", media / "good.mp4", "-m", "squares", "-f", "jsonl", "--start", "11")
    assert last.exit_code == 0 and [r["frame"] for r in jsonl(last.stdout)] == [11]


def test_bad_videos_among_good_inputs_are_each_named_once_and_the_rest_is_written(media, squares):
    res = invoke("detect", media / "truncated.mkv", media / "good.mp4", media / "audio.m4a", media / "zero.mkv",
                 media / "photo.png", "-m", "squares", "-f", "jsonl", "-q")
    assert res.exit_code == 1
    recs = jsonl(res.stdout)
    good = [r["frame"] for r in recs if r["image"].endswith("good.mp4")]
    assert good == list(range(12))
    assert any(r["image"].endswith("photo.png") for r in recs)
    assert any(r["image"].endswith("truncated.mkv") for r in recs)  # its good frames
    for bad in ("truncated.mkv", "audio.m4a", "zero.mkv"):
        assert sum(bad in ln for ln in res.stderr.splitlines()) == 1, res.stderr
    assert "3 of 5 inputs could not be processed, or only in part" in res.stderr


@pytest.mark.parametrize("args, needle", [
    (["--track"], "photo.png' is a photo; give a video file"),
    (["--start", "abc"], "invalid --start 'abc'"),
    (["--start", "10", "--end", "5"], "--end 5 is not after --start 10"),
    (["--vid-stride", "0"], "vid-stride"),
    (["--max-frames", "0"], "max-frames"),
    (["--source-type", "tape"], "invalid --source-type 'tape'"),
    (["-f", "mot"], "--format mot writes MOTChallenge rows for video frames"),
    (["--save-viz", "out.mp4"], "it takes exactly one video source"),
    # a video's flag on photos alone was ignored
    (["--vid-stride", "2"], "--vid-stride applies to videos and streams, and every source is a photo"),
    (["--start", "3", "--max-frames", "2", "--reconnect", "0"],
     "--start, --max-frames, --reconnect apply to videos and streams"),
    (["--end", "1:00"], "--end applies to videos"),
    (["--text-threshold", "0.3"], "--text-threshold applies to --text"),
])
def test_usage_errors_exit_2_before_any_model_loads(media, monkeypatch, args, needle):
    from visiontool.models import registry

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(registry, "load_detector", no_load)
    res = invoke("detect", media / "photo.png", *args)
    assert_user_error(res, 2, needle)


@pytest.mark.parametrize("args, needle", [
    (["--tracker", "kalman9000"], "unknown --tracker 'kalman9000'"),
    (["--tracker", "bytetrak"], "did you mean bytetrack"),
    (["--track", "--tracker-opt", "lost_track_buffer"], "expected KEY=VALUE"),
    (["--track", "--tracker-opt", "nonsense=1"], "bytetrack has no such option"),
    (["--track", "--tracker-opt", "lost_track_buffer=many"], "expected int"),
    # each was accepted and tracked nothing (nan, > 1) or failed only once the model had loaded
    (["--track", "--tracker-opt", "minimum_iou_threshold=nan"], "minimum_iou_threshold=nan: expected a finite"),
    (["--track", "--tracker-opt", "track_activation_threshold=2"], "expected a number in [0, 1]"),
    (["--tracker", "botsort", "--tracker-opt", "cmc_method=foo"], "expected one of orb, sift, sparseOptFlow, ecc"),
    (["--save-viz", "out.mp4", "EXTRA"], "it takes exactly one video source"),
    (["-f", "mot", "EXTRA"], "give --output DIR"),
])
def test_video_usage_errors_exit_2(media, monkeypatch, args, needle):
    from visiontool.models import registry

    monkeypatch.setattr(registry, "load_detector", lambda *a, **k: (_ for _ in ()).throw(AssertionError("loaded")))
    args = [str(media / "whole.mkv") if a == "EXTRA" else a for a in args]
    res = invoke("detect", media / "good.mp4", *args)
    assert_user_error(res, 2, needle)


# -- Ctrl-C ------------------------------------------------------------------------------------------------

def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["HF_HUB_OFFLINE"] = "1"
    return env


def test_ctrl_c_mid_video_keeps_every_finished_frame_and_a_playable_video(tmp_path, tmp_path_factory):
    detr = session_video_detr(tmp_path_factory)
    clip = tmp_path / "long.mp4"
    make_clip(clip, frames=240)
    viz = tmp_path / "annotated.mp4"
    proc = subprocess.Popen([sys.executable, "-m", "visiontool", "detect", str(clip), "-m", detr, "-t", "0.3",
                             "-f", "jsonl", "--save-viz", str(viz), "--device", "cpu", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    lines = []
    try:
        while len(lines) < 3:  # each line arrives while the run goes on: jsonl is flushed per frame
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "visiontool: error: interrupted"
    recs = [json.loads(ln) for ln in (lines + rest.splitlines()) if ln.strip()]  # every line whole
    n = len(recs)
    assert [r["frame"] for r in recs] == list(range(n)) and 3 <= n < 240
    assert n - 1 <= decoded_frames(viz) <= n  # renamed into place, playable
    assert not list(tmp_path.glob(".annotated*"))  # no temporary left behind


def test_ctrl_c_with_an_output_file_commits_a_valid_json_list(tmp_path, tmp_path_factory):
    detr = session_video_detr(tmp_path_factory)
    clip = tmp_path / "long.mp4"
    make_clip(clip, frames=240)
    out, crops = tmp_path / "dets.json", tmp_path / "crops"
    proc = subprocess.Popen([sys.executable, "-m", "visiontool", "detect", str(clip), "-m", detr, "-t", "0",
                             "-o", str(out), "--save-crops", str(crops), "--device", "cpu", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    try:
        assert wait_for(lambda: len(list(crops.rglob("*_f000002_*.jpg"))) > 0 or proc.poll() is not None, 120)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    recs = json.loads(out.read_text())
    n = len(recs)
    assert [r["frame"] for r in recs] == list(range(n)) and 2 <= n < 240
    assert all(len(r["detections"]) == 12 for r in recs)


# -- memory ------------------------------------------------------------------------------------------------

PEAK_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[1])
    from video_helpers import SquareDetector
    from visiontool.models import registry
    det = SquareDetector()
    registry.check_detector_spec = lambda s: None
    registry.load_detector = lambda *a, **k: det
    from visiontool.cli.main import app
    try:
        app(sys.argv[2:])
    except SystemExit as exc:
        code = exc.code
    status = open("/proc/self/status").read()
    peak = next(int(ln.split()[1]) for ln in status.splitlines() if ln.startswith("VmHWM:"))
    print(f"PEAK {code} {peak}", file=sys.stderr)
""")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc (Linux)")
def test_memory_stays_flat_on_a_long_clip(tmp_path):
    clip = tmp_path / "long.mp4"
    make_clip(clip, frames=600, size=(320, 240), squares=3)  # 230 kB per decoded frame
    script = tmp_path / "peak.py"
    script.write_text(PEAK_SCRIPT)

    def peak_kb(frames: int) -> int:
        res = subprocess.run([sys.executable, str(script), str(REPO / "tests"), "detect", str(clip), "-m", "squares",
                              "--track", "-f", "jsonl", "-o", str(tmp_path / f"{frames}.jsonl"), "--save-viz",
                              str(tmp_path / f"{frames}.mp4"), "--max-frames", str(frames), "-q"],
                             capture_output=True, text=True, env=_env(), timeout=300)
        line = res.stderr.strip().splitlines()[-1]
        assert line.startswith("PEAK 0 "), res.stderr
        assert len((tmp_path / f"{frames}.jsonl").read_text().splitlines()) == frames
        return int(line.split()[2])

    short, long = peak_kb(30), peak_kb(600)
    print(f"peak RSS: 30 frames {short / 1024:.1f} MB, 600 frames {long / 1024:.1f} MB")
    # keeping every frame would add 570 x 230 kB = 128 MB; the bound allows allocator noise only
    assert long - short < 32 * 1024, (short, long)
