"""`visiontool compare` on prediction files: pycocotools' numbers, Δ signs, JSON shape, bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli_helpers import one_error_line

from visiontool.cli.main import app
from visiontool.services.compare import STAT_KEYS
from visiontool.services.evaluate import GroundTruth, evaluate

runner = CliRunner()

EVALUATE_KEYS = {"iou_type", *STAT_KEYS, "per_class"}
MODEL_KEYS = {"params", "ms_per_image", "images_per_s", "peak_memory_mb", "needs_nms", "duplicate_rate",
              "paradigm", "family", "backend"}


def run(*args):
    return runner.invoke(app, ["compare", *map(str, args)])


@pytest.fixture(scope="module")
def real(coco_dir, tmp_path_factory):
    """The real subset, its fake results, and derived files with known differences."""
    import numpy as np

    d = tmp_path_factory.mktemp("cmpfiles")
    gt = coco_dir / "instances_val2014_100.json"
    fake = coco_dir / "instances_val2014_fakebbox100_results.json"
    results = json.loads(fake.read_text())
    rng = np.random.default_rng(0)
    jitter = []
    for r in results:  # boxes moved by up to 15% of their size: AP75 falls much more than AP50
        x, y, w, h = r["bbox"]
        dx, dy = rng.uniform(-0.15, 0.15, 2)
        jitter.append(dict(r, bbox=[x + dx * w, y + dy * h, w, h]))
    (d / "jitter.json").write_text(json.dumps(jitter))
    (d / "same.json").write_text(json.dumps(results))
    (d / "half.json").write_text(json.dumps(results[::2]))  # every other detection dropped
    return {"gt": gt, "fake": fake, "jitter": d / "jitter.json", "same": d / "same.json",
            "half": d / "half.json", "dir": d}


@pytest.fixture(scope="module")
def real_json(real):
    r = runner.invoke(app, ["compare", "--gt", str(real["gt"]), str(real["fake"]), str(real["jitter"]),
                            str(real["half"]), str(real["same"]), "--name", "fake", "--name", "jitter",
                            "--per-class", "--format", "json"])
    assert r.exit_code == 0, r.stderr
    return json.loads(r.stdout)


def test_json_shape_is_design_s3(real_json):
    runs = real_json["runs"]
    assert list(real_json) == ["runs"]
    assert [r["name"] for r in runs] == ["fake", "jitter", "half", "same"]  # --name, then file stems
    for r in runs:
        assert set(r) == {"name", "delta"} | EVALUATE_KEYS, set(r) ^ ({"name", "delta"} | EVALUATE_KEYS)
        assert set(r["delta"]) == set(STAT_KEYS)
        assert r["iou_type"] == "bbox"
        assert r["per_class"] and set(r["per_class"][0]) == {"category_id", "name", "ap", "ap_50", "ap_75",
                                                             "ar_100", "gt_count"}
        assert not (MODEL_KEYS & set(r))  # model-only keys stay off file rows


def test_numbers_are_pycocotools(real, real_json):
    """Every run's 12 numbers are pycocotools' own (the oracle, not the evaluate() compare calls)."""
    from evaluate_helpers import oracle

    gt = json.loads(real["gt"].read_text())
    expected = {name: oracle(gt, json.loads(real[name].read_text()), "bbox")["stats"]
                for name in ("fake", "jitter", "half", "same")}
    for run, name in zip(real_json["runs"], ("fake", "jitter", "half", "same")):
        for k in STAT_KEYS:
            assert run[k] == expected[name][k], (name, k)
            assert run["delta"][k] == pytest.approx(expected[name][k] - expected["fake"][k], abs=1e-15)
    assert all(real_json["runs"][0]["delta"][k] == 0.0 for k in STAT_KEYS)


def test_delta_signs(real_json):
    base, jitter, half, same = real_json["runs"]
    # jittered boxes: localisation worse -> AP and AP75 drop, AP75 much more than AP50
    assert jitter["delta"]["map"] < -0.05
    assert jitter["delta"]["map_75"] < jitter["delta"]["map_50"] <= 0.0005
    # half the detections gone: recall and AP lower
    assert half["delta"]["map"] < 0 and half["delta"]["mar_100"] < 0
    # an identical file: every delta exactly 0, every number equal
    assert all(v == 0.0 for v in same["delta"].values())
    assert all(same[k] == base[k] for k in STAT_KEYS)


def test_table_per_class_sort_and_plot(real, tmp_path):
    png = tmp_path / "bars.png"
    r = run("--gt", real["gt"], real["fake"], real["half"], real["jitter"], "--per-class", "--top", "3",
            "--sort-by", "AP", "--plot", png, "--format", "table", "--name", "fake")
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "fake (baseline)" in out and "0.5046" in out and "Δ" in out
    # sorted by AP after the baseline (each run followed by its Δ row)
    lines = [ln for ln in out.splitlines() if ln.startswith("│ ")]
    names = [ln.split("│")[1].strip() for ln in lines[:5]]
    assert names[0] == "fake (baseline)" and names[2] == "Δ"
    j = json.loads(run("--gt", real["gt"], real["half"], real["jitter"], "-f", "json").stdout)
    ordered = sorted([("half", j["runs"][0]["map"]), ("jitter", j["runs"][1]["map"])], key=lambda t: -t[1])
    assert [names[1], names[3]] == [n for n, _ in ordered]
    assert "per class: the 3 categories whose AP moved most" in out
    assert "max |Δ|" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "wrote" in r.stderr and str(png) in r.stderr.replace("\n", "")
    assert "pizza" in r.stderr and "pizza" not in out  # evaluate's diagnostics go to stderr


def test_single_run_and_output_file(real, tmp_path):
    out = tmp_path / "cmp.json"
    r = run("--gt", real["gt"], real["fake"], "-o", out, "-q")
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    data = json.loads(out.read_text())  # format from the .json extension
    assert len(data["runs"]) == 1 and all(v == 0.0 for v in data["runs"][0]["delta"].values())


def test_records_and_coco_give_the_same_row(tmp_path):
    """Any format evaluate accepts: visiontool records and the equivalent COCO results."""
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
          "categories": [{"id": 5, "name": "dog"}, {"id": 9, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "area": 1600},
                          {"id": 2, "image_id": 1, "category_id": 9, "bbox": [60, 60, 30, 30], "area": 900}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    recs = [{"image": "photos/a.jpg", "detections": [
        {"label": "dog", "score": 0.9, "box": [12, 10, 52, 50]},
        {"label": "cat", "score": 0.4, "box": [0, 0, 20, 20]}]}]
    (tmp_path / "recs.jsonl").write_text("\n".join(json.dumps(x) for x in recs + recs[:0]) + "\n")
    coco = [{"image_id": 1, "category_id": 5, "bbox": [12, 10, 40, 40], "score": 0.9},
            {"image_id": 1, "category_id": 9, "bbox": [0, 0, 20, 20], "score": 0.4}]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    r = run("--gt", tmp_path / "gt.json", tmp_path / "recs.jsonl", tmp_path / "coco.json", "-f", "json")
    assert r.exit_code == 0, r.stderr
    a, b = json.loads(r.stdout)["runs"]
    assert all(a[k] == b[k] for k in STAT_KEYS) and all(v == 0.0 for v in b["delta"].values())
    assert 0 < a["map"] < 1


def test_python_api(real):
    import visiontool

    gt = GroundTruth.load(str(real["gt"]))
    res = visiontool.compare(gt, [str(real["fake"]), str(real["half"])], names=["A", "B"])
    d = res.to_dict()
    assert [r["name"] for r in d["runs"]] == ["A", "B"]
    assert d["runs"][1]["delta"]["map"] == pytest.approx(d["runs"][1]["map"] - d["runs"][0]["map"])
    # an in-memory list of result dicts is one run, not a list of runs
    one = visiontool.compare(gt, json.loads(real["fake"].read_text()))
    assert len(one.runs) == 1 and one.runs[0].stats["map"] == d["runs"][0]["map"]
    assert not res.failed


def test_segm_files(coco_dir):
    gt = coco_dir / "instances_val2014_100.json"
    segm = coco_dir / "instances_val2014_fakesegm100_results.json"
    r = run("--gt", gt, segm, segm, "--iou-type", "segm", "-f", "json")
    assert r.exit_code == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    ev = evaluate(str(gt), str(segm), "segm")
    assert runs[0]["iou_type"] == "segm" and runs[0]["map"] == ev.stats["map"]


# ---------------------------------------------------------------------------------------
# bad input: exit 2, one line, nothing on stdout


def test_bad_inputs(real, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"image_id\": 1,")
    wrong_id = tmp_path / "wrong.json"
    wrong_id.write_text(json.dumps([{"image_id": 123456789, "category_id": 1, "bbox": [0, 0, 1, 1],
                                     "score": 0.5}]))
    gt, fake = real["gt"], real["fake"]
    cases = [
        ((fake,), "needs --gt"),
        (("--gt", tmp_path / "nope.json", fake), "ground truth file not found"),
        (("--gt", gt), "nothing to compare"),
        (("--gt", gt, tmp_path / "missing.json"), "predictions file not found"),
        (("--gt", gt, fake, bad), "not valid JSON"),
        (("--gt", gt, fake, wrong_id), "image_id 123456789 is not in the ground truth"),
        (("--gt", gt, fake, "--sort-by", "bogus"), "invalid --sort-by"),
        (("--gt", gt, fake, "--iou-type", "keypoints"), "invalid --iou-type"),
        (("--gt", gt, fake, "--format", "csv"), "invalid --format"),
        (("--gt", gt, fake, "--name", "a", "--name", "b"), "2 --name values for 1 run"),
        (("--gt", gt, fake, "--backend", "nope"), "invalid --backend"),
        (("--gt", gt, "--model", "/no/such/dir", "--images", real["dir"]), "no such directory"),
        (("--gt", gt, "--model", "x/y"), "--model needs --images"),
        (("--gt", gt, fake, "--images", real["dir"]), "--images is only used with --model"),
        # a model's flag on files was ignored (-t 0.5 scored every detection; --save-preds made an empty dir)
        (("--gt", gt, fake, "-t", "0.5"), "--threshold applies to --model runs; prediction files are scored as"),
        (("--gt", gt, fake, "--save-preds", tmp_path / "sp", "--max-det", "10"), "--max-det, --save-preds apply"),
        (("--gt", gt, fake, "-b", "4", "-r", "--dup-score", "0.3", "--no-warmup"),
         "--batch-size, --recursive, --dup-score, --no-warmup apply"),
        (("--gt", gt, fake, "--sort-by", "fps"), "--sort-by fps orders --model runs by what running them measured"),
        (("--gt", gt, fake, "--sort-by=-memory"), "prediction files have no such figure"),
        (("--gt", bad, fake), "not valid JSON"),
        (("--gt", gt, fake, "--bogus-flag"), "No such option"),
    ]
    for args, message in cases:
        line = one_error_line(run(*args))
        assert message in line, (args, line)
    assert not (tmp_path / "sp").exists()


def test_help_does_not_import_torch():
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom visiontool.cli.main import app\n"
            "r = CliRunner().invoke(app, ['compare', '--help'])\nassert r.exit_code == 0, r.output\n"
            "assert '--save-preds' in r.output and 'duplicate' in r.output\n"
            "bad = [m for m in ('torch', 'transformers', 'matplotlib') if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True)
