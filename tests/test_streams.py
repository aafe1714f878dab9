"""Inputs from pipes: stdin (``-``) and FIFOs such as bash's ``<(zcat gt.json.gz)`` give the
numbers their files give, for COCO and MOT evaluation and compare; stdin can feed one input;
compressed files and archives are one line saying how to pass them."""
from __future__ import annotations

import bz2
import gc
import gzip
import json
import os
import subprocess
import zipfile

import pytest
from typer.testing import CliRunner

from cli_helpers import entry_point, fifo, one_error_line
from visiontool.cli.main import app

runner = CliRunner()
pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


def invoke(*args, input=None):
    return runner.invoke(app, [str(a) for a in args], input=input)


@pytest.fixture
def real(coco_dir):
    return (coco_dir / "instances_val2014_100.json", coco_dir / "instances_val2014_fakebbox100_results.json",
            coco_dir / "instances_val2014_fakesegm100_results.json")


@pytest.fixture
def spool_dir(tmp_path, monkeypatch):
    """Where the temporary copy of a piped ground truth goes (checked empty after)."""
    import tempfile

    d = tmp_path / "spool"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("backend", ["auto", "pycocotools"])
def test_a_piped_ground_truth_gives_the_files_numbers(real, tmp_path, spool_dir, iou_type, backend):
    gt, bbox, segm = real
    pred = bbox if iou_type == "bbox" else segm
    files = invoke("evaluate", "--gt", gt, "--pred", pred, "--iou-type", iou_type, "--backend", backend, "--per-class")
    assert files.exit_code == 0, files.stderr
    with fifo(tmp_path, gt.read_bytes(), "gt") as g, fifo(tmp_path, pred.read_bytes(), "dt") as p:
        piped = invoke("evaluate", "--gt", g, "--pred", p, "--iou-type", iou_type, "--backend", backend,
                       "--per-class")
    assert piped.exit_code == 0, piped.stderr
    assert json.loads(piped.stdout) == json.loads(files.stdout)
    stdin = invoke("evaluate", "--gt", "-", "--pred", pred, "--iou-type", iou_type, "--backend", backend,
                   "--per-class", input=gt.read_bytes())
    assert stdin.exit_code == 0, stdin.stderr
    assert json.loads(stdin.stdout) == json.loads(files.stdout)
    gc.collect()
    assert list(spool_dir.iterdir()) == []  # the temporary copy went with its GroundTruth


def test_a_bad_piped_ground_truth_is_named_as_given(real, tmp_path, spool_dir):
    _, bbox, _ = real
    with fifo(tmp_path, b'{"images": 3}', "gt") as g:
        line = one_error_line(invoke("evaluate", "--gt", g, "--pred", bbox))
    assert line == f"visiontool: error: ground truth '{g}' has no 'images' list (not a COCO annotation file)"
    assert list(spool_dir.iterdir()) == []


def test_the_entry_point_leaves_no_copy_behind(real, tmp_path):
    """evaluate ends with os._exit (no exit handlers): the copy of a piped ground truth still goes."""
    gt, bbox, _ = real
    spool = tmp_path / "tmp"
    spool.mkdir()
    with fifo(tmp_path, gt.read_bytes(), "gt") as g:
        p = subprocess.run([entry_point(), "evaluate", "--gt", str(g), "--pred", str(bbox), "-q"], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ, TMPDIR=str(spool)))
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["map"] == pytest.approx(0.5045806987249628, abs=1e-15)
    assert list(spool.iterdir()) == []


def test_compare_reads_piped_prediction_files(real, tmp_path):
    gt, bbox, _ = real
    with fifo(tmp_path, bbox.read_bytes(), "dt") as p, fifo(tmp_path, gt.read_bytes(), "gt") as g:
        r = invoke("compare", "--gt", g, bbox, p, "--name", "file", "--name", "pipe", "-f", "json", "-q")
    assert r.exit_code == 0, r.stderr
    runs = json.loads(r.stdout)["runs"]
    assert [x["name"] for x in runs] == ["file", "pipe"]
    assert runs[1]["map"] == runs[0]["map"] == pytest.approx(0.5045806987249628, abs=1e-15)


