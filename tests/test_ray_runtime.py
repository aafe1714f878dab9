# ruff: noqa: F811  (fixtures imported from ray_helpers are re-bound as test arguments)
"""``detect --engine ray --runtime onnxruntime``: every replica runs the exported network, the
records equal the local ``--runtime onnxruntime`` run's, and the replicas (starting together
on one shared cache) export the model once; ``segment --engine ray --runtime onnxruntime`` (the
SAM image encoder exported) equals the local ``segment --runtime onnxruntime``. Bad
combinations fail on the driver, before Ray."""
from __future__ import annotations

from pathlib import Path

import json

import pytest
from typer.testing import CliRunner

from cli_helpers import one_error_line
from ray_helpers import assert_same_records, make_images, records_by_image
from visiontool.cli.main import app

pytest.importorskip("ray")
pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")
runner = CliRunner()
N = 24


def invoke(*args, **kw):
    from visiontool.models import loader

    loader.release()
    return runner.invoke(app, [str(a) for a in args], **kw)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return make_images(tmp_path_factory.mktemp("ray-rt-images") / "photos", N)


def test_ray_runtime_equals_local_runtime(ray_cluster, images, tiny_detr_fast, tmp_path, tmp_path_factory):
    local = invoke("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "-f", "jsonl", "-q",
                   "--runtime", "onnxruntime")
    assert local.exit_code == 1, local.stderr  # the corrupt files
    want = records_by_image(local.stdout.splitlines())
    assert len(want) == N and sum(len(r["detections"]) for r in want.values()) > N

    out = tmp_path / "run"
    r = invoke("detect", images, "-m", tiny_detr_fast, "-t", "0.05", "--device", "cpu", "--engine", "ray",
               "--runtime", "onnxruntime", "--replicas", "2", "--output-dir", out)
    assert r.exit_code == 1, r.stderr  # the corrupt files again, as error rows
    merged = invoke("merge", out, "-f", "jsonl")
    assert merged.exit_code == 0, merged.stderr
    got = records_by_image(merged.stdout.splitlines())
    assert_same_records({k: v for k, v in got.items() if "error" not in v}, want)
    # the replicas share the workers' cache (ray_cluster's VISIONTOOL_CACHE): one export entry
    caches = sorted({p.resolve() for p in tmp_path_factory.getbasetemp().glob("ray-worker-cache*/exports")})
    assert len(caches) == 1
    entries = [p.name for p in caches[0].iterdir()]
    assert not [e for e in entries if e.startswith(".")], entries  # no temporary leftovers
    detr = [e for e in entries if json.loads((caches[0] / e / "entry.json").read_text())["key"]["kind"]
            == "transformers-detection"]
    assert len(detr) == 1, entries


def test_ray_runtime_bad_combinations_fail_on_the_driver(images, tiny_detr_fast, tmp_path):
    """Before Ray starts: a GPU device with a CPU runtime, an export dir with another runtime."""
    r = invoke("detect", images, "-m", tiny_detr_fast, "--device", "cuda", "--engine", "ray", "--runtime",
               "onnxruntime", "--output-dir", tmp_path / "a")
    assert "--runtime onnxruntime runs on the CPU" in one_error_line(r)
    export = tmp_path / "export"
    r = invoke("export", tiny_detr_fast, "--runtime", "onnx", "-o", export, "-q")
    assert r.exit_code == 0, r.stderr
    r = invoke("detect", images, "-m", export, "--engine", "ray", "--runtime", "openvino", "--output-dir",
               tmp_path / "b")
    assert "is an onnxruntime export" in one_error_line(r)
    assert not list(tmp_path.glob("[ab]/*"))  # no run was started


def test_ray_segment_runtime_equals_local_runtime(ray_cluster, images, tiny_detr_fast, tmp_path, tmp_path_factory):
    from segment_helpers import decode, save_tiny_sam
    from visiontool.models.runtimes import sam_export

    ckpt = save_tiny_sam(tmp_path / "sam_tiny.pth")
    chosen = [images / f"img{i:03d}.jpg" for i in range(0, 24, 4)]
    det = invoke("detect", *chosen, "-m", tiny_detr_fast, "-t", "0.3", "--device", "cpu", "-f", "jsonl", "-q")
    assert det.exit_code == 0, det.stderr
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(det.stdout)
    common = ["--boxes-from", boxes, "--checkpoint", ckpt, "--device", "cpu", "--no-cache", "--runtime",
              "onnxruntime", "-q"]
    local = invoke("segment", *chosen, *common, "-f", "jsonl")
    assert local.exit_code == 0, local.stderr
    want = records_by_image(local.stdout.splitlines())
    assert sum(len(r["masks"]) for r in want.values()) >= 4
    assert {r["model"] for r in want.values()} == {json.loads(local.stdout.splitlines()[0])["model"]}
    out = tmp_path / "seg"
    r = invoke("segment", *chosen, *common, "--engine", "ray", "--output-dir", out, "--replicas", "1")
    assert r.exit_code == 0, r.stderr
    merged = invoke("merge", out, "-f", "jsonl")
    assert merged.exit_code == 0, merged.stderr
    got = records_by_image(merged.stdout.splitlines())
    assert_same_records(got, want)
    # the replica exported the SAM image encoder into the workers' cache (ray_cluster's VISIONTOOL_CACHE)
    (cache,) = {p.resolve() for p in tmp_path_factory.getbasetemp().glob("ray-worker-cache*/exports")}
    kinds = [json.loads((e / "entry.json").read_text())["key"] for e in cache.iterdir() if not e.name.startswith(".")
             and (e / "entry.json").is_file()]
    assert any(k.get("kind") == sam_export.KIND and k.get("runtime") == "onnxruntime" for k in kinds), kinds
    for name, rec in want.items():  # the same exported encoder on both sides: the same masks
        for a, b in zip(rec["masks"], got[name]["masks"]):
            assert (decode(a["segmentation"]) != decode(b["segmentation"])).sum() == 0, name


def test_ray_segment_runtime_on_a_gpu_fails_on_the_driver(images, tmp_path):
    from segment_helpers import save_tiny_sam

    ckpt = save_tiny_sam(tmp_path / "sam_tiny.pth")
    r = invoke("segment", images / "img000.jpg", "--box", "1,1,20,20", "--checkpoint", ckpt, "--device", "cuda",
               "--engine", "ray", "--runtime", "onnxruntime", "--output-dir", tmp_path / "a")
    assert "--runtime onnxruntime runs on the CPU" in one_error_line(r)
    assert not list(tmp_path.glob("a/*"))
