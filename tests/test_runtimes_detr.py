"""``--runtime openvino|onnxruntime`` for the transformers DETR family: the records equal the
torch path's (boxes within 0.05 px, scores within 1e-4, fp32), the export is cached on disk and
reused by a new process, a corrupt cached export is rebuilt with one warning, missing extras and
bad runtimes are exit 2 with one line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import assert_user_error, entry_point, one_error_line
from detector_helpers import small_photos
from runtimes_helpers import assert_same_records, gt_from_records, records, tiny_detr_small
from visiontool.cli.main import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]
RUNTIMES = ("openvino", "onnxruntime")


@pytest.fixture(scope="module")
def detr(tmp_path_factory) -> Path:
    return tiny_detr_small(tmp_path_factory.mktemp("rt") / "tiny-detr")


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> list[str]:
    d = small_photos(tmp_path_factory.mktemp("rtphotos"), images_dir)
    return [str(p) for p in sorted(d.glob("*.png"))]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One export cache for the module (the autouse fixture gives each test a fresh one)."""
    return tmp_path_factory.mktemp("rtcache")


def detect(photos, model, *extra, cache: Path | None = None):
    from visiontool.models import loader

    loader.release()  # each run loads (and finds its export) as a new command would
    env = {"VISIONTOOL_CACHE": str(cache)} if cache is not None else {}
    return runner.invoke(app, ["detect", *photos, "--model", str(model), "--device", "cpu", "-f", "jsonl",
                               "--threshold", "0.05", *extra], env=env)


@pytest.fixture(scope="module")
def torch_records(detr, photos):
    r = detect(photos, detr, "--batch-size", "2")
    assert r.exit_code == 0, r.stderr
    recs = records(r.stdout)
    assert sum(len(x["detections"]) for x in recs) >= 8  # enough detections to compare
    return recs


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_records_equal_torch_path(detr, photos, torch_records, shared_cache, runtime):
    # batch 2: the two photos of the same size share a forward pass (dynamic batch axis)
    r = detect(photos, detr, "--runtime", runtime, "--batch-size", "2", cache=shared_cache)
    assert r.exit_code == 0, r.stderr
    assert f"exported {detr} to {runtime} in" in r.stderr  # the first export says so, with its time
    n = assert_same_records(torch_records, records(r.stdout))
    assert n >= 8
    # a second command in this process finds the export on disk: no second export, same records
    r2 = detect(photos, detr, "--runtime", runtime, cache=shared_cache)
    assert r2.exit_code == 0, r2.stderr
    assert "export" not in r2.stderr
    assert_same_records(torch_records, records(r2.stdout))


def test_cache_hit_from_a_new_process(detr, photos, shared_cache, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "VISIONTOOL_CACHE": str(cache), "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "visiontool", "detect", photos[0], "--model", str(detr), "--device", "cpu",
           "-f", "jsonl", "--runtime", "onnxruntime", "--threshold", "0.05"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "exporting" in first.stderr
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert "export" not in second.stderr
    assert second.stdout == first.stdout
    assert len(list((cache / "exports").iterdir())) == 1  # one entry, no temporary leftovers


@pytest.mark.parametrize("damage", ["truncate", "entry"])
def test_corrupt_cached_export_rebuilt_with_one_warning(detr, photos, torch_records, tmp_path, damage):
    cache = tmp_path / "cache"
    r = detect(photos[:1], detr, "--runtime", "onnxruntime", cache=cache)
    assert r.exit_code == 0, r.stderr
    (entry,) = list((cache / "exports").iterdir())
    if damage == "truncate":
        model = entry / "model.onnx"
        model.write_bytes(model.read_bytes()[:1000])
    else:
        (entry / "entry.json").write_text("{not json")
    r = detect(photos[:1], detr, "--runtime", "onnxruntime", cache=cache)
    assert r.exit_code == 0, r.stderr
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("visiontool: warning:")]
    assert len(warnings) == 1 and "corrupt or stale" in warnings[0], r.stderr
    assert_same_records(torch_records[:1], records(r.stdout))
    r = detect(photos[:1], detr, "--runtime", "onnxruntime", cache=cache)  # rebuilt: sound again
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr


@pytest.mark.parametrize("runtime,extra,module", [("openvino", "openvino", "openvino"),
                                                   ("onnxruntime", "onnx", "onnxruntime")])