@pytest.mark.parametrize("args", [["evaluate", "--gt", "-", "--pred", "-"],
                                  ["compare", "--gt", "GT", "-", "-"],
                                  ["evaluate", "--mot", "--gt", "-", "--pred", "-"],
                                  ["detect", "-", "--gt", "-"], ["segment", "-", "--boxes-from", "-"],
                                  ["segment", "-", "--prompts", "-"]],
                         ids=["evaluate", "compare", "mot", "detect", "segment --boxes-from", "segment --prompts"])
def test_stdin_feeds_one_input(real, args):
    gt = real[0]
    r = invoke(*[gt if a == "GT" else a for a in args], input=b"[]")
    assert one_error_line(r) == ("visiontool: error: only one input can be read from stdin ('-'); give the others "
                                 "as files or <(command)")


def test_mot_from_pipes_gives_the_files_numbers(tmp_path):
    rows = "".join(f"{f},{i},{10 * i + f},20,30,40,1,-1,-1,-1\n" for f in range(1, 30) for i in (1, 2, 3))
    pred_rows = "".join(f"{f},{i if f < 15 else 4 - i},{10 * i + f + 1},21,30,40,0.9,-1,-1,-1\n"
                        for f in range(1, 31) for i in (1, 2, 3))
    (tmp_path / "gt.txt").write_text(rows)
    (tmp_path / "pred.txt").write_text(pred_rows)
    files = invoke("evaluate", "--mot", "--gt", tmp_path / "gt.txt", "--pred", tmp_path / "pred.txt", "-f", "json")
    assert files.exit_code == 0, files.stderr
    with fifo(tmp_path, rows.encode(), "g") as g:
        piped = invoke("evaluate", "--mot", "--gt", g, "--pred", "-", "-f", "json", input=pred_rows)
    assert piped.exit_code == 0, piped.stderr
    a, b = json.loads(files.stdout), json.loads(piped.stdout)
    assert b["sequences"] == ["g"] and a["metrics"] == b["metrics"]
    assert 0 < a["metrics"]["IDSW"] and a["metrics"]["MOTA"] < 1  # the swap at frame 15 is seen


@pytest.mark.parametrize("packing", ["gzip", "bzip2", "zip"])
@pytest.mark.parametrize("which", ["--gt", "--pred"])
def test_a_compressed_file_says_how_to_pass_it(real, tmp_path, packing, which):
    gt, bbox, _ = real
    src = gt if which == "--gt" else bbox
    packed = tmp_path / f"{src.name}.{ {'gzip': 'gz', 'bzip2': 'bz2', 'zip': 'zip'}[packing]}"
    if packing == "gzip":
        packed.write_bytes(gzip.compress(src.read_bytes()))
    elif packing == "bzip2":
        packed.write_bytes(bz2.compress(src.read_bytes()))
    else:
        with zipfile.ZipFile(packed, "w") as z:
            z.write(src, src.name)
    args = {"--gt": gt, "--pred": bbox, which: packed}
    line = one_error_line(invoke("evaluate", "--gt", args["--gt"], "--pred", args["--pred"]))
    what = {"gzip": "gzip-compressed", "bzip2": "bzip2-compressed", "zip": "a zip archive"}[packing]
    command = {"gzip": "zcat", "bzip2": "bzcat", "zip": "unzip -p"}[packing]
    assert line.endswith(f"'{packed}' is {what}: give the JSON itself, e.g. <({command} {packed}) in its place")


def test_a_compressed_pipe_says_to_decompress_it_and_copies_nothing(real, tmp_path, spool_dir):
    gt, bbox, _ = real
    with fifo(tmp_path, gzip.compress(gt.read_bytes()), "gt") as g:
        line = one_error_line(invoke("evaluate", "--gt", g, "--pred", bbox))
    assert line == f"visiontool: error: ground truth '{g}' is gzip-compressed: give the JSON itself, pipe it through " \
        "zcat"
    assert list(spool_dir.iterdir()) == []
