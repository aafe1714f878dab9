"""``visiontool export MODEL --runtime openvino|onnx -o DIR`` and ``--model DIR``: the round trip
gives the torch path's records, the manifest says what the export is, and every bad argument or
damaged export is one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import assert_user_error, file_size_limit, one_error_line
from detector_helpers import small_photos
from runtimes_helpers import assert_same_records, records, tiny_detr_small
from visiontool.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def detr(tmp_path_factory) -> Path:
    return tiny_detr_small(tmp_path_factory.mktemp("rtx") / "tiny-detr")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> list[str]:
    d = small_photos(tmp_path_factory.mktemp("rtxphotos"), images_dir)
    return [str(p) for p in sorted(d.glob("*.png"))]


def detect(photos, model, *extra):
    from visiontool.models import loader

    loader.release()
    return runner.invoke(app, ["detect", *photos, "--model", str(model), "--device", "cpu", "-f", "jsonl",
                               "--threshold", "0.05", *extra])


@pytest.fixture(scope="module")
def torch_records(detr, photos):
    r = detect(photos, detr)
    assert r.exit_code == 0, r.stderr
    return records(r.stdout)


@pytest.fixture(scope="module")
def exports(detr, tmp_path_factory):
    """runtime -> export directory, written by the CLI once per module."""
    base = tmp_path_factory.mktemp("exports")
    made = {}
    for runtime in ("openvino", "onnx"):
        out = base / f"detr-{runtime}"
        r = runner.invoke(app, ["export", str(detr), "--runtime", runtime, "-o", str(out)])
        assert r.exit_code == 0, r.stderr
        assert r.stdout == ""  # stdout carries data only
        assert f"exported {detr} to {out}" in r.stderr
        made[runtime] = out
    return made


@pytest.mark.parametrize("runtime,files,engine", [("openvino", ["model.xml", "model.bin"], "openvino"),
                                                  ("onnx", ["model.onnx"], "onnxruntime")])
def test_export_round_trip(exports, detr, photos, torch_records, runtime, files, engine):
    out = exports[runtime]
    for f in files + ["preprocessor_config.json", "visiontool-export.json", "entry.json"]:
        assert (out / f).is_file(), f
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]  # no temporary leftovers
    manifest = json.loads((out / "visiontool-export.json").read_text())
    assert manifest["runtime"] == engine and manifest["family"] == "detr" and manifest["source"] == str(detr)
    assert manifest["class_names"]["17"] == "cat" and manifest["visiontool_version"]
    assert manifest["preprocessing"]["image_mean"] == [0.485, 0.456, 0.406]
    for extra in ([], ["--runtime", engine], ["--runtime", "auto"]):
        r = detect(photos, out, "--batch-size", "2", *extra)
        assert r.exit_code == 0, r.stderr
        got = records(r.stdout)
        assert {x["model"] for x in got} == {str(out)}
        assert_same_records(torch_records, got)
    # --classes is checked against the manifest's class names before anything loads
    r = detect(photos[:1], out, "--classes", "cat")
    assert r.exit_code == 0, r.stderr
    assert {d["label"] for x in records(r.stdout) for d in x["detections"]} <= {"cat"}


def test_export_dir_with_another_runtime_is_one_line(exports, photos):
    r = detect(photos[:1], exports["openvino"], "--runtime", "onnxruntime")
    line = one_error_line(r)
    assert "is an openvino export" in line and "--runtime openvino" in line


@pytest.mark.parametrize("damage", ["bin", "manifest"])
def test_damaged_export_dir_is_one_line(exports, photos, tmp_path, damage):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(exports["openvino"], out)
    if damage == "bin":
        (out / "model.bin").write_bytes(b"\0" * 100)
        r = detect(photos[:1], out)
        assert_user_error(r, 1, "model.bin", "export the model again")
    else:
        (out / "visiontool-export.json").write_text("{}")
        r = detect(photos[:1], out)
        one_error_line(r)
        assert "another format" in r.stderr


def test_export_bad_arguments(detr, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    cases = [
        (["export", str(detr), "--runtime", "tensorrt", "-o", str(tmp_path / "a")], "openvino or onnx"),
        (["export", str(detr), "--runtime", "onnx", "-o", str(busy)], "busy' is not empty: export writes a directory"),
        (["export", str(detr), "--runtime", "onnx", "-o", str(busy / "x")], "x' is a file: export writes a directory"),
        (["export", str(detr), "--runtime", "onnx", "-o", str(tmp_path / "no" / "such" / "d")], "does not exist"),
        (["export", str(detr), "--runtime", "onnx", "-o", "/proc/visiontool-export"], "cannot write in '/proc' ("),
        (["export", "torchvision:nosuchnet", "--runtime", "onnx", "-o", str(tmp_path / "b")], "nosuchnet"),
        (["export", str(tmp_path / "missing-model"), "--runtime", "onnx", "-o", str(tmp_path / "c")], "missing-model"),
    ]
    for args, needle in cases:
        r = runner.invoke(app, args)
        line = one_error_line(r)
        assert needle in line, (args, line)
    r = runner.invoke(app, ["export", str(detr), "-o", str(tmp_path / "d")])  # --runtime is required
    assert r.exit_code == 2
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_an_export_that_cannot_be_written_is_one_line(detr, photos, tmp_path, monkeypatch):
    """Out of space (here a 64 KiB file-size limit) while exporting, to -o DIR or into the cache:
    exit 1 naming the cause and where, nothing half-written left behind."""
    out = tmp_path / "out"
    with file_size_limit(64 << 10):
        r = runner.invoke(app, ["export", str(detr), "--runtime", "onnx", "-o", str(out), "-q"])
    line = one_error_line(r, code=1)
    assert line.startswith(f"visiontool: error: visiontool export: cannot write {out}: File too large ({tmp_path}: ")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setenv("VISIONTOOL_CACHE", str(tmp_path / "cache"))
    with file_size_limit(64 << 10):
        r = detect(photos[:1], detr, "--runtime", "onnxruntime", "-q")
    line = one_error_line(r, code=1)
    assert "cannot write the export into the cache: File too large" in line and "VISIONTOOL_CACHE" in line
    assert [p.name for p in (tmp_path / "cache" / "exports").iterdir() if not p.name.endswith(".lock")] == []


def test_exporting_a_transformers_model_says_nothing_of_its_training_loss(detr, tmp_path):
    """OpenVINO's tracer reads every property of every submodule; DetrModel's ``loss_function``
    warned "`loss_type=None` was set in the config but it is unrecognized. Using the default loss:
    `ForCausalLMLoss`" on stderr on every first export."""
    import logging

    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("x").warning_once.cache_clear()  # it warns once per process
    heard: list[logging.LogRecord] = []
    catcher = logging.Handler(logging.WARNING)
    catcher.emit = heard.append
    logging.getLogger("transformers").addHandler(catcher)
    try:
        r = runner.invoke(app, ["export", str(detr), "--runtime", "openvino", "-o", str(tmp_path / "ov"), "-q"])
    finally:
        logging.getLogger("transformers").removeHandler(catcher)
    assert r.exit_code == 0, r.stderr
    assert [rec.getMessage() for rec in heard] == []


