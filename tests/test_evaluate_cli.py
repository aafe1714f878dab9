"""`visiontool evaluate` through the CLI: formats, flags, diagnostics, and every bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cli_helpers import entry_point, one_error_line

from evaluate_helpers import BAD, STAT_KEYS, adversarial_set, detect_records, oracle
from visiontool.cli.main import app
from visiontool.io.predictions import load_predictions
from visiontool.services.evaluate import GroundTruth

runner = CliRunner()


def run(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """A GT file and 300 valid bbox results (first annotation id 1: the native path)."""
    d = tmp_path_factory.mktemp("evalcli")
    gt, res = adversarial_set(7, with_segm=False, first_id=1)
    (d / "gt.json").write_text(json.dumps(gt))
    (d / "dt.json").write_text(json.dumps(res))
    return d, gt, res


@pytest.fixture
def real(coco_dir):
    return (coco_dir / "instances_val2014_100.json", coco_dir / "instances_val2014_fakebbox100_results.json",
            coco_dir / "instances_val2014_fakesegm100_results.json")


def test_table_when_asked_json_when_piped(real):
    """DESIGN §2: a table on a terminal or when asked, JSON when piped (CliRunner's stdout is a pipe)."""
    gt, bbox, _ = real
    piped = run("--gt", gt, "--pred", bbox)
    assert piped.exit_code == 0, piped.stderr
    assert json.loads(piped.stdout)["map"] == pytest.approx(0.5045806987249628)
    r = run("--gt", gt, "--pred", bbox, "-f", "table")
    assert r.exit_code == 0, r.stderr
    assert "map_50" in r.stdout and "0.5046" in r.stdout
    assert "pizza" in r.stderr  # GT category never predicted: a diagnostic, on stderr only
    assert "pizza" not in r.stdout


def test_json_shape_and_values(real):
    gt, bbox, segm = real
    for iou_type, pred in (("bbox", bbox), ("segm", segm)):
        r = run("--gt", gt, "--pred", pred, "--iou-type", iou_type, "--format", "json", "--per-class")
        assert r.exit_code == 0, r.stderr
        d = json.loads(r.stdout)
        assert list(d) == ["iou_type", *STAT_KEYS, "per_class"]
        ref = oracle(json.loads(gt.read_text()), json.loads(pred.read_text()), iou_type)
        assert {k: d[k] for k in STAT_KEYS} == ref["stats"]
        assert len(d["per_class"]) == 80
        assert set(d["per_class"][0]) == {"category_id", "name", "ap", "ap_50", "ap_75", "ar_100", "gt_count"}
        assert sum(row["gt_count"] for row in d["per_class"]) == 830  # non-crowd annotations


def test_per_class_table_sorted(real):
    gt, bbox, _ = real
    r = run("--gt", gt, "--pred", bbox, "--per-class", "-f", "table")
    assert r.exit_code == 0
    body = r.stdout.split("per class")[1]
    aps = [float(ln.split("│")[3]) for ln in body.splitlines() if ln.count("│") == 8]
    assert aps == sorted(aps, reverse=True) and len(aps) == 80


def test_output_file_and_plot(real, tmp_path):
    gt, bbox, _ = real
    out, plots = tmp_path / "res.json", tmp_path / "plots"
    r = run("--gt", gt, "--pred", bbox, "--format", "json", "--output", out, "--plot", plots)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == ""
    assert json.loads(out.read_text())["map"] > 0.5
    png = plots / "pr_bbox.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


@pytest.mark.parametrize("name,code,kind", [("res.csv", 2, None), ("res.mot", 2, None), ("res.xyz", 0, "json"),
                                            ("res", 0, "json"), ("res.TXT", 0, "table")])
def test_the_output_extension_chooses_the_format_and_never_lies(real, tmp_path, name, code, kind):
    """``-o res.csv`` asks for csv, which evaluate does not write: exit 2 and no file (it wrote JSON into
    the .csv); an extension that names no format writes json with one warning; none writes json."""
    gt, bbox, _ = real
    out = tmp_path / name
    r = run("--gt", gt, "--pred", bbox, "--output", out)
    assert r.exit_code == code, r.stderr
    if code:
        assert f"--output '{out}' asks for {name[4:]}, which this command does not write" in one_error_line(r)
        assert not out.exists()
        return
    warned = [ln for ln in r.stderr.splitlines() if ln.startswith("visiontool: warning: --output")]
    assert len(warned) == (name == "res.xyz"), r.stderr
    text = out.read_text()
    assert (json.loads(text)["iou_type"] == "bbox") if kind == "json" else ("map_50" in text and "│" in text)


def test_backend_flag(real):
    gt, bbox, _ = real
    a = json.loads(run("--gt", gt, "--pred", bbox, "--format", "json").stdout)
    b = json.loads(run("--gt", gt, "--pred", bbox, "--format", "json", "--backend", "pycocotools").stdout)
    assert a == b


def test_detect_records_by_file_name(synth, tmp_path):
    d, gt, res = synth
    recs = detect_records(gt, res)
    recs.append({"image": "/elsewhere/not_in_gt.jpg", "detections": [
        {"label": "cat1", "score": 0.5, "box": [1, 1, 5, 5]}]})
    p = tmp_path / "dets.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    r = run("--gt", d / "gt.json", "--pred", p, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert "1 prediction record(s) are for images absent from the ground truth" in r.stderr


def test_a_label_two_gt_categories_share_is_refused_not_guessed(tmp_path):
    """Records name categories by label: with 5 and 9 both 'dog', the last one silently won (AP 1 or 0
    depending on which the annotations used). COCO results by category_id are still scored."""
    gt = {"images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 100}],
          "categories": [{"id": 5, "name": "dog"}, {"id": 9, "name": "Dog"}, {"id": 2, "name": "cat"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "area": 1600,
                           "iscrowd": 0}]}
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rec = {"image": "a.jpg", "detections": [{"label": "dog", "score": 0.9, "box": [10, 10, 50, 50]}]}
    (tmp_path / "r.jsonl").write_text(json.dumps(rec) + "\n")
    line = one_error_line(run("--gt", tmp_path / "gt.json", "--pred", tmp_path / "r.jsonl"))
    assert "categories 5 and 9 are both named 'dog', so a label 'dog' cannot say which" in line
    cat = {"image": "a.jpg", "detections": [{"label": "cat", "score": 0.9, "box": [10, 10, 50, 50]}]}
    (tmp_path / "c.jsonl").write_text(json.dumps(cat) + "\n")  # an unshared name is fine
    assert run("--gt", tmp_path / "gt.json", "--pred", tmp_path / "c.jsonl").exit_code == 0
    coco = [{"image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "score": 0.9}]
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    r = run("--gt", tmp_path / "gt.json", "--pred", tmp_path / "coco.json", "-f", "json")
    assert r.exit_code == 0 and json.loads(r.stdout)["map"] == pytest.approx(1.0)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_records_of_which_not_one_is_in_the_gt_are_refused(synth, tmp_path, iou_type):
    """The wrong --gt (or folder): every AP was 0 with exit 0 and two warnings."""
    d, _, _ = synth
    rle = {"size": [10, 10], "counts": ";4600000a1"}  # a 4x4 square
    recs = [{"image": f"/elsewhere/photo{k}.jpg", "width": 10, "height": 10, "model": "m",
             ("masks" if iou_type == "segm" else "detections"): [
                 {"label": "cat1", "score": 0.5, "box": [1, 1, 5, 5], "segmentation": rle}]} for k in range(3)]
    p = tmp_path / "dets.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in recs))
    r = run("--gt", d / "gt.json", "--pred", p, "--iou-type", iou_type, "--format", "json")
    line = one_error_line(r)
    assert "none of its 3 record(s) is for an image of the ground truth (first: '/elsewhere/photo0.jpg')" in line
    assert r.stdout == ""


def test_diagnostics(synth, tmp_path):
    d, _, res = synth
    thresholded = [dict(x, score=0.5 + x["score"] / 2) for x in res]
    p = tmp_path / "thr.json"
    p.write_text(json.dumps(thresholded))
    r = run("--gt", d / "gt.json", "--pred", p, "--format", "json")
    assert r.exit_code == 0
    assert "pre-thresholded" in r.stderr
    coarse = [dict(x, bbox=[x["bbox"][0] + x["bbox"][2] * 0.3, x["bbox"][1], x["bbox"][2], x["bbox"][3]])
              for x in res]
    p.write_text(json.dumps(coarse))
    r = run("--gt", d / "gt.json", "--pred", p, "--format", "json")
    d2 = json.loads(r.stdout)
    if d2["map_50"] >= 0.1 and d2["map_75"] < 0.5 * d2["map_50"]:
        assert "localised coarsely" in r.stderr


def test_valid_files_take_the_native_fast_path(synth, coco_dir):
    d, _, res = synth
    g = GroundTruth.load(str(d / "gt.json"))
    p = load_predictions(str(d / "dt.json"), g, "bbox")  # the engine reads it; checked on its rows
    assert p.path is not None and p.pending is not None and p.rows is None
    assert len(p) == len(res) and p.pending is None
    g2 = GroundTruth.load(str(coco_dir / "instances_val2014_100.json"))
    p = load_predictions(str(coco_dir / "instances_val2014_fakesegm100_results.json"), g2, "segm")
    assert p.path is not None and p.results is None


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("name", list(BAD))
def test_bad_record_names_first_offender(synth, tmp_path, name):
    d, gt, res = synth
    mutate, text = BAD[name]
    bad = list(res)
    bad[5] = mutate(bad[5])
    bad[9] = mutate(bad[9])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))  # NaN is written as the (non-standard) NaN token
    line = one_error_line(run("--gt", d / "gt.json", "--pred", p))
    assert "result 5:" in line and text in line, line
    # --lenient: skipped with a count, the rest evaluated exactly
    r = run("--gt", d / "gt.json", "--pred", p, "--lenient", "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert "skipped 2 invalid prediction(s)" in r.stderr and "Traceback" not in r.stderr
    kept = [x for i, x in enumerate(res) if i not in (5, 9)]
    ref = oracle(gt, kept, "bbox")
    assert {k: json.loads(r.stdout)[k] for k in STAT_KEYS} == ref["stats"]


def test_bad_segm_records(coco_dir, tmp_path):
    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    gt = coco_dir / "instances_val2014_100.json"
    p = tmp_path / "bad.json"
    for mut, text in [
            (lambda r: {k: v for k, v in r.items() if k != "segmentation"}, "has no 'segmentation'"),
            (lambda r: dict(r, segmentation=[[1, 2, 3, 4, 5, 6]]), "must be COCO RLE"),
            (lambda r: dict(r, segmentation=dict(r["segmentation"], size=[3, 3])), "is not a COCO RLE of 3x3 pixels"),
            (lambda r: dict(r, score=None), "score is not a number")]:
        bad = list(res)
        bad[3] = mut(bad[3])
        p.write_text(json.dumps(bad))
        line = one_error_line(run("--gt", gt, "--pred", p, "--iou-type", "segm"))
        assert "result 3:" in line and text in line, line


@pytest.mark.parametrize("fmt", ["results", "records"])
def test_predictions_of_categories_the_gt_lacks_count_for_nothing_as_in_pycocotools(synth, tmp_path, fmt):
    """COCOeval scores the GT's categories only: pycocotools scores such a file, leaving those
    predictions out (a COCO-trained model on a dataset of a few of its classes). They were
    refused (exit 2, or --lenient's "invalid")."""
    d, gt, res = synth
    odd = {3: 555, 8: 555, 11: 777}
    mixed = [dict(r, category_id=odd[i]) if i in odd else r for i, r in enumerate(res)]
    kept = [r for i, r in enumerate(res) if i not in odd]
    if fmt == "results":
        preds, warned = mixed, "category_id 555 (2), category_id 777 (1)"
    else:  # detect's records: a label the GT does not have
        kept = [r for i, r in enumerate(res) if i not in (3, 8)]
        preds = detect_records(gt, res)
        odd_dets = [det for rec in preds for det in rec["detections"]
                    if any(det["score"] == res[i]["score"] and det["box"][:2] == res[i]["bbox"][:2] for i in (3, 8))]
        assert len(odd_dets) == 2
        for det in odd_dets:
            det["label"] = "unicorn"
        warned = "'unicorn' (2)"
    p = tmp_path / "preds.json"
    p.write_text(json.dumps(preds))
    r = run("--gt", d / "gt.json", "--pred", p, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert {k: json.loads(r.stdout)[k] for k in STAT_KEYS} == oracle(gt, mixed if fmt == "results" else kept,
                                                                    "bbox")["stats"]
    assert f"prediction(s) are of categories the ground truth does not have ({warned})" in r.stderr


def test_bad_detect_record(synth, tmp_path):
    d, gt, res = synth
    recs = detect_records(gt, res)
    p = tmp_path / "dets.json"
    recs[1]["detections"][0]["box"] = [10, 10, 5, 20]
    p.write_text(json.dumps(recs))
    line = one_error_line(run("--gt", d / "gt.json", "--pred", p))
    assert "record 1" in line and "negative size" in line


@pytest.mark.parametrize("content,text", [
    ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5},', "not valid JSON"),
    ("", "is empty"),
    ('{"images": [], "annotations": [], "categories": []}', "ground-truth file, not predictions"),
    ('"hello"', "expected a JSON list"),
    ("{\"a\": 1}\n{\"b\": \n", "neither JSON nor JSONL"),
])
def test_malformed_prediction_files(synth, tmp_path, content, text):
    d, _, _ = synth
    p = tmp_path / "p.json"
    p.write_text(content)
    line = one_error_line(run("--gt", d / "gt.json", "--pred", p))
    assert text in line, line


def test_bad_ground_truth(synth, tmp_path):
    d, _, _ = synth
    p = tmp_path / "gt.json"
    p.write_text("{not json")
    assert "not valid JSON" in one_error_line(run("--gt", p, "--pred", d / "dt.json"))
    p.write_text(json.dumps({"annotations": []}))
    assert "no 'images' list" in one_error_line(run("--gt", p, "--pred", d / "dt.json"))
    p.write_text(json.dumps({"images": [{"id": 1}], "categories": [{"id": 1, "name": "a"}],
                             "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}))
    assert "annotations[0] has no 'area'" in one_error_line(run("--gt", p, "--pred", d / "dt.json"))


@pytest.mark.parametrize("args,text", [
    (["--iou-type", "mask"], "invalid --iou-type"),
    (["--format", "csv"], "invalid --format"),
    (["--backend", "nope"], "invalid --backend"),
])
def test_bad_flags(synth, args, text):
    d, _, _ = synth
    assert text in one_error_line(run("--gt", d / "gt.json", "--pred", d / "dt.json", *args))


def test_missing_files(synth, tmp_path):
    d, _, _ = synth
    assert "not found" in one_error_line(run("--gt", tmp_path / "nope.json", "--pred", d / "dt.json"))
    assert "not found" in one_error_line(run("--gt", d / "gt.json", "--pred", tmp_path / "nope.json"))
    r = runner.invoke(app, ["evaluate", "--gt", str(d / "gt.json")])
    one_error_line(r)


def test_no_heavy_imports(real):
    """The evaluate path must not import torch or transformers (startup time and memory)."""
    gt, bbox, segm = real
    code = ("import sys; from visiontool.cli.main import app\n"
            "from typer.testing import CliRunner\n"
            f"r = CliRunner().invoke(app, ['evaluate', '--gt', {str(gt)!r}, '--pred', {str(bbox)!r}, '--per-class'])\n"
            "assert r.exit_code == 0, r.stderr\n"
            f"r = CliRunner().invoke(app, ['evaluate', '--gt', {str(gt)!r}, '--pred', {str(segm)!r}, "
            "'--iou-type', 'segm'])\n"
            "assert r.exit_code == 0, r.stderr\n"
            "heavy = [m for m in ('torch', 'transformers', 'torchmetrics', 'matplotlib', 'pycocotools.cocoeval') "
            "if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_torchmetrics_backend(real):
    """torchmetrics stays available; its numbers differ from pycocotools' (see docs/evaluate.md)."""
    pytest.importorskip("torchmetrics")
    gt, bbox, _ = real
    r = run("--gt", gt, "--pred", bbox, "--format", "json", "--backend", "torchmetrics")
    assert r.exit_code == 0, r.stderr
    tm = json.loads(r.stdout)
    exact = json.loads(run("--gt", gt, "--pred", bbox, "--format", "json").stdout)
    assert abs(tm["map"] - exact["map"]) < 0.01
    assert tm["map"] != exact["map"]


def test_bad_counts_left_to_engine_are_named(coco_dir, tmp_path):
    """The segm fast path does not read RLE counts; an engine failure is re-checked precisely."""
    res = json.loads((coco_dir / "instances_val2014_fakesegm100_results.json").read_text())
    res[4]["segmentation"]["counts"] = 17
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(res))
    line = one_error_line(run("--gt", coco_dir / "instances_val2014_100.json", "--pred", p, "--iou-type", "segm"))
    assert "result 4:" in line and "counts" in line


def test_segm_results_mixing_bbox_presence(coco_dir, tmp_path):
    res = json.loads((coco_dir / "two-image" / "dt.json").read_text())
    del res[1]["bbox"]
    p = tmp_path / "mixed.json"
    p.write_text(json.dumps(res))
    line = one_error_line(run("--gt", coco_dir / "two-image" / "gt.json", "--pred", p, "--iou-type", "segm"))
    assert "result 1:" in line and "pycocotools cannot mix them" in line


def test_id_0_ground_truth_uses_a_reference_engine(tmp_path):
    gt, res = adversarial_set(1, with_segm=False, first_id=0)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(res))
    r = run("--gt", tmp_path / "gt.json", "--pred", tmp_path / "dt.json", "--format", "json")
    assert r.exit_code == 0
    assert "annotation with id 0" in r.stderr
    ref = oracle(gt, res, "bbox")["stats"]
    got = json.loads(r.stdout)
    assert all(abs(got[k] - ref[k]) <= 1e-12 for k in STAT_KEYS)


def test_lenient_records(synth, tmp_path):
    d, gt, res = synth
    recs = detect_records(gt, res)
    recs[0]["detections"][0]["score"] = "high"
    k = next(i for i, rec in enumerate(recs) if i > 0 and len(rec["detections"]) >= 2)
    recs[k]["detections"][1]["box"] = [10, 10, 5, 20]
    p = tmp_path / "dets.json"
    p.write_text(json.dumps(recs))
    r = run("--gt", d / "gt.json", "--pred", p, "--lenient")
    assert r.exit_code == 0 and "skipped 2 invalid prediction(s)" in r.stderr
    assert "record 0" in r.stderr  # the first reason is quoted


def test_the_entry_point_leaves_without_teardown_once_evaluate_has_written(real, monkeypatch, capsys):
    """After scoring, the console entry point ends the process with os._exit (nothing left to
    free or finalize) once stdout is flushed; an evaluate that fails, and other commands, exit
    as usual."""
    import os

    from visiontool.cli import main

    class Left(BaseException):
        pass

    left: list = []

    class Os:  # os as main sees it, with _exit recorded instead of ending pytest
        def __getattr__(self, name):
            return getattr(os, name)

        @staticmethod
        def _exit(code):
            left.append(code)
            raise Left

    monkeypatch.setattr(main, "os", Os())
    gt, _, segm = real
    monkeypatch.setattr(sys, "argv", ["visiontool", "evaluate", "--gt", str(gt), "--pred", str(segm),
                                      "--iou-type", "segm", "-f", "json"])
    with pytest.raises(Left):
        main.run()
    assert left == [0]
    out = json.loads(capsys.readouterr().out)
    assert out["iou_type"] == "segm" and out["map"] == pytest.approx(0.3195452758576433, abs=0)
    for argv in (["evaluate", "--gt", str(gt), "--pred", "missing.json"], ["--version"]):
        monkeypatch.setattr(sys, "argv", ["visiontool", *argv])
        with pytest.raises(SystemExit) as exc:
            main.run()
        assert exc.value.code == (2 if "evaluate" in argv else 0) and left == [0]


def test_a_closed_stdout_is_one_error_line_and_an_output_file_still_works(real, tmp_path):
    """Started with descriptor 1 closed (`visiontool evaluate ... >&-`): one error line naming
    it, exit 2; with -o FILE the file is written and nothing needs stdout."""
    import shlex

    gt, bbox, _ = real
    base = f"{shlex.quote(entry_point())} evaluate --gt {shlex.quote(str(gt))} --pred {shlex.quote(str(bbox))}"
    out = subprocess.run(["bash", "-c", f"{base} -f json >&-"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1] == "visiontool: error: stdout is closed: nowhere to write the output " \
                                          "(give -o FILE)"
    dest = tmp_path / "stats.json"
    out = subprocess.run(["bash", "-c", f"{base} -o {shlex.quote(str(dest))} >&-"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(dest.read_text())["iou_type"] == "bbox"


@pytest.mark.parametrize("argv, what", [("--help", "the help"), ("evaluate -h", "the help"),
                                        ("--version", "the version")])
def test_help_or_version_to_a_closed_stdout_names_what_was_lost(argv, what):
    """`visiontool --help >&-` has no -o to offer: its error line names the help, not a FILE."""
    import shlex

    out = subprocess.run(["bash", "-c", f"{shlex.quote(entry_point())} {argv} >&-"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"visiontool: error: stdout is closed: nowhere to write {what}"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_under_stdout_is_one_error_line(real):
    """Through the installed entry point (evaluate ends with os._exit after flushing): the data
    cannot be written, so one line and exit 1, not "unexpected OSError" (every command shares it)."""
    gt, bbox, _ = real
    with open("/dev/full", "w") as full:
        p = subprocess.run([entry_point(), "evaluate", "--gt", str(gt), "--pred", str(bbox), "-q"], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 1
    assert p.stderr.splitlines()[-1] == "visiontool: error: cannot write the output: No space left on device"
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_reader_that_goes_away_ends_the_run_with_exit_0(real, fmt):
    """`visiontool evaluate ... | head -1`, the reader gone before the first byte: exit 0, no
    error line (rich's table and click's JSON write each made it a silent exit 1)."""
    gt, bbox, _ = real
    p = subprocess.Popen([entry_point(), "evaluate", "--gt", str(gt), "--pred", str(bbox), "-f", fmt],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=300) == 0, err
    assert b"error" not in err and b"Traceback" not in err, err


def test_a_gone_stderr_reader_leaves_the_data_whole(real, tmp_path):
    """stderr is for people: when its reader goes away (`2> >(head -1)`) the command falls silent
    and carries on; the data is written whole and the exit code is 0 (rich exited 1 at the first
    warning, before -o was written)."""
    gt, bbox, _ = real
    out = tmp_path / "scores.json"
    p = subprocess.Popen([entry_point(), "evaluate", "--gt", str(gt), "--pred", str(bbox), "-o", str(out)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    p.stderr.close()  # evaluate warns on stderr (a category never predicted) before it writes -o
    assert p.wait(timeout=300) == 0
    assert json.loads(out.read_text())["map"] == pytest.approx(0.5045806987249628, abs=1e-15)
