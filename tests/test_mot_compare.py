"""Tracking runs side by side (services/compare_tracking, render/mot_tables): prediction files and
model x tracker runs on a video, HOTA/MOTA/IDF1 with deltas against the first run, and fps."""
from __future__ import annotations

import json
import sys

import pytest

pytest.importorskip("trackeval")
pytest.importorskip("av")

from video_helpers import SquareDetector, install_detector, make_clip, synthetic_sequence, write_lines  # noqa: E402
from visiontool.errors import UsageError  # noqa: E402
from visiontool.render.console import print_tables  # noqa: E402
from visiontool.render.mot_tables import comparison_table  # noqa: E402
from visiontool.services.compare_tracking import compare_tracking  # noqa: E402
from visiontool.services.mot_metrics import evaluate_mot  # noqa: E402


def test_prediction_files_side_by_side_with_deltas(tmp_path, capsys):
    gt, pred = synthetic_sequence(11, mot17=False)
    _, other = synthetic_sequence(12, mot17=False)
    g = write_lines(tmp_path / "gt.txt", gt)
    a, b = write_lines(tmp_path / "a.txt", pred), write_lines(tmp_path / "b.txt", other)
    result = compare_tracking(str(g), [str(a), str(b)], names=["base"])
    d = result.to_dict()
    assert [r["name"] for r in d["runs"]] == ["base", "b"]
    alone = [evaluate_mot(str(g), str(p)).runs[0].metrics for p in (a, b)]
    for run, ref in zip(d["runs"], alone):
        assert {k: run[k] for k in ref} == ref  # scoring together changes nothing
    assert d["runs"][0]["delta"]["HOTA"] == 0
    assert d["runs"][1]["delta"]["MOTA"] == pytest.approx(alone[1]["MOTA"] - alone[0]["MOTA"])
    json.dumps(d)
    print_tables(None, comparison_table(result))
    out = capsys.readouterr().out
    assert "base" in out and "HOTA" in out and "frames/s" in out


def test_models_and_trackers_run_on_the_video_are_timed(tmp_path, monkeypatch):
    install_detector(monkeypatch, SquareDetector())
    clip = tmp_path / "clip.mp4"
    truth = make_clip(clip, frames=20, size=(240, 120), squares=2, speed=2)
    g = write_lines(tmp_path / "gt.txt", [f"{f + 1},{k + 1},{b[0]},{b[1]},{b[2] - b[0]},{b[3] - b[1]},1,1,1"
                                          for f, boxes in enumerate(truth) for k, b in enumerate(boxes)])
    events = []
    result = compare_tracking(str(g), models=["squares"], video=str(clip), trackers=["bytetrack", "sort"],
                              on_event=events.append)
    d = result.to_dict()
    assert [r["name"] for r in d["runs"]] == ["squares+bytetrack", "squares+sort"]
    for r in d["runs"]:
        assert r["frames"] == 20 and r["fps"] > 0 and r["IDSW"] == 0
    # SORT confirms a track on its third detection, ByteTrack on its second: two more misses per object
    assert d["runs"][1]["delta"]["CLR_FN"] == 2
    assert len(events) == 2


def test_a_failing_model_gets_an_error_row(tmp_path, monkeypatch):
    install_detector(monkeypatch, SquareDetector())
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=6)
    gt, pred = synthetic_sequence(13, frames=6, mot17=False)
    g, p = write_lines(tmp_path / "gt.txt", gt), write_lines(tmp_path / "p.txt", pred)
    result = compare_tracking(str(g), [str(p)], models=["./no/such/model"], video=str(clip))
    assert [r.name for r in result.runs] == ["p", "model+bytetrack"]
    assert result.failed and "no/such/model" in result.failed[0].extra["error"]
    comparison_table(result)


@pytest.mark.parametrize("kwargs, needle", [
    ({}, "needs MOT prediction files"),
    ({"models": ["squares"]}, "give --video VIDEO"),
    ({"preds": ["x"], "video": "v.mp4"}, "give at least one --model"),
])
def test_usage_errors(tmp_path, kwargs, needle):
    g = write_lines(tmp_path / "gt.txt", ["1,1,1,1,5,5,1,-1"])
    with pytest.raises(UsageError, match=needle.replace("(", r"\(")):
        compare_tracking(str(g), **kwargs)


