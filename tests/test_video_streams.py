"""Streams over a loopback HTTP server: the same frames as the file, reconnects that resume
or keep counting, stalls, and an unreachable source after its retries."""
from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("av")

from cli_helpers import assert_user_error  # noqa: E402
from video_helpers import (  # noqa: E402
    FileServer, SquareDetector, closed_port, install_detector, invoke, jsonl, make_clip, session_video_detr)

FRAMES = 24


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("served")
    make_clip(d / "clip.ts", frames=FRAMES)  # MPEG-TS: the usual container of http live streams
    return d


@pytest.fixture()
def server(media):
    with FileServer(media) as srv:
        yield srv


@pytest.fixture()
def squares(monkeypatch):
    return install_detector(monkeypatch, SquareDetector())


def test_http_video_gives_the_records_of_the_file(tmp_path_factory, media, server):
    detr = session_video_detr(tmp_path_factory)
    remote = invoke("detect", server.url("clip.ts"), "-m", detr, "-t", "0.2", "-f", "jsonl", "-q", "--vid-stride", "4")
    local = invoke("detect", media / "clip.ts", "-m", detr, "-t", "0.2", "-f", "jsonl", "-q", "--vid-stride", "4")
    assert remote.exit_code == 0 and local.exit_code == 0, (remote.stderr, local.stderr)
    r, lo = jsonl(remote.stdout), jsonl(local.stdout)
    assert [x["frame"] for x in r] == [0, 4, 8, 12, 16, 20]
    assert [(x["frame"], x["time_s"], x["detections"]) for x in r] == \
        [(x["frame"], x["time_s"], x["detections"]) for x in lo]
    assert {x["image"] for x in r} == {server.url("clip.ts")}


def test_a_dropped_http_video_reconnects_and_resumes_without_repeating_a_frame(server, squares):
    url = server.url("clip.ts", "drop")
    res = invoke("detect", url, "-m", "squares", "-f", "jsonl", "--reconnect", "2")
    assert res.exit_code == 0, res.stderr
    assert [r["frame"] for r in jsonl(res.stdout)] == list(range(FRAMES))
    assert server.hits["/drop/clip.ts"] == 2
    assert "reconnecting in 1 s (attempt 1 of 2)" in res.stderr


def test_a_live_stream_keeps_counting_frames_across_a_reconnect(server, squares):
    url = server.url("clip.ts", "drop")
    res = invoke("detect", "--source-type", "stream", url, "-m", "squares", "-f", "jsonl", "-q", "--reconnect", "1")
    assert res.exit_code == 0, res.stderr  # the second connection ends cleanly: the run ends
    frames = [r["frame"] for r in jsonl(res.stdout)]
    assert frames == list(range(len(frames))) and FRAMES < len(frames) < 2 * FRAMES


def test_a_stalled_stream_times_out_and_reconnects(server, squares, monkeypatch):
    monkeypatch.setenv("VISIONTOOL_STREAM_TIMEOUT", "1")
    res = invoke("detect", server.url("clip.ts", "stall"), "-m", "squares", "-f", "jsonl", "--reconnect", "1")
    assert res.exit_code == 0, res.stderr
    assert [r["frame"] for r in jsonl(res.stdout)] == list(range(FRAMES))
    assert "reconnecting" in res.stderr


def test_an_unreachable_stream_is_one_line_after_the_retries(squares):
    port = closed_port()
    res = invoke("detect", f"rtsp://127.0.0.1:{port}/live", "-m", "squares", "--reconnect", "1")
    line = assert_user_error(res, 1, f"rtsp://127.0.0.1:{port}/live", "gave up after 1 reconnect attempt")
    assert "cannot open video" in line
    assert res.stdout == ""
    res = invoke("detect", f"http://127.0.0.1:{port}/cam.mp4", "-m", "squares", "--reconnect", "0")
    assert_user_error(res, 1, "Connection refused")


def test_a_live_stream_on_a_terminal_streams_jsonl_instead_of_a_final_table(server, squares, monkeypatch):
    from visiontool.render import console

    monkeypatch.setattr(console, "stdout_is_tty", lambda: True)
    res = invoke("detect", "--source-type", "stream", server.url("clip.ts"), "-m", "squares", "-q")
    assert res.exit_code == 0, res.stderr
    assert [r["frame"] for r in jsonl(res.stdout)] == list(range(FRAMES))
