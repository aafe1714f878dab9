"""Hostile inputs to `visiontool evaluate` (issue 8 §3): each is exit 2 with one clear line
(no traceback, no "unexpected ..."), or scored as pycocotools scores it with a warning."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cli_helpers import one_error_line
from evaluate_helpers import STAT_KEYS, adversarial_set, oracle, segment_records
from visiontool.cli.main import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def run(*args):
    return runner.invoke(app, ["evaluate", *map(str, args)])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    gt, res = adversarial_set(2, with_segm=True, first_id=1)
    (d / "gt.json").write_text(json.dumps(gt))
    (d / "segm.json").write_text(json.dumps(res))
    _, boxes = adversarial_set(2, with_segm=False, first_id=1)
    (d / "bbox.json").write_text(json.dumps(boxes))
    return d, gt, res


DEEP = {
    "list": "[" * 100_000 + "]" * 100_000,
    "object": '{"a": ' * 100_000 + "1" + "}" * 100_000,
    "inside a result": ('[{"image_id": 1, "category_id": 1, "score": 0.5, "bbox": ' + "[" * 100_000 + "]" * 100_000
                        + "}]"),
    "jsonl line": '{"image": "a.jpg", "detections": []}\n' + "[" * 100_000 + "]" * 100_000 + "\n",
}


@pytest.mark.parametrize("where", list(DEEP))
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_deeply_nested_predictions(files, tmp_path, where, iou_type):
    d, _, _ = files
    p = tmp_path / "deep.json"
    p.write_text(DEEP[where])
    line = one_error_line(run("--gt", d / "gt.json", "--pred", p, "--iou-type", iou_type))
    assert "nested too deeply" in line and "unexpected" not in line


def test_deeply_nested_ground_truth(files, tmp_path):
    d, _, _ = files
    p = tmp_path / "gt.json"
    p.write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    line = one_error_line(run("--gt", p, "--pred", d / "bbox.json"))
    assert "nested too deeply" in line


_CHILD = """
import atexit, re, sys
OUT = sys.argv.pop(1)
def hwm():
    status = open('/proc/self/status').read()
    open(OUT, 'w').write(re.search(r'VmHWM:\\s*(\\d+)', status).group(1))