def test_the_compare_mot_entry_prints_json_and_table(tmp_path, capsys, monkeypatch):
    from visiontool.cli import compare_mot

    install_detector(monkeypatch, SquareDetector())
    clip = tmp_path / "clip.mp4"
    truth = make_clip(clip, frames=10, size=(240, 120), squares=2, speed=2)
    g = write_lines(tmp_path / "gt.txt", [f"{f + 1},{k + 1},{b[0]},{b[1]},{b[2] - b[0]},{b[3] - b[1]},1,1,1"
                                          for f, boxes in enumerate(truth) for k, b in enumerate(boxes)])
    _, pred = synthetic_sequence(14, frames=10, mot17=False)
    p = write_lines(tmp_path / "other.txt", pred)
    compare_mot.run(str(g), [str(p)], models=["squares"], video=str(clip), fmt="json", quiet=True)
    d = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in d["runs"]] == ["other", "squares+bytetrack"] and d["runs"][1]["fps"] > 0
    compare_mot.run(str(g), [str(p)], fmt="table", quiet=True)
    assert "other" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--per-class applies to COCO comparisons, not --mot"):
        compare_mot.run(str(g), [str(p)], coco_flags={"--per-class": True})
    from visiontool.errors import PartialFailure

    with pytest.raises(PartialFailure, match="1 of 2 runs failed"):
        compare_mot.run(str(g), [str(p)], models=["./missing"], video=str(clip), fmt="json", quiet=True)


def test_runtime_applies_to_the_model_runs(tmp_path, monkeypatch):
    """compare --mot --model M --runtime onnxruntime runs M's ONNX export (written to the cache) and
    scores the same tracks as the torch path: the ground truth is the torch run's own MOT rows."""
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from runtimes_helpers import tiny_detr_small
    from visiontool.cli.main import app

    cache = tmp_path / "cache"
    monkeypatch.setenv("VISIONTOOL_CACHE", str(cache))
    model = tiny_detr_small(tmp_path / "tiny-detr")
    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=8, size=(240, 120), squares=2, speed=2)
    runner = CliRunner()
    base = ["--model", str(model), "--device", "cpu", "--threshold", "0.05"]
    r = runner.invoke(app, ["detect", str(clip), *base, "--track", "-f", "mot"])
    assert r.exit_code == 0, r.stderr
    assert len(r.stdout.splitlines()) >= 8  # tracks to score
    gt = write_lines(tmp_path / "gt.txt", [",".join(line.split(",")[:6] + ["1", "1", "1"])
                                           for line in r.stdout.splitlines() if line.strip()])
    assert not cache.exists() or not any(cache.rglob("*.onnx"))
    r = runner.invoke(app, ["compare", "--mot", "--gt", str(gt), "--video", str(clip), *base,
                            "--runtime", "onnxruntime", "-f", "json", "-q"])
    assert r.exit_code == 0, r.stderr
    run = json.loads(r.stdout)["runs"][0]
    assert run["runtime"] == "onnxruntime" and run["frames"] == 8
    assert run["HOTA"] > 0.99 and run["IDSW"] == 0 and run["CLR_FN"] == 0 and run["CLR_FP"] == 0
    assert any(cache.rglob("*.onnx"))  # the run went through the export
    r = runner.invoke(app, ["compare", "--mot", "--gt", str(gt), "--video", str(clip), *base,
                            "--runtime", "tensorrt"])
    assert r.exit_code == 2 and "--runtime 'tensorrt'" in r.stderr
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if the extra were not installed
    r = runner.invoke(app, ["compare", "--mot", "--gt", str(gt), str(gt), "--video", str(clip), *base,
                            "--runtime", "onnxruntime"])  # a file run too: not an error row beside it
    assert r.exit_code == 2 and "pip install 'visiontool[onnx]'" in r.stderr, r.stderr