def test_missing_extra_is_exit_2_with_the_install_line(detr, photos, monkeypatch, runtime, extra, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if the extra were not installed
    r = detect(photos[:1], detr, "--runtime", runtime)
    line = one_error_line(r)
    assert f"pip install 'visiontool[{extra}]'" in line and f"--runtime {runtime}" in line


@pytest.mark.parametrize("error", ["ImportError('libopenvino.so.2540: cannot open shared object file')",
                                   "ModuleNotFoundError('no _pyopenvino', name='openvino._pyopenvino')"])
def test_an_installed_extra_that_does_not_import_is_named_as_such(detr, photos, tmp_path, error):
    """An extra whose native library is missing is installed, not missing: one line saying so and
    how to reinstall it, exit 2 (it said "not installed" before), from the installed entry point."""
    shadow = tmp_path / "shadow" / "openvino"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(f"raise {error}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "shadow")}
    r = subprocess.run([entry_point(), "detect", photos[0], "--model", str(detr), "--runtime", "openvino"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stdout == "", r.stderr
    (line,) = r.stderr.splitlines()
    assert line.startswith("visiontool: error: --runtime openvino needs the optional extra 'openvino', which is "
                           "installed but does not import ('openvino': "), line
    assert "not installed" not in line and "pip install --force-reinstall 'visiontool[openvino]'" in line


def test_auto_without_openvino_is_torch(detr, photos, torch_records, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)
    r = detect(photos, detr, "--runtime", "auto")
    assert r.exit_code == 0, r.stderr
    assert "export" not in r.stderr
    assert records(r.stdout) == torch_records


def test_auto_on_cpu_is_openvino(detr, photos, torch_records, shared_cache):
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("auto picks OpenVINO on x86 CPUs only")
    from visiontool.models import registry

    r = detect(photos[:1], detr, "--runtime", "auto", cache=shared_cache)
    assert r.exit_code == 0, r.stderr
    assert_same_records(torch_records[:1], records(r.stdout))
    assert registry.load_detector(str(detr), "cpu", "float32", runtime="auto").info.runtime == "openvino"


@pytest.mark.parametrize("args,needles", [
    (["--runtime", "tensorrt"], ["--runtime 'tensorrt'", "torch, openvino, onnxruntime, auto"]),
    (["--runtime", "openvino", "--dtype", "bfloat16"], ["float32"]),
])
def test_bad_runtime_options(detr, photos, args, needles):
    r = detect(photos[:1], detr, *args)
    assert_user_error(r, 2, *needles)


def test_family_without_exporter_is_one_line(photos, tmp_path, monkeypatch):
    """Every detect family has an exporter now: an adapter none of them claims (here Grounding
    DINO with its exporter switched off) is one line naming the exportable families."""
    from sam_family_helpers import build_grounding_dino

    from visiontool.models.runtimes import gd_export

    monkeypatch.setattr(gd_export, "exportable", lambda det: False)
    model = build_grounding_dino(tmp_path / "gdino")
    r = detect(photos[:1], model, "--text", "cat", "--runtime", "openvino")
    line = one_error_line(r)
    assert "no exporter for transformers" in line and "--runtime torch" in line and "OWL-ViT" in line


def test_compare_runtime(detr, photos, torch_records, shared_cache, tmp_path):
    """compare --runtime runs the models through the exported network: same AP as torch."""
    import json

    gt = gt_from_records(torch_records, tmp_path / "gt.json")  # half the detections: AP strictly in (0, 1)
    stats = {}
    from visiontool.models import loader

    for runtime in ("torch", "onnxruntime"):
        loader.release()
        r = runner.invoke(app, ["compare", "--gt", str(gt), "--images", str(Path(photos[0]).parent), "--model",
                                str(detr), "--device", "cpu", "-f", "json", "--runtime", runtime, "--no-warmup"],
                          env={"VISIONTOOL_CACHE": str(shared_cache)})
        assert r.exit_code == 0, r.stderr
        (run,) = json.loads(r.stdout)["runs"]
        stats[runtime] = run
    assert stats["onnxruntime"]["backend"] == "transformers+onnxruntime"
    assert stats["torch"]["backend"] == "transformers"
    ap_t, ap_o = stats["torch"]["map"], stats["onnxruntime"]["map"]
    assert 0.0 < ap_t < 1.0 and abs(ap_t - ap_o) < 1e-6