def test_an_unwritable_export_cache_costs_an_export_not_the_run(detr, photos, torch_records, tmp_path, monkeypatch):
    """VISIONTOOL_CACHE naming a file (or a read-only home): one warning, the export goes to a
    temporary directory for the run, and the records are the torch path's."""
    from visiontool.models.runtimes import export_cache

    monkeypatch.setattr(export_cache, "_scratch", [])
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("VISIONTOOL_CACHE", str(tmp_path / "a-file"))
    for run in range(2):
        r = detect(photos, detr, "--runtime", "onnxruntime")
        assert r.exit_code == 0, r.stderr
        assert_same_records(records(r.stdout), torch_records)
        assert ("exporting" in r.stderr) == (run == 0), r.stderr  # the second run finds the first's export
        warned = [ln for ln in r.stderr.splitlines() if ln.startswith("visiontool: warning:")]
        assert warned == ([f"visiontool: warning: cannot write the export cache in {tmp_path / 'a-file' / 'exports'} "
                           f"(Not a directory); exporting into {export_cache._scratch[0]} for this run only (point "
                           "VISIONTOOL_CACHE at a writable directory to keep exports)"] if run == 0 else [])
    exported = [p.name for p in export_cache._scratch[0].iterdir() if not p.name.endswith(".lock")]
    assert len(exported) == 1, exported  # made by the first run, found by the second


def test_export_missing_extra(detr, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openvino", None)
    r = runner.invoke(app, ["export", str(detr), "--runtime", "openvino", "-o", str(tmp_path / "o")])
    line = one_error_line(r)
    assert "pip install 'visiontool[openvino]'" in line


def test_openvino_conversion_sends_no_telemetry(tmp_path, monkeypatch):
    """``openvino.convert_model`` reports to Google Analytics by default, from a forked child that
    hung a test run at exit (no network here): visiontool's conversions never call it."""
    import torch

    pytest.importorskip("openvino")
    telemetry = pytest.importorskip("openvino_telemetry.main")
    from visiontool.models.runtimes.engines import export_network, open_engine

    sent = []
    monkeypatch.setattr(telemetry.Telemetry, "send_event", lambda self, *a, **k: sent.append(a))
    monkeypatch.setattr(telemetry.Telemetry, "start_session", lambda self, *a, **k: sent.append(a))
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
    files = export_network(net, (torch.zeros(1, 3, 16, 16),), "openvino", tmp_path, ["x"], ["y"], {})
    assert files == ["model.xml", "model.bin"]
    assert open_engine("openvino", tmp_path)([torch.ones(1, 3, 16, 16).numpy()])[0].shape == (1, 4, 14, 14)
    assert sent == []