atexit.register(hwm)
from visiontool.cli.main import app
app()
"""


def _peak_rss_mb(tmp_path, args: list[str]) -> tuple[int, float, str]:
    """(exit code, peak RSS MB, stderr) of `visiontool ARGS` in a fresh interpreter. The peak
    is the process's own VmHWM: ru_maxrss would carry the (large) pytest parent's peak over
    the exec."""
    hwm = tmp_path / "vmhwm"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(hwm), *args], capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    return proc.returncode, int(hwm.read_text()) / 1024, proc.stderr.decode()


@pytest.mark.parametrize("head", [b"\x00\x00\x00\x18ftypmp42", b"GIF89a", b"   \n\t  hello", b"\xef\xbb\xbf 12345"],
                         ids=["video", "gif", "text", "bom-number"])
def test_huge_non_json_prediction_is_refused_from_its_first_bytes(files, tmp_path, head):
    """A 2 GiB file (sparse: no disk) that cannot be JSON: refused before it is read, in a
    process whose peak RSS stays that of the interpreter (the old reader took 4.2 GB)."""
    d, _, _ = files
    p = tmp_path / "big.bin"
    with open(p, "wb") as fh:
        fh.write(head)
        fh.truncate(2 << 30)
    code, rss, err = _peak_rss_mb(tmp_path, ["evaluate", "--gt", str(d / "gt.json"), "--pred", str(p)])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "is not JSON" in lines[0] and "starts with" in lines[0], err
    assert rss < 250, rss


@pytest.mark.parametrize("head", [b"[ hello, world", b'[{"image_id": 1, "bbox": [1, 2, 3, 4], ?'],
                         ids=["words", "garbage"])
def test_huge_file_with_a_list_bracket_then_garbage(files, tmp_path, head):
    """`[` and then anything but JSON: the first element is checked from the first bytes, before
    a native reader loads the whole 2 GiB."""
    d, _, _ = files
    p = tmp_path / "big.json"
    with open(p, "wb") as fh:
        fh.write(head + b" " * 100)
        fh.truncate(2 << 30)
    code, rss, err = _peak_rss_mb(tmp_path, ["evaluate", "--gt", str(d / "gt.json"), "--pred", str(p)])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "is not valid JSON" in lines[0], err
    assert rss < 250, rss


def test_first_element_longer_than_the_sniffed_bytes(files, tmp_path):
    """A valid file whose first result is larger than the bytes looked at first is not refused."""
    d, gt, res = files
    big = json.loads(json.dumps(res))
    from pycocotools import mask as mask_utils

    im = next(i for i in gt["images"] if i["id"] == big[0]["image_id"])
    rle = big[0]["segmentation"]
    m = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    flat = m.flatten(order="F").astype(np.int64)
    runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[-1], flat, [-1]])) != 0)).tolist()
    runs = ([0] + runs) if flat[0] else runs
    big[0]["segmentation"] = {"size": [im["height"], im["width"]], "counts": runs * 1}
    big[0]["bbox"] = [0, 0, 1, 1]
    for r in big[1:]:
        r["bbox"] = [0, 0, 1, 1]
    big[0]["pad"] = "x" * 70_000
    p = tmp_path / "long_first.json"
    p.write_text(json.dumps(big))
    r = run("--gt", d / "gt.json", "--pred", p, "--iou-type", "segm", "--format", "json")
    assert r.exit_code == 0, r.stderr


def test_utf16_prediction_file(files, tmp_path):
    d, _, res = files
    p = tmp_path / "u16.json"
    p.write_bytes(json.dumps(res[:3]).encode("utf-16"))
    assert "UTF-16" in one_error_line(run("--gt", d / "gt.json", "--pred", p))


@pytest.mark.parametrize("flag", ["--pred", "--gt"])
def test_paths_that_are_not_files(files, tmp_path, flag):
    d, _, _ = files
    good = {"--gt": d / "gt.json", "--pred": d / "bbox.json"}

    def err(target):
        args = dict(good, **{flag: target})
        return one_error_line(run("--gt", args["--gt"], "--pred", args["--pred"]))

    assert "is a directory" in err(tmp_path)
    assert "is not a regular file (a character device)" in err("/dev/null")
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    line = err(loop)
    assert "symbolic link loop" in line and "not found" not in line
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "gone.json")
    assert "does not exist" in err(dangling)
    assert "not found" in err(tmp_path / "nope.json")


def test_fifo_prediction_is_read_as_a_stream(files, tmp_path):
    """`--pred <(cmd)` gives a pipe: it is read like stdin, not refused as a special file."""
    d, gt, _ = files
    _, boxes = adversarial_set(2, with_segm=False, first_id=1)
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    code = f"open({str(fifo)!r}, 'w').write(open({str(d / 'bbox.json')!r}).read())"
    writer = subprocess.Popen([sys.executable, "-c", code])
    try:
        r = run("--gt", d / "gt.json", "--pred", fifo, "--format", "json")
    finally:
        writer.wait(timeout=30)
    assert r.exit_code == 0, r.stderr
    assert {k: json.loads(r.stdout)[k] for k in STAT_KEYS} == oracle(gt, boxes, "bbox")["stats"]


@pytest.mark.parametrize("annotations", [None, []], ids=["no-key", "empty"])
def test_ground_truth_without_annotations_warns_and_keeps_pycocotools_numbers(files, tmp_path, annotations):
    d, gt, _ = files
    _, boxes = adversarial_set(2, with_segm=False, first_id=1)
    g = {k: v for k, v in gt.items() if k != "annotations"}
    if annotations is not None:
        g["annotations"] = annotations
    p = tmp_path / "gt_noann.json"
    p.write_text(json.dumps(g))
    for iou_type, pred in (("bbox", d / "bbox.json"), ("segm", d / "segm.json")):
        r = run("--gt", p, "--pred", pred, "--iou-type", iou_type, "--format", "json")
        assert r.exit_code == 0, r.stderr
        got = json.loads(r.stdout)
        assert {k: got[k] for k in STAT_KEYS} == oracle(g, json.loads(pred.read_text()), iou_type)["stats"]
        assert all(got[k] == -1 for k in STAT_KEYS)
        warn = [ln for ln in r.stderr.splitlines() if "annotations" in ln]
        assert len(warn) == 1 and warn[0].startswith("visiontool: warning:"), r.stderr
        assert ("no 'annotations' list" if annotations is None else "empty 'annotations' list") in warn[0]


BAD_COUNTS = {"garbage": "garbage", "below the alphabet": "!!!x", "negative run": "abc", "runs beyond the image": None}


def _bad_counts(kind: str, rle: dict) -> str:
    return BAD_COUNTS[kind] if BAD_COUNTS[kind] is not None else rle["counts"] * 2


@pytest.mark.parametrize("kind", list(BAD_COUNTS))
def test_garbage_rle_counts_in_results_name_the_result(files, tmp_path, kind):
    """The fast path hands counts to the engine; hotcoco reads bad ones as maskless: named."""
    d, gt, res = files
    bad = json.loads(json.dumps(res))
    bad[6]["segmentation"]["counts"] = _bad_counts(kind, bad[6]["segmentation"])
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(bad))
    line = one_error_line(run("--gt", d / "gt.json", "--pred", p, "--iou-type", "segm"))
    assert "result 6:" in line and "segmentation.counts is not a COCO RLE" in line, line
    # the same through the bbox evaluation (pycocotools takes the box from the mask)
    line = one_error_line(run("--gt", d / "gt.json", "--pred", p, "--iou-type", "bbox"))
    assert "result 6:" in line and "counts" in line, line


def test_garbage_rle_counts_in_segment_records(files, tmp_path):
    d, gt, _ = files
    _, both = adversarial_set(2, with_segm=True, both_bbox_and_segm=True, first_id=1)
    recs = segment_records(gt, both)
    k = next(i for i, rec in enumerate(recs) if rec["masks"])
    recs[k]["masks"][0]["segmentation"]["counts"] = "garbage"
    p = tmp_path / "recs.json"
    p.write_text(json.dumps(recs))
    line = one_error_line(run("--gt", d / "gt.json", "--pred", p, "--iou-type", "segm"))
    assert f"record {k}" in line and "mask 0" in line and "counts" in line


@pytest.mark.parametrize("kind", list(BAD_COUNTS))
def test_garbage_rle_counts_in_ground_truth(files, tmp_path, kind):
    d, gt, res = files
    g = json.loads(json.dumps(gt))
    i = next(i for i, a in enumerate(g["annotations"]) if isinstance(a["segmentation"], dict))
    g["annotations"][i]["segmentation"]["counts"] = _bad_counts(kind, g["annotations"][i]["segmentation"])
    p = tmp_path / "gt_bad.json"
    p.write_text(json.dumps(g))
    line = one_error_line(run("--gt", p, "--pred", d / "segm.json", "--iou-type", "segm"))
    assert f"annotations[{i}].segmentation.counts" in line, line
    # bbox evaluation never reads GT masks: scored as pycocotools scores it
    r = run("--gt", p, "--pred", d / "bbox.json", "--format", "json")
    assert r.exit_code == 0, r.stderr


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("key", ["id", "area", "segmentation", "bbox"])
def test_ground_truth_annotation_missing_a_key(files, tmp_path, key, iou_type):
    """The engines' own readers are lenient (hotcoco numbers an annotation without "id" 0 and
    reads one without "area" as area 0): whichever reader serves the GT, it is one line naming
    the annotation -- or scored, where COCOeval never reads the key."""
    d, gt, _ = files
    g = json.loads(json.dumps(gt))
    del g["annotations"][4][key]
    p = tmp_path / "gt_missing.json"
    p.write_text(json.dumps(g))
    r = run("--gt", p, "--pred", d / f"{iou_type}.json", "--iou-type", iou_type, "--format", "json")
    if key == "segmentation" and iou_type == "bbox":
        assert r.exit_code == 0, r.stderr  # bbox evaluation never reads masks
        return
    line = one_error_line(r)
    assert f"annotations[4] has no '{key}'" in line, line


BAD_IDS = {  # (where, value, the line's words); pycocotools either fails on these (it sorts ids of
    # mixed types, stores a matched annotation's id in a float array) or scores them unlike
    # every engine (a category_id "1" silently never matches category 1)
    "image id text": ("images", "id", "abc", 'images[0].id is not an integer ("abc")'),
    "image id beyond 64 bits": ("images", "id", 10 ** 30, "images[0].id is outside the 64-bit integer range"),
    "category id text": ("categories", "id", "c", 'categories[0].id is not an integer ("c")'),
    "category id 2**63": ("categories", "id", 2 ** 63, "categories[0].id is outside the 64-bit integer range"),
    "annotation id null": ("annotations", "id", None, "annotations[0]: id is not an integer (null)"),
    "annotation id 1.5": ("annotations", "id", 1.5, "annotations[0]: id is not an integer (1.5)"),
    "annotation id beyond 64 bits": ("annotations", "id", 10 ** 30, "annotations[0]: id is outside the 64-bit"),
    "annotation category_id text": ("annotations", "category_id", "1",
                                    'annotations[0]: category_id is not an integer ("1")'),
}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("kind", list(BAD_IDS))
def test_ground_truth_ids_that_are_not_64_bit_integers(files, tmp_path, kind, iou_type):
    """Each reader (the engines' native ones, msgspec's, the full parse) names the id: no
    "unexpected ValueError/OverflowError", no number computed from a coerced id."""
    d, gt, _ = files
    where, key, value, words = BAD_IDS[kind]
    g = json.loads(json.dumps(gt))
    g[where][0][key] = value
    p = tmp_path / "gt_ids.json"
    p.write_text(json.dumps(g))
    line = one_error_line(run("--gt", p, "--pred", d / f"{iou_type}.json", "--iou-type", iou_type))
    assert f"ground truth '{p}': {words}" in line, line


def test_integral_float_ids_are_still_ids(files, tmp_path):
    """1.0 is the integer 1 to pycocotools (a dict key, a sort key): scored, same numbers."""
    d, gt, _ = files
    g = json.loads(json.dumps(gt))
    g["images"][0]["id"] = float(g["images"][0]["id"])
    g["annotations"][0]["id"] = float(g["annotations"][0]["id"])
    p = tmp_path / "gt_float_ids.json"
    p.write_text(json.dumps(g))
    got = run("--gt", p, "--pred", d / "bbox.json", "--format", "json")
    want = run("--gt", d / "gt.json", "--pred", d / "bbox.json", "--format", "json")
    assert got.exit_code == 0 and want.exit_code == 0, got.stderr
    assert json.loads(got.stdout) == json.loads(want.stdout)


@pytest.mark.parametrize("kind", [k for k in BAD_IDS if BAD_IDS[k][0] != "annotations"])
def test_detect_gt_index_names_a_bad_id(files, kind):
    """`detect --gt` reads the same ids (to number its records): the same line, before any model."""
    from visiontool.errors import InvalidInputError
    from visiontool.io.coco import GroundTruthIndex

    _, gt, _ = files
    where, key, value, words = BAD_IDS[kind]
    g = json.loads(json.dumps(gt))
    g[where][0][key] = value
    with pytest.raises(InvalidInputError, match=f"ground truth 'g.json': {re.escape(words)}"):
        GroundTruthIndex.from_dict(g, "g.json")


BAD_FIELDS = {  # (where, key, value, iou type, the line's words; None: scored, pycocotools never reads it)
    "bbox text, bbox": ("annotations", "bbox", "1,2,3,4", "bbox", 'annotations[0]: bbox must be a list of 4 numbers'),
    "bbox text, segm": ("annotations", "bbox", "1,2,3,4", "segm", None),
    "bbox of 3": ("annotations", "bbox", [1, 2, 3], "bbox", "annotations[0]: bbox must be a list of 4 numbers"),
    "area text": ("annotations", "area", "big", "bbox", 'annotations[0]: area is not a number ("big")'),
    "area null, segm": ("annotations", "area", None, "segm", "annotations[0]: area is not a number (null)"),
    "iscrowd text": ("annotations", "iscrowd", "yes", "segm", 'annotations[0]: iscrowd is not a number ("yes")'),
    "height text, segm": ("images", "height", "480", "segm", 'images[0].height is not an integer ("480")'),
    "height text, bbox": ("images", "height", "480", "bbox", None),
}


@pytest.mark.parametrize("kind", list(BAD_FIELDS))
def test_ground_truth_fields_of_the_wrong_type(files, tmp_path, kind):
    """Each was an engine's TypeError blaming the predictions (or "unexpected ..."): now one
    line naming the field, or the numbers of the intact file where COCOeval never reads it."""
    d, gt, _ = files
    where, key, value, iou_type, words = BAD_FIELDS[kind]
    g = json.loads(json.dumps(gt))
    g[where][0][key] = value
    p = tmp_path / "gt_field.json"
    p.write_text(json.dumps(g))
    r = run("--gt", p, "--pred", d / f"{iou_type}.json", "--iou-type", iou_type, "--format", "json")
    if words is None:
        want = run("--gt", d / "gt.json", "--pred", d / f"{iou_type}.json", "--iou-type", iou_type, "--format", "json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout) == json.loads(want.stdout)
        return
    line = one_error_line(r)
    assert f"ground truth '{p}': {words}" in line, line


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("backend", ["auto", "hotcoco", "ultrafast", "pycocotools"])
def test_a_key_given_twice_in_a_result_is_scored_as_pycocotools_scores_it(files, tmp_path, iou_type, backend):
    """JSON lets a key repeat; Python's json (pycocotools) keeps its last value. hotcoco's reader
    refused the file ("duplicate field `category_id`"), which is auto's segm engine."""
    d, gt, res = files
    results = res if iou_type == "segm" else json.loads((d / "bbox.json").read_text())
    decoys = ('{"category_id": 999999, "score": 0.001, "image_id": -5, ' + json.dumps(r)[1:] for r in results)
    path = tmp_path / "twice.json"
    path.write_text("[" + ", ".join(decoys) + "]")
    assert json.loads(path.read_text()) == results  # the last value of each key is the real one
    r = run("--gt", d / "gt.json", "--pred", path, "--iou-type", iou_type, "--backend", backend, "--format", "json")
    assert r.exit_code == 0, r.stderr
    assert {k: json.loads(r.stdout)[k] for k in STAT_KEYS} == oracle(gt, results, iou_type)["stats"]
