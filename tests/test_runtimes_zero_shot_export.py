"""``visiontool export`` of the open-vocabulary OWL-ViT and OWLv2, and ``--model DIR --text``:
DIR holds the network (the phrases an input), the processor's files and the manifest; loaded
from DIR alone (the source model deleted, nothing exported again into the cache) it gives the
torch path's records for any phrases (boxes within 0.05 px, scores within 1e-4). Without
``--text`` or with a damaged DIR: one line. (Grounding DINO and OmDet-Turbo export directories:
tests/test_runtimes_grounding.py.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli_helpers import assert_user_error, one_error_line
from detector_helpers import small_photos
from hf_tiny_text import build_zero_shot
from runtimes_helpers import assert_same_detections_unordered, gt_from_records, records
from visiontool.cli.main import app

runner = CliRunner()
FAMILIES = ("owlv2", "owlvit")
RUNTIMES = {"openvino": (["model.xml", "model.bin"], "openvino"), "onnx": (["model.onnx"], "onnxruntime")}
TEXTS = ("cat, dog, a person", "a red car, tree")  # the second: other phrases, another count
PROCESSOR_FILES = ["processor_config.json", "tokenizer.json", "tokenizer_config.json"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("owlx")
    return {f: build_zero_shot(f, d / f) for f in FAMILIES}


@pytest.fixture(scope="module")
def photos(tmp_path_factory, images_dir) -> list[str]:
    d = small_photos(tmp_path_factory.mktemp("owlxphotos"), images_dir)
    return [str(p) for p in sorted(d.glob("*.png"))]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("owlxcache")


def invoke(args, cache: Path):
    from visiontool.models import loader

    loader.release()  # each command loads as a new process would
    return runner.invoke(app, [str(a) for a in args], env={"VISIONTOOL_CACHE": str(cache)})


def detect(photos, model, *extra, cache: Path):
    return invoke(["detect", *photos, "--model", model, "--device", "cpu", "-f", "jsonl", "--threshold", "0.0",
                   "--batch-size", "2", *extra], cache)


@pytest.fixture(scope="module")
def torch_records(models, photos, cache):
    out = {}
    for family, model in models.items():
        for text in TEXTS:
            r = detect(photos, model, "--text", text, cache=cache)
            assert r.exit_code == 0, (family, r.stderr)
            out[family, text] = records(r.stdout)
    return out


@pytest.fixture(scope="module")
def exports(models, tmp_path_factory, cache) -> dict[tuple[str, str], Path]:
    """(family, runtime) -> export directory, written by the CLI from a copy of the model that
    is deleted afterwards: loading DIR cannot lean on the source."""
    base = tmp_path_factory.mktemp("owlxexports")
    made = {}
    for family in FAMILIES:
        for runtime in RUNTIMES:
            source = base / f"source-{family}"
            shutil.copytree(models[family], source)
            out = base / f"{family}-{runtime}"
            r = invoke(["export", source, "--runtime", runtime, "-o", out], cache)
            assert r.exit_code == 0, r.stderr
            assert r.stdout == "" and f"exported {source} to {out}" in r.stderr
            shutil.rmtree(source)
            made[family, runtime] = out
    return made


def assert_same(want: list[dict], got: list[dict]) -> None:
    assert [r["image"] for r in want] == [r["image"] for r in got]
    n = sum(assert_same_detections_unordered(a["detections"], b["detections"]) for a, b in zip(want, got))
    assert n >= 10, n  # threshold 0: every patch's box of every photo compared


@pytest.mark.parametrize("runtime", list(RUNTIMES))
@pytest.mark.parametrize("family", FAMILIES)
def test_export_then_detect_text_equals_torch_path(exports, photos, torch_records, cache, family, runtime):
    out = exports[family, runtime]
    files, engine = RUNTIMES[runtime]
    for f in files + PROCESSOR_FILES + ["visiontool-export.json", "entry.json"]:
        assert (out / f).is_file(), f
    assert not [p for p in out.parent.iterdir() if ".tmp-" in p.name]  # no temporary leftovers
    manifest = json.loads((out / "visiontool-export.json").read_text())
    assert (manifest["kind"], manifest["family"], manifest["runtime"]) == ("transformers-zero-shot", family, engine)
    assert manifest["model_type"] == family and manifest["image_size"] == [64, 64] and manifest["shapes"] == "64x64"
    assert manifest["class_names"] == {} and manifest["visiontool_version"] and manifest["params"] > 0
    assert manifest["inputs"] == ["pixel_values", "input_ids", "attention_mask"]
    assert manifest["preprocessing"]["size"] == {"height": 64, "width": 64}
    assert manifest["tokenizer"] == {"class": "CLIPTokenizer", "max_length": 64}
    assert set(files + PROCESSOR_FILES) <= set(manifest["files"])
    for text, extra in ((TEXTS[0], []), (TEXTS[1], ["--runtime", engine])):
        r = detect(photos, out, "--text", text, *extra, cache=cache)
        assert r.exit_code == 0, r.stderr
        got = records(r.stdout)
        assert {x["model"] for x in got} == {str(out)}
        assert {d["phrase"] for x in got for d in x["detections"]} == {p.strip() for p in text.split(",")}
        assert_same(torch_records[family, text], got)
    assert not (cache / "exports").exists()  # DIR ran as it is: nothing exported again


def test_loaded_export_holds_no_torch_model(exports):
    from visiontool.models import loader, registry
    from visiontool.models.runtimes.zs_export import RuntimeZeroShotDetector

    loader.release()
    det = registry.load_detector(str(exports["owlvit", "onnx"]), "cpu", "float32", text=True)
    assert type(det) is RuntimeZeroShotDetector and det.model is None
    assert (det.info.paradigm, det.info.runtime, det.info.family) == ("open-vocabulary", "onnxruntime", "owlvit")
    loader.release()


@pytest.mark.parametrize("extra", [[], ["--classes", "cat"]])
def test_export_without_text_is_one_line(exports, photos, cache, extra):
    r = detect(photos[:1], exports["owlv2", "openvino"], *extra, cache=cache)
    line = one_error_line(r, 2)
    assert "open-vocabulary" in line and "--text" in line


@pytest.mark.parametrize("runtime,damage,needle", [
    ("openvino", "truncate", "model.bin"),
    ("onnx", "truncate", "model.onnx"),
    ("onnx", "delete", "tokenizer.json"),
    ("openvino", "rewrite", "processor_config.json"),
])
def test_damaged_export_is_one_line(exports, photos, cache, tmp_path, runtime, damage, needle):
    out = tmp_path / "copy"
    shutil.copytree(exports["owlv2", runtime], out)
    path = out / needle
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "delete":
        path.unlink()
    else:
        path.write_text(path.read_text().replace("64", "96"))
    r = detect(photos[:1], out, "--text", "cat", cache=cache)
    line = one_error_line(r, 1)
    assert needle in line and "export the model again" in line


def test_compare_with_an_owl_export_is_as_with_its_source(models, exports, photos, torch_records, cache, tmp_path):
    """compare has no --text: an OWL export there is refused as its torch source is, one line, exit 2."""
    gt = gt_from_records(torch_records["owlv2", TEXTS[0]], tmp_path / "gt.json")
    images = Path(photos[0]).parent
    for model in (models["owlv2"], exports["owlv2", "onnx"]):
        r = invoke(["compare", "--gt", gt, "--images", images, "--model", model, "--device", "cpu", "-f", "json"],
                   cache)
        assert_user_error(r, 2, "open-vocabulary", "--text")
